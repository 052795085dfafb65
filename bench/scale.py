"""Length bucketing's training speed-up, and memory of a 30,000-clip run.

    python -m bench.scale [--quick] [--only throughput memory] [--out bench/scale_results.json]
                          [--clips 256] [--batch-size 16] [--timed-epochs 2] [--threads 2] [--repeats 1]
                          [--mem-clips 30000] [--mem-steps 8] [--lengths skewed|uniform] [--keep]

Both parts use synthetic clips in our pickle format (``video_name``, ``coordinates`` float32 ``[T, 66]``,
``labels``; pretraining, BRANCH 0) written with ``dataloaders.formats.dump_clips``, with HumanML3D's
length spread: 20 fps, 2–10 s → 40–200 frames (``bench.bucketing.synthetic_lengths``; ``skewed`` by
default, a rough imitation of HumanML3D's histogram). Coordinates are a rest pose plus a random walk:
shapes and sizes matter here, not the motion.

1. **Throughput** (``throughput``): ``train_t5_stagcn.py``'s own ``main()`` runs in a fresh process (one
   process, ``OMP_NUM_THREADS=--threads``, ``DATA.NUM_WORKERS`` 0), once with
   ``--set DATA.BUCKET_BY_LENGTH=false`` and once with ``=true``, each in its own experiment folder. The
   real loop, sampler, collate, model and optimizer run unchanged; the child passes one
   ``engine.callbacks.Callback`` that records timestamps and the lengths of every batch the loop consumed
   (an epoch is timed from its first batch). Epoch 1 is warm-up (allocator, oneDNN kernel selection) and is excluded; samples/s = samples of the timed epochs / their summed wall time
   (whole epochs, so every batch of the epoch counts, not a lucky run of short ones). Checkpointing and
   the one evaluation at the end happen between epochs and are not in the timing; ``train.log``'s own epoch
   times are reported next to ours as a cross-check. The padded fraction is computed from the batches the
   loop actually consumed (``dataloaders.samplers.padding_fraction`` rule: each batch padded to its
   longest clip).
2. **Memory** (``memory``): a ``--mem-clips``-clip file (~1 GB of coordinates at 30,000; 2–4 captions per
   clip as HumanML3D's ~3) is written, then
   (a) ``load_dataset`` is timed in a fresh one-thread process, which also sums the coordinates' ``nbytes``
   and forks a child sharing the loaded clips copy-on-write, as a DataLoader worker does. The child reads
   its own memory after each stage: idle; every training sample fetched through ``TrainDataset``; a full
   ``gc.collect()``; every sample collated in batches of 8 — more than one worker does to the inherited
   dataset in an epoch, so what it un-shares is an upper bound for a worker (private dirty memory is split
   by mapping: glibc's ``[heap]``, where the clips' storages live, vs anonymous maps such as pymalloc's
   arenas). The parent then counts the objects the load left in unreachable cycles (``gc.DEBUG_SAVEALL``)
   and its RSS after ``gc.collect()`` and after glibc's ``malloc_trim(0)`` (heap freed but kept); then it
   calls ``freeze_before_fork()`` (what the trainer does before its workers fork) and forks the same child
   again, so the two children's private memory shows what the freeze saves;
   (b) the real job ``torchrun --standalone --nproc_per_node 2 train_t5_stagcn.py`` with
   ``DATA.NUM_WORKERS: 2`` (torchrun + 2 ranks + 4 workers = 7 processes), one thread per rank, on the full
   file, runs until rank 0's progress bar shows ``--mem-steps`` steps; then every process of the job is
   sampled ``--mem-samples`` times (4), ``--mem-interval`` s apart (15), to show the trend: RSS and PSS from ``/proc/<pid>/smaps_rollup`` (PSS divides each shared
   page among the processes mapping it, so the sum of PSS is what the job really occupies; the sum of RSS
   counts shared copy-on-write pages once per process). The job is then stopped with SIGTERM to torchrun
   (it forwards it; the ranks stop at the next step) and any process of the job's session still alive
   ~90 s later is killed by pid. Start-up = launch to the first training step (the bar's first ``1/N``):
   both ranks load and validate the file, build the tokenizer and model, and fork their workers.

Loading must not copy the dataset once per worker per rank: with R ranks and W workers, copies would
make the total PSS ≈ (1 + W) × R × the coordinates' size; sharing leaves it ≈ R × that size plus
interpreter/torch/model overhead. ``memory.verdict`` states which it is.

Results go to ``--out`` (JSON) and a summary is printed. Nothing here asserts timings; the test only runs
``--quick`` (both parts at tiny size, < 1 min; one OpenMP thread, so that it stays quick on a shared
machine: two OpenMP threads competing with another job for 2 cores ran 13x slower here).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.harness import RESULT_TAG, LoadMeter, cpu_model, emit  # noqa: E402

TORCHRUN = Path(sys.executable).with_name("torchrun")
MIB = 2 ** 20

# Small enough for a few minutes on 2 cores; the comparison only needs the real code path at some size.
MODEL = {"HIDDEN_CHANNEL": 8, "OUT_CHANNEL": 32,
         "T5": {"D_MODEL": 128, "NUM_LAYERS": 2, "NUM_HEADS": 4, "D_KV": 32, "D_FF": 256, "VOCAB_SIZE": 1000}}
QUICK_MODEL = {"HIDDEN_CHANNEL": 4, "OUT_CHANNEL": 16,
               "T5": {"D_MODEL": 32, "NUM_LAYERS": 1, "NUM_HEADS": 4, "D_KV": 8, "D_FF": 64, "VOCAB_SIZE": 300}}

VERBS = ["walks", "runs", "jumps", "turns", "kicks", "waves", "crouches", "spins", "steps", "throws", "bows",
         "stretches", "dances", "punches", "climbs", "hops"]
MANNER = ["slowly", "quickly", "forward", "backward", "to the left", "to the right", "in a circle", "twice",
          "with both arms", "carefully", "then stops", "and looks around"]


# ---- synthetic corpus ----------------------------------------------------------------------------

def make_clips(n: int, seed: int, kind: str, labels_per_clip: tuple[int, int] = (1, 1)) -> list[dict]:
    """n clips in our format; each clip owns its storage (as converted HumanML3D clips do)."""
    import numpy as np
    import torch

    from bench.bucketing import synthetic_lengths
    from dataloaders.synthetic import REST

    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    lengths = synthetic_lengths(kind, n, seed)
    rest = torch.as_tensor(REST, dtype=torch.float32).reshape(1, 66)
    clips = []
    for i, t in enumerate(lengths.tolist()):
        walk = torch.randn(int(t), 66, generator=gen).mul_(0.005).cumsum_(0)
        k = int(rng.integers(labels_per_clip[0], labels_per_clip[1] + 1))
        labels = [f"a person {VERBS[rng.integers(len(VERBS))]} {MANNER[rng.integers(len(MANNER))]}"
                  for _ in range(k)]
        clips.append({"video_name": f"syn{i:06d}", "coordinates": (rest + walk).contiguous(), "labels": labels})
    return clips


def write_corpus(folder: Path, n_train: int, n_test: int, seed: int, kind: str,
                 labels_per_clip: tuple[int, int]) -> dict:
    from dataloaders.formats import dump_clips

    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train = make_clips(n_train, seed, kind, labels_per_clip)
    lengths = [len(c["coordinates"]) for c in train]
    nbytes = sum(c["coordinates"].nbytes for c in train)
    dump_clips(train, folder / "train.pkl")
    del train
    dump_clips(make_clips(n_test, seed + 1, kind), folder / "test.pkl")  # tiny: only the final evaluation
    return {"train": str(folder / "train.pkl"), "test": str(folder / "test.pkl"), "clips": n_train,
            "test_clips": n_test, "file_mib": round((folder / "train.pkl").stat().st_size / MIB, 1),
            "coordinates_mib": round(nbytes / MIB, 1), "mean_frames": round(sum(lengths) / len(lengths), 1),
            "min_frames": min(lengths), "max_frames": max(lengths), "write_s": round(time.perf_counter() - t0, 1)}


def write_config(folder: Path, corpus: dict, model: dict, **sections) -> Path:
    """A pretraining config (BRANCH 0) that never evaluates inside the timed part: no sanity evaluation,
    no periodic evaluation, only the unavoidable one after the last epoch, on 2 test clips, 4 tokens."""
    import yaml

    cfg = {**{k: v for k, v in model.items() if k != "T5"}, "BRANCH": 0, "SEED": 42,
           "TASK": {"PRETRAIN": True},
           "DATA": {"TRAIN": corpus["train"], "TEST": corpus["test"], "BATCH_SIZE": 16, "EVAL_BATCH_SIZE": 8,
                    "NUM_WORKERS": 0},
           "OPTIMIZER": {"LR": 1.0e-4, "MAX_EPOCH": 3, "WARMUP_STEPS": 10},
           "TRAIN": {"SANITY_EVAL": False, "LOG_EVERY": 1000},
           "EVAL": {"METRIC_PERIOD": 1000, "METEOR": False},
           "GENERATION": {"MAX_LENGTH": 4},
           "CHECKPOINT": {"KEEP_LAST": 1},
           "T5": dict(model["T5"])}
    for key, value in sections.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# ---- /proc helpers -------------------------------------------------------------------------------

def smaps_rollup(pid: int) -> Optional[dict]:
    """The kB fields of /proc/<pid>/smaps_rollup (Rss, Pss, Pss_Anon, Private_Dirty, ...), or None."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    out = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":"):
            out[parts[0][:-1]] = int(parts[1])
    return out


