"""What defines a Motion2Text network, and nothing else: no data paths, no training settings.

Stored in every checkpoint (`model_config`), so a checkpoint rebuilds its model alone. engine/config.py maps
a YAML job config onto it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from common.errors import UserError
from common.text import PRETRAIN_PROMPT


# LoRA may adapt T5's attention (q, k, v, o) and feed-forward (wi, wo; wi_0, wi_1 in gated T5 v1.1) layers.
T5_MODULES = ("q", "k", "v", "o", "wi", "wo", "wi_0", "wi_1")
FREEZE_POLICIES = ("NONE", "ENCODER", "ALL_BUT_LORA")  # which T5 parameters train (models/lora.py)


@dataclass
class Generation:
    """Decoding defaults; a caller may pass others to `MotionToText.generate`."""
    num_beams: int = 1
    repetition_penalty: float = 3.5
    length_penalty: float = 1.0
    max_length: int = 50  # new tokens after the prompt
    guidance: float = 0.0  # w of models/guidance.py: what the clip changes in the caption, amplified; 0 off


@dataclass
class MotionToTextConfig:
    hidden_channel: int = 32  # STA-GCN first feature-extractor width per stream
    out_channel: int = 128  # = 4 × hidden_channel: two streams of 2 × hidden_channel
    dropout: float = 0.5  # ST-GC block dropout
    branch: int = 0  # 0 learner only, 1 + the standard (reference) motion, 2 + per-frame external features
    pretrain: bool = True  # branch 1 while pretraining: the learner's first frame stands in for a standard
    reduction_policy: str = "TIME_POOL"  # TIME_POOL | SKELETON_POOL | ORIGIN: which T5 input tokens
    projection_dropout: float = 0.1
    token_norm: bool = False  # per-joint standardised T5 input tokens + joint embedding (not in the original)
    token_norm_stats: str = "BATCH"  # TOKEN_NORM in training: BATCH statistics or RUNNING averages
    canonical_facing: bool = False  # every clip and standard turned about y to face one way (not in the original)
    fusion: str = "DIFFERENCE"  # branch 1: DIFFERENCE (standard window − learner) | CONCAT (learner, difference)
    use_data_segment: bool = False  # branch 1: the data's aligned segment instead of the window search
    retrieval: bool = False  # retrieved training labels go to T5 as text after the motion tokens
    word_dropout: float = 0.0  # training only: decoder input tokens replaced by <unk>
    motion_margin: float = 0.0  # training only: hinge on nll(caption | other motion) − nll(caption | own motion)
    word_bag: float = 0.0  # training only: weight of predicting the caption's words from T5's encoder output
    person_adversary: float = 0.0  # training only: weight of the gradient-reversed person head (models/adversary.py)
    contrastive: float = 0.0  # training only: weight of the motion–caption contrastive loss (models/contrastive.py)
    persons: list[str] = field(default_factory=list)  # the training persons that head tells apart
    subtraction_dim: int = 0  # branch 2: width of the per-frame external features
    # LoRA adapters: {} none; else {"rank", "alpha", "dropout", "t5_modules": [...], "stagcn": bool}
    lora: dict[str, Any] = field(default_factory=dict)
    prompt: str = PRETRAIN_PROMPT  # the decoder prefix of every caption
    t5: dict[str, Any] = field(default_factory=dict)  # a transformers T5Config as a dict
    generation: Generation = field(default_factory=Generation)

    @property
    def embedding_width(self) -> int:
        return 4 * self.out_channel

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "model config") -> "MotionToTextConfig":
        if not isinstance(data, dict):
            raise UserError(f"{source}: expected a mapping, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserError(f"{source}: unknown model config keys {', '.join(unknown)}; written by a newer version?")
        values = dict(data)
        if isinstance(values.get("generation"), dict):
            values["generation"] = Generation(**values["generation"])
        return cls(**values)
