"""Reliability: kills, rank crashes, corrupt and hostile files, bad input, NaN losses, a full disk.

Each guarantee of the README's "What happens when…" section is exercised the way it happens to users:
real `kill -9` of a torchrun process group, a real rank crash under `torchrun --max-restarts 1`, real files
damaged on disk, crafted pickles that would run code, and the command-line entry points
(`train_t5_stagcn.main` / `evaluate.main`, the code the scripts run, in-process for speed; a subset as real
subprocesses to check exit codes and stderr at the process level). Faults that cannot be produced for real on
a CI machine (a full disk, a kill in the middle of a write) are injected at the lowest level: the file write.

Everything runs on CPU with the tiny experiment of tests/cli_helpers (HIDDEN 4 / OUT 16, 1-layer T5 d=32).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import common.files
from common.errors import EXIT_USER_ERROR, UserError
from tests.cli_helpers import (REPO, TRAIN_SCRIPT, build_in_process, captured_log, checkpoint_files, cli_env, explain,
                               kill_group, load_final, max_param_diff, one_cpu_process, read_json, run, run_train,
                               tiny_data, torchrun_cmd, train_cmd, train_main, wait_until_gone, write_experiment)

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]  # subprocess training runs and torchrun

TOL = 1e-6
EVALUATE = REPO / "evaluate.py"
# The random point of the kill -9 test; set M2T_KILL_SEED to try other points (the chosen one is reported).
KILL_SEED = int(os.environ.get("M2T_KILL_SEED", "7"))
# Every 2-process run here: 24 clips / (4 x 2 ranks) = 3 optimizer steps per epoch, 3 epochs (a checkpoint
# after each), no sanity evaluation, predictions only after the last epoch: ~10 s on 2 cores.
RUN_2P = dict(DATA={"BATCH_SIZE": 4}, OPTIMIZER={"MAX_EPOCH": 3}, TRAIN={"SANITY_EVAL": False},
              EVAL={"METRIC_PERIOD": 100})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted 2-process run that every killed, crashed or corrupted run must reproduce."""
    cfg = write_experiment(tmp_path_factory.mktemp("reference"), data, **RUN_2P)
    res = run_train(cfg, nproc=2)
    assert res.returncode == 0, explain(res)
    assert checkpoint_files(cfg.parent / "pretrain_checkpoints") == ["epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt"]
    return cfg.parent


def assert_same_training(exp: Path, reference: Path) -> None:
    a, b = load_final(exp / "pretrain_checkpoints"), load_final(reference / "pretrain_checkpoints")
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (3, 9)
    diff = max_param_diff(a["model"], b["model"])
    assert diff <= TOL, f"final parameters differ from the uninterrupted run by {diff:.3g}"
    got, want = read_json(exp / "jsons" / "loss_history.json"), read_json(reference / "jsons" / "loss_history.json")
    assert [h["loss"] for h in got] == pytest.approx([h["loss"] for h in want], abs=TOL, rel=0)


def write_digest(path: Path) -> None:
    """A matching digest, as save_checkpoint writes it: the file then counts as a complete checkpoint."""
    path.with_name(path.name + ".sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest())


def flip_bytes(path: Path, n: int = 16) -> None:
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + n] = bytes(b ^ 0xFF for b in raw[mid:mid + n])
    path.write_bytes(bytes(raw))


def truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def tree(*roots: Path) -> list[str]:
    return sorted(str(p) for root in roots if root.exists() for p in root.rglob("*"))


# ---- 1. kill -9 at a random point, relaunch ------------------------------------------------------------

def test_kill_9_of_a_two_process_job_at_a_random_point_then_relaunch_ends_as_an_uninterrupted_run(
        data, reference, tmp_path):
    rng = random.Random(KILL_SEED)
    # The point: after the n-th log line of rank 0 (1: start-up ... 6: epoch 2 saved) plus up to 0.6 s, i.e.
    # anywhere from building the model to the middle of epoch 3, saves included.
    after_lines, delay = rng.randint(1, 6), rng.uniform(0.0, 0.6)
    point = f"M2T_KILL_SEED={KILL_SEED}: SIGKILL {delay:.2f}s after rank 0's log line {after_lines}"
    cfg = write_experiment(tmp_path / "exp", data, **RUN_2P)
    cmd = train_cmd(cfg, nproc=2)
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=err,
                                text=True, start_new_session=True)
        try:
            seen = []
            while len(seen) < after_lines:
                line = proc.stdout.readline()
                assert line, f"{point}: the run ended first\n" + "".join(seen)
                if "[rank0]" in line:
                    seen.append(line)
            time.sleep(delay)
            assert proc.poll() is None, f"{point}: the run ended before the kill\n" + "".join(seen)
            workers = kill_group(proc)  # torchrun and both workers at once, no handler runs
            proc.wait(timeout=30)
            wait_until_gone(workers)  # the relaunch is "the same command" once every process has died
        finally:
            kill_group(proc)
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    ckpts = cfg.parent / "pretrain_checkpoints"
    left = sorted(p.name for p in ckpts.iterdir()) if ckpts.exists() else []

    res = run_train(cfg, nproc=2)  # the same command
    assert res.returncode == 0, f"{point}; left behind: {left}\n" + explain(res)
    assert_same_training(cfg.parent, reference)
    assert checkpoint_files(ckpts) == ["epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt"]
    assert not [p.name for p in ckpts.iterdir() if ".tmp" in p.name], f"{point}: temp files of the killed save"


# ---- 2. a rank crashes under torchrun --max-restarts -----------------------------------------------------

def test_rank_1_crash_under_torchrun_max_restarts_resumes_from_the_last_checkpoint(data, reference, tmp_path):
    marker = tmp_path / "rank1_crashed"
    cfg = write_experiment(tmp_path / "exp", data, **RUN_2P)
    cmd = torchrun_cmd(2) + ["--max-restarts", "1", TRAIN_SCRIPT, "--cfg_file", cfg]
    # Rank 1 dies (os._exit(17), no handler, no checkpoint) on the first batch of epoch 2, once.
    res = run(cmd, env=cli_env(M2T_TEST_FAULT=f"1:2:0:{marker}"))
    assert res.returncode == 0, explain(res)
    assert marker.read_text() == "crashed"  # the fault did happen ...
    assert "exitcode: 17" in res.stderr, explain(res)  # ... torchrun saw rank 1 fail and restarted the group
    resumed = [ln for ln in res.stdout.splitlines() if "resuming from" in ln]
    assert len(resumed) == 1 and "epoch_0001.pt (epoch 1, step 3)" in resumed[0], explain(res)
    assert checkpoint_files(cfg.parent / "pretrain_checkpoints") == ["epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt"]
    assert_same_training(cfg.parent, reference)


