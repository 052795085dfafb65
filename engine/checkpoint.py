"""Checkpoints that survive crashes: atomic writes, an integrity digest, keep-last-k, safe loading.

A checkpoint `epoch_0007.pt` is valid only once its digest `epoch_0007.pt.sha256` exists and matches:
the digest is written after the checkpoint is fully on disk, so a kill at any moment leaves either a
valid checkpoint or one that is skipped. The digest may also sit beside a symlink's target, and may be in
`sha256sum`'s format. A file given by path without any digest (a copy made without it) is checked with the
CRC32 checksums inside it instead, with a warning. Weights with NaN or inf are never saved or loaded.
Files load with `torch.load(weights_only=True)` only.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import re
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from common.errors import UserError
from common.files import atomic_write_bytes

log = logging.getLogger("motion2text")
CKPT_RE = re.compile(r"^epoch_(\d{4,})(?:_step_(\d+))?\.pt$")


def checkpoint_name(epoch: int, step_in_epoch: int = 0) -> str:
    """`epoch_0007.pt` after a whole epoch; `epoch_0007_step_000120.pt` when stopped inside epoch 8."""
    return f"epoch_{epoch:04d}.pt" if step_in_epoch == 0 else f"epoch_{epoch:04d}_step_{step_in_epoch:06d}.pt"


def save_checkpoint(folder: Path, name: str, state: dict, keep_last: int, keep: tuple[str, ...] = ()) -> Path:
    """Write `folder/name` atomically with its digest, then prune to the newest `keep_last` (+ `keep` names)."""
    bad = _first_non_finite(state.get("model"))
    if bad is not None:
        raise UserError(f"{folder / name}: not saved: model tensor {bad!r} holds NaN or inf; the previous "
                        f"checkpoints in {folder} are intact")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    path = folder / name
    digest = path.with_name(path.name + ".sha256")
    written = False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, payload)
        written = True
        atomic_write_bytes(digest, hashlib.sha256(payload).hexdigest().encode())
    except OSError as e:
        if written:  # the file is complete but has no digest: it would never count, so do not leave it
            path.unlink(missing_ok=True)
            digest.unlink(missing_ok=True)
        raise UserError(f"{path}: could not write the checkpoint ({e.strerror or e}); "
                        f"the previous checkpoints in {folder} are intact") from None
    _remove_stale_temp_files(folder)
    _prune(folder, keep_last, keep)
    return path


TEMP_RE = re.compile(r"^\.epoch_\d{4,}(?:_step_\d+)?\.pt(?:\.sha256)?\.tmp(\d+)$")


def _remove_stale_temp_files(folder: Path) -> None:
    """Temp files of saves that were killed (kill -9, OOM, power loss) never count as checkpoints, but each
    can be as large as a checkpoint: remove those whose process is gone. A live process's temp file is a save
    in progress, never ours to delete."""
    for p in folder.iterdir():
        m = TEMP_RE.match(p.name)
        if m and not _process_is_alive(int(m.group(1))):
            p.unlink(missing_ok=True)


def _process_is_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (temp names carry no host name)."""
    if pid == os.getpid():
        return True
    if pid <= 0:  # os.kill(0, ...) would signal our own process group
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _sort_key(path: Path) -> tuple[int, int]:
    m = CKPT_RE.match(path.name)
    return int(m.group(1)), int(m.group(2) or 0)


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint files of a folder, oldest first (by epoch, then step)."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if CKPT_RE.match(p.name)), key=_sort_key)


def _prune(folder: Path, keep_last: int, keep: tuple[str, ...] = ()) -> None:
    for old in list_checkpoints(folder)[:-keep_last]:
        if old.name in keep:
            continue
        old.with_name(old.name + ".sha256").unlink(missing_ok=True)
        old.unlink(missing_ok=True)


MISSING_DIGEST = "no integrity digest (the save did not finish)"
DIGEST_MISMATCH = "integrity digest mismatch (truncated or corrupted file)"
SHA256_RE = re.compile(r"[0-9a-f]{64}")

# Digest-less files given by path whose inner checksums matched (check_without_digest): valid from then on, in
# this process, so the checks that follow (`verify` before loading) accept them too.
_checked_without_digest: set[Path] = set()


def digest_file(path: Path) -> Optional[Path]:
    """The digest of a checkpoint: beside it, or, for a symlink, beside the file it points to."""
    candidates = [path.with_name(path.name + ".sha256")]
    if path.is_symlink():
        target = path.resolve()
        candidates.append(target.with_name(target.name + ".sha256"))
    return next((p for p in candidates if p.is_file()), None)


