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
from engine import checkpoint as ckpt
from engine.config import Config
from engine.distributed import DistInfo, broadcast_object
from common.errors import UserError, sample_names
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
        standards = load_standards(cfg.path(cfg.DATA.STANDARD), cfg.DATA.MAX_FRAMES)
    kwargs = dict(pretrain=cfg.TASK.PRETRAIN, branch=cfg.BRANCH, segment=cfg.ALIGNMENT.REFERENCE_SEGMENT,
                  standards=standards, max_frames=cfg.DATA.MAX_FRAMES)
    train_clips = load_dataset(cfg.path(cfg.DATA.TRAIN), **kwargs) if with_train else None
    test_clips = load_dataset(cfg.path(cfg.DATA.TEST), **kwargs)
    return train_clips, test_clips, standards


def subtraction_dim(clips: list[dict], branch: int) -> int:
    return int(clips[0]["subtraction"].shape[-1]) if branch == 2 else 0


def resolve_init_weights(cfg: Config) -> Optional[Path]:
    """Initial weights of a new run: WEIGHT_PATH (a checkpoint file, or a folder → its newest valid
    checkpoint); for finetuning without WEIGHT_PATH, the newest valid one in pretrain_checkpoints/."""
    if cfg.WEIGHT_PATH:
        return ckpt.checkpoint_file(cfg.path(cfg.WEIGHT_PATH), "config key WEIGHT_PATH")
    if cfg.TASK.PRETRAIN:
        return None
    folder = cfg.logdir / "pretrain_checkpoints"
    newest = ckpt.newest_valid_checkpoint(folder)
    if newest is None:
        log.warning("finetuning without pretrained weights: no valid checkpoint in %s and WEIGHT_PATH is not "
                    "set; the model starts from random weights", folder)
    return newest


# Config keys that fix the shapes of the loaded tensors: pretraining and finetuning must agree on them.
SIZE_KEYS = ("HIDDEN_CHANNEL", "OUT_CHANNEL", "T5.NAME", "T5.D_MODEL", "T5.NUM_LAYERS", "T5.NUM_HEADS",
             "T5.D_KV", "T5.D_FF")


_ABSENT = object()


def _lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _ABSENT
        tree = tree[part]
    return tree


def check_weights_file(state, source: Path) -> dict:
    """A checkpoint written by this trainer: a dict with the model tensors and the tokenizer."""
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise UserError(f"{source}: not a Motion2Text checkpoint (no 'model' state dict); give a checkpoint "
                        f"written by train_t5_stagcn.py")
    if not isinstance(state.get("tokenizer_json"), str):
        raise UserError(f"{source}: the checkpoint carries no tokenizer ('tokenizer_json'), so its T5 "
                        f"vocabulary cannot be matched; give a checkpoint written by train_t5_stagcn.py")
    return state


