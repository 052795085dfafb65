"""Tiny experiments for tests that run the command-line tools (train_t5_stagcn.py, evaluate.py, ...).

    data = tiny_data(tmp_path / "data")                    # subsampled synthetic corpus, all five files
    cfg = write_experiment(tmp_path / "exp", data)         # results/<exp>/config.yaml, pretraining
    res = run_train(cfg, "--set", "OPTIMIZER.MAX_EPOCH=1")  # plain python, one process
    res = run_train(cfg, nproc=2)                          # torchrun --standalone, gloo
    state = load_final(cfg.parent / "pretrain_checkpoints")
    exp = build_in_process(cfg)                            # build_experiment in this process

Every command runs in a subprocess with OMP_NUM_THREADS=1 and a timeout; torchrun never gets a fixed port
(`--standalone` rendezvous on localhost:0, or `free_port()` for multi-node launches).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
TRAIN_SCRIPT = REPO / "train_t5_stagcn.py"
TORCHRUN = Path(sys.executable).with_name("torchrun")

# Synthetic files and how many clips of each the tiny corpus keeps (the first n: deterministic).
# 11 test clips: two ranks get shards of 6 and 5, so "every clip exactly once" is not trivially even.
TINY_SIZES = {"pretrain_train": 24, "pretrain_test": 11, "train": 24, "test": 11, "standard": 2}


def tiny_data(out_dir: Path, sizes: Optional[dict] = None, seed: int = 0, frame_step: int = 2) -> dict[str, Path]:
    """The synthetic corpus (dataloaders.synthetic) cut to a few clips, each clip and standard keeping every
    `frame_step`-th frame (its segment keys with it): 20–40 frames instead of 40–80 halves every training and
    evaluation step of the CLI tests, which test what happens, not how well; {stem: path of the .pkl}."""
    from dataloaders.formats import load_clips
    from dataloaders.formats import dump_clips
    from dataloaders.synthetic import generate

    out_dir = Path(out_dir)
    full = generate(out_dir / "full", seed)
    paths = {}
    for stem, n in {**TINY_SIZES, **(sizes or {})}.items():
        paths[stem] = out_dir / f"{stem}.pkl"
        clips = [every_nth_frame(c, frame_step) for c in load_clips(full[stem])[:n]]
        dump_clips(clips, paths[stem])  # same pickling as the released files
    return paths


def every_nth_frame(clip: dict, step: int) -> dict:
    """The clip with every `step`-th frame; segment starts map to floor(start / step), ends to ceil(end / step)."""
    if step == 1:
        return clip
    out = dict(clip, coordinates=clip["coordinates"][::step].clone())
    ceil = lambda x: -(-int(x) // step)  # noqa: E731
    for key in [k for k in clip if k.endswith(("_start_frame", "_end_frame"))]:
        out[key] = int(clip[key]) // step if key.endswith("_start_frame") else ceil(clip[key])
    for prefix in {k[: -len("_seq_len")] for k in clip if k.endswith("_seq_len") and k != "original_seq_len"}:
        out[f"{prefix}_seq_len"] = out[f"{prefix}_end_frame"] - out[f"{prefix}_start_frame"]
    if "original_seq_len" in clip:
        out["original_seq_len"] = len(out["coordinates"])
    return out


def video_names(path: Path) -> list[str]:
    from dataloaders.formats import load_clips

    return [c["video_name"] for c in load_clips(path)]


def tiny_config(data: dict[str, Path], pretrain: bool = True, **sections) -> dict:
    """A config dict that trains in seconds on 2 CPU cores: HIDDEN 4 / OUT 16 encoder, 1-layer T5 d=32.

    Keyword arguments replace top-level keys or update sections, e.g. OPTIMIZER={"MAX_EPOCH": 1}."""
    cfg = {
        "HIDDEN_CHANNEL": 4, "OUT_CHANNEL": 16, "BRANCH": 1,
        "TASK": {"PRETRAIN": pretrain},
        "DATA": {"TRAIN": str(data["pretrain_train" if pretrain else "train"]),
                 "TEST": str(data["pretrain_test" if pretrain else "test"]),
                 "BATCH_SIZE": 8, "EVAL_BATCH_SIZE": 64},
        "OPTIMIZER": {"LR": 1.0e-3, "MAX_EPOCH": 2, "WARMUP_STEPS": 5},
        "T5": {"D_MODEL": 32, "NUM_LAYERS": 1, "NUM_HEADS": 4, "D_KV": 8, "D_FF": 64, "VOCAB_SIZE": 300},
        # tensorboard train/loss and train/lr at every optimizer step; no evaluation before the first epoch unless
        # a test asks for it (SANITY_EVAL: true), which saves each run a generation pass.
        "TRAIN": {"LOG_EVERY": 1, "SANITY_EVAL": False},
        "EVAL": {"METEOR": False},
        "GENERATION": {"MAX_LENGTH": 8},
    }
    if not pretrain:
        cfg["DATA"]["STANDARD"] = str(data["standard"])
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def write_experiment(folder: Path, data: dict[str, Path], pretrain: bool = True, **sections) -> Path:
    """Write folder/config.yaml (LOGDIR defaults to `folder`); returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config(data, pretrain, **sections), sort_keys=False))
    return path


