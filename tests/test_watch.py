"""Watching a run: tensorboard (val/loss, samples/s, the HPARAMS row), jsons/val_loss.json, quiet logs when
nothing is a terminal, `evaluate.py --plot-curves`, and what `--dry-run` / `--print-config` say before a run.

One tiny two-epoch pretraining run through the command line (stdout and stderr piped, as under SLURM) serves
the tests that read what a run leaves behind."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

import evaluate
import train_t5_stagcn
from tests.cli_helpers import (build_in_process, captured_log, explain, one_cpu_process, read_json, run_train,
                               train_main,
                               tiny_data, write_experiment)

pytestmark = pytest.mark.timeout(300)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """Two epochs of 3 batches (8 per batch), evaluated and scored (no METEOR) after each and before the first."""
    cfg = write_experiment(tmp_path_factory.mktemp("trained"), data, TRAIN={"SANITY_EVAL": True})
    res = train_main(cfg)
    assert res.returncode == 0, explain(res)
    return cfg, res


def scalars(folder, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    assert tag in events.Tags()["scalars"], f"{tag} not among {events.Tags()['scalars']}"
    return {e.step: e.value for e in events.Scalars(tag)}


# ---- what a run leaves behind ----------------------------------------------------------------------

@pytest.mark.slow
def test_validation_loss_reaches_tensorboard_the_json_and_the_log(trained):
    cfg, _ = trained
    exp = cfg.parent
    from_json = {int(e): v for e, v in read_json(exp / "jsons" / "val_loss.json").items()}
    assert sorted(from_json) == [0, 1, 2]  # the sanity evaluation and both epochs
    assert all(math.isfinite(v) and v > 0 for v in from_json.values())
    assert scalars(exp / "train_logs", "val/loss") == pytest.approx(from_json, rel=1e-6)
    log = (exp / "train.log").read_text()
    for epoch, loss in from_json.items():
        assert f"epoch {epoch}: validation loss {loss:.4f}" in log


@pytest.mark.slow
def test_throughput_and_an_hparams_row_are_logged(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    cfg, _ = trained
    exp = cfg.parent
    rates = scalars(exp / "train_logs", "train/samples_per_s")
    assert sorted(rates) == list(range(1, 7)) and all(r > 0 for r in rates.values())  # LOG_EVERY 1, 6 steps
    row = EventAccumulator(str(exp / "train_logs" / "hparams"))
    row.Reload()
    content = row.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["lr"].number_value == pytest.approx(1e-3)
    assert hparams["batch_size"].number_value == 8 and hparams["branch"].number_value == 1
    assert hparams["reduction_policy"].string_value == "TIME_POOL"
    cider = {e: read_json(exp / "jsons" / f"metrics_epoch{e}.json")["CIDEr"] for e in (1, 2)}
    last = scalars(exp / "train_logs" / "hparams", "hparam/CIDEr_last")
    best = scalars(exp / "train_logs" / "hparams", "hparam/CIDEr_best")
    assert list(last.values()) == pytest.approx([cider[2]]) and list(best.values()) == pytest.approx([max(cider.values())])


@pytest.mark.slow
def test_a_run_without_a_terminal_draws_no_bars_and_logs_progress_lines(trained):
    _, res = trained
    assert "\r" not in res.stdout and "\r" not in res.stderr, explain(res)
    # 3 batches per epoch: a line per tenth of the epoch (with the last step's loss), none for the last batch:
    # the epoch's line follows.
    assert "epoch 1: 1/3 batches (" in res.stdout and "epoch 1: 2/3 batches, loss" in res.stdout, explain(res)
    assert "epoch 1: 3/3 batches" not in res.stdout


def test_validation_loss_is_the_token_mean_over_every_label_of_the_labelled_clips(data, tmp_path, one_thread):
    from dataloaders.datasets import collate
    from engine.trainer import Trainer

    cfg = write_experiment(tmp_path / "exp", data, DATA={"EVAL_BATCH_SIZE": 4})
    exp = build_in_process(cfg)
    for clip in exp.test_set.clips[:3]:
        clip["labels"] = []  # unlabelled clips have nothing to be scored against
    trainer = Trainer(exp, one_cpu_process())
    model = exp.model.train()
    rng = torch.get_rng_state()
    val_loss = trainer.validation_loss()
    assert model.training and torch.equal(torch.get_rng_state(), rng)  # no trace on the training that follows

    model.eval()
    loss_sum = tokens = 0.0
    with torch.no_grad():
        for i, clip in enumerate(exp.test_set.clips):
            for label in clip["labels"]:
                labels = model.codec.encode_targets([label])
                n = int((labels != -100).sum())
                loss_sum += float(model(collate([exp.test_set[i]]), labels)) * n
                tokens += n
    assert tokens > 0 and val_loss == pytest.approx(loss_sum / tokens, rel=1e-5)


def test_motion_gap_is_zero_exactly_when_the_decoder_cannot_see_the_motion(data, tmp_path, one_thread):
    from engine.trainer import Trainer

    exp = build_in_process(write_experiment(tmp_path / "exp", data, DATA={"EVAL_BATCH_SIZE": 4}))
    trainer = Trainer(exp, one_cpu_process())
    trainer.validation_loss()
    assert trainer.motion_gap is not None and abs(trainer.motion_gap) > 1e-5  # an untrained model reads it a little
    with torch.no_grad():
        for block in exp.model.t5.decoder.block:  # cut every cross-attention: the captions no longer see it
            block.layer[1].EncDecAttention.o.weight.zero_()
    trainer.validation_loss()
    assert trainer.motion_gap == pytest.approx(0.0, abs=1e-7)


def test_validation_loss_is_none_when_no_test_clip_has_labels(data, tmp_path, one_thread):
    from engine.trainer import Trainer

    exp = build_in_process(write_experiment(tmp_path / "exp", data))
    for clip in exp.test_set.clips:
        clip["labels"] = []
    assert Trainer(exp, one_cpu_process()).validation_loss() is None


# ---- evaluate.py --plot-curves -----------------------------------------------------------------------

@pytest.mark.slow
def test_plot_curves_draws_a_trained_run(trained, tmp_path, capsys):
    cfg, _ = trained
    out = tmp_path / "pictures" / "curves.png"
    assert evaluate.main(["--exp", str(cfg.parent), "--plot-curves", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    said = capsys.readouterr().out
    assert "training loss 2 epochs" in said and "validation loss 3 epochs" in said and "CIDEr 3 epochs" in said


def test_plot_curves_draws_what_an_experiment_has(data, tmp_path, capsys):
    cfg = write_experiment(tmp_path / "exp", data)
    (cfg.parent / "jsons").mkdir()
    (cfg.parent / "jsons" / "loss_history.json").write_text(json.dumps([{"epoch": 1, "loss": 3.2},
                                                                          {"epoch": 2, "loss": 2.9}]))
    out = tmp_path / "curves.png"
    assert evaluate.main(["--exp", str(cfg.parent), "--plot-curves", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    said = capsys.readouterr().out
    assert "training loss 2 epochs" in said and "no validation loss" in said and "no scores" in said


def test_plot_curves_refuses_an_existing_file_and_an_experiment_with_nothing_to_draw(data, tmp_path, capsys):
    cfg = write_experiment(tmp_path / "exp", data)
    existing = tmp_path / "mine.png"
    existing.write_bytes(b"a picture of the user's")
    assert evaluate.main(["--exp", str(cfg.parent), "--plot-curves", str(existing)]) == 2
    assert existing.read_bytes() == b"a picture of the user's"
    assert "--plot-curves" in capsys.readouterr().err
    out = tmp_path / "curves.png"
    assert evaluate.main(["--exp", str(cfg.parent), "--plot-curves", str(out)]) == 2
    assert "nothing to plot" in capsys.readouterr().err and not out.exists()


# ---- --dry-run, --print-config ----------------------------------------------------------------------

@pytest.mark.slow
def test_dry_run_tells_steps_warmup_weights_device_precision_and_warns_on_a_long_warmup(data, tmp_path):
    cfg = write_experiment(tmp_path / "exp", data)  # 3 steps x 2 epochs, WARMUP_STEPS 5: 83 % of the run
    res = train_main(cfg, "--dry-run")
    assert res.returncode == 0, explain(res)
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert {"params", "data", "logdir", "world_size"} <= summary.keys()  # the keys scripts already read
    assert summary["optimizer_steps"] == {"per_epoch": 3, "epochs": 2, "total": 6, "done": 0}
    assert summary["warmup"] == {"steps": 5, "fraction": pytest.approx(5 / 6, abs=1e-4)}
    assert summary["weights"]["load"] == "fresh" and summary["device"] == "cpu" and summary["precision"] == "fp32"
    out = res.stdout
    assert "3 optimizer steps/epoch x 2 epochs = 6 optimizer steps" in out and "warmup: 5 steps, 83% of the run" in out
    assert "WARNING OPTIMIZER.WARMUP_STEPS=5 is 83% of the run's 6 optimizer steps" in out
    assert "weights: fresh" in out and "device cpu, precision fp32" in out
    assert sorted(p.name for p in cfg.parent.iterdir()) == ["config.yaml"]


def test_dry_run_stays_quiet_about_a_short_warmup(data, tmp_path, capsys):
    exp = build_in_process(write_experiment(tmp_path / "exp", data, OPTIMIZER={"WARMUP_STEPS": 2}))
    with captured_log() as records:
        summary = train_t5_stagcn.dry_run_summary(exp, one_cpu_process())
    assert summary["warmup"]["fraction"] == pytest.approx(2 / 6, abs=1e-4)
    assert not [r for r in records if r.levelname == "WARNING"]


def test_finetune_dry_run_before_pretraining_names_the_pretrain_folder_it_searched(data, tmp_path):
    cfg = write_experiment(tmp_path / "exp", data, pretrain=False)
    with captured_log():
        weights = train_t5_stagcn.planned_weights(build_in_process(cfg))
    searched = cfg.parent / "pretrain_checkpoints"
    assert weights["load"] == "fresh" and weights["searched"] == str(searched)
    assert f"no valid checkpoint in {searched}" in weights["summary"]


@pytest.mark.slow
def test_dry_run_names_the_checkpoint_a_resume_or_a_finetune_starts_from(trained, data, tmp_path):
    cfg, _ = trained
    with captured_log():
        resume = train_t5_stagcn.planned_weights(build_in_process(cfg))
    assert resume["load"] == "resume" and resume["path"] == str(cfg.parent / "pretrain_checkpoints" / "epoch_0002.pt")

    pretrained = cfg.parent / "pretrain_checkpoints"
    relative = os.path.relpath(pretrained, tmp_path / "finetune")  # resolved against the config's folder
    finetune = write_experiment(tmp_path / "finetune", data, pretrain=False, WEIGHT_PATH=relative)
    with captured_log():
        init = train_t5_stagcn.planned_weights(build_in_process(finetune))
    assert init == {"load": "finetune-init", "path": str(pretrained.resolve() / "epoch_0002.pt"),
                    "searched": str(pretrained.resolve()), "summary": init["summary"]}
    assert f"WEIGHT_PATH {relative} resolved to {pretrained.resolve()}" in init["summary"]


@pytest.mark.slow
def test_print_config_prints_the_resolved_config_that_loads_back(data, tmp_path):
    from engine.config_loader import load_config

    cfg = write_experiment(tmp_path / "exp", data)
    res = run_train(cfg, "--print-config", "--set", "OPTIMIZER.LR=0.002", timeout=120)
    assert res.returncode == 0, explain(res)
    assert sorted(p.name for p in cfg.parent.iterdir()) == ["config.yaml"]  # nothing built or written
    printed = cfg.parent / "printed.yaml"
    printed.write_text(res.stdout)
    again = load_config(printed)
    assert again.to_dict() == load_config(cfg, ["OPTIMIZER.LR=0.002"]).to_dict()
    assert again.OPTIMIZER.LR == 0.002 and again.TRAIN.LOG_EVERY == 1 and again.CHECKPOINT.KEEP_LAST is not None
