"""Offline scoring helpers for `evaluate.py`: read predictions and references, score the epochs of an
experiment, pick the best epoch, print a table, write `metrics.json`.

File formats:

* predictions: JSON ``{video_name: caption}`` (what training writes to ``jsons/results_epoch{N}.json``);
  ``{video_name: {"caption": ...}}`` is accepted too.
* references: a dataset file (``.pkl``/``.pt``/``.pth``, the clips' ``labels``) or a JSON
  ``{video_name: [reference, ...]}`` (a bare string counts as one reference).
* ``results/<exp>/metrics.json``: ``{"best_by": "CIDEr", "best_epoch": N, "keys": [...],
  "references": "<test file>", "epochs": {"N": {metric: value, ...}, ...}}``, values on the 0-100 scale.
"""
from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Mapping, Optional

from common.errors import UserError, sample_names
from common.files import atomic_write_json

RESULTS_RE = re.compile(r"^results_epoch(\d+)\.json$")
BEST_BY = "CIDEr"
METRICS_FILE = "metrics.json"
log = logging.getLogger("motion2text")


# ---- reading -------------------------------------------------------------------------------------

def _refuse_duplicate_keys(path: Path, what: str):
    """An ``object_pairs_hook``: json.loads would silently keep the last of two equal keys."""
    def build(pairs: list) -> dict:
        obj = {}
        for key, value in pairs:
            if key in obj:
                raise UserError(f"{path}: {what} file has the key {key!r} twice (expected each key once)")
            obj[key] = value
        return obj

    return build


def read_json(path: Path, what: str):
    """The JSON content of `path`; a missing, unreadable, malformed, too deeply nested file or one with a
    repeated key is a one-line UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_refuse_duplicate_keys(path, what))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: {what} file is not valid JSON (line {e.lineno}: {e.msg})") from None
    except RecursionError:
        raise UserError(f"{path}: {what} file is nested too deeply to read "
                        "(expected a few levels of objects and lists)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read {what} file ({getattr(e, 'strerror', None) or e})") from None


def load_predictions(path: Path) -> dict[str, str]:
    """``{video_name: caption}`` from a predictions JSON."""
    data = read_json(path, "predictions")
    if not isinstance(data, dict):
        raise UserError(f"{path}: predictions must be a JSON object {{video_name: caption}}, "
                        f"got a {type(data).__name__}")
    out = {}
    for name, value in data.items():
        if isinstance(value, dict) and isinstance(value.get("caption"), str):
            value = value["caption"]
        if not isinstance(value, str):
            raise UserError(f"{path}: prediction of {name!r} is a {type(value).__name__}, expected a caption string")
        out[name] = value
    return out


def references_from_clips(clips: list[dict], source) -> dict[str, list[str]]:
    refs = {}
    for i, clip in enumerate(clips):
        if not isinstance(clip, dict) or not isinstance(clip.get("video_name"), str):
            raise UserError(f"{source}: entry {i} has no string 'video_name'")
        refs[clip["video_name"]] = list(clip.get("labels") or [])
    unlabeled = [k for k, v in refs.items() if not v]
    if unlabeled:
        raise UserError(f"{source}: {len(unlabeled)} clip(s) have no 'labels' to score against: "
                        f"{sample_names(unlabeled)}")
    return refs


def load_references(path: Path) -> dict[str, list[str]]:
    """``{video_name: [reference, ...]}`` from a dataset file (labels) or a references JSON."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = read_json(path, "references")
        if not isinstance(data, dict):
            raise UserError(f"{path}: references must be a JSON object {{video_name: [reference, ...]}}, "
                            f"got a {type(data).__name__}")
        out = {}
        for name, refs in data.items():
            if isinstance(refs, str):
                refs = [refs]
            if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
                raise UserError(f"{path}: references of {name!r} must be a list of strings")
            out[name] = refs
        return out
    from dataloaders.formats import load_clips  # torch import only when a dataset file is given

    return references_from_clips(load_clips(path), path)


# ---- experiment epochs ---------------------------------------------------------------------------

def epoch_result_files(jsons_dir: Path) -> dict[int, Path]:
    """{epoch: jsons/results_epoch{N}.json}, sorted by epoch."""
    jsons_dir = Path(jsons_dir)
    if not jsons_dir.is_dir():
        return {}
    found = {int(m.group(1)): p for p in jsons_dir.iterdir() if (m := RESULTS_RE.match(p.name))}
    return dict(sorted(found.items()))


