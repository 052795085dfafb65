"""Convert the public HumanML3D release into our pickle format.

    python -m dataloaders.humanml3d --root PATH/HumanML3D --split train --out data/hml3d_train.pkl \
        [--mirrors] [--max-frames N] [--min-frames 2] [--fps 20]

Input layout (the public release, after running its own preparation notebooks):
    new_joints/<id>.npy   float [T, 22, 3] joint positions (SMPL 22 joints), 20 fps
    texts/<id>.txt        one caption per line: ``caption#tokens#start#end`` (times in seconds)
    train.txt / val.txt / test.txt   one id per line
Mirrored motions have ids prefixed ``M`` (``M000123``).

Output: a pickle (protocol 4) of a ``list`` of ``dict``s with ``video_name`` (str), ``coordinates``
(float32 ``torch.Tensor`` ``[T, 66]``) and ``labels`` (list[str], raw captions; the task prompt
"Motion Description : " is added by the training code, not stored here).

Rules, following text2motion's ``Text2MotionDatasetV2`` (the loader TM2T, T2M-GPT, MotionGPT copy):
- ``start``/``end`` that are NaN count as 0.0. A caption with ``start == end == 0`` describes the whole
  clip; all such captions of an id are the ``labels`` of one clip named ``<id>``.
- Any other caption describes frames ``int(start*fps):int(end*fps)`` (Python slicing, so an end past the
  clip is clamped) and becomes its own cropped clip named ``<id>_<start>_<end>`` (``str(float)``, e.g.
  ``000123_1.5_4.0``); captions with the same range share one clip. (text2motion names these
  ``<random letter>_<id>``; we keep a deterministic name.)
- Clips are skipped, and counted in the printed summary, when they have fewer than ``--min-frames``
  frames (default 2; text2motion uses 40), more than ``--max-frames`` frames (default: no limit), or any
  NaN/inf coordinate. Like text2motion we *skip* over-long clips instead of cropping them: cropping would
  pair a caption with a motion it only partly describes. ``--max-frames 199`` reproduces text2motion's
  ``len >= 200`` filter (HumanML3D motions are at most ~10 s anyway).
- Empty caption lines, malformed caption lines (fewer than 4 ``#`` fields, unparsable or negative times)
  and ids whose ``.npy`` or ``.txt`` is missing are skipped and counted. A ``.npy`` that is not
  ``[T, 22, 3]`` (e.g. ``new_joint_vecs`` passed by mistake) or cannot be read, and a text file that is not
  UTF-8, raise ``UserError``. Text files are split into lines at ``\n`` only (a trailing ``\r`` is
  dropped): a caption holding U+2028 or U+0085 stays one caption.
- Mirrors: without ``--mirrors``, ``M`` ids are dropped even if the split file lists them (counted);
  with ``--mirrors``, each listed id ``X`` also brings ``MX`` when both its files exist (missing mirror
  files are counted, not an error).

Output order is deterministic: ids sorted (so all ``M`` ids come after the numeric ones); within an id the
whole clip first, then ranged clips by (start, end). Two runs produce identical bytes: tensors are pickled
to the same globals plain ``pickle.dump`` uses (``torch._utils._rebuild_tensor_v2``,
``torch.storage._load_from_bytes``, ``collections.OrderedDict``), but with the process-dependent storage
key torch writes inside each storage blob replaced by a constant.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

from dataloaders.formats import dump_clips
from common.errors import UserError, exits_on_user_error

SPLITS = ("train", "val", "test")
NUM_JOINTS = 22

# Summary keys, in print order, with their meaning.
SUMMARY_KEYS = {
    "ids_listed": "ids in the split file (unique)",
    "mirror_ids_excluded": "M ids in the split file dropped (no --mirrors)",
    "mirrors_added": "M ids added by --mirrors",
    "mirrors_missing": "M ids not found for --mirrors (files absent)",
    "ids_missing_files": "ids skipped: new_joints/<id>.npy or texts/<id>.txt missing",
    "ids_converted": "ids read",
    "ids_without_captions": "ids skipped: no usable caption line",
    "caption_lines": "non-empty caption lines read",
    "empty_caption_lines": "empty caption lines skipped",
    "malformed_caption_lines": "malformed caption lines skipped",
    "clips_too_short": "clips skipped: fewer than min frames after cropping",
    "clips_too_long": "clips skipped: more than --max-frames frames",
    "clips_nonfinite": "clips skipped: NaN/inf coordinates",
    "captions_in_skipped_clips": "captions lost with the skipped clips",
    "clips_written": "clips written",
    "whole_clips": "  of which whole motions",
    "ranged_clips": "  of which cropped time ranges",
    "labels_written": "captions written",
}


def _empty_summary() -> dict:
    return {k: 0 for k in SUMMARY_KEYS}


def _text_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 text file split at '\n' only (str.splitlines also splits at U+2028, U+0085, ...).
    Read as bytes: text mode would also split at a lone '\r'. A leading BOM is dropped."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                        "expected the HumanML3D release's UTF-8 files") from None
    if not text:
        return []
    return [line.removesuffix("\r") for line in text.removesuffix("\n").split("\n")]


def _read_ids(root: Path, split: str) -> list[str]:
    path = root / f"{split}.txt"
    if not path.is_file():
        raise UserError(f"{path}: split file not found (expected the HumanML3D release root with "
                        f"train.txt/val.txt/test.txt, new_joints/, texts/)")
    ids = []
    seen = set()
    for line in _text_lines(path):
        name = line.strip()
        if name and name not in seen:
            seen.add(name)
            ids.append(name)
    return ids


def _parse_time(text: str) -> float:
    value = float(text)
    return 0.0 if math.isnan(value) else value


def _parse_captions(path: Path, summary: dict, examples: list[str]):
    """Return (whole-clip captions, {(start, end): [captions]}) for one texts/<id>.txt."""
    whole: list[str] = []
    ranged: dict[tuple[float, float], list[str]] = {}
    for lineno, raw in enumerate(_text_lines(path), 1):
        line = raw.strip()
        if not line:
            summary["empty_caption_lines"] += 1
            continue
        parts = line.split("#")
        if len(parts) < 4:
            summary["malformed_caption_lines"] += 1
            examples.append(f"{path}:{lineno}: expected 'caption#tokens#start#end'")
            continue
        caption = "#".join(parts[:-3]).strip()
        if not caption:
            summary["empty_caption_lines"] += 1
            continue
        try:
            start, end = _parse_time(parts[-2]), _parse_time(parts[-1])
        except ValueError:
            start = end = -1.0
        if start < 0 or end < 0 or math.isinf(start) or math.isinf(end):
            summary["malformed_caption_lines"] += 1
            examples.append(f"{path}:{lineno}: bad start/end {parts[-2]!r}/{parts[-1]!r}")
            continue
        summary["caption_lines"] += 1
        if start == 0.0 and end == 0.0:
            whole.append(caption)
        else:
            ranged.setdefault((start, end), []).append(caption)
    return whole, ranged


def _load_joints(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # corrupt file, pickled object array, ...
        raise UserError(f"{path}: cannot read as a numpy array ({exc.__class__.__name__}: {exc})") from None
    if arr.ndim != 3 or arr.shape[1:] != (NUM_JOINTS, 3):
        raise UserError(f"{path}: expected joint positions of shape [T, {NUM_JOINTS}, 3] "
                        f"(HumanML3D new_joints/), got {list(arr.shape)}")
    return arr


def convert(root, split: str, mirrors: bool = False, max_frames: int | None = None, fps: float = 20,
            min_frames: int = 2, progress: bool = True) -> tuple[list[dict], dict]:
    """Convert one split of a HumanML3D folder. Returns (clips, summary); see the module docstring."""
    root = Path(root)
    if split not in SPLITS:
        raise UserError(f"--split {split!r}: expected one of {', '.join(SPLITS)}")
    if not fps or fps <= 0:
        raise UserError(f"--fps {fps}: expected a positive number of frames per second")
    if max_frames is not None and max_frames < min_frames:
        raise UserError(f"--max-frames {max_frames}: expected at least --min-frames ({min_frames})")
    for sub in ("new_joints", "texts"):
        if not (root / sub).is_dir():
            raise UserError(f"{root / sub}: folder not found (expected the HumanML3D release root "
                            f"holding new_joints/ and texts/)")
    joints_dir, texts_dir = root / "new_joints", root / "texts"
    summary = _empty_summary()
    examples: list[str] = []

    listed = _read_ids(root, split)
    summary["ids_listed"] = len(listed)
    ids = set()
    for name in listed:
        if name.startswith("M") and not mirrors:
            summary["mirror_ids_excluded"] += 1
            continue
        ids.add(name)
    if mirrors:
        for name in listed:
            mirror = "M" + name
            if name.startswith("M") or mirror in ids:
                continue
            if (joints_dir / f"{mirror}.npy").is_file() and (texts_dir / f"{mirror}.txt").is_file():
                ids.add(mirror)
                summary["mirrors_added"] += 1
            else:
                summary["mirrors_missing"] += 1

    clips: list[dict] = []
    bar = _tqdm(sorted(ids), desc=f"HumanML3D {split}", unit="motion", disable=not progress)
    for name in bar:
        npy, txt = joints_dir / f"{name}.npy", texts_dir / f"{name}.txt"
        if not npy.is_file() or not txt.is_file():
            summary["ids_missing_files"] += 1
            examples.append(f"{name}: missing {npy if not npy.is_file() else txt}")
            continue
        whole, ranged = _parse_captions(txt, summary, examples)
        joints = _load_joints(npy)
        summary["ids_converted"] += 1
        if not whole and not ranged:
            summary["ids_without_captions"] += 1
            continue
        pieces = []
        if whole:
            pieces.append((name, joints, whole, "whole_clips"))
        for (start, end) in sorted(ranged):
            pieces.append((f"{name}_{start}_{end}", joints[int(start * fps):int(end * fps)],
                           ranged[(start, end)], "ranged_clips"))
        for video_name, motion, labels, kind in pieces:
            frames = motion.shape[0]
            reason = None
            if frames < min_frames:
                reason = "clips_too_short"
            elif max_frames is not None and frames > max_frames:
                reason = "clips_too_long"
            elif not np.isfinite(motion).all():
                reason = "clips_nonfinite"
            if reason:
                summary[reason] += 1
                summary["captions_in_skipped_clips"] += len(labels)
                continue
            coords = torch.from_numpy(np.ascontiguousarray(motion, dtype=np.float32).reshape(frames, -1).copy())
            clips.append({"video_name": video_name, "coordinates": coords, "labels": list(labels)})
            summary["clips_written"] += 1
            summary[kind] += 1
            summary["labels_written"] += len(labels)
    summary["examples"] = examples[:20]  # first few, for the printed summary
    return clips, summary


def _tqdm(iterable, **kwargs):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is in requirements; keep the converter usable without it
        return iterable
    return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, **kwargs)


def format_summary(summary: dict) -> str:
    lines = [f"{summary.get(k, 0):>8}  {desc}" for k, desc in SUMMARY_KEYS.items()]
    for ex in summary.get("examples", []):
        lines.append(f"          e.g. {ex}")
    return "\n".join(lines)


@exits_on_user_error
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dataloaders.humanml3d", description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="HumanML3D release folder (new_joints/, texts/, train.txt, ...)")
    parser.add_argument("--split", required=True, choices=SPLITS)
    parser.add_argument("--out", required=True, help="output .pkl file")
    parser.add_argument("--mirrors", action="store_true", help="also take the mirrored M<id> motions")
    parser.add_argument("--max-frames", type=int, default=None,
                        help="skip (and count) clips longer than this many frames; default no limit")
    parser.add_argument("--min-frames", type=int, default=2,
                        help="skip (and count) clips shorter than this (default 2; text2motion uses 40)")
    parser.add_argument("--fps", type=float, default=20.0, help="frame rate of new_joints (default 20)")
    args = parser.parse_args(argv)
    clips, summary = convert(args.root, args.split, mirrors=args.mirrors, max_frames=args.max_frames,
                             fps=args.fps, min_frames=args.min_frames)
    if not clips:
        print(format_summary(summary))
        raise UserError(f"{args.root}: no clip of split {args.split!r} survived conversion (see summary)")
    dump_clips(clips, args.out)
    print(format_summary(summary))
    print(f"wrote {len(clips)} clips to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
