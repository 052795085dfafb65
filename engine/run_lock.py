"""One training run per experiment folder: rank 0 holds an exclusive lock on `<LOGDIR>/.lock` for the whole run.

The lock is `flock` on an open file, so the kernel drops it when the process dies (kill -9, OOM, a crash): a
lock file left behind never blocks a relaunch. The file holds the holder's pid and host, which a second launch
names in its one-line error before it exits 2.
"""
from __future__ import annotations

import fcntl
import itertools
import os
import socket
from pathlib import Path
from typing import Optional

from common.errors import UserError

LOCK_NAME = ".lock"


class ExperimentLock:
    """An exclusive, non-blocking lock on an experiment folder; `acquire` creates the folder if needed and
    `release` removes the lock file and any folder it created that is still empty."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: Optional[int] = None
        self._created: list[Path] = []  # folders acquire created, deepest first

    def acquire(self) -> None:
        """Take the lock, or raise a UserError naming the pid and host that hold it."""
        self._make_folder()
        try:
            self._fd = self._lock_the_file_at_path()
            os.ftruncate(self._fd, 0)
            os.write(self._fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        except BaseException:
            self.release()
            raise
        # Forked children (DataLoader workers) share the locked file; closing their copy keeps the lock tied to
        # this process alone, so it is free the moment this process dies.
        os.register_at_fork(after_in_child=self._forget_in_child)

    def release(self) -> None:
        """Remove the lock file while still holding the lock (see _lock_the_file_at_path), then let go."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None
        for folder in self._created:
            try:
                folder.rmdir()
            except OSError:  # the run wrote something there: keep it
                break
        self._created = []

    def _make_folder(self) -> None:
        missing = list(itertools.takewhile(lambda p: not p.exists(), [self.folder, *self.folder.parents]))
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"LOGDIR {self.folder}: cannot create the experiment folder ({e.strerror or e})") from None
        self._created = missing

    def _lock_the_file_at_path(self) -> int:
        # A run that releases unlinks the lock file while holding it: a lock won on that unlinked file guards
        # nothing, so lock again until the locked file is the one at the path.
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise UserError(f"LOGDIR {self.folder}: another run ({holder}) is training in this experiment "
                                "folder; wait for it to end, or give this run its own LOGDIR") from None
            except OSError as e:
                os.close(fd)
                raise UserError(f"LOGDIR {self.folder}: cannot lock {self.path} ({e.strerror or e}); the "
                                "experiment folder must be on a file system that supports flock") from None
            if self._is_at_path(fd):
                return fd
            os.close(fd)

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"LOGDIR {self.folder}: cannot write in the experiment folder "
                            f"({e.strerror or e})") from None

    def _is_at_path(self, fd: int) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)

    def _forget_in_child(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._created = []


def _holder(fd: int) -> str:
    """'pid 123 on host node7' from the lock file (empty for the instant between the holder's lock and write)."""
    fields = os.pread(fd, 512, 0).decode("utf-8", errors="replace").split()
    return f"pid {fields[0]} on host {fields[1]}" if len(fields) >= 2 else "pid and host not written yet"


def lock_experiment_folder(folder: Path, dist) -> Optional[ExperimentLock]:
    """Rank 0 locks the folder (the other ranks get None). When it cannot, every rank raises the same UserError,
    so no rank waits in a collective for a rank 0 that has left."""
    from engine.distributed import broadcast_object

    lock, refusal = None, None
    if dist.is_main:
        lock = ExperimentLock(folder)
        try:
            lock.acquire()
        except UserError as e:
            refusal = str(e)
    refusal = broadcast_object(refusal)
    if refusal is not None:
        raise UserError(refusal)
    return lock
