"""A person adversary: a linear head that tries to tell which training person a clip is from, reading what the
decoder cross-attends to through a gradient reversal, so the layers below learn to hide the person.

Why: on BX the nearest skeleton finds a clip of the same person for 154 of 163 clips, and each person's labels
repeat one annotator's habits. A decoder can then lower its loss by recognising the person, which does not
carry over to persons never seen. The reversal (Ganin & Lempitsky, 2015) trains the head to recognise the
person and everything below it to make that impossible. Not in the original; off by default.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import UserError
from models.projection import mean_over_tokens


class _ReverseGradient(torch.autograd.Function):
    """Identity forward, gradient times −1 backward. Hand-written: torch has no public gradient-reversal op."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return -grad


def reverse_gradient(x: torch.Tensor) -> torch.Tensor:
    return _ReverseGradient.apply(x)


class PersonAdversary(nn.Module):
    def __init__(self, width: int, persons: list[str]):
        super().__init__()
        if len(persons) < 2:
            raise UserError(f"TRANSFORMATION.PERSON_ADVERSARY needs clips of at least 2 persons in training, got "
                            f"{persons!r} (the person is the part of video_name before the first '_')")
        self.persons = list(persons)
        self.index = {p: i for i, p in enumerate(self.persons)}
        self.head = nn.Linear(width, len(self.persons))

    def person_indices(self, persons: list[str], device: torch.device) -> torch.Tensor:
        unknown = sorted(set(persons) - set(self.index))
        if unknown:
            raise UserError(f"person adversary: person(s) {', '.join(unknown)} of this batch are not among the "
                            f"{len(self.persons)} persons the model was built with ({', '.join(self.persons)})")
        return torch.tensor([self.index[p] for p in persons], device=device)

    def loss(self, hidden: torch.Tensor, mask: torch.Tensor, persons: list[str]) -> torch.Tensor:
        """Cross-entropy of the head's person logits from the mean of `hidden` [B,N,d] over the valid tokens
        `mask` [B,N], behind the gradient reversal; mean over samples."""
        logits = self.head(reverse_gradient(mean_over_tokens(hidden, mask))).float()
        return F.cross_entropy(logits, self.person_indices(persons, hidden.device))
