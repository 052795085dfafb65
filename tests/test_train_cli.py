"""train_t5_stagcn.py end to end on a tiny synthetic experiment, always through the command line.

Runs are shared by module fixtures: one uninterrupted 1-process run and one uninterrupted 2-process torchrun
run serve as the references that interrupted-and-resumed runs must reproduce (max abs diff <= 1e-6, same
logged losses). Every subprocess has OMP_NUM_THREADS=1 and a timeout; no fixed port is ever used.
"""
from __future__ import annotations

import math
import shutil
import sys

import pytest
import torch
import yaml

from tests.cli_helpers import (TRAIN_SCRIPT, build_in_process, captured_log, checkpoint_files, cli_env, explain, finish,
                               free_port, kill_group, last_json_line, load_final, max_param_diff, one_cpu_process,
                               read_json, run, run_train, train_main, start, tiny_data, torchrun_cmd, video_names,
                               write_experiment)

pytestmark = pytest.mark.timeout(300)

TOL = 1e-6
# The 1-process runs turn, scale and speed up or slow down their clips at random: a resume must draw the same.
AUGMENT = {"AUGMENT_TURN_DEG": 45.0, "AUGMENT_SCALE": 0.1, "AUGMENT_SPEED": 0.2}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def test_names(data):
    return sorted(video_names(data["pretrain_test"]))


@pytest.fixture(scope="module")
def baseline_1p(data, tmp_path_factory):
    """Uninterrupted plain-python pretraining, 2 epochs of 3 batches, with augmentation: the reference of
    1-process resumes."""
    cfg = write_experiment(tmp_path_factory.mktemp("baseline_1p"), data, DATA=AUGMENT)
    res = run_train(cfg)
    assert res.returncode == 0, explain(res)
    return cfg.parent


@pytest.fixture(scope="module")
def run_2p(data, tmp_path_factory):
    """Uninterrupted `torchrun --nproc_per_node 2` (gloo) pretraining: 2 batches per rank per epoch, evaluated
    before the first epoch too."""
    cfg = write_experiment(tmp_path_factory.mktemp("run_2p"), data, TRAIN={"SANITY_EVAL": True})
    res = run_train(cfg, nproc=2)
    assert res.returncode == 0, explain(res)
    return cfg.parent, res


def assert_same_training(resumed, reference):
    """Final parameters within TOL and the same per-epoch losses as the uninterrupted reference."""
    a, b = load_final(resumed / "pretrain_checkpoints"), load_final(reference / "pretrain_checkpoints")
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    diff = max_param_diff(a["model"], b["model"])
    assert diff <= TOL, f"resumed parameters differ from the uninterrupted run by {diff:.3g}"
    got, want = read_json(resumed / "jsons" / "loss_history.json"), read_json(reference / "jsons" / "loss_history.json")
    assert [h["epoch"] for h in got] == [h["epoch"] for h in want]
    assert [h["loss"] for h in got] == pytest.approx([h["loss"] for h in want], abs=TOL, rel=0)


# ---- end to end, 2 processes -----------------------------------------------------------------------

