"""Reproducible validation splits of a coaching training file (the official test split stays untouched).

    python -m dataloaders.splits --data ../shared/data/bx/BX_train.pkl --out data/splits --name bx

writes `<name>_random_{train,val}.pkl` (clips drawn at random) and `<name>_person_{train,val}.pkl`
(person-disjoint: the number before the first `_` of `video_name` identifies the person). Clips of one
person share habits and often identical labels, so the random split is the easier one.

    python -m dataloaders.splits --data ../shared/data/bx/BX_train.pkl --out data/splits --name bx --folds 5

writes instead K person-disjoint cross-validation folds `<name>_cv{k}_{train,val}.pkl` (k = 0 … K-1): every
clip is a validation clip in exactly one fold, and every person's clips are in the same fold. With
`--fold-by clip` (e.g. `--name bx_seen`) the folds hold *seen* persons instead: each person's clips of a
technique are dealt over the folds, so a validation clip's person and technique are in its training file
whenever that person has two or more clips of it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from dataloaders.formats import dump_clips, load_clips
from common.errors import UserError, exits_on_user_error


def person_of(video_name: str) -> str:
    return video_name.split("_", 1)[0]


def person_id(video_name: str) -> Optional[str]:
    """The person of a clip when its name starts with a number (`2_back_5` → '2'), else None (e.g. the
    synthetic `test_0001`): callers then group such clips by technique alone."""
    p = person_of(video_name)
    return p if p.isdigit() else None


def random_split(clips: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    order = np.random.default_rng(seed).permutation(len(clips))
    n_val = max(1, round(val_fraction * len(clips)))
    val = set(order[:n_val].tolist())
    return [c for i, c in enumerate(clips) if i not in val], [c for i, c in enumerate(clips) if i in val]


def person_split(clips: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Whole persons go to validation, in a seeded order, until it holds ≥ val_fraction of the clips."""
    persons = sorted({person_of(c["video_name"]) for c in clips})
    if len(persons) < 2:
        raise UserError(f"person split: only {len(persons)} person id(s) found, expected at least 2")
    order = np.random.default_rng(seed).permutation(len(persons))
    val_persons, n_val = set(), 0
    for k in order:
        if n_val >= val_fraction * len(clips) or len(val_persons) == len(persons) - 1:
            break
        val_persons.add(persons[k])
        n_val += sum(person_of(c["video_name"]) == persons[k] for c in clips)
    train = [c for c in clips if person_of(c["video_name"]) not in val_persons]
    val = [c for c in clips if person_of(c["video_name"]) in val_persons]
    return train, val


def person_folds(clips: list[dict], k: int, seed: int) -> list[tuple[list[dict], list[dict]]]:
    """K (train, val) pairs; the validation clips of the folds are person-disjoint and cover every clip once.

    Persons (sorted, then a seeded permutation) are dealt round-robin, K per round, so the folds differ by at
    most one person; within a round the person with the most clips goes to the fold holding the fewest so far,
    which keeps the folds' clip counts close."""
    persons = sorted({person_of(c["video_name"]) for c in clips})
    if k < 2 or len(persons) < k:
        raise UserError(f"--folds {k}: expected 2 <= folds <= the number of persons ({len(persons)})")
    size = {p: 0 for p in persons}
    for c in clips:
        size[person_of(c["video_name"])] += 1
    order = [persons[i] for i in np.random.default_rng(seed).permutation(len(persons))]
    fold_of, load = {}, [0] * k
    for start in range(0, len(order), k):
        dealt = sorted(order[start:start + k], key=lambda p: -size[p])  # stable: ties keep the seeded order
        emptiest = sorted(range(k), key=lambda f: (load[f], f))
        for person, f in zip(dealt, emptiest):
            fold_of[person] = f
            load[f] += size[person]
    return partition(clips, [fold_of[person_of(c["video_name"])] for c in clips], k)


def partition(clips: list[dict], fold: list[int], k: int) -> list[tuple[list[dict], list[dict]]]:
    """K (train, val) pairs: fold f validates the clips with fold[i] == f and trains on the others."""
    return [([c for c, g in zip(clips, fold) if g != f], [c for c, g in zip(clips, fold) if g == f]) for f in range(k)]


def seen_person_folds(clips: list[dict], k: int, seed: int) -> list[tuple[list[dict], list[dict]]]:
    """K (train, val) pairs whose validation clips cover every clip once, with every person seen in training.

    The clips of each (person, technique), in file order then a seeded permutation, are dealt to the folds in
    turn, one dealer for all groups (so the folds' sizes differ by at most one): a group of n >= K clips puts at
    least one clip in every fold's training file, a group of n < K clips leaves n - 1 of them in training."""
    if k < 2 or len(clips) < k:
        raise UserError(f"--folds {k}: expected 2 <= folds <= the number of clips ({len(clips)})")
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(clips):
        groups.setdefault((person_of(c["video_name"]), str(c.get("motion_type"))), []).append(i)
    rng = np.random.default_rng(seed)
    fold, dealer = [0] * len(clips), 0
    for key in sorted(groups):
        for i in rng.permutation(groups[key]).tolist():
            fold[i] = dealer % k
            dealer += 1
    return partition(clips, fold, k)


FOLDINGS = {"person": person_folds, "clip": seen_person_folds}


def write_folds(clips: list[dict], out: Path, name: str, k: int, seed: int, by: str = "person") -> None:
    for f, (train, val) in enumerate(FOLDINGS[by](clips, k, seed)):
        for part, subset in (("train", train), ("val", val)):
            dump_clips(subset, out / f"{name}_cv{f}_{part}.pkl")
        persons = sorted({person_of(c["video_name"]) for c in val}, key=lambda p: (len(p), p))
        print(f"cv{f}: {len(train)} train / {len(val)} val clips (val persons {', '.join(persons)}) "
              f"→ {out / f'{name}_cv{f}_{{train,val}}.pkl'}")


@exits_on_user_error
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dataloaders.splits", description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="labelled training file to split")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--name", default="bx", help="file name prefix")
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", type=int, default=0,
                    help="K > 0: write K person-disjoint cross-validation folds instead of the two splits")
    ap.add_argument("--fold-by", choices=sorted(FOLDINGS), default="person",
                    help="person: validation persons are new (default); clip: every person is also in training")
    args = ap.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        raise UserError(f"--val-fraction {args.val_fraction}: expected a value in (0, 1)")
    if args.folds < 0 or args.folds == 1:
        raise UserError(f"--folds {args.folds}: expected 0 (the two splits) or at least 2")
    clips = load_clips(args.data)
    if args.folds:
        write_folds(clips, Path(args.out), args.name, args.folds, args.seed, args.fold_by)
        return 0
    for kind, split in (("random", random_split), ("person", person_split)):
        train, val = split(clips, args.val_fraction, args.seed)
        for part, subset in (("train", train), ("val", val)):
            path = Path(args.out) / f"{args.name}_{kind}_{part}.pkl"
            dump_clips(subset, path)
        persons = {person_of(c["video_name"]) for c in val}
        print(f"{kind}: {len(train)} train / {len(val)} val clips ({len(persons)} persons in val) "
              f"→ {Path(args.out) / f'{args.name}_{kind}_{{train,val}}.pkl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
