"""Speed sections of bench/run.py: training steps, the STA-GCN against the matmul peak, generation, and a
profile of where the time goes (--profile)."""
from __future__ import annotations

import contextlib
import random
import statistics
import time
from pathlib import Path

import torch

from bench.harness import fp32_only, summary, sync, time_calls
from bench.workload import (Sizes, TrainStep, build_model, make_batch, move, prepared_batches, random_lengths,
                            stagcn_and_input)
from models.config import Generation


def bench_train(sizes: Sizes, device: torch.device, branch: int, seed: int = 0) -> dict:
    """Samples/s of full training steps; the same cycle of batches (same lengths) for both branches."""
    from torch.utils.flop_counter import FlopCounterMode

    model, cfg = build_model(sizes, branch, device)
    step = TrainStep(model, cfg, device)
    rng = random.Random(seed)
    lengths = [random_lengths(sizes.batch, sizes, rng) for _ in range(sizes.train_batches)]
    data = prepared_batches(model, sizes, lengths, device, seed=100)
    n = len(data)
    # Warm-up: every batch of the cycle once (oneDNN builds its kernels per shape); the FLOPs of all of them
    # are counted on the way (matmuls and convolutions: what the hardware peak is about).
    flops = []

    def warm_or_time(i):
        if i < n:
            with FlopCounterMode(display=False) as counter:
                step(*data[i])
            flops.append(counter.get_total_flops())
        else:
            step(*data[i % n])

    times = time_calls(warm_or_time, warmup=n, iters=sizes.train_iters, device=device)
    s = summary(times)
    padded = [max(x) for x in lengths]
    gflop = statistics.mean(flops) / 1e9  # the timed steps cycle through the same batches
    return {"samples_per_s": sizes.batch / s["median_s"], **s, "batch": sizes.batch, "gflop_per_step": gflop,
            "gflops": gflop / s["median_s"],
            "padded_frames_mean": statistics.mean(padded), "clip_frames_mean": statistics.mean(sum(lengths, [])),
            "label_tokens_mean": float(statistics.mean(int((lab != -100).sum(1).float().mean()) for _, lab in data))}


def matmul_peak(sizes: Sizes, device: torch.device) -> dict:
    """Best fp32 GEMM throughput of this run: torch.mm (MKL on CPU), and on CPU also oneDNN's matmul.

    Both ship with torch and both serve the model (MKL: nn.Linear/mm; oneDNN: every convolution). On AMD
    CPUs MKL may not pick its widest kernels, so torch.mm alone can understate the hardware; the peak is the
    better of the two."""
    n = sizes.matmul_n if device.type == "cpu" else max(sizes.matmul_n, 8192)
    flops = 2 * n ** 3
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    c = torch.empty(n, n, device=device)
    times = time_calls(lambda i: torch.mm(a, b, out=c), warmup=2, iters=sizes.matmul_iters, device=device)
    out = {"torch_mm_gflops": flops / min(times) / 1e9, "torch_mm_median_gflops": flops / statistics.median(times) / 1e9,
           "n": n}
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        try:
            x, w = a.to_mkldnn(), b.to_mkldnn()
            t = time_calls(lambda i: torch.ops.aten.mkldnn_linear(x, w), 2, sizes.matmul_iters, device)
            out["onednn_gflops"] = flops / min(t) / 1e9
        except (RuntimeError, AttributeError) as e:  # a torch build without the op: torch.mm only
            out["onednn_error"] = str(e).splitlines()[0]
    out["gflops_best"] = max(out["torch_mm_gflops"], out.get("onednn_gflops", 0.0))
    return out


def bench_stagcn(sizes: Sizes, device: torch.device) -> dict:
    """Achieved GFLOP/s of one STA-GCN forward+backward (train mode) next to the fp32 matmul peak."""
    from torch.utils.flop_counter import FlopCounterMode

    enc, feats, mask = stagcn_and_input(sizes, device)
    B, T = sizes.batch, sizes.stagcn_frames

    def fwd_bwd(_=0):
        enc.zero_grad(set_to_none=True)
        emb, att_node, att_A = enc(feats, mask)
        emb.sum().backward()

    with fp32_only(device):
        fwd_bwd()
        with FlopCounterMode(display=False) as counter:
            fwd_bwd()
        flops = counter.get_total_flops()
        times = time_calls(fwd_bwd, warmup=sizes.stagcn_warmup, iters=sizes.stagcn_iters, device=device)
        peak = matmul_peak(sizes, device)
    s = summary(times)
    achieved = flops / s["median_s"] / 1e9
    return {"gflop_per_step": flops / 1e9, "gflops": achieved, "gflops_best": flops / s["min_s"] / 1e9,
            "matmul_peak_gflops": peak["gflops_best"], "matmul": peak, "ratio": achieved / peak["gflops_best"],
            "batch": B, "frames": T, **s}


@contextlib.contextmanager
def exact_new_tokens(model, n: int):
    """Make MotionToText.generate produce exactly n new tokens (eos suppressed until then), and check it."""
    t5 = model.t5
    original = t5.generate
    seen = []

    def generate(**kwargs):
        kwargs["min_new_tokens"] = n
        out = original(**kwargs)
        seen.append(out.shape[1] - kwargs["decoder_input_ids"].shape[1])
        return out

    t5.generate = generate  # instance attribute shadows the method for this block only
    try:
        yield seen
    finally:
        del t5.generate
    if any(k != n for k in seen):
        raise RuntimeError(f"generation produced {sorted(set(seen))} new tokens, expected exactly {n}")


