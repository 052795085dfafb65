"""Low-rank adapters (LoRA, through peft) on T5's projections and the STA-GCN's convolutions, and merging
them back into plain layers for export.

Adapters change a model's parameter names (`q.weight` becomes `q.base_layer.weight` beside `q.lora_A…` and
`q.lora_B…`), so they are part of the network's definition (`MotionToTextConfig.lora`); which parameters
train is the trainer's business (`freeze_parameters`)."""
from __future__ import annotations

import torch
from torch import nn

from models.config import FREEZE_POLICIES

# The STA-GCN's 1×1 graph convolutions and its temporal convolutions, as the original adapted them.
ENCODER_MODULES = ("graph_conv", "temporal_conv")
LORA_MARK = "lora_"  # in the name of every adapter parameter
BASE_MARK = ".base_layer."  # between an adapted layer's name and its original parameters


def _is_adapted(module: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return isinstance(module, LoraLayer)


def base_layer(module: nn.Module) -> nn.Module:
    """The original layer inside an adapted one (the layer itself when it has no adapter)."""
    return module.get_base_layer() if _is_adapted(module) else module


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight a layer applies: W, or W + the adapters' B·A·scaling for an adapted one. For code that
    uses a layer's weight directly instead of calling it (the graph convolution does); adapter dropout does
    not apply on this path."""
    if not _is_adapted(module):
        return module.weight
    weight = module.get_base_layer().weight
    for name in module.active_adapters:
        if name in module.lora_A:
            weight = weight + module.get_delta_weight(name)
    return weight


def add_adapters(module: nn.Module, targets, rank: int, alpha: float, dropout: float) -> None:
    """LoRA of `rank` on every submodule of `module` named one of `targets`; B starts at 0, so the output is
    unchanged until training moves it. Which parameters train is left as it was (peft would freeze all)."""
    from peft import LoraConfig, inject_adapter_in_model

    trainable = {name: p.requires_grad for name, p in module.named_parameters()}
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets))
    inject_adapter_in_model(config, module)
    for name, p in module.named_parameters():
        p.requires_grad_(trainable.get(name.replace(BASE_MARK, "."), True))


def base_name(name: str) -> str:
    """A parameter's name in the same model without adapters (adapter parameters have none)."""
    return name.replace(BASE_MARK, ".")


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer's weight and put the plain layer back, in place: the model then has
    the parameter names and outputs of a model without adapters (up to float rounding)."""
    adapted = [(name, m) for name, m in model.named_modules() if _is_adapted(m)]
    for name, module in adapted:
        weight = effective_weight(module).detach()
        plain = module.get_base_layer()
        with torch.no_grad():
            plain.weight.copy_(weight)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, plain)
    return model


def freeze_parameters(model: nn.Module, t5_policy: str) -> dict[str, int]:
    """Which parameters train. T5, by `t5_policy`: NONE all; ENCODER all but T5's encoder stack (the shared
    embedding still trains, the decoder reads it); ALL_BUT_LORA only its adapters. The STA-GCN: when it has
    adapters, the layers they adapt stay fixed; everything else trains. The projection always trains.
    Returns {"trainable": n, "total": n} parameter counts."""
    if t5_policy not in FREEZE_POLICIES:
        raise ValueError(f"freeze policy {t5_policy!r}: expected one of {', '.join(FREEZE_POLICIES)}")
    for name, p in model.named_parameters():
        adapter = LORA_MARK in name
        if name.startswith("t5."):
            frozen = (t5_policy == "ENCODER" and name.startswith("t5.encoder.")
                      or t5_policy == "ALL_BUT_LORA" and not adapter)
        else:
            frozen = BASE_MARK in name  # a layer adapted by LoRA keeps its original weights
        p.requires_grad_(not frozen)
    return parameter_share(model)


def parameter_share(model: nn.Module) -> dict[str, int]:
    return {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in model.parameters())}
