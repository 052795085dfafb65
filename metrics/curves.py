"""Training curves of one experiment in one picture (`evaluate.py --exp X --plot-curves FILE.png`).

Left: the training loss per epoch (jsons/loss_history.json) and the teacher-forced validation loss
(jsons/val_loss.json). Right: CIDEr and BLEU-4 per scored epoch (metrics.json or jsons/metrics_epoch*.json),
the best CIDEr epoch marked. Any of the three may be missing; a panel without data says so.

Rendering uses matplotlib's ``Figure`` with the Agg canvas directly (no pyplot state, no display).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from common.errors import UserError
from metrics.report import BEST_BY, best_epoch, read_experiment_metrics, read_json

SCORE_KEYS = (BEST_BY, "BLEU-4")


@dataclass
class Curves:
    """{epoch: value} series of one experiment; empty when its file is missing."""
    train_loss: dict[int, float] = field(default_factory=dict)
    val_loss: dict[int, float] = field(default_factory=dict)
    scores: dict[str, dict[int, float]] = field(default_factory=dict)  # metric → {epoch: value}
    best_epoch: Optional[int] = None  # by BEST_BY

    def empty(self) -> bool:
        return not (self.train_loss or self.val_loss or any(self.scores.values()))

    def describe(self) -> str:
        """What the picture shows, e.g. 'training loss 2 epochs, no validation loss, CIDEr 3 epochs, ...'."""
        def part(name: str, series: dict) -> str:
            return f"{name} {len(series)} epochs" if series else f"no {name}"

        parts = [part("training loss", self.train_loss), part("validation loss", self.val_loss)]
        scored = [part(k, v) for k, v in self.scores.items() if v]
        return ", ".join(parts + (scored or ["no scores"]))


def _number(value, path: Path, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{path}: {where} is {value!r}, expected a number")
    return float(value)


def _epoch(key, path: Path) -> int:
    try:
        return int(key)
    except (TypeError, ValueError):
        raise UserError(f"{path}: epoch {key!r} is not an epoch number") from None


def read_train_loss(path: Path) -> dict[int, float]:
    """jsons/loss_history.json: [{"epoch": N, "loss": x}, ...] (what the trainer writes)."""
    history = read_json(path, "loss history")
    if not isinstance(history, list) or not all(isinstance(h, dict) and {"epoch", "loss"} <= h.keys()
                                                for h in history):
        raise UserError(f"{path}: expected a list of {{\"epoch\": N, \"loss\": x}} (written by training)")
    return {_epoch(h["epoch"], path): _number(h["loss"], path, f"the loss of epoch {h['epoch']}") for h in history}


def read_val_loss(path: Path) -> dict[int, float]:
    """jsons/val_loss.json: {"N": loss, ...}."""
    losses = read_json(path, "validation loss")
    if not isinstance(losses, dict):
        raise UserError(f"{path}: expected an object {{epoch: loss}} (written by training)")
    return {_epoch(e, path): _number(v, path, f"the loss of epoch {e}") for e, v in losses.items()}


def read_curves(logdir: Path) -> Curves:
    """The curves an experiment folder has files for."""
    jsons = Path(logdir) / "jsons"
    curves = Curves()
    if (jsons / "loss_history.json").is_file():
        curves.train_loss = read_train_loss(jsons / "loss_history.json")
    if (jsons / "val_loss.json").is_file():
        curves.val_loss = read_val_loss(jsons / "val_loss.json")
    per_epoch = read_experiment_metrics(logdir) or {}
    curves.scores = {k: {e: float(m[k]) for e, m in per_epoch.items() if isinstance(m.get(k), (int, float))}
                     for k in SCORE_KEYS}
    curves.best_epoch = best_epoch(per_epoch)
    return curves


def _series(ax, values: dict[int, float], label: str, **style) -> None:
    epochs = sorted(values)
    ax.plot(epochs, [values[e] for e in epochs], label=label, marker="o", markersize=3, **style)


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} yet", ha="center", va="center", transform=ax.transAxes, color="0.4")


def plot_curves(curves: Curves, out_path: Path, title: str = "") -> Path:
    """Write the two-panel PNG to `out_path` (its folder is created)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    losses, scores = fig.subplots(1, 2)
    if curves.train_loss:
        _series(losses, curves.train_loss, "training loss (epoch mean)", color="tab:blue")
    if curves.val_loss:
        _series(losses, curves.val_loss, "validation loss (teacher-forced)", color="tab:orange")
    if curves.train_loss or curves.val_loss:
        losses.legend(fontsize=8)
    else:
        _no_data(losses, "losses")
    losses.set(title="loss", xlabel="epoch", ylabel="cross-entropy per token")

    for key, colour in zip(SCORE_KEYS, ("tab:green", "tab:purple")):
        if curves.scores.get(key):
            _series(scores, curves.scores[key], key, color=colour)
    if curves.best_epoch is not None:
        scores.axvline(curves.best_epoch, color="0.5", ls="--", lw=1, label=f"best {BEST_BY}: epoch {curves.best_epoch}")
    if any(curves.scores.values()):
        scores.legend(fontsize=8)
        highest = max((v for series in curves.scores.values() for v in series.values() if math.isfinite(v)), default=0)
        scores.set_ylim(0, max(1.0, 1.1 * highest))  # near-zero early scores stay on a readable scale
    else:
        _no_data(scores, "scores (run `evaluate.py --exp` or train with EVAL.SCORE)")
    scores.set(title="caption scores (0-100)", xlabel="epoch")
    for ax in (losses, scores):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title, fontsize=10)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, format="png", bbox_inches="tight")
    return out_path
