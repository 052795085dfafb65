"""The coaching report: one static HTML page with every asset beside it (`evaluate.py --report DIR`).

Drawing and writing only; what goes on the page comes from engine/coaching_report.py. Per clip: an animated
skeleton (GIF, matplotlib's PillowWriter, no ffmpeg) of the learner and, for BRANCH 1, the standard window the
model compared it with, joints coloured by the STA-GCN's node attention; the instruction, the references and
the clip's CIDEr; a heatmap of the decoder's attention from each written token to each motion token. No
script, no server, no CDN: the page opens from disk.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from common.skeleton import N_JOINTS, SMPL_PARENTS
from metrics.attention_plot import JOINT_NAMES, safe_filename

GIF_FRAMES = 40  # at most this many frames per animation (evenly spaced): small files, smooth enough
GIF_FPS = 10


@dataclass
class ClipView:
    name: str
    caption: str
    references: list[str]
    coords: np.ndarray  # [T, 66] the learner
    att_node: np.ndarray  # [T, 22]
    tokens: list[str]  # the caption's tokens, as written
    cross_attention: np.ndarray  # [len(tokens), N] over T5's input tokens
    source_labels: list[str]  # N names of T5's input tokens (joints under TIME_POOL)
    standard: Optional[np.ndarray] = None  # [T, 66] the standard window compared with (BRANCH 1)
    score: Optional[float] = None  # this clip's CIDEr against its references
    extra: dict = field(default_factory=dict)


HEAD, PELVIS = 15, 0


def _front_view(coords: np.ndarray) -> np.ndarray:
    """[T, 66] → [T, 22, 2]: x to the right, the head up on the page (pose from video has y pointing down,
    motion-capture data up: the side the head is on decides)."""
    joints = np.asarray(coords, dtype=np.float64).reshape(len(coords), N_JOINTS, 3)
    up = 1.0 if np.mean(joints[:, HEAD, 1] - joints[:, PELVIS, 1]) >= 0 else -1.0
    return np.stack([joints[..., 0], up * joints[..., 1]], axis=-1)


def skeleton_gif(out_path: Path, coords: np.ndarray, att_node: np.ndarray,
                 standard: Optional[np.ndarray] = None) -> Path:
    """An animation of the learner (and the standard window beside it), joints coloured by node attention."""
    from matplotlib.animation import FuncAnimation, PillowWriter
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    views = [("learner", _front_view(coords))] + ([("standard window", _front_view(standard))]
                                                   if standard is not None else [])
    att = np.asarray(att_node, dtype=np.float64)
    frames = np.unique(np.linspace(0, len(coords) - 1, min(len(coords), GIF_FRAMES)).round().astype(int))
    fig = Figure(figsize=(2.6 * len(views), 3.0), dpi=72)
    FigureCanvasAgg(fig)
    lo, hi = float(att.min()), float(att.max()) if att.max() > att.min() else float(att.min()) + 1e-9
    artists = []
    for k, (title, pts) in enumerate(views):
        ax = fig.add_subplot(1, len(views), k + 1)
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")
        ax.axis("off")
        span = pts.reshape(-1, 2)
        pad = 0.05 * float(np.ptp(span, axis=0).max() or 1.0)
        ax.set_xlim(span[:, 0].min() - pad, span[:, 0].max() + pad)
        ax.set_ylim(span[:, 1].min() - pad, span[:, 1].max() + pad)
        bones = [ax.plot([], [], color="0.6", lw=1.5)[0] for j in range(1, N_JOINTS)]
        dots = ax.scatter(pts[0, :, 0], pts[0, :, 1], c=att[0], cmap="magma", vmin=lo, vmax=hi, s=18, zorder=3)
        artists.append((pts, bones, dots))

    def draw(t):
        for pts, bones, dots in artists:
            for line, j in zip(bones, range(1, N_JOINTS)):
                p = SMPL_PARENTS[j]
                line.set_data([pts[t, j, 0], pts[t, p, 0]], [pts[t, j, 1], pts[t, p, 1]])
            dots.set_offsets(pts[t])
            dots.set_array(att[min(t, len(att) - 1)])
        return []

    FuncAnimation(fig, draw, frames=frames, blit=False).save(str(out_path), writer=PillowWriter(fps=GIF_FPS))
    return out_path


def cross_attention_png(out_path: Path, tokens: list[str], attention: np.ndarray, source_labels: list[str]) -> Path:
    """Heatmap: one row per written token, one column per motion token, the share of attention."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    att = np.asarray(attention, dtype=np.float64)
    fig = Figure(figsize=(max(4.0, 0.28 * att.shape[1] + 1.5), max(2.0, 0.25 * len(tokens) + 1.0)), dpi=72)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(att, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(tokens)), [t.strip() or "␣" for t in tokens], fontsize=7)
    step = max(1, len(source_labels) // 40)
    ax.set_xticks(range(0, len(source_labels), step), source_labels[::step], rotation=90, fontsize=7)
    ax.set_xlabel("motion token (what the decoder reads)")
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(str(out_path))
    return out_path


def source_labels(n: int, policy: str) -> list[str]:
    """Names of T5's input tokens: joints under TIME_POOL, frames under SKELETON_POOL, frame/joint under ORIGIN;
    anything after them (retrieved text) is 'text'."""
    if policy == "TIME_POOL":
        names = list(JOINT_NAMES)
    elif policy == "SKELETON_POOL":
        names = [f"t{i}" for i in range(n)]
    else:
        names = [f"t{i // N_JOINTS}:{JOINT_NAMES[i % N_JOINTS]}" for i in range(n)]
    return (names + ["text"] * n)[:n]


def html_table(rows: dict[str, dict[str, float]], keys: list[str], label: str) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in [label, *keys])
    body = "".join("<tr><td>" + html.escape(name) + "</td>" + "".join(
        f"<td>{row[k]:.2f}</td>" if isinstance(row.get(k), (int, float))
        else f"<td>{html.escape('' if row.get(k) is None else str(row[k]))}</td>"
        for k in keys) + "</tr>" for name, row in rows.items())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}td:first-child,th:first-child{text-align:left}
