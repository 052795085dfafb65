"""Datasets over validated clips, the batch collate function, and `load_dataset` (load + validate).

Datasets yield raw labels; the model prepends the task prompt (pretrain/finetune), so the two prompts
live here once and are never swapped (the original swapped them at evaluation).
"""
from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Optional

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from dataloaders.features import resample_in_time
from dataloaders.formats import load_clips, load_standards
from dataloaders.validation import SEGMENTS, segment_keys, validate_clips
from common.errors import UserError

log = logging.getLogger("motion2text")


def _segment(clip: dict, segment: str) -> Optional[tuple[int, int]]:
    """(learner start, standard start) of the data's reference segment, or None.

    None also when the clip lacks the keys (pretraining data has none; there the first frame serves as
    the standard). load_dataset makes them mandatory where they are used: finetuning with BRANCH 1."""
    if segment == "NONE":
        return None
    start, _, std_start, _, _ = segment_keys(segment)
    if start not in clip or std_start not in clip:
        return None
    return int(clip[start]), int(clip[std_start])


def _norm_segment(segment: str) -> str:
    segment = str(segment).upper()
    if segment not in SEGMENTS:
        raise UserError(f"reference segment {segment!r}: expected one of {', '.join(SEGMENTS)}")
    return segment


class _ClipDataset(Dataset):
    def __init__(self, clips: list[dict], segment: str = "NONE", retrieved: Optional[list[str]] = None):
        if retrieved is not None and len(retrieved) != len(clips):
            raise ValueError(f"retrieved texts: {len(retrieved)} for {len(clips)} clips")
        self.clips = clips
        self.segment = _norm_segment(segment)
        self.retrieved = retrieved  # per clip, the labels of its nearest training clips (RETRIEVAL.NEIGHBOURS)

    def _item(self, ci: int) -> dict:
        clip = self.clips[ci]
        sub = clip.get("subtraction")
        return {
            "video_name": clip["video_name"],
            "coordinates": torch.as_tensor(clip["coordinates"], dtype=torch.float32),  # no copy if float32
            "motion_type": clip.get("motion_type"),
            "segment": _segment(clip, self.segment),
            "subtraction": None if sub is None else torch.as_tensor(sub, dtype=torch.float32),
            "retrieved": None if self.retrieved is None else self.retrieved[ci],
        }


def _crop_to_tokens(text: str, tokenizer, max_tokens: int) -> str:
    """The longest prefix of `text`, cut at a token boundary, that tokenises to at most `max_tokens` tokens."""
    def n_tokens(t):
        return len(tokenizer(t, add_special_tokens=False).input_ids)

    ends = [end for _, end in tokenizer(text, add_special_tokens=False, return_offsets_mapping=True).offset_mapping]
    candidates = [text[:end].strip() for end in ends[:max_tokens]]
    # A prefix cut inside a word may tokenise into more pieces than it had in the whole text: step back.
    return next((c for c in reversed(candidates) if n_tokens(c) <= max_tokens), candidates[0])


def crop_long_labels(index: list[tuple[int, str]], clips: list[dict], tokenizer,
                     max_tokens: int) -> list[tuple[int, str]]:
    """`index` with every label longer than `max_tokens` caption tokens (prompt and eos not counted) cropped
    to that many, and one warning per call naming how many and one clip: the decoder's memory grows with
    the square of the label length."""
    if not index:
        return index  # HF tokenizers fail on an empty batch
    texts = [t.strip() for _, t in index]  # as CaptionCodec.encode_targets tokenises them
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False).input_ids]
    long = [k for k, n in enumerate(lengths) if n > max_tokens]
    if not long:
        return index
    cropped = list(index)
    for k in long:
        cropped[k] = (index[k][0], _crop_to_tokens(texts[k], tokenizer, max_tokens))
    first = long[0]
    log.warning("DATA.MAX_LABEL_TOKENS=%d: cropped %d of %d training labels to %d tokens (e.g. a label of clip %r "
                "had %d); raise DATA.MAX_LABEL_TOKENS to train on them whole", max_tokens, len(long), len(index),
                max_tokens, clips[index[first][0]]["video_name"], lengths[first])
    return cropped


class TrainDataset(_ClipDataset):
    """One sample per (clip, label) pair, plus `augmented_labels` when switched on; with `label_index` only
    the label (and paraphrase) at that position of each clip (RETRIEVAL.LABEL_INDEX). With a `tokenizer`
    and `max_label_tokens` (DATA.MAX_LABEL_TOKENS), longer labels are cropped (see crop_long_labels)."""

    def __init__(self, clips: list[dict], use_augmented_labels: bool = False, segment: str = "NONE",
                 retrieved: Optional[list[str]] = None, label_index: Optional[int] = None,
                 tokenizer=None, max_label_tokens: Optional[int] = None):
        super().__init__(clips, segment, retrieved)
        # (clip index, text): the texts are references to the clip's strings, coordinates are never copied.
        self.index: list[tuple[int, str]] = []
        for ci, clip in enumerate(clips):
            texts = list(clip.get("labels") or [])
            augmented = [t for t in clip.get("augmented_labels") or [] if isinstance(t, str) and t.strip()]
            if label_index is not None:
                texts = texts[label_index: label_index + 1]
                augmented = (clip.get("augmented_labels") or [])[label_index: label_index + 1]
            if use_augmented_labels:
                texts += [t for t in augmented if isinstance(t, str) and t.strip()]
            self.index += [(ci, t) for t in texts]
        if tokenizer is not None and max_label_tokens is not None:
            self.index = crop_long_labels(self.index, clips, tokenizer, max_label_tokens)

    @property
    def lengths(self) -> list[int]:
        """Frames of each sample, for length-bucketed batching."""
        return [len(self.clips[ci]["coordinates"]) for ci, _ in self.index]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        ci, text = self.index[i]
        return {**self._item(ci), "text": text}


