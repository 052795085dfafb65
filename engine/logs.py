"""Console + file logging (main rank writes the file) and the tensorboard writer."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

log = logging.getLogger("motion2text")


def setup_logging(log_file: Optional[Path], rank: int) -> logging.Logger:
    log.handlers.clear()
    log.setLevel(logging.INFO)
    log.propagate = False
    fmt = logging.Formatter(f"%(asctime)s [rank{rank}] %(levelname)s %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    # Other ranks only report warnings: one readable console for the user.
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    log.addHandler(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(fmt)
        log.addHandler(handler)
    return log


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