# ---- 3. corrupt checkpoints, a save killed midway ------------------------------------------------------

def test_truncated_and_bit_flipped_checkpoints_are_skipped_and_the_run_resumes_from_the_previous_one(
        reference, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(reference, exp, ignore=shutil.ignore_patterns("train_logs", "jsons"))
    ckpts = exp / "pretrain_checkpoints"
    truncate(ckpts / "epoch_0003.pt")  # the newest: cut short (a full disk, a copy interrupted)
    flip_bytes(ckpts / "epoch_0002.pt")  # the one before: same size, 16 bytes changed (bit rot)

    res = run_train(exp / "config.yaml", nproc=2)
    assert res.returncode == 0, explain(res)
    out = res.stdout
    for name in ("epoch_0003.pt", "epoch_0002.pt"):
        assert f"skipping checkpoint {ckpts / name}: integrity digest mismatch" in out, explain(res)
    assert f"resuming from {ckpts / 'epoch_0001.pt'} (epoch 1, step 3)" in out
    # Epochs 2 and 3 were trained again (their files rewritten, now valid) and end where the reference ends.
    assert_same_training(exp, reference)


def test_newest_valid_checkpoint_skips_damaged_and_unfinished_files_with_a_warning_naming_them(tmp_path):
    from engine.checkpoint import load_checkpoint, newest_valid_checkpoint, save_checkpoint

    for epoch in (1, 2, 3, 4):
        save_checkpoint(tmp_path, f"epoch_{epoch:04d}.pt", {"epoch": epoch, "w": torch.full((64,), float(epoch))}, 9)
    truncate(tmp_path / "epoch_0004.pt")
    flip_bytes(tmp_path / "epoch_0003.pt")
    (tmp_path / "epoch_0002.pt.sha256").unlink()  # its save never finished
    with captured_log() as records:
        assert newest_valid_checkpoint(tmp_path) == tmp_path / "epoch_0001.pt"
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert warnings == [f"skipping checkpoint {tmp_path / 'epoch_0004.pt'}: integrity digest mismatch (truncated or corrupted file)",
                        f"skipping checkpoint {tmp_path / 'epoch_0003.pt'}: integrity digest mismatch (truncated or corrupted file)",
                        f"skipping checkpoint {tmp_path / 'epoch_0002.pt'}: no integrity digest (the save did not finish)"]
    assert load_checkpoint(tmp_path / "epoch_0001.pt")["epoch"] == 1
    with pytest.raises(UserError, match=r"epoch_0004\.pt: invalid checkpoint: integrity digest mismatch"):
        load_checkpoint(tmp_path / "epoch_0004.pt")
    # Even without the digest check, a damaged file is a clear error, never a crash.
    with pytest.raises(UserError, match=r"epoch_0004\.pt: refused or unreadable checkpoint"):
        load_checkpoint(tmp_path / "epoch_0004.pt", check_digest=False)


KILL_POINTS = ["while writing the checkpoint", "after the rename, before the digest", "while writing the digest"]


@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_a_save_killed_midway_never_leaves_a_checkpoint_that_counts(tmp_path, kill_at):
    """A child process saves epoch 2 and SIGKILLs itself at that point of the save (no cleanup code runs);
    epoch 1 stays the newest valid checkpoint, and the next save removes the dead save's temp file."""
    import engine.checkpoint as ckpt

    ckpt.save_checkpoint(tmp_path, "epoch_0001.pt", {"epoch": 1, "w": torch.ones(256)}, keep_last=3)
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            real_open, opened = open, []

            class _DiesMidWrite:
                def __init__(self, f):
                    self.f = f

                def write(self, data):
                    self.f.write(bytes(data)[: len(data) // 2])
                    self.f.flush()
                    os.kill(os.getpid(), signal.SIGKILL)

                def __getattr__(self, name):
                    return getattr(self.f, name)

                def __enter__(self):
                    return self

                def __exit__(self, *exc):
                    self.f.close()

            def dying_open(file, mode="r", *args, **kwargs):
                f = real_open(file, mode, *args, **kwargs)
                opened.append(file)
                die_on = 1 if kill_at == "while writing the checkpoint" else 2
                return _DiesMidWrite(f) if len(opened) == die_on and kill_at != KILL_POINTS[1] else f

            real_atomic = ckpt.atomic_write_bytes

            def dying_atomic(path, payload):
                if kill_at == KILL_POINTS[1] and path.name.endswith(".sha256"):
                    os.kill(os.getpid(), signal.SIGKILL)
                real_atomic(path, payload)

            common.files.open = dying_open  # the one atomic writer the checkpoint save goes through
            ckpt.atomic_write_bytes = dying_atomic
            ckpt.save_checkpoint(tmp_path, "epoch_0002.pt", {"epoch": 2, "w": torch.ones(256) * 2}, keep_last=3)
        finally:
            os._exit(3)  # reached only if the kill did not happen
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status

    names = sorted(p.name for p in tmp_path.iterdir())
    with captured_log() as records:
        newest = ckpt.newest_valid_checkpoint(tmp_path)
    assert newest == tmp_path / "epoch_0001.pt", names
    assert ckpt.load_checkpoint(newest)["epoch"] == 1
    if kill_at == "while writing the checkpoint":
        assert ckpt.list_checkpoints(tmp_path) == [tmp_path / "epoch_0001.pt"]  # the temp file is not one
        assert any(n.startswith(".epoch_0002.pt.tmp") for n in names), names
    else:  # complete file, no digest: skipped, and said so
        assert "epoch_0002.pt" in names and "epoch_0002.pt.sha256" not in names
        assert [r.getMessage() for r in records] == [
            f"skipping checkpoint {tmp_path / 'epoch_0002.pt'}: no integrity digest (the save did not finish)"]

    # The relaunched run saves again: the dead save's leftovers go, the new checkpoint counts.
    ckpt.save_checkpoint(tmp_path, "epoch_0002.pt", {"epoch": 2, "w": torch.ones(256) * 2}, keep_last=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0001.pt", "epoch_0001.pt.sha256",
                                                          "epoch_0002.pt", "epoch_0002.pt.sha256"]
    assert ckpt.newest_valid_checkpoint(tmp_path) == tmp_path / "epoch_0002.pt"


# ---- 4. hostile checkpoints --------------------------------------------------------------------------

class _RunsCode:
    """Unpickling this runs a shell command (plain torch.load / pickle.load would)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def hostile_checkpoint(path: Path, marker: Path) -> Path:
    """A torch zip checkpoint that looks like ours and has a matching digest, with code inside."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {}, "tokenizer_json": "{}", "epoch": 1, "global_step": 3, "payload": _RunsCode(marker)}, path)
    write_digest(path)
    return path


REFUSED = f"refused or unreadable checkpoint (UnpicklingError: torch's weights_only loader refused it: " \
          f"Trying to load unsupported GLOBAL {os.system.__module__}.system"


def test_hostile_checkpoint_is_refused_by_load_checkpoint_and_its_code_does_not_run(tmp_path):
    from engine.checkpoint import load_checkpoint

    marker = tmp_path / "pwned"
    path = hostile_checkpoint(tmp_path / "epoch_0001.pt", marker)
    with pytest.raises(UserError) as e:
        load_checkpoint(path)
    assert str(e.value).startswith(f"{path}: {REFUSED}"), e.value
    assert "weights_only` set to `False`" not in str(e.value)  # never advise the user to run it anyway
    assert not marker.exists()


@pytest.mark.parametrize("route", ["training resume", "finetune WEIGHT_PATH", "evaluate --checkpoint PATH"])
def test_hostile_checkpoint_is_refused_by_every_cli_and_its_code_does_not_run(data, tmp_path, capsys, restore_logging,
                                                                              route):
    import evaluate
    import train_t5_stagcn

    marker = tmp_path / "pwned"
    exp = tmp_path / "exp"
    if route == "training resume":  # the newest checkpoint of the run itself
        cfg = write_experiment(exp, data)
        path = hostile_checkpoint(exp / "pretrain_checkpoints" / "epoch_0001.pt", marker)
        argv, main = ["--cfg_file", str(cfg)], train_t5_stagcn.main
    elif route == "finetune WEIGHT_PATH":
        path = hostile_checkpoint(tmp_path / "downloaded" / "epoch_0001.pt", marker)
        cfg = write_experiment(exp, data, pretrain=False, WEIGHT_PATH=str(path))
        argv, main = ["--cfg_file", str(cfg)], train_t5_stagcn.main
    else:
        cfg = write_experiment(exp, data)
        path = hostile_checkpoint(tmp_path / "downloaded" / "epoch_0001.pt", marker)
        clip = tmp_path / "clip.npy"
        import numpy as np

        np.save(clip, np.zeros((12, 66), dtype=np.float32))  # unlabelled: no scorer, straight to the model
        argv, main = ["--exp", str(exp), "--checkpoint", str(path), "--data", str(clip)], evaluate.main
    before = tree(tmp_path)
    assert main(argv) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: {REFUSED}"), err
    assert not marker.exists()
    assert tree(tmp_path) == before  # no log, no folder, no predictions


# ---- 5. bad input: one line, exit 2, nothing left behind -------------------------------------------------

def _clips(path):
    from dataloaders.formats import load_clips

    return load_clips(path)


def _dump(clips, path: Path) -> Path:
    from dataloaders.formats import dump_clips

    dump_clips(clips, path)
    return path


def _raw_pickle(obj, path: Path) -> Path:
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


def _bad_train_file(ctx, mutate, pretrain=True) -> tuple[Path, str]:
    """The training file with entry 3 changed by `mutate(clip)`; returns (path, entry 3's description)."""
    clips = _clips(ctx.data["pretrain_train" if pretrain else "train"])
    mutate(clips[3])
    path = _dump(clips, ctx.tmp / "bad_train.pkl")
    return path, f"{path}: entry 3 (video_name {clips[3]['video_name']!r})"


class Ctx:
    def __init__(self, tmp: Path, data: dict, reference: Path):
        self.tmp, self.data, self.reference = tmp, data, reference
        self.exp = tmp / "exp"

    def train(self, *args, pretrain=True, **sections):
        cfg = write_experiment(self.exp, self.data, pretrain=pretrain, **sections)
        return "train", ["--cfg_file", str(cfg), *args]

    def train_raw(self, text: str):
        self.exp.mkdir(parents=True, exist_ok=True)
        (self.exp / "config.yaml").write_text(text)
        return "train", ["--cfg_file", str(self.exp / "config.yaml")]

    def with_train_file(self, path: Path, pretrain=True):
        return self.train(pretrain=pretrain, DATA={"TRAIN": str(path)})

    @property
    def cfg(self) -> Path:
        return self.exp / "config.yaml"

    def refs_json(self):
        refs = {"c0": ["a person walks forward"], "c1": ["a person jumps twice"]}
        path = self.tmp / "refs.json"
        path.write_text(json.dumps(refs))
        return path


def _set_coord(i, value):
    def mutate(clip):
        clip["coordinates"][2, i] = value
    return mutate


def case_misspelled_key(c):
    tool, argv = c.train(OPTIMIZER={"MAX_EPOCHS": 3})
    return tool, argv, [str(c.cfg), "unknown config key OPTIMIZER.MAX_EPOCHS; did you mean OPTIMIZER.MAX_EPOCH?"]


def case_wrong_type(c):
    tool, argv = c.train("--set", "DATA.BATCH_SIZE=eight")
    return tool, argv, [str(c.cfg), "config key DATA.BATCH_SIZE: got 'eight' (str), expected int"]


def case_negative_batch_size(c):
    tool, argv = c.train(DATA={"BATCH_SIZE": -4})
    return tool, argv, [str(c.cfg), "config key DATA.BATCH_SIZE: got -4, expected a finite value in [1, 65536]"]


def case_set_without_equals(c):
    tool, argv = c.train("--set", "OPTIMIZER.LR")
    return tool, argv, ["--set 'OPTIMIZER.LR': expected KEY=VALUE"]


def case_malformed_yaml(c):
    tool, argv = c.train_raw("DATA:\n  TRAIN: [a.pkl\nOPTIMIZER:\n  LR: 1e-3\n")
    return tool, argv, [f"{c.cfg}: not valid YAML at line 3, column 10"]


def case_config_not_a_mapping(c):
    tool, argv = c.train_raw("- HIDDEN_CHANNEL: 4\n- OUT_CHANNEL: 16\n")
    return tool, argv, [f"{c.cfg}: expected a mapping of config keys at the top level"]


def case_missing_data_file(c):
    tool, argv = c.with_train_file(c.tmp / "nope.pkl")
    return tool, argv, [f"{c.tmp / 'nope.pkl'}: file not found"]


def case_empty_dataset(c):
    path = _dump([], c.tmp / "empty.pkl")
    tool, argv = c.with_train_file(path)
    return tool, argv, [f"{path}: contains no clips, expected a non-empty list of clip dicts"]


def case_non_list_pickle(c):
    path = _raw_pickle("not a list", c.tmp / "str.pkl")
    tool, argv = c.with_train_file(path)
    return tool, argv, [f"{path}: holds a str, expected a list of clip dicts"]


def case_coordinates_width_65(c):
    path, where = _bad_train_file(c, lambda clip: clip.__setitem__("coordinates", clip["coordinates"][:, :65]))
    tool, argv = c.with_train_file(path)
    return tool, argv, [f"{where}: key 'coordinates' has width 65, expected 66"]


def case_nan_coordinates(c):
    path, where = _bad_train_file(c, _set_coord(7, float("nan")))
    tool, argv = c.with_train_file(path)
    return tool, argv, [f"{where}: key 'coordinates' has 1 non-finite values (1 NaN, 0 inf), first at frame 2"]


def case_inf_coordinates(c):
    path, where = _bad_train_file(c, _set_coord(0, float("-inf")))
    tool, argv = c.with_train_file(path)
    return tool, argv, [f"{where}: key 'coordinates' has 1 non-finite values (0 NaN, 1 inf), first at frame 2"]


def case_one_frame_clip(c):
    path, where = _bad_train_file(c, lambda clip: clip.__setitem__("coordinates", clip["coordinates"][:1]))
    tool, argv = c.with_train_file(path)
    return tool, argv, [f"{where}: key 'coordinates' has 1 frame(s), expected at least 2"]


def case_empty_label(c):
    path, where = _bad_train_file(c, lambda clip: clip.__setitem__("labels", [clip["labels"][0], "  "]))
    tool, argv = c.with_train_file(path)
    return tool, argv, [f"{where}: key 'labels' item 1 is empty, expected a non-empty string"]


def case_labels_not_a_list(c):
    path, where = _bad_train_file(c, lambda clip: clip.__setitem__("labels", "a person walks"))
    tool, argv = c.with_train_file(path)
    return tool, argv, [f"{where}: key 'labels' is str, expected a list of strings"]


def case_duplicate_video_name(c):
    clips = _clips(c.data["pretrain_train"])
    clips[5]["video_name"] = clips[2]["video_name"]
    path = _dump(clips, c.tmp / "dup.pkl")
    tool, argv = c.with_train_file(path)
    return tool, argv, [f"{path}: entry 5 (video_name {clips[2]['video_name']!r}): video_name "
                        f"{clips[2]['video_name']!r} is duplicated (also entry 2), expected unique"]


def case_hostile_data_pickle(c):
    path = _raw_pickle([{"video_name": "x", "coordinates": _RunsCode(c.tmp / "pwned")}], c.tmp / "evil.pkl")
    tool, argv = c.with_train_file(path)
    return tool, argv, [f"{path}: refused to unpickle global {os.system.__module__}.system"]


def case_motion_type_missing_in_finetune(c):
    path, where = _bad_train_file(c, lambda clip: clip.pop("motion_type"), pretrain=False)
    tool, argv = c.with_train_file(path, pretrain=False)
    return tool, argv, [f"{where}: missing key 'motion_type'"]


def case_missing_standard_for_a_motion_type(c):
    standards = [s for s in _clips(c.data["standard"]) if s["video_name"] != "Cross"]
    path = _dump(standards, c.tmp / "only_jab.pkl")
    clips = _clips(c.data["train"])
    first = next(i for i, clip in enumerate(clips) if clip["motion_type"] == "Cross")
    tool, argv = c.train(pretrain=False, DATA={"STANDARD": str(path)})
    return tool, argv, [f"{c.data['train']}: entry {first} (video_name {clips[first]['video_name']!r}): motion_type "
                        f"'Cross' has no standard motion; available standards: Jab"]


def case_branch1_without_standards_file(c):
    tool, argv = c.train("--set", "DATA.STANDARD=", pretrain=False)
    return tool, argv, ["config key DATA.STANDARD: missing, BRANCH 1 finetuning needs the standards file"]


def case_t5_size_mismatch_at_finetune(c):
    weights = c.reference / "pretrain_checkpoints" / "epoch_0001.pt"
    tool, argv = c.train("--set", "T5.D_FF=128", pretrain=False, WEIGHT_PATH=str(weights))
    return tool, argv, [f"{weights}: trained with T5.D_FF=64, this config has T5.D_FF=128; the sizes must match"]


def case_tokenizer_t5_mismatch_at_finetune(c):
    """Weights whose tokenizer is not the one their T5 embedding was trained with (another vocabulary)."""
    from engine.checkpoint import save_checkpoint
    from models.tokenizer import tokenizer_to_json, train_caption_tokenizer

    state = load_final(c.reference / "pretrain_checkpoints")
    texts = [lab for clip in _clips(c.data["train"]) for lab in clip["labels"]]
    state["tokenizer_json"] = tokenizer_to_json(train_caption_tokenizer(texts, 280))
    path = save_checkpoint(c.tmp / "mixed", "epoch_0003.pt", state, keep_last=1)
    rows = state["model"]["t5.shared.weight"].shape[0]
    tool, argv = c.train(pretrain=False, WEIGHT_PATH=str(path))
    return tool, argv, [f"{path}: tensor t5.shared.weight has shape ({rows}, 32), this config builds (",
                        "T5.* sizes must match the pretraining config"]


def case_resume_with_another_size(c):
    src = c.reference / "pretrain_checkpoints"
    (c.exp / "pretrain_checkpoints").mkdir(parents=True)
    for name in ("epoch_0001.pt", "epoch_0001.pt.sha256"):
        shutil.copy(src / name, c.exp / "pretrain_checkpoints" / name)
    tool, argv = c.train("--set", "T5.NUM_LAYERS=2", **RUN_2P)
    return tool, argv, [f"{c.exp / 'pretrain_checkpoints' / 'epoch_0001.pt'}: trained with T5.NUM_LAYERS=1, this "
                        "config has T5.NUM_LAYERS=2; a run resumes with the sizes it started with"]


def case_logdir_is_a_file(c):
    logdir = c.tmp / "results.txt"
    logdir.write_text("not a folder")
    tool, argv = c.train(LOGDIR=str(logdir))
    return tool, argv, [f"LOGDIR {logdir}: exists and is not a folder"]


def case_unreadable_experiment_folder(c):
    tool, argv = c.train()
    c.unreadable = c.exp  # see _unreadable: chmod 000, or EACCES injected when running as root
    return tool, argv, [f"{c.cfg}: cannot read config (Permission denied)"]


def case_unreadable_data_file(c):
    path = _dump(_clips(c.data["pretrain_train"]), c.tmp / "locked" / "train.pkl")
    tool, argv = c.with_train_file(path)
    c.unreadable = path.parent
    return tool, argv, [f"{path}: cannot read (Permission denied)"]


def case_java_absent_for_meteor(c):
    preds = c.tmp / "preds.json"
    preds.write_text(json.dumps({"c0": "a person walks", "c1": "a person jumps"}))
    c.env = {"PATH": str(c.tmp / "empty_bin")}  # no `java` on PATH (the interpreter is called by its full path)
    return "evaluate", ["--pred", str(preds), "--ann", str(c.refs_json()), "--meteor"], ["Java not found: "]


def case_predictions_with_unknown_ids(c):
    preds = c.tmp / "preds.json"
    preds.write_text(json.dumps({"c0": "a person walks", "c1": "a person jumps", "zz_extra": "a person sits"}))
    return "evaluate", ["--pred", str(preds), "--ann", str(c.refs_json()), "--no-meteor"], [str(preds), "'zz_extra'"]


def case_predictions_not_an_object(c):
    preds = c.tmp / "preds.json"
    preds.write_text(json.dumps(["a person walks"]))
    return "evaluate", ["--pred", str(preds), "--ann", str(c.refs_json())], [
        f"{preds}: predictions must be a JSON object {{video_name: caption}}, got a list"]


def case_evaluate_corrupt_checkpoint(c):
    c.train()
    path = c.tmp / "ckpt" / "epoch_0003.pt"
    path.parent.mkdir()
    shutil.copy(c.reference / "pretrain_checkpoints" / "epoch_0003.pt", path)
    write_digest(path)
    truncate(path)
    return "evaluate", ["--exp", str(c.exp), "--checkpoint", str(path)], [
        f"{path}: invalid checkpoint: integrity digest mismatch (truncated or corrupted file)"]


def case_evaluate_npy_clip_of_width_65(c):
    import numpy as np

    c.train()
    clip = c.tmp / "new_clip.npy"
    np.save(clip, np.zeros((20, 65), dtype=np.float32))
    weights = c.reference / "pretrain_checkpoints" / "epoch_0003.pt"
    return "evaluate", ["--exp", str(c.exp), "--checkpoint", str(weights), "--data", str(clip)], [
        f"{clip}: entry 0 (video_name 'new_clip'): key 'coordinates' has width 65, expected 66"]


def case_evaluate_batch_size_0(c):
    c.train()
    return "evaluate", ["--exp", str(c.exp), "--checkpoint", "latest", "--batch-size", "0"], [
        "--batch-size 0: expected >= 1"]


needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs Java (caption scorer)")
CASES = [
    # (case, run as a real subprocess?)
    (case_misspelled_key, False), (case_wrong_type, False), (case_negative_batch_size, False),
    (case_set_without_equals, True), (case_malformed_yaml, True), (case_config_not_a_mapping, False),
    (case_missing_data_file, False), (case_empty_dataset, False), (case_non_list_pickle, False),
    (case_coordinates_width_65, False), (case_nan_coordinates, True), (case_inf_coordinates, False),
    (case_one_frame_clip, False), (case_empty_label, False), (case_labels_not_a_list, False),
    (case_duplicate_video_name, False), (case_hostile_data_pickle, False),
    (case_motion_type_missing_in_finetune, False), (case_missing_standard_for_a_motion_type, False),
    (case_branch1_without_standards_file, False), (case_t5_size_mismatch_at_finetune, False),
    (case_tokenizer_t5_mismatch_at_finetune, False), (case_resume_with_another_size, False),
    (case_logdir_is_a_file, True), (case_unreadable_experiment_folder, False), (case_unreadable_data_file, False),
    (case_java_absent_for_meteor, True), (pytest.param(case_predictions_with_unknown_ids, True, marks=needs_java)),
    (case_predictions_not_an_object, False), (case_evaluate_corrupt_checkpoint, True),
    (case_evaluate_npy_clip_of_width_65, False), (case_evaluate_batch_size_0, False),
]


def _case_id(value):
    return value.__name__[len("case_"):].replace("_", "-") if callable(value) else ("subprocess" if value else "main")


@contextlib.contextmanager
def _unreadable(folder, monkeypatch):
    """EACCES on everything inside `folder`: chmod 000 for a normal user; root reads through any mode, so
    there the error the kernel would give is raised by open() (pathlib reads through it too)."""
    if folder is None:
        yield
        return
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0)
        try:
            yield
        finally:
            folder.chmod(mode)
        return
    import builtins
    import io

    real_open = builtins.open

    def denied(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file).resolve().is_relative_to(folder.resolve()):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", denied)
    monkeypatch.setattr(io, "open", denied)  # pathlib.Path.read_text/open go through io.open
    yield


@pytest.mark.parametrize("case, subprocess_run", CASES, ids=_case_id)
def test_bad_input_exits_2_with_one_line_and_leaves_nothing_behind(data, reference, tmp_path, capsys, monkeypatch,
                                                                   restore_logging, one_thread, case, subprocess_run):
    import evaluate
    import train_t5_stagcn

    ctx = Ctx(tmp_path / "case", data, reference)
    ctx.tmp.mkdir()
    ctx.unreadable, ctx.env = None, {}
    tool, argv, expected = case(ctx)
    before = tree(ctx.tmp, reference)
    if subprocess_run:
        script = TRAIN_SCRIPT if tool == "train" else EVALUATE
        res = run([sys.executable, script, *argv], env=cli_env(**ctx.env), timeout=120)
        code, err = res.returncode, res.stderr
    else:
        assert not ctx.env
        with _unreadable(ctx.unreadable, monkeypatch):
            code = (train_t5_stagcn.main if tool == "train" else evaluate.main)(argv)
        err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == EXIT_USER_ERROR, f"exit {code}\n{err}"
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    for text in expected:
        assert text in lines[0], f"expected {text!r} in\n{lines[0]}"
    assert tree(ctx.tmp, reference) == before  # no folder, log, checkpoint, tokenizer or prediction was created
    assert not (ctx.tmp / "pwned").exists()


def test_the_bad_input_table_has_at_least_20_cases_and_5_subprocesses():
    assert len(CASES) >= 20
    assert sum(1 for c in CASES if (c.values[1] if hasattr(c, "values") else c[1])) >= 5


# ---- 6. NaN / inf loss ---------------------------------------------------------------------------------

def test_a_nan_loss_skips_that_step_with_a_warning_and_training_finishes_finite(data, tmp_path, monkeypatch, capsys,
                                                                                restore_logging, one_thread):
    import train_t5_stagcn

    cfg = write_experiment(tmp_path / "exp", data, OPTIMIZER={"MAX_EPOCH": 1}, TRAIN={"SANITY_EVAL": False})
    monkeypatch.setenv("M2T_TEST_NAN_STEPS", "2")  # 3 optimizer steps, the 2nd has a NaN loss
    assert train_t5_stagcn.main(["--cfg_file", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "WARNING step 2: non-finite loss/gradient, step skipped (1 in a row, limit 5)" in out, out
    state = load_final(cfg.parent / "pretrain_checkpoints")
    assert state["epoch"] == 1 and state["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in state["model"].values() if torch.is_floating_point(v))
    adam_steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert adam_steps == {2.0}  # the NaN step never reached the optimizer
    history = read_json(cfg.parent / "jsons" / "loss_history.json")
    assert len(history) == 1 and torch.isfinite(torch.tensor(history[0]["loss"]))


def test_more_consecutive_nan_losses_than_max_bad_steps_abort_and_keep_the_last_good_checkpoint(data, tmp_path):
    cfg = write_experiment(tmp_path / "exp", data, OPTIMIZER={"MAX_EPOCH": 2}, EVAL={"METRIC_PERIOD": 100},
                           TRAIN={"SANITY_EVAL": False, "MAX_BAD_STEPS": 1})
    ckpts = cfg.parent / "pretrain_checkpoints"
    res = run_train(cfg, env=cli_env(M2T_TEST_NAN_STEPS="4,5"))  # epoch 2's first two steps: K + 1 = 2 in a row
    assert res.returncode == 1, explain(res)
    assert "step 4: non-finite loss/gradient, step skipped (1 in a row, limit 1)" in res.stdout
    errors = [ln for ln in res.stderr.splitlines() if "error" in ln.lower()]
    assert "Traceback" not in res.stderr and errors == [
        "error: loss was non-finite for 2 consecutive steps (TRAIN.MAX_BAD_STEPS=1); lower OPTIMIZER.LR or check "
        f"the data; the last good checkpoint is in {ckpts}"], explain(res)
    assert checkpoint_files(ckpts) == ["epoch_0001.pt"]
    state = load_final(ckpts)  # digest verified
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values()
                                       if torch.is_floating_point(v))


# ---- 7. disk full while saving -------------------------------------------------------------------------

class _FullDisk:
    """A file whose write stores half the bytes, then fails as a full disk does."""

    def __init__(self, f, name):
        self.f, self.name = f, name

    def write(self, data):
        self.f.write(bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.name)

    def __getattr__(self, attr):
        return getattr(self.f, attr)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def fill_disk_at(monkeypatch, nth_write: int) -> None:
    """Make the nth file opened for writing by engine.checkpoint run out of space."""
    count = [0]

    def open_(file, mode="r", *args, **kwargs):
        f = open(file, mode, *args, **kwargs)
        if "w" in mode:
            count[0] += 1
            if count[0] == nth_write:
                return _FullDisk(f, str(file))
        return f

    monkeypatch.setattr(common.files, "open", open_, raising=False)


@pytest.mark.parametrize("nth_write, what", [(1, "the checkpoint"), (2, "its digest")])
def test_disk_full_while_saving_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch, nth_write, what):
    from engine.checkpoint import load_checkpoint, newest_valid_checkpoint, save_checkpoint

    save_checkpoint(tmp_path, "epoch_0001.pt", {"epoch": 1, "w": torch.ones(4096)}, keep_last=1)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    fill_disk_at(monkeypatch, nth_write)
    with pytest.raises(UserError) as e:
        save_checkpoint(tmp_path, "epoch_0002.pt", {"epoch": 2, "w": torch.ones(4096) * 2}, keep_last=1)
    assert str(e.value) == (f"{tmp_path / 'epoch_0002.pt'}: could not write the checkpoint (No space left on "
                            f"device); the previous checkpoints in {tmp_path} are intact"), what
    # Nothing half-written or digest-less is left, and keep_last=1 did not prune the survivor.
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert newest_valid_checkpoint(tmp_path) == tmp_path / "epoch_0001.pt"
    assert load_checkpoint(tmp_path / "epoch_0001.pt")["epoch"] == 1


def test_disk_full_during_training_stops_with_exit_2_and_one_line(data, tmp_path, monkeypatch, capsys,
                                                                  restore_logging, one_thread):
    """Through the training CLI: epoch 1 is saved, the disk fills while saving epoch 2."""
    import engine.checkpoint as ckpt
    import train_t5_stagcn

    cfg = write_experiment(tmp_path / "exp", data, OPTIMIZER={"MAX_EPOCH": 2}, TRAIN={"SANITY_EVAL": False})
    ckpts = cfg.parent / "pretrain_checkpoints"
    real_save = ckpt.save_checkpoint

    def save(folder, name, state, keep_last, **kwargs):
        if name == "epoch_0002.pt":
            fill_disk_at(monkeypatch, 1)
        return real_save(folder, name, state, keep_last, **kwargs)

    monkeypatch.setattr(ckpt, "save_checkpoint", save)
    assert train_t5_stagcn.main(["--cfg_file", str(cfg)]) == EXIT_USER_ERROR
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]  # not tqdm's bar
    assert errors == [f"error: {ckpts / 'epoch_0002.pt'}: could not write the checkpoint (No space left on device); "
                      f"the previous checkpoints in {ckpts} are intact"]
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch_0001.pt", "epoch_0001.pt.sha256"]
    assert load_final(ckpts)["epoch"] == 1


def test_bad_config_under_torchrun_prints_one_error_line(data, tmp_path):
    """Every rank reads the same bad key; the user sees the one-line error once (rank 0), not once per rank."""
    cfg = write_experiment(tmp_path / "exp", data, OPTIMIZER={"LRR": 1e-3})
    res = run_train(cfg, nproc=2)
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, explain(res)
    assert "OPTIMIZER.LRR" in lines[0] and "did you mean OPTIMIZER.LR" in lines[0]


# ---- trained work is saved before scoring; scoring failures never cost an epoch ----------------------

class _FailingScorer:
    """Fails like a JVM that dies mid-run; records whether the epoch's checkpoint existed when it was asked."""

    keys = ("CIDEr",)

    def __init__(self, checkpoint_dir: Path):
        self.checkpoint_dir, self.saw_checkpoint = checkpoint_dir, []

    def score(self, predictions, references):
        self.saw_checkpoint.append(sorted(p.name for p in self.checkpoint_dir.glob("epoch_*.pt")))
        raise RuntimeError("java died (simulated)")


def test_a_scoring_failure_keeps_the_epoch_and_training_goes_on(data, tmp_path, one_thread):
    from engine.trainer import Trainer

    cfg_file = write_experiment(tmp_path / "exp", data, OPTIMIZER={"MAX_EPOCH": 2}, TRAIN={"SANITY_EVAL": False})
    exp = build_in_process(cfg_file)
    scorer = _FailingScorer(exp.cfg.checkpoint_dir)
    with captured_log() as records:
        Trainer(exp, one_cpu_process()).fit(scorer)
    assert scorer.saw_checkpoint == [["epoch_0001.pt"], ["epoch_0001.pt", "epoch_0002.pt"]]  # saved, then scored
    jsons = tmp_path / "exp" / "jsons"
    assert (jsons / "results_epoch1.json").is_file() and (jsons / "results_epoch2.json").is_file()
    assert not list(jsons.glob("metrics_epoch*.json"))
    failures = [r.getMessage() for r in records if "scoring failed" in r.getMessage()]
    assert len(failures) == 2 and "java died (simulated)" in failures[0] and "evaluate.py --exp" in failures[0]


def test_a_skipped_step_leaves_parameters_and_batchnorm_statistics_as_they_were(data, tmp_path, monkeypatch):
    from engine.callbacks import Callback
    from engine.optim import norm_statistics
    from engine.trainer import Trainer

    monkeypatch.setenv("M2T_TEST_NAN_STEPS", "2")
    cfg_file = write_experiment(tmp_path / "exp", data, OPTIMIZER={"MAX_EPOCH": 1}, TRAIN={"SANITY_EVAL": False},
                                EVAL={"SCORE": False})
    exp = build_in_process(cfg_file)
    seen = {}

    class Watch(Callback):
        def before_batch(self, trainer, epoch, index, batch):
            if trainer.global_step == 1:  # step 2 is about to run its forward pass
                seen["before"] = [t.clone() for t in norm_statistics(trainer.model)]
                seen["params"] = [p.detach().clone() for p in trainer.model.parameters()]

        def after_optimizer_step(self, trainer, loss, grad_norm, stepped):
            if trainer.global_step == 2:
                seen["stepped"] = stepped
                seen["after"] = [t.clone() for t in norm_statistics(trainer.model)]
                seen["params_after"] = [p.detach().clone() for p in trainer.model.parameters()]

    Trainer(exp, one_cpu_process(), callbacks=(Watch(),)).fit(None)
    assert seen["stepped"] is False
    assert len(seen["before"]) > 10  # the encoder's and the projection's BatchNorms
    assert all(torch.equal(a, b) for a, b in zip(seen["before"], seen["after"]))
    assert all(torch.equal(a, b) for a, b in zip(seen["params"], seen["params_after"]))
    assert all(torch.isfinite(t.float()).all() for t in seen["after"])


def test_resuming_with_a_changed_optimizer_setting_is_refused_naming_each_key(data, tmp_path, capsys, restore_logging,
                                                                              one_thread):
    import train_t5_stagcn

    cfg = write_experiment(tmp_path / "exp", data, OPTIMIZER={"MAX_EPOCH": 1}, TRAIN={"SANITY_EVAL": False},
                           EVAL={"SCORE": False})
    assert train_t5_stagcn.main(["--cfg_file", str(cfg)]) == 0
    capsys.readouterr()
    code = train_t5_stagcn.main(["--cfg_file", str(cfg), "--set", "OPTIMIZER.MAX_EPOCH=2", "OPTIMIZER.LR=5e-4",
                                 "DATA.BATCH_SIZE=4"])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR, err
    assert "OPTIMIZER.LR=0.0005 (checkpoint: 0.001)" in err and "DATA.BATCH_SIZE=4 (checkpoint: 8)" in err
    assert "MAX_EPOCH" not in err  # a longer run is allowed: the schedule decays to 0 at the new last epoch
    assert train_t5_stagcn.main(["--cfg_file", str(cfg), "--set", "OPTIMIZER.MAX_EPOCH=2"]) == 0
    assert load_final(tmp_path / "exp" / "pretrain_checkpoints")["epoch"] == 2


def test_best_checkpoint_reads_epoch_metrics_newer_than_metrics_json_and_skips_a_damaged_one(tmp_path):
    from metrics.report import read_experiment_metrics

    (tmp_path / "jsons").mkdir()
    (tmp_path / "metrics.json").write_text(json.dumps({"epochs": {"1": {"CIDEr": 50.0}}}))
    old = time.time() - 100
    os.utime(tmp_path / "metrics.json", (old, old))
    (tmp_path / "jsons" / "metrics_epoch1.json").write_text(json.dumps({"CIDEr": 50.0}))
    os.utime(tmp_path / "jsons" / "metrics_epoch1.json", (old - 10, old - 10))  # already in metrics.json
    (tmp_path / "jsons" / "metrics_epoch2.json").write_text(json.dumps({"CIDEr": 80.0}))  # trained on after it
    (tmp_path / "jsons" / "metrics_epoch3.json").write_text('{"CIDEr": 9')  # a damaged file
    with captured_log() as records:
        per_epoch = read_experiment_metrics(tmp_path)
    assert per_epoch == {1: {"CIDEr": 50.0}, 2: {"CIDEr": 80.0}}
    assert any("metrics_epoch3.json" in r.getMessage() for r in records)


def test_prediction_files_are_written_atomically_captions_last(tmp_path, monkeypatch):
    from engine.prediction import write_predictions

    preds = {"a": {"caption": "x", "att_node": [[0.5]], "att_A": [[[1.0]]]}}
    write_predictions(tmp_path, 1, preds, "JSON")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    fill_disk_at(monkeypatch, 2)  # the second file of epoch 2 (att_A) hits a full disk
    with pytest.raises(OSError):
        write_predictions(tmp_path, 2, {"a": {**preds["a"], "caption": "y"}}, "JSON")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()
            if "epoch1" in p.name} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "att_node_results_epoch2.json"])


