"""Load a trained model for inference: experiment config + checkpoint → model, data → captions.

Where each piece comes from (one rule, used by `evaluate.py --checkpoint`):

* the **config** is the experiment's ``config.yaml`` (plus ``--set`` overrides): data paths, generation
  settings (beams, penalties, max length) and the evaluation batch size are the user's to change after
  training. The architecture keys (``SIZE_KEYS`` plus branch, task and policy) must equal those stored in the checkpoint's
  ``"config"``; a difference is an error naming the key, never a silently mis-built model.
* the **tokenizer** is the checkpoint's ``tokenizer_json`` (the one the weights were trained with);
* the **weights** are the checkpoint's ``"model"``, loaded strictly; the branch-2 feature width is read
  from the stored projection weights.

A checkpoint is ``latest`` (newest valid one in the experiment's checkpoint folder), ``best`` (the epoch
with the best CIDEr in ``results/<exp>/metrics.json`` — or, before `evaluate.py --exp` has written it, in
the per-epoch ``jsons/metrics_epoch{N}.json`` — whose checkpoint still exists and is intact), a file, or a
folder (its newest valid checkpoint).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch

from engine import checkpoint as ckpt
from engine.config import Config
from common.errors import UserError, sample_names
from engine.experiment import SIZE_KEYS, check_architecture

log = logging.getLogger("motion2text")

# Keys that decide the shapes or the prompt of the model: they must match the checkpoint's config.




# ---- which checkpoint ----------------------------------------------------------------------------

def _valid_or_error(path: Path) -> Path:
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    reason = ckpt.verify(path)
    if reason is not None:
        raise UserError(f"{path}: invalid checkpoint: {reason}")
    return path


def resolve_checkpoint(cfg: Config, spec: str) -> Path:
    """`latest` | `best` | a checkpoint file | a folder of checkpoints → the checkpoint file to load."""
    folder = cfg.checkpoint_dir
    if spec == "latest":
        path = ckpt.newest_valid_checkpoint(folder)
        if path is None:
            found = ckpt.list_checkpoints(folder)
            why = (f"{len(found)} checkpoint file(s) there, none intact" if found
                   else "no checkpoint there" if folder.is_dir() else "the folder does not exist")
            raise UserError(f"--checkpoint latest: no valid checkpoint in {folder} ({why}); train first, "
                            "or give --checkpoint PATH")
        return path
    if spec == "best":
        return best_checkpoint(cfg)
    return _valid_or_error(ckpt.checkpoint_file(Path(spec).expanduser(), f"--checkpoint {spec}"))


def best_checkpoint(cfg: Config) -> Path:
    from metrics.report import BEST_BY, METRICS_FILE, ranked_epochs, read_experiment_metrics

    logdir = cfg.logdir
    per_epoch = read_experiment_metrics(logdir)
    if not per_epoch:
        raise UserError(f"--checkpoint best: no metrics in {logdir} ({METRICS_FILE} or jsons/metrics_epoch*.json); "
                        f"run `python evaluate.py --exp {logdir}` first, or use --checkpoint latest")
    ranked = ranked_epochs(per_epoch, BEST_BY)
    if not ranked:
        raise UserError(f"--checkpoint best: no epoch in the metrics of {logdir} has a {BEST_BY} value")
    folder = cfg.checkpoint_dir
    for epoch in ranked:
        path = folder / ckpt.checkpoint_name(epoch)
        if path.is_file() and ckpt.verify(path) is None:
            if epoch != ranked[0]:
                log.warning("best %s epoch %d has no intact checkpoint; using epoch %d, the best one that has",
                            BEST_BY, ranked[0], epoch)
            return path
    available = [p.name for p in ckpt.list_checkpoints(folder)]
    raise UserError(f"--checkpoint best: none of the scored epochs ({', '.join(map(str, ranked[:8]))}"
                    f"{', ...' if len(ranked) > 8 else ''}, best {BEST_BY} first) has an intact checkpoint in "
                    f"{folder} (available: {', '.join(available) or 'none'}; older ones are pruned by "
                    "CHECKPOINT.KEEP_LAST); use --checkpoint latest or PATH")


# ---- model ---------------------------------------------------------------------------------------

def _subtraction_dim(cfg: Config, weights: dict, source: Path) -> int:
    if cfg.BRANCH != 2:
        return 0
    w = weights.get("projection.mlp.1.weight")
    if w is None:
        raise UserError(f"{source}: no projection weights (projection.mlp.1.weight) in the checkpoint")
    return int(w.shape[1]) - 4 * cfg.OUT_CHANNEL


def load_model(cfg: Config, path: Path, device: torch.device, standards: Optional[dict] = None):
    """(model in eval mode on `device`, checkpoint state) from a checkpoint file."""
    from models.motion2text import build_motion2text
    from models.tokenizer import tokenizer_from_json

    state = ckpt.load_checkpoint(path, check_digest=True)
    if not isinstance(state, dict) or "model" not in state or "tokenizer_json" not in state:
        raise UserError(f"{path}: not a Motion2Text training checkpoint (needs 'model' and 'tokenizer_json')")
    check_architecture(cfg, state, path, "evaluate it with the config it was trained with",
                       keys=SIZE_KEYS + ("BRANCH", "TASK.PRETRAIN", "TRANSFORMATION.REDUCTION_POLICY",
                                               "RETRIEVAL.NEIGHBOURS", "RETRIEVAL.LABEL_INDEX"))
    tokenizer = tokenizer_from_json(state["tokenizer_json"])
    model = build_motion2text(cfg, tokenizer, _subtraction_dim(cfg, state["model"], path), standards)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise UserError(f"{path}: weights do not fit the model this config builds "
                        f"({' '.join(lines[1:3])[:300]})") from None
    model.to(device).eval()
    log.info("loaded %s (epoch %s)", path, state.get("epoch"))
    return model, state


# ---- data ----------------------------------------------------------------------------------------

def load_standards_for(cfg: Config) -> Optional[dict]:
    if cfg.BRANCH != 1 or cfg.TASK.PRETRAIN:
        return None
    if cfg.DATA.STANDARD is None:
        raise UserError("config key DATA.STANDARD: missing, BRANCH 1 finetuning needs the standards file")
    from dataloaders.formats import load_standards

    return load_standards(cfg.path(cfg.DATA.STANDARD), cfg.DATA.MAX_FRAMES)


def load_inference_clips(cfg: Config, path: Path, standards: Optional[dict] = None,
                         motion_type: Optional[str] = None) -> tuple[list[dict], str]:
    """Clips of `path` (dataset file or one `.npy` clip [T, 66]) checked for this model, labels optional,
    and the reference segment to use. `motion_type` fills in clips that have none (needed by BRANCH 1
    finetuning). Without the segment keys of ALIGNMENT.REFERENCE_SEGMENT the standard's window is searched."""
    from dataloaders.formats import load_clips
    from dataloaders.validation import segment_keys, validate_clips

    clips = load_clips(path, cfg.DATA.MAX_FRAMES)
    use_standard = standards is not None
    if motion_type is not None:
        if use_standard and motion_type not in standards:
            raise UserError(f"--motion-type {motion_type!r}: no standard motion for it; "
                            f"available: {', '.join(sorted(standards))}")
        for clip in clips:
            if isinstance(clip, dict) and not clip.get("motion_type"):
                clip["motion_type"] = motion_type
    if use_standard:
        lacking = [c.get("video_name", f"entry {i}") for i, c in enumerate(clips)
                   if isinstance(c, dict) and not c.get("motion_type")]
        if lacking:
            raise UserError(f"{path}: {len(lacking)} clip(s) have no 'motion_type' ({sample_names(lacking)}); BRANCH 1 "
                            "compares each clip with the standard of its technique: pass --motion-type "
                            f"(one of {', '.join(sorted(standards))})")
    segment = cfg.ALIGNMENT.REFERENCE_SEGMENT if use_standard else "NONE"
    if segment != "NONE":
        keys = segment_keys(segment)
        if not all(isinstance(c, dict) and all(k in c for k in keys) for c in clips):
            log.warning("%s: not every clip has the %s segment keys; searching the best standard window instead",
                        path, segment)
            segment = "NONE"
    validate_clips(clips, path, require_labels=False, require_motion_type=False, standards=standards,
                   segment=segment, require_subtraction=cfg.BRANCH == 2)
    return clips, segment


