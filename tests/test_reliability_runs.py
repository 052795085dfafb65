"""Runs that share folders and files: one run per experiment folder, temp files of live saves, checkpoints that
were symlinked, copied or hashed with sha256sum, non-finite weights, and output paths that would overwrite a
user's files.

The launches are real subprocesses (tests/cli_helpers); the rest calls the entry points in-process.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from common.errors import EXIT_USER_ERROR, UserError
from tests.cli_helpers import (REPO, captured_log, explain, kill_group, run, run_train, start, tiny_data,
                               train_cmd, train_main, write_experiment)

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

EVALUATE = REPO / "evaluate.py"
# A run that trains until it is killed: no evaluation, no Java.
LONG_RUN = dict(OPTIMIZER={"MAX_EPOCH": 1000}, TRAIN={"SANITY_EVAL": False},
                EVAL={"METRIC_PERIOD": 1000, "SCORE": False})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A finished one-epoch pretraining run: pretrain_checkpoints/epoch_0001.pt and jsons/results_epoch1.json."""
    cfg = write_experiment(tmp_path_factory.mktemp("trained"), data, OPTIMIZER={"MAX_EPOCH": 1},
                           TRAIN={"SANITY_EVAL": False}, EVAL={"SCORE": False})
    res = train_main(cfg)
    assert res.returncode == 0, explain(res)
    assert (cfg.parent / "jsons" / "results_epoch1.json").is_file()
    return cfg.parent


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes (folders as b'<dir>')."""
    return {str(p.relative_to(root)): b"<dir>" if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path.name} appeared:\n{proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, f"no {path} after {timeout}s"
        time.sleep(0.2)


# ---- one run per experiment folder -------------------------------------------------------------------

def test_a_second_launch_into_a_folder_in_use_exits_2_at_once_naming_the_holder(data, tmp_path):
    cfg = write_experiment(tmp_path / "exp", data, **LONG_RUN)
    first = start(train_cmd(cfg))
    try:
        wait_for(cfg.parent / "train.log", first)  # past every check: it is training
        began = time.monotonic()
        second = run_train(cfg, timeout=120)
        took = time.monotonic() - began
        assert first.poll() is None, "the first run must still be training"
        assert second.returncode == EXIT_USER_ERROR, explain(second)
        line = one_error_line(second.stderr)
        assert f"LOGDIR {cfg.parent}: another run (pid {first.pid} on host {socket.gethostname()})" in line
        assert took < 60, f"the refusal took {took:.0f}s: it must come before the data and the model are built"
        # A dry run writes nothing, so it takes no lock and may inspect the folder meanwhile.
        dry = run_train(cfg, "--dry-run", timeout=120)
        assert dry.returncode == 0, explain(dry)
    finally:
        kill_group(first)  # kill -9: no cleanup code runs
        first.communicate()
    # The kernel released the dead run's lock: the next run gets it at once.
    from engine.run_lock import ExperimentLock

    lock = ExperimentLock(cfg.parent)
    lock.acquire()
    assert (cfg.parent / ".lock").read_text() == f"{os.getpid()} {socket.gethostname()}\n"
    lock.release()
    assert not (cfg.parent / ".lock").exists()


def test_under_torchrun_every_rank_leaves_a_locked_folder_with_one_error_line(data, tmp_path):
    """Only rank 0 takes the lock; the other ranks learn of the refusal and exit too, none waits for rank 0."""
    from engine.run_lock import ExperimentLock

    cfg = write_experiment(tmp_path / "exp", data, **LONG_RUN)
    holder = ExperimentLock(cfg.parent)
    holder.acquire()
    try:
        res = run_train(cfg, nproc=2, timeout=150)
    finally:
        holder.release()
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert res.returncode != 0 and len(errors) == 1, explain(res)
    assert f"another run (pid {os.getpid()} on host {socket.gethostname()})" in errors[0]
    assert sorted(p.name for p in cfg.parent.iterdir()) == ["config.yaml"]


def test_a_refused_run_removes_the_lock_and_the_new_folder_it_made(data, tmp_path, capsys, restore_logging,
                                                                   one_thread):
    import train_t5_stagcn

    cfg = write_experiment(tmp_path / "exp", data, DATA={"TRAIN": str(tmp_path / "missing.pkl")})
    logdir = tmp_path / "runs" / "new"
    code = train_t5_stagcn.main(["--cfg_file", str(cfg), "--set", f"LOGDIR={logdir}"])
    assert code == EXIT_USER_ERROR
    assert "missing.pkl: file not found" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()
    assert sorted(p.name for p in cfg.parent.iterdir()) == ["config.yaml"]


# ---- temp files of saves -----------------------------------------------------------------------------

def test_a_save_removes_the_temp_files_of_dead_processes_only(tmp_path):
    from engine.checkpoint import save_checkpoint

    live = subprocess.Popen(["sleep", "120"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        leftovers = {"live": tmp_path / f".epoch_0002.pt.tmp{live.pid}",
                     "own": tmp_path / f".epoch_0003.pt.sha256.tmp{os.getpid()}",
                     "dead": tmp_path / f".epoch_0002.pt.tmp{dead.pid}"}
        for path in leftovers.values():
            path.write_bytes(b"partial")
        save_checkpoint(tmp_path, "epoch_0001.pt", {"epoch": 1}, keep_last=3)
        assert leftovers["live"].exists(), "the temp file of a save in progress was deleted"
        assert leftovers["own"].exists()
        assert not leftovers["dead"].exists()
    finally:
        live.kill()
        live.wait()


# ---- digests of symlinked, copied and sha256sum-hashed checkpoints -------------------------------------

def saved(folder: Path, epoch: int = 1) -> Path:
    from engine.checkpoint import save_checkpoint

    return save_checkpoint(folder, f"epoch_{epoch:04d}.pt", {"epoch": epoch, "model": {"w": torch.ones(4096) * epoch}},
                           keep_last=9)


def test_a_symlinked_checkpoint_is_checked_with_the_digest_beside_its_target(tmp_path):
    from engine.checkpoint import checkpoint_file, load_checkpoint, newest_valid_checkpoint, verify

    target = saved(tmp_path / "run" / "checkpoints", epoch=3)
    link = tmp_path / "best.pt"
    link.symlink_to(target)
    assert verify(link) is None
    assert checkpoint_file(link, "--checkpoint") == link
    assert load_checkpoint(link)["epoch"] == 3
    # A symlink inside a checkpoint folder counts in the newest-checkpoint scan too.
    folder = tmp_path / "linked"
    saved(folder, epoch=1)
    (folder / "epoch_0003.pt").symlink_to(target)
    assert newest_valid_checkpoint(folder) == folder / "epoch_0003.pt"


@pytest.mark.parametrize("mode", ["text", "binary"])
def test_a_digest_written_by_sha256sum_is_accepted(tmp_path, mode):
    from engine.checkpoint import load_checkpoint, verify

    path = saved(tmp_path)
    flag = "-b" if mode == "binary" else "-t"
    listing = subprocess.run(["sha256sum", flag, path.name], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert listing.stdout.endswith(f"  {path.name}\n") or listing.stdout.endswith(f" *{path.name}\n")
    (tmp_path / f"{path.name}.sha256").write_text(listing.stdout)
    assert verify(path) is None
    assert load_checkpoint(path)["epoch"] == 1


def test_a_copy_given_by_path_without_its_digest_is_checked_by_loading_but_a_scan_skips_it(tmp_path):
    from engine.checkpoint import checkpoint_file, load_checkpoint, newest_valid_checkpoint

    original = saved(tmp_path / "run", epoch=2)
    copy = tmp_path / "copies" / "model.pt"
    copy.parent.mkdir()
    shutil.copyfile(original, copy)  # `cp epoch_0002.pt model.pt`: no digest comes along
    with captured_log() as records:
        assert checkpoint_file(copy, "--checkpoint") == copy
        assert load_checkpoint(copy)["epoch"] == 2
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"{copy}: no integrity digest model.pt.sha256 beside it")
    assert "CRC32" in warnings[0]
    # A copy made with its digest is a checkpoint like any other, warning-free.
    shutil.copyfile(original, tmp_path / "copies" / "epoch_0002.pt")
    shutil.copyfile(original.with_name("epoch_0002.pt.sha256"), tmp_path / "copies" / "epoch_0002.pt.sha256")
    with captured_log() as records:
        assert load_checkpoint(tmp_path / "copies" / "epoch_0002.pt")["epoch"] == 2
    assert not records
    # In a checkpoint folder a missing digest still means the save did not finish: the scan skips the file.
    saved(tmp_path / "run", epoch=3).with_name("epoch_0003.pt.sha256").unlink()
    with captured_log() as records:
        assert newest_valid_checkpoint(tmp_path / "run") == original
    assert [r.getMessage() for r in records] == [f"skipping checkpoint {tmp_path / 'run' / 'epoch_0003.pt'}: "
                                                 "no integrity digest (the save did not finish)"]


def test_every_refusal_names_its_cause(tmp_path):
    from engine.checkpoint import load_checkpoint, verify

    ok = saved(tmp_path / "a")
    assert verify(ok) is None
    flipped = saved(tmp_path / "b")
    raw = bytearray(flipped.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    flipped.write_bytes(bytes(raw))
    assert verify(flipped) == "integrity digest mismatch (truncated or corrupted file)"
    garbled = saved(tmp_path / "c")
    garbled.with_name("epoch_0001.pt.sha256").write_text("not a digest\n")
    assert verify(garbled).startswith("unreadable integrity digest")
    unfinished = saved(tmp_path / "d")
    unfinished.with_name("epoch_0001.pt.sha256").unlink()
    assert verify(unfinished) == "no integrity digest (the save did not finish)"
    dangling = tmp_path / "gone.pt"
    dangling.symlink_to(tmp_path / "nowhere.pt")
    assert verify(dangling).startswith("the file is missing")
    # Without a digest the file's own checksums decide, and the refusal says which one failed.
    copy = tmp_path / "copy.pt"
    copy.write_bytes(flipped.read_bytes())
    with pytest.raises(UserError, match=r"copy\.pt: invalid checkpoint: no integrity digest beside it, and the "
                                        r"checksum of its record .* does not match"):
        load_checkpoint(copy)
    copy.write_bytes(ok.read_bytes()[:200])
    with pytest.raises(UserError, match="no integrity digest beside it, and it is not a complete checkpoint archive"):
        load_checkpoint(copy)


def test_evaluate_captions_with_a_checkpoint_copied_without_its_digest(trained, tmp_path, restore_logging, one_thread,
                                                                        capsys):
    import evaluate
    from dataloaders.formats import load_clips

    copy = tmp_path / "model.pt"
    shutil.copyfile(trained / "pretrain_checkpoints" / "epoch_0001.pt", copy)
    cfg = yaml.safe_load((trained / "config.yaml").read_text())
    npy = tmp_path / "recording.npy"
    np.save(npy, load_clips(cfg["DATA"]["TEST"])[0]["coordinates"].numpy())
    out = tmp_path / "preds.json"
    code = evaluate.main(["--exp", str(trained), "--checkpoint", str(copy), "--data", str(npy), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"{copy}: no integrity digest model.pt.sha256 beside it" in err
    assert out.is_file()


# ---- non-finite weights -------------------------------------------------------------------------------

@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_weights_with_nan_or_inf_are_never_saved(tmp_path, bad_value):
    from engine.checkpoint import newest_valid_checkpoint, save_checkpoint

    saved(tmp_path, epoch=1)
    before = snapshot(tmp_path)
    weights = {"encoder.ok": torch.ones(8), "encoder.bad": torch.tensor([1.0, bad_value]), "later": torch.ones(2)}
    with pytest.raises(UserError) as e:
        save_checkpoint(tmp_path, "epoch_0002.pt", {"epoch": 2, "model": weights}, keep_last=9)
    assert str(e.value) == (f"{tmp_path / 'epoch_0002.pt'}: not saved: model tensor 'encoder.bad' holds NaN or inf; "
                            f"the previous checkpoints in {tmp_path} are intact")
    assert snapshot(tmp_path) == before
    assert newest_valid_checkpoint(tmp_path) == tmp_path / "epoch_0001.pt"


def test_a_checkpoint_with_nan_weights_is_never_loaded(tmp_path):
    from engine.checkpoint import load_checkpoint

    path = tmp_path / "epoch_0001.pt"
    torch.save({"epoch": 1, "model": {"t5.shared.weight": torch.tensor([[0.5, float("nan")]])}}, path)
    path.with_name("epoch_0001.pt.sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest())
    with pytest.raises(UserError, match=r"epoch_0001\.pt: model tensor 't5\.shared\.weight' holds NaN or inf; a "
                                        r"checkpoint with non-finite weights is never loaded"):
        load_checkpoint(path)


# ---- LOGDIR and evaluate outputs never overwrite a user's files -----------------------------------------

def test_a_logdir_holding_unrelated_files_is_refused_before_anything_is_written(data, tmp_path, capsys,
                                                                                 restore_logging, one_thread):
    import train_t5_stagcn

    mine = tmp_path / "my_project"
    (mine / "tokenizer").mkdir(parents=True)
    (mine / "tokenizer" / "vocab.txt").write_text("my vocabulary\n")
    (mine / "jsons").mkdir()
    (mine / "jsons" / "notes.json").write_text("{}\n")
    (mine / "paper.tex").write_text("\\section{Results}\n")
    before = snapshot(mine)
    cfg = write_experiment(tmp_path / "exp", data, OPTIMIZER={"MAX_EPOCH": 1}, TRAIN={"SANITY_EVAL": False},
                           EVAL={"SCORE": False})
    code = train_t5_stagcn.main(["--cfg_file", str(cfg), "--set", f"LOGDIR={mine}"])
    assert code == EXIT_USER_ERROR
    line = one_error_line(capsys.readouterr().err)
    assert f"LOGDIR {mine}: holds files that are not an experiment's ('jsons', 'paper.tex', 'tokenizer')" in line
    assert snapshot(mine) == before


@pytest.mark.parametrize("where", ["root", "home"])
def test_a_logdir_that_is_the_file_system_root_or_the_home_folder_is_refused(data, tmp_path, monkeypatch, capsys,
                                                                             restore_logging, where):
    import train_t5_stagcn

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    logdir, what = (Path("/"), "a file system root") if where == "root" else (home, "your home folder")
    cfg = write_experiment(tmp_path / "exp", data)
    # --dry-run: even the code before this fix wrote nothing there in a dry run.
    code = train_t5_stagcn.main(["--cfg_file", str(cfg), "--dry-run", "--set", f"LOGDIR={logdir}"])
    assert code == EXIT_USER_ERROR
    assert f"LOGDIR {logdir}: is {what}" in one_error_line(capsys.readouterr().err)


def test_a_logdir_that_cannot_be_written_is_one_line_not_a_traceback(data, tmp_path):
    cfg = write_experiment(tmp_path / "exp", data, OPTIMIZER={"MAX_EPOCH": 1}, TRAIN={"SANITY_EVAL": False},
                           EVAL={"SCORE": False})
    res = run_train(cfg, "--set", "LOGDIR=/proc", timeout=120)
    assert res.returncode == EXIT_USER_ERROR, explain(res)
    assert one_error_line(res.stderr).startswith("error: LOGDIR /proc: ")


@pytest.mark.parametrize("flags", [("--out", "--data"), ("--json", "--pred"), ("--out", "--data", "symlink")])
def test_evaluate_refuses_an_output_that_is_one_of_its_inputs(tmp_path, capsys, restore_logging, flags):
    import evaluate

    inp = tmp_path / "input.json"
    inp.write_text('{"c0": "a person walks"}\n')
    out = inp
    if "symlink" in flags:
        out = tmp_path / "link.json"
        out.symlink_to(inp)
    refs = tmp_path / "refs.json"
    refs.write_text('{"c0": ["a person walks"]}\n')
    if flags[0] == "--json":
        argv = ["--pred", str(inp), "--ann", str(refs), "--json", str(out), "--no-meteor"]
    else:
        argv = ["--exp", str(tmp_path), "--checkpoint", "latest", "--data", str(inp), "--out", str(out)]
    assert evaluate.main(argv) == EXIT_USER_ERROR
    assert f"{flags[0]} {out}: is the same file as {flags[1]} {inp}" in one_error_line(capsys.readouterr().err)
    assert inp.read_text() == '{"c0": "a person walks"}\n'


def test_plot_attention_onto_an_existing_file_is_refused_before_metrics_json_is_written(trained, tmp_path):
    picture = tmp_path / "figure.png"
    picture.write_bytes(b"my figure")
    res = run([sys.executable, EVALUATE, "--exp", trained, "--no-meteor", "--plot-attention", picture], timeout=120)
    assert res.returncode == EXIT_USER_ERROR, explain(res)
    assert f"--plot-attention {picture}: exists and is not a folder" in one_error_line(res.stderr)
    assert not (trained / "metrics.json").exists()
    assert picture.read_bytes() == b"my figure"
