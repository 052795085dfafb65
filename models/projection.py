"""Motion embedding → T5 input tokens: reduce by policy, then a small MLP to T5's width (design §4)."""
from __future__ import annotations

import torch
from torch import nn

POLICIES = ("TIME_POOL", "SKELETON_POOL", "ORIGIN")


def reduce_tokens(emb: torch.Tensor, frame_mask: torch.Tensor, policy: str) -> tuple[torch.Tensor, torch.Tensor]:
    """emb [B,T,V,C], frame_mask [B,T] bool → tokens [B,N,C] and token_mask [B,N] bool.

    TIME_POOL: max over valid frames → one token per joint (padded frames never win the max: defect 5).
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


class Projection(nn.Module):
    """2 × (Dropout, Linear → hidden, BatchNorm1d, ReLU), then Linear hidden → d_model."""

    def __init__(self, in_dim: int, d_model: int, policy: str, dropout: float = 0.1, hidden: int = 512):
        super().__init__()
        if policy not in POLICIES:
            raise ValueError(f"unknown reduction policy {policy!r}, expected one of {POLICIES}")
        self.policy = policy
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
        return out, token_mask
