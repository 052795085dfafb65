"""Which autocast dtype a run uses (TRAIN.PRECISION), shared by training and generation."""
from __future__ import annotations

import logging
from typing import Optional

import torch

from engine.config import Config

log = logging.getLogger("motion2text")
_warned_fp16_t5 = False
_warned_cpu = False


def native_bf16() -> bool:
    """bf16 in hardware (Ampere and later). Emulated bf16 (V100, T4) runs slower than fp32, so `auto` skips it."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch versions without the argument counted only native support
        return torch.cuda.is_bf16_supported()


def native_cpu_bf16() -> bool:
    """bf16 matrix instructions on this CPU (AVX512-BF16 or AMX); without them bf16 autocast is emulated."""
    # torch exposes these checks only as private helpers of torch.cpu; absent ones count as no support.
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and check() for check in checks)


def autocast_dtype(cfg: Config, device: torch.device) -> Optional[torch.dtype]:
    """None (fp32) for fp32; `auto` is bf16 where a GPU has it natively, else fp32 (CPU: always fp32, the
    published numerics); `bf16` autocasts on a GPU or CPU (on a CPU without bf16 instructions it is emulated and
    slow: a warning); fp16 (GPU only) never for a pretrained T5, whose activations overflow fp16 (it runs in
    fp32, with a warning)."""
    global _warned_fp16_t5, _warned_cpu
    precision = cfg.TRAIN.PRECISION
    if precision == "fp32":
        return None
    if device.type != "cuda":
        if precision == "bf16":
            if not native_cpu_bf16() and not _warned_cpu:
                log.warning("TRAIN.PRECISION bf16 on a CPU without bf16 instructions (AVX512-BF16/AMX): emulated, "
                            "likely slower than fp32")
                _warned_cpu = True
            return torch.bfloat16
        if precision == "fp16" and not _warned_cpu:
            log.warning("TRAIN.PRECISION fp16 is for GPUs; on the CPU this run uses fp32")
            _warned_cpu = True
        return None
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