@pytest.mark.slow
def test_torchrun_two_processes_writes_every_artifact(run_2p, data, test_names):
    exp, res = run_2p
    ckpts = exp / "pretrain_checkpoints"
    assert checkpoint_files(ckpts) == ["epoch_0001.pt", "epoch_0002.pt"]  # each epoch below 10, and the last
    for name in checkpoint_files(ckpts):
        assert (ckpts / f"{name}.sha256").is_file()
    assert not (exp / "checkpoints").exists()  # pretraining never writes the finetuning folder

    state = load_final(ckpts)  # digest checked, torch.load(weights_only=True)
    for key in ("model", "optimizer", "scheduler", "scaler", "epoch", "global_step", "rng", "config", "tokenizer_json"):
        assert key in state, key
    assert (state["epoch"], state["global_step"]) == (2, 4)  # 24 samples / (8 x 2 ranks) = 2 steps per epoch
    assert len(state["rng"]) == 2  # each rank's RNG streams
    assert not any(k.startswith("module.") for k in state["model"])  # unwrapped from DDP
    assert state["config"]["OPTIMIZER"]["MAX_EPOCH"] == 2

    from engine.prediction import read_epoch_attention

    jsons = exp / "jsons"
    for epoch in (0, 1, 2):  # sanity evaluation before training, then the checkpoint schedule
        results = read_json(jsons / f"results_epoch{epoch}.json")
        assert sorted(results) == test_names  # every test clip exactly once across the two ranks
        assert all(isinstance(c, str) for c in results.values())
        att_node, att_A = read_epoch_attention(jsons, epoch)  # attention_epochN.npz (EVAL.SAVE_ATTENTION NPZ)
        assert sorted(att_node) == sorted(att_A) == test_names
        some = test_names[0]
        assert att_node[some].shape[1] == 22 and att_A[some].shape == (4, 22, 22)
        metrics = read_json(jsons / f"metrics_epoch{epoch}.json")
        assert {"BLEU-4", "CIDEr"} <= set(metrics) and "METEOR" not in metrics
    history = read_json(jsons / "loss_history.json")
    assert [h["epoch"] for h in history] == [1, 2] and all(math.isfinite(h["loss"]) for h in history)

    events = list((exp / "train_logs").glob("events.out.tfevents.*"))
    assert len(events) == 1  # one writer: rank 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(events[0]))
    board.Reload()
    scalars = board.Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/epoch_loss", "metrics/BLEU-4"} <= set(scalars)
    assert [e.step for e in board.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in board.Scalars("metrics/CIDEr")] == [0, 1, 2]
    assert any(t.startswith("predictions") for t in board.Tags()["tensors"])  # sample predictions as text
    log_text = (exp / "train.log").read_text()
    assert "epoch 2: loss" in log_text and "SyncBatchNorm off" in log_text  # CPU/gloo cannot sync BN
    resolved = yaml.safe_load((exp / "config_resolved.yaml").read_text())
    assert resolved["OPTIMIZER"]["MAX_EPOCH"] == 2 and "KEEP_LAST" in resolved["CHECKPOINT"]  # defaults filled in
    assert (exp / "tokenizer" / "tokenizer.json").is_file()
    assert "[rank1] INFO" not in res.stdout  # one readable console: other ranks only warn


# ---- resume --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_one_process_resume_after_sigterm_and_after_a_crash_is_exact(baseline_1p, data, tmp_path, test_names):
    """SIGTERM inside epoch 1, SIGTERM in its last batch, then a hard crash as epoch 2 starts: each relaunch
    continues, and the last one ends exactly where the uninterrupted run ends."""
    exp = tmp_path / "exp"
    cfg = write_experiment(exp, data, CHECKPOINT={"KEEP_LAST": 1}, DATA=AUGMENT)
    ckpts = exp / "pretrain_checkpoints"

    res = run_train(cfg, env=cli_env(M2T_TEST_SIGTERM_AT="1:0"))  # signal during batch 0 of epoch 1
    assert res.returncode != 0, explain(res)
    assert checkpoint_files(ckpts) == ["epoch_0000_step_000001.pt"], explain(res)
    assert "run the same command to resume" in res.stdout + res.stderr

    # A signal during the last batch of epoch 1: no mid-epoch point is left, so it stops after the epoch.
    res = run_train(cfg, env=cli_env(M2T_TEST_SIGTERM_AT="1:2"))
    assert res.returncode != 0, explain(res)
    assert "resuming from" in res.stdout and "epoch_0000_step_000001.pt" in res.stdout
    assert "after epoch 1" in res.stdout, explain(res)
    assert checkpoint_files(ckpts) == ["epoch_0001.pt"]  # KEEP_LAST 1 removed the mid-epoch checkpoint

    marker = tmp_path / "crashed"
    res = run_train(cfg, env=cli_env(M2T_TEST_FAULT=f"0:2:0:{marker}"))  # killed as epoch 2 starts, no handler
    assert res.returncode == 17 and marker.exists(), explain(res)
    assert checkpoint_files(ckpts) == ["epoch_0001.pt"]

    res = run_train(cfg)
    assert res.returncode == 0, explain(res)
    assert checkpoint_files(ckpts) == ["epoch_0002.pt"]
    assert_same_training(exp, baseline_1p)
    # Same parameters, same greedy captions.
    assert read_json(exp / "jsons" / "results_epoch2.json") == read_json(baseline_1p / "jsons" / "results_epoch2.json")
    assert sorted(read_json(exp / "jsons" / "results_epoch2.json")) == test_names


