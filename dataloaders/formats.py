"""Read clip files safely: `.pkl` (the released format), `.pt`/`.pth` (torch.save), `.npy` (one clip).

The released pickles hold torch tensors, which plain pickle rebuilds through
`torch.storage._load_from_bytes` -> `torch.load(weights_only=False)`: a downloaded file could run any code.
We unpickle with a whitelist of globals and load every embedded storage with `weights_only=True`.

Sizes are checked before anything is copied: a tensor may not declare more values than its file stores
(a broadcast view of one number can declare [1e9, 66], 264 GB once copied); with `max_frames`
(config key DATA.MAX_FRAMES) a longer 'coordinates'/'subtraction' is refused; a `.npy` header's dtype,
frames and size are checked before its data is read, and a `.npy` is never unpickled.
"""
from __future__ import annotations

import codecs
import collections
import io
import math
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from common.errors import UserError
from common.files import atomic_write_bytes
from common.skeleton import COORD_DIM, N_JOINTS
from dataloaders.validation import entry_where, validate_clips


def _safe_rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                         metadata=None):
    # Replaces torch._utils._rebuild_tensor_v2: data only; backward hooks (callables) are never attached.
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError(f"tensor storage is {type(storage).__name__}, expected a torch storage")
    return torch._utils._rebuild_tensor(storage, storage_offset, tuple(size), tuple(stride))


try:  # numpy >= 2 moved multiarray to numpy._core; pickles from either version name either module
    from numpy._core import multiarray as _np_multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _np_multiarray

_WHITELIST = {
    ("torch._utils", "_rebuild_tensor_v2"): _safe_rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): "_load_from_bytes",  # SafeUnpickler._load_from_bytes
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): codecs.encode,  # protocol-2 pickles store bytes as _codecs.encode(str, 'latin1')
    # numpy arrays/scalars only rebuild data; the class handed to _reconstruct must itself be whitelisted.
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(mod, name): getattr(_np_multiarray, name)
       for mod in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("_reconstruct", "scalar")},
}


class SafeUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only the globals in _WHITELIST; anything else is a UserError."""

    def __init__(self, file, path):
        super().__init__(file)
        self._path = path

    def find_class(self, module, name):
        fn = _WHITELIST.get((module, name))
        if fn is None:
            raise UserError(f"{self._path}: refused to unpickle global {module}.{name} "
                            "(not in the whitelist of data types)")
        return getattr(self, fn) if isinstance(fn, str) else fn

    def _load_from_bytes(self, b):
        # Replaces torch.storage._load_from_bytes: same bytes, but torch's restricted (weights_only) loader.
        if not isinstance(b, (bytes, bytearray)):
            raise UserError(f"{self._path}: tensor storage payload is {type(b).__name__}, expected bytes")
        try:
            return torch.load(io.BytesIO(b), weights_only=True)
        except Exception as e:
            raise UserError(f"{self._path}: refused or corrupt embedded tensor data ({_first_line(e)})") from None


# torch.load(weights_only=True) refuses numpy arrays unless allowlisted; numeric dtypes only (no objects).
_TORCH_NUMPY_GLOBALS = [_np_multiarray._reconstruct, _np_multiarray.scalar, np.ndarray, np.dtype] + [
    getattr(np.dtypes, f"{k}DType") for k in ("Bool", "Float16", "Float32", "Float64", "Int8", "Int16", "Int32",
                                              "Int64", "UInt8", "UInt16", "UInt32", "UInt64")]


def _torch_load(f):
    with torch.serialization.safe_globals(_TORCH_NUMPY_GLOBALS):
        return torch.load(f, weights_only=True)


def _first_line(e: BaseException) -> str:
    """One informative line of an exception (torch's weights_only errors are paragraphs of advice)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        detail = [ln.split("WeightsUnpickler error:")[-1].strip() for ln in lines[1:]
                  if not ln.startswith(("Check the documentation", "(1)", "(2)"))]
        detail = [d.split(" was not an allowed global")[0] for d in detail if d and not d.startswith("Please file")]
        lines = [f"torch's weights_only loader refused it: {detail[0] if detail else 'unsupported content'}"]
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def _read_pickle(path: Path):
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        # A torch.save (zip) file named .pkl. Test the magic, not zipfile.is_zipfile: that looks for a zip
        # directory near the end, which a pickle ending in an embedded tensor blob also has.
        if head == b"PK\x03\x04":
            return _torch_load(f)
        return SafeUnpickler(f, path).load()


