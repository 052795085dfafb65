"""Small builders shared by the tests: a tiny config, a tiny model, fabricated clips and batches."""
from __future__ import annotations

import torch

from engine.config import Config
from engine.config_loader import config_from_dict
from engine.weights import build_model
from models.motion2text import MotionToText
from models.tokenizer import train_caption_tokenizer

WORDS = "a person walks forward raises the left right arm squats down jumps punch keep your hand at chin".split()


def tiny_config(**sections) -> Config:
    """HIDDEN 4 / OUT 16 encoder and a 2-layer d_model 32 T5: a forward pass costs milliseconds."""
    base = {
        "HIDDEN_CHANNEL": 4, "OUT_CHANNEL": 16, "DATA": {"TRAIN": "x.pkl", "TEST": "y.pkl"},
        "T5": {"D_MODEL": 32, "NUM_LAYERS": 2, "NUM_HEADS": 4, "D_KV": 8, "D_FF": 64, "VOCAB_SIZE": 300},
        "GENERATION": {"MAX_LENGTH": 8},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            base.setdefault(key, {}).update(value)
        else:
            base[key] = value
    return config_from_dict(base)


def tiny_tokenizer():
    texts = [" ".join(WORDS[i:i + 5]) for i in range(len(WORDS))] + ["Motion Description :", "Motion Instruction :"]
    return train_caption_tokenizer(texts, 300)


def tiny_model(cfg: Config, standards=None, subtraction_dim: int = 0, seed: int = 0, persons=()) -> MotionToText:
    torch.manual_seed(seed)
    return build_model(cfg, tiny_tokenizer(), subtraction_dim=subtraction_dim, standards=standards, persons=persons)


def random_clip(frames: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(frames, 66, generator=g).cumsum(0) * 0.05  # smooth-ish motion, [T,66]


def make_batch(clips: list[torch.Tensor], motion_types=None, subtraction_dim: int = 0, pad_to: int = 0) -> dict:
    """A collate-shaped batch built by hand (independent of dataloaders.collate)."""
    T = max([len(c) for c in clips] + [pad_to])
    B = len(clips)
    coords = torch.zeros(B, T, 66)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for i, c in enumerate(clips):
        coords[i, : len(c)] = c
        mask[i, : len(c)] = True
    batch = {"coordinates": coords, "frame_mask": mask, "lengths": mask.sum(1),
             "video_names": [f"clip{i}" for i in range(B)], "motion_types": motion_types or ["Jab"] * B}
    if subtraction_dim:
        g = torch.Generator().manual_seed(7)
        batch["subtraction"] = torch.randn(B, T, subtraction_dim, generator=g) * mask[..., None]
    return batch


def take(batch: dict, i: int) -> dict:
    """Item i of a batch as a batch of one, cropped to its own length (no padding)."""
    n = int(batch["lengths"][i])
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            v = v[i: i + 1]
            if v.dim() >= 2 and k in ("coordinates", "frame_mask", "subtraction"):
                v = v[:, :n]
            out[k] = v
        else:
            out[k] = v[i: i + 1]
    return out


def assert_training_loss_is_cross_entropy_plus(model, batch: dict, labels: torch.Tensor, weight: float, by_hand,
                                               floor: float) -> None:
    """In training, model(batch, labels) = T5's cross-entropy + weight × `by_hand(hidden, mask)`: an auxiliary loss
    written out over T5's encoder output `hidden` [B,N,d] of the clips' tokens `mask` [B,N], which must exceed
    `floor` (so the comparison is not 0 against 0); then, in eval mode, the loss is the plain cross-entropy."""
    with torch.no_grad():
        loss = model(batch, labels)
        tokens, mask, _, _ = model.encode(batch)  # train-mode BatchNorm: the same batch gives the same tokens
        plain = model.t5(inputs_embeds=tokens, attention_mask=mask.long(), labels=labels).loss
        hidden = model.t5.encoder(inputs_embeds=tokens, attention_mask=mask.long()).last_hidden_state
        expected = by_hand(hidden, mask)
    assert expected > floor
    torch.testing.assert_close(loss, plain + weight * expected)
    assert_evaluation_loss_is_plain_cross_entropy(model, batch, labels)


def assert_evaluation_loss_is_plain_cross_entropy(model, batch: dict, labels: torch.Tensor) -> None:
    """In eval mode the model's loss is T5's cross-entropy on the clip's tokens alone: no auxiliary loss."""
    model.eval()
    with torch.no_grad():
        tokens, mask, _, _ = model.encode(batch)
        plain = model.t5(inputs_embeds=tokens, attention_mask=mask.long(), labels=labels).loss
        assert torch.equal(model(batch, labels), plain)
