"""Where in the standard motion does the learner's clip start? A vectorised sliding-window search.

The original looped over samples, windows and frames in Python and crashed when a learner clip was
longer than its standard (the original crashed there). Here the standard is extended by repeating its last frame, so a
longer learner clip simply aligns at frame 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def extend_by_last_frame(seq: torch.Tensor, lengths: torch.Tensor, total: int) -> torch.Tensor:
    """seq [B,L,...] with valid lengths [B] → [B,total,...] where frames ≥ length repeat the last valid frame."""
    t = torch.arange(total, device=seq.device)
    idx = torch.minimum(t[None, :], (lengths - 1)[:, None])  # [B,total]
    idx = idx.view(*idx.shape, *([1] * (seq.dim() - 2))).expand(-1, -1, *seq.shape[2:])
    return seq.gather(1, idx)


def best_window_start(learner: torch.Tensor, frame_mask: torch.Tensor,
                      standard: torch.Tensor, standard_lengths: torch.Tensor) -> torch.Tensor:
    """Start frame s minimising Σ_t<L ||standard[s+t] − learner[t]||² over s ∈ [0, max(Ls − L, 0)].

    learner [B,T,D] (padded, frame_mask [B,T]); standard [B,Ts,D] per sample with lengths [B].
    Costs use ||a−b||² = ||a||² − 2a·b + ||b||²: the cross term for all s at once is one grouped
    conv1d, the standard's window norms come from a prefix sum. float64 keeps near-ties exact.
    """
    B, T, D = learner.shape
    lengths = frame_mask.sum(1)  # [B]
    q = (learner.double() * frame_mask[..., None])  # [B,T,D], zero beyond each length
    num_starts = standard.shape[1] + 1
    ext = extend_by_last_frame(standard.double(), standard_lengths, num_starts - 1 + T)  # [B,Ts+T,D]

    cross = F.conv1d(ext.transpose(1, 2).reshape(1, B * D, -1), q.transpose(1, 2), groups=B)[0]  # [B,S]
    sq = F.pad(ext.pow(2).sum(-1).cumsum(1), (1, 0))  # [B,Ts+T+1] prefix sums of ||std||²
    s = torch.arange(num_starts, device=learner.device)[None, :]  # [1,S]
    window_sq = sq.gather(1, s + lengths[:, None]) - sq.gather(1, s.expand(B, -1))
    cost = window_sq - 2 * cross[:, :num_starts]
    last_start = (standard_lengths - lengths).clamp(min=0)  # [B]
    cost = cost.masked_fill(s > last_start[:, None], float("inf"))
    return cost.argmin(dim=1)


def gather_window(standard: torch.Tensor, standard_lengths: torch.Tensor, which: torch.Tensor,
                  start: torch.Tensor, num_frames: int) -> torch.Tensor:
    """standard [S,Ts,...] (lengths [S]) → [B,num_frames,...] = standard[which_b, start_b : start_b + num_frames],
    the last frame repeated past the end. One advanced-indexing gather, no per-sample copies."""
    t = start[:, None] + torch.arange(num_frames, device=standard.device)[None, :]  # [B,T]
    idx = torch.minimum(t, (standard_lengths[which] - 1)[:, None])
    return standard[which[:, None], idx]