def test_scoring_longer_than_the_process_group_timeout_does_not_time_out_other_ranks(data, tmp_path):
    """METEOR loads its paraphrase table at the first score (seconds); rank 1 must not time out meanwhile."""
    cfg = write_experiment(tmp_path / "exp", data, OPTIMIZER={"MAX_EPOCH": 1}, TRAIN={"SANITY_EVAL": False,
                                                                                      "PG_TIMEOUT_S": 3},
                           EVAL={"METEOR": True})
    res = run_train(cfg, nproc=2)
    assert res.returncode == 0, explain(res)
    assert (tmp_path / "exp" / "jsons" / "metrics_epoch1.json").is_file()


def test_a_checkpoint_with_a_valid_digest_but_a_malformed_tokenizer_is_one_line(data, tmp_path):
    from engine.checkpoint import load_checkpoint, save_checkpoint
    from engine.weights import model_from_checkpoint

    cfg = write_experiment(tmp_path / "exp", data, OPTIMIZER={"MAX_EPOCH": 1}, TRAIN={"SANITY_EVAL": False},
                           EVAL={"SCORE": False})
    assert train_main(cfg).returncode == 0
    folder = tmp_path / "exp" / "pretrain_checkpoints"
    state = load_checkpoint(folder / "epoch_0001.pt")
    state["tokenizer_json"] = '{"model": "not a tokenizer"}'
    save_checkpoint(folder, "epoch_0002.pt", state, keep_last=5)  # a fresh, valid digest
    with pytest.raises(UserError, match=r"epoch_0002.pt: tokenizer_json: not a valid tokenizer \("):
        model_from_checkpoint(load_checkpoint(folder / "epoch_0002.pt"), folder / "epoch_0002.pt")
    res = run([sys.executable, str(EVALUATE), "--exp", str(tmp_path / "exp"), "--checkpoint", "latest"],
              env=cli_env())
    assert res.returncode == EXIT_USER_ERROR and res.stderr.count("error:") == 1, explain(res)
    assert "not a valid tokenizer" in res.stderr and "Traceback" not in res.stderr


