"""Baselines a caption model must beat: one constant caption per technique, and nearest-neighbour retrieval.

Both use the training file only. Retrieval is strong on coaching data, where clips of one person share
habits and often identical labels: a model that does not beat it is not useful yet.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Optional

from dataloaders.retrieval import first_label_of_nearest
from metrics.caption import _ptb_tokenize, sanitize_caption


def _group(clip: dict) -> Optional[str]:
    return clip.get("motion_type")  # pretraining data has no technique: one group


def best_constant_captions(train_clips: list[dict]) -> dict[Optional[str], str]:
    """Per technique, the training caption with the best CIDEr when predicted for every training clip of it."""
    from pycocoevalcap.cider.cider import Cider

    groups: dict[Optional[str], list[dict]] = defaultdict(list)
    for clip in train_clips:
        groups[_group(clip)].append(clip)
    best = {}
    for group, clips in groups.items():
        refs = [[sanitize_caption(r) for r in c["labels"]] for c in clips]
        candidates = sorted({r for rs in refs for r in rs if r})
        tokens = _ptb_tokenize(candidates + [r for rs in refs for r in rs])  # one Java call per group
        cand_tokens, pos, gts = tokens[: len(candidates)], len(candidates), {}
        for i, rs in enumerate(refs):
            gts[i] = tokens[pos: pos + len(rs)]
            pos += len(rs)
        scores = [Cider().compute_score(gts, {i: [c] for i in gts})[0] for c in cand_tokens]
        best[group] = candidates[max(range(len(candidates)), key=lambda k: (scores[k], -k))]
    return best


def baseline_predictions(train_clips: list[dict], test_clips: list[dict]) -> dict[str, dict[str, str]]:
    """{"constant caption": {video_name: caption}, "nearest neighbour": {...}} for the test clips."""
    constant = best_constant_captions(train_clips)
    fallback = constant.get(None) or next(iter(constant.values()))
    constant_preds = {c["video_name"]: constant.get(_group(c), fallback) for c in test_clips}
    nearest = first_label_of_nearest(train_clips, test_clips)
    return {
        "constant caption": constant_preds,
        # a technique without training clips gets the constant caption
        "nearest neighbour": {name: nearest[name] or constant_preds[name] for name in constant_preds},
    }


def label_position_scores(train_clips: list[dict], exclude: str = "CLIP") -> dict[int, float]:
    """Leave-one-out retrieval on the training file, one score per label position i: each training clip gets
    the i-th label of its nearest other training clip (exclude PERSON: of another person), CIDEr against its
    own labels. The training-file evidence for RETRIEVAL.LABEL_INDEX (in BX a position is one annotator)."""
    from dataloaders.retrieval import nearest_training_clips
    from metrics.caption import CaptionScorer

    nearest = nearest_training_clips(train_clips, train_clips, 1, exclude)
    refs = {c["video_name"]: list(c["labels"]) for c in train_clips}
    scorer, scores = CaptionScorer(meteor=False), {}
    for pos in range(min(len(c["labels"]) for c in train_clips)):
        preds = {c["video_name"]: train_clips[row[0]]["labels"][pos] if row else "" for c, row in zip(train_clips, nearest)}
        scores[pos] = scorer.score(preds, refs)["CIDEr"]
    return scores