@pytest.mark.slow
def test_two_process_resume_after_sigterm_on_one_rank_is_exact(run_2p, data, tmp_path):
    """Only rank 1 gets SIGTERM, inside epoch 2: both ranks stop at the same step, the checkpoint holds
    both ranks' RNG streams, and the relaunch ends where the uninterrupted 2-process run ends."""
    exp = tmp_path / "exp"
    cfg = write_experiment(exp, data, TRAIN={"SANITY_EVAL": True})
    res = run_train(cfg, nproc=2, env=cli_env(M2T_TEST_SIGTERM_AT="2:0:1"))
    assert res.returncode != 0, explain(res)
    assert checkpoint_files(exp / "pretrain_checkpoints") == ["epoch_0001.pt", "epoch_0001_step_000001.pt"]
    assert "epoch 0: validation loss" in res.stdout, explain(res)  # the sanity evaluation ran once

    res = run_train(cfg, nproc=2)
    assert res.returncode == 0, explain(res)
    assert_same_training(exp, run_2p[0])
    assert "epoch 0:" not in res.stdout, explain(res)  # and is not repeated on resume


# ---- finetuning ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_finetune_loads_pretrained_weights_except_the_projection(baseline_1p, data, tmp_path):
    pretrained = load_final(baseline_1p / "pretrain_checkpoints")["model"]
    cfg = write_experiment(tmp_path / "ft", data, pretrain=False,
                           WEIGHT_PATH=str(baseline_1p / "pretrain_checkpoints"))
    with captured_log() as records:
        exp = build_in_process(cfg)
    own = exp.model.state_dict()
    assert exp.init_source is not None and exp.init_source.name == "epoch_0002.pt"
    stagcn = [k for k in own if k.startswith("encoder.") and torch.is_floating_point(own[k])]
    assert stagcn and all(torch.equal(own[k], pretrained[k]) for k in stagcn)
    t5 = [k for k in own if k.startswith("t5.")]
    assert t5 and all(torch.equal(own[k], pretrained[k]) for k in t5)
    proj = [k for k in own if k.startswith("projection.") and own[k].dtype.is_floating_point and own[k].dim() >= 2]
    assert proj and not any(own[k].shape == pretrained[k].shape and torch.equal(own[k], pretrained[k]) for k in proj)
    message = " ".join(r.getMessage() for r in records)
    assert "skipped" in message and "projection." in message
    # The tokenizer travels with the weights: finetuning uses the pretraining tokenizer unchanged.
    assert exp.model.codec.tokenizer.backend_tokenizer.to_str() == \
        load_final(baseline_1p / "pretrain_checkpoints")["tokenizer_json"]


@pytest.mark.parametrize("overrides, key", [
    (["T5.NUM_LAYERS=2"], "T5.NUM_LAYERS"),  # same tensor shapes, more of them: must not load half a T5
    (["T5.D_MODEL=64", "T5.D_KV=16"], "T5.D_MODEL"),
    (["HIDDEN_CHANNEL=8", "OUT_CHANNEL=32"], "HIDDEN_CHANNEL"),
])
@pytest.mark.slow
def test_finetune_with_another_model_size_is_a_clear_error(baseline_1p, data, tmp_path, overrides, key):
    from common.errors import UserError

    cfg = write_experiment(tmp_path / "ft", data, pretrain=False, WEIGHT_PATH=str(baseline_1p / "pretrain_checkpoints"))
    with pytest.raises(UserError, match=key.replace(".", r"\.") + "="):
        build_in_process(cfg, overrides)


@pytest.mark.slow
def test_finetune_from_a_foreign_or_config_less_checkpoint_is_a_clear_error(baseline_1p, data, tmp_path):
    from engine.checkpoint import save_checkpoint
    from common.errors import UserError

    state = load_final(baseline_1p / "pretrain_checkpoints")
    cfg = write_experiment(tmp_path / "ft", data, pretrain=False, WEIGHT_PATH=str(tmp_path / "w" / "epoch_0001.pt"))
    # Without the saved config, the tensors themselves must match: a missing T5 block is an error.
    save_checkpoint(tmp_path / "w", "epoch_0001.pt", {k: v for k, v in state.items() if k not in ("config", "model_config")}, 1)
    with pytest.raises(UserError, match=r"tensors of this model are not in it \(e\.g\. t5\."):
        build_in_process(cfg, ["T5.NUM_LAYERS=2"])
    save_checkpoint(tmp_path / "w", "epoch_0001.pt", {"model": state["model"]}, 1)  # no tokenizer inside
    with pytest.raises(UserError, match="carries no tokenizer"):
        build_in_process(cfg)


