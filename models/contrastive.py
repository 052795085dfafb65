"""A motion–caption contrastive loss (CLIP's symmetric InfoNCE, Radford et al., 2021) between what the decoder
cross-attends to and T5's encoding of the clip's own caption.

Why: trained on likelihood alone the decoder lowers its loss most by writing the captions' common language and
reads its input last; on BX it writes the same caption for clips of one technique. This loss asks the motion's
encoding to pick its own caption out of the batch's captions, a signal that exists only where clips differ.
Two clips captioned alike share one caption encoding, so each scores its motion against both equally: the loss
is the same as with both counted as positives.
Not in the original; off by default.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.projection import mean_over_tokens


class MotionCaptionContrast(nn.Module):
    """Two linear heads into a shared space and a learnable temperature (CLIP's init 1/0.07, capped at 100)."""

    def __init__(self, width: int):
        super().__init__()
        self.motion_head = nn.Linear(width, width)
        self.caption_head = nn.Linear(width, width)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def loss(self, motion: torch.Tensor, motion_mask: torch.Tensor, caption: torch.Tensor,
             caption_mask: torch.Tensor) -> torch.Tensor:
        """motion [B,N,d] / motion_mask [B,N]: T5's encoder output over the clip's tokens; caption [B,L,d] /
        caption_mask [B,L]: over its caption's words. Mean of the two directions' cross-entropies."""
        m = F.normalize(self.motion_head(mean_over_tokens(motion, motion_mask)).float(), dim=-1)
        c = F.normalize(self.caption_head(mean_over_tokens(caption, caption_mask)).float(), dim=-1)
        logits = self.logit_scale.clamp(max=math.log(100)).exp() * m @ c.t()  # [B,B] motion i vs caption j
        target = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
