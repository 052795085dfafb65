"""Build one experiment from its config: data, tokenizer, model, and where its weights come from.

Weights, in order of precedence: this experiment's newest valid checkpoint (resume), else for finetuning
WEIGHT_PATH or the newest checkpoint in pretrain_checkpoints/ (all but the projection), else fresh.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from dataloaders.datasets import EvalDataset, TrainDataset, load_dataset
from dataloaders.formats import load_standards
from engine import checkpoint as ckpt
from engine.config import Config
from engine.distributed import DistInfo, broadcast_object
from engine.errors import UserError
from models.motion2text import MotionToText, build_motion2text
from models.tokenizer import load_pretrained_tokenizer, tokenizer_from_json, train_caption_tokenizer

log = logging.getLogger("motion2text")


@dataclass
class Experiment:
    cfg: Config
    train_set: TrainDataset
    test_set: EvalDataset
    model: MotionToText
    resume_state: Optional[dict]  # a checkpoint of this experiment to continue from
    init_source: Optional[Path]  # pretrain weights loaded into a new finetuning run


def load_data(cfg: Config, with_train: bool = True):
    standards = None
    if cfg.BRANCH == 1 and not cfg.TASK.PRETRAIN:
        if cfg.DATA.STANDARD is None:
            raise UserError("config key DATA.STANDARD: missing, BRANCH 1 finetuning needs the standards file")
        standards = load_standards(cfg.path(cfg.DATA.STANDARD))
    kwargs = dict(pretrain=cfg.TASK.PRETRAIN, branch=cfg.BRANCH, segment=cfg.ALIGNMENT.REFERENCE_SEGMENT,
                  standards=standards)
    train_clips = load_dataset(cfg.path(cfg.DATA.TRAIN), **kwargs) if with_train else None
    test_clips = load_dataset(cfg.path(cfg.DATA.TEST), **kwargs)
    return train_clips, test_clips, standards


def subtraction_dim(clips: list[dict], branch: int) -> int:
    return int(clips[0]["subtraction"].shape[-1]) if branch == 2 else 0


def resolve_init_weights(cfg: Config) -> Optional[Path]:
    """Initial weights of a new run: WEIGHT_PATH (a checkpoint file, or a folder → its newest valid
    checkpoint); for finetuning without WEIGHT_PATH, the newest valid one in pretrain_checkpoints/."""
    if cfg.WEIGHT_PATH:
        path = cfg.path(cfg.WEIGHT_PATH)
        if path.is_dir():
            newest = ckpt.newest_valid_checkpoint(path)
            if newest is None:
                raise UserError(f"config key WEIGHT_PATH: no valid checkpoint in folder {path}")
            return newest
        if not path.is_file():
            raise UserError(f"config key WEIGHT_PATH: {path} not found, expected a checkpoint file or folder")
        return path
    if cfg.TASK.PRETRAIN:
        return None
    return ckpt.newest_valid_checkpoint(cfg.logdir / "pretrain_checkpoints")


def make_tokenizer(cfg: Config, state: Optional[dict], train_clips: list[dict], dist: DistInfo):
    """The tokenizer travels with the weights; a fresh offline run trains one on its training captions."""
    if state is not None:
        return tokenizer_from_json(state["tokenizer_json"])
    if cfg.T5.NAME is not None:
        return load_pretrained_tokenizer(cfg.T5.NAME)
    text = None
    if dist.is_main:
        texts = [cfg.prompt.strip()] + [lab for c in train_clips for lab in c["labels"] + c.get("augmented_labels", [])]
        text = train_caption_tokenizer(texts, cfg.T5.VOCAB_SIZE).backend_tokenizer.to_str()
    return tokenizer_from_json(broadcast_object(text))  # every rank uses rank 0's tokenizer


def load_pretrained_weights(model: MotionToText, state: dict, source: Path) -> None:
    """Load everything but the projection (its input width depends on the branch); report what was skipped."""
    own = model.state_dict()
    weights = state["model"]
    skipped = sorted(k for k in weights if k.startswith("projection."))
    mismatched = [k for k, v in weights.items() if k in own and not k.startswith("projection.") and own[k].shape != v.shape]
    if mismatched:
        k = mismatched[0]
        raise UserError(f"{source}: tensor {k} has shape {tuple(weights[k].shape)}, this config builds "
                        f"{tuple(own[k].shape)}; HIDDEN_CHANNEL/OUT_CHANNEL and T5.* sizes must match the pretraining config")
    loadable = {k: v for k, v in weights.items() if k in own and not k.startswith("projection.")}
    result = model.load_state_dict(loadable, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("projection.")]
    log.info("finetuning from %s: loaded %d tensors, skipped %d projection tensors (%s), missing %d %s",
             source, len(loadable), len(skipped), ", ".join(skipped[:4]) + (" …" if len(skipped) > 4 else ""),
             len(missing), missing[:5] if missing else "")
    unexpected = [k for k in weights if k not in own]
    if unexpected:
        log.warning("finetuning from %s: %d tensors not in this model were ignored: %s", source, len(unexpected), unexpected[:5])


def build_experiment(cfg: Config, dist: DistInfo) -> Experiment:
    train_clips, test_clips, standards = load_data(cfg)
    resume_path = ckpt.newest_valid_checkpoint(cfg.checkpoint_dir)
    resume_state = ckpt.load_checkpoint(resume_path) if resume_path else None
    init_path = None if resume_state else resolve_init_weights(cfg)
    init_state = ckpt.load_checkpoint(init_path) if init_path else None
    tokenizer = make_tokenizer(cfg, resume_state or init_state, train_clips, dist)
    model = build_motion2text(cfg, tokenizer, subtraction_dim(train_clips, cfg.BRANCH), standards)
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        log.info("resuming from %s (epoch %d, step %d)", resume_path, resume_state["epoch"],
                 resume_state["global_step"])
    elif init_state is not None:
        load_pretrained_weights(model, init_state, init_path)
    segment = cfg.ALIGNMENT.REFERENCE_SEGMENT
    train_set = TrainDataset(train_clips, use_augmented_labels=cfg.DATA.USE_AUGMENTED_LABELS, segment=segment)
    test_set = EvalDataset(test_clips, segment=segment)
    return Experiment(cfg, train_set, test_set, model, resume_state, init_path)


def parameter_counts(model: MotionToText) -> dict[str, int]:
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"stagcn": count(model.encoder), "projection": count(model.projection), "t5": count(model.t5),
            "total": count(model)}


def move_batch(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