@pytest.mark.slow
def test_finetune_cli_starts_from_pretrain_checkpoints_of_its_folder(baseline_1p, data, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(baseline_1p / "pretrain_checkpoints", exp / "pretrain_checkpoints")
    cfg = write_experiment(exp, data, pretrain=False, OPTIMIZER={"MAX_EPOCH": 1}, TRAIN={"SANITY_EVAL": False})

    res = train_main(cfg, "--set", "T5.NUM_LAYERS=2")  # the pretraining T5 has 1 layer
    assert res.returncode == 2, explain(res)
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, explain(res)
    assert "T5.NUM_LAYERS" in res.stderr and not (exp / "checkpoints").exists()

    res = train_main(cfg)
    assert res.returncode == 0, explain(res)
    assert "finetuning from" in res.stdout and "epoch_0002.pt" in res.stdout and "skipped" in res.stdout
    assert checkpoint_files(exp / "checkpoints") == ["epoch_0001.pt"]
    assert checkpoint_files(exp / "pretrain_checkpoints") == ["epoch_0001.pt", "epoch_0002.pt"]
    state = load_final(exp / "checkpoints")
    assert state["config"]["TASK"]["PRETRAIN"] is False
    assert sorted(read_json(exp / "jsons" / "results_epoch1.json")) == sorted(video_names(data["test"]))


# ---- config errors, dry run ------------------------------------------------------------------------

@pytest.mark.parametrize("where, args, message", [
    ("file", [], "unknown config key OPTIMIZER.MAX_EPOCHS; did you mean OPTIMIZER.MAX_EPOCH?"),
    ("cli", ["--set", "DATA.BATCH_SIZE=four"], "config key DATA.BATCH_SIZE: got 'four' (str), expected int"),
])
def test_config_errors_are_one_line_and_exit_2(data, tmp_path, where, args, message):
    cfg = write_experiment(tmp_path / "exp", data, **({"OPTIMIZER": {"MAX_EPOCHS": 3}} if where == "file" else {}))
    res = run_train(cfg, *args, timeout=120)
    assert res.returncode == 2, explain(res)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, explain(res)
    assert lines[0].startswith("error: ") and message in lines[0] and str(cfg) in lines[0]
    assert sorted(p.name for p in cfg.parent.iterdir()) == ["config.yaml"]  # nothing created
    # ... and at once: the config is checked before torch and transformers are imported (seconds).
    res = run([sys.executable, "-X", "importtime", TRAIN_SCRIPT, "--cfg_file", cfg, *args], timeout=120)
    assert res.returncode == 2 and "error: " in res.stderr
    imported = {ln.rsplit("|", 1)[-1].strip() for ln in res.stderr.splitlines() if ln.startswith("import time:")}
    assert "yaml" in imported and not {"torch", "transformers"} & imported


@pytest.mark.slow
def test_dry_run_prints_a_json_summary_and_trains_nothing(data, tmp_path):
    cfg = write_experiment(tmp_path / "exp", data)
    res = train_main(cfg, "--dry-run")
    assert res.returncode == 0, explain(res)
    summary = last_json_line(res.stdout)
    params = summary["params"]
    assert all(isinstance(params[k], int) and params[k] > 0 for k in ("stagcn", "projection", "t5", "total"))
    assert params["total"] == params["stagcn"] + params["projection"] + params["t5"]
    assert params["trainable"] == params["total"]  # T5.FREEZE NONE, no adapters
    assert summary["data"] == {"train_samples": 24, "test_clips": 11}
    assert sorted(p.name for p in cfg.parent.iterdir()) == ["config.yaml"]  # no checkpoint, no logs


# ---- multi-node, gradient accumulation ---------------------------------------------------------------

@pytest.fixture(scope="module")
def multinode_run(data, tmp_path_factory):
    """Two single-process 'nodes' on this machine meet at a c10d rendezvous on a free port. Batch 4 and
    GRAD_ACCUM_STEPS 2: 24 samples / (4 x 2 ranks) = 3 batches per rank -> 2 optimizer steps in the epoch."""
    exp = tmp_path_factory.mktemp("multinode")
    cfg = write_experiment(exp, data, DATA={"BATCH_SIZE": 4}, OPTIMIZER={"MAX_EPOCH": 1, "GRAD_ACCUM_STEPS": 2},
                           TRAIN={"SANITY_EVAL": False})
    endpoint = f"localhost:{free_port()}"
    procs = [start(torchrun_cmd(1, nnodes=2, endpoint=endpoint, rdzv_id=f"m2t-{exp.name}") +
                   ["--node_rank", str(node), TRAIN_SCRIPT, "--cfg_file", cfg]) for node in range(2)]
    try:
        outs = [finish(p) for p in procs]
    finally:
        for p in procs:
            kill_group(p)  # a launch left waiting for its peer must not outlive the test
    return exp, outs


@pytest.mark.slow
def test_two_nodes_on_one_machine_train_one_epoch_together(multinode_run, data):
    exp, outs = multinode_run
    for res in outs:
        assert res.returncode == 0, explain(res)
    state = load_final(exp / "pretrain_checkpoints")
    assert state["epoch"] == 1 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert sorted(read_json(exp / "jsons" / "results_epoch1.json")) == sorted(video_names(data["pretrain_test"]))


@pytest.mark.slow
def test_gradient_accumulation_takes_one_optimizer_step_per_accumulated_group(multinode_run):
    exp, _ = multinode_run
    state = load_final(exp / "pretrain_checkpoints")
    assert state["global_step"] == 2  # ceil(3 batches / 2)
    assert state["scheduler"]["last_epoch"] == 2




@pytest.mark.slow
def test_accumulated_gradient_is_the_mean_over_its_micro_batches_even_for_a_short_last_group(data, tmp_path,
                                                                                           one_thread):
    """3 batches, GRAD_ACCUM_STEPS 2: steps see mean(g0, g1) and g2 (not g2 / 2). In-process, no dropout."""
    from dataloaders.formats import dump_clips, load_clips
    from engine.trainer import Trainer

    small = {**data, "pretrain_train": tmp_path / "six.pkl"}
    dump_clips(load_clips(data["pretrain_train"])[:6], small["pretrain_train"])  # 3 batches of 2
    cfg_file = write_experiment(tmp_path / "exp", small, DROPOUT=0.0, DATA={"BATCH_SIZE": 2},
                                OPTIMIZER={"GRAD_ACCUM_STEPS": 2}, TRANSFORMATION={"PROJECTION_DROPOUT": 0.0},
                                T5={"DROPOUT": 0.0})
    exp = build_in_process(cfg_file)
    trainer = Trainer(exp, one_cpu_process())
    params = list(exp.model.parameters())
    seen = []

    class RecordingStep:  # the optimizer step, replaced: keep the gradient, leave the weights alone
        def remember(self):
            pass

        def __call__(self):
            seen.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params])
            trainer.optimizer.zero_grad(set_to_none=True)
            return 0.0, True

    trainer.stepper = RecordingStep()
    # BatchNorm running statistics move with every training forward, and a branch-1 reference is encoded with
    # them (eval mode): replay the batches from the same statistics.
    buffers = {k: v.clone() for k, v in exp.model.state_dict().items() if "running" in k or "num_batches" in k}
    trainer.train_epoch()
    trainer.tb.close()
    assert len(seen) == 2

    exp.model.load_state_dict(buffers, strict=False)
    trainer.sampler.set_epoch(1)
    single = []
    for batch in trainer.loader:  # the same batches, one backward each
        exp.model.zero_grad(set_to_none=True)
        exp.model(batch, exp.model.codec.encode_targets(batch["texts"])).backward()
        single.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params])
    assert len(single) == 3
    for got, want in ((seen[0], [(a + b) / 2 for a, b in zip(single[0], single[1])]), (seen[1], single[2])):
        worst = max((g - w).abs().max().item() for g, w in zip(got, want))
        scale = max(w.abs().max().item() for w in want)
        assert worst <= 1e-5 * max(scale, 1.0), worst


