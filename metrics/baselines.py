"""Baselines a caption model must beat, all from the training file only.

* constant caption (no motion): per technique, the training caption with the best CIDEr on that
  technique's training clips;
* nearest neighbour, label i: the label at position i of the closest training clip of the same technique
  (skeleton distance, `dataloaders/retrieval.py`) — in BX a label position is one annotator;
* nearest neighbour (facing forward), label i: the same with every clip turned to face forward first (the
  camera's heading removed, as TRANSFORMATION.CANONICAL_FACING does for the model);
* random same-person clip, label i (no motion): the label at position i of a random training clip of the
  test clip's person and technique (a random clip of the technique when the person has none there, as on a
  person-disjoint split), mean ± std over `DRAW_SEEDS` draws. It sees who the learner is and what was
  punched, never how: what a model scores above it has to come from the motion.

`nearest_swap_rows` is the motion control of the nearest-neighbour rows: each test clip's motion is swapped
for another's of its technique before the neighbour is looked up. What retrieval loses there is what the
motion of a test clip says about its labels — the scale a model's own swap drop is read against.

Rows named with " (no motion)" never look at the test clip's coordinates. Retrieval is strong on coaching
data, where clips of one person share habits and often identical labels: a model that does not beat the
strongest row is not useful yet.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Optional

import numpy as np

from dataloaders.retrieval import label_of_nearest, nearest_training_clips
from dataloaders.splits import person_id
from metrics.caption import CaptionScorer, sanitize_caption
from metrics.java import ptb_tokenize
from metrics.motion_control import swap_motion, technique_of

NO_MOTION = " (no motion)"
DRAW_SEEDS = (0, 1, 2, 3, 4)
CONSTANT = "constant caption" + NO_MOTION


def nearest_name(position: int, canonical_facing: bool = False) -> str:
    return f"nearest neighbour{' (facing forward)' if canonical_facing else ''}, label {position}"


SWAPPED = ", motion swapped within technique"


def same_person_name(position: int) -> str:
    return f"random same-person clip, label {position}{NO_MOTION}"


def _group(clip: dict) -> Optional[str]:
    return clip.get("motion_type")  # pretraining data has no technique: one group


def label_positions(train_clips: list[dict]) -> range:
    """The label positions every training clip has (0, 1, 2 in BX)."""
    return range(min((len(c.get("labels") or []) for c in train_clips), default=0))


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
        tokens = ptb_tokenize(candidates + [r for rs in refs for r in rs])  # one Java call per group
        cand_tokens, pos, gts = tokens[: len(candidates)], len(candidates), {}
        for i, rs in enumerate(refs):
            gts[i] = tokens[pos: pos + len(rs)]
            pos += len(rs)
        scores = [Cider().compute_score(gts, {i: [c] for i in gts})[0] for c in cand_tokens]
        best[group] = candidates[max(range(len(candidates)), key=lambda k: (scores[k], -k))]
    return best


def constant_predictions(train_clips: list[dict], test_clips: list[dict]) -> dict[str, str]:
    """{video_name: the constant caption of its technique}; a technique without training clips gets another's."""
    constant = best_constant_captions(train_clips)
    fallback = constant.get(None) or next(iter(constant.values()))
    return {c["video_name"]: constant.get(_group(c), fallback) for c in test_clips}


def baseline_predictions(train_clips: list[dict], test_clips: list[dict]) -> dict[str, dict[str, str]]:
    """{row name: {video_name: caption}}: the constant caption, then the nearest neighbour's label at each
    label position, in camera coordinates and facing forward. A test clip whose technique has no training
    clip gets the constant caption."""
    constant = constant_predictions(train_clips, test_clips)
    return {CONSTANT: constant, **nearest_predictions(train_clips, test_clips, constant)}


def nearest_predictions(train_clips: list[dict], test_clips: list[dict],
                        constant: Optional[dict[str, str]] = None) -> dict[str, dict[str, str]]:
    """The nearest-neighbour rows of `baseline_predictions`. `constant`: the constant caption of each test clip,
    for clips without a neighbour; computed only when such a clip exists (it costs a CIDEr pass per candidate)."""
    rows = {nearest_name(pos, facing): label_of_nearest(train_clips, test_clips, pos, canonical_facing=facing)
            for facing in (False, True) for pos in label_positions(train_clips)}
    if constant is None and any(not label for row in rows.values() for label in row.values()):
        constant = constant_predictions(train_clips, test_clips)
    return {name: {c["video_name"]: row[c["video_name"]] or constant[c["video_name"]] for c in test_clips}
            for name, row in rows.items()}


