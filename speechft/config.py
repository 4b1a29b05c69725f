"""Configs: dataclasses <- YAML <- `--set a.b=value` overrides.

Unknown keys are errors that list the valid ones; values are type-checked against the
dataclass field types. Every run directory stores its resolved config (`save_config`).
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from .errors import SpeechFTError
from .io_utils import atomic_file

T = TypeVar("T")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, where: str):
    """Check/convert `value` to the annotated type `tp`; raise a one-line error otherwise."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except SpeechFTError as e:
                errors.append(str(e))
        raise SpeechFTError(f"{where}: {value!r} is not a valid {' or '.join(_type_name(a) for a in args)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SpeechFTError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, str):  # "a,b,c" from the command line
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise SpeechFTError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple or tp is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise SpeechFTError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            raise SpeechFTError(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise SpeechFTError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise SpeechFTError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise SpeechFTError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise SpeechFTError(f"{where}: expected a string, got {value!r}")
    return value


def _acyclic(value, where: str, _stack: tuple = ()) -> None:
    """YAML anchors can build self-containing lists/maps (`&a [*a]`); refuse them up front."""
    if isinstance(value, (list, tuple, dict)):
        if any(value is v for v in _stack):
            raise SpeechFTError(f"{where}: a YAML alias makes this value contain itself; write it out plainly")
        for v in (value.values() if isinstance(value, dict) else value):
            _acyclic(v, where, _stack + (value,))


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    if not isinstance(data, dict):
        raise SpeechFTError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise SpeechFTError(f"{where}: unknown key '{unknown[0]}'; valid keys: {', '.join(fields)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where != "config" else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise SpeechFTError(f"{where}: {e}") from None


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def apply_overrides(cfg: T, overrides: Sequence[str]) -> T:
    """Apply `a.b=value` strings (value parsed as YAML) to a config dataclass, validated."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise SpeechFTError(f"--set {item!r}: expected key=value, e.g. --set optim.lr=1e-4")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node, cls = data, type(cfg)
        for i, p in enumerate(parts):
            fields = {f.name: f for f in dataclasses.fields(cls)}
            if p not in fields:
                prefix = ".".join(parts[:i]) or "config"
                raise SpeechFTError(f"--set {key}: unknown key '{p}' in {prefix}; valid keys: {', '.join(fields)}")
            sub = _hints(cls)[p]
            if i < len(parts) - 1:
                if not dataclasses.is_dataclass(sub):
                    raise SpeechFTError(f"--set {key}: '{p}' is a value, not a section")
                if not isinstance(node[p], dict):  # an earlier --set replaced the section
                    raise SpeechFTError(f"--set {key}: section '{p}' was replaced by an earlier --set; "
                                        "set its keys one by one instead")
                node, cls = node[p], sub
            else:
                try:
                    value = yaml.safe_load(raw) if raw.strip() != "" else ""
                except (yaml.YAMLError, RecursionError):  # not YAML (python/* tags included): a plain string
                    value = raw
                _acyclic(value, f"--set {key}")
                if dataclasses.is_dataclass(sub) and not isinstance(value, dict):
                    raise SpeechFTError(f"--set {key}={raw}: '{p}' is a section; set one of its keys, e.g. "
                                        f"--set {key}.{dataclasses.fields(sub)[0].name}=...")
                node[p] = value
    return from_dict(type(cfg), data)


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> T:
    """Defaults <- YAML file (if given) <- overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise SpeechFTError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:  # also python/* tags: safe_load never builds Python objects
            raise SpeechFTError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        except UnicodeDecodeError as e:
            raise SpeechFTError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
        except RecursionError:
            raise SpeechFTError(f"{path}: not valid YAML (nested too deeply)") from None
        if not isinstance(data, dict):
            raise SpeechFTError(f"{path}: a config file must be a mapping of keys to values")
        _acyclic(data, str(path))
        try:
            cfg = from_dict(cls, data)
        except SpeechFTError as e:
            raise SpeechFTError(f"{path}: {e}") from None
    else:
        cfg = cls()
    return apply_overrides(cfg, overrides)


def save_config(cfg, path: str | os.PathLike) -> None:
    with atomic_file(path) as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
