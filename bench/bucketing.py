"""Padding waste with and without length bucketing, pure sampler computation, no model.

    python -m bench.bucketing [--clips 29232] [--batch-size 32] [--ranks 8] [--epochs 3] [--seed 0]

Synthetic clip lengths with HumanML3D's spread (20 fps, 2–10 s → 40–200 frames), two shapes:
- ``uniform``: integers uniform in [40, 200];
- ``skewed``: a rough imitation of HumanML3D's histogram (mean ≈ 7 s, a pile at the 10 s cap):
  25 % in [190, 199], the rest normal(120, 40) clipped to [40, 199]. Not measured from the release.

Reports, per setting, two padding fractions (padded frame slots / all slots):
- ``per-rank``: each rank's batch padded to its own longest clip (what the padding mask sees);
- ``per-step``: each step padded to the longest clip on *any* rank (what DDP waits for, since a step
  lasts as long as its slowest rank).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from dataloaders.samplers import BucketedDistributedSampler, padding_fraction


def synthetic_lengths(kind: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.integers(40, 201, size=n)
    if kind == "skewed":
        capped = rng.random(n) < 0.25
        body = np.clip(np.round(rng.normal(120, 40, size=n)), 40, 199)
        return np.where(capped, rng.integers(190, 200, size=n), body).astype(np.int64)
    raise ValueError(kind)


def measure(lengths, batch_size, ranks, bucket, mega, epochs, seed):
    per_rank, per_step, n_batches = [], [], None
    for epoch in range(epochs):
        samplers = [BucketedDistributedSampler(lengths, batch_size, ranks, r, seed=seed,
                                               bucket_by_length=bucket, mega_batch_factor=mega)
                    for r in range(ranks)]
        for s in samplers:
            s.set_epoch(epoch)
        rank_batches = [list(s) for s in samplers]
        n_batches = len(rank_batches[0])
        per_rank.append(padding_fraction(lengths, [b for rb in rank_batches for b in rb]))
        steps = [sum((rb[i] for rb in rank_batches), []) for i in range(n_batches)]
        per_step.append(padding_fraction(lengths, steps))
    return float(np.mean(per_rank)), float(np.mean(per_step)), n_batches


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bucketing", description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=29232, help="corpus size (HumanML3D with mirrors: 29,232)")
    ap.add_argument("--batch-size", type=int, default=32, help="per-rank batch size")
    ap.add_argument("--ranks", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3, help="epochs averaged")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    print(f"{args.clips} clips, batch {args.batch_size} x {args.ranks} ranks, mean of {args.epochs} epochs")
    print(f"{'lengths':8} {'setting':22} {'batches/rank':>12} {'per-rank pad':>13} {'per-step pad':>13}")
    for kind in ("uniform", "skewed"):
        lengths = synthetic_lengths(kind, args.clips, args.seed)
        settings = [("no bucketing", False, 50)] + [(f"bucketed, mega x{m}", True, m) for m in (10, 50, 100)]
        for name, bucket, mega in settings:
            pr, ps, nb = measure(lengths, args.batch_size, args.ranks, bucket, mega, args.epochs, args.seed)
            print(f"{kind:8} {name:22} {nb:>12} {pr:>13.4f} {ps:>13.4f}")
        print(f"{kind:8} mean length {lengths.mean():.1f} frames, min {lengths.min()}, max {lengths.max()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
