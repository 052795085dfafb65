"""Runs that share folders and files: one run per experiment folder, temp files of live saves, checkpoints that
were symlinked, copied or hashed with sha256sum, non-finite weights, and output paths that would overwrite a
user's files.

The launches are real subprocesses (tests/cli_helpers); the rest calls the entry points in-process.
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from common.errors import EXIT_USER_ERROR
from tests.cli_helpers import (REPO, explain, kill_group, run_train, start, tiny_data,
                               train_cmd, write_experiment)

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
    res = run_train(cfg)
    assert res.returncode == 0, explain(res)
    assert (cfg.parent / "jsons" / "results_epoch1.json").is_file()
    return cfg.parent


@pytest.fixture
def restore_logging():
    """The entry points reconfigure the `motion2text` logger; put it back after an in-process call."""
    logger = logging.getLogger("motion2text")
    saved = logger.handlers[:], logger.level, logger.propagate
    yield
    for handler in logger.handlers:
        if handler not in saved[0]:
            handler.close()
    logger.handlers[:], logger.level, logger.propagate = saved


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
