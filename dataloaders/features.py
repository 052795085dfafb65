"""Encoder input features: joint positions and bone vectors, layout [..., 6, T, 22]."""
from __future__ import annotations

import torch

from common.skeleton import N_JOINTS, SMPL_PARENTS
# Gather index for "the parent of joint j"; the pelvis points at itself so its bone is exactly 0.
_PARENT_INDEX = torch.tensor([p if p >= 0 else j for j, p in enumerate(SMPL_PARENTS)], dtype=torch.long)


def skeleton_features(coords: torch.Tensor) -> torch.Tensor:
    """[..., T, 66] -> [..., 6, T, 22]: channels 0-2 joint xyz, 3-5 bone = joint - parent (pelvis 0).

    Each bone is written into its child's slot (never the parent's). Zero-padded frames stay zero."""
    if coords.shape[-1] != 3 * N_JOINTS:
        raise ValueError(f"skeleton_features: last dim is {coords.shape[-1]}, expected 66 (x,y,z of 22 joints)")
    joints = coords.reshape(*coords.shape[:-1], N_JOINTS, 3)  # [..., T, 22, 3]
    bones = joints - joints.index_select(-2, _PARENT_INDEX.to(coords.device))
    return torch.cat([joints, bones], dim=-1).movedim(-1, -3).contiguous()  # [..., 6, T, 22]
