"""The training loop: AdamW + linear warmup/decay, accumulation, AMP, DDP, checkpoints, evaluation.

Exact resume: a checkpoint holds model, optimizer, scheduler, scaler, epoch, batches done in the epoch,
global step, every rank's RNG states, the loss history and the callbacks' state; data order is a function of
(seed, epoch). An evaluated epoch is saved before it is scored, so a scoring failure never loses trained work.
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from typing import Optional

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from common.files import atomic_write_json
from dataloaders.datasets import TrainDataset, augment_speed, collate, freeze_before_fork
from dataloaders.features import augment_turn_and_scale
from dataloaders.samplers import BucketedDistributedSampler, ShardedEvalSampler
from engine import checkpoint as ckpt
from engine.callbacks import (Callback, EarlyStopping, FaultInjection, HeapTrim, TensorBoardLogging,
                              ValidationLossHistory)
from engine.distributed import (DistInfo, all_gather_objects, all_reduce_sum, any_rank, barrier,
                                broadcast_module_state, broadcast_object, run_on_main)
from engine.experiment import Experiment
from engine.logs import Progress, TensorBoard
from engine.optim import OptimizerStep, build_optimizer, build_scheduler
from engine.precision import autocast_dtype
from engine.prediction import motion_token_stats, move_batch, predict, references_of, write_predictions
from metrics.report import BEST_BY
from models.motion2text import other_clip_index
from models.tokenizer import tokenizer_to_json

log = logging.getLogger("motion2text")


class TrainingAborted(Exception):
    """Training cannot go on (e.g. the loss stayed non-finite); the message says why."""


class StopRequested(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint was saved at the next safe point."""


def should_checkpoint(epoch: int, max_epoch: int) -> bool:
    """Each epoch below 10, then every 5, and the last (the original's schedule)."""
    return epoch < 10 or epoch % 5 == 0 or epoch == max_epoch


def train_sampler(exp: Experiment, dist: DistInfo) -> BucketedDistributedSampler:
    """This rank's training batches (also what `--dry-run` counts the optimizer steps of)."""
    cfg = exp.cfg
    return BucketedDistributedSampler(exp.train_set.lengths, cfg.DATA.BATCH_SIZE, dist.world_size, dist.rank,
                                      seed=cfg.SEED, shuffle=True, bucket_by_length=cfg.DATA.BUCKET_BY_LENGTH)