def verify(path: Path) -> Optional[str]:
    """None if the checkpoint is complete and intact, else the reason it is not."""
    if not path.is_file():
        return "the file is missing (a symlink to a removed file?)"
    digest = digest_file(path)
    if digest is None:
        return None if path.resolve() in _checked_without_digest else MISSING_DIGEST
    try:
        expected = _read_digest(digest)
    except OSError as e:
        return f"cannot read its integrity digest {digest} ({e.strerror or e})"
    if expected is None:
        return f"unreadable integrity digest {digest} (expected 64 hex digits, as save_checkpoint and sha256sum write)"
    try:
        actual = _sha256(path)
    except OSError as e:
        return f"cannot read the file ({e.strerror or e})"
    return None if actual == expected else DIGEST_MISMATCH


def _read_digest(digest: Path) -> Optional[str]:
    """The hex digest of a .sha256 file: `<hex>` (save_checkpoint) or `<hex>  <name>` / `<hex> *<name>` (sha256sum,
    which puts a backslash first when the name needs escaping); None if it holds none."""
    fields = digest.read_text(encoding="utf-8", errors="replace").split()
    hex_digest = fields[0].lstrip("\\").lower() if fields else ""
    return hex_digest if SHA256_RE.fullmatch(hex_digest) else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_without_digest(path: Path) -> None:
    """A checkpoint given by path with no digest (e.g. copied without it): check the CRC32 that torch.save stores
    for every record of its zip instead (torch.load never checks them), and warn; loading it completes the check.
    A newest-checkpoint scan never calls this: there a missing digest means the save did not finish."""
    if path.resolve() in _checked_without_digest:
        return
    problem = _inner_checksum_problem(path)
    if problem is not None:
        raise UserError(f"{path}: invalid checkpoint: no integrity digest beside it, and {problem}")
    log.warning("%s: no integrity digest %s.sha256 beside it (copied without it?); verified instead by the "
                "CRC32 checksums stored inside it (they match) and by loading it", path, path.name)
    _checked_without_digest.add(path.resolve())


def _inner_checksum_problem(path: Path) -> Optional[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            bad_record = archive.testzip()
    except OSError as e:
        return f"it cannot be read ({e.strerror or e})"
    except (zipfile.BadZipFile, EOFError, ValueError):
        return "it is not a complete checkpoint archive (truncated, or not written by torch.save)"
    return None if bad_record is None else f"the checksum of its record {bad_record} does not match (corrupted file)"


def checkpoint_file(path: Path, what: str) -> Path:
    """A checkpoint file as given, or a folder → its newest valid checkpoint; `what` names the setting."""
    if path.is_dir():
        newest = newest_valid_checkpoint(path)
        if newest is None:
            raise UserError(f"{what}: no valid checkpoint (epoch_NNNN.pt with its .sha256) in folder {path}")
        return newest
    if not path.is_file():
        raise UserError(f"{what}: {path} not found, expected a checkpoint file or a folder of checkpoints")
    if digest_file(path) is None:
        check_without_digest(path)
    return path


def load_checkpoint(path: Path, check_digest: bool = True) -> dict:
    """Load a checkpoint with weights_only=True: a crafted file cannot run code. A file without a digest is
    checked with its inner checksums; one whose model weights hold NaN or inf is refused."""
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    if check_digest:
        if digest_file(path) is None:
            check_without_digest(path)
        elif reason := verify(path):
            raise UserError(f"{path}: invalid checkpoint: {reason}")
    state = _torch_load(path)
    bad = _first_non_finite(state.get("model") if isinstance(state, dict) else None)
    if bad is not None:
        raise UserError(f"{path}: model tensor {bad!r} holds NaN or inf; a checkpoint with non-finite weights is "
                        "never loaded")
    return state


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError/RuntimeError with paragraphs of advice: keep the cause
        from dataloaders.formats import _first_line

        raise UserError(f"{path}: refused or unreadable checkpoint ({_first_line(e)}); only checkpoints written "
                        f"by train_t5_stagcn.py are loaded, never code") from None


def _first_non_finite(weights) -> Optional[str]:
    """The key of the first floating-point tensor of a state dict that holds NaN or inf, else None."""
    if not isinstance(weights, dict):
        return None
    for key, tensor in weights.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return key
    return None


def newest_valid_checkpoint(folder: Path) -> Optional[Path]:
    """The newest checkpoint whose digest matches; invalid newer ones are skipped with a warning."""
    for path in reversed(list_checkpoints(folder)):
        reason = verify(path)
        if reason is None:
            return path
        log.warning("skipping checkpoint %s: %s", path, reason)
    return None


def rng_state() -> dict:
    """This process's RNG states in types that weights_only loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
