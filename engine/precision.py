"""Which autocast dtype a run uses (TRAIN.PRECISION), shared by training and generation."""
from __future__ import annotations

import logging
from typing import Optional

import torch

from engine.config import Config

log = logging.getLogger("motion2text")
_warned_fp16_t5 = False


def native_bf16() -> bool:
    """bf16 in hardware (Ampere and later). Emulated bf16 (V100, T4) runs slower than fp32, so `auto` skips it."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch versions without the argument counted only native support
        return torch.cuda.is_bf16_supported()


def autocast_dtype(cfg: Config, device: torch.device) -> Optional[torch.dtype]:
    """None (fp32) on CPU and for fp32; `auto` is bf16 where the GPU has it natively, else fp32; fp16 only when
    asked, and never for a pretrained T5, whose activations overflow fp16 (it runs in fp32, with a warning)."""
    global _warned_fp16_t5
    precision = cfg.TRAIN.PRECISION
    if device.type != "cuda" or precision == "fp32":
        return None  # CPU trains in fp32: bf16 autocast on CPU is slower here and changes numerics
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if cfg.T5.NAME:
            if not _warned_fp16_t5:
                log.warning("TRAIN.PRECISION fp16 with the pretrained T5 %r: pretrained T5 activations overflow "
                            "fp16 (inf/NaN losses), so this run uses fp32; use bf16 on a GPU that has it", cfg.T5.NAME)
                _warned_fp16_t5 = True
            return None
        return torch.float16
    return torch.bfloat16 if native_bf16() else None
