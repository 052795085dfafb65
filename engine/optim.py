"""The optimizer and its schedule, and one optimizer step, shared by the trainer and the benchmarks.

AdamW with weight decay on matrices only (biases and norm scales excluded), linear warmup then linear decay to 0.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from transformers import get_linear_schedule_with_warmup

from engine.config import OptimizerConfig


def build_optimizer(model: torch.nn.Module, opt: OptimizerConfig) -> torch.optim.AdamW:
    """Over the parameters that train (frozen ones, e.g. a T5 under LoRA, hold no optimizer state)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]  # biases and norm scales
    return torch.optim.AdamW([{"params": decay, "weight_decay": opt.WEIGHT_DECAY},
                              {"params": no_decay, "weight_decay": 0.0}], lr=opt.LR)


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    return get_linear_schedule_with_warmup(optimizer, warmup_steps, max(1, total_steps))


def norm_statistics(model: torch.nn.Module) -> list[torch.Tensor]:
    """The BatchNorm running statistics: a forward pass changes them, even when its step is then skipped."""
    return [b for m in model.modules() if isinstance(m, _BatchNorm) for b in m.buffers()]


class OptimizerStep:
    """Unscale → clip → step unless the gradient norm is non-finite → scaler update → zero → schedule.

    `remember()` before a step's first forward pass; a skipped step then puts the BatchNorm statistics back, so
    a non-finite step leaves parameters and buffers exactly as they were."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                 scaler: torch.amp.GradScaler, grad_clip: float):
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.grad_clip = grad_clip or float("inf")
        self._statistics = norm_statistics(model)
        self._saved: Optional[list[torch.Tensor]] = None

    def remember(self) -> None:
        self._saved = [t.detach().clone() for t in self._statistics]

    def __call__(self) -> tuple[float, bool]:
        """(gradient norm before clipping, whether the parameters were updated)."""
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        stepped = bool(torch.isfinite(grad_norm))
        if stepped:
            self.scaler.step(self.optimizer)
        elif self._saved is not None:
            torch._foreach_copy_(self._statistics, self._saved)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self._saved = None
        return float(grad_norm), stepped