def private_dirty_by_mapping(pid: int) -> dict:
    """Private_Dirty MiB of /proc/<pid>/smaps summed by mapping kind: glibc's main heap ([heap], where
    malloc puts the clips' storages), anonymous mappings (pymalloc arenas, large blocks), files."""
    out: dict = defaultdict(int)
    kind = None
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        parts = line.split()
        if parts and re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", parts[0]):
            name = parts[5] if len(parts) > 5 else ""
            kind = "heap" if name == "[heap]" else "anon" if not name else "file" if name.startswith("/") else "other"
        elif parts and parts[0] == "Private_Dirty:" and kind:
            out[kind] += int(parts[1])
    return {k: _mib(v) for k, v in sorted(out.items())}


def _ppid(pid: int) -> Optional[int]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the command name may hold spaces and parentheses


def descendants(root: int) -> list[int]:
    """root and every process below it (walks /proc once)."""
    kids = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ppid = _ppid(int(entry))
            if ppid is not None:
                kids[ppid].append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def _env_var(pid: int, name: str) -> Optional[str]:
    try:
        for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            if item.startswith(name.encode() + b"="):
                return item.split(b"=", 1)[1].decode()
    except OSError:
        pass
    return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _mib(kb: int) -> float:
    return round(kb / 1024, 1)