class Trainer:
    def __init__(self, exp: Experiment, dist: DistInfo, callbacks: tuple[Callback, ...] = ()):
        """`callbacks` run after the built-in ones (fault injection, tensorboard logging, validation-loss history,
        early stopping)."""
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

        self.sampler = train_sampler(exp, dist)
        if cfg.DATA.NUM_WORKERS > 0:
            freeze_before_fork()
        # Pinned host memory on CUDA, so the non_blocking copies of move_batch overlap with compute.
        self.loader = DataLoader(exp.train_set, batch_sampler=self.sampler, collate_fn=collate,
                                 num_workers=cfg.DATA.NUM_WORKERS, generator=torch.Generator(),
                                 persistent_workers=cfg.DATA.NUM_WORKERS > 0, pin_memory=dist.device.type == "cuda")
        self.steps_per_epoch = math.ceil(len(self.sampler) / cfg.OPTIMIZER.GRAD_ACCUM_STEPS)
        self.optimizer = build_optimizer(self.model, cfg.OPTIMIZER)
        self.scheduler = build_scheduler(self.optimizer, cfg.OPTIMIZER.WARMUP_STEPS,
                                         self.steps_per_epoch * cfg.OPTIMIZER.MAX_EPOCH)
        self.stepper = OptimizerStep(self.model, self.optimizer, self.scheduler, self.scaler, cfg.OPTIMIZER.GRAD_CLIP)

        self.epoch = 0  # completed epochs
        self.batches_done = 0  # batches of the current epoch already trained (mid-epoch checkpoint)
        self.global_step = 0
        self.loss_history: list[dict] = []
        self.bad_steps = 0
        self._partial_loss = [0.0, 0.0]  # [loss sum, count] of a part-trained epoch
        self._stop_signal: Optional[int] = None
        self._synced_at: Optional[tuple] = None  # (epoch, batches done, step) of the last _sync_model
        self._save_requested = self._stop_requested = False
        self.jsons = cfg.logdir / "jsons"
        self.tb = TensorBoard(cfg.logdir / "train_logs" if dist.is_main else None)
        self.early_stopping = EarlyStopping(BEST_BY, cfg.EVAL.EARLY_STOP_PATIENCE, cfg.OPTIMIZER.MAX_EPOCH)
        self.callbacks: list[Callback] = [FaultInjection(), TensorBoardLogging(self.tb, cfg.TRAIN.LOG_EVERY),
                                          ValidationLossHistory(), self.early_stopping,
                                          *([HeapTrim(cfg.TRAIN.MALLOC_TRIM)] if cfg.TRAIN.MALLOC_TRIM else []), *callbacks]
        self._val_pairs: Optional[TrainDataset] = None  # (test clip, label) pairs, built at the first evaluation
        self.motion_gap: Optional[float] = None  # set by validation_loss
        if exp.resume_state is not None:
            self._restore(exp.resume_state)
        else:
            torch.manual_seed(cfg.SEED + dist.rank)  # dropout differs per rank, reproducibly

    # ---- requests from callbacks ---------------------------------------------------------------
    def request_save(self) -> None:
        """Save a checkpoint at the end of this epoch's evaluation (e.g. a new best epoch)."""
        self._save_requested = True

    def request_stop(self) -> None:
        """Finish after this epoch (its checkpoint is saved)."""
        self._stop_requested = True

    # ---- state ---------------------------------------------------------------------------------
    def _callback_states(self) -> dict:
        return {cb.name: cb.state_dict() for cb in self.callbacks if cb.name}

    def _state(self) -> dict:
        rng = all_gather_objects(ckpt.rng_state())  # every rank's RNG: each resumes its own stream
        return {"model": self.exp.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": self.epoch, "batches_done": self.batches_done, "global_step": self.global_step,
                "rng": rng, "loss_history": self.loss_history, "config": self.cfg.to_dict(),
                "partial_loss": self._partial_loss, **self._callback_states(),
                "tokenizer_json": tokenizer_to_json(self.exp.model.codec.tokenizer),
                "model_config": self.exp.model.config.to_dict(),
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
        for cb in self.callbacks:
            if cb.name:
                cb.load_state_dict(state.get(cb.name) or {})
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
        """A checkpoint of the current position (collective: every rank calls it)."""
        self._sync_model()
        state = self._state()
        if self.dist.is_main:
            best = self.early_stopping.state["best_epoch"]
            path = ckpt.save_checkpoint(self.cfg.checkpoint_dir, ckpt.checkpoint_name(self.epoch, self.batches_done),
                                        state, self.cfg.CHECKPOINT.KEEP_LAST,
                                        keep=() if best is None else (ckpt.checkpoint_name(best),))
            log.info("saved %s", path)
        barrier()

    # ---- evaluation ----------------------------------------------------------------------------
    def predict(self, epoch: int) -> Optional[dict]:
        """Caption every test clip (sharded over ranks); rank 0 writes jsons/ and returns the predictions."""
        start = time.time()
        self._sync_model()  # every rank's shard is captioned by the model that rank 0 saves
        preds = predict(self.exp.model, self.exp.test_set, self.dist, self.cfg.DATA.EVAL_BATCH_SIZE,
                        self.cfg.generation, self.cfg.DATA.NUM_WORKERS, self.amp_dtype)
        if not self.dist.is_main:
            return None
        try:  # each file atomically: a full disk leaves the earlier epochs' files whole, and training goes on
            write_predictions(self.jsons, epoch, preds, self.cfg.EVAL.SAVE_ATTENTION)
        except OSError as e:
            log.error("epoch %d: cannot write the predictions to %s (%s); the epoch's checkpoint does not depend "
                      "on them", epoch, self.jsons, e.strerror or e)
        collapse = motion_token_stats(self.exp.model, self.exp.test_set, self.dist.device,
                                      self.cfg.DATA.EVAL_BATCH_SIZE)
        for k, v in collapse.items():
            self.tb.scalar(f"motion/{k}", v, epoch)
        if collapse:
            log.info("epoch %d T5 input across clips: cosine %.3f, centred %.3f, spread %.3f; dead projection "
                     "units %.1f%%", epoch, collapse["cosine"], collapse["centred_cosine"], collapse["spread"],
                     100 * collapse["dead_units"])
        refs = references_of(self.exp.test_set)
        sample = [(k, v["caption"]) for k, v in list(preds.items())[:5]]
        self.tb.text("predictions", "\n\n".join(f"**{k}**: {c} — ref: {refs[k][:1]}" for k, c in sample), epoch)
        log.info("epoch %d: %d predictions in %.1fs, e.g. %s: %r", epoch, len(preds), time.time() - start,
                 *sample[0])
        return preds

    def score(self, epoch: int, preds: Optional[dict], scorer) -> Optional[dict]:
        """Rank 0 scores the predictions while the other ranks wait (however long it takes); every rank gets the
        metrics. A scoring failure is logged and training goes on: the predictions stay in jsons/."""

        def score_on_main() -> Optional[dict]:
            refs = references_of(self.exp.test_set)
            if scorer is None or not all(refs.values()):
                return None
            captions = {k: v["caption"] for k, v in preds.items()}
            try:
                metrics = scorer.score(captions, refs)
            except Exception as e:  # Java, a timeout, a bad reference: the epoch is saved, scoring can wait
                log.error("epoch %d: scoring failed (%s); the predictions are kept in %s; score them later with "
                          "`python evaluate.py --exp %s`", epoch, str(e).splitlines()[0] if str(e) else
                          type(e).__name__, self.jsons, self.cfg.logdir)
                return None
            atomic_write_json(self.jsons / f"metrics_epoch{epoch}.json", metrics)
            for k, v in metrics.items():
                self.tb.scalar(f"metrics/{k}", v, epoch)
            log.info("epoch %d metrics: %s", epoch, "  ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
            return metrics

        metrics = run_on_main(score_on_main, self.dist)
        return broadcast_object(metrics) if self.dist.world_size > 1 else metrics

    @torch.no_grad()
    def validation_loss(self) -> Optional[float]:
        """Teacher-forced cross-entropy per label token over every (test clip, label) pair, in eval mode and
        batched like `predict`, each rank its shard (collective); None when no test clip has labels. Cheap next to
        generation: one forward per batch, no decoding.

        Also sets `motion_gap`: how much worse (nats per caption token) each caption is predicted from another
        clip's motion than from its own, averaged over the pairs (see MotionToText.paired_caption_nll). Near 0
        means the decoder does not read the motion."""
        if self._val_pairs is None:
            test = self.exp.test_set
            self._val_pairs = TrainDataset(test.clips, segment=test.segment, retrieved=test.retrieved)
        pairs, model, device = self._val_pairs, self.exp.model, self.dist.device
        if not len(pairs):
            return None
        self._sync_model()
        sampler = ShardedEvalSampler(len(pairs), self.dist.world_size, self.dist.rank, lengths=pairs.lengths)
        # Its own generator: evaluating never advances the global RNG, so resumed runs match uninterrupted ones.
        loader = DataLoader(pairs, batch_size=self.cfg.DATA.EVAL_BATCH_SIZE, sampler=sampler, collate_fn=collate,
                            generator=torch.Generator())
        # Cropped like the training labels: the decoder's memory grows with the square of the label length.
        max_label = len(model.codec.prompt_ids) + self.cfg.DATA.MAX_LABEL_TOKENS + 1
        # [sum of token losses, tokens, sum of motion gaps, pairs with another clip]
        sums = torch.zeros(4, dtype=torch.float64, device=device)
        was_training = model.training
        model.eval()
        try:
            for batch in loader:
                labels = model.codec.encode_targets(batch["texts"])[:, :max_label].to(device)
                other, distinct = other_clip_index(batch["video_names"], device)
                with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    tokens, token_mask, _, _ = model.encode(move_batch(batch, device))
                    mean, own, swapped = model.paired_caption_nll(tokens, token_mask, labels, other)
                n_tokens = (labels != -100).sum()
                sums += torch.stack([mean.double() * n_tokens, n_tokens.double(),
                                     ((swapped - own).double() * distinct).sum(), distinct.sum().double()])
        finally:
            model.train(was_training)
        total = all_reduce_sum(sums)
        self.motion_gap = float(total[2] / total[3]) if total[3] > 0 else None
        return float(total[0] / total[1])

    def evaluate(self, epoch: int, scorer) -> Optional[dict]:
        """Predict and compute the validation loss, save when this epoch is due a checkpoint, then score;
        callbacks see the validation loss before the save (their state is saved with it) and the metrics after."""
        preds = self.predict(epoch)
        val_loss = self.validation_loss()
        if self.motion_gap is not None:
            self.tb.scalar("motion/loss_gap", self.motion_gap, epoch)
            log.info("epoch %d: validation captions %+.4f nats/token under another clip's motion than under their "
                     "own (motion/loss_gap)", epoch, self.motion_gap)
        if val_loss is not None:
            for cb in self.callbacks:
                cb.after_validation(self, epoch, val_loss)
        saved = False
        if self._save_requested:
            self.save()
            saved, self._save_requested = True, False
        before = self._callback_states()
        metrics = self.score(epoch, preds, scorer)
        for cb in self.callbacks:
            cb.after_evaluation(self, epoch, metrics)
        if saved and self._callback_states() != before:
            self._save_requested = True  # the saved checkpoint must hold the callbacks' new state
        return metrics

    def should_evaluate(self, epoch: int) -> bool:
        period = self.cfg.EVAL.METRIC_PERIOD
        if period > 0:
            return epoch % period == 0 or epoch == self.cfg.OPTIMIZER.MAX_EPOCH
        return should_checkpoint(epoch, self.cfg.OPTIMIZER.MAX_EPOCH)

    # ---- training ------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum

    def train_step(self, batch: dict, scale: float = 1.0, sync: bool = True) -> torch.Tensor:
        """Forward and backward of one micro-batch (gradients accumulate); returns the detached loss.
        `scale` divides the loss over the micro-batches of one optimizer step; `sync=False` skips DDP's
        gradient all-reduce (an accumulation micro-step)."""
        module = self.ddp or self.model
        labels = self.exp.model.codec.encode_targets(batch["texts"]).to(self.dist.device)
        data = self.cfg.DATA
        batch = move_batch(augment_speed(batch, data.AUGMENT_SPEED), self.dist.device)
        batch["coordinates"] = augment_turn_and_scale(batch["coordinates"], data.AUGMENT_TURN_DEG, data.AUGMENT_SCALE)
        no_sync = self.ddp.no_sync() if (self.ddp is not None and not sync) else contextlib.nullcontext()
        with no_sync:
            with torch.autocast(self.dist.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                loss = module(batch, labels)
            for cb in self.callbacks:
                loss = cb.transform_loss(self, self.global_step + 1, loss)
            self.scaler.scale(loss * scale).backward()
        return loss.detach()

    def optimizer_step(self) -> tuple[float, bool]:
        """Clip and step unless the gradient is non-finite (the same on every rank after the all-reduce; a
        skipped step leaves parameters and BatchNorm statistics as they were). Returns (grad norm, stepped)."""
        grad_norm, stepped = self.stepper()
        if stepped:
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
        self.global_step += 1
        return grad_norm, stepped

    def train_epoch(self) -> float:
        """One epoch from `batches_done`; returns the mean loss over this epoch's finite micro-batches."""
        cfg, dist = self.cfg, self.dist
        (self.ddp or self.model).train()
        epoch = self.epoch + 1
        self.sampler.set_epoch(epoch)
        self.sampler.set_start_batch(self.batches_done)
        accum = cfg.OPTIMIZER.GRAD_ACCUM_STEPS
        num_batches = len(self.sampler)
        loss_sum = torch.zeros(2, dtype=torch.float64)  # [sum of losses, count] over finite micro-batches
        if self.batches_done and dist.is_main:  # the part-trained epoch's loss, summed over every rank once
            loss_sum += torch.tensor(self._partial_loss, dtype=torch.float64)
        step_losses: list[torch.Tensor] = []
        bar = Progress(num_batches, f"epoch {epoch}", show=dist.is_main, initial=self.batches_done)
        try:  # a stop or an abort inside the loop must not leave the bar half-drawn over its message
            for i, batch in enumerate(self.loader, start=self.batches_done):
                for cb in self.callbacks:
                    cb.before_batch(self, epoch, i, batch)
                if not step_losses:
                    self.stepper.remember()  # the BatchNorm statistics before this step's first forward
                sync = (i + 1) % accum == 0 or i + 1 == num_batches
                # Mean over the micro-batches of this optimizer step (the epoch's last group may be short).
                group = min(accum, num_batches - (i // accum) * accum)
                loss = self.train_step(batch, 1.0 / group, sync)
                step_losses.append(loss)
                if torch.isfinite(loss):
                    loss_sum += torch.tensor([loss.item(), 1.0], dtype=torch.float64)
                self.batches_done = i + 1
                bar.update(1)
                if not sync:
                    continue
                grad_norm, stepped = self.optimizer_step()
                step_loss = float(torch.stack(step_losses).float().mean())
                step_losses.clear()
                for cb in self.callbacks:
                    cb.after_optimizer_step(self, step_loss, grad_norm, stepped)
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
                if any_rank(self._stop_signal is not None, dist.device) and self.batches_done < num_batches:
                    # Every rank is here (any_rank agrees): sum the part-epoch loss over ranks for the checkpoint.
                    self._partial_loss = all_reduce_sum(loss_sum.to(dist.device)).cpu().tolist()
                    self._stop(f"signal {self._stop_signal or 'on another rank'}")
        finally:
            bar.close()
        total = all_reduce_sum(loss_sum.to(dist.device)).cpu()
        return float(total[0] / total[1]) if total[1] > 0 else float("nan")

    def _stop(self, why: str, save: bool = True) -> None:
        if save:
            self.save()
        where = (f"in epoch {self.epoch + 1} after {self.batches_done} batches" if self.batches_done
                 else f"after epoch {self.epoch}")
        raise StopRequested(f"stopped by {why} {where}; checkpoint saved in {self.cfg.checkpoint_dir}; "
                            f"run the same command to resume")

    def _end_epoch(self, mean_loss: float, start: float) -> None:
        self.epoch += 1
        self.batches_done = 0
        self._partial_loss = [0.0, 0.0]
        self.loss_history.append({"epoch": self.epoch, "loss": mean_loss})
        for cb in self.callbacks:
            cb.after_epoch(self, self.epoch, mean_loss)
        log.info("epoch %d: loss %.4f (%.1fs)", self.epoch, mean_loss, time.time() - start)
        if self.dist.is_main:
            self.jsons.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.jsons / "loss_history.json", self.loss_history, indent=1)

    def fit(self, scorer=None) -> None:
        """Train to OPTIMIZER.MAX_EPOCH (or an early stop), evaluating and saving on schedule; `scorer` is used
        on rank 0 only (None: predictions are written but not scored)."""
        cfg = self.cfg
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            if self.early_stopping.already_stopped():
                es = self.early_stopping.state
                log.info("this run already stopped early at epoch %d (best %s at epoch %s); nothing to train. Set "
                         "EVAL.EARLY_STOP_PATIENCE=0 (or higher) and relaunch to train on", self.epoch, BEST_BY,
                         es["best_epoch"])
                return
            if self.exp.resume_state is None and cfg.TRAIN.SANITY_EVAL:
                self.evaluate(0, scorer)
                self._save_requested = self._stop_requested = False  # the untrained model is not saved
            log.info("training epochs %d..%d, %d batches/epoch/rank, %d optimizer steps/epoch",
                     self.epoch + 1, cfg.OPTIMIZER.MAX_EPOCH, len(self.sampler), self.steps_per_epoch)
            while self.epoch < cfg.OPTIMIZER.MAX_EPOCH:
                start = time.time()
                self._end_epoch(self.train_epoch(), start)
                self._save_requested = should_checkpoint(self.epoch, cfg.OPTIMIZER.MAX_EPOCH)
                saved = self._save_requested
                if self.should_evaluate(self.epoch):
                    self.evaluate(self.epoch, scorer)
                    saved = saved or self._save_requested
                if self._save_requested:
                    self.save()
                    self._save_requested = False
                if self._stop_requested:
                    break
                # A signal during the epoch's last batch or its evaluation: stop at this epoch boundary.
                if self.epoch < cfg.OPTIMIZER.MAX_EPOCH and any_rank(self._stop_signal is not None, self.dist.device):
                    self._stop(f"signal {self._stop_signal or 'on another rank'}", save=not saved)
            for cb in self.callbacks:
                cb.after_training(self)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.tb.close()