.clip{border-top:1px solid #999;padding:1em 0}.clip img{vertical-align:top;margin:0 1em 1em 0;max-width:100%}
.caption{font-size:1.1em;font-weight:bold}.refs{color:#444}"""


def write_report_page(folder: Path, title: str, tables: list[tuple[str, str]], curves: Optional[Path],
                      clips: list[ClipView], notes: list[str] = ()) -> Path:
    """index.html in `folder` with the tables (heading, HTML), the curves picture and one section per clip;
    each clip's GIF and heatmap are written beside it in `assets/`."""
    assets = folder / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    for heading, table in tables:
        parts.append(f"<h2>{html.escape(heading)}</h2>{table}")
    if curves is not None:
        parts.append(f'<h2>Training curves</h2><img src="{html.escape(curves.relative_to(folder).as_posix())}" '
                     'alt="training curves">')
    parts.append(f"<h2>Clips ({len(clips)})</h2>")
    used: set[str] = set()
    for clip in clips:
        stem = safe_filename(clip.name)
        while stem in used:  # two names that differ only in characters a file name cannot hold
            stem += "_"
        used.add(stem)
        gif = skeleton_gif(assets / f"{stem}.gif", clip.coords, clip.att_node, clip.standard)
        heat = cross_attention_png(assets / f"{stem}_attention.png", clip.tokens, clip.cross_attention,
                                   clip.source_labels)
        score = "" if clip.score is None else f" · CIDEr {clip.score:.1f}"
        refs = "".join(f"<li>{html.escape(r)}</li>" for r in clip.references) or "<li>(no references)</li>"
        parts.append(
            f'<section class="clip" id="{html.escape(stem)}"><h3>{html.escape(clip.name)}{html.escape(score)}</h3>'
            f'<p class="caption">{html.escape(clip.caption) or "(empty caption)"}</p>'
            f'<ul class="refs">{refs}</ul>'
            f'<img src="assets/{html.escape(gif.name)}" alt="skeleton of {html.escape(clip.name)}">'
            f'<img src="assets/{html.escape(heat.name)}" alt="attention of the words of {html.escape(clip.name)}">'
            "</section>")
    page = ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>' + html.escape(title) +
            f"</title><style>{_STYLE}</style></head><body>" + "".join(parts) + "</body></html>\n")
    out = folder / "index.html"
    out.write_text(page, encoding="utf-8")
    return out
