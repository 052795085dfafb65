"""Baselines a caption model must beat: one constant caption per technique, and nearest-neighbour retrieval.

Both use the training file only. Retrieval is strong on coaching data, where clips of one person share
habits and often identical labels: a model that does not beat it is not useful yet.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Optional

import torch
import torch.nn.functional as F

from metrics.caption import _ptb_tokenize, sanitize_caption

DESCRIPTOR_FRAMES = 32


def _group(clip: dict) -> Optional[str]:
    return clip.get("motion_type")  # pretraining data has no technique: one group


def best_constant_captions(train_clips: list[dict]) -> dict[Optional[str], str]:
    """Per technique, the training caption with the best CIDEr when predicted for every training clip of it."""
    from pycocoevalcap.cider.cider import Cider

    groups: dict[Optional[str], list[dict]] = defaultdict(list)
    for clip in train_clips:
        groups[_group(clip)].append(clip)
    best = {}
    for group, clips in groups.items():
        refs = [[sanitize_caption(r) for r in c["labels"]] for c in clips]
        candidates = sorted({r for rs in refs for r in rs if r})
        tokens = _ptb_tokenize(candidates + [r for rs in refs for r in rs])  # one Java call per group
        cand_tokens, pos, gts = tokens[: len(candidates)], len(candidates), {}
        for i, rs in enumerate(refs):
            gts[i] = tokens[pos: pos + len(rs)]
            pos += len(rs)
        scores = [Cider().compute_score(gts, {i: [c] for i in gts})[0] for c in cand_tokens]
        best[group] = candidates[max(range(len(candidates)), key=lambda k: (scores[k], -k))]
    return best


def motion_descriptor(coords: torch.Tensor) -> torch.Tensor:
    """[T,66] → a fixed-size vector: pelvis-relative joints resampled to 32 frames (speed-invariant)."""
    joints = coords.view(len(coords), 22, 3)
    joints = joints - joints[:, :1]
    resampled = F.interpolate(joints.reshape(1, len(coords), 66).transpose(1, 2), size=DESCRIPTOR_FRAMES,
                              mode="linear", align_corners=True)  # [1,66,32]
    return resampled.flatten()


def nearest_neighbour_captions(train_clips: list[dict], test_clips: list[dict]) -> dict[str, str]:
    """Each test clip gets the first label of the closest training clip of the same technique."""
    train_desc = torch.stack([motion_descriptor(c["coordinates"].float()) for c in train_clips])
    test_desc = torch.stack([motion_descriptor(c["coordinates"].float()) for c in test_clips])
    dist = torch.cdist(test_desc, train_desc)  # [N_test, N_train]
    codes: dict = {}
    train_group = torch.tensor([codes.setdefault(_group(c), len(codes)) for c in train_clips])
    test_group = torch.tensor([codes.setdefault(_group(c), len(codes)) for c in test_clips])
    same = test_group[:, None] == train_group[None, :]
    nearest = dist.masked_fill(~same, float("inf")).argmin(dim=1)
    return {c["video_name"]: train_clips[int(j)]["labels"][0] for c, j in zip(test_clips, nearest)}


def baseline_predictions(train_clips: list[dict], test_clips: list[dict]) -> dict[str, dict[str, str]]:
    """{"constant caption": {video_name: caption}, "nearest neighbour": {...}} for the test clips."""
    constant = best_constant_captions(train_clips)
    fallback = constant.get(None) or next(iter(constant.values()))
    return {
        "constant caption": {c["video_name"]: constant.get(_group(c), fallback) for c in test_clips},
        "nearest neighbour": nearest_neighbour_captions(train_clips, test_clips),
    }