class EvalDataset(_ClipDataset):
    """One item per clip with all its labels as `references` (empty list for unlabeled clips)."""

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def lengths(self) -> list[int]:
        return [len(c["coordinates"]) for c in self.clips]

    def __getitem__(self, i: int) -> dict:
        return {**self._item(i), "references": list(self.clips[i].get("labels") or [])}


def _pad(seqs: list[torch.Tensor]) -> torch.Tensor:
    return pad_sequence(seqs, batch_first=True, padding_value=0.0)  # [B, Tmax, C], zeros after each clip


def freeze_before_fork() -> None:
    """Call before forking DataLoader workers. A worker inherits the loaded clips copy-on-write; its first full
    garbage collection would write the gc header of every tracked object and free the cycles unpickling left
    behind, un-sharing those pages in every worker. Collect once here, then move what is left to the
    permanent generation, which the workers' collections never visit."""
    gc.collect()
    gc.freeze()


def collate(items: list[dict]) -> dict:
    """Batch of dataset items -> padded tensors; see the keys below."""
    coords = [it["coordinates"] for it in items]
    lengths = torch.tensor([c.shape[0] for c in coords], dtype=torch.long)
    padded = _pad(coords)
    batch = {
        "video_names": [it["video_name"] for it in items],
        "coordinates": padded,  # [B, Tmax, 66]
        "frame_mask": torch.arange(padded.shape[1])[None, :] < lengths[:, None],  # [B, Tmax] True = real
        "lengths": lengths,
        "motion_types": [it.get("motion_type") for it in items],
    }
    if "text" in items[0]:
        batch["texts"] = [it["text"] for it in items]
    if "references" in items[0]:
        batch["references"] = [it["references"] for it in items]
    if all(it.get("segment") is not None for it in items):
        seg = torch.tensor([it["segment"] for it in items], dtype=torch.long)  # [B, 2]
        batch["segment_start"], batch["std_segment_start"] = seg[:, 0], seg[:, 1]
    if all(it.get("retrieved") is not None for it in items):
        batch["retrieved"] = [it["retrieved"] for it in items]  # texts, tokenized by the model
    if all(it.get("subtraction") is not None for it in items):
        batch["subtraction"] = _pad([it["subtraction"] for it in items])  # [B, Tmax, C]
    return batch


def augment_speed(batch: dict, max_change: float) -> dict:
    """The collated batch with each clip played at a speed drawn uniform in 1 ± max_change: resampled to
    round(length / speed) frames (at least 1), with `frame_mask`, `lengths`, `segment_start` (the same instant
    in the new time) and `subtraction` to match; the standard and its segment start stay as recorded. Draws
    from torch's global CPU generator, which checkpoints hold, so resume stays exact. 0: the batch as it came."""
    if not max_change:
        return batch
    lengths = batch["lengths"]
    speed = 1 + (torch.rand(len(lengths), dtype=torch.float64) * 2 - 1) * max_change
    new_lengths = (lengths.cpu() / speed).round().long().clamp(min=1).to(lengths.device)
    coords = resample_in_time(batch["coordinates"], lengths, new_lengths)
    out = dict(batch, coordinates=coords, lengths=new_lengths,
               frame_mask=torch.arange(coords.shape[1], device=coords.device)[None, :] < new_lengths[:, None])
    if "segment_start" in batch:
        ratio = (new_lengths - 1) / (lengths - 1).clamp(min=1)
        out["segment_start"] = torch.minimum((batch["segment_start"] * ratio).round().long(), new_lengths - 1)
    if "subtraction" in batch:
        out["subtraction"] = resample_in_time(batch["subtraction"], lengths, new_lengths)
    return out


def load_dataset(path, *, pretrain: bool, branch: int, segment: str = "NONE", standards=None,
                 max_frames: Optional[int] = None) -> list[dict]:
    """Load and validate a train/test file with what the task needs.

    Finetuning needs `motion_type`; finetuning with BRANCH 1 needs `standards` (a dict from load_standards,
    or its path) covering every motion type, and the segment keys when `segment` is GT/ALIGNED/ERROR;
    BRANCH 2 needs `subtraction`. Every clip needs labels (engine/prediction.py admits unlabeled files for
    inference). `max_frames`
    (DATA.MAX_FRAMES; None: no limit) refuses longer clips of the file and of the standards."""
    segment = _norm_segment(segment)
    if branch not in (0, 1, 2):
        raise UserError(f"BRANCH {branch!r}: expected 0, 1 or 2")
    if standards is not None and not isinstance(standards, dict):
        standards = load_standards(Path(standards), max_frames)
    use_standard = branch == 1 and not pretrain
    if use_standard and standards is None:
        raise UserError(f"{path}: BRANCH 1 finetuning needs the standards file (config key DATA.STANDARD)")
    clips = load_clips(path, max_frames)
    validate_clips(clips, path, require_labels=True, require_motion_type=not pretrain,
                   standards=standards if use_standard else None,
                   segment=segment if use_standard else "NONE", require_subtraction=branch == 2)
    return clips
