"""Motion embedding → T5 input tokens: reduce by policy, then a small MLP to T5's width."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common.skeleton import N_JOINTS

POLICIES = ("TIME_POOL", "SKELETON_POOL", "ORIGIN")


def reduce_tokens(emb: torch.Tensor, frame_mask: torch.Tensor, policy: str) -> tuple[torch.Tensor, torch.Tensor]:
    """emb [B,T,V,C], frame_mask [B,T] bool → tokens [B,N,C] and token_mask [B,N] bool.

    TIME_POOL: max over valid frames → one token per joint (padded frames never win the max).
    SKELETON_POOL: mean over joints → one token per frame. ORIGIN: every frame × joint.
    """
    B, T, V, C = emb.shape
    if policy == "TIME_POOL":
        masked = emb.masked_fill(~frame_mask[:, :, None, None], float("-inf"))
        return masked.amax(dim=1), frame_mask.new_ones(B, V)
    if policy == "SKELETON_POOL":
        return emb.mean(dim=2), frame_mask
    if policy == "ORIGIN":
        return emb.reshape(B, T * V, C), frame_mask.repeat_interleave(V, dim=1)
    raise ValueError(f"unknown reduction policy {policy!r}, expected one of {POLICIES}")


class TokenNorm(nn.Module):
    """Standardise each T5 input token's channels across clips, with statistics per joint where tokens
    have one (TIME_POOL, ORIGIN), then add a learned joint embedding.

    Why: the projection's tokens for one joint are much the same for every clip (a shared offset: cosine
    0.97–0.99 between clips), so what tells clips apart is a deviation of a few per cent, and T5 (whose
    RMSNorm does not centre) learns to ignore it. Per-joint statistics remove the offset and scale the
    deviation to unit size; the joint embedding gives back which joint a token is.
    """

    def __init__(self, channels: int, policy: str, stats: str = "BATCH"):
        super().__init__()
        if stats not in ("BATCH", "RUNNING"):
            raise ValueError(f"TokenNorm statistics {stats!r}: expected BATCH or RUNNING")
        self.policy = policy
        self.stats = stats
        self.per_joint = policy != "SKELETON_POOL"
        joints = N_JOINTS if self.per_joint else 1
        self.norm = nn.BatchNorm1d(joints * channels, affine=False)
        self.joint_embedding = nn.Parameter(torch.zeros(joints, channels))

    def _normalise(self, rows: torch.Tensor) -> torch.Tensor:
        """BATCH: in training by the batch's own statistics (running ones for a batch of one clip, which has
        no spread across clips). RUNNING: always by the running statistics as they were before this batch,
        which training then updates (momentum 0.1). Why RUNNING exists: over a batch of 4 clips the batch's
        statistics make a clip's tokens depend on the 3 drawn with it, a training-only noise measured about
        as large as the difference between clips (tools/motion_signal.py)."""
        if not self.training or len(rows) < 2:
            return F.batch_norm(rows, self.norm.running_mean, self.norm.running_var, eps=self.norm.eps)
        if self.stats == "BATCH":
            return self.norm(rows)
        # Copies: the update below changes the statistics in place, and backward needs the ones used here.
        mean, var = self.norm.running_mean.clone(), self.norm.running_var.clone()
        out = F.batch_norm(rows, mean, var, eps=self.norm.eps)
        with torch.no_grad():
            self.norm(rows.detach())  # updates running_mean / running_var
        return out

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        B, N, C = tokens.shape
        if not self.per_joint:
            out = tokens.clone()
            out[token_mask] = self._normalise(tokens[token_mask])
            return out + self.joint_embedding
        V = N_JOINTS
        frames = tokens.view(B * (N // V), V * C)  # one row per clip (TIME_POOL) or per frame (ORIGIN)
        valid = token_mask.view(B * (N // V), V)[:, 0]
        out = frames.clone()
        out[valid] = self._normalise(frames[valid])
        return out.view(B, N // V, V, C).add(self.joint_embedding).view(B, N, C)


class Projection(nn.Module):
    """2 × (Dropout, Linear → hidden, BatchNorm1d, ReLU), then Linear hidden → d_model[, then TokenNorm]."""

    def __init__(self, in_dim: int, d_model: int, policy: str, dropout: float = 0.1, hidden: int = 512,
                 token_norm: bool = False, token_norm_stats: str = "BATCH"):
        super().__init__()
        if policy not in POLICIES:
            raise ValueError(f"unknown reduction policy {policy!r}, expected one of {POLICIES}")
        self.policy = policy
        self.in_dim = in_dim
        self.token_norm = TokenNorm(d_model, policy, token_norm_stats) if token_norm else None
        layers: list[nn.Module] = []
        for i in range(2):
            layers += [nn.Dropout(dropout), nn.Linear(in_dim if i == 0 else hidden, hidden),
                       nn.BatchNorm1d(hidden), nn.ReLU()]
        layers.append(nn.Linear(hidden, d_model))
        self.mlp = nn.Sequential(*layers)

    def forward(self, emb: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, token_mask = reduce_tokens(emb, frame_mask, self.policy)  # [B,N,C], [B,N]
        # The MLP sees valid tokens only, so BatchNorm statistics ignore padding.
        out = tokens.new_zeros(*tokens.shape[:2], self.mlp[-1].out_features)
        out[token_mask] = self.mlp(tokens[token_mask]).to(out.dtype)
        if self.token_norm is not None:
            out = self.token_norm(out, token_mask) * token_mask[..., None]
        return out, token_mask


def mean_over_tokens(tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Each clip's mean over its valid tokens: tokens [B,N,D], token_mask [B,N] → [B,D] (padding left out)."""
    m = token_mask[..., None].to(tokens.dtype)
    return (tokens * m).sum(1) / m.sum(1).clamp(min=1)


@torch.no_grad()
def token_spread(tokens: torch.Tensor, token_mask: torch.Tensor) -> dict[str, float]:
    """How much T5's input differs between clips: tokens [B,N,D] of B ≥ 2 clips → mean pairwise cosine of the
    clips' token vectors (raw, and centred on the mean clip) and spread = mean ‖clip − mean clip‖ / ‖mean clip‖.
    Fixed-size token sets (TIME_POOL) are compared token by token; variable ones by their mean valid token.
    A spread near 0 (cosine near 1) means every clip reaches T5 as nearly the same input."""
    if token_mask.all():
        x = tokens.flatten(1).float()
    else:
        x = mean_over_tokens(tokens, token_mask).float()
    mean = x.mean(0, keepdim=True)
    off_diagonal = ~torch.eye(len(x), dtype=torch.bool, device=x.device)

    def mean_cosine(v: torch.Tensor) -> float:
        v = F.normalize(v, dim=1)
        return float((v @ v.T)[off_diagonal].mean())

    return {"cosine": mean_cosine(x), "centred_cosine": mean_cosine(x - mean),
            "spread": float((x - mean).norm(dim=1).mean() / mean.norm().clamp(min=1e-12))}
