"""Motion control: does what the model writes depend on the learner's motion?

The clips are captioned three times by the same checkpoint: as they are, and with every clip's motion
swapped for another clip's — (a) among the clips of the same technique, (b) among the clips of the same
person and technique. Names, labels (the references) and the technique stay in place; the motion-carrying
keys (`MOTION_KEYS`: coordinates, the reference-segment keys, original_seq_len, subtraction) move together
with the motion. A model that reads the motion scores lower on swapped motion; one that writes from the
technique (or, through retrieval, from who the learner is) alone scores the same.

Each swap is a seeded derangement within the groups: a group's clips are put in a random order and each
takes the motion of the next one, so no clip keeps its own motion unless its group holds it alone (those
are counted). Clips whose names carry no person id (the number before the first `_`) count as one person
per technique, so on such data (b) equals (a).
"""
from __future__ import annotations

from typing import Callable, Hashable, Optional

import numpy as np

from dataloaders.splits import person_id
from dataloaders.validation import SEGMENTS, segment_keys

MOTION_KEYS = ("coordinates", "original_seq_len", "subtraction") + tuple(
    k for s in SEGMENTS if s != "NONE" for k in segment_keys(s))
CONDITIONS = {"real": "real motion", "swap_technique": "swap within technique",
              "swap_person_technique": "swap within person+technique"}


def technique_of(clip: dict) -> Hashable:
    return clip.get("motion_type")


def person_technique_of(clip: dict) -> Hashable:
    return person_id(clip["video_name"]), clip.get("motion_type")


GROUPINGS: dict[str, Callable[[dict], Hashable]] = {"swap_technique": technique_of,
                                                    "swap_person_technique": person_technique_of}


def derangement_within(groups: list[Hashable], seed: int) -> np.ndarray:
    """donor[i]: the clip whose motion clip i receives. Within each group (equal values of `groups`, taken in
    order of first appearance) a seeded random cycle; a group of one keeps its own."""
    rng = np.random.default_rng(seed)
    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    donor = np.arange(len(groups))
    for idx in members.values():
        order = np.asarray(idx)[rng.permutation(len(idx))]
        donor[order] = np.roll(order, -1)
    return donor


def swap_motion(clips: list[dict], group_of: Callable[[dict], Hashable], seed: int = 0) -> tuple[list[dict], int]:
    """(new clip dicts with the motion of their donor, number of clips that kept their own motion). The input
    clips are not changed; the tensors are shared, not copied."""
    donor = derangement_within([group_of(c) for c in clips], seed)
    swapped = []
    for clip, d in zip(clips, donor.tolist()):
        new = {k: v for k, v in clip.items() if k not in MOTION_KEYS}
        new.update({k: v for k, v in clips[d].items() if k in MOTION_KEYS})
        swapped.append(new)
    return swapped, int((donor == np.arange(len(clips))).sum())


def run_motion_control(caption: Callable[[list[dict]], dict[str, str]], clips: list[dict], scorer,
                       seed: int = 0, real: Optional[tuple[dict[str, str], dict]] = None) -> dict:
    """Caption `clips` with their real and swapped motions and score each against the clips' own labels.
    `caption(clips)` is the model under test: {video_name: caption}. `real`: (captions, metrics) of the real
    motions when the caller already has them (the same model, clips and scorer), so they are not made again.

    Returns {"metrics": {condition: metrics}, "kept_own_motion": {condition: n}, "changed": {condition: n
    captions that differ from the real-motion caption}, "captions": {condition: {video_name: caption}},
    "clips": n}."""
    refs = {c["video_name"]: list(c["labels"]) for c in clips}
    out = {"metrics": {}, "kept_own_motion": {}, "changed": {}, "captions": {}, "clips": len(clips)}
    for condition in CONDITIONS:
        if condition == "real" and real is not None:
            captions, metrics, kept = real[0], real[1], len(clips)
        else:
            inputs, kept = (clips, len(clips)) if condition == "real" else swap_motion(clips, GROUPINGS[condition], seed)
            captions = caption(inputs)
            metrics = scorer.score(captions, refs)
        out["captions"][condition] = captions
        out["metrics"][condition] = metrics
        out["kept_own_motion"][condition] = kept
        real = out["captions"]["real"]
        out["changed"][condition] = sum(captions[n] != real[n] for n in captions)
    return out


def relative_drop(real: Optional[float], swapped: Optional[float]) -> Optional[float]:
    """(real − swapped) / real in percent; None when real is 0 or missing."""
    if not real or swapped is None:
        return None
    return 100.0 * (real - swapped) / real


def motion_control_rows(result: dict, keys: list[str]) -> dict[str, dict]:
    """Rows for metrics.report.format_table: the metrics of each condition, the relative CIDEr drop, how many
    clips kept their own motion and how many captions changed."""
    real = result["metrics"]["real"].get("CIDEr")
    rows = {}
    for condition, label in CONDITIONS.items():
        m = result["metrics"][condition]
        drop = relative_drop(real, m.get("CIDEr")) if condition != "real" else None
        rows[label] = {**{k: m.get(k) for k in keys},
                       "CIDEr drop": "-" if drop is None else f"{drop:+.1f} %",
                       "own motion": f"{result['kept_own_motion'][condition]}/{result['clips']}",
                       "changed": f"{result['changed'][condition]}/{result['clips']}"}
    return rows


def motion_control_json(result: dict) -> dict:
    """The JSON written by `evaluate.py --motion-control --json F`."""
    out = {condition: dict(result["metrics"][condition]) for condition in CONDITIONS}
    out["kept_own_motion"] = dict(result["kept_own_motion"])
    out["changed_captions"] = dict(result["changed"])
    out["clips"] = result["clips"]
    return out
