"""Generate a caption for every test clip exactly once across ranks, gather, write jsons, score.

The eval sampler shards without padding (the original padded the last batch with duplicates and
gathered over fixed TCP ports: defect 8); results are gathered with all_gather_object.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import DataLoader

from dataloaders.datasets import EvalDataset, collate
from dataloaders.samplers import ShardedEvalSampler
from engine.config import GenerationConfig
from engine.distributed import DistInfo, all_gather_objects
from engine.experiment import move_batch
from models.motion2text import MotionToText
from models.projection import token_spread

log = logging.getLogger("motion2text")


@torch.no_grad()
def predict(model: MotionToText, dataset: EvalDataset, dist: DistInfo, batch_size: int, gen: GenerationConfig,
            num_workers: int = 0, autocast_dtype: Optional[torch.dtype] = None) -> dict[str, dict]:
    """{video_name: {"caption", "att_node" [T][22], "att_A" [4][22][22]}} for every clip, on every rank."""
    sampler = ShardedEvalSampler(len(dataset), dist.world_size, dist.rank, lengths=dataset.lengths)
    # Its own generator: evaluating never advances the global RNG, so resumed runs match uninterrupted ones.
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                        num_workers=num_workers, generator=torch.Generator())
    was_training = model.training
    model.eval()
    local: dict[str, dict] = {}
    for batch in loader:
        batch = move_batch(batch, dist.device)
        with torch.autocast(dist.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            captions, att_node, att_A = model.generate(batch, gen)
        for i, name in enumerate(batch["video_names"]):  # per-clip JSON records; the model work is batched
            length = int(batch["lengths"][i])
            local[name] = {"caption": captions[i],
                           "att_node": att_node[i, 0, :length].float().cpu().numpy().round(5).tolist(),
                           "att_A": att_A[i].float().cpu().numpy().round(5).tolist()}
    model.train(was_training)
    merged: dict[str, dict] = {}
    for part in all_gather_objects(local):
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


def write_predictions(folder: Path, epoch: int, predictions: dict[str, dict]) -> Path:
    """jsons/results_epoch{N}.json ({video_name: caption}) plus the two attention files."""
    folder.mkdir(parents=True, exist_ok=True)
    results = folder / f"results_epoch{epoch}.json"
    for name, key in ((results.name, "caption"), (f"att_node_results_epoch{epoch}.json", "att_node"),
                      (f"att_A_results_epoch{epoch}.json", "att_A")):
        (folder / name).write_text(json.dumps({k: v[key] for k, v in predictions.items()}, indent=None))
    return results