def one_cpu_process():
    """The DistInfo of a plain `python` run: rank 0 of 1, on the CPU."""
    from engine.distributed import DistInfo

    return DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def build_in_process(cfg_file: Path, overrides=()):
    """engine.experiment.build_experiment for a config file, in this process (data, tokenizer, weights)."""
    from engine.config_loader import load_config
    from engine.experiment import build_experiment

    return build_experiment(load_config(cfg_file, list(overrides)), one_cpu_process())


def free_port() -> int:
    """A TCP port that was free a moment ago (bind to port 0): for multi-node rendezvous endpoints."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def cli_env(**extra: str) -> dict:
    """The environment for a CLI subprocess: one thread per process, no torchrun variables inherited."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")
           and not k.startswith(("M2T_TEST_", "TORCHELASTIC_"))}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.update(extra)
    return env


def torchrun_cmd(nproc: int, *, nnodes: int = 1, endpoint: Optional[str] = None, rdzv_id: str = "m2t-test") -> list[str]:
    """torchrun without a fixed port: --standalone for one node, else c10d on the given endpoint."""
    cmd = [str(TORCHRUN), "--nproc_per_node", str(nproc)]
    if nnodes == 1 and endpoint is None:
        return cmd + ["--standalone"]
    return cmd + ["--nnodes", str(nnodes), "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint,
                  "--rdzv_id", rdzv_id, "--max_restarts", "0"]


