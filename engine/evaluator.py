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