def _expected(key) -> str:
    return f"a float array [frames, {COORD_DIM if key == 'coordinates' else 'C'}]"


def _check_backed_by_data(x: torch.Tensor, where, key) -> None:
    """Refuse a tensor that declares more values than its storage holds (a stride-0 or overlapping view):
    copying it would allocate its declared size, however small the file."""
    if x.layout != torch.strided:  # sparse tensors have no single storage to compare with
        raise UserError(f"{where}: key {key!r} is a {x.layout} tensor, expected {_expected(key)} (a dense tensor)")
    stored = x.untyped_storage().nbytes() - x.storage_offset() * x.element_size()
    declared = x.numel() * x.element_size()
    if declared > stored:
        raise UserError(f"{where}: key {key!r} declares shape {list(x.shape)} ({declared / 1e9:.3g} GB of "
                        f"{x.dtype}) but the file stores {stored} bytes for it (a broadcast/stride-0 view); "
                        f"expected {_expected(key)} saved with .contiguous()")


def _as_real_array(x, where, key):
    """`x` as a tensor or numpy array of real numbers (float or int), not yet copied or converted."""
    if isinstance(x, torch.Tensor):
        if not (x.is_complex() or x.dtype == torch.bool):
            return x.detach()
        dtype = x.dtype
    else:
        try:
            x = np.asarray(x)
        except (TypeError, ValueError) as e:  # ragged nested lists
            raise UserError(f"{where}: key {key!r} is {type(x).__name__}, expected {_expected(key)} "
                            f"({_first_line(e)})") from None
        if x.dtype.kind in "fiu":
            return x
        dtype = x.dtype
    raise UserError(f"{where}: key {key!r} has dtype {dtype}, expected {_expected(key)} of real numbers "
                    "(float or int; complex, bool, text and objects are refused)")


def _check_frame_limit(frames: int, max_frames, where, key) -> None:
    if max_frames is not None and frames > max_frames:
        raise UserError(f"{where}: key {key!r} has {frames} frames, more than DATA.MAX_FRAMES={max_frames} "
                        "(memory grows with the frames); crop or split the clip, or raise DATA.MAX_FRAMES "
                        "in the config")


def _to_float_tensor(x, where, key, max_frames) -> torch.Tensor:
    x = _as_real_array(x, where, key)
    if x.ndim >= 1:
        _check_frame_limit(int(x.shape[0]), max_frames, where, key)
    try:
        return torch.as_tensor(x, dtype=torch.float32).contiguous()  # no copy if already float32
    except (TypeError, ValueError, RuntimeError) as e:  # e.g. float128 or big-endian arrays
        raise UserError(f"{where}: key {key!r} has dtype {x.dtype}, expected {_expected(key)} "
                        f"({_first_line(e)})") from None


_NPY_MAGIC = b"\x93NUMPY"
_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _read_npy(path: Path, max_frames) -> np.ndarray:
    """One clip's array; its header (dtype, frames, size against the file) is checked before the data
    is read, so a 100-byte file cannot ask for gigabytes. Never unpickles."""
    with open(path, "rb") as f:
        if f.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
            raise UserError(f"{path}: not a plain .npy array (no NumPy header; a pickle renamed .npy?): .npy clips "
                            "are never unpickled; save the array with numpy.save, or give a .pkl dataset file")
        f.seek(0)
        version = np.lib.format.read_magic(f)
        if version not in _NPY_HEADER_READERS:
            raise UserError(f"{path}: .npy format version {version[0]}.{version[1]}, expected 1.0 or 2.0 "
                            "(what numpy.save writes for a numeric array)")
        shape, fortran_order, dtype = _NPY_HEADER_READERS[version](f)
        if dtype.kind not in "fiu":
            raise UserError(f"{path}: .npy array has dtype {dtype}, expected {_expected('coordinates')} of real "
                            "numbers (float or int; complex, bool, text and objects are refused)")
        if shape:
            _check_frame_limit(int(shape[0]), max_frames, str(path), "coordinates")
        count = math.prod(shape)
        available = os.fstat(f.fileno()).st_size - f.tell()
        if count * dtype.itemsize > available:
            raise UserError(f"{path}: .npy header declares shape {list(shape)} ({count * dtype.itemsize} bytes) "
                            f"but the file holds {available} bytes of data; expected a complete numpy.save file")
        data = np.fromfile(f, dtype=dtype, count=count)
    return data.reshape(shape, order="F" if fortran_order else "C")


