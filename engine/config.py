"""The one config schema: every key of the original (design §3) plus the later ones, with defaults.

A config is a YAML file of nested UPPER_CASE keys. Unknown keys and wrong types are errors that name the
key and the closest valid one (a typo must never fall back to a default silently).
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import yaml

from common.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class TaskConfig:
    PRETRAIN: bool = True  # True: motion descriptions, pretrain_checkpoints/; False: instructions, checkpoints/


@dataclass
class TransformationConfig:
    REDUCTION_POLICY: Literal["TIME_POOL", "SKELETON_POOL", "ORIGIN"] = "TIME_POOL"
    PROJECTION_DROPOUT: float = 0.1
    # Standardise T5's input tokens (the projection's output) across clips per joint, + a learned joint
    # embedding: not in the original; keeps what differs between clips from drowning in each joint's offset.
    TOKEN_NORM: bool = False


@dataclass
class DataConfig:
    TRAIN: Optional[str] = None  # dataset pickle (.pkl) or torch.save file
    TEST: Optional[str] = None
    STANDARD: Optional[str] = None  # standards pickle; required for finetuning with BRANCH 1
    BATCH_SIZE: int = 6  # per process
    EVAL_BATCH_SIZE: int = 32  # per process, generation
    NUM_WORKERS: int = 0
    USE_AUGMENTED_LABELS: bool = False  # also train on `augmented_labels` paraphrases
    BUCKET_BY_LENGTH: bool = True  # group clips of similar length into a batch (less padding)
    MAX_FRAMES: int = 1000  # a longer clip is refused, naming it (memory grows with T; HumanML3D clips <= 196)
    MAX_LABEL_TOKENS: int = 128  # a longer label is cropped to this many tokens, with a warning naming the clip


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
    NEIGHBOURS: int = 0
    # Training clips retrieve neither themselves nor, with PERSON, any clip of their own person (the number
    # before the first `_` of video_name): PERSON when test persons are new, CLIP when they are seen in training.
    EXCLUDE: Literal["CLIP", "PERSON"] = "CLIP"
    # -1: prompt = all labels of the neighbours, train on every label. i >= 0: prompt = the neighbours' i-th
    # labels, train on each clip's i-th label only (in BX a label position is one annotator, whose remarks on
    # one person repeat: `evaluate.py --baselines` prints the leave-one-out evidence per position).
    LABEL_INDEX: int = -1


@dataclass
class OptimizerConfig:
    LR: float = 1e-4
    MAX_EPOCH: int = 50
    WARMUP_STEPS: int = 5000  # optimizer steps of linear warmup, then linear decay to 0
    WEIGHT_DECAY: float = 0.01
    GRAD_CLIP: float = 1.0  # max global grad norm; 0 disables
    GRAD_ACCUM_STEPS: int = 1


@dataclass
class TrainConfig:
    PRECISION: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA if supported, else fp32
    SANITY_EVAL: bool = True  # evaluate the untrained/loaded model before the first epoch
    LOG_EVERY: int = 10  # optimizer steps between tensorboard scalars
    MAX_BAD_STEPS: int = 5  # consecutive non-finite losses tolerated (step skipped) before aborting
    PG_TIMEOUT_S: int = 1800  # process-group timeout: a crashed rank never hangs the others forever


@dataclass
class CheckpointConfig:
    KEEP_LAST: int = 3  # newest k checkpoints kept (the last one of a finished run is always kept)


@dataclass
class EvalConfig:
    METRIC_PERIOD: int = 0  # evaluate every N epochs; 0 = on the checkpoint schedule
    METEOR: bool = True  # METEOR needs Java and ~15 s to load its paraphrase table once per process
    SCORE: bool = True  # False: only write predictions (a node without Java); score later with evaluate.py --exp
    EARLY_STOP_PATIENCE: int = 0  # stop after N evaluations without a better CIDEr; 0 = train every epoch


@dataclass
class GenerationConfig:
    NUM_BEAMS: int = 1
    REPETITION_PENALTY: float = 3.5
    LENGTH_PENALTY: float = 1.0
    MAX_LENGTH: int = 50  # new tokens after the prompt


@dataclass
class T5Config:
    NAME: Optional[str] = None  # "t5-base" or a local folder; None builds a T5 from the sizes below
    D_MODEL: int = 512
    NUM_LAYERS: int = 6  # encoder and decoder layers each
    NUM_HEADS: int = 8
    D_KV: int = 64
    D_FF: int = 2048
    DROPOUT: float = 0.1
    VOCAB_SIZE: int = 4000  # byte-level BPE trained on the training labels (config-built T5 only)
    # Training only: each teacher-forced decoder input token after the prompt becomes <unk> with this
    # probability, so the decoder cannot write from its own context alone and must read the motion.
    WORD_DROPOUT: float = 0.0


@dataclass
class Config:
    HIDDEN_CHANNEL: int = 32  # first feature-extractor width per stream (design §3)
    OUT_CHANNEL: int = 128  # concatenated extractor output = first attention/perception width
    DROPOUT: float = 0.5  # ST-GC block dropout
    BRANCH: Literal[0, 1, 2] = 0  # 0 learner only, 1 + reference alignment, 2 + external per-frame features
    LOGDIR: Optional[str] = None  # experiment folder; defaults to the folder holding config.yaml
    WEIGHT_PATH: Optional[str] = None  # finetune init; default: newest checkpoint in pretrain_checkpoints/
    SEED: int = 42
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
        from dataloaders.datasets import FINETUNE_PROMPT, PRETRAIN_PROMPT

        return PRETRAIN_PROMPT if self.TASK.PRETRAIN else FINETUNE_PROMPT

    @property
    def checkpoint_dir(self) -> Path:
        return self.logdir / ("pretrain_checkpoints" if self.TASK.PRETRAIN else "checkpoints")

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


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value, tp):
    """Check `value` against annotation `tp`; ints are accepted for floats. Raise UserError otherwise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        try:
            return _coerce(key, value, inner)
        except UserError:
            pass
    elif origin is Literal:
        if value in typing.get_args(tp) and type(value) is type(typing.get_args(tp)[0]):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads `1e-4` (no dot) as a string: YAML 1.1 quirk
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    raise UserError(f"config key {key}: got {value!r} ({type(value).__name__}), expected {_type_name(tp)}")


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise UserError(f"config key {prefix.rstrip('.') or '<root>'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "config_dir"}
    kwargs = {}
    for key, value in data.items():
        full = prefix + str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys here: {', '.join(fields)}"
            raise UserError(f"unknown config key {full}{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, full + ".")
        else:
            kwargs[key] = _coerce(full, value, tp)
    return cls(**kwargs)


def _check_ranges(cfg: Config) -> None:
    positive = {
        "HIDDEN_CHANNEL": cfg.HIDDEN_CHANNEL, "OUT_CHANNEL": cfg.OUT_CHANNEL,
        "DATA.BATCH_SIZE": cfg.DATA.BATCH_SIZE, "DATA.EVAL_BATCH_SIZE": cfg.DATA.EVAL_BATCH_SIZE,
        "DATA.MAX_FRAMES": cfg.DATA.MAX_FRAMES, "DATA.MAX_LABEL_TOKENS": cfg.DATA.MAX_LABEL_TOKENS,
        "OPTIMIZER.MAX_EPOCH": cfg.OPTIMIZER.MAX_EPOCH, "OPTIMIZER.GRAD_ACCUM_STEPS": cfg.OPTIMIZER.GRAD_ACCUM_STEPS,
        "CHECKPOINT.KEEP_LAST": cfg.CHECKPOINT.KEEP_LAST, "GENERATION.NUM_BEAMS": cfg.GENERATION.NUM_BEAMS,
        "GENERATION.MAX_LENGTH": cfg.GENERATION.MAX_LENGTH, "T5.D_MODEL": cfg.T5.D_MODEL,
        "T5.NUM_LAYERS": cfg.T5.NUM_LAYERS, "T5.NUM_HEADS": cfg.T5.NUM_HEADS, "T5.D_KV": cfg.T5.D_KV,
        "T5.D_FF": cfg.T5.D_FF, "TRAIN.LOG_EVERY": cfg.TRAIN.LOG_EVERY, "TRAIN.PG_TIMEOUT_S": cfg.TRAIN.PG_TIMEOUT_S,
        "OPTIMIZER.LR": cfg.OPTIMIZER.LR, "GENERATION.REPETITION_PENALTY": cfg.GENERATION.REPETITION_PENALTY,
    }
    for key, v in positive.items():
        if not v > 0:
            raise UserError(f"config key {key}: got {v!r}, expected a value > 0")
    non_negative = {
        "DATA.NUM_WORKERS": cfg.DATA.NUM_WORKERS, "OPTIMIZER.WARMUP_STEPS": cfg.OPTIMIZER.WARMUP_STEPS,
        "OPTIMIZER.WEIGHT_DECAY": cfg.OPTIMIZER.WEIGHT_DECAY, "OPTIMIZER.GRAD_CLIP": cfg.OPTIMIZER.GRAD_CLIP,
        "EVAL.METRIC_PERIOD": cfg.EVAL.METRIC_PERIOD, "TRAIN.MAX_BAD_STEPS": cfg.TRAIN.MAX_BAD_STEPS,
        "EVAL.EARLY_STOP_PATIENCE": cfg.EVAL.EARLY_STOP_PATIENCE, "RETRIEVAL.NEIGHBOURS": cfg.RETRIEVAL.NEIGHBOURS,
    }
    if cfg.RETRIEVAL.LABEL_INDEX < -1:
        raise UserError(f"config key RETRIEVAL.LABEL_INDEX: got {cfg.RETRIEVAL.LABEL_INDEX!r}, expected -1 (all labels) "
                        "or a label position >= 0")
    if cfg.RETRIEVAL.LABEL_INDEX >= 0 and not cfg.RETRIEVAL.NEIGHBOURS:
        raise UserError(f"config key RETRIEVAL.LABEL_INDEX={cfg.RETRIEVAL.LABEL_INDEX}: needs RETRIEVAL.NEIGHBOURS > 0 "
                        "(it picks which label of the retrieved clips is the prompt); set it or LABEL_INDEX to -1")
    for key, v in non_negative.items():
        if v < 0:
            raise UserError(f"config key {key}: got {v!r}, expected a value >= 0")
    for key, v in {"DROPOUT": cfg.DROPOUT, "TRANSFORMATION.PROJECTION_DROPOUT": cfg.TRANSFORMATION.PROJECTION_DROPOUT,
                   "T5.DROPOUT": cfg.T5.DROPOUT, "T5.WORD_DROPOUT": cfg.T5.WORD_DROPOUT}.items():
        if not 0.0 <= v < 1.0:
            raise UserError(f"config key {key}: got {v!r}, expected a probability in [0, 1)")
    if cfg.HIDDEN_CHANNEL * 2 * 2 != cfg.OUT_CHANNEL:
        # Two streams each ending at 2×HIDDEN_CHANNEL are concatenated into OUT_CHANNEL (design §3: 32 → 128).
        raise UserError(f"config keys HIDDEN_CHANNEL={cfg.HIDDEN_CHANNEL}, OUT_CHANNEL={cfg.OUT_CHANNEL}: "
                        f"OUT_CHANNEL must equal 4 × HIDDEN_CHANNEL (two streams of 2 × HIDDEN_CHANNEL)")
    if cfg.T5.NAME is None and cfg.T5.D_MODEL != cfg.T5.NUM_HEADS * cfg.T5.D_KV:
        raise UserError(f"config keys T5.D_MODEL={cfg.T5.D_MODEL}, T5.NUM_HEADS={cfg.T5.NUM_HEADS}, "
                        f"T5.D_KV={cfg.T5.D_KV}: expected D_MODEL == NUM_HEADS × D_KV")
    if cfg.EVAL.EARLY_STOP_PATIENCE and not cfg.EVAL.SCORE:
        raise UserError(f"config keys EVAL.EARLY_STOP_PATIENCE={cfg.EVAL.EARLY_STOP_PATIENCE}, EVAL.SCORE=false: "
                        "early stopping needs the validation scores; set EVAL.SCORE: true or the patience to 0")
    if cfg.DATA.TRAIN is None:
        raise UserError("config key DATA.TRAIN: missing, expected the path of the training data file")
    if cfg.DATA.TEST is None:
        raise UserError("config key DATA.TEST: missing, expected the path of the test data file")


def parse_overrides(items: list[str]) -> dict:
    """`["OPTIMIZER.LR=3e-4", "DATA.BATCH_SIZE=8"]` → nested dict, values parsed as YAML scalars."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. OPTIMIZER.LR=3e-4")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return out


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def config_from_dict(data: dict, config_dir: Optional[Path] = None) -> Config:
    cfg = _build(Config, data or {}, "")
    cfg.config_dir = config_dir
    _check_ranges(cfg)
    return cfg


def load_config(path: str | os.PathLike, overrides: Optional[list[str]] = None) -> Config:
    path = Path(path)
    try:  # read first, then tell why not: is_file() is False (or raises) for an unreadable folder too
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        raise UserError(f"{path}: config file not found, expected results/<exp>/config.yaml") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, expected the config file results/<exp>/config.yaml") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read config ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start}), expected YAML") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}: not valid YAML{where} ({what})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of config keys at the top level")
    data = _merge(data, parse_overrides(overrides or []))
    try:
        return config_from_dict(data, config_dir=path.resolve().parent)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config (every key, defaults filled in) so a run can be reproduced exactly."""
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
