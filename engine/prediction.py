"""Generating predictions: captions (with attention) for clips, across ranks during training or for a file
given to `evaluate.py --checkpoint`. Scoring is metrics/caption.py; reports and tables are metrics/report.py.

The eval sampler shards without padding (the original padded the last batch with duplicates and gathered
over fixed TCP ports); results are gathered to rank 0 with gather_object.
"""
from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from common.errors import UserError, sample_names
from common.files import atomic_write_bytes, atomic_write_json
from dataloaders.datasets import EvalDataset, collate
from dataloaders.formats import load_clips, load_standards
from dataloaders.retrieval import retrieval_prompts
from dataloaders.samplers import ShardedEvalSampler
from dataloaders.validation import segment_keys, validate_clips
from engine import checkpoint as ckpt
from engine.config import Config
from engine.distributed import DistInfo, gather_objects
from engine.logs import Progress
from engine.precision import autocast_dtype
from engine.weights import build_model
from metrics.report import read_json
from models.config import Generation
from models.motion2text import MotionToText
from models.projection import token_spread
from models.tokenizer import tokenizer_from_json

log = logging.getLogger("motion2text")


def move_batch(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def predict(model: MotionToText, dataset: EvalDataset, dist: DistInfo, batch_size: int, gen: Optional[Generation],
            num_workers: int = 0, autocast_dtype: Optional[torch.dtype] = None) -> dict[str, dict]:
    """{video_name: {"caption", "att_node" [T, 22], "att_A" [4, 22, 22] (float32 arrays)}} for every clip on rank
    0; {} on the other ranks (collective: every rank captions its shard)."""
    sampler = ShardedEvalSampler(len(dataset), dist.world_size, dist.rank, lengths=dataset.lengths)
    # Its own generator: evaluating never advances the global RNG, so resumed runs match uninterrupted ones.
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                        num_workers=num_workers, generator=torch.Generator(), pin_memory=dist.device.type == "cuda")
    was_training = model.training
    model.eval()
    local: dict[str, dict] = {}
    progress = Progress(len(loader), "captioning", show=dist.is_main)  # rank 0's shard stands for all
    for batch in loader:
        batch = move_batch(batch, dist.device)
        with torch.autocast(dist.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            captions, att_node, att_A = model.generate(batch, gen)
        for i, name in enumerate(batch["video_names"]):  # per-clip JSON records; the model work is batched
            length = int(batch["lengths"][i])
            local[name] = {"caption": captions[i], "att_node": att_node[i, 0, :length].float().cpu().numpy(),
                           "att_A": att_A[i].float().cpu().numpy()}
        progress.update()
    progress.close()
    model.train(was_training)
    parts = gather_objects(local)  # to rank 0 only: the others would hold every clip's attention for nothing
    if parts is None:
        return {}
    merged: dict[str, dict] = {}
    for part in parts:
        merged.update(part)
    if len(merged) != len(dataset):
        raise RuntimeError(f"evaluation produced {len(merged)} predictions for {len(dataset)} clips")
    return dict(sorted(merged.items()))


@torch.no_grad()
def motion_token_stats(model: MotionToText, dataset: EvalDataset, device: torch.device, batch_size: int,
                       max_clips: int = 256) -> dict[str, float]:
    """Collapse figures on up to `max_clips` evaluation clips (eval mode): the spread of T5's input tokens
    across clips (models.projection.token_spread) and the fraction of the projection's ReLU units that are
    zero for every token ("dead"). Empty with fewer than 2 clips."""
    n = min(len(dataset), max_clips)
    if n < 2:
        return {}
    relus = [m for m in model.projection.mlp if isinstance(m, torch.nn.ReLU)]
    alive = [None] * len(relus)

    def record(i):
        def hook(module, args, out):
            fired = (out > 0).flatten(0, -2).any(0)
            alive[i] = fired if alive[i] is None else alive[i] | fired
        return hook

    handles = [r.register_forward_hook(record(i)) for i, r in enumerate(relus)]
    was_training = model.training
    model.eval()
    try:
        parts = []
        for start in range(0, n, batch_size):
            batch = move_batch(collate([dataset[i] for i in range(start, min(n, start + batch_size))]), device)
            tokens, token_mask, _, _ = model.encode(batch)
            parts.append((tokens, token_mask))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    width = max(t.shape[1] for t, _ in parts)
    tokens = torch.cat([torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[1])) for t, _ in parts])
    mask = torch.cat([torch.nn.functional.pad(m, (0, width - m.shape[1])) for _, m in parts])
    stats = token_spread(tokens, mask)
    units = torch.cat([a for a in alive if a is not None])
    stats["dead_units"] = float((~units).float().mean()) if len(units) else 0.0
    return stats