PICKLE_SUFFIXES = (".pkl", ".pickle", ".pk")


def read_data_file(path, max_frames: int | None = None):
    """What a `.pkl`/`.pk`/`.pt`/`.pth` file holds, read safely (whitelisted globals, weights_only), or a `.npy`
    file as {"video_name": its stem, "coordinates": the array}. Every failure is one UserError naming the file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (*PICKLE_SUFFIXES, ".pt", ".pth", ".npy"):
        raise UserError(f"{path}: unsupported file type {suffix!r}, expected .pkl, .pt, .pth or .npy")
    try:  # Python 3.11's exists() raises PermissionError inside an unreadable folder
        found, regular = path.exists(), path.is_file()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or _first_line(e)})") from None
    if not found:
        raise UserError(f"{path}: file not found")
    if not regular:
        raise UserError(f"{path}: not a regular file")
    try:
        if suffix in PICKLE_SUFFIXES:
            return _read_pickle(path)
        if suffix in (".pt", ".pth"):
            return _torch_load(path)
        return {"video_name": path.stem, "coordinates": _read_npy(path, max_frames)}
    except UserError:
        raise
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or _first_line(e)})") from None
    except Exception as e:  # truncated/corrupt file, or content the restricted torch loader refused
        raise UserError(f"{path}: unreadable or corrupt {suffix} file ({_first_line(e)})") from None


def load_clips(path, max_frames: int | None = None) -> list[dict]:
    """Clips of a `.pkl`/`.pt`/`.pth`/`.npy` file as a list of dicts; coordinates as float32 tensors [T, 66]
    (given as [T, 22, 3] they are flattened joint by joint: x, y, z of joint 0, then joint 1, …).

    `max_frames` (DATA.MAX_FRAMES; None: no limit) refuses longer 'coordinates'/'subtraction' before they
    are converted. Not validated beyond that: call `validation.validate_clips` (or `datasets.load_dataset`)."""
    path = Path(path)
    obj = read_data_file(path, max_frames)

    if isinstance(obj, dict):  # a single clip
        obj = [obj]
    if not isinstance(obj, (list, tuple)):
        raise UserError(f"{path}: holds a {type(obj).__name__}, expected a list of clip dicts")
    clips = list(obj)
    for i, clip in enumerate(clips):
        if not isinstance(clip, dict):
            continue  # validate_clips reports it with context
        where = entry_where(path, i, clip)
        for key, value in clip.items():
            if isinstance(value, torch.Tensor):
                _check_backed_by_data(value, where, key)
        for key in ("coordinates", "subtraction"):
            if clip.get(key) is not None:
                clip[key] = _to_float_tensor(clip[key], where, key, max_frames)
        coords = clip.get("coordinates")
        if isinstance(coords, torch.Tensor) and coords.dim() == 3 and tuple(coords.shape[1:]) == (N_JOINTS, 3):
            clip["coordinates"] = coords.reshape(len(coords), COORD_DIM)  # [T, 22, 3] -> [T, 66]
    return clips


def load_standards(path, max_frames: int | None = None) -> dict[str, torch.Tensor]:
    """{motion type (= the standard's video_name): coordinates [T, 66] float32}, validated."""
    clips = load_clips(path, max_frames)
    validate_clips(clips, path, require_labels=False)
    return {c["video_name"]: c["coordinates"] for c in clips}


# ---- writing ------------------------------------------------------------------------------------

class _DeterministicPickler(pickle.Pickler):
    """Plain pickle of torch tensors, but reproducible: torch's own storage pickling embeds a legacy
    torch.save blob keyed by a memory address; the zip format carries no address. Same globals as the
    released files (_rebuild_tensor_v2, _load_from_bytes, OrderedDict), so load_clips reads them."""

    def reducer_override(self, obj):
        if isinstance(obj, torch.storage.TypedStorage):
            buf = io.BytesIO()
            torch.save(obj, buf)
            return torch.storage._load_from_bytes, (buf.getvalue(),)
        return NotImplemented


def dumps_clips(clips: list[dict]) -> bytes:
    """The dataset pickle of `clips`: byte-for-byte the same for the same clips."""
    buf = io.BytesIO()
    _DeterministicPickler(buf, protocol=4).dump(clips)
    return buf.getvalue()


def dump_clips(clips: list[dict], path) -> None:
    """Write a dataset file atomically (temp file + rename): a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, dumps_clips(clips))
