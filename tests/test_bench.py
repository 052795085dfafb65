"""Smoke tests of bench/: `--quick` runs (started together, tests/bench_runs.py) write every key. No timings
asserted."""
import json
import math

import pytest
import torch

pytestmark = pytest.mark.slow  # a subprocess benchmark run


def test_quick_bench_writes_every_key_as_a_positive_finite_number(bench_runs):
    proc = bench_runs.result("bench")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.out.read_text())
    from bench.run import REQUIRED_KEYS

    extra = ["generate_captions_per_s.bs32_beam3", "peak_rss_mib.bs4", "peak_rss_mib.bs16", "matmul_peak_gflops",
             "stagcn_gflops", "train_step_s.branch0"]
    for key in list(REQUIRED_KEYS) + extra:
        value = results[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)
    machine = results["machine"]
    assert machine["threads"] >= 1 and machine["torch"] and machine["cpu_model"]
    assert results["settings"]["quick"] is True
    assert "train_samples_per_s.branch0" in proc.stdout  # the printed table


def test_quick_lora_bench_reports_each_variant(bench_runs):
    proc = bench_runs.result("lora")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.out.read_text())["results"]
    assert list(results) == ["full", "lora_t5", "lora_t5_stagcn"]
    full, lora = results["full"], results["lora_t5"]
    assert full["trainable_params"] == full["total_params"]
    assert lora["trainable_params"] < full["trainable_params"] < lora["total_params"]  # T5 fixed, adapters added
    assert all(r["step_s"] > 0 and r["peak_rss_mib"] > 0 for r in results.values())


def test_quick_heap_bench_reads_rss_after_every_step_per_allocator(bench_runs):
    proc = bench_runs.result("heap")
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.out.read_text())
    assert list(doc["results"]) == ["trim", "trim_ab"]
    r = doc["results"]["trim"]
    assert len(r["rss_mib"]) == doc["settings"]["steps"] and all(v > 0 for v in r["rss_mib"])
    assert r["growth_mib"] == round(r["rss_mib"][-1] - r["rss_after_warmup_mib"], 1) and r["median_step_s"] > 0
    ab = doc["results"]["trim_ab"]  # the same batch timed after no trim and after a trim, in one process
    groups = doc["settings"]["steps"] // 3 - 1  # the first is a warm-up
    assert len(ab["step_after_trim_s"]) == len(ab["step_after_no_trim_s"]) == len(ab["trim_call_s"]) == groups >= 1
    assert ab["paired_cost_s"] == pytest.approx([t + c - n for n, c, t in zip(
        ab["step_after_no_trim_s"], ab["trim_call_s"], ab["step_after_trim_s"])])
    assert ab["trim_cost_fraction"] == pytest.approx(ab["median_paired_cost_s"] / ab["median_step_after_no_trim_s"])


def test_graph_conv_layout_bench_compares_the_same_function_in_both_layouts(tmp_path):
    from bench.graph_conv import channels_last_graph_conv, encoder_and_input, main
    from bench.workload import QUICK
    from models.stgcn import STGCBlock

    enc, feats, mask = encoder_and_input(QUICK)
    block = next(m for m in enc.modules() if isinstance(m, STGCBlock) and m.mask is not None)
    with torch.no_grad():
        block.mask.mul_(torch.rand_like(block.mask))  # a learned mask, not the all-ones start
        block.graph_conv.bias.normal_()
    x = torch.randn(2, block.graph_conv.in_channels, 5, 22)
    A = torch.rand(block.num_kernels, 22, 22)
    torch.testing.assert_close(channels_last_graph_conv(block, x, A), block.graph_convolution(x, A))
    assert channels_last_graph_conv(block, x, A).is_contiguous()  # what the next layer reads

    out = main(["--quick", "--out", str(tmp_path / "gc.json")])
    assert len(out["blocks"]) == 15 and {r["block"] for r in out["blocks"]} >= {"attention_branch.4"}
    for key in ("as_built_gflops", "channels_last_gflops", "matmul_peak_gflops"):
        assert math.isfinite(out[key]) and out[key] > 0
    assert out["whole"]["as_built_step_s"]["best"] > 0 and out["whole"]["step_speedup_median"] > 0
    for phase in ("train_step", "eval_forward"):
        assert 0 < out["profile"][phase]["convolution_share"] <= 1 and out["profile"][phase]["top_op"].startswith("aten::")
    assert json.loads((tmp_path / "gc.json").read_text())["quick"] is True
