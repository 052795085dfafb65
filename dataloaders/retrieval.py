"""Nearest training clips under a simple skeleton distance: the retrieval baseline and the model's
retrieval prompt (RETRIEVAL.NEIGHBOURS: the labels of the k nearest training clips of the same technique
are given to T5 as text next to the motion tokens).

A training clip never retrieves itself (its own labels are the target); with RETRIEVAL.EXCLUDE PERSON
it retrieves no clip of its own person either, which is what a person-disjoint test set looks like.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F

from dataloaders.features import face_forward
from dataloaders.splits import person_of

DESCRIPTOR_FRAMES = 32
SEPARATOR = " | "  # between retrieved labels in the prompt text


def motion_descriptor(coords: torch.Tensor, canonical_facing: bool = False) -> torch.Tensor:
    """[T,66] → a fixed-size vector: pelvis-relative joints resampled to 32 frames (speed-invariant); with
    `canonical_facing`, of the clip turned to face forward (the camera's heading removed)."""
    coords = coords.float()
    if canonical_facing:
        coords = face_forward(coords)
    joints = coords.view(len(coords), 22, 3)
    joints = joints - joints[:, :1]
    resampled = F.interpolate(joints.reshape(1, len(coords), 66).transpose(1, 2), size=DESCRIPTOR_FRAMES,
                              mode="linear", align_corners=True)  # [1,66,32]
    return resampled.flatten()


def _group_codes(train_clips: list[dict], query_clips: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    codes: dict = {}  # technique → int; pretraining data has no technique: one group
    train = torch.tensor([codes.setdefault(c.get("motion_type"), len(codes)) for c in train_clips])
    query = torch.tensor([codes.setdefault(c.get("motion_type"), len(codes)) for c in query_clips])
    return train, query


def nearest_training_clips(train_clips: list[dict], query_clips: list[dict], k: int,
                           exclude: Literal["CLIP", "PERSON"] = "CLIP",
                           canonical_facing: bool = False) -> list[list[int]]:
    """Indices into `train_clips` of the k nearest clips of the same technique for each query clip, nearest
    first. A clip with the query's video_name is never returned (so `query_clips = train_clips` is
    leave-one-out); with exclude PERSON neither is any clip of the query's person. Fewer than k when the
    technique has fewer eligible clips. `canonical_facing`: compare the clips turned to face forward."""
    if not train_clips or not query_clips:
        return [[] for _ in query_clips]
    train_desc = torch.stack([motion_descriptor(c["coordinates"], canonical_facing) for c in train_clips])
    query_desc = torch.stack([motion_descriptor(c["coordinates"], canonical_facing) for c in query_clips])
    dist = torch.cdist(query_desc, train_desc)  # [Q, N]
    train_group, query_group = _group_codes(train_clips, query_clips)
    allowed = query_group[:, None] == train_group[None, :]
    key = person_of if exclude == "PERSON" else (lambda name: name)
    ids: dict[str, int] = {}
    train_key = torch.tensor([ids.setdefault(key(c["video_name"]), len(ids)) for c in train_clips])
    query_key = torch.tensor([ids.setdefault(key(c["video_name"]), len(ids)) for c in query_clips])
    allowed &= query_key[:, None] != train_key[None, :]
    train_name = {c["video_name"]: j for j, c in enumerate(train_clips)}
    for i, c in enumerate(query_clips):  # same video_name, whatever the exclusion key
        if c["video_name"] in train_name:
            allowed[i, train_name[c["video_name"]]] = False
    dist = dist.masked_fill(~allowed, float("inf"))
    k = min(k, dist.shape[1])
    values, order = dist.topk(k, dim=1, largest=False)
    return [[j for j, v in zip(row, vals) if v != float("inf")] for row, vals in zip(order.tolist(), values.tolist())]


def retrieval_prompts(train_clips: list[dict], query_clips: list[dict], k: int,
                      exclude: Literal["CLIP", "PERSON"] = "CLIP", slot: Optional[int] = None) -> list[str]:
    """For each query clip, one text from its k nearest training clips ('' if none): all their labels, or
    with `slot` only their label at that position (one annotator per position in BX)."""
    neighbours = nearest_training_clips(train_clips, query_clips, k, exclude)
    return [_join(train_clips, row, slot) for row in neighbours]


def _join(train_clips: list[dict], row: list[int], slot: Optional[int]) -> str:
    labels = [train_clips[j].get("labels") or [] for j in row]
    picked = [lab for ls in labels for lab in ls] if slot is None else [ls[slot] for ls in labels if slot < len(ls)]
    return SEPARATOR.join(picked)


def label_of_nearest(train_clips: list[dict], test_clips: list[dict], position: int = 0,
                     canonical_facing: bool = False) -> dict[str, Optional[str]]:
    """The retrieval baseline: each test clip gets the label at `position` of its nearest training clip
    (None when its technique has no training clip, or that clip has fewer labels)."""
    nearest = nearest_training_clips(train_clips, test_clips, 1, canonical_facing=canonical_facing)
    out = {}
    for c, row in zip(test_clips, nearest):
        labels = train_clips[row[0]]["labels"] if row else []
        out[c["video_name"]] = labels[position] if position < len(labels) else None
    return out
