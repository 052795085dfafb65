"""TRAIN.PRECISION → autocast dtype, without a GPU: only the device type and the bf16 support query matter."""
from __future__ import annotations

import torch

import engine.precision as precision
from tests.cli_helpers import captured_log
from tests.helpers import tiny_config

CUDA = torch.device("cuda", 0)  # a device object only; nothing runs on it


def dtype(monkeypatch, value, bf16_native=True, bf16_emulated=True, **t5):
    def supported(including_emulation=True):
        return bf16_native or (including_emulation and bf16_emulated)

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    cfg = tiny_config(TRAIN={"PRECISION": value}, T5=t5)
    return precision.autocast_dtype(cfg, CUDA)


def test_auto_takes_bf16_only_where_it_is_native(monkeypatch):
    assert dtype(monkeypatch, "auto") is torch.bfloat16  # A100, H100
    assert dtype(monkeypatch, "auto", bf16_native=False) is None  # V100/T4: emulated bf16 → fp32, not fp16
    assert dtype(monkeypatch, "fp32") is None
    assert dtype(monkeypatch, "bf16", bf16_native=False) is torch.bfloat16  # asked for: given
    assert precision.autocast_dtype(tiny_config(TRAIN={"PRECISION": "bf16"}), torch.device("cpu")) is None


def test_fp16_is_refused_for_a_pretrained_t5_with_a_warning(monkeypatch):
    assert dtype(monkeypatch, "fp16") is torch.float16  # a T5 built from scratch trains in fp16
    monkeypatch.setattr(precision, "_warned_fp16_t5", False)
    with captured_log() as records:
        assert dtype(monkeypatch, "fp16", NAME="t5-base") is None
        assert dtype(monkeypatch, "fp16", NAME="t5-base") is None
    warnings = [r for r in records if "overflow fp16" in r.getMessage()]
    assert len(warnings) == 1 and "t5-base" in warnings[0].getMessage()