def score_epochs(scorer, files: Mapping[int, Path], references: dict[str, list[str]]) -> dict[int, dict]:
    """{epoch: metrics} for every predictions file. A damaged file (unreadable, not JSON) is skipped with a
    warning naming it, so one bad epoch does not block the others (an error when no file is readable); a file
    whose ids differ from the references is an error naming that file."""
    out = {}
    damaged = []
    for epoch, path in files.items():
        try:
            preds = load_predictions(path)
        except UserError as e:
            log.warning("skipping epoch %d: %s", epoch, e)
            damaged.append(str(e))
            continue
        try:
            out[epoch] = scorer.score(preds, references)
        except UserError as e:
            raise UserError(f"{path}: {e}") from None
    if damaged and not out:
        raise UserError(damaged[0] if len(damaged) == 1 else f"no readable predictions file: {damaged[0]} (and "
                        f"{len(damaged) - 1} more)")
    return out


def best_epoch(per_epoch: Mapping[int, Mapping[str, float]], key: str = BEST_BY) -> Optional[int]:
    """The epoch with the highest `key` (ties: the earliest); None when no epoch has a finite value."""
    candidates = [(e, m[key]) for e, m in per_epoch.items()
                  if isinstance(m.get(key), (int, float)) and math.isfinite(m[key])]
    if not candidates:
        return None
    return max(candidates, key=lambda ev: (ev[1], -ev[0]))[0]


def ranked_epochs(per_epoch: Mapping[int, Mapping[str, float]], key: str = BEST_BY) -> list[int]:
    """Epochs by `key`, best first (ties: the earliest first)."""
    valid = [(e, m[key]) for e, m in per_epoch.items()
             if isinstance(m.get(key), (int, float)) and math.isfinite(m[key])]
    return [e for e, _ in sorted(valid, key=lambda ev: (-ev[1], ev[0]))]


# ---- output --------------------------------------------------------------------------------------

def format_table(rows: Mapping, keys: Optional[list[str]] = None, label: str = "epoch",
                 mark: Optional[object] = None) -> str:
    """A fixed-width text table, one row per key of `rows` ({row name: {metric: value}}); a value is a
    number (printed with 2 decimals) or a ready string such as "12.30 ± 1.20". The row `mark` gets a '*'
    after its name."""
    if keys is None:
        keys = []
        for m in rows.values():
            keys += [k for k in m if k not in keys]
    names = [f"{r}{'*' if mark is not None and r == mark else ''}" for r in rows]
    cells = [[_cell(m.get(k)) for k in keys] for m in rows.values()]
    first = max([len(label)] + [len(n) for n in names])
    widths = [max([len(k), 7] + [len(row[j]) for row in cells]) for j, k in enumerate(keys)]
    lines = ["  ".join([label.ljust(first)] + [k.rjust(w) for k, w in zip(keys, widths)])]
    for name, row in zip(names, cells):
        lines.append("  ".join([name.ljust(first)] + [c.rjust(w) for c, w in zip(row, widths)]))
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, str):
        return value
    return f"{value:.2f}" if isinstance(value, (int, float)) else "-"


def write_json(path: Path, data) -> Path:
    """Write JSON via a temp file + rename, so a reader never sees half a file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, data)
    except OSError as e:
        raise UserError(f"{path}: cannot write ({e.strerror or e})") from None
    return path


def experiment_metrics(per_epoch: Mapping[int, dict], keys: list[str], references: str) -> dict:
    """The content of results/<exp>/metrics.json."""
    return {"best_by": BEST_BY, "best_epoch": best_epoch(per_epoch), "keys": list(keys),
            "references": references, "epochs": {str(e): dict(m) for e, m in sorted(per_epoch.items())}}


def read_experiment_metrics(logdir: Path) -> Optional[dict[int, dict]]:
    """{epoch: metrics} from results/<exp>/metrics.json and the per-epoch jsons/metrics_epoch{N}.json files
    training wrote: an epoch file newer than metrics.json (training went on after `evaluate.py --exp`) wins.
    A damaged epoch file is skipped with a warning; None when nothing is found."""
    path = Path(logdir) / METRICS_FILE
    found: dict[int, dict] = {}
    summary_time = -1.0
    if path.is_file():
        data = read_json(path, "metrics")
        epochs = data.get("epochs") if isinstance(data, dict) else None
        if not isinstance(epochs, dict):
            raise UserError(f"{path}: expected an object with key 'epochs' (written by `evaluate.py --exp`)")
        try:
            found = {int(e): m for e, m in epochs.items() if isinstance(m, dict)}
        except ValueError:
            raise UserError(f"{path}: 'epochs' keys must be epoch numbers") from None
        summary_time = path.stat().st_mtime
    pattern = re.compile(r"^metrics_epoch(\d+)\.json$")
    jsons = Path(logdir) / "jsons"
    for p in sorted(jsons.iterdir()) if jsons.is_dir() else ():
        m = pattern.match(p.name)
        if not m or (int(m.group(1)) in found and p.stat().st_mtime <= summary_time):
            continue
        try:
            data = read_json(p, "metrics")
        except UserError as e:
            log.warning("skipping %s", e)
            continue
        if isinstance(data, dict):
            found[int(m.group(1))] = data
    return dict(sorted(found.items())) or None
