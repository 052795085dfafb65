"""Pictures of what the STA-GCN attends to: one PNG per clip (`evaluate.py --plot-attention DIR`).

Each picture shows, at a representative frame (the frame with the largest total node attention, not
counting the 4 frames at either end of a long clip, where convolution padding dominates):

* the skeleton seen from the front (x right, y up) and from the side (z, y), bones in grey, joints
  coloured by ``att_node`` at that frame (colour scale = this clip's attention range, values on the bar);
* the strongest learned edges of ``att_A``: the top-k joint pairs of the mean of the 4 learned graphs
  (symmetrised by max(a_ij, a_ji), self links excluded), drawn as dashed red lines, width by weight;
* ``att_node`` over the whole clip (joints × frames) with the representative frame marked;
* a title with the clip name, the predicted caption and a reference caption.

Rendering uses matplotlib's ``Figure`` with the Agg canvas directly (no pyplot state, no display).
"""
from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from common.skeleton import N_JOINTS, SMPL_PARENTS
from metrics.caption import sanitize_caption

JOINT_NAMES = ("pelvis", "l_hip", "r_hip", "spine1", "l_knee", "r_knee", "spine2", "l_ankle", "r_ankle", "spine3",
               "l_foot", "r_foot", "neck", "l_collar", "r_collar", "head", "l_shoulder", "r_shoulder", "l_elbow",
               "r_elbow", "l_wrist", "r_wrist")
TOP_K_EDGES = 8
_WRAP = 110


EDGE_FRAMES = 4  # frames at either end where the temporal convolutions' zero padding shapes attention


def representative_frame(att_node: np.ndarray) -> int:
    """Index of the frame with the largest summed node attention ([T, 22] → t). The EDGE_FRAMES frames at
    either end (padding artefacts of the kernel-9 temporal convolutions) only count for short clips."""
    total = np.asarray(att_node, dtype=np.float64).sum(axis=1)
    if len(total) > 4 * EDGE_FRAMES:
        return EDGE_FRAMES + int(np.argmax(total[EDGE_FRAMES:-EDGE_FRAMES]))
    return int(np.argmax(total))


def strongest_edges(att_A: np.ndarray, k: int = TOP_K_EDGES) -> list[tuple[int, int, float]]:
    """Top-k (i, j, weight), i < j, of the mean learned graph ([4, 22, 22]); zero-weight pairs are left out."""
    a = np.asarray(att_A, dtype=np.float64)
    a = a.mean(axis=0) if a.ndim == 3 else a
    sym = np.maximum(a, a.T)
    iu, ju = np.triu_indices(sym.shape[0], k=1)
    w = sym[iu, ju]
    order = np.argsort(-w, kind="stable")[:k]
    return [(int(iu[o]), int(ju[o]), float(w[o])) for o in order if w[o] > 0]


def _text(s: Optional[str], limit: int = 400) -> str:
    """A caption made safe for a title: one line, printable, no mathtext ($)."""
    if not s:
        return "—"
    s = sanitize_caption(s)
    s = "".join(ch if ch.isprintable() else "?" for ch in s)[:limit]
    return s.replace("$", r"\$") or "—"


def _wrapped(label: str, s: Optional[str]) -> str:
    return "\n".join(textwrap.wrap(f"{label}: {_text(s)}", _WRAP, subsequent_indent="    ")) or label


def safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")[:120] or "clip"


