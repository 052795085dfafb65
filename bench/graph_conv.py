"""The STA-GCN's graph convolution in two layouts, timed interleaved in one process, beside the fp32 matmul
peak of the same run:

- as built (models/stgcn.py): joints aggregated by one matrix product, channels and kernels mixed by a
  (1, K) convolution dilated by V;
- channels last: the same two steps as matrix products in [B·T·V, K·C_in] order, with the copies into and
  out of that layout counted (the rest of the network is channels-first).

For every fixed-graph block of the encoder (its real input, captured by a forward hook) it times forward +
backward of the graph convolution alone and reports GFLOP/s and the fraction of the matmul peak; the totals
are what the encoder spends in graph convolutions per step. Then whole STA-GCN forward+backward steps with
either layout in every fixed-graph block, interleaved; and, from torch.profiler, the share of a training step
and of an eval forward spent in convolutions (graph and temporal, forward and backward). A layout that was
tried and not adopted (README, "Measured numbers"): this script is how to see it on another machine.

    python -m bench.graph_conv [--threads 1] [--quick] [--out bench/graph_conv.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import machine_info  # noqa: E402
from bench.speed import matmul_peak  # noqa: E402
from bench.workload import QUICK, Sizes, stagcn_and_input  # noqa: E402
from models.lora import effective_weight  # noqa: E402
from models.stgcn import STGCBlock  # noqa: E402


def channels_last_graph_conv(block: STGCBlock, x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """block.graph_convolution(x, A) for a fixed graph A [K, V, V], computed as two matrix products over
    channels-last rows: [B, T, W, K·C_in] (joints aggregated) @ [K·C_in, C_out]."""
    B, C_in, T, V = x.shape
    K = block.num_kernels
    C_out = block.graph_conv.out_channels // K
    G = A if block.mask is None else A * block.mask  # [K, V, W]
    z = torch.matmul(x.permute(0, 2, 1, 3), G.transpose(0, 1).reshape(V, K * V))  # [B, T, C_in, K·W]
    z = z.view(B, T, C_in, K, V).permute(0, 1, 4, 3, 2).reshape(B * T * V, K * C_in)  # rows (b, t, w)
    weight = effective_weight(block.graph_conv).view(K, C_out, C_in).permute(0, 2, 1).reshape(K * C_in, C_out)
    bias = block.graph_conv.bias.view(K, C_out).t() @ G.sum(1)  # [C_out, W]
    y = (z @ weight).view(B, T, V, C_out).permute(0, 3, 1, 2)  # [B, C_out, T, W]
    # back to channels-first memory, as the rest of the block reads it (left strided, the batch norm and
    # the temporal convolution after it run slower than this saves)
    return (y + bias.view(1, C_out, 1, V)).contiguous()


def encoder_and_input(sizes: Sizes, layout: str = "as_built"):
    """A train-mode STA-GCN (seed 0) with `layout` in every fixed-graph block, and one batch of its input."""
    import types

    enc, feats, mask = stagcn_and_input(sizes)
    if layout == "channels_last":
        for module in enc.modules():
            if isinstance(module, STGCBlock) and module.mask is not None:
                # an instance attribute shadows the method for this benchmark's own encoder only
                module.graph_convolution = types.MethodType(channels_last_graph_conv, module)
    return enc, feats, mask


def encoder_train_step(enc, feats: torch.Tensor, mask: torch.Tensor) -> None:
    """One train-mode forward+backward of the encoder (the sum of its embedding as the loss)."""
    enc.train().zero_grad(set_to_none=True)
    enc(feats, mask)[0].sum().backward()


def block_inputs(sizes: Sizes) -> list[tuple[str, STGCBlock, torch.Tensor, torch.Tensor]]:
    """(name, block, x, A) of every fixed-graph ST-GC block in one train-mode forward of the encoder."""
    enc, feats, mask = encoder_and_input(sizes)
    seen, handles = [], []
    for name, module in enc.named_modules():
        if isinstance(module, STGCBlock) and module.mask is not None:
            handles.append(module.register_forward_hook(
                lambda m, args, out, name=name: seen.append((name, m, args[0].detach(), args[2].detach()))))
    with torch.no_grad():
        enc(feats, mask)
    for h in handles:
        h.remove()
    return seen


def fwd_bwd(fn, block: STGCBlock, x: torch.Tensor, A: torch.Tensor) -> None:
    block.zero_grad(set_to_none=True)
    x = x.requires_grad_(True)
    fn(block, x, A).sum().backward()
    x.grad = None


def whole_encoder(sizes: Sizes, iters: int) -> dict:
    """Seconds of whole STA-GCN forward+backward steps per layout (interleaved; best and median)."""
    import statistics
    import time

    encoders = {k: encoder_and_input(sizes, k) for k in ("as_built", "channels_last")}
    with torch.no_grad():  # eval mode: no dropout draws, so the two encoders must agree
        outs = [enc.eval()(feats, mask)[0] for enc, feats, mask in encoders.values()]
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-4)

    times = {k: [] for k in encoders}
    for args in encoders.values():
        encoder_train_step(*args)  # warm-up
    for _ in range(iters):
        for k, args in encoders.items():
            t = time.perf_counter()
            encoder_train_step(*args)
            times[k].append(time.perf_counter() - t)
    out = {f"{k}_step_s": {"best": min(v), "median": statistics.median(v), "all": v} for k, v in times.items()}
    out["step_speedup_median"] = out["as_built_step_s"]["median"] / out["channels_last_step_s"]["median"]
    return out


def convolution_shares(sizes: Sizes) -> dict:
    """Share of self CPU time in convolution ops (torch.profiler) of one train-mode forward+backward and of one
    eval forward of the encoder as built, and the op with the most self time in each."""
    from torch.profiler import ProfilerActivity, profile

    enc, feats, mask = encoder_and_input(sizes)

    def eval_forward():
        with torch.no_grad():
            enc.eval()(feats, mask)

    out = {}
    for name, fn in (("train_step", lambda: encoder_train_step(enc, feats, mask)), ("eval_forward", eval_forward)):
        fn()  # warm-up: oneDNN builds its kernels per shape
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        top = max(events, key=lambda e: e.self_cpu_time_total)
        out[name] = {"convolution_share": sum(e.self_cpu_time_total for e in events if "conv" in e.key) / total,
                     "top_op": top.key, "top_op_share": top.self_cpu_time_total / total, "self_cpu_s": total / 1e6}
    return out


def run(sizes: Sizes, iters: int) -> dict:
    import time

    from torch.utils.flop_counter import FlopCounterMode

    layouts = {"as_built": lambda b, x, A: b.graph_convolution(x, A), "channels_last": channels_last_graph_conv}
    rows, totals = [], {name: 0.0 for name in layouts}
    total_flops = 0
    for name, block, x, A in block_inputs(sizes):
        with torch.no_grad():  # the same function, or the timing compares different work
            want = block.graph_convolution(x, A)
            got = channels_last_graph_conv(block, x, A)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        with FlopCounterMode(display=False) as counter:
            fwd_bwd(layouts["as_built"], block, x.clone(), A)
        flops = counter.get_total_flops()
        best = {k: float("inf") for k in layouts}
        for fn in layouts.values():  # warm-up: oneDNN builds its kernels per shape
            fwd_bwd(fn, block, x.clone(), A)
        for _ in range(iters):  # interleaved, so a change of machine load hits both alike
            for k, fn in layouts.items():
                xc = x.clone()
                t = time.perf_counter()
                fwd_bwd(fn, block, xc, A)
                best[k] = min(best[k], time.perf_counter() - t)
        row = {"block": name, "shape": list(x.shape), "c_out": block.graph_conv.out_channels // block.num_kernels,
               "gflop": flops / 1e9}
        for k in layouts:
            row[f"{k}_ms"] = best[k] * 1e3
            row[f"{k}_gflops"] = flops / best[k] / 1e9
            totals[k] += best[k]
        rows.append(row)
        total_flops += flops
    peak = matmul_peak(sizes, torch.device("cpu"))["gflops_best"]
    out = {"blocks": rows, "matmul_peak_gflops": peak, "total_gflop": total_flops / 1e9}
    for k, seconds in totals.items():
        out[f"{k}_total_ms"] = seconds * 1e3
        out[f"{k}_gflops"] = total_flops / seconds / 1e9
        out[f"{k}_of_peak"] = out[f"{k}_gflops"] / peak
    return out


def format_table(out: dict) -> str:
    lines = ["| block | input [B, C, T, V] | C_out | GFLOP | as built GFLOP/s | channels last GFLOP/s |",
             "|---|---|---|---|---|---|"]
    for r in out["blocks"]:
        lines.append(f"| {r['block']} | {r['shape']} | {r['c_out']} | {r['gflop']:.3f} | "
                     f"{r['as_built_gflops']:.1f} | {r['channels_last_gflops']:.1f} |")
    lines.append(f"| all | | | {out['total_gflop']:.3f} | {out['as_built_gflops']:.1f} "
                 f"({out['as_built_of_peak']:.2f} of peak) | {out['channels_last_gflops']:.1f} "
                 f"({out['channels_last_of_peak']:.2f} of peak) |")
    lines.append(f"fp32 matmul peak of this run: {out['matmul_peak_gflops']:.1f} GFLOP/s")
    for name, p in out["profile"].items():
        lines.append(f"{name.replace('_', ' ')} (torch.profiler, as built): {100 * p['convolution_share']:.0f} % of self "
                     f"CPU time in convolutions; largest op {p['top_op']} {100 * p['top_op_share']:.0f} %")
    a, c = out["whole"]["as_built_step_s"], out["whole"]["channels_last_step_s"]
    lines.append(f"whole STA-GCN forward+backward step (s, best / median of {len(a['all'])}): as built "
                 f"{a['best']:.3f} / {a['median']:.3f}, channels last {c['best']:.3f} / {c['median']:.3f} "
                 f"(median speed-up {out['whole']['step_speedup_median']:.3f}x)")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="tiny encoder, 1 iteration: a smoke test, not a measurement")
    p.add_argument("--iters", type=int, default=8, help="timed repeats per layout, of each block and of the whole step")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else Sizes()
    iters = 1 if args.quick else args.iters
    out = {"machine": machine_info(torch.device("cpu")), "quick": args.quick, **run(sizes, iters),
           "whole": whole_encoder(sizes, iters), "profile": convolution_shares(sizes)}
    print(format_table(out))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
