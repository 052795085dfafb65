"""Console + file logging (main rank writes the file), progress of long loops and the tensorboard writer."""
from __future__ import annotations

import logging
import os
import math
import sys
import time
from pathlib import Path
from typing import Optional

from tqdm import tqdm

log = logging.getLogger("motion2text")


def _formatter(rank: int) -> logging.Formatter:
    return logging.Formatter(f"%(asctime)s [rank{rank}] %(levelname)s %(message)s", "%H:%M:%S")


class _Backlog(logging.Handler):
    """Keeps the records logged before the log file may be created (while the inputs are checked)."""

    def __init__(self, limit: int = 10000):
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.limit = limit

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < self.limit:
            self.records.append(record)


def setup_logging(log_file: Optional[Path], rank: int, defer_file: bool = False) -> logging.Logger:
    """Console logging (rank 0: INFO, other ranks: warnings), plus `log_file` if given. With `defer_file`
    the records are also kept until `attach_log_file` writes them: a run whose config or data is rejected
    leaves no log file (nor folder) behind."""
    log.handlers.clear()
    log.setLevel(logging.INFO)
    log.propagate = False
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(_formatter(rank))
    # Other ranks only report warnings: one readable console for the user.
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    log.addHandler(console)
    if log_file is not None:
        attach_log_file(log_file, rank)
    elif defer_file:
        log.addHandler(_Backlog())
    return log


def attach_log_file(log_file: Path, rank: int) -> None:
    """Start writing `log_file`, beginning with the records kept since `setup_logging(defer_file=True)`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(_formatter(rank))
    for backlog in [h for h in log.handlers if isinstance(h, _Backlog)]:
        log.removeHandler(backlog)
        for record in backlog.records:
            handler.handle(record)
    log.addHandler(handler)


class Progress:
    """Progress of a loop over `total` batches: a tqdm bar on a terminal; elsewhere (a SLURM log, a pipe), where
    each redraw of a bar would add a carriage-return line to the file, one log line per tenth of the loop instead.
    `show` False (other ranks) shows nothing. M2T_PROGRESS=bar or =lines chooses instead of the terminal check
    (bench/scale.py reads the bar of a piped job)."""

    def __init__(self, total: int, desc: str, show: bool = True, initial: int = 0, lines: int = 10):
        forced = os.environ.get("M2T_PROGRESS")
        on_terminal = forced == "bar" if forced in ("bar", "lines") else sys.stderr.isatty()
        self.total, self.desc, self.done = total, desc, initial
        self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False) \
            if show and on_terminal else None
        self.every = max(1, math.ceil(total / lines)) if show and not on_terminal else 0
        self.postfix: dict[str, str] = {}
        self.started, self.start_done = time.perf_counter(), initial

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.every and self.done % self.every == 0 and self.done < self.total:  # the loop's end has its own line
            rate = (self.done - self.start_done) / max(time.perf_counter() - self.started, 1e-9)
            extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
            log.info("%s: %d/%d batches%s (%.2f batches/s)", self.desc, self.done, self.total, extra, rate)

    def set_postfix(self, **values: str) -> None:
        """Shown beside the bar, or in the next log line."""
        self.postfix = values
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class TensorBoard:
    """A SummaryWriter on the main rank, a no-op elsewhere (callers never branch on rank)."""

    def __init__(self, folder: Optional[Path]):
        self.writer = None
        if folder is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(folder))

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer:
            self.writer.add_scalar(tag, value, step)

    def text(self, tag: str, value: str, step: int) -> None:
        if self.writer:
            self.writer.add_text(tag, value, step)

    def hparams(self, hparams: dict, metrics: dict) -> None:
        """One row of tensorboard's HPARAMS tab (in the run's `hparams/` subfolder)."""
        if self.writer:
            self.writer.add_hparams(hparams, metrics, run_name="hparams")

    def close(self) -> None:
        if self.writer:
            self.writer.close()