def test_attention_is_saved_as_float16_npz_by_default_reproducibly_and_read_back_in_either_format(tmp_path):
    import numpy as np

    from engine.prediction import read_epoch_attention, write_predictions

    g = np.random.default_rng(0)
    preds = {f"clip{i}": {"caption": f"c{i}", "att_node": g.random((30 + i, 22), dtype=np.float32),
                          "att_A": g.random((4, 22, 22), dtype=np.float32)} for i in range(3)}
    npz, as_json, none = tmp_path / "npz", tmp_path / "json", tmp_path / "none"
    write_predictions(npz, 1, preds)
    write_predictions(as_json, 1, preds, "JSON")
    write_predictions(none, 1, preds, "NONE")
    assert sorted(p.name for p in npz.iterdir()) == ["attention_epoch1.npz", "results_epoch1.json"]
    assert sorted(p.name for p in none.iterdir()) == ["results_epoch1.json"] and read_epoch_attention(none, 1) is None
    first = (npz / "attention_epoch1.npz").read_bytes()
    write_predictions(npz, 1, preds)
    assert (npz / "attention_epoch1.npz").read_bytes() == first  # no timestamps: reruns compare equal
    node, graph = read_epoch_attention(npz, 1)
    node_j, graph_j = read_epoch_attention(as_json, 1)
    for name, p in preds.items():
        np.testing.assert_allclose(node[name], p["att_node"], rtol=1e-3, atol=1e-4)  # float16
        np.testing.assert_allclose(graph[name], p["att_A"], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(np.asarray(node_j[name]), p["att_node"], atol=1e-5)
    json_bytes = sum(p.stat().st_size for p in as_json.iterdir() if p.name.startswith("att_"))
    assert (npz / "attention_epoch1.npz").stat().st_size * 3 < json_bytes
