"""What the training loop lets others do at fixed points, in the manner of detectron2's HookBase.

The trainer calls every callback in order at each point; the default hooks do nothing. A callback whose state
must survive a resume returns it from `state_dict` (stored in the checkpoint under its `name`).
"""
from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Optional

import torch

from engine.logs import TensorBoard

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

    def after_evaluation(self, trainer, epoch: int, metrics: Optional[dict]) -> None:
        """On every rank, with rank 0's metrics (None when not scored)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class TensorBoardLogging(Callback):
    """train/loss (mean over the logging window), train/lr and train/grad_norm every `every` steps; the epoch loss."""

    def __init__(self, tb: TensorBoard, every: int):
        self.tb, self.every = tb, every
        self._window: list[float] = []

    def after_optimizer_step(self, trainer, loss, grad_norm, stepped):
        self._window.append(loss)
        step = trainer.global_step
        if step % self.every == 0:
            finite = [x for x in self._window if x == x and abs(x) != float("inf")]
            if finite:
                self.tb.scalar("train/loss", sum(finite) / len(finite), step)
            self.tb.scalar("train/lr", trainer.scheduler.get_last_lr()[0], step)
            if grad_norm == grad_norm and abs(grad_norm) != float("inf"):
                self.tb.scalar("train/grad_norm", grad_norm, step)
            self._window.clear()

    def after_epoch(self, trainer, epoch, mean_loss):
        self.tb.scalar("train/epoch_loss", mean_loss, epoch)


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