def test_training_steps_see_each_batch_at_the_speeds_drawn_for_it(data, tmp_path, one_thread):
    """DATA.AUGMENT_SPEED reaches the model: the forward of a training step gets the batch as augment_speed
    makes it from the same generator state, not the batch as collated."""
    from dataloaders.datasets import augment_speed
    from engine.trainer import Trainer

    exp = build_in_process(write_experiment(tmp_path / "exp", data, DATA={"AUGMENT_SPEED": 0.5}))
    trainer = Trainer(exp, one_cpu_process())
    seen = []
    exp.model.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    batch = next(iter(trainer.loader))
    torch.manual_seed(3)
    trainer.train_step(batch)
    trainer.tb.close()
    torch.manual_seed(3)
    want = augment_speed(batch, 0.5)
    assert not torch.equal(want["lengths"], batch["lengths"])
    assert torch.equal(seen[0]["lengths"], want["lengths"]) and torch.equal(seen[0]["frame_mask"], want["frame_mask"])
    assert torch.equal(seen[0]["coordinates"], want["coordinates"])


# ---- schedule and retention ---------------------------------------------------------------------

def test_checkpoint_schedule_each_epoch_below_10_then_every_5_and_the_last():
    from engine.trainer import should_checkpoint

    assert [e for e in range(1, 24) if should_checkpoint(e, 23)] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 20, 23]
    assert [e for e in range(1, 13) if should_checkpoint(e, 12)] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12]