def labels_state(clips: list[dict]) -> str:
    """'all' when every clip has labels, 'none' when none has, else 'some'."""
    n = sum(1 for c in clips if c.get("labels"))
    return "all" if n == len(clips) else "none" if n == 0 else "some"


def default_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def generate_captions(model, clips: list[dict], cfg: Config, segment: str, batch_size: int,
                      device: torch.device) -> dict[str, dict]:
    """{video_name: {caption, att_node [T][22], att_A [4][22][22]}} for every clip, batched."""
    from dataloaders.datasets import EvalDataset
    from engine.distributed import DistInfo
    from engine.evaluator import predict

    model.use_data_segment = segment != "NONE"  # new recordings may lack the data's segment keys
    if model.branch == 2 and clips:
        width = int(clips[0]["subtraction"].shape[-1])
        expected = model.projection.mlp[1].in_features - 4 * cfg.OUT_CHANNEL
        if width != expected:
            raise UserError(f"'subtraction' features have width {width}, the checkpoint was trained with {expected}")
    amp = None
    if device.type == "cuda":
        from engine.trainer import autocast_dtype

        amp = autocast_dtype(cfg, device)
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=device)
    dataset = EvalDataset(clips, segment=segment, retrieved=retrieved_for(cfg, clips))
    return predict(model, dataset, dist, batch_size, cfg.GENERATION, 0, amp)


