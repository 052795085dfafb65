"""Bytes per clip of the saved attention (EVAL.SAVE_ATTENTION NPZ vs JSON) and rank 0's memory for the
predictions of a large evaluation.

    python -m bench.attention_size [--clips 3000] [--from results/<exp>/jsons/att_node_results_epochN.json]

Attention values: softmax-like rows (Dirichlet draws, as the STA-GCN's node attention sums to 1 over joints)
of HumanML3D-like lengths (40–196 frames), or with --from a JSON attention file of a real run (its clips
repeated up to --clips). Memory: what rank 0 holds after gathering (the predictions dict, float32 arrays), by
tracemalloc; file sizes: what write_predictions writes.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np

from engine.prediction import write_predictions


def predictions(n: int, source: Path | None, seed: int = 0) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    real = json.loads(source.read_text()) if source else None
    names = list(real) if real else []
    out = {}
    for i in range(n):
        if real:
            node = np.asarray(real[names[i % len(names)]], dtype=np.float32)
        else:
            node = rng.dirichlet(np.full(22, 2.0), size=int(rng.integers(40, 197))).astype(np.float32)
        graph = rng.dirichlet(np.full(22, 2.0), size=(4, 22)).astype(np.float32)
        out[f"clip{i:05d}"] = {"caption": "a person walks forward and turns around", "att_node": node, "att_A": graph}
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.attention_size", description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=3000)
    p.add_argument("--from", dest="source", type=Path, help="a run's att_node_results_epochN.json")
    a = p.parse_args(argv)
    tracemalloc.start()
    preds = predictions(a.clips, a.source)
    held = tracemalloc.get_traced_memory()[0]
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("NPZ", "JSON"):
            folder = Path(tmp) / fmt
            tracemalloc.reset_peak()
            write_predictions(folder, 1, preds, fmt)
            peak = tracemalloc.get_traced_memory()[1]
            files = sum(f.stat().st_size for f in folder.iterdir() if f.name != "results_epoch1.json")
            sizes[fmt] = {"bytes_per_clip": files / a.clips, "total_mib": files / 2**20,
                          "write_peak_mib": peak / 2**20}
    frames = np.mean([len(v["att_node"]) for v in preds.values()])
    result = {"clips": a.clips, "mean_frames": float(frames), "predictions_held_mib": held / 2**20, **sizes}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
