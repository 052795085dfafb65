"""Full finetuning against LoRA at T5-base's shape: trainable parameters, training step time, peak memory.

    python -m bench.lora [--quick] [--threads N] [--steps N] [--out bench/lora_results.json]

Each variant runs in a fresh process (so its peak resident memory, VmHWM, is its own), one after the other:
the published encoder (HIDDEN 32 / OUT 128) and a config-built T5 of t5-base's shape (d_model 768, 12 + 12
layers, 12 heads, d_ff 3072; vocabulary: the BPE trained on the benchmark captions), branch 0, batch 4 of
BX-like clips, the trainer's optimizer step. Variants: every weight trains; LoRA rank 8 on q, v with
T5.FREEZE ALL_BUT_LORA; the same plus LoRA on the STA-GCN's convolutions. Step time is the median after
warm-up; compare variants within one run (the machine's load is printed beside them).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch

from bench.harness import REPO, LoadMeter, emit, rss_mib, run_workers, write_results, summary, time_calls
from bench.workload import QUICK, Sizes, TrainStep, build_model, prepared_batches, random_lengths

T5_BASE = Sizes(d_model=768, layers=12, heads=12, d_ff=3072)
LORA = {"RANK": 8, "ALPHA": 16.0, "DROPOUT": 0.05, "TARGETS": "q,v"}
VARIANTS = {
    "full": {},
    "lora_t5": {"LORA": LORA, "FREEZE": "ALL_BUT_LORA"},
    "lora_t5_stagcn": {"LORA": {**LORA, "STAGCN": True}, "FREEZE": "ALL_BUT_LORA"},
}


def worker(spec: dict) -> None:
    torch.set_num_threads(spec["threads"])
    sizes = Sizes(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["sizes"].items()})
    device = torch.device("cpu")
    model, cfg = build_model(sizes, 0, device, t5_extra=VARIANTS[spec["variant"]])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    step = TrainStep(model, cfg, device)
    rng = random.Random(0)
    data = prepared_batches(model, sizes, [random_lengths(sizes.batch, sizes, rng) for _ in range(2)], device, 100)
    times = time_calls(lambda i: step(*data[i % len(data)]), warmup=2, iters=spec["steps"], device=device)
    emit({"variant": spec["variant"], "trainable_params": trainable, "total_params": total,
          "step_s": statistics.median(times), "samples_per_s": sizes.batch / statistics.median(times),
          "peak_rss_mib": rss_mib("VmHWM"), **summary(times)})


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.lora", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny model: a smoke test, not a measurement")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=4, help="timed training steps per variant")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "lora_results.json")
    args = p.parse_args(argv)
    sizes = replace(QUICK, train_batches=2) if args.quick else T5_BASE
    results, load = {}, {}
    for variant in VARIANTS:  # one at a time: each process has the CPUs to itself
        meter = LoadMeter()
        (r,) = run_workers([{"variant": variant, "threads": args.threads, "steps": 2 if args.quick else args.steps,
                             "sizes": asdict(sizes)}], threads=args.threads, module="bench.lora", timeout=1800)
        results[variant], load[variant] = r, meter.other_share()
        print(f"[lora] {variant}: {r['trainable_params']:,} of {r['total_params']:,} parameters train, "
              f"step {r['step_s']:.2f} s, peak RSS {r['peak_rss_mib']:.0f} MiB "
              f"(other processes used {load[variant]} of the CPUs)", flush=True)
    doc = {"results": results, "other_processes_cpu_share": load, "settings": {**asdict(sizes), "quick": args.quick,
                                                                                  "threads": args.threads}}
    write_results(args.out, doc)
    return doc


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):
        worker(json.loads(sys.argv[1]))
    else:
        main()
