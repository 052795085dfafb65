"""What the training loop lets others do at fixed points, in the manner of detectron2's HookBase.

The trainer calls every callback in order at each point; the default hooks do nothing. A callback whose state
must survive a resume returns it from `state_dict` (stored in the checkpoint under its `name`).
"""
from __future__ import annotations

import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Optional

import torch

from common.errors import UserError
from common.heap import heap_trimmer
from common.files import atomic_write_json
from engine.logs import TensorBoard
from metrics.report import BEST_BY, read_experiment_metrics

log = logging.getLogger("motion2text")


class Callback:
    name: Optional[str] = None  # key of its state in the checkpoint; None: nothing to keep

    def before_batch(self, trainer, epoch: int, index: int, batch: dict) -> None:
        """Before the forward pass of batch `index` (0-based) of `epoch` (1-based)."""

    def transform_loss(self, trainer, step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def after_optimizer_step(self, trainer, loss: float, grad_norm: float, stepped: bool) -> None:
        """`loss`: the mean over this step's micro-batches; `stepped`: False when the step was skipped."""

    def after_epoch(self, trainer, epoch: int, mean_loss: float) -> None:
        pass

    def after_validation(self, trainer, epoch: int, loss: float) -> None:
        """On every rank, with the teacher-forced loss on the labelled test clips (before the epoch is saved)."""

    def after_evaluation(self, trainer, epoch: int, metrics: Optional[dict]) -> None:
        """On every rank, with rank 0's metrics (None when not scored)."""

    def after_training(self, trainer) -> None:
        """After the last epoch or an early stop; not when a signal or an error ends the run."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class HeapTrim(Callback):
    """Every `every` optimizer steps, glibc's free heap pages go back to the system (TRAIN.MALLOC_TRIM): without
    it a rank's resident memory grows with batches of changing length (common/heap.py). The next step maps the
    returned pages again, which has a cost (bench/heap.py); trimming less often does not lower the peak."""

    def __init__(self, every: int):
        self.every = every
        self.trim = heap_trimmer()
        if self.trim is None:
            log.info("TRAIN.MALLOC_TRIM: this C library has no malloc_trim; nothing to do")

    def after_optimizer_step(self, trainer, loss, grad_norm, stepped):
        if self.trim is not None and trainer.global_step % self.every == 0:
            self.trim(0)


class TensorBoardLogging(Callback):
    """Every `every` optimizer steps: train/loss (mean over the window), train/lr, train/grad_norm,
    train/samples_per_s (all ranks) and on CUDA train/peak_mem_gib (rank 0's peak in the window: CUDA's peak
    counter is reset after each report). Per epoch:
    train/epoch_loss and val/loss. At the end of the run one HPARAMS row with the last and best scores."""

    def __init__(self, tb: TensorBoard, every: int):
        self.tb, self.every = tb, every
        self._window: list[float] = []
        self._samples = 0  # this rank's samples in the window
        self._seconds = 0.0  # training time in the window; evaluations between epochs do not count
        self._clock: Optional[float] = None  # when the current stretch of training batches began
        self._trained = False  # this launch trained an epoch (a finished run relaunched adds no HPARAMS row)
        self._last_val_loss: Optional[float] = None

    def before_batch(self, trainer, epoch, index, batch):
        if self._clock is None:
            self._clock = time.perf_counter()
        self._samples += len(batch["video_names"])

    def after_optimizer_step(self, trainer, loss, grad_norm, stepped):
        self._window.append(loss)
        now = time.perf_counter()
        self._seconds += now - (self._clock or now)
        self._clock = now
        step = trainer.global_step
        if step % self.every == 0:
            finite = [x for x in self._window if math.isfinite(x)]
            if finite:
                self.tb.scalar("train/loss", sum(finite) / len(finite), step)
            self.tb.scalar("train/lr", trainer.scheduler.get_last_lr()[0], step)
            if math.isfinite(grad_norm):
                self.tb.scalar("train/grad_norm", grad_norm, step)
            if self._seconds > 0:  # the ranks' batches differ by one sample at most: rank 0 stands for each
                self.tb.scalar("train/samples_per_s", self._samples * trainer.dist.world_size / self._seconds, step)
            self._log_peak_memory(trainer.dist.device, step)
            self._window.clear()
            self._samples, self._seconds = 0, 0.0

    def _log_peak_memory(self, device: torch.device, step: int) -> None:
        if device.type == "cuda":
            self.tb.scalar("train/peak_mem_gib", torch.cuda.max_memory_allocated(device) / 2**30, step)
            torch.cuda.reset_peak_memory_stats(device)

    def after_epoch(self, trainer, epoch, mean_loss):
        self._clock = None  # the evaluation that may follow is not training time
        self._trained = True
        self.tb.scalar("train/epoch_loss", mean_loss, epoch)

    def after_validation(self, trainer, epoch, loss):
        self._last_val_loss = loss
        self.tb.scalar("val/loss", loss, epoch)

    def after_training(self, trainer):
        if self._trained and self.tb.writer is not None:  # rank 0 alone reads the metric files
            self.tb.hparams(run_hparams(trainer), final_scores(trainer, self._last_val_loss))


def run_hparams(trainer) -> dict:
    """What the HPARAMS tab compares runs by (tensorboard takes numbers, strings and booleans only)."""
    cfg = trainer.cfg
    return {"lr": cfg.OPTIMIZER.LR, "batch_size": cfg.DATA.BATCH_SIZE, "world_size": trainer.dist.world_size,
            "grad_accum_steps": cfg.OPTIMIZER.GRAD_ACCUM_STEPS, "warmup_steps": cfg.OPTIMIZER.WARMUP_STEPS,
            "max_epoch": cfg.OPTIMIZER.MAX_EPOCH, "epochs_trained": trainer.epoch, "branch": cfg.BRANCH,
            "pretrain": cfg.TASK.PRETRAIN, "reduction_policy": cfg.TRANSFORMATION.REDUCTION_POLICY,
            "hidden_channel": cfg.HIDDEN_CHANNEL, "out_channel": cfg.OUT_CHANNEL,
            "t5": cfg.T5.NAME or f"d{cfg.T5.D_MODEL}x{cfg.T5.NUM_LAYERS}", "seed": cfg.SEED}


def final_scores(trainer, last_val_loss: Optional[float]) -> dict:
    """Last and best CIDEr of the trained epochs (epoch 0 is the untrained sanity check), read from the
    per-epoch metric files so that epochs scored before a resume count; the last losses."""
    scores = {}
    if trainer.loss_history:
        scores["hparam/train_loss_last"] = trainer.loss_history[-1]["loss"]
    if last_val_loss is not None:
        scores["hparam/val_loss_last"] = last_val_loss
    try:
        per_epoch = read_experiment_metrics(trainer.cfg.logdir) or {}
    except UserError as e:  # a damaged metrics.json: the row keeps the losses
        log.warning("HPARAMS without scores: %s", e)
        per_epoch = {}
    cider = {e: m[BEST_BY] for e, m in per_epoch.items() if 1 <= e <= trainer.epoch and BEST_BY in m}
    if cider:
        scores[f"hparam/{BEST_BY}_last"] = cider[max(cider)]
        scores[f"hparam/{BEST_BY}_best"] = max(cider.values())
    return scores


class ValidationLossHistory(Callback):
    """{epoch: validation loss} of every evaluation: kept in the checkpoint (a resumed run continues it),
    written to jsons/val_loss.json by rank 0 and logged."""
    name = "val_loss"

    def __init__(self):
        self.history: dict[int, float] = {}

    def after_validation(self, trainer, epoch, loss):
        self.history[epoch] = loss
        log.info("epoch %d: validation loss %.4f (teacher-forced, labelled test clips)", epoch, loss)
        if not trainer.dist.is_main:
            return
        try:  # like the predictions: a full disk costs this file, never the run
            trainer.jsons.mkdir(parents=True, exist_ok=True)
            atomic_write_json(trainer.jsons / "val_loss.json", {str(e): v for e, v in sorted(self.history.items())})
        except OSError as e:
            log.error("epoch %d: cannot write %s (%s)", epoch, trainer.jsons / "val_loss.json", e.strerror or e)

    def state_dict(self):
        return dict(self.history)

    def load_state_dict(self, state):
        self.history = {int(e): float(v) for e, v in (state or {}).items()}


class EarlyStopping(Callback):
    """Stop after `patience` evaluations without a better `metric`; the best epoch's checkpoint is kept."""
    name = "early_stop"

    def __init__(self, metric: str, patience: int, max_epoch: int):
        self.metric, self.patience, self.max_epoch = metric, patience, max_epoch
        self.state = {"best_epoch": None, "best": None, "since_best": 0, "stopped": False}

    def after_evaluation(self, trainer, epoch, metrics):
        if not self.patience or metrics is None or self.metric not in metrics:
            return
        s = self.state
        if s["best"] is None or metrics[self.metric] > s["best"]:
            s.update(best_epoch=epoch, best=metrics[self.metric], since_best=0)
            trainer.request_save()
        else:
            s["since_best"] += 1
        if s["since_best"] >= self.patience and epoch < self.max_epoch:
            s["stopped"] = True
            log.info("early stop after epoch %d: %s has not improved for %d evaluations (best %.2f at epoch %d, "
                     "its checkpoint is kept: evaluate.py --exp %s --checkpoint best)", epoch, self.metric,
                     s["since_best"], s["best"], s["best_epoch"], trainer.cfg.logdir)
            trainer.request_save()
            trainer.request_stop()

    def already_stopped(self) -> bool:
        """This run stopped early before and the patience still says so: nothing to train."""
        return bool(self.state["stopped"]) and 0 < self.patience <= self.state["since_best"]

    def state_dict(self):
        return dict(self.state)

    def load_state_dict(self, state):
        self.state.update(state or {})
        self.state["stopped"] = self.already_stopped()  # a raised (or switched-off) patience lets it go on


class FaultInjection(Callback):
    """Test-only faults, switched on by environment variables (nothing happens without them):
    M2T_TEST_FAULT="rank:epoch:step:marker" crashes that rank once (the marker file records it, so an elastic
    restart runs clean); M2T_TEST_SIGTERM_AT="epoch:batch[:rank]" makes the process send itself SIGTERM while it
    trains that batch, so the real handler stops at the next safe point; M2T_TEST_NAN_STEPS="3,4" makes the loss
    of those global steps NaN."""

    def __init__(self):
        self.fault = os.environ.get("M2T_TEST_FAULT")
        self.sigterm = os.environ.get("M2T_TEST_SIGTERM_AT")
        nan = os.environ.get("M2T_TEST_NAN_STEPS")
        self.nan_steps = {int(x) for x in nan.split(",")} if nan else set()

    def before_batch(self, trainer, epoch, index, batch):
        rank = trainer.dist.rank
        if self.fault:
            r, e, s, marker = self.fault.split(":", 3)
            if (int(r), int(e), int(s)) == (rank, epoch, index) and not Path(marker).exists():
                Path(marker).write_text("crashed")
                os._exit(17)
        if self.sigterm:
            parts = [int(x) for x in self.sigterm.split(":")]
            if (parts[0], parts[1]) == (epoch, index) and (len(parts) < 3 or parts[2] == rank):
                os.kill(os.getpid(), signal.SIGTERM)

    def transform_loss(self, trainer, step, loss):
        return loss * float("nan") if step in self.nan_steps else loss
