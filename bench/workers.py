"""Sections of bench/run.py that need fresh processes: weak scaling (two DDP processes over gloo) and peak
memory (each process counts its own). `python -m bench.workers SPEC_JSON` runs one worker."""
from __future__ import annotations

import contextlib
import faulthandler
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from bench.harness import collect_workers, emit, progress, rss_mib, start_workers, summary, time_calls
from bench.workload import Sizes, TrainStep, build_model, prepared_batches

MODULE = "bench.workers"


def worker_main(spec: dict) -> None:
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    threads = spec["threads"]
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(threads)
    sizes = Sizes(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["sizes"].items()})
    device = torch.device(spec["device"])
    result = {"memory": worker_memory, "scaling": worker_scaling}[spec["kind"]](spec, sizes, device)
    if result is not None:
        emit(result)


def worker_memory(spec: dict, sizes: Sizes, device: torch.device) -> dict:
    model, cfg = build_model(sizes, 0, device)
    after_build = rss_mib("VmRSS")
    step = TrainStep(model, cfg, device)
    lengths = [[sizes.memory_frames] * spec["batch"]]
    (batch, labels), = prepared_batches(model, sizes, lengths, device, seed=500)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):  # the second step runs with the optimizer state already allocated
        step(batch, labels)
    out = {"peak_rss_mib": rss_mib("VmHWM"), "rss_after_build_mib": after_build, "batch": spec["batch"],
           "frames": sizes.memory_frames}
    if device.type == "cuda":
        out["cuda_peak_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return out


def _wait_for(path: Path, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f}s for {path}")
        time.sleep(0.05)


def worker_scaling(spec: dict, sizes: Sizes, device: torch.device) -> dict:
    """Rank 0 first measures 1 process × 1 thread alone (rank 1 idles, sleeping), then both train with DDP."""
    import datetime

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank, world, folder = spec["rank"], spec["world"], Path(spec["folder"])
    progress(f"rank {rank}: building the model")
    model, cfg = build_model(sizes, 0, device)
    lengths = [[sizes.scaling_frames] * sizes.batch]  # identical shapes on every rank: no load imbalance
    data = prepared_batches(model, sizes, lengths, device, seed=600 + rank)
    result = {}
    if rank == 0:
        _wait_for(folder / "ready1")  # rank 1 has built its model and sleeps: the CPU is ours
        progress("rank 0: 1 process x 1 thread")
        step = TrainStep(model, cfg, device)
        times = time_calls(lambda i: step(*data[0]), sizes.scaling_warmup, sizes.scaling_iters, device)
        result["single"] = {"samples_per_s": sizes.batch / statistics.median(times), **summary(times)}
        (folder / "go").touch()
    else:
        (folder / "ready1").touch()
        _wait_for(folder / "go")
    progress(f"rank {rank}: joining the process group")
    dist.init_process_group("gloo", init_method=f"file://{folder / 'store'}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=300))
    try:
        ddp = DDP(model)
        step = TrainStep(model, cfg, device, module=ddp)
        dist.barrier()
        progress(f"rank {rank}: DDP, {world} processes x 1 thread")
        times = time_calls(lambda i: step(*data[0]), sizes.scaling_warmup, sizes.scaling_iters, device)
        slowest = torch.tensor(times)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)  # a step lasts as long as its slowest rank
        times = slowest.tolist()
        result["ddp"] = {"samples_per_s": world * sizes.batch / statistics.median(times), **summary(times)}
        emit(result)  # before the teardown: the result counts even if tearing down stalls
        progress(f"rank {rank}: done, tearing down")
    finally:
        dist.destroy_process_group()
    return None


def start_scaling(sizes: Sizes) -> tuple[list, str]:
    folder = tempfile.mkdtemp(prefix="m2t-bench-")  # the file store and the ready/go marks, nothing else
    specs = [{"kind": "scaling", "rank": r, "world": 2, "folder": folder, "threads": 1, "device": "cpu",
              "sizes": asdict(sizes)} for r in range(2)]
    return start_workers(specs, threads=1, module=MODULE), folder


def bench_scaling(sizes: Sizes, started=None) -> dict:
    procs, folder = started or start_scaling(sizes)
    try:
        r0, _ = collect_workers(procs, timeout=300 if sizes.batch > 2 else 120)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    single, ddp = r0["single"]["samples_per_s"], r0["ddp"]["samples_per_s"]
    return {"samples_per_s_1proc": single, "samples_per_s_2proc": ddp, "efficiency": ddp / (2 * single),
            "single": r0["single"], "ddp": r0["ddp"], "frames": sizes.scaling_frames, "batch_per_proc": sizes.batch}


def memory_specs(sizes: Sizes, device: torch.device) -> list[dict]:
    # Side by side, 1 thread each: only memory is read here, and each process counts its own.
    return [{"kind": "memory", "batch": b, "threads": 1, "device": str(device), "sizes": asdict(sizes)}
            for b in sizes.memory_batches]


def bench_memory(sizes: Sizes, device: torch.device, procs=None) -> dict:
    procs = procs or start_workers(memory_specs(sizes, device), threads=1, module=MODULE)
    return {f"bs{spec['batch']}": r for (spec, _), r in zip(procs, collect_workers(procs))}


if __name__ == "__main__":
    worker_main(json.loads(sys.argv[1]))