def start(cmd: list[str], env: Optional[dict] = None, cwd: Path = REPO) -> subprocess.Popen:
    """Popen in its own process group, so that `finish` can stop torchrun together with its workers."""
    return subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env or cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def descendants(pid: int) -> list[int]:
    """The processes `pid` started, theirs, and so on (from /proc). torchrun starts each worker in a session of
    its own, so a signal to torchrun's process group does not reach them."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # the process ended while we read
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def kill_group(proc: subprocess.Popen) -> list[int]:
    """SIGKILL `proc`'s process group (see `start`) and every process it started: torchrun and its workers.
    Returns the pids of the processes it started."""
    pids = descendants(proc.pid)
    for kill, target in [(os.killpg, proc.pid)] + [(os.kill, p) for p in pids]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(target, signal.SIGKILL)
    return pids


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie's files are closed
    except (OSError, IndexError):
        return False


def wait_until_gone(pids: list[int], timeout: float = 60) -> None:
    """Wait until none of `pids` runs: a killed worker holds its files (rank 0: the experiment's lock) until the
    kernel has torn it down, which can outlast the moment its parent is reaped."""
    deadline = time.monotonic() + timeout
    while any(_running(p) for p in pids):
        if time.monotonic() > deadline:
            raise AssertionError(f"processes {[p for p in pids if _running(p)]} still run {timeout:.0f}s after SIGKILL")
        time.sleep(0.05)


def finish(proc: subprocess.Popen, timeout: float = 240) -> subprocess.CompletedProcess:
    """Wait for `proc`; past the timeout kill its whole process group (no stray workers) and raise."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout}s: {proc.args}\n--- stdout ---\n{out[-3000:]}\n"
                             f"--- stderr ---\n{err[-3000:]}") from None
    finally:
        kill_group(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run(cmd: list[str], env: Optional[dict] = None, timeout: float = 240, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return finish(start(cmd, env, cwd), timeout)


@contextlib.contextmanager
def kept_logger():
    """The entry points reconfigure the `motion2text` logger: put it back after an in-process call, closing the
    handlers the call added (e.g. the train.log FileHandler)."""
    logger = logging.getLogger("motion2text")
    saved = logger.handlers[:], logger.level, logger.propagate
    try:
        yield
    finally:
        for handler in logger.handlers:
            if handler not in saved[0]:
                handler.close()
        logger.handlers[:], logger.level, logger.propagate = saved


def run_main(main, args, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """An entry point's `main(args)` in this process, as its script runs it: stdout and stderr captured, the exit
    code returned (argparse's exits too), `env` set for the call, one torch thread, and the `motion2text` logger
    put back after. The command-line path without a process start-up (~5 s of imports) per call; the tests
    that need a real process (signals, torchrun, what the shell sees) use `run`."""
    out, err = io.StringIO(), io.StringIO()
    saved_env = {k: os.environ.get(k) for k in (env or {})}
    threads = torch.get_num_threads()
    os.environ.update(env or {})
    torch.set_num_threads(1)
    try:
        with kept_logger(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:  # argparse
                code = e.code if isinstance(e.code, int) else 1
    finally:
        torch.set_num_threads(threads)
        for k, v in saved_env.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return subprocess.CompletedProcess([getattr(main, "__module__", "main"), *map(str, args)], code,
                                       out.getvalue(), err.getvalue())


def train_main(cfg_file: Path, *args: str, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """`python train_t5_stagcn.py --cfg_file ...` as its main() in this process (see run_main)."""
    import train_t5_stagcn

    return run_main(train_t5_stagcn.main, ["--cfg_file", cfg_file, *args], env)


def evaluate_main(*args) -> subprocess.CompletedProcess:
    """`python evaluate.py ...` as its main() in this process (see run_main), without progress bars."""
    import evaluate

    return run_main(evaluate.main, args, env={"TQDM_DISABLE": "1"})


def train_cmd(cfg_file: Path, *args: str, nproc: int = 0) -> list[str]:
    """`python train_t5_stagcn.py --cfg_file ...` (nproc 0) or the same under torchrun --standalone."""
    head = torchrun_cmd(nproc) if nproc else [sys.executable]
    return head + [str(TRAIN_SCRIPT), "--cfg_file", str(cfg_file), *args]


def run_train(cfg_file: Path, *args: str, nproc: int = 0, env: Optional[dict] = None,
              timeout: float = 240) -> subprocess.CompletedProcess:
    return run(train_cmd(cfg_file, *args, nproc=nproc), env=env, timeout=timeout)


def explain(res: subprocess.CompletedProcess, tail: int = 3000) -> str:
    """Assertion message: exit code and the end of both streams."""
    return f"exit {res.returncode}\n--- stdout ---\n{res.stdout[-tail:]}\n--- stderr ---\n{res.stderr[-tail:]}"


def last_json_line(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    assert lines, "no output"
    return json.loads(lines[-1])


def checkpoint_files(folder: Path) -> list[str]:
    """Names of the checkpoint files (not digests) in a folder, oldest first."""
    from engine.checkpoint import list_checkpoints

    return [p.name for p in list_checkpoints(Path(folder))]


def load_final(folder: Path) -> dict:
    """The newest valid checkpoint of a folder, loaded the way the trainer loads it."""
    from engine.checkpoint import load_checkpoint, newest_valid_checkpoint

    path = newest_valid_checkpoint(Path(folder))
    assert path is not None, f"no valid checkpoint in {folder}"
    return load_checkpoint(path)


def max_param_diff(a: dict, b: dict) -> float:
    """Largest absolute difference between two state dicts with the same keys (floating tensors)."""
    assert a.keys() == b.keys(), f"different tensors: {sorted(set(a) ^ set(b))[:5]}"
    worst = 0.0
    for k, v in a.items():
        if torch.is_floating_point(v):
            worst = max(worst, (v.double() - b[k].double()).abs().max().item() if v.numel() else 0.0)
        else:
            assert torch.equal(v, b[k]), k
    return worst


def read_json(path: Path):
    return json.loads(Path(path).read_text())


@contextlib.contextmanager
def captured_log():
    """Records of the `motion2text` logger (which does not propagate, so caplog would not see them)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("motion2text")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