def run_child(args: list[str], env: dict, timeout: float) -> dict:
    """Run `python -m bench.scale --child ...`, return the JSON it printed last (its errors if none)."""
    proc = subprocess.run([sys.executable, "-m", "bench.scale", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {args[:2]} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len(RESULT_TAG):])


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1",
               TOKENIZERS_PARALLELISM="false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


# ---- child: the training script with timestamps --------------------------------------------------

def child_train(argv: list[str]) -> None:
    """Run train_t5_stagcn.main(argv) with a callback that only records what happened."""
    import torch

    import train_t5_stagcn
    from engine.callbacks import Callback

    epochs: list[dict] = []
    info: dict = {}

    class Record(Callback):
        def before_batch(self, trainer, epoch, index, batch):
            if not epochs or epochs[-1]["epoch"] != epoch:
                if not info:
                    info.update(params=sum(p.numel() for p in trainer.model.parameters()),
                                samples=len(trainer.exp.train_set), batches_per_epoch=len(trainer.sampler),
                                torch_threads=torch.get_num_threads())
                epochs.append({"epoch": epoch, "batches": [], "step_t": [], "start": time.perf_counter()})
            epochs[-1]["batches"].append(batch["lengths"].tolist())

        def after_optimizer_step(self, trainer, loss, grad_norm, stepped):
            epochs[-1]["step_t"].append(time.perf_counter())

        def after_epoch(self, trainer, epoch, mean_loss):
            epochs[-1]["end"] = time.perf_counter()

    code = train_t5_stagcn.main(argv, callbacks=(Record(),))
    emit({"exit_code": code, "info": info, "epochs": epochs})
    sys.stdout.flush()
    os._exit(0 if code == 0 else 1)  # as the script's __main__: skip gloo/DDP teardown at exit


# ---- child: load the big file, and what a forked worker un-shares --------------------------------

