"""Training and generation speed of the real model against the hardware it runs on.

    python bench/run.py [--quick] [--device cpu|cuda] [--threads N] [--out bench/results.json]
                        [--only train stagcn generate scaling memory] [--profile]

Prints a table and writes a flat JSON (keys with dots, e.g. ``train_samples_per_s.branch0``) plus the
machine, the settings and the CPU load of other processes during every section. What is measured:

- ``train_samples_per_s.branch{0,1}``: batch size / median time of one training step of the model that
  ``engine.weights.build_model`` builds (published sizes: HIDDEN 32, OUT 128, T5 d_model 512, 6+6
  layers, 8 heads, d_ff 2048, TIME_POOL): forward, backward and ``engine.optim.OptimizerStep`` (AdamW with the
  trainer's parameter groups, clip 1.0, GradScaler, linear schedule), autocast as the trainer chooses.
  BX-like data: clip lengths normal(61, 12) clipped to 32–96 frames (BX_train's quartiles 53/60/69), each
  batch padded to its longest clip; captions of 5–26 words (~17 tokens); branch 1 finetunes against the
  standards Jab (109 frames) and Cross (76), each embedded once per step when present in the batch.
- ``stagcn_gflops``: FLOPs of one STA-GCN forward+backward (``torch.utils.flop_counter.FlopCounterMode``:
  convolutions and matmuls) / median time of one forward+backward (batch 4, 64 frames, train mode);
  ``matmul_peak_gflops``: best of several square fp32 GEMMs in the same run, through torch.mm (MKL) and,
  on CPU, oneDNN's matmul (the library behind torch's convolutions); ``stagcn_matmul_peak_ratio`` = ratio.
  ``*_at_peak``: what a number would be if every counted FLOP ran at that peak (an upper bound).
- ``generate_captions_per_s.{bs1,bs32,bs32_beam3}``: ``MotionToText.generate`` (encoder + T5.generate +
  decoding) with exactly 50 new tokens (``min_new_tokens`` forced), greedy with repetition penalty 3.5 as the
  original, and beam 3 with the later release's penalties (5.0, length 3.0); batch 32 = one batch of
  BX-like clips (``generate_encode_share``: the part of it spent in ``encode``).
- ``weak_scaling_efficiency``: two processes × 1 thread, DDP over gloo (file store: no port of ours), same
  per-process batch and shapes; samples/s of both ÷ (2 × samples/s of one process × 1 thread, no DDP).
  Always on CPU.
- ``peak_rss_mib.bs{4,16}``: peak resident memory (VmHWM) of a fresh process after two training steps of
  branch 0 at that batch size on 96-frame clips (the longest BX clips); it includes the interpreter,
  torch, the model and the optimizer state (``rss_after_build_mib`` in the details: before the steps).

Timings are medians after warm-up; targets are the issue's. Tests never assert timings.
"""
from __future__ import annotations

