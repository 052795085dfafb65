"""A dataset file with the motion taken out: the control that says what a model scores without reading motion.

    .venv/bin/python tools/blind_data.py IN.pkl [IN2.pkl …] OUT_DIR --standard ../shared/data/bx/BX_standard.pkl

Every clip keeps its name, technique, labels, length and segment keys; its coordinates become the first
frame of its technique's standard, repeated for the clip's length (a still pose, the same for every clip of
the technique). A model trained and scored on such files sees which technique was punched and how long the
clip is, nothing of how it was punched: its score is the strongest motion-free baseline of its own kind —
the same architecture, data and training, with the language prior and the technique alone. Cross-validate
it like any setting: `tools/bx_cv.py CONFIG --splits DIR` on folds written through this tool (only the
model's rows of that table mean anything; the baselines there read the blinded coordinates).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common.errors import UserError, exits_on_user_error  # noqa: E402


def blind_clips(clips: list[dict], standards: dict) -> list[dict]:
    """The clips with each one's coordinates replaced by its technique's standard's first frame, repeated."""
    out = []
    for clip in clips:
        technique = clip.get("motion_type")
        if technique not in standards:
            raise UserError(f"clip {clip.get('video_name')!r}: technique {technique!r} has no standard "
                            f"(standards: {', '.join(sorted(standards))})")
        still = standards[technique][:1].expand(len(clip["coordinates"]), -1).clone()
        out.append({**clip, "coordinates": still})
    return out


@exits_on_user_error
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="tools/blind_data.py", description=__doc__.split("\n")[0])
    p.add_argument("inputs", nargs="+", type=Path, help="dataset files, then the output folder as the last argument")
    p.add_argument("--standard", type=Path, required=True, help="standards file (DATA.STANDARD)")
    a = p.parse_args(argv)
    from dataloaders.formats import dump_clips, load_clips, load_standards

    *files, out_dir = a.inputs
    if not files:
        raise UserError("tools/blind_data.py: give the dataset files and then the output folder")
    standards = load_standards(a.standard)
    for path in files:
        dump_clips(blind_clips(load_clips(path), standards), out_dir / path.name)
        print(f"wrote {out_dir / path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
