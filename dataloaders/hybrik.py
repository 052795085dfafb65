"""HybrIK's per-frame 3D joints → this project's clips (22 SMPL joints, [T, 66]).

    python -m dataloaders.hybrik RES.pk [RES2.pk ...] --out learner.pkl [--name NAME] [--motion-type Jab]
                                 [--start F] [--end F]

Input: the `res.pk` that HybrIK's `scripts/demo_video.py --save-pk` writes (a dict of per-frame arrays stacked
over frames; `pred_xyz_29` [T, 29, 3] is read, else `pred_xyz_24_struct` [T, 24, 3]), or a `.npy` of one of
those arrays. Read with the whitelist-only unpickler (numbers and strings, never code).

Joints. HybrIK's 29 joints are SMPL's 24 followed by five leaf joints (head top, the middle fingers, the big
toes); SMPL's 24 end with the two hands. The first 22 are this project's joints, in the same order (`JOINTS`
below), so the map is "keep joints 0-21". Every frame is made pelvis-relative (HybrIK's already are).

Units. HybrIK's `pred_xyz_*` are in units of its 3D box depth (2.2 m), and BX's coordinates are these values
unchanged (BX's mean thigh, hip to knee, is 0.176 units = 0.39 m); so the default `--scale 1` keeps clips in the
units a BX-trained model has seen. `--scale 2.2` would give metres.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from common.errors import UserError, exits_on_user_error
from common.skeleton import N_JOINTS
from dataloaders.formats import dump_clips, read_data_file
from dataloaders.validation import validate_clips

# HybrIK's joint order (its `joints_name_29`); SMPL's 24 are the first 24. Index i of ours = index i of HybrIK's.
HYBRIK_29 = ("pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
             "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "jaw",
             "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
             "left_thumb", "right_thumb", "head", "left_middle", "right_middle", "left_bigtoe", "right_bigtoe")
JOINTS = HYBRIK_29[:N_JOINTS]  # ours: SMPL 0-21 (HybrIK calls SMPL's head joint 15 "jaw")
KEYS = ("pred_xyz_29", "pred_xyz_24_struct")  # in order of preference


def joints_of(obj, source) -> np.ndarray:
    """[T, 24 or 29, 3] joints from what a HybrIK file holds (a res.pk dict, or one array)."""
    if isinstance(obj, dict) and "coordinates" in obj and "video_name" in obj:  # a .npy read by read_data_file
        obj = obj["coordinates"]
    if isinstance(obj, dict):
        key = next((k for k in KEYS if k in obj), None)
        if key is None:
            raise UserError(f"{source}: no {' or '.join(KEYS)} in it (keys: {', '.join(map(str, list(obj)[:12]))}); "
                            "expected the res.pk of HybrIK's demo_video.py --save-pk")
        obj = obj[key]
    array = np.asarray(obj.numpy() if isinstance(obj, torch.Tensor) else obj)
    if array.dtype.kind not in "fiu" or array.ndim != 3 or array.shape[1] not in (24, 29) or array.shape[2] != 3:
        raise UserError(f"{source}: joints of shape {list(array.shape)} ({array.dtype}), expected "
                        "[frames, 29, 3] or [frames, 24, 3] of numbers (HybrIK's pred_xyz_29 / pred_xyz_24_struct)")
    if len(array) < 2:
        raise UserError(f"{source}: {len(array)} frame(s), a clip needs at least 2")
    return array


def to_clip(joints: np.ndarray, name: str, scale: float = 1.0, motion_type: Optional[str] = None,
            start: int = 0, end: Optional[int] = None) -> dict:
    """One clip: joints 0-21 of frames [start, end), pelvis-relative, times `scale`, as [T, 66] float32."""
    ours = joints[start:end, :N_JOINTS].astype(np.float64)
    ours = (ours - ours[:, :1]) * scale
    clip = {"video_name": name, "coordinates": torch.from_numpy(ours.reshape(len(ours), 3 * N_JOINTS)).float()}
    if motion_type:
        clip["motion_type"] = motion_type
    return clip


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dataloaders.hybrik", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("inputs", nargs="+", help="HybrIK res.pk files (or .npy joint arrays), one clip each")
    p.add_argument("--out", required=True, help="dataset file to write (.pkl): one clip per input")
    p.add_argument("--name", help="video_name of the clip (one input only; default: the input's folder and stem)")
    p.add_argument("--motion-type", help="technique of every clip, e.g. Jab (BRANCH 1 compares with its standard)")
    p.add_argument("--start", type=int, default=0, help="first frame kept (default 0)")
    p.add_argument("--end", type=int, help="frame after the last one kept (default: the end)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply coordinates (default 1: HybrIK's units, as BX)")
    return p.parse_args(argv)


@exits_on_user_error
def main(argv=None) -> int:
    a = parse_args(argv)
    if a.name and len(a.inputs) > 1:
        raise UserError("--name names one clip; with several inputs each clip is named after its file")
    if a.start < 0 or (a.end is not None and a.end <= a.start + 1):
        raise UserError(f"--start {a.start} --end {a.end}: expected 0 <= start and at least 2 frames")
    out = Path(a.out)
    if out.suffix.lower() != ".pkl":
        raise UserError(f"--out {out}: expected a .pkl dataset file")
    clips = []
    for path in map(Path, a.inputs):
        joints = joints_of(read_data_file(path), path)
        if a.start >= len(joints) - 1:
            raise UserError(f"{path}: --start {a.start} leaves fewer than 2 of its {len(joints)} frames")
        name = a.name or (f"{path.parent.name}_{path.stem}" if path.parent.name else path.stem)
        clips.append(to_clip(joints, name, a.scale, a.motion_type, a.start, a.end))
    validate_clips(clips, out, require_labels=False)
    dump_clips(clips, out)
    for c in clips:
        print(f"{c['video_name']}: {len(c['coordinates'])} frames")
    print(f"wrote {len(clips)} clip(s) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