import argparse
import contextlib
import faulthandler
import functools
import json
import math
import os
import platform
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/run.py` puts bench/, not the repo root, on sys.path
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from models.config import Generation  # noqa: E402

RESULT_TAG = "BENCH_RESULT "  # the line a worker process prints its JSON result on
REQUIRED_KEYS = ("train_samples_per_s.branch0", "train_samples_per_s.branch1", "generate_captions_per_s.bs1",
                 "generate_captions_per_s.bs32", "stagcn_matmul_peak_ratio", "weak_scaling_efficiency")
SECTIONS = ("train", "stagcn", "generate", "scaling", "memory")
# Quoted, not measured by bench/: the research code this replaces, 2-core CPU, same shapes.
ORIGINAL = {"train_samples_per_s.branch0": 1.63, "train_samples_per_s.branch1": 0.89,
            "generate_captions_per_s.bs1": 1.41}
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


QUICK = Sizes(hidden=4, out=16, d_model=32, layers=2, heads=4, d_ff=64, vocab=300, batch=2, min_frames=8,
              max_frames=16, mean_frames=12, std_frames=3, standard_frames=(18, 12), caption_words=(3, 6),
              train_batches=2, train_iters=2,
              stagcn_frames=16, stagcn_iters=2, matmul_n=256, matmul_iters=3, new_tokens=5, gen_bs1_clips=2,
              gen_iters=2, beam_iters=1, scaling_frames=16, scaling_warmup=1, scaling_iters=2, memory_frames=16)


# ---- machine and load ---------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    import transformers

    info = {
        "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
        "mkl": torch.backends.mkl.is_available(), "mkldnn": torch.backends.mkldnn.is_available(),
        "device": str(device), "loadavg_start": list(os.getloadavg()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


class LoadMeter:
    """Share of the machine's CPU time used by *other* processes while a section ran (Linux /proc/stat).

    busy = all non-idle jiffies; ours = this process and its finished children (rusage). 0 = quiet machine,
    1 = every core busy with someone else's work."""

    def __init__(self):
        self.t0, self.busy0, self.ours0 = time.perf_counter(), self._busy(), self._ours()

    @staticmethod
    def _busy() -> Optional[float]:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError, IndexError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _ours() -> float:
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    def other_share(self) -> Optional[float]:
        busy = self._busy()
        if busy is None or self.busy0 is None:
            return None
        wall = time.perf_counter() - self.t0
        other = (busy - self.busy0) - (self._ours() - self.ours0)
        return round(min(max(other / (wall * (os.cpu_count() or 1)), 0.0), 1.0), 3)


# ---- model, data, step ----------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def bench_config(sizes: Sizes, branch: int):
    from engine.config_loader import config_from_dict

    return config_from_dict({
        "HIDDEN_CHANNEL": sizes.hidden, "OUT_CHANNEL": sizes.out, "BRANCH": branch,
        "TASK": {"PRETRAIN": branch != 1},  # branch 1 = finetuning against the standards
        "DATA": {"TRAIN": "bench", "TEST": "bench", "STANDARD": "bench" if branch == 1 else None,
                 "BATCH_SIZE": sizes.batch},
        "TRANSFORMATION": {"REDUCTION_POLICY": "TIME_POOL"},
        "T5": {"D_MODEL": sizes.d_model, "NUM_LAYERS": sizes.layers, "NUM_HEADS": sizes.heads,
               "D_KV": sizes.d_model // sizes.heads, "D_FF": sizes.d_ff, "VOCAB_SIZE": sizes.vocab},
    })


def random_clip(frames: int, gen: torch.Generator) -> torch.Tensor:
    """A smooth random walk around a standing height, [T, 66] in metres."""
    return torch.randn(frames, 66, generator=gen).mul_(0.02).cumsum(0).add_(1.0)


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


def build_model(sizes: Sizes, branch: int, device: torch.device, seed: int = 0):
    from engine import weights

    torch.manual_seed(seed)
    cfg = bench_config(sizes, branch)
    model = weights.build_model(cfg, bench_tokenizer(sizes), standards=standards_for(sizes) if branch == 1 else None)
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


def time_calls(fn: Callable[[int], object], warmup: int, iters: int, device: torch.device) -> list[float]:
    """fn(i) for i in range(warmup) untimed, then `iters` timed calls (seconds each)."""
    for i in range(warmup):
        fn(i)
    sync(device)
    times = []
    for i in range(warmup, warmup + iters):
        t = time.perf_counter()
        fn(i)
        sync(device)
        times.append(time.perf_counter() - t)
    return times


def summary(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": len(times)}


# ---- sections ---------------------------------------------------------------------------------------

def bench_train(sizes: Sizes, device: torch.device, branch: int, seed: int = 0) -> dict:
    """Samples/s of full training steps; the same cycle of batches (same lengths) for both branches."""
    from torch.utils.flop_counter import FlopCounterMode

    model, cfg = build_model(sizes, branch, device)
    step = TrainStep(model, cfg, device)
    rng = random.Random(seed)
    lengths = [random_lengths(sizes.batch, sizes, rng) for _ in range(sizes.train_batches)]
    data = prepared_batches(model, sizes, lengths, device, seed=100)
    n = len(data)
    # Warm-up: every batch of the cycle once (oneDNN builds its kernels per shape); the FLOPs of all of them
    # are counted on the way (matmuls and convolutions: what the hardware peak is about).
    flops = []

    def warm_or_time(i):
        if i < n:
            with FlopCounterMode(display=False) as counter:
                step(*data[i])
            flops.append(counter.get_total_flops())
        else:
            step(*data[i % n])

    times = time_calls(warm_or_time, warmup=n, iters=sizes.train_iters, device=device)
    s = summary(times)
    padded = [max(x) for x in lengths]
    gflop = statistics.mean(flops) / 1e9  # the timed steps cycle through the same batches
    return {"samples_per_s": sizes.batch / s["median_s"], **s, "batch": sizes.batch, "gflop_per_step": gflop,
            "gflops": gflop / s["median_s"],
            "padded_frames_mean": statistics.mean(padded), "clip_frames_mean": statistics.mean(sum(lengths, [])),
            "label_tokens_mean": float(statistics.mean(int((lab != -100).sum(1).float().mean()) for _, lab in data))}


def matmul_peak(sizes: Sizes, device: torch.device) -> dict:
    """Best fp32 GEMM throughput of this run: torch.mm (MKL on CPU), and on CPU also oneDNN's matmul.

    Both ship with torch and both serve the model (MKL: nn.Linear/mm; oneDNN: every convolution). On AMD
    CPUs MKL may not pick its widest kernels, so torch.mm alone can understate the hardware; the peak is the
    better of the two."""
    n = sizes.matmul_n if device.type == "cpu" else max(sizes.matmul_n, 8192)
    flops = 2 * n ** 3
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    c = torch.empty(n, n, device=device)
    times = time_calls(lambda i: torch.mm(a, b, out=c), warmup=2, iters=sizes.matmul_iters, device=device)
    out = {"torch_mm_gflops": flops / min(times) / 1e9, "torch_mm_median_gflops": flops / statistics.median(times) / 1e9,
           "n": n}
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        try:
            x, w = a.to_mkldnn(), b.to_mkldnn()
            t = time_calls(lambda i: torch.ops.aten.mkldnn_linear(x, w), 2, sizes.matmul_iters, device)
            out["onednn_gflops"] = flops / min(t) / 1e9
        except (RuntimeError, AttributeError) as e:  # a torch build without the op: torch.mm only
            out["onednn_error"] = str(e).splitlines()[0]
    out["gflops_best"] = max(out["torch_mm_gflops"], out.get("onednn_gflops", 0.0))
    return out


def bench_stagcn(sizes: Sizes, device: torch.device) -> dict:
    """Achieved GFLOP/s of one STA-GCN forward+backward (train mode) next to the fp32 matmul peak."""
    from torch.utils.flop_counter import FlopCounterMode

    from dataloaders.features import skeleton_features
    from models.stagcn import STAGCN

    torch.manual_seed(0)
    enc = STAGCN(sizes.hidden, sizes.out).to(device).train()
    gen = torch.Generator().manual_seed(7)
    B, T = sizes.batch, sizes.stagcn_frames
    feats = skeleton_features(torch.stack([random_clip(T, gen) for _ in range(B)])).to(device)
    mask = torch.ones(B, T, dtype=torch.bool, device=device)

    def fwd_bwd(_=0):
        enc.zero_grad(set_to_none=True)
        emb, att_node, att_A = enc(feats, mask)
        emb.sum().backward()

    with fp32_only(device):
        fwd_bwd()
        with FlopCounterMode(display=False) as counter:
            fwd_bwd()
        flops = counter.get_total_flops()
        times = time_calls(fwd_bwd, warmup=sizes.stagcn_warmup, iters=sizes.stagcn_iters, device=device)
        peak = matmul_peak(sizes, device)
    s = summary(times)
    achieved = flops / s["median_s"] / 1e9
    return {"gflop_per_step": flops / 1e9, "gflops": achieved, "gflops_best": flops / s["min_s"] / 1e9,
            "matmul_peak_gflops": peak["gflops_best"], "matmul": peak, "ratio": achieved / peak["gflops_best"],
            "batch": B, "frames": T, **s}


@contextlib.contextmanager
def fp32_only(device: torch.device):
    """On CUDA, compare fp32 with fp32: no TF32 in matmuls or cuDNN convolutions while measuring."""
    if device.type != "cuda":
        yield
        return
    old = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old[0])
        torch.backends.cudnn.allow_tf32 = old[1]


@contextlib.contextmanager
def exact_new_tokens(model, n: int):
    """Make MotionToText.generate produce exactly n new tokens (eos suppressed until then), and check it."""
    t5 = model.t5
    original = t5.generate
    seen = []

    def generate(**kwargs):
        kwargs["min_new_tokens"] = n
        out = original(**kwargs)
        seen.append(out.shape[1] - kwargs["decoder_input_ids"].shape[1])
        return out

    t5.generate = generate  # instance attribute shadows the method for this block only
    try:
        yield seen
    finally:
        del t5.generate
    if any(k != n for k in seen):
        raise RuntimeError(f"generation produced {sorted(set(seen))} new tokens, expected exactly {n}")


def bench_generate(sizes: Sizes, device: torch.device, model=None, cfg=None) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from engine.precision import autocast_dtype

    if model is None:
        model, cfg = build_model(sizes, 0, device)
    model.eval()
    amp = autocast_dtype(cfg, device)
    greedy = Generation(num_beams=1, repetition_penalty=3.5, length_penalty=1.0, max_length=sizes.new_tokens)
    beam = Generation(num_beams=3, repetition_penalty=5.0, length_penalty=3.0, max_length=sizes.new_tokens)
    rng = random.Random(3)
    singles = [move(make_batch(random_lengths(1, sizes, rng), 200 + i, sizes)[0], device)
               for i in range(sizes.gen_bs1_clips)]
    big_lengths = random_lengths(sizes.gen_big_batch, sizes, rng)
    big = move(make_batch(big_lengths, 300, sizes)[0], device)

    def run(batch, gen):
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            return model.generate(batch, gen)

    out = {}
    with exact_new_tokens(model, sizes.new_tokens):
        n = len(singles)
        t1 = time_calls(lambda i: run(singles[i % n], greedy), warmup=n, iters=max(n, sizes.gen_iters), device=device)
        out["bs1"] = {"captions_per_s": 1 / statistics.median(t1), **summary(t1)}
        with FlopCounterMode(display=False) as counter:  # the warm-up call, counted
            run(big, greedy)
        tb = time_calls(lambda i: run(big, greedy), warmup=0, iters=sizes.gen_iters, device=device)
        out["bs32"] = {"captions_per_s": sizes.gen_big_batch / statistics.median(tb), **summary(tb)}
        # Same clips as bs32: the encoder's kernels are warm; decoding with 3 beams is the new part.
        tbeam = time_calls(lambda i: run(big, beam), warmup=0, iters=sizes.beam_iters, device=device)
        out["bs32_beam3"] = {"captions_per_s": sizes.gen_big_batch / statistics.median(tbeam), **summary(tbeam)}
    with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        te = time_calls(lambda i: model.encode(big), warmup=0, iters=1, device=device)
    out["bs32"]["encode_s"] = te[0]
    out["bs32"]["gflop_per_caption"] = counter.get_total_flops() / 1e9 / sizes.gen_big_batch  # STA-GCN + projection of the 32 clips, part of every bs32 call
    out["bs32"]["padded_frames"] = max(big_lengths)
    out["bs32"]["clip_frames_mean"] = statistics.mean(big_lengths)
    return out


# ---- worker processes (weak scaling, peak memory) ---------------------------------------------------

def start_workers(specs: list[dict], threads: int) -> list[tuple[dict, subprocess.Popen]]:
    """One fresh `bench/run.py --worker` process per spec, all started at once."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    return [(spec, subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                    cwd=str(REPO)))
            for spec in specs]


def collect_workers(procs: list[tuple[dict, subprocess.Popen]], timeout: float = 600) -> list[dict]:
    """The workers' JSON results, in order. A worker still running at the deadline has its Python stacks
    dumped to its stderr (faulthandler, SIGUSR1) and is killed; a result it printed before is still used."""
    deadline = time.monotonic() + timeout
    finished = []
    for spec, p in procs:
        try:
            stdout, stderr = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, AttributeError):
                p.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
            p.kill()  # only the processes started here
            stdout, stderr = p.communicate()
            stderr += f"\n[bench] worker still running after {timeout:.0f}s: killed"
        finished.append((spec, p.returncode, stdout, stderr))
    results, errors = [], []
    for spec, rc, stdout, stderr in finished:
        lines = [line for line in stdout.splitlines() if line.startswith(RESULT_TAG)]
        if lines:
            results.append(json.loads(lines[-1][len(RESULT_TAG):]))
            if rc != 0:
                print(f"[bench] worker {spec['kind']} {spec.get('rank', spec.get('batch'))} exited {rc} after "
                      f"its result:\n{stderr[-2000:]}", file=sys.stderr, flush=True)
        else:
            errors.append(f"worker {spec['kind']} {spec.get('rank', spec.get('batch'))} exited {rc} "
                          f"without a result:\n{stderr[-4000:]}")
    if errors:
        raise RuntimeError("\n".join(errors))
    return results


def run_workers(specs: list[dict], threads: int, timeout: float = 600) -> list[dict]:
    return collect_workers(start_workers(specs, threads), timeout)


def emit(result: dict) -> None:
    print(RESULT_TAG + json.dumps(result), flush=True)


def progress(message: str) -> None:
    """Worker progress on stderr: shown by the parent when a worker fails or hangs."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def worker_main(spec: dict) -> None:
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    threads = spec["threads"]
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(threads)
    sizes = Sizes(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["sizes"].items()})
    device = torch.device(spec["device"])
    result = {"memory": worker_memory, "scaling": worker_scaling}[spec["kind"]](spec, sizes, device)
    if result is not None:
        emit(result)


def _rss_mib(field: str = "VmHWM") -> float:
    """Peak (VmHWM) or current (VmRSS) resident memory of this process, MiB.

    Not ru_maxrss: on Linux a child starts with its parent's RSS at fork as its ru_maxrss, so a worker
    started by a large parent would report the parent's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux (bytes on macOS)
    return kib / 1024 / (1024 if sys.platform == "darwin" else 1)


def worker_memory(spec: dict, sizes: Sizes, device: torch.device) -> dict:
    model, cfg = build_model(sizes, 0, device)
    after_build = _rss_mib("VmRSS")
    step = TrainStep(model, cfg, device)
    lengths = [[sizes.memory_frames] * spec["batch"]]
    (batch, labels), = prepared_batches(model, sizes, lengths, device, seed=500)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):  # the second step runs with the optimizer state already allocated
        step(batch, labels)
    out = {"peak_rss_mib": _rss_mib("VmHWM"), "rss_after_build_mib": after_build, "batch": spec["batch"],
           "frames": sizes.memory_frames}
    if device.type == "cuda":
        out["cuda_peak_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return out


def _wait_for(path: Path, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f}s for {path}")
        time.sleep(0.05)


def worker_scaling(spec: dict, sizes: Sizes, device: torch.device) -> dict:
    """Rank 0 first measures 1 process × 1 thread alone (rank 1 idles, sleeping), then both train with DDP."""
    import datetime

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank, world, folder = spec["rank"], spec["world"], Path(spec["folder"])
    progress(f"rank {rank}: building the model")
    model, cfg = build_model(sizes, 0, device)
    lengths = [[sizes.scaling_frames] * sizes.batch]  # identical shapes on every rank: no load imbalance
    data = prepared_batches(model, sizes, lengths, device, seed=600 + rank)
    result = {}
    if rank == 0:
        _wait_for(folder / "ready1")  # rank 1 has built its model and sleeps: the CPU is ours
        progress("rank 0: 1 process x 1 thread")
        step = TrainStep(model, cfg, device)
        times = time_calls(lambda i: step(*data[0]), sizes.scaling_warmup, sizes.scaling_iters, device)
        result["single"] = {"samples_per_s": sizes.batch / statistics.median(times), **summary(times)}
        (folder / "go").touch()
    else:
        (folder / "ready1").touch()
        _wait_for(folder / "go")
    progress(f"rank {rank}: joining the process group")
    dist.init_process_group("gloo", init_method=f"file://{folder / 'store'}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=300))
    try:
        ddp = DDP(model)
        step = TrainStep(model, cfg, device, module=ddp)
        dist.barrier()
        progress(f"rank {rank}: DDP, {world} processes x 1 thread")
        times = time_calls(lambda i: step(*data[0]), sizes.scaling_warmup, sizes.scaling_iters, device)
        slowest = torch.tensor(times)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)  # a step lasts as long as its slowest rank
        times = slowest.tolist()
        result["ddp"] = {"samples_per_s": world * sizes.batch / statistics.median(times), **summary(times)}
        emit(result)  # before the teardown: the result counts even if tearing down stalls
        progress(f"rank {rank}: done, tearing down")
    finally:
        dist.destroy_process_group()
    return None


def start_scaling(sizes: Sizes) -> tuple[list, str]:
    folder = tempfile.mkdtemp(prefix="m2t-bench-")  # the file store and the ready/go marks, nothing else
    specs = [{"kind": "scaling", "rank": r, "world": 2, "folder": folder, "threads": 1, "device": "cpu",
              "sizes": asdict(sizes)} for r in range(2)]
    return start_workers(specs, threads=1), folder


def bench_scaling(sizes: Sizes, started=None) -> dict:
    procs, folder = started or start_scaling(sizes)
    try:
        r0, _ = collect_workers(procs, timeout=300 if sizes.batch > 2 else 120)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    single, ddp = r0["single"]["samples_per_s"], r0["ddp"]["samples_per_s"]
    return {"samples_per_s_1proc": single, "samples_per_s_2proc": ddp, "efficiency": ddp / (2 * single),
            "single": r0["single"], "ddp": r0["ddp"], "frames": sizes.scaling_frames, "batch_per_proc": sizes.batch}


def memory_specs(sizes: Sizes, device: torch.device) -> list[dict]:
    # Side by side, 1 thread each: only memory is read here, and each process counts its own.
    return [{"kind": "memory", "batch": b, "threads": 1, "device": str(device), "sizes": asdict(sizes)}
            for b in sizes.memory_batches]


def bench_memory(sizes: Sizes, device: torch.device, procs=None) -> dict:
    procs = procs or start_workers(memory_specs(sizes, device), threads=1)
    return {f"bs{spec['batch']}": r for (spec, _), r in zip(procs, collect_workers(procs))}


# ---- profile (--profile) ------------------------------------------------------------------------------

def profile_report(sizes: Sizes, device: torch.device, out_path: Path) -> str:
    """Where the time goes: per-phase wall time of one training step per branch, then torch.profiler's op
    table for the step and for one batch-32 generation (CPU)."""
    from torch.profiler import ProfilerActivity, profile

    lines = []
    for branch in (0, 1):
        model, cfg = build_model(sizes, branch, device)
        step = TrainStep(model, cfg, device)
        rng = random.Random(0)
        lengths = [random_lengths(sizes.batch, sizes, rng) for _ in range(sizes.train_batches)]
        data = prepared_batches(model, sizes, lengths, device, seed=100)
        for d in data:  # warm-up
            step(*d)
        phases = {"encoder_fwd": 0.0, "t5_fwd": 0.0}
        marks = {}

        def pre(name):
            def hook(module, args, kwargs=None):  # used and removed within this loop iteration
                sync(device)
                marks[name] = time.perf_counter()  # noqa: B023
            return hook

        def post(name):
            def hook(module, args, output):
                sync(device)
                phases[name] += time.perf_counter() - marks[name]  # noqa: B023 (this iteration's dicts)
            return hook

        handles = [model.encoder.register_forward_pre_hook(pre("encoder_fwd")),
                   model.encoder.register_forward_hook(post("encoder_fwd")),
                   model.t5.register_forward_pre_hook(pre("t5_fwd")), model.t5.register_forward_hook(post("t5_fwd"))]
        batch, labels = data[0]
        model.train()
        t0 = time.perf_counter()
        loss = model(batch, labels)
        t1 = time.perf_counter()
        loss.backward()
        sync(device)
        t2 = time.perf_counter()
        step.optimizer_step()
        sync(device)
        t3 = time.perf_counter()
        for h in handles:
            h.remove()
        lines.append(f"branch {branch}: padded frames {batch['coordinates'].shape[1]}, forward {t1 - t0:.3f}s "
                     f"(encoder incl. standards {phases['encoder_fwd']:.3f}s, T5 {phases['t5_fwd']:.3f}s), "
                     f"backward {t2 - t1:.3f}s, optimizer step {t3 - t2:.3f}s")
        with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
            step(*data[0])
        lines.append(f"\n== branch {branch}: one training step, top ops by self CPU time ==")
        lines.append(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
        if branch == 0:
            model.eval()
            big = move(make_batch(random_lengths(sizes.gen_big_batch, sizes, rng), 300, sizes)[0], device)
            gen = Generation(num_beams=1, repetition_penalty=3.5, max_length=sizes.new_tokens)
            with exact_new_tokens(model, sizes.new_tokens):
                model.generate(big, gen)  # warm-up
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    t = time.perf_counter()
                    model.generate(big, gen)
                    t_all = time.perf_counter() - t
            with torch.no_grad():
                t = time.perf_counter()
                model.encode(big)
                t_enc = time.perf_counter() - t
            lines.append(f"\n== generation, batch {sizes.gen_big_batch}, greedy {sizes.new_tokens} tokens: "
                         f"{t_all:.2f}s (profiled), of which encode() alone takes {t_enc:.2f}s ==")
            lines.append(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
        del model, step, data
    text = "\n".join(lines)
    out_path.write_text(text)
    return text


# ---- results, table, CLI -------------------------------------------------------------------------------

TARGETS = {  # key: (description, predicate on the results)
    "train_samples_per_s.branch0": (">= 2.0", lambda r: r["train_samples_per_s.branch0"] >= 2.0),
    "train_samples_per_s.branch1": ("within 25% of branch 0",
                                    lambda r: r["train_samples_per_s.branch1"] >= 0.75 * r["train_samples_per_s.branch0"]),
    "generate_captions_per_s.bs32": (">= 15", lambda r: r["generate_captions_per_s.bs32"] >= 15),
    "stagcn_matmul_peak_ratio": (">= 0.80", lambda r: r["stagcn_matmul_peak_ratio"] >= 0.8),
    "weak_scaling_efficiency": (">= 0.80", lambda r: r["weak_scaling_efficiency"] >= 0.8),
}

UNITS = {"train_samples_per_s": "samples/s", "generate_captions_per_s": "captions/s", "peak_rss_mib": "MiB",
         "train_step_s": "s", "gflops": "GFLOP/s", "_gflop_per": "GFLOP", "cuda_peak": "MiB"}


def unit_of(key: str) -> str:
    for part, unit in UNITS.items():
        if part in key:
            return unit
    return ""


def format_table(results: dict, quick: bool) -> str:
    rows = [("metric", "value", "unit", "target", "status", "original")]
    for key, value in results.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        target, status = "", ""
        if key in TARGETS:
            target = TARGETS[key][0]
            try:
                status = "n/a (quick)" if quick else ("met" if TARGETS[key][1](results) else "MISSED")
            except KeyError:
                status = "n/a"
        original = f"{ORIGINAL[key]:g}" if key in ORIGINAL else ""
        rows.append((key, f"{value:.4g}", unit_of(key), target, status, original))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny model, few iterations: a smoke test, not a measurement")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the single-process numbers "
                   "(default: all CPUs of this machine)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results.json")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--profile", action="store_true", help="also write a torch.profiler report next to --out")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        worker_main(json.loads(args.worker))
        return {}
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench: --device cuda but CUDA is not available")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = args.threads or (1 if args.quick else usable)  # --quick: no thread contention on a busy machine
    torch.set_num_threads(threads)
    sizes = QUICK if args.quick else Sizes()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    started = time.perf_counter()
    machine = machine_info(device)
    results: dict = {}
    details: dict = {}
    load: dict = {}
    errors: dict = {}

    def section(name: str, fn: Callable[[], None]) -> None:
        print(f"[bench] {name} ...", flush=True)
        meter, t = LoadMeter(), time.perf_counter()
        try:
            fn()
        except Exception as e:  # one failed section must not cost the others' numbers
            errors[name] = f"{type(e).__name__}: {e}"
            print(f"[bench] {name} FAILED: {errors[name]}", file=sys.stderr, flush=True)
        load[name] = meter.other_share()
        print(f"[bench] {name}: {time.perf_counter() - t:.1f}s (other processes used {load[name]} of the CPUs)",
              flush=True)

    def train():
        for branch in (0, 1):
            r = bench_train(sizes, device, branch)
            details[f"train.branch{branch}"] = r
            results[f"train_samples_per_s.branch{branch}"] = r["samples_per_s"]
            results[f"train_step_s.branch{branch}"] = r["median_s"]
            results[f"train_gflop_per_sample.branch{branch}"] = r["gflop_per_step"] / r["batch"]
            results[f"train_gflops.branch{branch}"] = r["gflops"]
        results["train_branch1_over_branch0"] = (results["train_samples_per_s.branch1"]
                                                 / results["train_samples_per_s.branch0"])

    def stagcn():
        r = bench_stagcn(sizes, device)
        details["stagcn"] = r
        results.update({"stagcn_gflop_per_step": r["gflop_per_step"], "stagcn_gflops": r["gflops"],
                        "matmul_peak_gflops": r["matmul_peak_gflops"],
                        "matmul_gflops.torch_mm": r["matmul"]["torch_mm_gflops"]})
        if "onednn_gflops" in r["matmul"]:
            results["matmul_gflops.onednn"] = r["matmul"]["onednn_gflops"]
        results["stagcn_matmul_peak_ratio"] = r["ratio"]

    def generate():
        r = bench_generate(sizes, device)
        details["generate"] = r
        for k, v in r.items():
            results[f"generate_captions_per_s.{k}"] = v["captions_per_s"]
        results["generate_gflop_per_caption.bs32"] = r["bs32"]["gflop_per_caption"]
        results["generate_encode_share.bs32"] = r["bs32"]["encode_s"] / r["bs32"]["median_s"]

    def scaling():
        r = bench_scaling(sizes, early_scaling)
        details["scaling"] = r
        results.update({"weak_scaling.samples_per_s_1proc": r["samples_per_s_1proc"],
                        "weak_scaling.samples_per_s_2proc": r["samples_per_s_2proc"],
                        "weak_scaling_efficiency": r["efficiency"]})

    # --quick: the worker processes start now and run beside the rest (a smoke test's timings do not matter).
    early_memory = start_workers(memory_specs(sizes, device), 1) if args.quick and "memory" in args.only else None
    early_scaling = start_scaling(sizes) if args.quick and "scaling" in args.only else None

    def memory():
        r = bench_memory(sizes, device, early_memory)
        details["memory"] = r
        for k, v in r.items():
            results[f"peak_rss_mib.{k}"] = v["peak_rss_mib"]
            if "cuda_peak_allocated_mib" in v:
                results[f"cuda_peak_allocated_mib.{k}"] = v["cuda_peak_allocated_mib"]

    steps = {"train": train, "stagcn": stagcn, "generate": generate, "scaling": scaling, "memory": memory}
    for name in SECTIONS:
        if name in args.only:
            section(name, steps[name])
    # Upper bounds if every counted FLOP ran at the measured matmul peak (time outside matmuls/convs = 0).
    if "matmul_peak_gflops" in results:
        peak = results["matmul_peak_gflops"]
        for branch in (0, 1):
            if f"train_gflop_per_sample.branch{branch}" in results:
                results[f"train_samples_per_s_at_peak.branch{branch}"] = peak / results[f"train_gflop_per_sample.branch{branch}"]
        if "generate_gflop_per_caption.bs32" in results:
            results["generate_captions_per_s_at_peak.bs32"] = peak / results["generate_gflop_per_caption.bs32"]
    if args.profile:
        print(profile_report(sizes, device, args.out.with_name(args.out.stem + "_profile.txt")))
    machine["loadavg_end"] = list(os.getloadavg())
    machine["other_processes_cpu_share"] = load
    targets = {}
    for key, (text, ok) in TARGETS.items():
        with contextlib.suppress(KeyError):
            targets[key] = {"target": text, "value": results[key], "met": None if args.quick else bool(ok(results))}
    doc = {**results, "errors": errors, "machine": machine, "targets": targets, "original": ORIGINAL, "details": details,
           "settings": {**asdict(sizes), "quick": args.quick, "threads": threads, "device": str(device),
                        "sections": args.only}, "wall_s": time.perf_counter() - started}
    for key in REQUIRED_KEYS:
        if key in results and not (math.isfinite(results[key]) and results[key] > 0):
            raise RuntimeError(f"bench: {key} = {results[key]!r} is not a positive finite number")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    print()
    print(f"{machine['cpu_model']} · {machine['cpus_usable']} CPUs · torch {machine['torch']} · "
          f"{threads} threads · device {device}" + (f" ({machine['gpu']})" if "gpu" in machine else ""))
    print(f"load average {machine['loadavg_start'][0]:.2f} at start, {machine['loadavg_end'][0]:.2f} at end; "
          f"CPU share used by other processes per section: {load}")
    print(format_table(results, args.quick))
    print(f"\nwrote {args.out} ({doc['wall_s']:.0f}s)")
    if errors:
        sys.exit(f"bench: sections failed: {', '.join(errors)} (details in {args.out})")
    return doc


if __name__ == "__main__":
    main()