def references_of(dataset: EvalDataset) -> dict[str, list[str]]:
    return {c["video_name"]: list(c.get("labels", [])) for c in dataset.clips}


ATTENTION_FORMATS = ("NPZ", "JSON", "NONE")


def write_predictions(folder: Path, epoch: int, predictions: dict[str, dict], attention: str = "NPZ") -> Path:
    """jsons/results_epoch{N}.json ({video_name: caption}) and the attention (EVAL.SAVE_ATTENTION): NPZ, one
    `attention_epoch{N}.npz` of float16 arrays `node/<clip>` [T, 22] and `graph/<clip>` [4, 22, 22]; JSON, the
    original's `att_node_results_epoch{N}.json` / `att_A_results_epoch{N}.json` (5 decimals); NONE. Each file is
    written atomically, the captions last: a results file on disk means its attention files are complete."""
    if attention not in ATTENTION_FORMATS:
        raise ValueError(f"attention format {attention!r}: expected one of {', '.join(ATTENTION_FORMATS)}")
    folder.mkdir(parents=True, exist_ok=True)
    results = folder / f"results_epoch{epoch}.json"
    if attention == "NPZ":
        arrays = {f"{kind}/{name}": np.asarray(p[key], dtype=np.float16) for name, p in predictions.items()
                  for kind, key in (("node", "att_node"), ("graph", "att_A"))}
        atomic_write_bytes(folder / f"attention_epoch{epoch}.npz", npz_bytes(arrays))
    elif attention == "JSON":
        for name, key in ((f"att_node_results_epoch{epoch}.json", "att_node"),
                          (f"att_A_results_epoch{epoch}.json", "att_A")):
            atomic_write_json(folder / name, {k: np.asarray(v[key]).round(5).tolist() for k, v in predictions.items()},
                              indent=None)
    atomic_write_json(results, {k: v["caption"] for k, v in predictions.items()}, indent=None)
    return results


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed .npz that np.load reads, byte-for-byte the same for the same arrays: numpy.savez stamps each
    member with the current time, which would make two identical evaluations differ."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), member.getvalue(),
                             compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def read_epoch_attention(folder: Path, epoch: int) -> Optional[tuple[dict, dict]]:
    """({clip: att_node [T, 22]}, {clip: att_A [4, 22, 22]}) saved for an epoch in either format, else None."""
    npz = folder / f"attention_epoch{epoch}.npz"
    if npz.is_file():
        try:
            with np.load(npz, allow_pickle=False) as data:
                node = {k.split("/", 1)[1]: data[k].astype(np.float32) for k in data.files if k.startswith("node/")}
                graph = {k.split("/", 1)[1]: data[k].astype(np.float32) for k in data.files if k.startswith("graph/")}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise UserError(f"{npz}: unreadable attention file ({e})") from None
        return node, graph
    node_json, graph_json = folder / f"att_node_results_epoch{epoch}.json", folder / f"att_A_results_epoch{epoch}.json"
    if node_json.is_file() and graph_json.is_file():
        return read_json(node_json, "attention"), read_json(graph_json, "attention")
    return None


# ---- data ----------------------------------------------------------------------------------------

def load_standards_for(cfg: Config) -> Optional[dict]:
    if cfg.BRANCH != 1 or cfg.TASK.PRETRAIN:
        return None
    if cfg.DATA.STANDARD is None:
        raise UserError("config key DATA.STANDARD: missing, BRANCH 1 finetuning needs the standards file")
    return load_standards(cfg.path(cfg.DATA.STANDARD), cfg.DATA.MAX_FRAMES)


def load_inference_clips(cfg: Config, path: Path, standards: Optional[dict] = None,
                         motion_type: Optional[str] = None) -> tuple[list[dict], str]:
    """Clips of `path` (dataset file or one `.npy` clip [T, 66]) checked for this model, labels optional,
    and the reference segment to use. `motion_type` fills in clips that have none (needed by BRANCH 1
    finetuning). Without the segment keys of ALIGNMENT.REFERENCE_SEGMENT the standard's window is searched."""
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


