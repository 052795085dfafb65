"""Train on a labelled BX training file and score another labelled file, with the setting recommended for the
situation: are the test file's persons seen in training, or new?

    .venv/bin/python tools/bx_test.py --test F [--train G] [--cfg results/<exp>] [--epochs E] [--out DIR]

The person is the number before the first `_` of `video_name`. Every test person seen in G → "seen"; none →
"new"; some → "mixed", which gets the new-person setting (it does not lean on knowing the person). The
recommended setting and epoch count per situation come from README "Real coaching data"; `--cfg`/`--epochs`
override them. Training runs E epochs with no early stopping (a test file never picks the epoch) into
DIR (default results/bx_test/<config name>), then the test file is scored once next to the baselines, and
the motion control re-captions it with motions swapped. Exit 2 with one line on bad input.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common.errors import UserError, exits_on_user_error  # noqa: E402
from tools.bx_cv import fixed_epoch_overrides  # noqa: E402

# situation → (config folder, epochs); the evidence for each is in README "Real coaching data".
RECOMMENDED = {"seen": ("results/bx_finetune", 32), "new": ("results/bx_new_persons_clean", 8)}


def situation(train_clips: list[dict], test_clips: list[dict]) -> tuple[str, set[str], set[str]]:
    """("seen" | "new" | "mixed", test persons seen in training, test persons not seen)."""
    from dataloaders.splits import person_of

    trained = {person_of(c["video_name"]) for c in train_clips}
    tested = {person_of(c["video_name"]) for c in test_clips}
    seen, new = tested & trained, tested - trained
    return ("seen" if not new else "new" if not seen else "mixed"), seen, new


def run(cmd: list[str], threads: int = 2) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    print("$ " + " ".join(cmd), flush=True)
    code = subprocess.run(cmd, cwd=REPO, env=env).returncode
    if code != 0:
        raise SystemExit(code)


@exits_on_user_error
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--test", required=True, help="labelled file to score (never used to choose anything)")
    ap.add_argument("--train", default="../shared/data/bx/BX_train.pkl", help="labelled training file")
    ap.add_argument("--cfg", help="experiment folder to train (default: the recommended one for the situation)")
    ap.add_argument("--epochs", type=int, help="epochs (default: the recommended number for the situation)")
    ap.add_argument("--out", help="run folder (default results/bx_test/<config name>)")
    a = ap.parse_args(argv)
    from dataloaders.formats import load_clips

    train_path, test_path = (Path(p).resolve() for p in (a.train, a.test))
    for flag, path in (("--train", train_path), ("--test", test_path)):
        if not path.is_file():
            raise UserError(f"{flag} {path}: file not found")
    where, seen, new = situation(load_clips(train_path), load_clips(test_path))
    cfg, epochs = RECOMMENDED["seen" if where == "seen" else "new"]
    cfg, epochs = a.cfg or cfg, a.epochs or epochs
    if epochs < 1:
        raise UserError(f"--epochs {epochs}: expected >= 1")
    if not (REPO / cfg / "config.yaml").is_file():
        raise UserError(f"--cfg {cfg}: no config.yaml there")
    print(f"situation: {where} — test persons seen in training: {', '.join(sorted(seen)) or 'none'}; "
          f"new: {', '.join(sorted(new)) or 'none'}")
    print(f"setting: {cfg}, {epochs} epochs" + (" (recommended for this situation)" if not (a.cfg or a.epochs) else ""))
    out = a.out or f"results/bx_test/{Path(cfg).name}"
    overrides = [f"LOGDIR={out}", f"DATA.TRAIN={train_path}", f"DATA.TEST={test_path}", *fixed_epoch_overrides(epochs),
                 f"RETRIEVAL.EXCLUDE={'CLIP' if where == 'seen' else 'PERSON'}"]
    py = sys.executable
    run([py, "train_t5_stagcn.py", "--cfg_file", f"{cfg}/config.yaml", "--set", *overrides])
    run([py, "evaluate.py", "--exp", cfg, "--set", *overrides, "--baselines"])
    run([py, "evaluate.py", "--exp", cfg, "--set", *overrides, "--checkpoint", "latest", "--motion-control"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
