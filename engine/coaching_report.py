"""What the coaching report shows, gathered from a checkpoint and its clips (`evaluate.py --report DIR`).

At the top: the checkpoint's metrics on the clips beside every baseline, the motion control and the training
curves. Per clip: the learner (and the standard window it was compared with), the STA-GCN's node attention,
the instruction, the references, the clip's CIDEr and the decoder's attention from each written token to the
motion tokens. metrics/report_page.py draws and writes it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from dataloaders.datasets import EvalDataset, collate
from engine.config import Config
from engine.prediction import captions_of, generate_captions, move_batch, retrieved_for
from metrics.report_page import ClipView, html_table, source_labels, write_report_page

log = logging.getLogger("motion2text")


@torch.no_grad()
def clip_views(model, clips: list[dict], cfg: Config, segment: str, preds: dict[str, dict], batch_size: int,
               device: torch.device) -> list[ClipView]:
    """One ClipView per clip (its standard window, the decoder's attention over its caption), batched."""
    model.eval()
    dataset = EvalDataset(clips, segment=segment, retrieved=retrieved_for(cfg, clips))
    tokenizer, prompt_len = model.codec.tokenizer, len(model.codec.prompt_ids)
    views = []
    for lo in range(0, len(clips), batch_size):
        batch = move_batch(collate([dataset[i] for i in range(lo, min(lo + batch_size, len(clips)))]), device)
        names = batch["video_names"]
        captions = [preds[n]["caption"] for n in names]
        labels, attention, starts = model.cross_attention(batch, captions)
        for i, name in enumerate(names):  # per-clip pictures; the model work above is batched
            clip = clips[lo + i]
            ids = [t for t in labels[i].tolist() if t >= 0][prompt_len:-1]  # the caption's tokens, no eos
            rows = attention[i, prompt_len:prompt_len + len(ids)].cpu().numpy()
            valid = int(batch["frame_mask"][i].sum())
            standard = None
            if starts is not None:
                standard = standard_window(model, clip["motion_type"], int(starts[i]), valid)
            views.append(ClipView(
                name=name, caption=captions[i], references=list(clip.get("labels") or []),
                coords=clip["coordinates"].numpy(), att_node=np.asarray(preds[name]["att_node"]),
                tokens=[tokenizer.decode([t]) for t in ids], cross_attention=rows,
                source_labels=source_labels(rows.shape[1], cfg.TRANSFORMATION.REDUCTION_POLICY), standard=standard))
    return views


def standard_window(model, motion_type: str, start: int, frames: int) -> np.ndarray:
    """The standard's coordinates [frames, 66] from `start`, its last frame repeated past its end (as the
    alignment does), as the encoder read them."""
    row = model.standard_names.index(motion_type)
    length = int(model.standard_lengths[row])
    index = torch.clamp(torch.arange(start, start + frames), max=length - 1)
    return model.standard_coords[row, index].cpu().numpy()


def write_coaching_report(folder: Path, model, checkpoint: Path, cfg: Config, clips: list[dict], segment: str,
                          data: Path, scorer, batch_size: int, device: torch.device, max_clips: int = 0,
                          train_clips: Optional[list[dict]] = None) -> Path:
    """The report page for `clips` captioned by `model`; the baselines need `train_clips`."""
    from metrics.baselines import mean_rows, score_baselines, strongest_line
    from metrics.curves import plot_curves, read_curves
    from metrics.motion_control import motion_control_rows, run_motion_control
    from metrics.report import references_from_clips

    folder.mkdir(parents=True, exist_ok=True)
    preds = generate_captions(model, clips, cfg, segment, batch_size, device)
    captions = {name: p["caption"] for name, p in preds.items()}
    tables, notes, scores = [], [], {}
    labelled = scorer is not None and all(c.get("labels") for c in clips)
    if labelled:
        refs = references_from_clips(clips, data)
        keys = list(scorer.keys)
        rows = {checkpoint.name: scorer.score(captions, refs)}
        if train_clips is not None:
            baselines, note = score_baselines(scorer, train_clips, clips, refs)
            rows.update(mean_rows(baselines, keys))
            notes += [f"(no motion): the row never reads the clip's motion; {note}", strongest_line(baselines)]
        tables.append((f"Metrics on {data.name}", html_table(rows, keys, "model")))
        control = run_motion_control(lambda inputs: captions_of(model, inputs, cfg, segment, batch_size, device),
                                     clips, scorer, real=(captions, rows[checkpoint.name]))
        control_keys = [k for k in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr") if k in keys]
        tables.append(("Motion control (each clip's motion swapped for another's)",
                       html_table(motion_control_rows(control, control_keys),
                                  control_keys + ["CIDEr drop", "own motion", "changed"], "condition")))
        scores = scorer.per_clip_cider(captions, refs)
    curves = read_curves(cfg.logdir)
    curves_png = None if curves.empty() else plot_curves(curves, folder / "curves.png", title=str(cfg.logdir))
    chosen = clips[:max_clips] if max_clips else clips
    views = clip_views(model, chosen, cfg, segment, preds, batch_size, device)
    for view in views:
        view.score = scores.get(view.name)
    log.info("report: %d clip(s), %d table(s)%s", len(views), len(tables), ", curves" if curves_png else "")
    return write_report_page(folder, f"Coaching report: {checkpoint.name} on {data.name}", tables, curves_png, views,
                             notes)