def motion_free_draws(train_clips: list[dict], test_clips: list[dict],
                      seeds=DRAW_SEEDS) -> tuple[dict[str, list[dict[str, str]]], int]:
    """({row name: [{video_name: caption} per seed]}, number of test clips whose person has no training clip
    of their technique). Each draw picks, per test clip, one random training clip of the same person and
    technique (else of the technique; names without a person id count as no person) and takes its label at
    every position; draws depend only on the seed and the order of the clips."""
    by_person: dict[tuple, list[int]] = defaultdict(list)
    by_technique: dict[Optional[str], list[int]] = defaultdict(list)
    for j, c in enumerate(train_clips):
        by_technique[_group(c)].append(j)
        if person_id(c["video_name"]) is not None:
            by_person[(person_id(c["video_name"]), _group(c))].append(j)
    pools, fallbacks = [], 0
    for c in test_clips:
        pool = by_person.get((person_id(c["video_name"]), _group(c))) if person_id(c["video_name"]) else None
        if not pool:
            fallbacks += 1
            pool = by_technique.get(_group(c), [])
        pools.append(pool)
    constant = constant_predictions(train_clips, test_clips) if not all(pools) else {}
    rows: dict[str, list[dict[str, str]]] = {same_person_name(pos): [] for pos in label_positions(train_clips)}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        drawn = [pool[int(rng.integers(len(pool)))] if pool else None for pool in pools]
        for pos in label_positions(train_clips):
            rows[same_person_name(pos)].append(
                {c["video_name"]: train_clips[j]["labels"][pos] if j is not None else constant[c["video_name"]]
                 for c, j in zip(test_clips, drawn)})
    return rows, fallbacks


def score_baselines(scorer, train_clips: list[dict], test_clips: list[dict],
                    refs: dict[str, list[str]]) -> tuple[dict[str, list[dict]], str]:
    """({row name: [metrics, one per draw]}, footnote). Single predictions have a list of one; the motion-free
    rows have one per seed of DRAW_SEEDS."""
    rows = {name: [scorer.score(preds, refs)] for name, preds in baseline_predictions(train_clips, test_clips).items()}
    draws, fallbacks = motion_free_draws(train_clips, test_clips)
    for name, per_seed in draws.items():
        rows[name] = [scorer.score(preds, refs) for preds in per_seed]
    note = (f"random same-person clip: mean ± std over {len(DRAW_SEEDS)} draws (seeds "
            f"{DRAW_SEEDS[0]}-{DRAW_SEEDS[-1]}); {fallbacks} of {len(test_clips)} test clip(s) have no training clip "
            "of their person and technique and draw from all training clips of their technique")
    return rows, note


def mean_of(draws: list[dict], key: str) -> Optional[float]:
    values = [m[key] for m in draws if key in m]
    return sum(values) / len(values) if values else None


def mean_rows(rows: dict[str, list[dict]], keys) -> dict[str, dict[str, Optional[float]]]:
    """{row: [metrics per draw]} → {row: {key: mean over the draws}} (a single draw is itself)."""
    return {name: {k: mean_of(draws, k) for k in keys} for name, draws in rows.items()}


def strongest_baseline(rows: dict[str, list[dict]], key: str = "CIDEr") -> tuple[str, float]:
    """(row name, mean `key`) of the best baseline row; a claim that a model beats the baselines names it."""
    name = max(rows, key=lambda n: mean_of(rows[n], key) or 0.0)
    return name, mean_of(rows[name], key) or 0.0


def strongest_line(rows: dict[str, list[dict]], key: str = "CIDEr") -> str:
    name, value = strongest_baseline(rows, key)
    return f"strongest baseline: {name} ({key} {value:.2f})"


def nearest_swap_rows(scorer, train_clips: list[dict], test_clips: list[dict], refs: dict[str, list[str]],
                      seed: int = 0) -> dict[str, dict]:
    """{"<nearest-neighbour row>, motion swapped within technique": metrics}: every nearest-neighbour row of
    `baseline_predictions` on the test clips with their motions swapped within the technique (the derangement
    of `metrics.motion_control.swap_motion`, same seed as the model's control), scored against each clip's own
    labels."""
    swapped, _ = swap_motion(test_clips, technique_of, seed)
    return {name + SWAPPED: scorer.score(preds, refs) for name, preds in nearest_predictions(train_clips, swapped).items()}


def label_position_scores(train_clips: list[dict], exclude: str = "CLIP") -> dict[int, float]:
    """Leave-one-out retrieval on the training file, one score per label position i: each training clip gets
    the i-th label of its nearest other training clip (exclude PERSON: of another person), CIDEr against its
    own labels. The training-file evidence for RETRIEVAL.LABEL_INDEX (in BX a position is one annotator)."""

    nearest = nearest_training_clips(train_clips, train_clips, 1, exclude)
    refs = {c["video_name"]: list(c["labels"]) for c in train_clips}
    scorer, scores = CaptionScorer(meteor=False), {}
    for pos in label_positions(train_clips):
        preds = {c["video_name"]: train_clips[row[0]]["labels"][pos] if row else "" for c, row in zip(train_clips, nearest)}
        scores[pos] = scorer.score(preds, refs)["CIDEr"]
    return scores
