"""Benchmarks: `python bench/run.py` (speed against the hardware), `python -m bench.bucketing` (padding)."""
