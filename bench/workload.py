"""The benchmarks' workload: model sizes (the published ones, or tiny for --quick), BX-like clips and
captions, the model engine.weights builds, and one training step as the trainer takes it."""
from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Optional

import torch

STANDARD_TYPES = ("Jab", "Cross")  # BX's two techniques


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the real benchmark and the --quick smoke run."""
    hidden: int = 32
    out: int = 128
    d_model: int = 512
    layers: int = 6
    heads: int = 8
    d_ff: int = 2048
    vocab: int = 4000
    batch: int = 4
    # BX-like data (BX_train: 163 clips of 32–96 frames, quartiles 53/60/69; captions of 15.6 words on
    # average, quartiles 8/13/21; standards Jab 109 and Cross 76 frames)
    min_frames: int = 32
    max_frames: int = 96
    mean_frames: float = 61.0
    std_frames: float = 12.0
    standard_frames: tuple = (109, 76)
    caption_words: tuple = (5, 26)
    # training: a cycle of distinct batches, warmed up once each, then timed twice
    train_batches: int = 4
    train_iters: int = 8
    # STA-GCN alone: batch × frames
    stagcn_frames: int = 64
    stagcn_warmup: int = 1
    stagcn_iters: int = 3
    matmul_n: int = 2048
    matmul_iters: int = 10
    # generation
    new_tokens: int = 50
    gen_bs1_clips: int = 4
    gen_iters: int = 3
    beam_iters: int = 2
    gen_big_batch: int = 32
    # weak scaling (1 thread per process) and memory
    scaling_frames: int = 64
    scaling_warmup: int = 2
    scaling_iters: int = 4
    memory_frames: int = 96
    memory_batches: tuple = (4, 16)
    precision: str = "auto"  # TRAIN.PRECISION of every model built here


QUICK = Sizes(hidden=4, out=16, d_model=32, layers=2, heads=4, d_ff=64, vocab=300, batch=2, min_frames=8,
              max_frames=16, mean_frames=12, std_frames=3, standard_frames=(18, 12), caption_words=(3, 6),
              train_batches=2, train_iters=2,
              stagcn_frames=16, stagcn_iters=2, matmul_n=256, matmul_iters=3, new_tokens=5, gen_bs1_clips=2,
              gen_iters=2, beam_iters=1, scaling_frames=16, scaling_warmup=1, scaling_iters=2, memory_frames=16)


def caption_corpus(sizes: Sizes, n: int, seed: int = 0) -> list[str]:
    """Captions of 5–26 pseudo-words from a fixed list of 1,000 (BX's tokenizer has ~1,300 entries), so
    that, as on BX, a caption is about one token a word."""
    words_rng = random.Random(12345)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    words = sorted({"".join(words_rng.choice(letters[:20]) for _ in range(words_rng.randint(2, 9)))
                    for _ in range(1000)})
    rng = random.Random(seed)
    lo, hi = sizes.caption_words
    return [" ".join(rng.choice(words) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


@functools.lru_cache(maxsize=4)
def bench_tokenizer(sizes: Sizes):
    from common.text import FINETUNE_PROMPT, PRETRAIN_PROMPT
    from models.tokenizer import train_caption_tokenizer

    return train_caption_tokenizer(caption_corpus(sizes, 3000) + [PRETRAIN_PROMPT, FINETUNE_PROMPT], sizes.vocab)


def bench_config(sizes: Sizes, branch: int, t5_extra: Optional[dict] = None):
    """The job config of a benchmark model; `t5_extra`: more T5 keys (e.g. LORA, FREEZE)."""
    from engine.config_loader import config_from_dict

    return config_from_dict({
        "HIDDEN_CHANNEL": sizes.hidden, "OUT_CHANNEL": sizes.out, "BRANCH": branch,
        "TASK": {"PRETRAIN": branch != 1},  # branch 1 = finetuning against the standards
        "DATA": {"TRAIN": "bench", "TEST": "bench", "STANDARD": "bench" if branch == 1 else None,
                 "BATCH_SIZE": sizes.batch},
        "TRANSFORMATION": {"REDUCTION_POLICY": "TIME_POOL"}, "TRAIN": {"PRECISION": sizes.precision},
        "T5": {"D_MODEL": sizes.d_model, "NUM_LAYERS": sizes.layers, "NUM_HEADS": sizes.heads,
               "D_KV": sizes.d_model // sizes.heads, "D_FF": sizes.d_ff, "VOCAB_SIZE": sizes.vocab,
               **(t5_extra or {})},
    })


def random_clip(frames: int, gen: torch.Generator) -> torch.Tensor:
    """A smooth random walk around a standing height, [T, 66] in metres."""
    return torch.randn(frames, 66, generator=gen).mul_(0.02).cumsum(0).add_(1.0)


def stagcn_and_input(sizes: Sizes, device: Optional[torch.device] = None):
    """The STA-GCN alone (seed 0, train mode) and one batch of its input: skeleton features [B, 6, T, 22] of
    random clips and an all-true frame mask [B, T], on `device` (default: the CPU)."""
    from dataloaders.features import skeleton_features
    from models.stagcn import STAGCN

    device = device or torch.device("cpu")
    torch.manual_seed(0)
    enc = STAGCN(sizes.hidden, sizes.out).to(device).train()
    gen = torch.Generator().manual_seed(7)
    B, T = sizes.batch, sizes.stagcn_frames
    feats = skeleton_features(torch.stack([random_clip(T, gen) for _ in range(B)])).to(device)
    return enc, feats, torch.ones(B, T, dtype=torch.bool, device=device)


def standards_for(sizes: Sizes) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1234)
    return {name: random_clip(t, gen) for name, t in zip(STANDARD_TYPES, sizes.standard_frames)}


def make_batch(lengths: list[int], seed: int, sizes: Sizes) -> tuple[dict, list[str]]:
    """A collate-shaped batch (padded coordinates, frame mask, motion types) and its captions."""
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    B, T = len(lengths), max(lengths)
    coords = torch.zeros(B, T, 66)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for i, n in enumerate(lengths):
        coords[i, :n] = random_clip(n, gen)
        mask[i, :n] = True
    batch = {"coordinates": coords, "frame_mask": mask, "lengths": mask.sum(1),
             "video_names": [f"bench{seed}_{i}" for i in range(B)],
             "motion_types": [rng.choice(STANDARD_TYPES) for _ in range(B)]}
    return batch, caption_corpus(sizes, B, seed=seed)


def random_lengths(n: int, sizes: Sizes, rng: random.Random) -> list[int]:
    """BX-like clip lengths: normal around the mean, clipped to [min_frames, max_frames]."""
    return [min(max(round(rng.gauss(sizes.mean_frames, sizes.std_frames)), sizes.min_frames), sizes.max_frames)
            for _ in range(n)]


def build_model(sizes: Sizes, branch: int, device: torch.device, seed: int = 0, t5_extra: Optional[dict] = None):
    """(model on `device`, its job config), with the trainer's choice of trainable parameters (T5.FREEZE)."""
    from engine import weights
    from models.lora import freeze_parameters

    torch.manual_seed(seed)
    cfg = bench_config(sizes, branch, t5_extra)
    model = weights.build_model(cfg, bench_tokenizer(sizes), standards=standards_for(sizes) if branch == 1 else None)
    freeze_parameters(model, cfg.T5.FREEZE)
    return model.to(device), cfg


def move(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


class TrainStep:
    """One optimizer step as engine/trainer.py takes it (no accumulation): autocast forward, scaled backward,
    then engine.optim.OptimizerStep, the trainer's own (unscale, clip, step, scaler update, zero, schedule)."""

    def __init__(self, model, cfg, device: torch.device, module=None):
        from engine.optim import OptimizerStep, build_optimizer, build_scheduler
        from engine.precision import autocast_dtype

        self.model, self.module, self.device = model, module or model, device
        self.amp_dtype = autocast_dtype(cfg, device)
        optimizer = build_optimizer(model, cfg.OPTIMIZER)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.optimizer_step = OptimizerStep(model, optimizer, build_scheduler(optimizer, cfg.OPTIMIZER.WARMUP_STEPS,
                                                                              10 ** 6), self.scaler,
                                            cfg.OPTIMIZER.GRAD_CLIP)

    def __call__(self, batch: dict, labels: torch.Tensor) -> float:
        self.module.train()
        self.optimizer_step.remember()
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loss = self.module(batch, labels)
        self.scaler.scale(loss).backward()
        value = loss.item()  # the trainer reads the loss every step as well
        self.optimizer_step()
        return value


def prepared_batches(model, sizes: Sizes, lengths_list: list[list[int]], device: torch.device, seed: int):
    out = []
    for i, lengths in enumerate(lengths_list):
        batch, texts = make_batch(lengths, seed + i, sizes)
        out.append((move(batch, device), model.codec.encode_targets(texts).to(device)))
    return out