def load_learner_and_reference(cfg: Config, learner: Path, reference: Path,
                               motion_type: Optional[str] = None) -> tuple[list[dict], str, dict]:
    """(clips, segment, standards) to caption every clip of `learner` against the one clip of `reference`
    (a BRANCH 1 model, no standards file). A clip keeps its technique unless `motion_type` is given (retrieval
    groups by it); one with none is called 'reference'. The standard's window is always searched: the data's
    segment keys, if any, point into the training standards, not into this reference."""
    if cfg.BRANCH != 1 or cfg.TASK.PRETRAIN:
        raise UserError(f"--reference: this experiment's model is BRANCH {cfg.BRANCH}"
                        f"{' pretraining' if cfg.TASK.PRETRAIN else ''}; only a BRANCH 1 finetuned model compares "
                        "the learner with a reference")
    refs = load_clips(reference, cfg.DATA.MAX_FRAMES)
    if len(refs) != 1:
        raise UserError(f"--reference {reference}: holds {len(refs)} clips, expected one reference motion")
    validate_clips(refs, reference, require_labels=False)
    clips = load_clips(learner, cfg.DATA.MAX_FRAMES)
    for clip in clips:
        if isinstance(clip, dict):
            clip["motion_type"] = motion_type or clip.get("motion_type") or "reference"
    standards = {c["motion_type"]: refs[0]["coordinates"] for c in clips if isinstance(c, dict)}
    validate_clips(clips, learner, require_labels=False, require_motion_type=False, standards=standards,
                   segment="NONE", require_subtraction=False)
    return clips, "NONE", standards


def labels_state(clips: list[dict]) -> str:
    """'all' when every clip has labels, 'none' when none has, else 'some'."""
    n = sum(1 for c in clips if c.get("labels"))
    return "all" if n == len(clips) else "none" if n == 0 else "some"


def default_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def generate_captions(model, clips: list[dict], cfg: Config, segment: str, batch_size: int,
                      device: torch.device) -> dict[str, dict]:
    """{video_name: {caption, att_node [T][22], att_A [4][22][22]}} for every clip, batched."""
    model.use_data_segment = segment != "NONE"  # new recordings may lack the data's segment keys
    if model.branch == 2 and clips:
        width = int(clips[0]["subtraction"].shape[-1])
        expected = model.config.subtraction_dim
        if width != expected:
            raise UserError(f"'subtraction' features have width {width}, the checkpoint was trained with {expected}")
    amp = autocast_dtype(cfg, device)
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=device)
    dataset = EvalDataset(clips, segment=segment, retrieved=retrieved_for(cfg, clips))
    return predict(model, dataset, dist, batch_size, cfg.generation, 0, amp)


def captions_of(model, clips: list[dict], cfg: Config, segment: str, batch_size: int,
                device: torch.device) -> dict[str, str]:
    """{video_name: caption}: generate_captions without the attention."""
    return {name: p["caption"] for name, p in generate_captions(model, clips, cfg, segment, batch_size, device).items()}


def retrieved_for(cfg: Config, clips: list[dict]) -> Optional[list[str]]:
    """RETRIEVAL.NEIGHBOURS > 0: the labels of each clip's nearest clips in the training file DATA.TRAIN."""
    if not cfg.RETRIEVAL.NEIGHBOURS:
        return None
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
    newest = ckpt.newest_valid_checkpoint(cfg.checkpoint_dir)
    if newest is None:
        raise UserError(f"{cfg.checkpoint_dir}: no valid checkpoint to take the tokenizer from")
    state = ckpt.load_checkpoint(newest)
    torch.manual_seed(cfg.SEED)
    subtraction = int(clips[0]["subtraction"].shape[-1]) if cfg.BRANCH == 2 else 0
    model = build_model(cfg, tokenizer_from_json(state["tokenizer_json"]), subtraction, standards)
    preds = generate_captions(model.to(device).eval(), clips, cfg, cfg.ALIGNMENT.REFERENCE_SEGMENT
                              if standards is not None else "NONE", cfg.DATA.EVAL_BATCH_SIZE, device)
    return {k: v["caption"] for k, v in preds.items()}