def child_load(path: str) -> None:
    import torch

    from dataloaders.datasets import TrainDataset, collate, freeze_before_fork, load_dataset

    before = smaps_rollup(os.getpid())
    t0 = time.perf_counter()
    clips = load_dataset(path, pretrain=True, branch=0)
    load_s = time.perf_counter() - t0
    after = smaps_rollup(os.getpid())
    nbytes = sum(c["coordinates"].nbytes for c in clips)
    ds = TrainDataset(clips)
    storages = {c["coordinates"].untyped_storage().data_ptr() for c in clips}

    def forked() -> dict:
        """A forked child (like a DataLoader worker, it inherits the clips copy-on-write) reports its own
        memory after each stage: idle; every sample fetched; a full gc; every sample collated in 8s."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                me = os.getpid()
                stages = {"idle": smaps_rollup(me)}
                by_map = {"idle": private_dirty_by_mapping(me)}
                t = time.perf_counter()
                items = 0
                for i in range(len(ds)):  # every sample: more than one worker fetches in an epoch
                    items += len(ds[i]["coordinates"])
                stages["getitem_all"] = smaps_rollup(me)
                by_map["getitem_all"] = private_dirty_by_mapping(me)
                # A full collection writes to the gc header of every tracked object and frees unreachable
                # cycles inherited from the parent: free() writes into the parent's (shared) heap pages.
                found = gc.collect()
                stages["gc_collect"] = smaps_rollup(me)
                by_map["gc_collect"] = private_dirty_by_mapping(me)
                for start in range(0, len(ds), 8):
                    collate([ds[i] for i in range(start, min(start + 8, len(ds)))])
                stages["collate_all"] = smaps_rollup(me)
                by_map["collate_all"] = private_dirty_by_mapping(me)
                os.write(w, json.dumps({"stages": stages, "by_mapping": by_map, "gc_found": found,
                                        "s": time.perf_counter() - t}).encode())
            finally:
                os._exit(0)
        os.close(w)
        data = b""
        while chunk := os.read(r, 65536):
            data += chunk
        os.close(r)
        os.waitpid(pid, 0)
        return json.loads(data)

    fork = forked()
    # Diagnosis: what the load left for the cyclic gc, and how much of the RSS is freed-but-kept heap.
    gc.set_debug(gc.DEBUG_SAVEALL)
    unreachable = gc.collect()
    kinds: dict = defaultdict(int)
    for obj in gc.garbage:
        kinds[type(obj).__name__] += 1
    gc.garbage.clear()
    gc.set_debug(0)
    gc.collect()
    rss_after_gc = smaps_rollup(os.getpid())["Rss"]
    try:  # glibc only: give free heap pages back to the OS
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
        rss_after_trim = _mib(smaps_rollup(os.getpid())["Rss"])
    except (OSError, AttributeError):
        rss_after_trim = None
    diagnosis = {"unreachable_after_load": unreachable, "safe_unpickler_unreachable": kinds.get("SafeUnpickler", 0),
                 "unreachable_by_type": dict(sorted(kinds.items(), key=lambda kv: -kv[1])[:8]),
                 "rss_after_gc_collect_mib": _mib(rss_after_gc), "rss_after_malloc_trim_mib": rss_after_trim}
    freeze_before_fork()  # what the trainer does before its DataLoader forks workers
    frozen = forked()
    emit({"load_dataset_s": round(load_s, 2), "clips": len(clips), "samples": len(ds),
          "fork_frozen_stages_kb": frozen["stages"], "fork_frozen_gc_found": frozen["gc_found"],
          "coordinates_bytes": nbytes, "distinct_storages": len(storages),
          "rss_before_mib": _mib(before["Rss"]), "rss_after_mib": _mib(after["Rss"]),
          "parent_smaps_kb": smaps_rollup(os.getpid()), "fork_stages_kb": fork["stages"],
          "fork_private_dirty_by_mapping_mib": fork["by_mapping"], "fork_gc_found": fork["gc_found"],
          "fork_s": round(fork["s"], 1), "diagnosis": diagnosis, "torch_threads": torch.get_num_threads()})


# ---- part 1: throughput with and without bucketing -----------------------------------------------

def throughput(args, tmp: Path) -> dict:
    from dataloaders.samplers import padding_fraction

    model = QUICK_MODEL if args.quick else MODEL
    corpus = write_corpus(tmp / "tp_data", args.clips, 2, args.seed, args.lengths, (1, 1))
    print(f"[scale] throughput corpus: {corpus['clips']} clips, {corpus['min_frames']}-{corpus['max_frames']} "
          f"frames (mean {corpus['mean_frames']}), {corpus['file_mib']} MiB", flush=True)
    env = child_env(args.threads)
    runs = []
    order = [False, True] * args.repeats  # alternated, so a change of machine load hits both settings
    for k, bucket in enumerate(order):
        cfg = write_config(tmp / f"tp_exp{k}_{'bucket' if bucket else 'nobucket'}", corpus, model,
                           DATA={"BATCH_SIZE": args.batch_size},
                           OPTIMIZER={"MAX_EPOCH": 1 + args.timed_epochs, "WARMUP_STEPS": 10})
        t0, load0, meter = time.perf_counter(), os.getloadavg()[0], LoadMeter()
        res = run_child(["--child", "train", "--", "--cfg_file", str(cfg), "--set",
                         f"DATA.BUCKET_BY_LENGTH={'true' if bucket else 'false'}"], env, timeout=1800)
        wall = time.perf_counter() - t0
        if res["exit_code"] != 0:
            raise RuntimeError(f"training run exited {res['exit_code']}")
        log_s = [float(m.group(2)) for m in re.finditer(r"epoch (\d+): loss \S+ \(([\d.]+)s\)",
                                                        (cfg.parent / "train.log").read_text())]
        timed = res["epochs"][1:]  # epoch 1 = warm-up
        seconds = sum(e["end"] - e["start"] for e in timed)
        batches = [b for e in timed for b in e["batches"]]
        samples = sum(len(b) for b in batches)
        real = sum(sum(b) for b in batches)
        slots = sum(max(b) * len(b) for b in batches)
        # Same rule as dataloaders.samplers.padding_fraction, on the lengths the loop actually saw.
        lengths = [n for b in batches for n in b]
        index_batches, pos = [], 0
        for b in batches:
            index_batches.append(list(range(pos, pos + len(b))))
            pos += len(b)
        pad = padding_fraction(lengths, index_batches)
        step_s = [[round(b - a, 3) for a, b in zip([e["start"]] + e["step_t"][:-1], e["step_t"])]
                  for e in res["epochs"]]
        runs.append({
            "bucket_by_length": bucket, "samples_per_s": samples / seconds, "timed_epochs": len(timed),
            "timed_samples": samples, "timed_s": round(seconds, 3), "timed_steps": sum(len(e["step_t"]) for e in timed),
            "epoch_s": [round(e["end"] - e["start"], 3) for e in res["epochs"]], "train_log_epoch_s": log_s,
            "padded_fraction": pad, "padded_fraction_check": (slots - real) / slots,
            "real_frames_per_s": real / seconds, "frame_slots_per_s": slots / seconds,
            "mean_batch_max_frames": slots / samples, "step_s": step_s, "run_wall_s": round(wall, 1),
            "loadavg_1min_start": load0, "loadavg_1min_end": os.getloadavg()[0],
            "other_processes_cpu_share": meter.other_share(), "info": res["info"]})
        print(f"[scale]   bucket_by_length={bucket}: {runs[-1]['samples_per_s']:.2f} samples/s over "
              f"{len(timed)} epochs ({seconds:.1f}s), padded fraction {pad:.3f}, run {wall:.0f}s, other processes "
              f"used {runs[-1]['other_processes_cpu_share']} of the CPUs", flush=True)

    def mean(key, bucket):
        vals = [r[key] for r in runs if r["bucket_by_length"] == bucket]
        return sum(vals) / len(vals)

    on, off = mean("samples_per_s", True), mean("samples_per_s", False)
    info = runs[0]["info"]
    return {
        "model": {**model, "params": info.get("params"), "BRANCH": 0, "REDUCTION_POLICY": "TIME_POOL (default)"},
        "batch_size": args.batch_size, "processes": 1, "num_workers": 0, "omp_num_threads": args.threads,
        "torch_threads": info.get("torch_threads"), "corpus": corpus, "length_shape": args.lengths,
        "samples_per_epoch": info.get("samples"), "batches_per_epoch": info.get("batches_per_epoch"),
        "warmup_epochs_excluded": 1, "runs": runs,
        "samples_per_s": {"bucketed": on, "unbucketed": off},
        "padded_fraction": {"bucketed": mean("padded_fraction", True), "unbucketed": mean("padded_fraction", False)},
        "speedup": on / off,
    }


# ---- part 2: memory of the real 2-rank job on a 30k-clip file ------------------------------------

class _Stream(threading.Thread):
    """Reads a child pipe; keeps the tail and the highest `k/N` the tqdm bar of epoch 1 has shown."""

    BAR = re.compile(r"epoch 1:[^\r\n|]*\|[^|]*\|\s*(\d+)/(\d+)")

    def __init__(self, pipe, t0: float):
        super().__init__(daemon=True)
        self.pipe, self.t0 = pipe, t0
        self.tail = ""
        self.step, self.total, self.first_step_s = 0, None, None

    def run(self) -> None:
        buf = ""
        while chunk := self.pipe.read1(4096) if hasattr(self.pipe, "read1") else self.pipe.read(4096):
            buf += chunk.decode(errors="replace")
            for m in self.BAR.finditer(buf):
                self.step, self.total = max(self.step, int(m.group(1))), int(m.group(2))
                if self.step >= 1 and self.first_step_s is None:
                    self.first_step_s = time.perf_counter() - self.t0
            buf = buf[-400:]  # a bar line can span two reads
            self.tail = (self.tail + chunk.decode(errors="replace"))[-6000:]


def sample_job(root: int) -> list[dict]:
    """Every process of the job with its role and smaps_rollup."""
    out = []
    pids = descendants(root)
    ranks = {pid: _env_var(pid, "RANK") for pid in pids}
    for pid in pids:
        sm = smaps_rollup(pid)
        if sm is None:
            continue
        parent = _ppid(pid)
        if pid == root:
            role, rank = "torchrun", None
        elif parent == root and ranks[pid] is not None:
            role, rank = "rank", int(ranks[pid])
        elif parent in ranks and parent != root and ranks.get(parent) is not None and _ppid(parent) == root:
            role, rank = "worker", int(ranks[parent])
        else:
            role, rank = "other", None
        out.append({"pid": pid, "ppid": parent, "role": role, "rank": rank, "cmd": _cmdline(pid)[:120],
                    "rss_mib": _mib(sm.get("Rss", 0)), "pss_mib": _mib(sm.get("Pss", 0)),
                    "pss_anon_mib": _mib(sm.get("Pss_Anon", 0)),
                    "private_mib": _mib(sm.get("Private_Clean", 0) + sm.get("Private_Dirty", 0)),
                    "private_dirty_mib": _mib(sm.get("Private_Dirty", 0)),
                    "shared_mib": _mib(sm.get("Shared_Clean", 0) + sm.get("Shared_Dirty", 0)),
                    "private_dirty_by_mapping_mib": private_dirty_by_mapping(pid)})
    order = {"torchrun": 0, "rank": 1, "worker": 2, "other": 3}
    return sorted(out, key=lambda p: (order[p["role"]], p["rank"] if p["rank"] is not None else -1, p["pid"]))


def totals(procs: list[dict]) -> dict:
    t = {"rss_mib": 0.0, "pss_mib": 0.0, "private_mib": 0.0}
    by_role: dict = defaultdict(lambda: {"n": 0, "rss_mib": 0.0, "pss_mib": 0.0, "private_mib": 0.0})
    for p in procs:
        for k in t:
            t[k] += p[k]
            by_role[p["role"]][k] += p[k]
        by_role[p["role"]]["n"] += 1
    r = lambda d: {k: round(v, 1) if isinstance(v, float) else v for k, v in d.items()}  # noqa: E731
    return {**r(t), "processes": len(procs), "by_role": {k: r(v) for k, v in by_role.items()}}


def memory(args, tmp: Path) -> dict:
    model = QUICK_MODEL if args.quick else MODEL
    print(f"[scale] memory: writing {args.mem_clips} clips ...", flush=True)
    # HumanML3D has ~3 captions per motion: 2-4 labels per clip, each a training sample.
    corpus = write_corpus(tmp / "mem_data", args.mem_clips, 4, args.seed, args.lengths, (2, 4))
    print(f"[scale]   {corpus['file_mib']} MiB file, {corpus['coordinates_mib']} MiB of coordinates, "
          f"written in {corpus['write_s']}s", flush=True)
    gc.collect()

    # (a) load_dataset alone in a fresh one-thread process, and what a forked worker un-shares.
    print("[scale]   load_dataset in a fresh process + fork experiment ...", flush=True)
    direct = run_child(["--child", "load", corpus["train"]], child_env(1), timeout=1800)
    data_mib = direct["coordinates_bytes"] / MIB
    print(f"[scale]   load_dataset {direct['load_dataset_s']}s; RSS {direct['rss_before_mib']} -> "
          f"{direct['rss_after_mib']} MiB", flush=True)

    # (b) the real job: torchrun, 2 ranks, 2 workers each, full file.
    nproc, workers = 2, 2
    cfg = write_config(tmp / "mem_exp", corpus, model, DATA={"BATCH_SIZE": 8, "NUM_WORKERS": workers},
                       OPTIMIZER={"MAX_EPOCH": 1, "WARMUP_STEPS": 10})
    env = {**child_env(1), "M2T_PROGRESS": "bar"}  # one thread per rank: 2 ranks on 2 cores; the bar is read below
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", str(nproc), str(args.mem_script),
           "--cfg_file", str(cfg)]
    print(f"[scale]   launching {' '.join(cmd[:4])} ... (OMP_NUM_THREADS=1, NUM_WORKERS={workers})", flush=True)
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    # Own session: the job's processes are ours alone and can be found from torchrun's pid.
    job = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           start_new_session=True)
    streams = [_Stream(job.stdout, t0), _Stream(job.stderr, t0)]
    for s in streams:
        s.start()
    bar = streams[1]  # tqdm writes to stderr
    samples, seen, error = [], set(), None
    try:
        deadline = t0 + args.mem_timeout
        while bar.step < args.mem_steps:
            if job.poll() is not None:
                raise RuntimeError(f"torchrun exited {job.returncode} before {args.mem_steps} steps:\n"
                                   f"{streams[0].tail[-2000:]}\n{bar.tail[-3000:]}")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"no {args.mem_steps} steps within {args.mem_timeout}s (bar at {bar.step}):\n"
                                   f"{bar.tail[-3000:]}")
            seen.update(descendants(job.pid))
            time.sleep(0.5)
        for k in range(args.mem_samples):
            procs = sample_job(job.pid)
            seen.update(p["pid"] for p in procs)
            samples.append({"t_s": round(time.perf_counter() - t0, 1), "step": bar.step, "procs": procs,
                            "totals": totals(procs)})
            print(f"[scale]   sample {k + 1} at step {bar.step} ({samples[-1]['t_s']}s): {len(procs)} processes, total PSS "
                  f"{samples[-1]['totals']['pss_mib']:.0f} MiB, total RSS {samples[-1]['totals']['rss_mib']:.0f} MiB",
                  flush=True)
            if k < args.mem_samples - 1:
                time.sleep(args.mem_interval)
    except Exception as e:  # still stop the job below
        error = e
    # Stop: SIGTERM to torchrun only (it forwards SIGTERM to the ranks, whose workers exit with them).
    stop = {"signal": "SIGTERM to torchrun", "killed_by_pid": []}
    t_stop = time.perf_counter()
    seen.update(descendants(job.pid))
    if job.poll() is None:
        job.send_signal(signal.SIGTERM)
    try:
        job.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    alive = _job_alive(seen, job.pid)
    for _ in range(60):  # 30 s: the DataLoader workers notice their rank's exit within a few seconds
        if not alive:
            break
        time.sleep(0.5)
        alive = _job_alive(seen, job.pid)
    for p in alive:  # last resort, by pid: only processes of this job's session
        try:
            os.kill(p, signal.SIGKILL)
            stop["killed_by_pid"].append(p)
        except ProcessLookupError:
            pass
    if job.poll() is None:
        job.wait(timeout=30)
    stop.update(exit_code=job.returncode, seconds=round(time.perf_counter() - t_stop, 1))
    for s in streams:
        s.join(timeout=5)
    if error is not None:
        raise error

    last = samples[-1]
    procs = last["procs"]
    tot = last["totals"]
    n_workers = tot["by_role"].get("worker", {}).get("n", 0)
    worker_private = tot["by_role"].get("worker", {}).get("private_mib", 0.0)
    stages = direct["fork_stages_kb"]
    owned = {k: round((v["Private_Dirty"] + v["Private_Clean"]) / 1024, 1) for k, v in stages.items()}
    owned_frozen = {k: round((v["Private_Dirty"] + v["Private_Clean"]) / 1024, 1)
                    for k, v in direct["fork_frozen_stages_kb"].items()}
    per_worker = worker_private / max(n_workers, 1)
    decidable = data_mib >= 256  # below that, interpreter/torch pages a worker owns anyway dominate
    verdict = {
        "total_pss_over_data": round(tot["pss_mib"] / data_mib, 2),
        "if_copied_per_worker_and_rank": (1 + workers) * nproc,
        "if_shared": nproc,
        "rank_rss_over_data": [round(p["rss_mib"] / data_mib, 2) for p in procs if p["role"] == "rank"],
        "workers_private_mib": worker_private,
        "worker_private_mean_mib": round(per_worker, 1),
        "worker_private_over_data": round(per_worker / data_mib, 3),
        "fork_private_mib": owned,
        "fork_private_over_data": {k: round(v / data_mib, 3) for k, v in owned.items()},
        "fork_frozen_private_mib": owned_frozen,  # the same child forked after freeze_before_fork()
        # A worker holding a copy would own about the whole per-rank data; half of it is the threshold.
        "dataset_copied_per_worker": bool(per_worker >= 0.5 * data_mib) if decidable else None,
        "decidable": decidable,
    }
    return {
        "clips": args.mem_clips, "samples": direct["samples"], "model": model, "batch_size": 8,
        "ranks": nproc, "num_workers": workers, "omp_num_threads": 1, "corpus": corpus,
        "coordinates_mib": round(data_mib, 1), "distinct_storages": direct["distinct_storages"],
        "load_dataset_s": direct["load_dataset_s"],
        "load_process_rss_mib": {"before": direct["rss_before_mib"], "after": direct["rss_after_mib"]},
        "startup_to_first_step_s": round(bar.first_step_s, 1) if bar.first_step_s else None,
        "steps_per_epoch_per_rank": bar.total, "sampled_at_steps": [s["step"] for s in samples],
        "sampled_at_s": [s["t_s"] for s in samples],
        "processes": procs, "totals": tot, "samples_totals": [s["totals"] for s in samples],
        "fork_experiment": {"private_dirty_by_mapping_mib": direct["fork_private_dirty_by_mapping_mib"],
                            "gc_found_in_child": direct["fork_gc_found"], "stages_kb": stages,
                            "seconds": direct["fork_s"]},
        "load_diagnosis": direct["diagnosis"],
        "verdict": verdict, "stop": stop, "loadavg_start": list(load_start), "loadavg_end": list(os.getloadavg()),
        "command": f"OMP_NUM_THREADS=1 {' '.join(cmd)}",
    }


def _job_alive(pids, sid: int) -> list[int]:
    """The pids still running in the job's session (a reused pid belongs to another session)."""
    alive = []
    for p in pids:
        try:
            stat = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            if os.getsid(p) == sid and stat[0] != "Z":  # a zombie holds no memory, only its exit status
                alive.append(p)
        except (OSError, IndexError):
            pass
    return alive


