"""Check loaded clips once, where they enter, so a bad sample fails with its name, not deep in a model.

Every message names the file, the entry index, its video_name, the key and what was expected.
Labels are checked as the scorer will see them (after `sanitize_caption`), so a label that passes here
can be scored.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch

from common.errors import UserError
from common.skeleton import COORD_DIM
from common.text import sanitize_caption


SEGMENTS = ("NONE", "GT", "ALIGNED", "ERROR")
SEGMENT_SUFFIXES = ("start_frame", "end_frame", "std_start_frame", "std_end_frame", "seq_len")


def segment_keys(segment: str) -> list[str]:
    """The five per-clip keys of a reference segment, e.g. aligned_start_frame ... aligned_seq_len."""
    return [f"{segment.lower()}_{s}" for s in SEGMENT_SUFFIXES]


def entry_where(path, i, clip) -> str:
    """'path: entry i (video_name 'x')', the prefix of every message about one clip."""
    name = clip.get("video_name") if isinstance(clip, dict) else None
    return f"{path}: entry {i} (video_name {name!r})" if isinstance(name, str) else f"{path}: entry {i}"


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_strings(where, key, value, allow_empty_list):
    if not isinstance(value, (list, tuple)):
        raise UserError(f"{where}: key {key!r} is {type(value).__name__}, expected a list of strings")
    if not value and not allow_empty_list:
        raise UserError(f"{where}: key {key!r} is empty, expected at least one non-empty string")
    for j, s in enumerate(value):
        if not isinstance(s, str) or not s.strip():
            got = "empty" if isinstance(s, str) else f"a {type(s).__name__}"
            raise UserError(f"{where}: key {key!r} item {j} is {got}, expected a non-empty string")
        clean = sanitize_caption(s)
        if not clean:
            raise UserError(f"{where}: key {key!r} item {j} is {s[:40]!r}, which the scorer's caption cleaning "
                            "(common.text.sanitize_caption) reduces to nothing; expected visible text")
        if not any(ch.isalnum() for ch in clean):  # the PTB tokenizer drops punctuation: nothing would be scored
            raise UserError(f"{where}: key {key!r} item {j} is {s[:40]!r}, punctuation only; expected at least "
                            "one letter or digit")


def _check_frames(where, key, x, width=None) -> int:
    """2-D finite float tensor [frames, width] with >= 2 frames; returns the frame count."""
    what = f"[frames, {width}]" if width else "[frames, C]"
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        raise UserError(f"{where}: key {key!r} is {type(x).__name__}, expected a float tensor {what}")
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        raise UserError(f"{where}: key {key!r} has dtype {x.dtype}, expected a float tensor {what}")
    if x.dim() != 2:
        raise UserError(f"{where}: key {key!r} has shape {list(x.shape)}, expected 2-D {what}")
    if width is not None and x.shape[1] != width:
        raise UserError(f"{where}: key {key!r} has width {x.shape[1]}, expected {width} (x,y,z of 22 joints)")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        n_nan, n_bad = int(torch.isnan(x).sum()), int((~finite).sum())
        first = int((~finite).any(dim=1).nonzero()[0, 0])
        raise UserError(f"{where}: key {key!r} has {n_bad} non-finite values ({n_nan} NaN, {n_bad - n_nan} inf), "
                        f"first at frame {first}; expected all finite")
    return int(x.shape[0])


def _check_segment(where, clip, segment, frames, std_frames):
    keys = segment_keys(segment)
    for k in keys:
        if k not in clip:
            raise UserError(f"{where}: missing key {k!r} (int), needed by reference segment {segment}")
        if not _is_int(clip[k]):
            raise UserError(f"{where}: key {k!r} is {type(clip[k]).__name__}, expected an int")
    start, end, s_start, s_end, seq_len = (int(clip[k]) for k in keys)
    if not 0 <= start < frames or not start <= end <= frames:
        raise UserError(f"{where}: keys {keys[0]!r}={start}, {keys[1]!r}={end} out of range, "
                        f"expected 0 <= start <= end <= {frames} (the clip's frames) and start < {frames}")
    s_max = std_frames
    if s_start < 0 or s_end < s_start or (s_max is not None and (s_start >= s_max or s_end > s_max)):
        bound = f"{s_max} (the standard's frames)" if s_max is not None else "the standard's frames"
        raise UserError(f"{where}: keys {keys[2]!r}={s_start}, {keys[3]!r}={s_end} out of range, "
                        f"expected 0 <= std_start <= std_end <= {bound}")
    if seq_len < 0:
        raise UserError(f"{where}: key {keys[4]!r}={seq_len}, expected >= 0")


def validate_clips(clips, path, *, require_labels: bool = True, require_motion_type: bool = False,
                   standards: dict | None = None, segment: str = "NONE", require_subtraction: bool = False) -> None:
    """Raise UserError on the first problem; see the module docstring for the message format."""
    segment = str(segment).upper()
    if segment not in SEGMENTS:
        raise UserError(f"{path}: unknown reference segment {segment!r}, expected one of {', '.join(SEGMENTS)}")
    if not isinstance(clips, list):
        raise UserError(f"{path}: holds a {type(clips).__name__}, expected a list of clip dicts")
    if not clips:
        raise UserError(f"{path}: contains no clips, expected a non-empty list of clip dicts")
    seen: dict[str, int] = {}
    sub_width = None  # (C, entry index) of the first subtraction tensor
    for i, clip in enumerate(clips):
        where = entry_where(path, i, clip)
        if not isinstance(clip, dict):
            raise UserError(f"{where}: is a {type(clip).__name__}, expected a dict")
        required = ["video_name", "coordinates"] + (["labels"] if require_labels else [])
        if require_motion_type or standards is not None:
            required.append("motion_type")
        for k in required:
            if k not in clip:
                raise UserError(f"{where}: missing key {k!r}; keys present: {sorted(map(str, clip))}")
        name = clip["video_name"]
        if not isinstance(name, str) or not name:
            raise UserError(f"{where}: key 'video_name' is {name!r}, expected a non-empty str")
        if name in seen:
            raise UserError(f"{where}: video_name {name!r} is duplicated (also entry {seen[name]}), expected unique")
        seen[name] = i
        frames = _check_frames(where, "coordinates", clip["coordinates"], COORD_DIM)
        if frames < 2:
            raise UserError(f"{where}: key 'coordinates' has {frames} frame(s), expected at least 2")
        if require_labels or clip.get("labels") is not None:  # optional for inference, but then well-formed
            _check_strings(where, "labels", clip.get("labels"), allow_empty_list=not require_labels)
        if clip.get("augmented_labels") is not None:
            _check_strings(where, "augmented_labels", clip["augmented_labels"], allow_empty_list=True)
        mt = clip.get("motion_type")
        if "motion_type" in required and (not isinstance(mt, str) or not mt):
            raise UserError(f"{where}: key 'motion_type' is {mt!r}, expected a non-empty str (e.g. 'Jab')")
        std_frames = None
        if standards is not None:
            if mt not in standards:
                raise UserError(f"{where}: motion_type {mt!r} has no standard motion; "
                                f"available standards: {', '.join(sorted(standards)) or 'none'}")
            std_frames = int(standards[mt].shape[0])
        if segment != "NONE":
            _check_segment(where, clip, segment, frames, std_frames)
        if require_subtraction:
            if clip.get("subtraction") is None:
                raise UserError(f"{where}: missing key 'subtraction' (float tensor [frames, C]), needed by BRANCH 2")
            n = _check_frames(where, "subtraction", clip["subtraction"])
            if n != frames:
                raise UserError(f"{where}: key 'subtraction' has {n} frames, expected {frames} (as 'coordinates')")
            c = int(clip["subtraction"].shape[1])
            if sub_width is None:
                sub_width = (c, i)
            elif c != sub_width[0]:
                raise UserError(f"{where}: key 'subtraction' has width {c}, expected {sub_width[0]} "
                                f"(as entry {sub_width[1]})")
