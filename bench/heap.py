"""Resident memory of a training process over many steps of varying batch length, per allocator setting.

    python -m bench.heap [--quick] [--steps 40] [--threads 2] [--variants glibc trim jemalloc …] [--out …]

Each variant runs the same steps in a fresh process, one after the other: the published sizes (STA-GCN 32/128,
T5 d_model 512 × 6), branch 0, batch 4, every step a new batch whose clips are 40–199 frames long
(HumanML3D-like), the trainer's optimizer step. After each step the process's VmRSS is read. Variants:

* ``glibc``: the default allocator. glibc raises its mmap threshold each time a large block is freed, so
  later blocks of that size come from the heap, whose freed middle cannot be returned to the system: with
  batches of changing shape the heap keeps growing.
* ``mmap_threshold``: glibc with ``MALLOC_MMAP_THRESHOLD_=131072`` (fixed, so never raised): large blocks
  are always mapped and unmapped.
* ``trim`` / ``trim_every_10``: glibc, with ``malloc_trim(0)`` after every step / every 10th step, as the
  trainer does with TRAIN.MALLOC_TRIM: 1 (its default) / 10.
* ``trim_ab``: the time cost of trimming, in one process (separate processes differ by as much as the cost):
  groups of three steps on one batch — the first untimed, the second after no trim, the third after a
  ``malloc_trim(0)``. The third minus the second, plus the trim call, is what a trim after a step costs;
  the median over the groups against the median step.
* ``jemalloc`` / ``tcmalloc``: Debian's ``libjemalloc2`` / ``libtcmalloc-minimal4`` through ``LD_PRELOAD``
  (skipped when not installed).

Reported: RSS after the warm-up steps and at the end, its growth, and the median step time. Compare the
variants within one run.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from bench.harness import REPO, LoadMeter, emit, rss_mib, run_workers, write_results
from common.heap import heap_trimmer
from bench.workload import QUICK, Sizes, TrainStep, build_model, prepared_batches

LIBS = Path("/usr/lib/x86_64-linux-gnu")
VARIANTS = {
    "glibc": {},
    "mmap_threshold": {"MALLOC_MMAP_THRESHOLD_": "131072"},
    "trim": {},
    "trim_every_10": {},
    "trim_ab": {},
    "jemalloc": {"LD_PRELOAD": str(LIBS / "libjemalloc.so.2")},
    "tcmalloc": {"LD_PRELOAD": str(LIBS / "libtcmalloc_minimal.so.4")},
}
WARMUP = 4  # steps before the reference RSS: the optimizer state and the first batches' buffers exist by then
SIZES = Sizes(batch=4, min_frames=40, max_frames=199)
QUICK_SIZES = replace(QUICK, min_frames=8, max_frames=40)


def trim_cost(spec: dict, model, step, sizes: Sizes, device) -> None:
    """The trim_ab variant (see the module docstring): groups of three steps on one batch — untimed, timed,
    then malloc_trim(0) (timed) and the third step (timed) — so each group gives one paired difference. The
    first group is a warm-up."""
    rng, trim = random.Random(0), heap_trimmer()
    after_none, after_trim, trim_s = [], [], []
    for group in range(spec["steps"] // 3):
        lengths = [rng.randint(sizes.min_frames, sizes.max_frames) for _ in range(sizes.batch)]
        (batch, labels), = prepared_batches(model, sizes, [lengths], device, seed=1000 + group)
        step(batch, labels)
        t0 = time.perf_counter()
        step(batch, labels)
        t1 = time.perf_counter()
        trim(0)
        t2 = time.perf_counter()
        step(batch, labels)
        t3 = time.perf_counter()
        if group:
            after_none.append(t1 - t0)
            trim_s.append(t2 - t1)
            after_trim.append(t3 - t2)
    diffs = [t + c - n for n, c, t in zip(after_none, trim_s, after_trim)]
    base = statistics.median(after_none)
    emit({"variant": spec["variant"], "step_after_trim_s": after_trim, "step_after_no_trim_s": after_none,
          "trim_call_s": trim_s, "paired_cost_s": diffs, "median_step_after_no_trim_s": base,
          "median_paired_cost_s": statistics.median(diffs), "trim_cost_fraction": statistics.median(diffs) / base,
          "peak_rss_mib": rss_mib("VmHWM")})


def worker(spec: dict) -> None:
    torch.set_num_threads(spec["threads"])
    sizes = Sizes(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["sizes"].items()})
    device = torch.device("cpu")
    model, cfg = build_model(sizes, 0, device)
    step = TrainStep(model, cfg, device)
    if spec["variant"] == "trim_ab":
        return trim_cost(spec, model, step, sizes, device)
    rng = random.Random(0)
    trim = heap_trimmer() if spec["variant"].startswith("trim") else None
    trim_every = 10 if spec["variant"] == "trim_every_10" else 1
    rss, times = [], []
    for i in range(spec["steps"]):
        lengths = [rng.randint(sizes.min_frames, sizes.max_frames) for _ in range(sizes.batch)]
        (batch, labels), = prepared_batches(model, sizes, [lengths], device, seed=1000 + i)
        t0 = time.perf_counter()
        step(batch, labels)
        if trim is not None and (i + 1) % trim_every == 0:
            trim(0)
        times.append(time.perf_counter() - t0)
        rss.append(round(rss_mib("VmRSS"), 1))
    warm = rss[min(WARMUP, len(rss)) - 1]
    emit({"variant": spec["variant"], "rss_mib": rss, "rss_after_warmup_mib": warm, "rss_end_mib": rss[-1],
          "growth_mib": round(rss[-1] - warm, 1), "peak_rss_mib": rss_mib("VmHWM"),
          "median_step_s": statistics.median(times[WARMUP:] or times)})


def available(variant: str) -> bool:
    lib = VARIANTS[variant].get("LD_PRELOAD")
    return lib is None or Path(lib).exists()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.heap", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny model: a smoke test, not a measurement")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--out", type=Path, default=REPO / "bench" / "heap_results.json")
    args = p.parse_args(argv)
    sizes = QUICK_SIZES if args.quick else SIZES
    steps = min(args.steps, 2 * WARMUP) if args.quick else args.steps
    results, load = {}, {}
    for variant in args.variants:  # one at a time: each process has the CPUs to itself
        if not available(variant):
            print(f"[heap] {variant}: {VARIANTS[variant]['LD_PRELOAD']} not installed, skipped", flush=True)
            continue
        meter = LoadMeter()
        (r,) = run_workers([{"kind": "heap", "variant": variant, "threads": args.threads, "steps": steps,
                             "sizes": asdict(sizes), "env": VARIANTS[variant]}],
                           threads=args.threads, module="bench.heap", timeout=3600)
        results[variant], load[variant] = r, meter.other_share()
        if variant == "trim_ab":
            print(f"[heap] trim_ab: median step {r['median_step_after_no_trim_s']:.2f} s after no trim; a trim and "
                  f"the step after it cost {r['median_paired_cost_s']:+.3f} s more (median over "
                  f"{len(r['paired_cost_s'])} groups): {100 * r['trim_cost_fraction']:+.1f} % per step (other "
                  f"processes used {load[variant]} of the CPUs)", flush=True)
            continue
        print(f"[heap] {variant}: RSS {r['rss_after_warmup_mib']:.0f} MiB after {WARMUP} steps -> "
              f"{r['rss_end_mib']:.0f} MiB after {steps} (+{r['growth_mib']:.0f}), median step "
              f"{r['median_step_s']:.2f} s (other processes used {load[variant]} of the CPUs)", flush=True)
    doc = {"results": results, "other_processes_cpu_share": load,
           "settings": {**asdict(sizes), "quick": args.quick, "threads": args.threads, "steps": steps}}
    write_results(args.out, doc)
    return doc


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):
        worker(json.loads(sys.argv[1]))
    else:
        main()
