"""Smoke test of bench/scale.py: `--quick` runs both parts and writes every key. No timings asserted."""
import json
import math

import pytest

pytestmark = pytest.mark.slow  # a subprocess benchmark run


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_quick_scale_bench_writes_throughput_and_memory(bench_runs):
    proc = bench_runs.result("scale")  # started with the other benchmark smoke runs (tests/bench_runs.py)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    res = json.loads(proc.out.read_text())

    tp = res["throughput"]
    assert _positive(tp["samples_per_s"]["bucketed"]) and _positive(tp["samples_per_s"]["unbucketed"])
    assert _positive(tp["speedup"])
    pad = tp["padded_fraction"]
    assert 0 <= pad["bucketed"] < pad["unbucketed"] < 1
    assert tp["omp_num_threads"] >= 1 and tp["torch_threads"] == tp["omp_num_threads"]
    for run in tp["runs"]:
        assert run["timed_steps"] > 0 and run["timed_samples"] > 0
        assert math.isclose(run["padded_fraction"], run["padded_fraction_check"])

    mem = res["memory"]
    roles = [p["role"] for p in mem["processes"]]
    assert roles.count("torchrun") == 1 and roles.count("rank") == 2 and roles.count("worker") == 4
    assert all(_positive(p["rss_mib"]) and _positive(p["pss_mib"]) for p in mem["processes"])
    assert _positive(mem["totals"]["pss_mib"]) and mem["totals"]["pss_mib"] <= mem["totals"]["rss_mib"]
    assert _positive(mem["coordinates_mib"]) and mem["clips"] == mem["corpus"]["clips"]
    assert _positive(mem["load_dataset_s"]) and _positive(mem["startup_to_first_step_s"])
    assert mem["verdict"]["decidable"] is False and mem["verdict"]["dataset_copied_per_worker"] is None
    # The trainer's freeze before forking keeps a worker's full collection from un-sharing the inherited objects.
    frozen, plain = mem["verdict"]["fork_frozen_private_mib"], mem["verdict"]["fork_private_mib"]
    assert frozen["gc_collect"] - frozen["getitem_all"] < 0.5 * (plain["gc_collect"] - plain["getitem_all"])
    assert mem["stop"]["killed_by_pid"] == []  # SIGTERM to torchrun stopped the whole job
    assert "uptime_before" in res["machine"] and "uptime_after" in res["machine"]
    assert "speed-up with bucketing" in proc.stdout and "MEMORY" in proc.stdout
