"""Length-bucketed distributed batch sampler, sharded eval sampler, padding fraction."""

import collections

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DistributedSampler

from dataloaders.samplers import BucketedDistributedSampler, ShardedEvalSampler, padding_fraction
from common.errors import UserError


def hml_lengths(n, seed=0):
    """HumanML3D-like spread: 20 fps, 2-10 s -> 40..200 frames."""
    return np.random.default_rng(seed).integers(40, 201, size=n).tolist()


def all_ranks(lengths, bs, world, epoch=0, **kw):
    samplers = [BucketedDistributedSampler(lengths, bs, world, r, **kw) for r in range(world)]
    for s in samplers:
        s.set_epoch(epoch)
    return samplers, [list(s) for s in samplers]


def test_padding_fraction_exact():
    assert padding_fraction([2, 4, 3], [[0, 1], [2]]) == pytest.approx(2 / 11)
    assert padding_fraction([5], []) == 0.0


@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_every_sample_exactly_once_when_divisible(epoch):
    lengths = hml_lengths(512)  # 512 = 8 per batch x 4 ranks x 16 steps
    samplers, batches = all_ranks(lengths, 8, 4, epoch=epoch, seed=3)
    flat = [i for rb in batches for b in rb for i in b]
    assert sorted(flat) == list(range(512))
    assert all(len(rb) == len(s) == 16 for rb, s in zip(batches, samplers))
    assert all(len(b) == 8 for rb in batches for b in rb)


@pytest.mark.parametrize("n,bs,world", [(203, 8, 4), (5, 4, 8), (33, 32, 3), (1, 2, 2)])
def test_every_sample_at_least_once_and_equal_batch_counts(n, bs, world):
    lengths = hml_lengths(n, seed=n)
    samplers, batches = all_ranks(lengths, bs, world, epoch=1)
    counts = collections.Counter(i for rb in batches for b in rb for i in b)
    assert set(counts) == set(range(n))
    assert sum(counts.values()) - n <= world - 1  # padded like DistributedSampler: < world duplicates
    assert len({len(rb) for rb in batches}) == 1 and len(batches[0]) == len(samplers[0])
    assert all(0 < len(b) <= bs for rb in batches for b in rb)
    # at each step the ranks' batch sizes differ by at most one (no rank idles)
    for step in zip(*batches):
        assert max(map(len, step)) - min(map(len, step)) <= 1


def test_drop_last_gives_full_batches_without_duplicates():
    lengths = hml_lengths(203)
    samplers, batches = all_ranks(lengths, 8, 4, drop_last=True)
    flat = [i for rb in batches for b in rb for i in b]
    assert len(flat) == len(set(flat)) == 192  # floor(203 / 32) * 32
    assert all(len(b) == 8 for rb in batches for b in rb)
    assert all(len(rb) == 6 == len(s) for rb, s in zip(batches, samplers))
    with pytest.raises(UserError, match="fewer than batch size"):
        BucketedDistributedSampler(lengths[:20], 8, 4, 0, drop_last=True)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("drop_last", [True, False])
def test_unbucketed_is_distributed_sampler_cut_into_batches(shuffle, drop_last):
    n, bs, world = 101, 4, 3
    lengths = hml_lengths(n)
    for rank in range(world):
        ours = BucketedDistributedSampler(lengths, bs, world, rank, seed=7, shuffle=shuffle,
                                          bucket_by_length=False, drop_last=drop_last)
        ref = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=shuffle, seed=7,
                                 drop_last=drop_last)
        for epoch in (0, 2):
            ours.set_epoch(epoch)
            ref.set_epoch(epoch)
            expected = list(BatchSampler(ref, bs, drop_last=drop_last))
            assert list(ours) == expected
            assert len(ours) == len(expected)


def test_bucketing_cuts_padding_on_humanml3d_spread():
    lengths = hml_lengths(2048, seed=1)
    _, bucketed = all_ranks(lengths, 8, 4, seed=0)
    _, plain = all_ranks(lengths, 8, 4, seed=0, bucket_by_length=False)
    pad_b = padding_fraction(lengths, [b for rb in bucketed for b in rb])
    pad_p = padding_fraction(lengths, [b for rb in plain for b in rb])
    assert pad_p > 0.25
    assert pad_b < 0.05 and pad_b < pad_p / 5
    # within a batch, lengths are close (a mega-batch of 1600 spans the range in 50 steps)
    spreads = [np.ptp([lengths[i] for i in b]) for rb in bucketed for b in rb]
    assert np.median(spreads) <= 10
    # and the ranks of one step work on similar lengths too (DDP waits for the slowest)
    for step in zip(*bucketed):
        maxes = [max(lengths[i] for i in b) for b in step]
        assert max(maxes) - min(maxes) <= 20


