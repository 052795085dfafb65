"""Encoder input features: joint positions and bone vectors, layout [..., 6, T, 22]; facing normalisation;
training-time turn, scale and speed augmentation."""
from __future__ import annotations

import math

import torch

from common.skeleton import LEFT_HIP, N_JOINTS, RIGHT_HIP, SMPL_PARENTS
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


def face_forward(coords: torch.Tensor) -> torch.Tensor:
    """[..., T, 66] -> the same clips turned about the vertical (y) axis through the pelvis so that, in each
    clip's first frame, the line from the left hip to the right hip points along +x.

    Pose estimated from video is in camera coordinates, so the same punch filmed from the front and from the
    back differs by a half turn; after this it does not. The turn is fixed per clip (the body still turns
    within the clip), zero frames stay zero, and a clip already facing forward is left as it is."""
    if coords.shape[-1] != 3 * N_JOINTS:
        raise ValueError(f"face_forward: last dim is {coords.shape[-1]}, expected 66 (x,y,z of 22 joints)")
    joints = coords.reshape(*coords.shape[:-1], N_JOINTS, 3)  # [..., T, 22, 3]
    hips = joints[..., 0, RIGHT_HIP, :] - joints[..., 0, LEFT_HIP, :]  # first frame, [..., 3]
    return turn_about_vertical(coords, torch.atan2(hips[..., 2], hips[..., 0]))  # minus the hips' heading


def turn_about_vertical(coords: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """[..., T, 66] turned about the vertical (y) axis through the origin by `angle` [...] radians, one angle
    per clip; a positive angle turns +x towards -z. A rigid motion of the whole clip: bone lengths and the
    vertical stay, zero frames stay zero."""
    joints = coords.reshape(*coords.shape[:-1], N_JOINTS, 3)  # [..., T, 22, 3]
    cos, sin = torch.cos(angle)[..., None, None], torch.sin(angle)[..., None, None]
    x, y, z = joints.unbind(-1)
    return torch.stack([cos * x + sin * z, y, cos * z - sin * x], dim=-1).reshape(coords.shape)


def augment_turn_and_scale(coords: torch.Tensor, max_turn_deg: float, max_scale: float) -> torch.Tensor:
    """[B, T, 66] with each clip turned about the vertical axis by an angle uniform in ±max_turn_deg and scaled
    by a factor uniform in [1 - max_scale, 1 + max_scale]. Draws from torch's global CPU generator, whose state
    every checkpoint holds, so a resumed run draws what the uninterrupted one would have."""
    if not max_turn_deg and not max_scale:
        return coords
    batch = coords.shape[0]
    angle = (torch.rand(batch) * 2 - 1) * math.radians(max_turn_deg)
    scale = 1 + (torch.rand(batch) * 2 - 1) * max_scale
    turned = turn_about_vertical(coords, angle.to(coords.device, coords.dtype))
    return turned * scale.to(coords.device, coords.dtype)[:, None, None]


def resample_in_time(x: torch.Tensor, lengths: torch.Tensor, new_lengths: torch.Tensor) -> torch.Tensor:
    """[B, T, C] padded clips of `lengths` [B] -> [B, max(new_lengths), C], each clip linearly resampled to
    its new length: first frame to first frame, last to last, zero after the end. A clip resampled to its own
    length comes back exactly (every source time is a whole frame)."""
    steps = int(new_lengths.max())
    t = torch.arange(steps, device=x.device, dtype=torch.float64)[None, :]  # [1, T']
    ratio = ((lengths - 1).to(torch.float64) / (new_lengths - 1).clamp(min=1))[:, None]  # [B, 1]
    src = (t * ratio).clamp(max=(lengths - 1).to(torch.float64)[:, None])  # [B, T'] source time of each frame
    lo = src.floor().long()
    hi = torch.minimum(lo + 1, (lengths - 1)[:, None])
    w = (src - lo).to(x.dtype)[..., None]  # [B, T', 1]
    gather = lambda i: x.gather(1, i[..., None].expand(-1, -1, x.shape[-1]))  # noqa: E731
    out = gather(lo) * (1 - w) + gather(hi) * w
    return out * (t < new_lengths[:, None]).to(x.dtype)[..., None]
