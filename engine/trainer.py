"""The training loop: AdamW + linear warmup/decay, accumulation, AMP, DDP, checkpoints, evaluation.

Exact resume: a checkpoint holds model, optimizer, scheduler, scaler, epoch, batches done in the epoch,
global step, every rank's RNG states and the loss history; data order is a function of (seed, epoch).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Optional

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from dataloaders.datasets import collate
from dataloaders.samplers import BucketedDistributedSampler
from engine import checkpoint as ckpt
from engine.config import Config
from engine.distributed import (DistInfo, all_gather_objects, all_reduce_sum, any_rank, barrier,
                                broadcast_module_state)
from engine.evaluator import motion_token_stats, predict, references_of, write_predictions
from engine.experiment import Experiment, move_batch
from engine.logs import TensorBoard
from metrics.report import BEST_BY
from models.tokenizer import tokenizer_to_json

log = logging.getLogger("motion2text")


class TrainingAborted(Exception):
    """Training cannot go on (e.g. the loss stayed non-finite); the message says why."""


class StopRequested(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint was saved at the next safe point."""


def should_checkpoint(epoch: int, max_epoch: int) -> bool:
    """Each epoch below 10, then every 5, and the last (design §5)."""
    return epoch < 10 or epoch % 5 == 0 or epoch == max_epoch


def autocast_dtype(cfg: Config, device: torch.device) -> Optional[torch.dtype]:
    precision = cfg.TRAIN.PRECISION
    if device.type != "cuda" or precision == "fp32":
        return None  # CPU trains in fp32: bf16 autocast on CPU is slower here and changes numerics
    if precision == "fp16":
        return torch.float16
    return torch.bfloat16 if (precision == "bf16" or torch.cuda.is_bf16_supported()) else torch.float16


def _fault_hook(rank: int, epoch: int, step: int) -> None:
    """Test-only fault injection: M2T_TEST_FAULT="rank:epoch:step:marker" crashes that rank once
    (the marker file records that it happened, so an elastic restart runs clean)."""
    spec = os.environ.get("M2T_TEST_FAULT")
    if not spec:
        return
    r, e, s, marker = spec.split(":", 3)
    if (int(r), int(e), int(s)) == (rank, epoch, step) and not Path(marker).exists():
        Path(marker).write_text("crashed")
        os._exit(17)


def _signal_hook(rank: int, epoch: int, batch: int) -> None:
    """Test-only: M2T_TEST_SIGTERM_AT="epoch:batch[:rank]" makes the process (of that rank, else every
    rank) send itself SIGTERM while it trains that batch (0-based) of that epoch (1-based). The real signal
    handler then stops at the next safe point, exactly as for a SIGTERM from outside."""
    spec = os.environ.get("M2T_TEST_SIGTERM_AT")
    if not spec:
        return
    parts = [int(x) for x in spec.split(":")]
    if (parts[0], parts[1]) == (epoch, batch) and (len(parts) < 3 or parts[2] == rank):
        os.kill(os.getpid(), signal.SIGTERM)


def _nan_hook(step: int, loss: torch.Tensor) -> torch.Tensor:
    """Test-only: M2T_TEST_NAN_STEPS="3,4" makes the loss of those global steps NaN."""
    spec = os.environ.get("M2T_TEST_NAN_STEPS")
    if spec and step in {int(x) for x in spec.split(",")}:
        return loss * float("nan")
    return loss


