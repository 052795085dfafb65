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


def test_on_the_cpu_auto_is_fp32_and_bf16_autocasts_warning_when_emulated(monkeypatch):
    cpu = torch.device("cpu")
    assert precision.autocast_dtype(tiny_config(TRAIN={"PRECISION": "auto"}), cpu) is None  # published numerics
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: True)
    with captured_log() as records:
        assert precision.autocast_dtype(tiny_config(TRAIN={"PRECISION": "bf16"}), cpu) is torch.bfloat16
    assert not records
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: False)
    monkeypatch.setattr(precision, "_warned_cpu", False)
    with captured_log() as records:
        assert precision.autocast_dtype(tiny_config(TRAIN={"PRECISION": "bf16"}), cpu) is torch.bfloat16
        assert precision.autocast_dtype(tiny_config(TRAIN={"PRECISION": "fp16"}), cpu) is None
    assert ["emulated" in r.getMessage() for r in records] == [True]


def test_a_bf16_training_step_on_the_cpu_runs_in_bf16_and_learns():
    from engine.optim import build_optimizer
    from tests.helpers import make_batch, random_clip, tiny_model

    cfg = tiny_config(TRAIN={"PRECISION": "bf16"})
    model = tiny_model(cfg).train()
    batch = make_batch([random_clip(9, seed=1), random_clip(6, seed=2)])
    labels = model.codec.encode_targets(["punch", "keep your hand at chin"])
    seen = []
    handle = model.t5.lm_head.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    optimizer = build_optimizer(model, cfg.OPTIMIZER)
    losses = []
    for _ in range(5):
        with torch.autocast("cpu", dtype=precision.autocast_dtype(cfg, torch.device("cpu"))):
            loss = model(batch, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    handle.remove()
    assert seen[0] is torch.bfloat16 and all(p.dtype is torch.float32 for p in model.parameters())
    assert losses[-1] < losses[0]


def test_fp16_is_refused_for_a_pretrained_t5_with_a_warning(monkeypatch):
    assert dtype(monkeypatch, "fp16") is torch.float16  # a T5 built from scratch trains in fp16
    monkeypatch.setattr(precision, "_warned_fp16_t5", False)
    with captured_log() as records:
        assert dtype(monkeypatch, "fp16", NAME="t5-base") is None
        assert dtype(monkeypatch, "fp16", NAME="t5-base") is None
    warnings = [r for r in records if "overflow fp16" in r.getMessage()]
    assert len(warnings) == 1 and "t5-base" in warnings[0].getMessage()
