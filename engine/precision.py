"""Which autocast dtype a run uses (TRAIN.PRECISION), shared by training and generation."""
from __future__ import annotations

from typing import Optional

import torch

from engine.config import Config


def autocast_dtype(cfg: Config, device: torch.device) -> Optional[torch.dtype]:
    precision = cfg.TRAIN.PRECISION
    if device.type != "cuda" or precision == "fp32":
        return None  # CPU trains in fp32: bf16 autocast on CPU is slower here and changes numerics
    if precision == "fp16":
        return torch.float16
    return torch.bfloat16 if (precision == "bf16" or torch.cuda.is_bf16_supported()) else torch.float16