class Trainer:
    def __init__(self, exp: Experiment, dist: DistInfo):
        self.exp, self.cfg, self.dist = exp, exp.cfg, dist
        cfg = self.cfg
        self.model = exp.model.to(dist.device)
        self.amp_dtype = autocast_dtype(cfg, dist.device)
        self.scaler = torch.amp.GradScaler(dist.device.type, enabled=self.amp_dtype == torch.float16)
        log.info("device %s, precision %s, %d process(es)%s", dist.device,
                 {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype], dist.world_size,
                 f", backend {torch.distributed.get_backend()}" if dist.world_size > 1 else "")
        if dist.world_size > 1 and dist.device.type == "cuda":
            # SyncBatchNorm needs CUDA; on CPU/gloo each rank keeps its own BN statistics.
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        if dist.world_size > 1:
            log.info("SyncBatchNorm %s", "on" if dist.device.type == "cuda" else
                     "off (CPU/gloo cannot synchronise BatchNorm; each rank normalises its own batch)")
        self.ddp = DDP(self.model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None) \
            if dist.world_size > 1 else None

        lengths = exp.train_set.lengths
        self.sampler = BucketedDistributedSampler(
            lengths, cfg.DATA.BATCH_SIZE, dist.world_size, dist.rank, seed=cfg.SEED,
            shuffle=True, bucket_by_length=cfg.DATA.BUCKET_BY_LENGTH)
        self.loader = DataLoader(exp.train_set, batch_sampler=self.sampler, collate_fn=collate,
                                 num_workers=cfg.DATA.NUM_WORKERS, generator=torch.Generator(),
                                 persistent_workers=cfg.DATA.NUM_WORKERS > 0)
        accum = cfg.OPTIMIZER.GRAD_ACCUM_STEPS
        self.steps_per_epoch = math.ceil(len(self.sampler) / accum)
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.ndim < 2]  # biases and norm scales
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.OPTIMIZER.WEIGHT_DECAY},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=cfg.OPTIMIZER.LR)
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, cfg.OPTIMIZER.WARMUP_STEPS, max(1, self.steps_per_epoch * cfg.OPTIMIZER.MAX_EPOCH))

        self.epoch = 0  # completed epochs
        self.batches_done = 0  # batches of the current epoch already trained (mid-epoch checkpoint)
        self.global_step = 0
        self.loss_history: list[dict] = []
        self.bad_steps = 0
        self._partial_loss = [0.0, 0.0]  # [loss sum, count] of a part-trained epoch
        self._stop_signal: Optional[int] = None
        self._synced_at: Optional[tuple] = None  # (epoch, batches done, step) of the last _sync_model
        # Early stopping on the validation CIDEr (when on, the best epoch's checkpoint is never pruned).
        self.early_stop = {"best_epoch": None, "best": None, "since_best": 0, "stopped": False}
        self.jsons = cfg.logdir / "jsons"
        self.tb = TensorBoard(cfg.logdir / "train_logs" if dist.is_main else None)
        if exp.resume_state is not None:
            self._restore(exp.resume_state)
        else:
            torch.manual_seed(cfg.SEED + dist.rank)  # dropout differs per rank, reproducibly

    # ---- state ---------------------------------------------------------------------------------
    def _state(self) -> dict:
        rng = all_gather_objects(ckpt.rng_state())  # every rank's RNG: each resumes its own stream
        return {"model": self.exp.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": self.epoch, "batches_done": self.batches_done, "global_step": self.global_step,
                "rng": rng, "loss_history": self.loss_history, "config": self.cfg.to_dict(),
                "partial_loss": self._partial_loss, "early_stop": dict(self.early_stop),
                "tokenizer_json": tokenizer_to_json(self.exp.model.codec.tokenizer),
                "world_size": self.dist.world_size}

    def _restore(self, state: dict) -> None:
        if state.get("world_size", self.dist.world_size) != self.dist.world_size and state["batches_done"]:
            log.warning("checkpoint was written by %d ranks inside epoch %d, now %d ranks: the batches differ, "
                        "so epoch %d restarts from its beginning", state["world_size"], state["epoch"] + 1,
                        self.dist.world_size, state["epoch"] + 1)
            state = {**state, "batches_done": 0, "partial_loss": [0.0, 0.0]}
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batches_done = state["epoch"], state["batches_done"]
        self.global_step, self.loss_history = state["global_step"], list(state["loss_history"])
        self._partial_loss = [float(x) for x in state["partial_loss"]]  # summed over all ranks
        self.early_stop.update(state.get("early_stop") or {})
        if len(state["rng"]) == self.dist.world_size:
            ckpt.set_rng_state(state["rng"][self.dist.rank])
        else:
            log.warning("checkpoint was written by %d ranks, now %d: RNG streams reseeded, resume is not bit-exact",
                        len(state["rng"]), self.dist.world_size)
            torch.manual_seed(self.cfg.SEED + self.dist.rank + 1000 * self.epoch)

    def _sync_model(self) -> None:
        """Every rank holds rank 0's parameters and buffers: one model per evaluation and per checkpoint.

        Without SyncBatchNorm (CPU/gloo) each rank's BatchNorm running statistics follow its own batches.
        Safe for training: parameters are equal on every rank already, and evaluations and saves come right
        after a gradient-synchronising forward, so DDP's next forward broadcasts rank 0's buffers anyway.
        Once per training position: the save right after an evaluation does not broadcast again."""
        where = (self.epoch, self.batches_done, self.global_step)  # the same on every rank
        if where != self._synced_at:
            broadcast_module_state(self.exp.model)
            self._synced_at = where

    def save(self) -> None:
        # Collective, as is _state(). Training is unchanged: DDP's next forward broadcasts rank 0's buffers anyway.
        self._sync_model()
        state = self._state()
        if self.dist.is_main:
            best = self.early_stop["best_epoch"]
            path = ckpt.save_checkpoint(self.cfg.checkpoint_dir, ckpt.checkpoint_name(self.epoch, self.batches_done),
                                        state, self.cfg.CHECKPOINT.KEEP_LAST,
                                        keep=() if best is None else (ckpt.checkpoint_name(best),))
            log.info("saved %s", path)
        barrier()

    # ---- evaluation ----------------------------------------------------------------------------
    def evaluate(self, epoch: int, scorer) -> Optional[dict]:
        start = time.time()
        self._sync_model()  # every rank's shard is captioned by the model that rank 0 saves
        preds = predict(self.exp.model, self.exp.test_set, self.dist, self.cfg.DATA.EVAL_BATCH_SIZE,
                        self.cfg.GENERATION, self.cfg.DATA.NUM_WORKERS, self.amp_dtype)
        metrics = None
        if self.dist.is_main:
            write_predictions(self.jsons, epoch, preds)
            refs = references_of(self.exp.test_set)
            captions = {k: v["caption"] for k, v in preds.items()}
            if scorer is not None and all(refs.values()):
                metrics = scorer.score(captions, refs)
                (self.jsons / f"metrics_epoch{epoch}.json").write_text(json.dumps(metrics, indent=2))
                for k, v in metrics.items():
                    self.tb.scalar(f"metrics/{k}", v, epoch)
                log.info("epoch %d metrics: %s", epoch, "  ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
            collapse = motion_token_stats(self.exp.model, self.exp.test_set, self.dist.device,
                                          self.cfg.DATA.EVAL_BATCH_SIZE)
            for k, v in collapse.items():
                self.tb.scalar(f"motion/{k}", v, epoch)
            if collapse:
                log.info("epoch %d T5 input across clips: cosine %.3f, centred %.3f, spread %.3f; dead projection "
                         "units %.1f%%", epoch, collapse["cosine"], collapse["centred_cosine"], collapse["spread"],
                         100 * collapse["dead_units"])
            sample = list(captions.items())[:5]
            self.tb.text("predictions", "\n\n".join(f"**{k}**: {c} — ref: {refs[k][:1]}" for k, c in sample), epoch)
            log.info("epoch %d: %d predictions in %.1fs, e.g. %s: %r", epoch, len(preds), time.time() - start,
                     *sample[0])
        barrier()
        return metrics

    def _track_best(self, metrics: Optional[dict]) -> tuple[bool, bool]:
        """(new best, stop now) after an evaluation, agreed by every rank (only rank 0 has the metrics)."""
        es, patience = self.early_stop, self.cfg.EVAL.EARLY_STOP_PATIENCE
        improved = stop = False
        if metrics is not None and BEST_BY in metrics:
            if es["best"] is None or metrics[BEST_BY] > es["best"]:
                es.update(best_epoch=self.epoch, best=metrics[BEST_BY], since_best=0)
                improved = True
            else:
                es["since_best"] += 1
            stop = patience > 0 and es["since_best"] >= patience and self.epoch < self.cfg.OPTIMIZER.MAX_EPOCH
        improved, stop = any_rank(improved, self.dist.device), any_rank(stop, self.dist.device)
        if stop:
            es["stopped"] = True
            log.info("early stop after epoch %d: %s has not improved for %d evaluations (best %.2f at epoch %d, "
                     "its checkpoint is kept: evaluate.py --exp %s --checkpoint best)", self.epoch, BEST_BY,
                     es["since_best"], es["best"], es["best_epoch"], self.cfg.logdir)
        return improved, stop

    def should_evaluate(self, epoch: int) -> bool:
        period = self.cfg.EVAL.METRIC_PERIOD
        if period > 0:
            return epoch % period == 0 or epoch == self.cfg.OPTIMIZER.MAX_EPOCH
        return should_checkpoint(epoch, self.cfg.OPTIMIZER.MAX_EPOCH)

    # ---- training ------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum

    def _train_epoch(self) -> float:
        """One epoch from `batches_done`; returns the mean loss over this epoch's finite micro-batches."""
        cfg, dist = self.cfg, self.dist
        module = self.ddp or self.model
        module.train()
        epoch = self.epoch + 1
        self.sampler.set_epoch(epoch)
        self.sampler.set_start_batch(self.batches_done)
        accum = cfg.OPTIMIZER.GRAD_ACCUM_STEPS
        num_batches = len(self.sampler)
        loss_sum = torch.zeros(2, dtype=torch.float64)  # [sum of losses, count] over finite micro-batches
        if self.batches_done and dist.is_main:  # the part-trained epoch's loss, summed over every rank once
            loss_sum += torch.tensor(self._partial_loss, dtype=torch.float64)
        bar = tqdm(total=num_batches, initial=self.batches_done, desc=f"epoch {epoch}", disable=not dist.is_main,
                   dynamic_ncols=True, leave=False)
        try:  # a stop or an abort inside the loop must not leave the bar half-drawn over its message
            for i, batch in enumerate(self.loader, start=self.batches_done):
                _fault_hook(dist.rank, epoch, i)
                _signal_hook(dist.rank, epoch, i)
                labels = self.exp.model.codec.encode_targets(batch["texts"]).to(dist.device)
                batch = move_batch(batch, dist.device)
                sync = (i + 1) % accum == 0 or i + 1 == num_batches
                # Accumulation micro-steps skip DDP's gradient all-reduce.
                no_sync = self.ddp.no_sync() if (self.ddp is not None and not sync) else contextlib.nullcontext()
                with no_sync:
                    with torch.autocast(dist.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                        loss = module(batch, labels)
                    loss = _nan_hook(self.global_step + 1, loss)
                    # Mean over the micro-batches of this optimizer step (the epoch's last group may be short).
                    group = min(accum, num_batches - (i // accum) * accum)
                    self.scaler.scale(loss / group).backward()
                if torch.isfinite(loss):
                    loss_sum += torch.tensor([loss.item(), 1.0], dtype=torch.float64)
                self.batches_done = i + 1
                bar.update(1)
                if not sync:
                    continue
                self._optimizer_step()
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
                if self.global_step % cfg.TRAIN.LOG_EVERY == 0:
                    self.tb.scalar("train/loss", loss.item(), self.global_step)
                    self.tb.scalar("train/lr", self.scheduler.get_last_lr()[0], self.global_step)
                if any_rank(self._stop_signal is not None, dist.device) and self.batches_done < num_batches:
                    # Every rank is here (any_rank agrees): sum the part-epoch loss over ranks for the checkpoint.
                    self._partial_loss = all_reduce_sum(loss_sum.to(dist.device)).cpu().tolist()
                    self._stop(f"signal {self._stop_signal or 'on another rank'}")
        finally:
            bar.close()
        total = all_reduce_sum(loss_sum.to(dist.device)).cpu()
        return float(total[0] / total[1]) if total[1] > 0 else float("nan")

    def _optimizer_step(self) -> None:
        """Clip, then step unless the gradient is non-finite (identical on every rank after all-reduce)."""
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.OPTIMIZER.GRAD_CLIP or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if torch.isfinite(grad_norm):
            self.scaler.step(self.optimizer)
            self.bad_steps = 0
        else:
            self.bad_steps += 1
            log.warning("step %d: non-finite loss/gradient, step skipped (%d in a row, limit %d)",
                        self.global_step + 1, self.bad_steps, self.cfg.TRAIN.MAX_BAD_STEPS)
            if self.bad_steps > self.cfg.TRAIN.MAX_BAD_STEPS:
                raise TrainingAborted(
                    f"loss was non-finite for {self.bad_steps} consecutive steps (TRAIN.MAX_BAD_STEPS="
                    f"{self.cfg.TRAIN.MAX_BAD_STEPS}); lower OPTIMIZER.LR or check the data; the last good "
                    f"checkpoint is in {self.cfg.checkpoint_dir}")
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.global_step += 1

    def _stop(self, why: str, save: bool = True) -> None:
        if save:
            self.save()
        where = (f"in epoch {self.epoch + 1} after {self.batches_done} batches" if self.batches_done
                 else f"after epoch {self.epoch}")
        raise StopRequested(f"stopped by {why} {where}; checkpoint saved in {self.cfg.checkpoint_dir}; "
                            f"run the same command to resume")

    def fit(self, scorer=None) -> None:
        cfg = self.cfg
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            patience = cfg.EVAL.EARLY_STOP_PATIENCE
            if self.early_stop["stopped"] and 0 < patience <= self.early_stop["since_best"]:
                log.info("this run already stopped early at epoch %d (best %s at epoch %s); nothing to train. Set "
                         "EVAL.EARLY_STOP_PATIENCE=0 (or higher) and relaunch to train on", self.epoch, BEST_BY,
                         self.early_stop["best_epoch"])
                return
            self.early_stop["stopped"] = False  # a raised (or switched-off) patience lets a stopped run go on
            if self.exp.resume_state is None and cfg.TRAIN.SANITY_EVAL:
                self.evaluate(0, scorer)
            log.info("training epochs %d..%d, %d batches/epoch/rank, %d optimizer steps/epoch",
                     self.epoch + 1, cfg.OPTIMIZER.MAX_EPOCH, len(self.sampler), self.steps_per_epoch)
            while self.epoch < cfg.OPTIMIZER.MAX_EPOCH:
                start = time.time()
                mean_loss = self._train_epoch()
                self.epoch += 1
                self.batches_done = 0
                self._partial_loss = [0.0, 0.0]
                self.loss_history.append({"epoch": self.epoch, "loss": mean_loss})
                self.tb.scalar("train/epoch_loss", mean_loss, self.epoch)
                log.info("epoch %d: loss %.4f (%.1fs)", self.epoch, mean_loss, time.time() - start)
                if self.dist.is_main:
                    self.jsons.mkdir(parents=True, exist_ok=True)
                    (self.jsons / "loss_history.json").write_text(json.dumps(self.loss_history, indent=1))
                improved = stop = False
                if self.should_evaluate(self.epoch):  # before the save: the checkpoint holds the early-stop state
                    metrics = self.evaluate(self.epoch, scorer)
                    if cfg.EVAL.EARLY_STOP_PATIENCE:
                        improved, stop = self._track_best(metrics)
                saved = should_checkpoint(self.epoch, cfg.OPTIMIZER.MAX_EPOCH) or improved or stop
                if saved:
                    self.save()
                if stop:
                    break
                # A signal during the epoch's last batch or its evaluation: stop at this epoch boundary.
                if self.epoch < cfg.OPTIMIZER.MAX_EPOCH and any_rank(self._stop_signal is not None, self.dist.device):
                    self._stop(f"signal {self._stop_signal or 'on another rank'}", save=not saved)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.tb.close()
