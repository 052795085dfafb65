"""Training and generation speed of the real model against the hardware it runs on.

    python bench/run.py [--quick] [--device cpu|cuda] [--threads N] [--out bench/results.json]
                        [--only train stagcn generate scaling memory] [--profile]

Prints a table and writes a flat JSON (keys with dots, e.g. ``train_samples_per_s.branch0``) plus the
machine, the settings and the CPU load of other processes during every section. What is measured:

- ``train_samples_per_s.branch{0,1}``: batch size / median time of one training step of the model that
  ``engine.weights.build_model`` builds (published sizes: HIDDEN 32, OUT 128, T5 d_model 512, 6+6
  layers, 8 heads, d_ff 2048, TIME_POOL): forward, backward and ``engine.optim.OptimizerStep`` (AdamW with the
  trainer's parameter groups, clip 1.0, GradScaler, linear schedule), autocast as the trainer chooses.
  BX-like data: clip lengths normal(61, 12) clipped to 32–96 frames (BX_train's quartiles 53/60/69), each
  batch padded to its longest clip; captions of 5–26 words (~17 tokens); branch 1 finetunes against the
  standards Jab (109 frames) and Cross (76), each embedded once per step when present in the batch.
- ``stagcn_gflops``: FLOPs of one STA-GCN forward+backward (``torch.utils.flop_counter.FlopCounterMode``:
  convolutions and matmuls) / median time of one forward+backward (batch 4, 64 frames, train mode);
  ``matmul_peak_gflops``: best of several square fp32 GEMMs in the same run, through torch.mm (MKL) and,
  on CPU, oneDNN's matmul (the library behind torch's convolutions); ``stagcn_matmul_peak_ratio`` = ratio.
  ``*_at_peak``: what a number would be if every counted FLOP ran at that peak (an upper bound).
- ``generate_captions_per_s.{bs1,bs32,bs32_beam3}``: ``MotionToText.generate`` (encoder + T5.generate +
  decoding) with exactly 50 new tokens (``min_new_tokens`` forced), greedy with repetition penalty 3.5 as the
  original, and beam 3 with the later release's penalties (5.0, length 3.0); batch 32 = one batch of
  BX-like clips (``generate_encode_share``: the part of it spent in ``encode``).
- ``weak_scaling_efficiency``: two processes × 1 thread, DDP over gloo (file store: no port of ours), same
  per-process batch and shapes; samples/s of both ÷ (2 × samples/s of one process × 1 thread, no DDP).
  Always on CPU.
- ``peak_rss_mib.bs{4,16}``: peak resident memory (VmHWM) of a fresh process after two training steps of
  branch 0 at that batch size on 96-frame clips (the longest BX clips); it includes the interpreter,
  torch, the model and the optimizer state (``rss_after_build_mib`` in the details: before the steps).

Timings are medians after warm-up; targets are the issue's. Tests never assert timings.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/run.py` puts bench/, not the repo root, on sys.path
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.harness import LoadMeter, machine_info, start_workers  # noqa: E402
from bench.speed import bench_generate, bench_stagcn, bench_train, profile_report  # noqa: E402
from bench.workers import MODULE, bench_memory, bench_scaling, memory_specs, start_scaling  # noqa: E402
from bench.workload import QUICK, Sizes  # noqa: E402

REQUIRED_KEYS = ("train_samples_per_s.branch0", "train_samples_per_s.branch1", "generate_captions_per_s.bs1",
                 "generate_captions_per_s.bs32", "stagcn_matmul_peak_ratio", "weak_scaling_efficiency")


SECTIONS = ("train", "stagcn", "generate", "scaling", "memory")
# Quoted, not measured by bench/: the research code this replaces, 2-core CPU, same shapes.
ORIGINAL = {"train_samples_per_s.branch0": 1.63, "train_samples_per_s.branch1": 0.89,
            "generate_captions_per_s.bs1": 1.41}


TARGETS = {  # key: (description, predicate on the results)
    "train_samples_per_s.branch0": (">= 2.0", lambda r: r["train_samples_per_s.branch0"] >= 2.0),
    "train_samples_per_s.branch1": ("within 25% of branch 0",
                                    lambda r: r["train_samples_per_s.branch1"] >= 0.75 * r["train_samples_per_s.branch0"]),
    "generate_captions_per_s.bs32": (">= 15", lambda r: r["generate_captions_per_s.bs32"] >= 15),
    "stagcn_matmul_peak_ratio": (">= 0.80", lambda r: r["stagcn_matmul_peak_ratio"] >= 0.8),
    "weak_scaling_efficiency": (">= 0.80", lambda r: r["weak_scaling_efficiency"] >= 0.8),
}


UNITS = {"train_samples_per_s": "samples/s", "generate_captions_per_s": "captions/s", "peak_rss_mib": "MiB",
         "train_step_s": "s", "gflops": "GFLOP/s", "_gflop_per": "GFLOP", "cuda_peak": "MiB"}


def unit_of(key: str) -> str:
    for part, unit in UNITS.items():
        if part in key:
            return unit
    return ""


def format_table(results: dict, quick: bool) -> str:
    rows = [("metric", "value", "unit", "target", "status", "original")]
    for key, value in results.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        target, status = "", ""
        if key in TARGETS:
            target = TARGETS[key][0]
            try:
                status = "n/a (quick)" if quick else ("met" if TARGETS[key][1](results) else "MISSED")
            except KeyError:
                status = "n/a"
        original = f"{ORIGINAL[key]:g}" if key in ORIGINAL else ""
        rows.append((key, f"{value:.4g}", unit_of(key), target, status, original))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny model, few iterations: a smoke test, not a measurement")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the single-process numbers "
                   "(default: all CPUs of this machine)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results.json")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="TRAIN.PRECISION of the models (auto: fp32 on CPU; bf16 autocasts on CPU too)")
    p.add_argument("--profile", action="store_true", help="also write a torch.profiler report next to --out")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench: --device cuda but CUDA is not available")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = args.threads or (1 if args.quick else usable)  # --quick: no thread contention on a busy machine
    torch.set_num_threads(threads)
    sizes = replace(QUICK if args.quick else Sizes(), precision=args.precision)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    started = time.perf_counter()
    machine = machine_info(device)
    results: dict = {}
    details: dict = {}
    load: dict = {}
    errors: dict = {}

    def section(name: str, fn: Callable[[], None]) -> None:
        print(f"[bench] {name} ...", flush=True)
        meter, t = LoadMeter(), time.perf_counter()
        try:
            fn()
        except Exception as e:  # one failed section must not cost the others' numbers
            errors[name] = f"{type(e).__name__}: {e}"
            print(f"[bench] {name} FAILED: {errors[name]}", file=sys.stderr, flush=True)
        load[name] = meter.other_share()
        print(f"[bench] {name}: {time.perf_counter() - t:.1f}s (other processes used {load[name]} of the CPUs)",
              flush=True)

    def train():
        for branch in (0, 1):
            r = bench_train(sizes, device, branch)
            details[f"train.branch{branch}"] = r
            results[f"train_samples_per_s.branch{branch}"] = r["samples_per_s"]
            results[f"train_step_s.branch{branch}"] = r["median_s"]
            results[f"train_gflop_per_sample.branch{branch}"] = r["gflop_per_step"] / r["batch"]
            results[f"train_gflops.branch{branch}"] = r["gflops"]
        results["train_branch1_over_branch0"] = (results["train_samples_per_s.branch1"]
                                                 / results["train_samples_per_s.branch0"])

    def stagcn():
        r = bench_stagcn(sizes, device)
        details["stagcn"] = r
        results.update({"stagcn_gflop_per_step": r["gflop_per_step"], "stagcn_gflops": r["gflops"],
                        "matmul_peak_gflops": r["matmul_peak_gflops"],
                        "matmul_gflops.torch_mm": r["matmul"]["torch_mm_gflops"]})
        if "onednn_gflops" in r["matmul"]:
            results["matmul_gflops.onednn"] = r["matmul"]["onednn_gflops"]
        results["stagcn_matmul_peak_ratio"] = r["ratio"]

    def generate():
        r = bench_generate(sizes, device)
        details["generate"] = r
        for k, v in r.items():
            results[f"generate_captions_per_s.{k}"] = v["captions_per_s"]
        results["generate_gflop_per_caption.bs32"] = r["bs32"]["gflop_per_caption"]
        results["generate_encode_share.bs32"] = r["bs32"]["encode_s"] / r["bs32"]["median_s"]

    def scaling():
        r = bench_scaling(sizes, early_scaling)
        details["scaling"] = r
        results.update({"weak_scaling.samples_per_s_1proc": r["samples_per_s_1proc"],
                        "weak_scaling.samples_per_s_2proc": r["samples_per_s_2proc"],
                        "weak_scaling_efficiency": r["efficiency"]})

    # --quick: the worker processes start now and run beside the rest (a smoke test's timings do not matter).
    early_memory = start_workers(memory_specs(sizes, device), 1, MODULE) if args.quick and "memory" in args.only else None
    early_scaling = start_scaling(sizes) if args.quick and "scaling" in args.only else None

    def memory():
        r = bench_memory(sizes, device, early_memory)
        details["memory"] = r
        for k, v in r.items():
            results[f"peak_rss_mib.{k}"] = v["peak_rss_mib"]
            if "cuda_peak_allocated_mib" in v:
                results[f"cuda_peak_allocated_mib.{k}"] = v["cuda_peak_allocated_mib"]

    steps = {"train": train, "stagcn": stagcn, "generate": generate, "scaling": scaling, "memory": memory}
    for name in SECTIONS:
        if name in args.only:
            section(name, steps[name])
    # Upper bounds if every counted FLOP ran at the measured matmul peak (time outside matmuls/convs = 0).
    if "matmul_peak_gflops" in results:
        peak = results["matmul_peak_gflops"]
        for branch in (0, 1):
            if f"train_gflop_per_sample.branch{branch}" in results:
                results[f"train_samples_per_s_at_peak.branch{branch}"] = peak / results[f"train_gflop_per_sample.branch{branch}"]
        if "generate_gflop_per_caption.bs32" in results:
            results["generate_captions_per_s_at_peak.bs32"] = peak / results["generate_gflop_per_caption.bs32"]
    if args.profile:
        print(profile_report(sizes, device, args.out.with_name(args.out.stem + "_profile.txt")))
    machine["loadavg_end"] = list(os.getloadavg())
    machine["other_processes_cpu_share"] = load
    targets = {}
    for key, (text, ok) in TARGETS.items():
        with contextlib.suppress(KeyError):
            targets[key] = {"target": text, "value": results[key], "met": None if args.quick else bool(ok(results))}
    doc = {**results, "errors": errors, "machine": machine, "targets": targets, "original": ORIGINAL, "details": details,
           "settings": {**asdict(sizes), "quick": args.quick, "threads": threads, "device": str(device),
                        "sections": args.only}, "wall_s": time.perf_counter() - started}
    for key in REQUIRED_KEYS:
        if key in results and not (math.isfinite(results[key]) and results[key] > 0):
            raise RuntimeError(f"bench: {key} = {results[key]!r} is not a positive finite number")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    print()
    print(f"{machine['cpu_model']} · {machine['cpus_usable']} CPUs · torch {machine['torch']} · "
          f"{threads} threads · device {device}" + (f" ({machine['gpu']})" if "gpu" in machine else ""))
    print(f"load average {machine['loadavg_start'][0]:.2f} at start, {machine['loadavg_end'][0]:.2f} at end; "
          f"CPU share used by other processes per section: {load}")
    print(format_table(results, args.quick))
    print(f"\nwrote {args.out} ({doc['wall_s']:.0f}s)")
    if errors:
        sys.exit(f"bench: sections failed: {', '.join(errors)} (details in {args.out})")
    return doc


if __name__ == "__main__":
    main()
