"""One way to write a file so that a crash never leaves half of it: temp file in the same folder → fsync →
rename → fsync the folder. On any error the temp file is removed and the previous file is untouched.

Temp files are named `.<name>.tmp<pid>`, so a cleaner can tell whose they are (see engine/checkpoint.py)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from common.errors import UserError


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(data, indent=indent) + "\n")


def check_new_or_empty_folder(folder: Path, flag: str, why: str) -> None:
    """An output folder that never mixes with other files: `folder` must be new or empty; else a UserError
    naming `flag` and `why` (e.g. "an export never replaces files")."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder}: exists and is not a folder, expected a new or empty folder")
    if folder.is_dir() and any(folder.iterdir()):
        raise UserError(f"{flag} {folder}: folder is not empty, expected a new or empty folder ({why})")
