"""What a human annotator scores on the person folds: the ceiling a motion reader is measured against.

    .venv/bin/python tools/bx_annotators.py [--splits data/splits] [--name bx] [--folds 5] [--seed 0] [--json F]

Each BX clip has one label per annotator. For every validation clip of every fold and every label position j,
the clip's label j is scored against its *other* labels (the references), as a caption of that clip — an
annotator who watched this very clip — and, with the same references, the label j of another clip: of the same
technique, and of the same person and technique (the same seeded derangements as the model's motion control,
`metrics/motion_control.py`). The fold's constant caption (from its training clips) is scored against the same
references. CIDEr and BLEU-4 are averaged over the label positions; the table gives each fold, the mean ± std,
the swaps' relative change, and in how many folds the annotator beats the constant caption. Only the fold files
(the training file's clips) are read.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common.errors import UserError, exits_on_user_error  # noqa: E402

ROWS = {"same_clip": "annotator, the same clip",
        "swap_technique": "annotator, another clip of the technique",
        "swap_person_technique": "annotator, another clip of the person and technique",
        "constant": "constant caption (no motion)"}
KEYS = ("BLEU-4", "CIDEr")


def fold_scores(scorer, train: list[dict], val: list[dict], seed: int) -> dict[str, dict[str, float]]:
    """{row: {key: mean over label positions}} for one fold."""
    from metrics.baselines import constant_predictions, label_positions
    from metrics.motion_control import GROUPINGS, derangement_within

    names = [c["video_name"] for c in val]
    labels = [list(c["labels"]) for c in val]
    donors = {row: derangement_within([group(c) for c in val], seed).tolist() for row, group in GROUPINGS.items()}
    constant = constant_predictions(train, val)
    per_position = {row: [] for row in ROWS}
    for j in label_positions(val):
        refs = {n: [lab for i, lab in enumerate(labs) if i != j] for n, labs in zip(names, labels)}
        preds = {"same_clip": {n: labs[j] for n, labs in zip(names, labels)},
                 **{row: {n: labels[d][j] for n, d in zip(names, donor)} for row, donor in donors.items()},
                 "constant": constant}
        for row, p in preds.items():
            per_position[row].append(scorer.score(p, refs))
    return {row: {k: statistics.mean(m[k] for m in scores) for k in KEYS} for row, scores in per_position.items()}


def summarize(folds: list[dict]) -> dict:
    out = {}
    for row in ROWS:
        out[row] = {}
        for k in KEYS:
            vals = [f[row][k] for f in folds]
            out[row][k] = {"folds": vals, "mean": statistics.mean(vals),
                           "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    same = out["same_clip"]["CIDEr"]
    for swap in ("swap_technique", "swap_person_technique"):
        other = out[swap]["CIDEr"]
        out[swap]["change"] = {"folds": [b / a - 1 for a, b in zip(same["folds"], other["folds"])],
                               "mean": other["mean"] / same["mean"] - 1}
    out["annotator_beats_constant"] = sum(a > c for a, c in zip(same["folds"], out["constant"]["CIDEr"]["folds"]))
    return out


def table(summary: dict, n: int) -> str:
    head = " | ".join(f"cv{k}" for k in range(n))
    lines = [f"| row (references: the clip's other labels) | {head} | BLEU-4 | CIDEr |",
             "|---|" + "---|" * (n + 2)]
    for row, title in ROWS.items():
        s = summary[row]
        cider = " | ".join(f"{v:.2f}" for v in s["CIDEr"]["folds"])
        lines.append(f"| {title} | {cider} | {s['BLEU-4']['mean']:.2f} ± {s['BLEU-4']['std']:.2f} | "
                     f"{s['CIDEr']['mean']:.2f} ± {s['CIDEr']['std']:.2f} |")
    for swap in ("swap_technique", "swap_person_technique"):
        ch = summary[swap]["change"]
        lines.append(f"{ROWS[swap]}: CIDEr change per fold " + " / ".join(f"{100 * c:+.0f} %" for c in ch["folds"])
                     + f", on the mean {100 * ch['mean']:+.1f} %")
    lines.append(f"folds where the annotator beats the constant caption: {summary['annotator_beats_constant']}/{n}")
    return "\n".join(lines)


@exits_on_user_error
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--splits", default="data/splits", help="folder of the fold files")
    p.add_argument("--name", default="bx", help="fold file prefix")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="seed of the derangements (the motion control's default)")
    p.add_argument("--json", type=Path, help="also write the summary here")
    args = p.parse_args(argv)
    from dataloaders.formats import load_clips
    from metrics.caption import CaptionScorer

    files = [(Path(args.splits) / f"{args.name}_cv{k}_train.pkl", Path(args.splits) / f"{args.name}_cv{k}_val.pkl")
             for k in range(args.folds)]
    missing = [str(f) for pair in files for f in pair if not f.is_file()]
    if missing:
        raise UserError(f"fold file not found: {missing[0]} (make them with `python -m dataloaders.splits "
                        f"--data <train.pkl> --out {args.splits} --name {args.name} --folds {args.folds}`)")
    scorer = CaptionScorer(meteor=False)
    folds = []
    for train_file, val_file in files:
        val = load_clips(val_file)
        if min(len(c.get("labels") or []) for c in val) < 2:
            raise UserError(f"{val_file}: every clip needs at least 2 labels (one scored, the others references)")
        folds.append(fold_scores(scorer, load_clips(train_file), val, args.seed))
    summary = summarize(folds)
    print(table(summary, args.folds))
    if args.json:
        args.json.write_text(json.dumps({"folds": folds, "summary": summary}, indent=1))
    return summary


if __name__ == "__main__":
    main()