def test_order_changes_with_epoch_and_seed_but_is_deterministic():
    lengths = hml_lengths(300)
    _, e0 = all_ranks(lengths, 5, 2, epoch=0, seed=1)
    _, e0_again = all_ranks(lengths, 5, 2, epoch=0, seed=1)
    _, e1 = all_ranks(lengths, 5, 2, epoch=1, seed=1)
    _, other_seed = all_ranks(lengths, 5, 2, epoch=0, seed=2)
    assert e0 == e0_again
    assert e0 != e1 and e0 != other_seed
    # not shuffled: the same order every epoch
    _, a = all_ranks(lengths, 5, 2, epoch=0, shuffle=False)
    _, b = all_ranks(lengths, 5, 2, epoch=3, shuffle=False)
    assert a == b


@pytest.mark.parametrize("bucket", [True, False])
def test_resume_mid_epoch_gives_identical_remaining_order(bucket):
    lengths = hml_lengths(250)
    world, bs, k = 3, 4, 7
    for rank in range(world):
        full = BucketedDistributedSampler(lengths, bs, world, rank, seed=5, bucket_by_length=bucket)
        full.set_epoch(2)
        expected = list(full)
        # crashed run: consumed k batches of epoch 2; the resumed run skips them, as the trainer does
        run = BucketedDistributedSampler(lengths, bs, world, rank, seed=5, bucket_by_length=bucket)
        run.set_epoch(2)
        it = iter(run)
        assert [next(it) for _ in range(k)] == expected[:k]
        resumed = BucketedDistributedSampler(lengths, bs, world, rank, seed=5, bucket_by_length=bucket)
        resumed.set_epoch(2)
        resumed.set_start_batch(k)
        assert list(resumed) == expected[k:]
        # the start batch applies once: the next epoch is complete and equals an uninterrupted run
        resumed.set_epoch(3)
        full.set_epoch(3)
        assert list(resumed) == list(full)


def test_a_start_batch_beyond_the_epoch_is_refused():
    s = BucketedDistributedSampler(hml_lengths(256), 4, 4, 0)
    with pytest.raises(ValueError):
        s.set_start_batch(len(s) + 1)


@pytest.mark.parametrize("n,world", [(0, 1), (1, 4), (3, 8), (7, 7), (10, 3), (17, 4), (100, 8)])
def test_sharded_eval_every_index_exactly_once(n, world):
    lengths = hml_lengths(n, seed=n)
    shards = [list(ShardedEvalSampler(n, world, r, lengths=lengths)) for r in range(world)]
    flat = [i for s in shards for i in s]
    assert sorted(flat) == list(range(n))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    for s in shards:  # longest first inside each shard
        assert [lengths[i] for i in s] == sorted((lengths[i] for i in s), reverse=True)
    plain = [list(ShardedEvalSampler(n, world, r)) for r in range(world)]
    assert sorted(i for s in plain for i in s) == list(range(n))
    assert [len(s) for s in plain] == sizes


def test_works_as_dataloader_batch_sampler():
    lengths = hml_lengths(40)
    data = torch.arange(40)
    sampler = BucketedDistributedSampler(lengths, 4, 2, 1)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler)
    got = [b.tolist() for b in loader]
    assert got == list(sampler) and len(loader) == len(sampler) == 5


def test_the_batch_with_the_longest_clip_comes_first_every_epoch():
    rng = np.random.default_rng(3)
    lengths = rng.integers(20, 200, size=301)
    for epoch in range(4):
        batches = []
        for rank in range(2):
            s = BucketedDistributedSampler(lengths, batch_size=4, num_replicas=2, rank=rank, seed=5)
            s.set_epoch(epoch)
            batches.append(list(s))
        assert max(lengths[batches[0][0] + batches[1][0]]) == lengths.max()  # step 1 pads to the longest clip
        rest = [b for rank_batches in batches for b in rank_batches[1:]]
        assert all(lengths[b].max() <= lengths.max() for b in rest)
        moved = s.global_batches()
        assert len({tuple(b) for b in moved}) == len(moved)  # a move, nothing lost or doubled
