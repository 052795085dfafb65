"""One table for many runs: mean ± std over seeds per (experiment, split), next to the baselines.

A run is a finished experiment folder (config_resolved.yaml + jsons/metrics_epoch*.json written during
training). Runs are grouped by their parent folder (the experiment) and their own name without the seed
suffix (the split): `results/bx_runs/bx_finetune/person_s43` → (bx_finetune, person). The model of a run
is the one its config selects: with early stopping, the epoch of the best validation CIDEr (the checkpoint
`evaluate.py --checkpoint best` loads; selected on the same clips, hence slightly optimistic); without,
the last epoch. The last column is the CIDEr of each run's last evaluated epoch, so the optimism of
picking the epoch on the validation clips is visible next to it. Baselines (`metrics/baselines.py`: constant
caption, nearest neighbour per label position, random same-person clip per label position) are scored once per
(training file, validation file) pair with the same scorer; the strongest one of each split is named under
the table.
"""
from __future__ import annotations

import logging
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Callable

from common.errors import UserError
from dataloaders.formats import load_clips
from metrics.baselines import score_baselines, strongest_line
from metrics.report import best_epoch, load_references, read_experiment_metrics

SEED_SUFFIX = re.compile(r"_s\d+$")

log = logging.getLogger("motion2text")


def _run_config(run: Path, load_config: Callable):
    path = run / "config_resolved.yaml"
    if not path.is_file():
        raise UserError(f"{run}: no config_resolved.yaml, expected a folder written by train_t5_stagcn.py")
    return load_config(path)


def selected_epoch(cfg, per_epoch: dict) -> int:
    return best_epoch(per_epoch) if cfg.EVAL.EARLY_STOP_PATIENCE else max(per_epoch)


def distinct_runs(runs: list[Path]) -> list[Path]:
    """`runs` without repeats of a folder (same resolved path: `A`, `A/`, `./A`, a link to A), each repeat
    named in a warning; otherwise one run given twice would count as two seeds."""
    seen: dict[Path, Path] = {}
    for run in map(Path, runs):
        real = run.resolve()
        if real in seen:
            log.warning("--summary: %s is %s again; counted once", run, seen[real])
        else:
            seen[real] = run
    return list(seen.values())


def collect_runs(runs: list[Path], load_config: Callable) -> dict[tuple[str, str], list[dict]]:
    """{(experiment, split): [{"seed", "epoch", "metrics", "last", "train", "test"}, ...]}, each distinct
    run folder once. `load_config(path)` reads a run's config_resolved.yaml (engine.config_loader.load_config)."""

    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in distinct_runs(runs):
        cfg = _run_config(run, load_config)
        per_epoch = read_experiment_metrics(run)
        if not per_epoch:
            raise UserError(f"{run}: no jsons/metrics_epoch*.json (did the run finish with EVAL.SCORE true?)")
        epoch = selected_epoch(cfg, per_epoch)
        folder = run.resolve()  # `.` or `person_s1` alone still name their experiment and split
        groups[(folder.parent.name, SEED_SUFFIX.sub("", folder.name))].append(
            {"seed": cfg.SEED, "epoch": epoch, "metrics": per_epoch[epoch], "last": per_epoch[max(per_epoch)],
             "train": cfg.path(cfg.DATA.TRAIN), "test": cfg.path(cfg.DATA.TEST)})
    return dict(groups)


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def seed_cell(scores: list[dict], key: str) -> str:
    """Mean ± std of one metric over seeds; "–" when a run lacks it (e.g. METEOR without Java)."""
    return mean_std([m[key] for m in scores]) if all(key in m for m in scores) else "–"


def baseline_rows(scorer, train: Path, test: Path) -> tuple[dict[str, list[dict]], str]:
    """({baseline name: [metrics per draw]}, footnote) for one (training file, validation file) pair."""
    return score_baselines(scorer, load_clips(train), load_clips(test), load_references(test))


def markdown_table(groups: dict[tuple[str, str], list[dict]], keys: list[str], scorer=None) -> str:
    """Split by split: baselines first (when a scorer is given), then each experiment, mean ± std over seeds;
    with baselines, the strongest baseline of each split under the table."""

    lines = ["| split | model | runs (seeds) | epoch | " + " | ".join(keys) + " | CIDEr, last epoch |",
             "|---|---|---|---|" + "---|" * (len(keys) + 1)]
    notes = []
    for split in sorted({s for _, s in groups}):
        if scorer is not None:
            pairs = {(r["train"], r["test"]) for (_, s), rs in groups.items() if s == split for r in rs}
            for train, test in sorted(pairs):
                rows, note = baseline_rows(scorer, train, test)
                for name, draws in rows.items():
                    lines.append(f"| {split} | {name} | – | – | " + " | ".join(seed_cell(draws, k) for k in keys) + " | – |")
                where = split if len(pairs) == 1 else f"{split}, {Path(test).name}"
                notes += [f"{where}: {strongest_line(rows)}", f"{where}: {note}"]
        for (exp, s), rs in sorted(groups.items()):
            if s != split:
                continue
            rs = sorted(rs, key=lambda r: r["seed"])
            cells = [seed_cell([r["metrics"] for r in rs], k) for k in keys]
            last = seed_cell([r["last"] for r in rs], "CIDEr")
            seeds = ", ".join(str(r["seed"]) for r in rs)
            epochs = ", ".join(str(r["epoch"]) for r in rs)
            lines.append(f"| {split} | {exp} | {len(rs)} ({seeds}) | {epochs} | " + " | ".join(cells) + f" | {last} |")
    if notes:
        lines += ["", "(no motion): the row never reads the validation clip's motion."] + notes
    return "\n".join(lines)