def check_architecture(cfg: Config, state: dict, source: Path, fix: str, keys=SIZE_KEYS) -> None:
    """Name the first config key whose value differs from the one the weights were trained with."""
    saved = state.get("config")
    if not isinstance(saved, dict):
        return  # no stored config: the strict state-dict load still checks every shape
    ours = cfg.to_dict()
    for key in keys:
        if key.startswith("T5.") and key != "T5.NAME" and cfg.T5.NAME is not None:
            continue  # sizes of a named T5 come from its own config
        theirs, mine = _lookup(saved, key), _lookup(ours, key)
        if theirs is not _ABSENT and theirs != mine:
            raise UserError(f"{source}: trained with {key}={theirs!r}, this config has {key}={mine!r}; {fix}")


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
    """Load everything but the projection (its input width depends on the branch); report what was skipped.

    Every other tensor must be there with the same shape: a partly loaded T5 or encoder would silently
    train from a half-random model."""
    own = model.state_dict()
    weights = state["model"]
    skipped = sorted(k for k in weights if k.startswith("projection."))
    mismatched = [k for k, v in weights.items() if k in own and not k.startswith("projection.") and own[k].shape != v.shape]
    if mismatched:
        k = mismatched[0]
        raise UserError(f"{source}: tensor {k} has shape {tuple(weights[k].shape)}, this config builds "
                        f"{tuple(own[k].shape)}; HIDDEN_CHANNEL/OUT_CHANNEL and T5.* sizes must match the pretraining config")
    missing = sorted(k for k in own if k not in weights and not k.startswith("projection."))
    unexpected = sorted(k for k in weights if k not in own and not k.startswith("projection."))
    if missing or unexpected:
        what = (f"{len(missing)} tensors of this model are not in it (e.g. {missing[0]})" if missing else
                f"{len(unexpected)} of its tensors are not in this model (e.g. {unexpected[0]})")
        raise UserError(f"{source}: {what}; HIDDEN_CHANNEL/OUT_CHANNEL and T5.* sizes must match the pretraining config")
    loadable = {k: v for k, v in weights.items() if not k.startswith("projection.")}
    model.load_state_dict(loadable, strict=False)
    fresh = sorted(k for k in own if k.startswith("projection."))
    log.info("finetuning from %s: loaded %d tensors; skipped %d projection tensors of the checkpoint (%s), "
             "the projection (%d tensors) starts fresh", source, len(loadable), len(skipped),
             ", ".join(skipped[:4]) + (" …" if len(skipped) > 4 else ""), len(fresh))


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
    resume_state = ckpt.load_checkpoint(resume_path) if resume_path else None
    if resume_state is not None:
        check_weights_file(resume_state, resume_path)
        check_architecture(cfg, resume_state, resume_path, "a run resumes with the sizes it started with: restore "
                           "the value, or train the new size in a new experiment folder")
    init_path = None if resume_path else resolve_init_weights(cfg)
    init_state = check_weights_file(ckpt.load_checkpoint(init_path), init_path) if init_path else None
    if init_state is not None:
        check_architecture(cfg, init_state, init_path, "the sizes must match the pretraining config to load its weights")
    tokenizer = make_tokenizer(cfg, resume_state or init_state, train_clips, dist)
    seed_everything(cfg.SEED)
    model = build_motion2text(cfg, tokenizer, subtraction_dim(train_clips, cfg.BRANCH), standards)
    if resume_state is not None:
        try:
            model.load_state_dict(resume_state["model"])
        except RuntimeError as e:  # a checkpoint without its config, or one of another model
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            raise UserError(f"{resume_path}: its weights do not fit the model this config builds "
                            f"({' '.join(lines[1:3])[:300]}); resume with the config the run started with") from None
        log.info("resuming from %s (epoch %d, step %d)", resume_path, resume_state["epoch"],
                 resume_state["global_step"])
    elif init_state is not None:
        load_pretrained_weights(model, init_state, init_path)
    segment = cfg.ALIGNMENT.REFERENCE_SEGMENT
    train_retrieved, test_retrieved = retrieved_texts(cfg, train_clips, test_clips)
    label_index = cfg.RETRIEVAL.LABEL_INDEX if cfg.RETRIEVAL.LABEL_INDEX >= 0 else None
    train_set = TrainDataset(train_clips, use_augmented_labels=cfg.DATA.USE_AUGMENTED_LABELS, segment=segment,
                             retrieved=train_retrieved, label_index=label_index, tokenizer=tokenizer,
                             max_label_tokens=cfg.DATA.MAX_LABEL_TOKENS)
    test_set = EvalDataset(test_clips, segment=segment, retrieved=test_retrieved)
    if cfg.EVAL.EARLY_STOP_PATIENCE and not all(c.get("labels") for c in test_clips):
        raise UserError(f"config key EVAL.EARLY_STOP_PATIENCE={cfg.EVAL.EARLY_STOP_PATIENCE}: DATA.TEST {cfg.DATA.TEST} "
                        "has clips without labels, so there is no validation score to stop on")
    return Experiment(cfg, train_set, test_set, model, resume_state, init_path)


def retrieved_texts(cfg: Config, train_clips: list[dict], test_clips: list[dict]):
    """RETRIEVAL.NEIGHBOURS > 0: the retrieval prompt of each training clip (never itself; with EXCLUDE PERSON
    never its person) and of each test clip; (None, None) when off."""
    k, exclude, slot = cfg.RETRIEVAL.NEIGHBOURS, cfg.RETRIEVAL.EXCLUDE, cfg.RETRIEVAL.LABEL_INDEX
    if not k:
        return None, None
    slot = slot if slot >= 0 else None
    short = [c["video_name"] for c in train_clips if slot is not None and len(c.get("labels") or []) <= slot]
    if short:
        raise UserError(f"config key RETRIEVAL.LABEL_INDEX={slot}: {len(short)} training clip(s) have no label at "
                        f"that position ({sample_names(short)}); expected every clip to have at least {slot + 1}")
    return (retrieval_prompts(train_clips, train_clips, k, exclude, slot),
            retrieval_prompts(train_clips, test_clips, k, slot=slot))


def parameter_counts(model: MotionToText) -> dict[str, int]:
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"stagcn": count(model.encoder), "projection": count(model.projection), "t5": count(model.t5),
            "total": count(model)}


def move_batch(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
