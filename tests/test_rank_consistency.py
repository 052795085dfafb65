"""One model per checkpoint across ranks, and bit-for-bit repeatable training on CPU.

On CPU/gloo there is no SyncBatchNorm: each rank's BatchNorm running statistics follow its own batches. The
trainer hands every rank rank 0's parameters and buffers before it evaluates or saves, so the predictions
written during training (sharded over both ranks) are exactly what `evaluate.py --checkpoint` gives for the
checkpoint of that epoch in one process. And the same 2-rank run launched twice ends with the same bits.

Training runs through the command line (torchrun --standalone, gloo, OMP_NUM_THREADS=1) on the tiny
experiment of tests/cli_helpers, evaluate.py through its main() in this process (the code the script runs);
no Java is needed (predictions only, plus the metrics where Java is installed).
"""
from __future__ import annotations

import shutil

import pytest
import torch

from tests.cli_helpers import (explain, finish, load_final, read_json, run_train, start, tiny_data, train_cmd, video_names,
                               write_experiment)

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]  # torchrun training runs

EPOCHS = 2  # each with an evaluation and a checkpoint, every checkpoint kept
# 12 test clips: 6 in each rank's shard.
SIZES = {"train": 24, "test": 12, "pretrain_train": 24, "pretrain_test": 12}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from dataloaders.formats import dump_clips, load_clips

    paths = tiny_data(tmp_path_factory.mktemp("data"), sizes=SIZES)
    # The test clips without their captions: evaluate.py then only writes predictions (no Java needed).
    for stem in ("pretrain_test", "test"):
        paths[f"{stem}_unlabelled"] = paths[stem].with_name(f"{stem}_unlabelled.pkl")
        dump_clips([{k: v for k, v in c.items() if k != "labels"} for c in load_clips(paths[stem])],
                   paths[f"{stem}_unlabelled"])
    return paths


@pytest.mark.parametrize("branch, pretrain", [(0, True), (1, False)], ids=["branch0_pretrain", "branch1_finetune"])
def test_training_predictions_equal_evaluate_py_on_the_checkpoint_of_each_epoch(data, tmp_path, one_thread,
                                                                                restore_logging, branch, pretrain):
    """2-rank training with an evaluation and a checkpoint after each epoch; `evaluate.py --checkpoint
    epoch_N.pt` (its main(), in this process, one epoch after the other) must caption every test clip as
    training did in jsons/results_epochN.json, the clips of rank 1's shard included. BRANCH 0 on the varied
    pretraining motions; BRANCH 1 finetuning with the standards, whose embedding also goes through the
    encoder's BatchNorm. Sensitive by construction: batches of one clip and gradient accumulation over 6 (DDP
    broadcasts buffers only at the first forward of each group), so each rank's running statistics follow 6
    clips of its own; without the broadcast before evaluation, rank 1's captions differ in every epoch."""
    import evaluate

    exp = tmp_path / "exp"
    cfg = write_experiment(exp, data, pretrain=pretrain, BRANCH=branch, DATA={"BATCH_SIZE": 1},
                           OPTIMIZER={"MAX_EPOCH": EPOCHS, "LR": 1.0e-2, "WARMUP_STEPS": 2, "GRAD_ACCUM_STEPS": 6},
                           TRAIN={"SANITY_EVAL": False}, EVAL={"SCORE": False}, GENERATION={"MAX_LENGTH": 24},
                           CHECKPOINT={"KEEP_LAST": EPOCHS})
    res = run_train(cfg, nproc=2)
    assert res.returncode == 0, explain(res)
    unlabelled = data["pretrain_test_unlabelled" if pretrain else "test_unlabelled"]
    checkpoints = exp / ("pretrain_checkpoints" if pretrain else "checkpoints")
    differ = {}
    for epoch in range(1, EPOCHS + 1):
        out = tmp_path / f"preds_epoch{epoch}.json"
        argv = ["--exp", str(exp), "--checkpoint", str(checkpoints / f"epoch_{epoch:04d}.pt"),
                "--data", str(unlabelled), "--out", str(out)]
        assert evaluate.main(argv) == 0
        trained, evaluated = read_json(exp / "jsons" / f"results_epoch{epoch}.json"), read_json(out)
        assert sorted(trained) == sorted(evaluated) == sorted(video_names(unlabelled))
        differ.update({(epoch, k): (trained[k], evaluated[k]) for k in trained if trained[k] != evaluated[k]})
    assert not differ, f"{len(differ)} captions differ between training and evaluate.py " \
                       f"((epoch, clip): (training, evaluate.py)): {differ}"


def test_the_same_two_rank_run_twice_ends_with_the_same_bits(data, tmp_path):
    """Same config, same seed, two folders: the final model and optimizer state are bit-for-bit equal, and so
    are the loss history and every prediction/metrics file."""
    score = shutil.which("java") is not None
    cfgs = [write_experiment(tmp_path / name, data, DATA={"BATCH_SIZE": 4}, OPTIMIZER={"MAX_EPOCH": 2},
                             TRAIN={"SANITY_EVAL": False}, EVAL={"METRIC_PERIOD": 100, "SCORE": score})
            for name in ("a", "b")]
    procs = [start(train_cmd(cfg, nproc=2)) for cfg in cfgs]  # side by side: the bits may not depend on the load
    for proc in procs:
        res = finish(proc, timeout=280)
        assert res.returncode == 0, explain(res)
    folders = [cfg.parent for cfg in cfgs]
    a, b = (load_final(f / "pretrain_checkpoints") for f in folders)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (2, 6)
    assert a["model"].keys() == b["model"].keys()
    unequal = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not unequal, f"model tensors differ between the two runs: {unequal[:5]}"
    opt_a, opt_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert opt_a.keys() == opt_b.keys()
    assert all(torch.equal(opt_a[i][k], opt_b[i][k]) for i in opt_a for k in opt_a[i])
    assert a["loss_history"] == b["loss_history"]
    jsons = sorted(p.name for p in (folders[0] / "jsons").iterdir())
    assert "loss_history.json" in jsons and "results_epoch2.json" in jsons
    assert not score or "metrics_epoch2.json" in jsons
    assert jsons == sorted(p.name for p in (folders[1] / "jsons").iterdir())
    for name in jsons:
        assert (folders[0] / "jsons" / name).read_bytes() == (folders[1] / "jsons" / name).read_bytes(), name
