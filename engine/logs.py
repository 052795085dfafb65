"""Console + file logging (main rank writes the file) and the tensorboard writer."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

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

    def close(self) -> None:
        if self.writer:
            self.writer.close()