def plot_clip_attention(out_path: Path, coords, att_node, att_A, caption: Optional[str],
                        reference: Optional[str], name: str = "", subtitle: str = "",
                        top_k: int = TOP_K_EDGES) -> Path:
    """Write one PNG; `coords` [T, 66], `att_node` [T', 22] (T' = T normally), `att_A` [4, 22, 22]."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    import matplotlib
    from matplotlib import colors

    coords = np.asarray(coords, dtype=np.float64)
    joints = coords.reshape(coords.shape[0], N_JOINTS, 3)
    att = np.asarray(att_node, dtype=np.float64).reshape(-1, N_JOINTS)
    t_att = representative_frame(att)
    # att_node covers the clip's frames; map proportionally should a model ever change the frame count.
    t = t_att if len(att) == len(joints) else int(round(t_att * (len(joints) - 1) / max(len(att) - 1, 1)))
    pose, weights = joints[t], att[t_att]
    edges = strongest_edges(att_A, top_k)

    lo, hi = float(att.min()), float(att.max())
    norm = colors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1e-6)
    cmap = matplotlib.colormaps["plasma"]

    fig = Figure(figsize=(13.5, 6.4), dpi=100)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(1, 3, width_ratios=[1, 1, 1.7], wspace=0.3)
    w_max = max((w for _, _, w in edges), default=1.0) or 1.0
    focus = int(np.argmax(weights))
    for col, (axis_h, label_h, view) in enumerate(((0, "x (person's left →)", "front"),
                                                   (2, "z (facing direction →)", "side"))):
        ax = fig.add_subplot(grid[0, col])
        h, v = pose[:, axis_h], pose[:, 1]
        for j, p in enumerate(SMPL_PARENTS):
            if p >= 0:
                ax.plot([h[p], h[j]], [v[p], v[j]], color="0.6", lw=3, zorder=1, solid_capstyle="round")
        for n, (i, j, w) in enumerate(edges):
            ax.plot([h[i], h[j]], [v[i], v[j]], color="tab:red", ls="--", lw=0.8 + 1.7 * w / w_max,
                    alpha=0.3 + 0.6 * w / w_max, zorder=2, label="learned edge (att_A)" if n == 0 else None)
        # The trajectory of the most attended joint over the clip gives the motion some context.
        path_h, path_v = joints[:, focus, axis_h], joints[:, focus, 1]
        ax.plot(path_h, path_v, color="tab:blue", lw=1, ls=":", alpha=0.8, zorder=1,
                label=f"path of {JOINT_NAMES[focus]}")
        ax.scatter(h, v, c=weights, cmap=cmap, norm=norm, s=70, edgecolors="black", linewidths=0.6, zorder=3)
        ax.plot([], [], color="0.6", lw=3, label="bone")
        pad = 0.1
        x0, x1 = min(h.min(), path_h.min()) - pad, max(h.max(), path_h.max()) + pad
        y0, y1 = min(v.min(), path_v.min()) - pad, max(v.max(), path_v.max()) + pad
        half = max(x1 - x0, 0.6 * (y1 - y0)) / 2  # a narrow pose still gets a readable box
        mid = (x0 + x1) / 2
        ax.set_xlim(mid - half, mid + half)
        ax.set_ylim(y0, y1)
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel(label_h, fontsize=9)
        ax.set_ylabel("y (up)", fontsize=9)
        ax.set_title(f"{view} view, frame {t} of 0–{len(joints) - 1}", fontsize=10)
        ax.tick_params(labelsize=8)
        if col == 0:
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=7.5, ncol=1, frameon=False)

    ax = fig.add_subplot(grid[0, 2])
    im = ax.imshow(att.T, aspect="auto", origin="lower", cmap=cmap, norm=norm, interpolation="nearest")
    ax.axvline(t_att, color="white", lw=1.2, ls="--")
    ax.set_yticks(range(N_JOINTS))
    ax.set_yticklabels(JOINT_NAMES, fontsize=6.5)
    ax.set_xlabel("frame", fontsize=9)
    ax.set_title("att_node over time (dashed: frame shown)", fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    cbar = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
    cbar.set_label("att_node (joint colour)", fontsize=8)
    cbar.ax.tick_params(labelsize=7)
    if edges:
        text = "strongest learned edges (mean of the 4 att_A graphs): " + ", ".join(
            f"{JOINT_NAMES[i]}–{JOINT_NAMES[j]} {w:.2f}" for i, j, w in edges[:5])
    else:
        text = "att_A: no learned edge has a weight > 0"
    fig.text(0.5, -0.02, "\n".join(textwrap.wrap(text, 170)), fontsize=8, ha="center", va="top")

    head = f"{_text(name, 120)}{'  ·  ' + _text(subtitle, 120) if subtitle else ''}"
    fig.suptitle("\n".join([head, _wrapped("predicted", caption), _wrapped("reference", reference)]),
                 fontsize=10, x=0.02, ha="left", y=0.995, va="top")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, format="png", bbox_inches="tight", pad_inches=0.15)
    return out_path


def plot_attention_set(out_dir: Path, items: Iterable[dict], subtitle: str = "", limit: int = 0) -> list[Path]:
    """One PNG per item ({"name", "coords", "att_node", "att_A", "caption", "reference"}) in `out_dir`,
    named after the clip; `limit` > 0 stops after that many. Returns the written paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    used: set[str] = set()
    for item in items:
        if limit and len(written) >= limit:
            break
        stem = safe_filename(item["name"])
        base, n = stem, 1
        while stem in used:
            n += 1
            stem = f"{base}_{n}"
        used.add(stem)
        written.append(plot_clip_attention(out_dir / f"{stem}.png", item["coords"], item["att_node"], item["att_A"],
                                           item.get("caption"), item.get("reference"), name=item["name"],
                                           subtitle=subtitle))
    return written
