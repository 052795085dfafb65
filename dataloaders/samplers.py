"""Samplers for distributed training and evaluation.

``BucketedDistributedSampler`` — a *batch* sampler for training (pass it as ``batch_sampler=`` to the
DataLoader, one instance per rank). Per epoch, deterministic in ``(seed, epoch)``:

1. ``perm`` = ``torch.randperm(N)`` from a generator seeded with ``seed + epoch`` (exactly what
   ``torch.utils.data.DistributedSampler`` does), or ``arange(N)`` when ``shuffle=False``.
2. Make the count fit the ranks, like ``DistributedSampler``: ``drop_last=False`` pads ``perm`` to a
   multiple of ``num_replicas`` by repeating its first entries (at most ``num_replicas - 1`` duplicates;
   every sample appears at least once per epoch, exactly once when ``N % num_replicas == 0``);
   ``drop_last=True`` keeps only the first ``floor(N / (batch_size * num_replicas)) * batch_size *
   num_replicas`` entries (every batch full; a different random tail is dropped each epoch).
3. With ``bucket_by_length``: cut ``perm`` into mega-batches of ``mega_batch_factor * batch_size *
   num_replicas`` samples and stable-sort each by length (ties keep their random order).
4. Cut into *global* batches of ``batch_size * num_replicas`` consecutive samples (the last may be
   smaller, a multiple of ``num_replicas``); with ``bucket_by_length`` and ``shuffle``, shuffle the
   order of the global batches (same generator).
5. Rank ``r`` takes entries ``r, r + R, r + 2R, ...`` of each global batch. So every rank has the same
   number of batches (``__len__``), and at each step all ranks work on clips of similar length — in DDP a
   step lasts as long as its slowest rank, so bucketing only pays if the ranks are bucketed together.

With ``bucket_by_length=False`` steps 3–4 change nothing, and the batches of rank ``r`` are exactly
``DistributedSampler(..., seed=seed, shuffle=shuffle, drop_last=...)`` cut into ``batch_size`` chunks by
a ``BatchSampler`` (``drop_last`` there too).

Resume: ``state_dict(batches_consumed)`` / ``load_state_dict(state)`` or ``set_epoch(e)`` +
``set_start_batch(k)``: the next iteration of epoch ``e`` skips its first ``k`` batches and yields exactly
the batches an uninterrupted run would have yielded after them. ``__len__`` stays the full number of
batches per rank per epoch (use ``remaining()`` for the resumed epoch). The start batch applies to one
iteration only, and ``set_epoch`` to another epoch clears it.

``ShardedEvalSampler`` — evaluation: every index exactly once across ranks, no padding, shard sizes
differ by at most one (strided shards; ranks beyond ``N`` get nothing), optionally each shard sorted by
length (longest first) so that batching it wastes little padding.

``padding_fraction(lengths, batches)`` — padded frame slots / all frame slots when each batch is padded
to its longest clip.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterator, Sequence

import numpy as np
import torch

from common.errors import UserError


def padding_fraction(lengths: Sequence[int], batches) -> float:
    """Fraction of frame slots that are padding when each batch is padded to its longest clip."""
    lengths = np.asarray(lengths, dtype=np.int64)
    slots = real = 0
    for batch in batches:
        if len(batch) == 0:
            continue
        lens = lengths[np.asarray(batch, dtype=np.int64)]
        slots += int(lens.max()) * len(lens)
        real += int(lens.sum())
    return 0.0 if slots == 0 else (slots - real) / slots


class BucketedDistributedSampler:
    """Length-bucketed distributed *batch* sampler; see the module docstring for the exact rules."""

    def __init__(self, lengths: Sequence[int], batch_size: int, num_replicas: int, rank: int,
                 seed: int = 0, shuffle: bool = True, bucket_by_length: bool = True,
                 drop_last: bool = False, mega_batch_factor: int = 50):
        if int(batch_size) < 1:
            raise UserError(f"batch size {batch_size}: expected a positive integer")
        if int(num_replicas) < 1 or not 0 <= int(rank) < int(num_replicas):
            raise ValueError(f"rank {rank} / num_replicas {num_replicas}: expected 0 <= rank < num_replicas")
        if int(mega_batch_factor) < 1:
            raise ValueError(f"mega_batch_factor {mega_batch_factor}: expected a positive integer")
        self.lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
        self.num_samples_total = len(self.lengths)
        self.batch_size = int(batch_size)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.bucket_by_length = bool(bucket_by_length)
        self.drop_last = bool(drop_last)
        self.mega_batch_factor = int(mega_batch_factor)
        self.global_batch = self.batch_size * self.num_replicas
        n = self.num_samples_total
        if n == 0:
            raise UserError("training set is empty: no clip to sample")
        if self.drop_last:
            self.total_size = (n // self.global_batch) * self.global_batch
            if self.total_size == 0:
                raise UserError(f"training set has {n} clips, fewer than batch size {self.batch_size} x "
                                f"{self.num_replicas} ranks, and drop_last is set: no batch left")
        else:
            self.total_size = math.ceil(n / self.num_replicas) * self.num_replicas
        self.epoch = 0
        self._start_batch = 0
        self._yielded = 0

    # ---- epoch order -------------------------------------------------------------------------------
    def _generator(self) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        return g

    def global_batches(self) -> list[np.ndarray]:
        """All ranks' batches of the current epoch, as global batches (rank r takes ``gb[r::R]``)."""
        n = self.num_samples_total
        g = self._generator()
        if self.shuffle:
            perm = torch.randperm(n, generator=g).numpy()
        else:
            perm = np.arange(n, dtype=np.int64)
        if self.total_size > n:
            perm = np.resize(perm, self.total_size)  # repeats from the start, as DistributedSampler
        else:
            perm = perm[: self.total_size]
        if self.bucket_by_length:
            mega = self.mega_batch_factor * self.global_batch
            chunks = []
            for s in range(0, len(perm), mega):
                chunk = perm[s:s + mega]
                chunks.append(chunk[np.argsort(self.lengths[chunk], kind="stable")])
            perm = np.concatenate(chunks)
        batches = [perm[s:s + self.global_batch] for s in range(0, len(perm), self.global_batch)]
        if self.bucket_by_length and self.shuffle:
            order = torch.randperm(len(batches), generator=g).tolist()
            batches = [batches[i] for i in order]
        return batches

    def rank_batches(self) -> list[list[int]]:
        """This rank's batches of the current epoch (all of them, ignoring the start batch)."""
        R, r = self.num_replicas, self.rank
        return [gb[r::R].tolist() for gb in self.global_batches()]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.rank_batches()
        start, self._start_batch = self._start_batch, 0
        self._yielded = start
        for batch in batches[start:]:
            self._yielded += 1
            yield batch

    def __len__(self) -> int:
        return math.ceil(self.total_size / self.global_batch)

    def remaining(self) -> int:
        """Batches the next iteration will yield (less than ``len`` right after a mid-epoch resume)."""
        return len(self) - self._start_batch

    # ---- epoch / resume ----------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        epoch = int(epoch)
        if epoch != self.epoch:
            self._start_batch = 0
            self._yielded = 0
        self.epoch = epoch

    def set_start_batch(self, k: int) -> None:
        """Make the next iteration of the current epoch skip its first ``k`` batches."""
        k = int(k)
        if not 0 <= k <= len(self):
            raise ValueError(f"start batch {k}: expected 0..{len(self)} (batches per rank per epoch)")
        self._start_batch = k

    def _signature(self) -> dict:
        return {"num_samples": self.num_samples_total, "batch_size": self.batch_size,
                "num_replicas": self.num_replicas, "seed": self.seed, "shuffle": self.shuffle,
                "bucket_by_length": self.bucket_by_length, "drop_last": self.drop_last,
                "mega_batch_factor": self.mega_batch_factor}

    def state_dict(self, batches_consumed: int | None = None) -> dict:
        """Epoch and batches already consumed in it, plus the settings that determine the order.

        Pass ``batches_consumed`` (the optimizer steps done in this epoch) from the training loop: with
        DataLoader workers the sampler runs ahead of the model by the prefetch depth, so its own count
        of yielded batches (the default) overestimates what was trained on.
        """
        consumed = self._yielded if batches_consumed is None else int(batches_consumed)
        return {"epoch": self.epoch, "batches_consumed": consumed, **self._signature()}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Continue epoch ``state['epoch']`` after its ``batches_consumed`` batches.

        The order can only be reproduced with the same data size, batch size, world size and settings;
        otherwise ``strict`` raises ``UserError``, and ``strict=False`` warns and restarts the stored epoch
        at the same fraction of it (samples may then be seen twice or not at all in that epoch).
        """
        ours = self._signature()
        diff = {k: (state.get(k), v) for k, v in ours.items() if k in state and state[k] != v}
        self.epoch = int(state["epoch"])
        consumed = int(state.get("batches_consumed", 0))
        if diff:
            what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in diff.items())
            if strict:
                raise UserError(f"cannot resume the batch order of epoch {self.epoch} exactly: {what}; "
                                f"resume with the same settings, or restart that epoch from its beginning")
            old_len = max(1, math.ceil(int(state.get("num_samples", self.num_samples_total)) /
                                       (int(state.get("batch_size", self.batch_size)) *
                                        int(state.get("num_replicas", self.num_replicas)))))
            consumed = min(len(self), round(consumed * len(self) / old_len))
            warnings.warn(f"sampler resumed approximately ({what}): epoch {self.epoch} restarts at batch "
                          f"{consumed} of {len(self)}", stacklevel=2)
        self.set_start_batch(min(consumed, len(self)))


class ShardedEvalSampler:
    """Every index exactly once across ranks, no padding; rank r gets ``r, r+R, ...`` (sizes differ by
    at most 1). With ``lengths``, each shard is ordered longest first (stable) for cheap batching."""

    def __init__(self, num_samples: int, num_replicas: int, rank: int, lengths: Sequence[int] | None = None):
        if int(num_replicas) < 1 or not 0 <= int(rank) < int(num_replicas):
            raise ValueError(f"rank {rank} / num_replicas {num_replicas}: expected 0 <= rank < num_replicas")
        if int(num_samples) < 0:
            raise ValueError(f"num_samples {num_samples}: expected >= 0")
        self.num_samples = int(num_samples)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        indices = np.arange(self.rank, self.num_samples, self.num_replicas, dtype=np.int64)
        if lengths is not None:
            lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
            if len(lengths) != self.num_samples:
                raise ValueError(f"lengths has {len(lengths)} entries, expected num_samples={self.num_samples}")
            indices = indices[np.argsort(-lengths[indices], kind="stable")]
        self.indices = indices.tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def batches(self, batch_size: int) -> list[list[int]]:
        """This shard cut into consecutive batches (pass as ``batch_sampler=`` for batched evaluation)."""
        if int(batch_size) < 1:
            raise UserError(f"evaluation batch size {batch_size}: expected a positive integer")
        b = int(batch_size)
        return [self.indices[s:s + b] for s in range(0, len(self.indices), b)]
