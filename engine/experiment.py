"""Build one experiment from its config: data, tokenizer, model, and where its weights come from.

Weights, in order of precedence: this experiment's newest valid checkpoint (resume), else for finetuning
WEIGHT_PATH or the newest checkpoint in pretrain_checkpoints/ (all but the projection), else fresh.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from dataloaders.datasets import EvalDataset, TrainDataset, load_dataset
from dataloaders.formats import load_standards
from dataloaders.retrieval import retrieval_prompts
from dataloaders.splits import person_of
from common.errors import UserError, sample_names
from engine import checkpoint as ckpt
from engine.config import Config
from engine.distributed import DistInfo, broadcast_object
from engine.weights import (build_model, changed_keys, check_architecture, load_pretrained_weights, load_weights,
                            read_weights_file, resolve_init_weights)
from models.lora import freeze_parameters, parameter_share
from models.motion2text import MotionToText
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


def load_data(cfg: Config):
    """(training clips, test clips, standards or None), each checked for this config."""
    standards = None
    if cfg.BRANCH == 1 and not cfg.TASK.PRETRAIN:
        if cfg.DATA.STANDARD is None:
            raise UserError("config key DATA.STANDARD: missing, BRANCH 1 finetuning needs the standards file")
        standards = load_standards(cfg.path(cfg.DATA.STANDARD), cfg.DATA.MAX_FRAMES)
    kwargs = dict(pretrain=cfg.TASK.PRETRAIN, branch=cfg.BRANCH, segment=cfg.ALIGNMENT.REFERENCE_SEGMENT,
                  standards=standards, max_frames=cfg.DATA.MAX_FRAMES)
    train_clips = load_dataset(cfg.path(cfg.DATA.TRAIN), **kwargs)
    test_clips = load_dataset(cfg.path(cfg.DATA.TEST), **kwargs)
    return train_clips, test_clips, standards


def subtraction_dim(clips: list[dict], branch: int) -> int:
    return int(clips[0]["subtraction"].shape[-1]) if branch == 2 else 0


# Settings a resumed run cannot change: the optimizer state and the schedule carry the old ones (AdamW's
# learning rate and weight decay live in its state), and the batch size fixes which batches an epoch has.
# OPTIMIZER.MAX_EPOCH and GRAD_CLIP may change: the schedule decays to 0 at the new last epoch; the clip is read
# at every step.
FIXED_ON_RESUME = ("OPTIMIZER.LR", "OPTIMIZER.WEIGHT_DECAY", "OPTIMIZER.WARMUP_STEPS", "OPTIMIZER.GRAD_ACCUM_STEPS",
                   "DATA.BATCH_SIZE", "DATA.LABEL_INDEX")


def check_resume_settings(cfg: Config, state: dict, source: Path) -> None:
    """Refuse a resume whose config changed a setting the checkpoint fixes, naming every such key."""
    changed = [f"{key}={mine!r} (checkpoint: {theirs!r})"
               for key, theirs, mine in changed_keys(cfg, state, FIXED_ON_RESUME)]
    if changed:
        raise UserError(f"{source}: resuming with {'; '.join(changed)}: a resumed run keeps these settings of the "
                        "checkpoint; restore them, or train with the new values in a new experiment folder")


def make_tokenizer(cfg: Config, state: Optional[dict], train_clips: list[dict], dist: DistInfo):
    """The tokenizer travels with the weights; a fresh offline run trains one on its training captions."""
    if state is not None:
        return tokenizer_from_json(state["tokenizer_json"], "the checkpoint's tokenizer_json")
    if cfg.T5.NAME is not None:
        return load_pretrained_tokenizer(cfg.T5.NAME)
    text = None
    if dist.is_main:
        texts = [cfg.prompt.strip()] + [lab for c in train_clips for lab in c["labels"] + c.get("augmented_labels", [])]
        text = train_caption_tokenizer(texts, cfg.T5.VOCAB_SIZE).backend_tokenizer.to_str()
    return tokenizer_from_json(broadcast_object(text))  # every rank uses rank 0's tokenizer


def seed_everything(seed: int) -> None:
    """Same seed, same initial weights in every process and every run (torch's default seed is not ours)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_experiment(cfg: Config, dist: DistInfo) -> Experiment:
    train_clips, test_clips, standards = load_data(cfg)
    # Rank 0 decides which checkpoint to resume from, so all ranks take the same path (a checkpoint that is
    # only visible on one node must not make the ranks disagree).
    resume_path = broadcast_object(ckpt.newest_valid_checkpoint(cfg.checkpoint_dir) if dist.is_main else None)
    if resume_path is not None and not resume_path.is_file():
        raise UserError(f"{resume_path}: rank 0 resumes from this checkpoint but rank {dist.rank} cannot see it; "
                        f"the experiment folder must be on a file system shared by all nodes")
    resume_state = read_weights_file(resume_path) if resume_path else None
    if resume_state is not None:
        check_architecture(cfg, resume_state, resume_path, "a run resumes with the sizes it started with: restore "
                           "the value, or train the new size in a new experiment folder")
        check_resume_settings(cfg, resume_state, resume_path)
    init_path = None if resume_path else resolve_init_weights(cfg)
    init_state = read_weights_file(init_path) if init_path else None
    if init_state is not None:
        check_architecture(cfg, init_state, init_path, "the sizes must match the pretraining config to load its weights")
    tokenizer = make_tokenizer(cfg, resume_state or init_state, train_clips, dist)
    seed_everything(cfg.SEED)
    model = build_model(cfg, tokenizer, subtraction_dim(train_clips, cfg.BRANCH), standards,
                        state=resume_state or init_state, persons={person_of(c["video_name"]) for c in train_clips})
    if resume_state is not None:
        load_weights(model, resume_state, resume_path, "resume with the config the run started with")
        log.info("resuming from %s (epoch %d, step %d)", resume_path, resume_state["epoch"],
                 resume_state["global_step"])
    elif init_state is not None:
        load_pretrained_weights(model, init_state, init_path)
    share = freeze_parameters(model, cfg.T5.FREEZE)
    if share["trainable"] < share["total"]:
        log.info("training %d of %d parameters (%.2f%%; T5.FREEZE=%s%s)", share["trainable"], share["total"],
                 100 * share["trainable"] / share["total"], cfg.T5.FREEZE,
                 f", LoRA rank {cfg.T5.LORA.RANK}" if model.config.lora else "")
    segment = cfg.ALIGNMENT.REFERENCE_SEGMENT
    label_index = target_label_index(cfg, train_clips)
    train_retrieved, test_retrieved = retrieved_texts(cfg, train_clips, test_clips, label_index)
    train_set = TrainDataset(train_clips, use_augmented_labels=cfg.DATA.USE_AUGMENTED_LABELS, segment=segment,
                             retrieved=train_retrieved, label_index=label_index, tokenizer=tokenizer,
                             max_label_tokens=cfg.DATA.MAX_LABEL_TOKENS)
    test_set = EvalDataset(test_clips, segment=segment, retrieved=test_retrieved)
    if cfg.EVAL.EARLY_STOP_PATIENCE and not all(c.get("labels") for c in test_clips):
        raise UserError(f"config key EVAL.EARLY_STOP_PATIENCE={cfg.EVAL.EARLY_STOP_PATIENCE}: DATA.TEST {cfg.DATA.TEST} "
                        "has clips without labels, so there is no validation score to stop on")
    return Experiment(cfg, train_set, test_set, model, resume_state, init_path)


def target_label_index(cfg: Config, train_clips: list[dict]) -> Optional[int]:
    """The one label position training targets (DATA.LABEL_INDEX, or RETRIEVAL.LABEL_INDEX, which implies it),
    None for every label; a training clip without a label there is an error naming it, not a clip dropped."""
    if cfg.DATA.LABEL_INDEX >= 0:
        key, slot = "DATA.LABEL_INDEX", cfg.DATA.LABEL_INDEX
    elif cfg.RETRIEVAL.LABEL_INDEX >= 0:
        key, slot = "RETRIEVAL.LABEL_INDEX", cfg.RETRIEVAL.LABEL_INDEX
    else:
        return None
    short = [c["video_name"] for c in train_clips if len(c.get("labels") or []) <= slot]
    if short:
        raise UserError(f"config key {key}={slot}: {len(short)} training clip(s) have no label at that position "
                        f"({sample_names(short)}); expected every clip to have at least {slot + 1}")
    return slot


def retrieved_texts(cfg: Config, train_clips: list[dict], test_clips: list[dict], label_index: Optional[int]):
    """RETRIEVAL.NEIGHBOURS > 0: the retrieval prompt of each training clip (never itself; with EXCLUDE PERSON
    never its person) and of each test clip; (None, None) when off. `label_index` is `target_label_index`'s
    (checked against the training clips); the prompt shows that label only with RETRIEVAL.LABEL_INDEX set."""
    k, exclude = cfg.RETRIEVAL.NEIGHBOURS, cfg.RETRIEVAL.EXCLUDE
    if not k:
        return None, None
    slot = label_index if cfg.RETRIEVAL.LABEL_INDEX >= 0 else None
    return (retrieval_prompts(train_clips, train_clips, k, exclude, slot),
            retrieval_prompts(train_clips, test_clips, k, slot=slot))


def parameter_counts(model: MotionToText) -> dict[str, int]:
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"stagcn": count(model.encoder), "projection": count(model.projection), "t5": count(model.t5),
            **parameter_share(model)}  # "trainable" and "total"