def test_keep_last_k_keeps_the_newest_by_epoch_and_step(tmp_path):
    from engine.checkpoint import checkpoint_name, newest_valid_checkpoint, save_checkpoint

    for epoch, step in [(1, 0), (2, 0), (2, 5), (3, 0), (10, 0)]:
        save_checkpoint(tmp_path, checkpoint_name(epoch, step), {"epoch": epoch}, keep_last=2)
    assert checkpoint_files(tmp_path) == ["epoch_0003.pt", "epoch_0010.pt"]
    assert sorted(p.name for p in tmp_path.glob("*.sha256")) == ["epoch_0003.pt.sha256", "epoch_0010.pt.sha256"]
    assert not list(tmp_path.glob(".*tmp*"))
    assert newest_valid_checkpoint(tmp_path).name == "epoch_0010.pt"


# ---- early stopping -----------------------------------------------------------------------------

@pytest.mark.slow
def test_early_stop_keeps_the_best_checkpoint_and_a_relaunch_trains_nothing(data, tmp_path, one_thread, capsys,
                                                                            restore_logging):
    import train_t5_stagcn  # its main(), in this process: three runs without three start-ups

    # LR 1e-12: the captions never change, so the validation CIDEr never beats epoch 1's.
    cfg = write_experiment(tmp_path / "exp", data, OPTIMIZER={"LR": 1e-12, "MAX_EPOCH": 4},
                           EVAL={"METRIC_PERIOD": 1, "EARLY_STOP_PATIENCE": 2}, CHECKPOINT={"KEEP_LAST": 1})
    exp = cfg.parent
    assert train_t5_stagcn.main(["--cfg_file", str(cfg)]) == 0
    assert [h["epoch"] for h in read_json(exp / "jsons" / "loss_history.json")] == [1, 2, 3]
    assert "early stop after epoch 3" in capsys.readouterr().out
    # KEEP_LAST 1 keeps the newest, and the best epoch's checkpoint is never pruned.
    assert checkpoint_files(exp / "pretrain_checkpoints") == ["epoch_0001.pt", "epoch_0003.pt"]
    state = load_final(exp / "pretrain_checkpoints")
    assert state["early_stop"]["best_epoch"] == 1 and state["early_stop"]["stopped"]
    assert train_t5_stagcn.main(["--cfg_file", str(cfg)]) == 0
    assert "already stopped early at epoch 3" in capsys.readouterr().out
    assert checkpoint_files(exp / "pretrain_checkpoints") == ["epoch_0001.pt", "epoch_0003.pt"]
    assert len(read_json(exp / "jsons" / "loss_history.json")) == 3
    # Switching early stopping off (the message's advice) trains on to MAX_EPOCH.
    assert train_t5_stagcn.main(["--cfg_file", str(cfg), "--set", "EVAL.EARLY_STOP_PATIENCE=0"]) == 0
    assert [h["epoch"] for h in read_json(exp / "jsons" / "loss_history.json")] == [1, 2, 3, 4]


@pytest.mark.parametrize("sets, message", [
    (["EVAL.EARLY_STOP_PATIENCE=2", "EVAL.SCORE=false"], "early stopping needs the validation scores"),
    (["EVAL.EARLY_STOP_PATIENCE=-1"], "EVAL.EARLY_STOP_PATIENCE: got -1"),
])
def test_early_stop_config_errors(data, tmp_path, sets, message):
    cfg = write_experiment(tmp_path / "exp", data)
    res = run_train(cfg, "--set", *sets)
    assert res.returncode == 2 and message in res.stderr, explain(res)


@pytest.mark.slow
def test_score_false_writes_predictions_without_metrics(data, tmp_path):
    cfg = write_experiment(tmp_path / "exp", data, OPTIMIZER={"MAX_EPOCH": 1}, EVAL={"SCORE": False})
    res = train_main(cfg)
    assert res.returncode == 0, explain(res)
    jsons = cfg.parent / "jsons"
    assert (jsons / "results_epoch1.json").is_file() and not list(jsons.glob("metrics_epoch*.json"))
