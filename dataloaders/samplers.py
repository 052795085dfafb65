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
   order of the global batches (same generator), then move the one holding the epoch's longest clip (the
   first such) to the front, so that a batch too large for memory fails at the first step, not hours in.
5. Rank ``r`` takes entries ``r, r + R, r + 2R, ...`` of each global batch. So every rank has the same
   number of batches (``__len__``), and at each step all ranks work on clips of similar length — in DDP a
   step lasts as long as its slowest rank, so bucketing only pays if the ranks are bucketed together.

With ``bucket_by_length=False`` steps 3–4 change nothing, and the batches of rank ``r`` are exactly
``DistributedSampler(..., seed=seed, shuffle=shuffle, drop_last=...)`` cut into ``batch_size`` chunks by
a ``BatchSampler`` (``drop_last`` there too).

Resume (the trainer stores epoch and batches done in its checkpoint): ``set_epoch(e)`` + ``set_start_batch(k)``:
the next iteration of epoch ``e`` skips its first ``k`` batches and yields exactly the batches an
uninterrupted run would have yielded after them. ``__len__`` stays the full number of batches per rank per
epoch. The start batch applies to one iteration only, and ``set_epoch`` to another epoch clears it.

``ShardedEvalSampler`` — evaluation: every index exactly once across ranks, no padding, shard sizes
differ by at most one (strided shards; ranks beyond ``N`` get nothing), optionally each shard sorted by
length (longest first) so that batching it wastes little padding.

``padding_fraction(lengths, batches)`` — padded frame slots / all frame slots when each batch is padded
to its longest clip.
"""

from __future__ import annotations

import math
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
            # The batch holding the epoch's longest clip goes first: an out-of-memory error shows at step 1.
            longest = int(np.argmax([self.lengths[b].max() for b in batches]))
            batches.insert(0, batches.pop(longest))
        return batches

    def rank_batches(self) -> list[list[int]]:
        """This rank's batches of the current epoch (all of them, ignoring the start batch)."""
        R, r = self.num_replicas, self.rank
        return [gb[r::R].tolist() for gb in self.global_batches()]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.rank_batches()
        start, self._start_batch = self._start_batch, 0
        for batch in batches[start:]:
            yield batch

    def __len__(self) -> int:
        return math.ceil(self.total_size / self.global_batch)

    # ---- epoch / resume ----------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        epoch = int(epoch)
        if epoch != self.epoch:
            self._start_batch = 0
            self.epoch = epoch

    def set_start_batch(self, k: int) -> None:
        """Make the next iteration of the current epoch skip its first ``k`` batches."""
        k = int(k)
        if not 0 <= k <= len(self):
            raise ValueError(f"start batch {k}: expected 0..{len(self)} (batches per rank per epoch)")
        self._start_batch = k


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
