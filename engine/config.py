"""The one config schema: every key of the original plus the later ones, with defaults and allowed ranges.

A config is a YAML file of nested UPPER_CASE keys (read by engine/config_loader.py). Every numeric key
carries its range beside it; `check_config` enforces the ranges and the rules between keys.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

from common.errors import UserError
from common.text import FINETUNE_PROMPT, PRETRAIN_PROMPT
from models.config import T5_MODULES, Generation, MotionToTextConfig

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric key, checked when a config is built (floats must also be finite)."""
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, v) -> bool:
        return ((v > self.low if self.low_open else v >= self.low)
                and (v < self.high if self.high_open else v <= self.high))

    def __str__(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


def key(default, allowed: Range):
    """A numeric config key with its range beside it."""
    return field(default=default, metadata={"range": allowed})



@dataclass
class TaskConfig:
    PRETRAIN: bool = True  # True: motion descriptions, pretrain_checkpoints/; False: instructions, checkpoints/


@dataclass
class TransformationConfig:
    REDUCTION_POLICY: Literal["TIME_POOL", "SKELETON_POOL", "ORIGIN"] = "TIME_POOL"
    PROJECTION_DROPOUT: float = key(0.1, Range(0.0, 1.0, high_open=True))
    # Standardise T5's input tokens (the projection's output) across clips per joint, + a learned joint
    # embedding: not in the original; keeps what differs between clips from drowning in each joint's offset.
    TOKEN_NORM: bool = False
    # Which statistics TOKEN_NORM standardises by in training: BATCH, the batch's own (its clips' tokens then
    # depend on the clips drawn with them); RUNNING, the running averages, as in evaluation. Evaluation always
    # uses the running averages.
    TOKEN_NORM_STATS: Literal["BATCH", "RUNNING"] = "BATCH"
    # Turn every clip (and standard) about the vertical axis so its first frame faces one way: poses
    # estimated from video are in camera coordinates, so a camera view changes every coordinate. Not in
    # the original; false keeps the input as published.
    CANONICAL_FACING: bool = False
    # Training only: weight of a person adversary behind a gradient reversal on T5's encoder output
    # (models/adversary.py), so what the decoder reads cannot tell the training persons apart. Not in the
    # original; 0 = off.
    PERSON_ADVERSARY: float = key(0.0, Range(0.0, 100.0))


@dataclass
class DataConfig:
    TRAIN: Optional[str] = None  # dataset pickle (.pkl) or torch.save file
    TEST: Optional[str] = None
    STANDARD: Optional[str] = None  # standards pickle; required for finetuning with BRANCH 1
    BATCH_SIZE: int = key(6, Range(1, 65536))  # per process
    EVAL_BATCH_SIZE: int = key(32, Range(1, 65536))  # per process, generation
    NUM_WORKERS: int = key(0, Range(0, 256))
    USE_AUGMENTED_LABELS: bool = False  # also train on `augmented_labels` paraphrases
    BUCKET_BY_LENGTH: bool = True  # group clips of similar length into a batch (less padding)
    MAX_FRAMES: int = key(1000, Range(1, 100000))  # a longer clip is refused, naming it (memory grows with T; HumanML3D clips <= 196)
    MAX_LABEL_TOKENS: int = key(128, Range(1, 4096))  # a longer label is cropped to this many tokens, with a warning naming the clip
    # Training-time augmentation, not in the original (0 = off): each training clip turned about the vertical
    # axis by an angle uniform in ±AUGMENT_TURN_DEG (the camera's heading varies within a person) and scaled by
    # a factor uniform in 1 ± AUGMENT_SCALE, and played at a speed uniform in 1 ± AUGMENT_SPEED (resampled in
    # time; the segment start moves with it). The standards are left as recorded.
    AUGMENT_TURN_DEG: float = key(0.0, Range(0.0, 180.0))
    AUGMENT_SCALE: float = key(0.0, Range(0.0, 0.5))
    AUGMENT_SPEED: float = key(0.0, Range(0.0, 0.5))
    # -1: train on every label of a clip. i >= 0: train on each clip's i-th label (and its paraphrase) only —
    # in BX a label position is one annotator, and three annotators' different remarks on one clip make the
    # target a mixture that the motion explains little of. Not in the original.
    LABEL_INDEX: int = key(-1, Range(-1, 1000))


@dataclass
class AlignmentConfig:
    # NONE: sliding-window search for the standard's start frame; GT/ALIGNED/ERROR: the segment in the data.
    REFERENCE_SEGMENT: Literal["NONE", "GT", "ALIGNED", "ERROR"] = "NONE"
    # What the projection reads in branch 1: DIFFERENCE = standard window − learner (the original's),
    # CONCAT = the learner's embedding and that difference side by side.
    FUSION: Literal["DIFFERENCE", "CONCAT"] = "DIFFERENCE"


@dataclass
class RetrievalConfig:
    # > 0: the labels of the k nearest training clips (same technique, skeleton distance) go to T5 as text
    # next to the motion tokens. Not in the original model; 0 keeps it as published.
    NEIGHBOURS: int = key(0, Range(0, 100))
    # Training clips retrieve neither themselves nor, with PERSON, any clip of their own person (the number
    # before the first `_` of video_name): PERSON when test persons are new, CLIP when they are seen in training.
    EXCLUDE: Literal["CLIP", "PERSON"] = "CLIP"
    # -1: prompt = all labels of the neighbours, train on every label. i >= 0: prompt = the neighbours' i-th
    # labels, train on each clip's i-th label only (in BX a label position is one annotator, whose remarks on
    # one person repeat: `evaluate.py --baselines` prints the leave-one-out evidence per position).
    LABEL_INDEX: int = key(-1, Range(-1, 1000))


@dataclass
class OptimizerConfig:
    LR: float = key(1e-4, Range(0.0, 10.0, low_open=True))
    MAX_EPOCH: int = key(50, Range(1, 100000))
    WARMUP_STEPS: int = key(5000, Range(0, 10**9))  # optimizer steps of linear warmup, then linear decay to 0
    WEIGHT_DECAY: float = key(0.01, Range(0, 10))
    GRAD_CLIP: float = key(1.0, Range(0, 1000000.0))  # max global grad norm; 0 disables
    GRAD_ACCUM_STEPS: int = key(1, Range(1, 4096))


@dataclass
class TrainConfig:
    # auto: bf16 on a CUDA GPU that has it natively, else fp32 (on CPU always fp32); bf16 also on CPU (AMX/AVX512-BF16)
    PRECISION: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    SANITY_EVAL: bool = True  # evaluate the untrained/loaded model before the first epoch
    LOG_EVERY: int = key(10, Range(1, 10**9))  # optimizer steps between tensorboard scalars
    MAX_BAD_STEPS: int = key(5, Range(0, 1000000))  # consecutive non-finite losses tolerated (step skipped) before aborting
    PG_TIMEOUT_S: int = key(1800, Range(1, 604800))  # process-group timeout: a crashed rank never hangs the others forever
    # glibc's malloc_trim(0) every N optimizer steps (0 = never): with batches of changing length glibc's heap keeps
    # the freed memory and grows; each trim returns it, and the next steps pay to map it again (bench/heap.py)
    MALLOC_TRIM: int = key(1, Range(0, 10**9))


@dataclass
class CheckpointConfig:
    KEEP_LAST: int = key(3, Range(1, 1000000))  # newest k checkpoints kept (the last one of a finished run is always kept)


@dataclass
class EvalConfig:
    METRIC_PERIOD: int = key(0, Range(0, 100000))  # evaluate every N epochs; 0 = on the checkpoint schedule
    METEOR: bool = True  # METEOR needs Java and loads a large paraphrase table once per process
    SCORE: bool = True  # False: only write predictions (a node without Java); score later with evaluate.py --exp
    EARLY_STOP_PATIENCE: int = key(0, Range(0, 100000))  # stop after N evaluations without a better CIDEr; 0 = train every epoch
    # Node attention and learned graphs of every evaluated clip: NPZ, one float16 attention_epochN.npz per epoch
    # (~10x smaller than JSON); JSON, the original's two files per epoch; NONE.
    SAVE_ATTENTION: Literal["NPZ", "JSON", "NONE"] = "NPZ"


@dataclass
class GenerationConfig:
    NUM_BEAMS: int = key(1, Range(1, 64))
    REPETITION_PENALTY: float = key(3.5, Range(0.0, 100.0, low_open=True))
    LENGTH_PENALTY: float = key(1.0, Range(-100, 100))
    MAX_LENGTH: int = key(50, Range(1, 4096))  # new tokens after the prompt
    # > 0: decode log p(y|clip) + w·(log p(y|clip) − log p(y|a clip moving as the standard)) (models/guidance.py);
    # not in the original, 0 decodes as published
    GUIDANCE: float = key(0.0, Range(0.0, 100.0))


@dataclass
class LoraConfig:
    RANK: int = key(0, Range(0, 4096))  # 0: no adapters
    ALPHA: float = key(16.0, Range(0.0, 1e6, low_open=True))  # the adapters' output is scaled by ALPHA / RANK
    DROPOUT: float = key(0.05, Range(0.0, 1.0, high_open=True))
    TARGETS: str = "q,v"  # T5 layers to adapt, comma-separated: q, k, v, o (attention), wi, wo, wi_0, wi_1 (feed-forward); may be empty
    STAGCN: bool = False  # also adapt the STA-GCN's graph and temporal convolutions (their weights then stay fixed)

    def targets(self) -> list[str]:
        return [t.strip() for t in self.TARGETS.split(",") if t.strip()]


@dataclass
class T5Config:
    NAME: Optional[str] = None  # "t5-base" or a local folder; None builds a T5 from the sizes below
    D_MODEL: int = key(512, Range(1, 65536))
    NUM_LAYERS: int = key(6, Range(1, 256))  # encoder and decoder layers each
    NUM_HEADS: int = key(8, Range(1, 1024))
    D_KV: int = key(64, Range(1, 4096))
    D_FF: int = key(2048, Range(1, 262144))
    DROPOUT: float = key(0.1, Range(0.0, 1.0, high_open=True))
    VOCAB_SIZE: int = key(4000, Range(64, 1000000))  # byte-level BPE trained on the training labels (config-built T5 only)
    # Training only: each teacher-forced decoder input token after the prompt becomes <unk> with this
    # probability, so the decoder cannot write from its own context alone and must read the motion.
    WORD_DROPOUT: float = key(0.0, Range(0.0, 1.0, high_open=True))
    # Training only: each caption must be at least this many nats per token more likely under its own clip's
    # motion than under another clip's of the batch (a hinge loss added to the cross-entropy); 0 = off.
    MOTION_MARGIN: float = key(0.0, Range(0.0, 100.0))
    # Training only: weight of an auxiliary loss that predicts the bag of caption words from the mean of T5's
    # encoder output (what the decoder cross-attends to), so that output must carry the caption's content; 0 = off.
    WORD_BAG: float = key(0.0, Range(0.0, 100.0))
    # Training only: weight of a contrastive loss (CLIP's) that asks the mean of T5's encoder output over the
    # motion to pick the clip's own caption (encoded by the same T5 encoder) out of the batch's captions; 0 = off.
    CONTRASTIVE: float = key(0.0, Range(0.0, 100.0))
    # LoRA adapters (through peft): the way to finetune a large pretrained T5 on a few hundred clips.
    LORA: LoraConfig = field(default_factory=LoraConfig)
    # Which T5 parameters train: NONE all; ENCODER all but its encoder stack; ALL_BUT_LORA its adapters only.
    FREEZE: Literal["NONE", "ENCODER", "ALL_BUT_LORA"] = "NONE"


@dataclass
class Config:
    HIDDEN_CHANNEL: int = key(32, Range(1, 4096))  # first feature-extractor width per stream
    OUT_CHANNEL: int = key(128, Range(4, 16384))  # concatenated extractor output = first attention/perception width
    DROPOUT: float = key(0.5, Range(0.0, 1.0, high_open=True))  # ST-GC block dropout
    BRANCH: Literal[0, 1, 2] = 0  # 0 learner only, 1 + reference alignment, 2 + external per-frame features
    LOGDIR: Optional[str] = None  # experiment folder; defaults to the folder holding config.yaml
    WEIGHT_PATH: Optional[str] = None  # finetune init; default: newest checkpoint in pretrain_checkpoints/
    SEED: int = key(42, Range(0, 4294967295))
    TASK: TaskConfig = field(default_factory=TaskConfig)
    TRANSFORMATION: TransformationConfig = field(default_factory=TransformationConfig)
    DATA: DataConfig = field(default_factory=DataConfig)
    ALIGNMENT: AlignmentConfig = field(default_factory=AlignmentConfig)
    RETRIEVAL: RetrievalConfig = field(default_factory=RetrievalConfig)
    OPTIMIZER: OptimizerConfig = field(default_factory=OptimizerConfig)
    TRAIN: TrainConfig = field(default_factory=TrainConfig)
    CHECKPOINT: CheckpointConfig = field(default_factory=CheckpointConfig)
    EVAL: EvalConfig = field(default_factory=EvalConfig)
    GENERATION: GenerationConfig = field(default_factory=GenerationConfig)
    T5: T5Config = field(default_factory=T5Config)

    # Not a key: where the config file was read from (relative paths resolve against it).
    config_dir: Optional[Path] = field(default=None, repr=False, compare=False)

    def path(self, value: Optional[str]) -> Optional[Path]:
        """Resolve a path key: absolute as is; relative against the config's folder, else the repo root."""
        if value is None:
            return None
        p = Path(os.path.expanduser(value))
        if p.is_absolute():
            return p
        if self.config_dir is not None and (self.config_dir / p).exists():
            return (self.config_dir / p).resolve()
        return (REPO_ROOT / p).resolve()

    @property
    def logdir(self) -> Path:
        if self.LOGDIR is not None:
            return self.path(self.LOGDIR)
        if self.config_dir is None:
            raise UserError("LOGDIR: not set and the config was not read from a file; set LOGDIR")
        return self.config_dir

    @property
    def prompt(self) -> str:
        return PRETRAIN_PROMPT if self.TASK.PRETRAIN else FINETUNE_PROMPT

    @property
    def checkpoint_dir(self) -> Path:
        return self.logdir / ("pretrain_checkpoints" if self.TASK.PRETRAIN else "checkpoints")

    @property
    def generation(self) -> Generation:
        g = self.GENERATION
        return Generation(num_beams=g.NUM_BEAMS, repetition_penalty=g.REPETITION_PENALTY,
                          length_penalty=g.LENGTH_PENALTY, max_length=g.MAX_LENGTH, guidance=g.GUIDANCE)

    def model_config(self, t5: dict, subtraction_dim: int = 0, persons: Sequence[str] = ()) -> MotionToTextConfig:
        """The network this job config describes, over the T5 architecture `t5` (a transformers config dict);
        `persons`: the training persons, which the person adversary (if any) tells apart."""
        adversary = self.TRANSFORMATION.PERSON_ADVERSARY
        return MotionToTextConfig(
            hidden_channel=self.HIDDEN_CHANNEL, out_channel=self.OUT_CHANNEL, dropout=self.DROPOUT,
            branch=self.BRANCH, pretrain=self.TASK.PRETRAIN,
            reduction_policy=self.TRANSFORMATION.REDUCTION_POLICY,
            projection_dropout=self.TRANSFORMATION.PROJECTION_DROPOUT, token_norm=self.TRANSFORMATION.TOKEN_NORM,
            token_norm_stats=self.TRANSFORMATION.TOKEN_NORM_STATS,
            canonical_facing=self.TRANSFORMATION.CANONICAL_FACING,
            fusion=self.ALIGNMENT.FUSION, use_data_segment=self.ALIGNMENT.REFERENCE_SEGMENT != "NONE",
            retrieval=self.RETRIEVAL.NEIGHBOURS > 0, word_dropout=self.T5.WORD_DROPOUT,
            motion_margin=self.T5.MOTION_MARGIN, word_bag=self.T5.WORD_BAG,
            contrastive=self.T5.CONTRASTIVE, person_adversary=adversary, persons=sorted(persons) if adversary > 0 else [],
            subtraction_dim=subtraction_dim if self.BRANCH == 2 else 0, lora=self.lora(), prompt=self.prompt, t5=dict(t5),
            generation=self.generation)

    def lora(self) -> dict:
        """The model config's `lora`: {} without adapters."""
        lora = self.T5.LORA
        if not lora.RANK or not (lora.targets() or lora.STAGCN):
            return {}
        return {"rank": lora.RANK, "alpha": lora.ALPHA, "dropout": lora.DROPOUT, "t5_modules": lora.targets(),
                "stagcn": lora.STAGCN}

    def to_dict(self) -> dict:
        return _to_dict(self)


def _to_dict(obj) -> dict:
    out = {}
    for f in dataclasses.fields(obj):
        if f.name == "config_dir":
            continue
        v = getattr(obj, f.name)
        out[f.name] = _to_dict(v) if dataclasses.is_dataclass(v) else v
    return out


def _check_ranges(section, prefix: str) -> None:
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            _check_ranges(value, f"{prefix}{f.name}.")
            continue
        allowed = f.metadata.get("range")
        if allowed is None or value is None:
            continue
        if not math.isfinite(value) or value not in allowed:
            raise UserError(f"config key {prefix}{f.name}: got {value!r}, expected a finite value in {allowed}")


def _check_lora(t5: T5Config) -> None:
    unknown = [t for t in t5.LORA.targets() if t not in T5_MODULES]
    if unknown:
        raise UserError(f"config key T5.LORA.TARGETS={t5.LORA.TARGETS!r}: unknown T5 layer(s) {', '.join(unknown)}; "
                        f"expected a comma-separated list of {', '.join(T5_MODULES)}")
    if t5.FREEZE == "ALL_BUT_LORA" and not (t5.LORA.RANK and t5.LORA.targets()):
        raise UserError("config key T5.FREEZE=ALL_BUT_LORA: T5 has no adapters to train; set T5.LORA.RANK > 0 and "
                        "T5.LORA.TARGETS, or another FREEZE")


def check_config(cfg: Config) -> None:
    """Every numeric key within its range, then the rules between keys."""
    _check_ranges(cfg, "")
    others = {"T5.WORD_BAG": cfg.T5.WORD_BAG, "T5.CONTRASTIVE": cfg.T5.CONTRASTIVE,
              "TRANSFORMATION.PERSON_ADVERSARY": cfg.TRANSFORMATION.PERSON_ADVERSARY}
    other = next((k for k, v in others.items() if v), None)
    if cfg.T5.MOTION_MARGIN and other:
        raise UserError(f"config keys {other}={others[other]}, "
                        f"T5.MOTION_MARGIN={cfg.T5.MOTION_MARGIN}: the motion margin's paired T5 pass does not add "
                        "the other auxiliary losses; use one of them (set the other to 0)")
    if cfg.DATA.AUGMENT_TURN_DEG and cfg.TRANSFORMATION.CANONICAL_FACING:
        raise UserError(f"config keys DATA.AUGMENT_TURN_DEG={cfg.DATA.AUGMENT_TURN_DEG}, TRANSFORMATION.CANONICAL_FACING"
                        "=true: facing every clip forward undoes the turn; set one of them off")
    if cfg.RETRIEVAL.LABEL_INDEX >= 0 and not cfg.RETRIEVAL.NEIGHBOURS:
        raise UserError(f"config key RETRIEVAL.LABEL_INDEX={cfg.RETRIEVAL.LABEL_INDEX}: needs RETRIEVAL.NEIGHBOURS > 0 "
                        "(it picks which label of the retrieved clips is the prompt); set it or LABEL_INDEX to -1")
    if min(cfg.RETRIEVAL.LABEL_INDEX, cfg.DATA.LABEL_INDEX) >= 0 and cfg.RETRIEVAL.LABEL_INDEX != cfg.DATA.LABEL_INDEX:
        raise UserError(f"config keys DATA.LABEL_INDEX={cfg.DATA.LABEL_INDEX}, RETRIEVAL.LABEL_INDEX="
                        f"{cfg.RETRIEVAL.LABEL_INDEX}: RETRIEVAL.LABEL_INDEX already trains on that label position only; "
                        "set DATA.LABEL_INDEX to -1 or to the same position")
    if cfg.HIDDEN_CHANNEL * 2 * 2 != cfg.OUT_CHANNEL:
        # Two streams each ending at 2×HIDDEN_CHANNEL are concatenated into OUT_CHANNEL (32 → 128 as published).
        raise UserError(f"config keys HIDDEN_CHANNEL={cfg.HIDDEN_CHANNEL}, OUT_CHANNEL={cfg.OUT_CHANNEL}: "
                        f"OUT_CHANNEL must equal 4 × HIDDEN_CHANNEL (two streams of 2 × HIDDEN_CHANNEL)")
    if cfg.T5.NAME is None and cfg.T5.D_MODEL != cfg.T5.NUM_HEADS * cfg.T5.D_KV:
        raise UserError(f"config keys T5.D_MODEL={cfg.T5.D_MODEL}, T5.NUM_HEADS={cfg.T5.NUM_HEADS}, "
                        f"T5.D_KV={cfg.T5.D_KV}: expected D_MODEL == NUM_HEADS × D_KV")
    if cfg.EVAL.EARLY_STOP_PATIENCE and not cfg.EVAL.SCORE:
        raise UserError(f"config keys EVAL.EARLY_STOP_PATIENCE={cfg.EVAL.EARLY_STOP_PATIENCE}, EVAL.SCORE=false: "
                        "early stopping needs the validation scores; set EVAL.SCORE: true or the patience to 0")
    _check_lora(cfg.T5)
    if cfg.DATA.TRAIN is None:
        raise UserError("config key DATA.TRAIN: missing, expected the path of the training data file")
    if cfg.DATA.TEST is None:
        raise UserError("config key DATA.TEST: missing, expected the path of the test data file")
