"""Reading a config: YAML file → checked `Config`, `--set KEY=VALUE` overrides, types coerced, typos answered
with the closest valid key. The schema itself (keys, defaults, ranges) is engine/config.py."""
from __future__ import annotations

import dataclasses
import difflib
import os
import reprlib
import stat
import types
import typing
from pathlib import Path
from typing import Literal, Optional

import yaml

from common.errors import UserError
from common.files import atomic_write_text
from engine.config import Config, check_config

# A config is a few kB. Bounds on what is read, so a hostile or mistaken file cannot take the machine: the
# bytes read, the nesting depth and the number of values (YAML aliases can make a small file hold millions).
MAX_CONFIG_BYTES = int(os.environ.get("M2T_MAX_CONFIG_BYTES", 1 << 20))
MAX_CONFIG_DEPTH = 8
MAX_CONFIG_VALUES = 10_000
_SHORT = reprlib.Repr()  # Python 3.11's Repr takes its limits as attributes
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 60, 60


def _short(value) -> str:
    """repr for error messages, bounded: a value built from YAML aliases can be astronomically large."""
    return _SHORT.repr(value)


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value, tp):
    """Check `value` against annotation `tp`; ints are accepted for floats. Raise UserError otherwise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        try:
            return _coerce(key, value, inner)
        except UserError:
            pass
    elif origin is Literal:
        if value in typing.get_args(tp) and type(value) is type(typing.get_args(tp)[0]):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads `1e-4` (no dot) as a string: YAML 1.1 quirk
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    raise UserError(f"config key {key}: got {_short(value)} ({type(value).__name__}), expected {_type_name(tp)}")


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise UserError(f"config key {prefix.rstrip('.') or '<root>'}: expected a mapping, got {_short(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "config_dir"}
    kwargs = {}
    for key, value in data.items():
        full = prefix + str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys here: {', '.join(fields)}"
            raise UserError(f"unknown config key {full}{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, full + ".")
        else:
            kwargs[key] = _coerce(full, value, tp)
    return cls(**kwargs)


def parse_overrides(items: list[str]) -> dict:
    """`["OPTIMIZER.LR=3e-4", "DATA.BATCH_SIZE=8"]` → nested dict, values parsed as YAML scalars."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. OPTIMIZER.LR=3e-4")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return out


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def config_from_dict(data: dict, config_dir: Optional[Path] = None) -> Config:
    cfg = _build(Config, data or {}, "")
    cfg.config_dir = config_dir
    check_config(cfg)
    return cfg


def _check_size(path: Path, data) -> None:
    """At most MAX_CONFIG_DEPTH levels and MAX_CONFIG_VALUES values, counting every alias expansion."""
    budget = [MAX_CONFIG_VALUES]
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        budget[0] -= 1
        if budget[0] < 0:
            raise UserError(f"{path}: more than {MAX_CONFIG_VALUES} values (YAML aliases expanding?); a config "
                            "is a few dozen keys")
        if depth > MAX_CONFIG_DEPTH:
            raise UserError(f"{path}: nested deeper than {MAX_CONFIG_DEPTH} levels; config sections are 2 deep")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children)


def _read_text(path: Path) -> str:
    """The file's text, refusing what is not a regular file (a device like /dev/zero never ends) or too big."""
    with open(path, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise UserError(f"{path}: not a regular file, expected the config file results/<exp>/config.yaml")
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise UserError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes, expected a YAML config of a few kB "
                        "(M2T_MAX_CONFIG_BYTES raises the limit)")
    return raw.decode("utf-8")


def load_config(path: str | os.PathLike, overrides: Optional[list[str]] = None) -> Config:
    path = Path(path)
    try:  # read first, then tell why not: is_file() is False (or raises) for an unreadable folder too
        text = _read_text(path)
    except (FileNotFoundError, NotADirectoryError):
        raise UserError(f"{path}: config file not found, expected results/<exp>/config.yaml") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, expected the config file results/<exp>/config.yaml") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read config ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start}), expected YAML") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}: not valid YAML{where} ({what})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of config keys at the top level")
    _check_size(path, data)
    data = _merge(data, parse_overrides(overrides or []))
    try:
        return config_from_dict(data, config_dir=path.resolve().parent)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config (every key, defaults filled in) so a run can be reproduced exactly."""
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
