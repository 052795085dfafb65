"""Branch 1: compare the learner with the standard motion of the same technique.

Fusion DIFFERENCE (the original's) feeds the projection standard_window − learner only; CONCAT feeds
concat(learner, standard_window − learner), so the projection also sees what the learner did.
"""
from __future__ import annotations

from typing import Optional

import torch

from alignment.window_search import best_window_start


FUSIONS = ("DIFFERENCE", "CONCAT")


def first_frame_coordinates(coords: torch.Tensor) -> torch.Tensor:
    """Pretraining has no standard: a static clip, the learner's first-frame pose held for its length."""
    return coords[:, :1].expand_as(coords)


def window_start(learner_emb: torch.Tensor, frame_mask: torch.Tensor, standard_emb: torch.Tensor,
                 standard_lengths: torch.Tensor, which: torch.Tensor, segment_start: Optional[torch.Tensor] = None,
                 std_segment_start: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[B] the standard frame each learner clip's frame 0 is matched with: from the data's segment (learner
    frame a ↔ standard frame b, so start = b − a, clamped at 0) or from the sliding-window search on
    joint-averaged embeddings. `window_search.gather_window` then cuts the window [B,T,V,C]."""
    if segment_start is not None:
        start = (std_segment_start - segment_start).clamp(min=0)
        return torch.minimum(start, standard_lengths[which] - 1)
    return best_window_start(learner_emb.mean(2), frame_mask, standard_emb.mean(2)[which], standard_lengths[which])


def fuse_with_standard(learner_emb: torch.Tensor, standard_window: torch.Tensor, frame_mask: torch.Tensor,
                       fusion: str = "DIFFERENCE") -> torch.Tensor:
    """[B,T,V,C] ×2 → [B,T,V,C] (DIFFERENCE) or [B,T,V,2C] (CONCAT); the difference is zeroed at padded frames."""
    diff = (standard_window - learner_emb) * frame_mask[:, :, None, None]
    if fusion == "DIFFERENCE":
        return diff
    if fusion == "CONCAT":
        return torch.cat([learner_emb, diff], dim=-1)
    raise ValueError(f"unknown fusion {fusion!r}, expected one of {FUSIONS}")


def fused_width(channels: int, fusion: str) -> int:
    return 2 * channels if fusion == "CONCAT" else channels