# ---- summary -------------------------------------------------------------------------------------

def summary(res: dict) -> str:
    lines = [f"machine: {res['machine']['cpu_model']}, {res['machine']['cpus']} CPUs; "
             f"uptime before: {res['machine']['uptime_before']}", f"         uptime after: {res['machine']['uptime_after']}"]
    tp = res.get("throughput")
    if tp:
        m = tp["model"]
        lines += [f"THROUGHPUT  1 process, OMP_NUM_THREADS={tp['omp_num_threads']} (torch threads {tp['torch_threads']}), "
                  f"batch {tp['batch_size']}, {tp['corpus']['clips']} clips {tp['corpus']['min_frames']}-"
                  f"{tp['corpus']['max_frames']} frames ({tp['length_shape']})",
                  f"  model: STA-GCN {m['HIDDEN_CHANNEL']}/{m['OUT_CHANNEL']}, T5 d_model {m['T5']['D_MODEL']}, "
                  f"{m['T5']['NUM_LAYERS']}+{m['T5']['NUM_LAYERS']} layers, d_ff {m['T5']['D_FF']}, "
                  f"{m['params']:,} params; epoch 1 excluded, {tp['runs'][0]['timed_epochs']} timed epochs per run"]
        for r in tp["runs"]:
            lines.append(f"  bucket={str(r['bucket_by_length']):5}  {r['samples_per_s']:7.2f} samples/s  padded "
                         f"{r['padded_fraction']:.3f}  real frames/s {r['real_frames_per_s']:8.0f}  epochs(s) "
                         f"{r['epoch_s']} (train.log {r['train_log_epoch_s']})")
        lines.append(f"  speed-up with bucketing: {tp['speedup']:.2f}x; padded fraction "
                     f"{tp['padded_fraction']['unbucketed']:.3f} -> {tp['padded_fraction']['bucketed']:.3f}")
    mem = res.get("memory")
    if mem:
        lines += [f"MEMORY  {mem['clips']} clips ({mem['samples']} samples), file {mem['corpus']['file_mib']} MiB, "
                  f"coordinates {mem['coordinates_mib']} MiB; {mem['ranks']} ranks x {mem['num_workers']} workers",
                  f"  load_dataset {mem['load_dataset_s']} s (fresh process: RSS {mem['load_process_rss_mib']['before']}"
                  f" -> {mem['load_process_rss_mib']['after']} MiB); launch -> first step {mem['startup_to_first_step_s']} s",
                  f"  {'role':8} {'rank':>4} {'pid':>8} {'RSS MiB':>9} {'PSS MiB':>9} {'private':>9}"]
        for p in mem["processes"]:
            lines.append(f"  {p['role']:8} {'' if p['rank'] is None else p['rank']:>4} {p['pid']:>8} "
                         f"{p['rss_mib']:9.1f} {p['pss_mib']:9.1f} {p['private_mib']:9.1f}   private dirty by "
                         f"mapping {p['private_dirty_by_mapping_mib']}")
        t, v = mem["totals"], mem["verdict"]
        lines += [f"  total    {t['processes']:>4} procs  {t['rss_mib']:9.1f} {t['pss_mib']:9.1f} {t['private_mib']:9.1f}"
                  f"   (PSS totals of the samples at {mem['sampled_at_s']} s: {[s['pss_mib'] for s in mem['samples_totals']]})",
                  f"  total PSS = {v['total_pss_over_data']} x coordinates (copied per worker: ~"
                  f"{v['if_copied_per_worker_and_rank']}x + overhead; shared: ~{v['if_shared']}x + overhead); "
                  f"each worker owns {v['worker_private_mean_mib']} MiB = {v['worker_private_over_data']} x coordinates",
                  f"  each rank's RSS = {v['rank_rss_over_data']} x coordinates; after load_dataset: "
                  f"{mem['load_diagnosis']['unreachable_after_load']} objects in unreachable cycles "
                  f"{mem['load_diagnosis']['unreachable_by_type']}",
                  f"  load process RSS {mem['load_process_rss_mib']['after']} MiB -> after gc.collect "
                  f"{mem['load_diagnosis']['rss_after_gc_collect_mib']} -> after malloc_trim(0) "
                  f"{mem['load_diagnosis']['rss_after_malloc_trim_mib']} MiB",
                  f"  forked child owns (MiB) after each stage: {v['fork_private_mib']}; private dirty by mapping: "
                  f"{mem['fork_experiment']['private_dirty_by_mapping_mib']}",
                  f"  forked after freeze_before_fork() (the trainer's, DATA.NUM_WORKERS > 0), owns (MiB): "
                  f"{v['fork_frozen_private_mib']}",
                  f"  dataset copied per worker: {v['dataset_copied_per_worker']}; stop: {mem['stop']}"]
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="both parts at tiny size (smoke test, < 1 min)")
    ap.add_argument("--only", nargs="+", choices=["throughput", "memory"], default=["throughput", "memory"])
    ap.add_argument("--out", default=str(REPO / "bench" / "scale_results.json"))
    ap.add_argument("--clips", type=int, default=None, help="throughput corpus (default 256; quick 16)")
    ap.add_argument("--batch-size", type=int, default=None, help="throughput batch (default 16; quick 8)")
    ap.add_argument("--timed-epochs", type=int, default=None, help="epochs timed after the warm-up epoch (2; quick 1)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per setting, alternated")
    ap.add_argument("--threads", type=int, default=None,
                    help="OMP_NUM_THREADS of the throughput process (default 2, one per core; quick 1: a smoke "
                         "test on a shared machine must not spin two OpenMP threads against other jobs)")
    ap.add_argument("--mem-clips", type=int, default=None, help="memory corpus (default 30000; quick 400)")
    ap.add_argument("--mem-steps", type=int, default=None, help="steps before sampling memory (default 8; quick 2)")
    ap.add_argument("--mem-samples", type=int, default=None, help="memory samples of the job (default 4; quick 2)")
    ap.add_argument("--mem-interval", type=float, default=None, help="seconds between them (default 15; quick 1)")
    ap.add_argument("--mem-timeout", type=float, default=900, help="seconds to wait for those steps")
    ap.add_argument("--mem-script", default=str(REPO / "train_t5_stagcn.py"),
                    help="entry torchrun runs in the memory part (e.g. a copy with a proposed fix patched in)")
    ap.add_argument("--lengths", choices=["skewed", "uniform"], default="skewed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (data, experiments) and print it")
    ap.add_argument("--child", choices=["train", "load"], help=argparse.SUPPRESS)
    ap.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    quick = args.quick
    for key, full, small in (("clips", 256, 16), ("batch_size", 16, 8), ("timed_epochs", 2, 1),
                             ("mem_clips", 30000, 400), ("mem_steps", 8, 2), ("threads", 2, 1),
                             ("mem_samples", 4, 2), ("mem_interval", 15.0, 1.0)):
        if getattr(args, key) is None:
            setattr(args, key, small if quick else full)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    rest = [a for a in args.rest if a != "--"]
    if args.child == "train":
        child_train(rest)
    if args.child == "load":
        child_load(rest[0])
        return 0
    t0 = time.perf_counter()
    res: dict = {"settings": {k: v for k, v in vars(args).items() if k not in ("child", "rest")},
                 "machine": {"cpu_model": cpu_model(), "cpus": os.cpu_count(), "uptime_before": uptime(),
                             "loadavg_before": list(os.getloadavg())}}
    print(f"[scale] {res['machine']['uptime_before']}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="m2t_scale_"))
    try:
        if "throughput" in args.only:
            res["throughput"] = throughput(args, tmp)
        if "memory" in args.only:
            res["memory"] = memory(args, tmp)
    finally:
        if args.keep:
            print(f"[scale] kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    res["machine"].update(uptime_after=uptime(), loadavg_after=list(os.getloadavg()))
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(summary(res))
    print(f"[scale] {res['wall_s']} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