def retrieved_for(cfg: Config, clips: list[dict]) -> Optional[list[str]]:
    """RETRIEVAL.NEIGHBOURS > 0: the labels of each clip's nearest clips in the training file DATA.TRAIN."""
    if not cfg.RETRIEVAL.NEIGHBOURS:
        return None
    from dataloaders.formats import load_clips
    from dataloaders.retrieval import retrieval_prompts
    from dataloaders.validation import validate_clips

    path = cfg.path(cfg.DATA.TRAIN)
    if path is None or not path.is_file():
        raise UserError(f"config key DATA.TRAIN: {path} not found; RETRIEVAL.NEIGHBOURS={cfg.RETRIEVAL.NEIGHBOURS} "
                        "gives the model the labels of the nearest training clips, so the training file is needed")
    train = load_clips(path, cfg.DATA.MAX_FRAMES)
    validate_clips(train, path, require_labels=True, require_motion_type=not cfg.TASK.PRETRAIN)
    slot = cfg.RETRIEVAL.LABEL_INDEX
    return retrieval_prompts(train, clips, cfg.RETRIEVAL.NEIGHBOURS, slot=slot if slot >= 0 else None)


def untrained_model_captions(cfg: Config, clips: list[dict], standards: Optional[dict],
                             device: torch.device) -> dict[str, str]:
    """Captions of a freshly initialised model (seed SEED) with the experiment's tokenizer: the floor
    a trained model is compared with."""
    from models.motion2text import build_motion2text
    from models.tokenizer import tokenizer_from_json

    newest = ckpt.newest_valid_checkpoint(cfg.checkpoint_dir)
    if newest is None:
        raise UserError(f"{cfg.checkpoint_dir}: no valid checkpoint to take the tokenizer from")
    state = ckpt.load_checkpoint(newest)
    torch.manual_seed(cfg.SEED)
    subtraction = int(clips[0]["subtraction"].shape[-1]) if cfg.BRANCH == 2 else 0
    model = build_motion2text(cfg, tokenizer_from_json(state["tokenizer_json"]), subtraction, standards)
    preds = generate_captions(model.to(device).eval(), clips, cfg, cfg.ALIGNMENT.REFERENCE_SEGMENT
                              if standards is not None else "NONE", cfg.DATA.EVAL_BATCH_SIZE, device)
    return {k: v["caption"] for k, v in preds.items()}