def bench_generate(sizes: Sizes, device: torch.device, model=None, cfg=None) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from engine.precision import autocast_dtype

    if model is None:
        model, cfg = build_model(sizes, 0, device)
    model.eval()
    amp = autocast_dtype(cfg, device)
    greedy = Generation(num_beams=1, repetition_penalty=3.5, length_penalty=1.0, max_length=sizes.new_tokens)
    beam = Generation(num_beams=3, repetition_penalty=5.0, length_penalty=3.0, max_length=sizes.new_tokens)
    rng = random.Random(3)
    singles = [move(make_batch(random_lengths(1, sizes, rng), 200 + i, sizes)[0], device)
               for i in range(sizes.gen_bs1_clips)]
    big_lengths = random_lengths(sizes.gen_big_batch, sizes, rng)
    big = move(make_batch(big_lengths, 300, sizes)[0], device)

    def run(batch, gen):
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            return model.generate(batch, gen)

    out = {}
    with exact_new_tokens(model, sizes.new_tokens):
        n = len(singles)
        t1 = time_calls(lambda i: run(singles[i % n], greedy), warmup=n, iters=max(n, sizes.gen_iters), device=device)
        out["bs1"] = {"captions_per_s": 1 / statistics.median(t1), **summary(t1)}
        with FlopCounterMode(display=False) as counter:  # the warm-up call, counted
            run(big, greedy)
        tb = time_calls(lambda i: run(big, greedy), warmup=0, iters=sizes.gen_iters, device=device)
        out["bs32"] = {"captions_per_s": sizes.gen_big_batch / statistics.median(tb), **summary(tb)}
        # Same clips as bs32: the encoder's kernels are warm; decoding with 3 beams is the new part.
        tbeam = time_calls(lambda i: run(big, beam), warmup=0, iters=sizes.beam_iters, device=device)
        out["bs32_beam3"] = {"captions_per_s": sizes.gen_big_batch / statistics.median(tbeam), **summary(tbeam)}
    with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        te = time_calls(lambda i: model.encode(big), warmup=0, iters=1, device=device)
    out["bs32"]["encode_s"] = te[0]
    out["bs32"]["gflop_per_caption"] = counter.get_total_flops() / 1e9 / sizes.gen_big_batch  # STA-GCN + projection of the 32 clips, part of every bs32 call
    out["bs32"]["padded_frames"] = max(big_lengths)
    out["bs32"]["clip_frames_mean"] = statistics.mean(big_lengths)
    return out


def profile_report(sizes: Sizes, device: torch.device, out_path: Path) -> str:
    """Where the time goes: per-phase wall time of one training step per branch, then torch.profiler's op
    table for the step and for one batch-32 generation (CPU)."""
    from torch.profiler import ProfilerActivity, profile

    lines = []
    for branch in (0, 1):
        model, cfg = build_model(sizes, branch, device)
        step = TrainStep(model, cfg, device)
        rng = random.Random(0)
        lengths = [random_lengths(sizes.batch, sizes, rng) for _ in range(sizes.train_batches)]
        data = prepared_batches(model, sizes, lengths, device, seed=100)
        for d in data:  # warm-up
            step(*d)
        phases = {"encoder_fwd": 0.0, "t5_fwd": 0.0}
        marks = {}

        def pre(name):
            def hook(module, args, kwargs=None):  # used and removed within this loop iteration
                sync(device)
                marks[name] = time.perf_counter()  # noqa: B023
            return hook

        def post(name):
            def hook(module, args, output):
                sync(device)
                phases[name] += time.perf_counter() - marks[name]  # noqa: B023 (this iteration's dicts)
            return hook

        handles = [model.encoder.register_forward_pre_hook(pre("encoder_fwd")),
                   model.encoder.register_forward_hook(post("encoder_fwd")),
                   model.t5.register_forward_pre_hook(pre("t5_fwd")), model.t5.register_forward_hook(post("t5_fwd"))]
        batch, labels = data[0]
        model.train()
        t0 = time.perf_counter()
        loss = model(batch, labels)
        t1 = time.perf_counter()
        loss.backward()
        sync(device)
        t2 = time.perf_counter()
        step.optimizer_step()
        sync(device)
        t3 = time.perf_counter()
        for h in handles:
            h.remove()
        lines.append(f"branch {branch}: padded frames {batch['coordinates'].shape[1]}, forward {t1 - t0:.3f}s "
                     f"(encoder incl. standards {phases['encoder_fwd']:.3f}s, T5 {phases['t5_fwd']:.3f}s), "
                     f"backward {t2 - t1:.3f}s, optimizer step {t3 - t2:.3f}s")
        with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
            step(*data[0])
        lines.append(f"\n== branch {branch}: one training step, top ops by self CPU time ==")
        lines.append(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
        if branch == 0:
            model.eval()
            big = move(make_batch(random_lengths(sizes.gen_big_batch, sizes, rng), 300, sizes)[0], device)
            gen = Generation(num_beams=1, repetition_penalty=3.5, max_length=sizes.new_tokens)
            with exact_new_tokens(model, sizes.new_tokens):
                model.generate(big, gen)  # warm-up
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    t = time.perf_counter()
                    model.generate(big, gen)
                    t_all = time.perf_counter() - t
            with torch.no_grad():
                t = time.perf_counter()
                model.encode(big)
                t_enc = time.perf_counter() - t
            lines.append(f"\n== generation, batch {sizes.gen_big_batch}, greedy {sizes.new_tokens} tokens: "
                         f"{t_all:.2f}s (profiled), of which encode() alone takes {t_enc:.2f}s ==")
            lines.append(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
        del model, step, data
    text = "\n".join(lines)
    out_path.write_text(text)
    return text
