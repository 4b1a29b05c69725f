"""Configs: dataclasses <- YAML <- `--set a.b=value` overrides.

Unknown keys are errors that list the valid ones; values are type-checked against the
dataclass field types. Every run directory stores its resolved config (`save_config`).

`load_yaml` is the one way a user's YAML (a --config, a --set value, a task.yaml, a score config) is parsed:
safe_load's rules (no Python objects: `!!python` tags are refused) and no aliases (`*name`), since an
alias is how a few hundred bytes expand into gigabytes ("billion laughs") or into a value that
contains itself. Plain anchors (`&name`) are harmless and allowed.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import SpeechFTError
from .io_utils import atomic_file

T = TypeVar("T")


class _AliasRefused(Exception):
    def __init__(self, event):
        super().__init__(f"line {event.start_mark.line + 1} uses the YAML alias *{event.anchor}")


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader whose composer stops at the first alias, before anything is expanded."""

    def compose_node(self, parent, index):
        # An alias to an undefined anchor stays a YAML error, so `--set pattern=*conv*` is still a plain string.
        if self.check_event(yaml.AliasEvent) and self.peek_event().anchor in self.anchors:
            raise _AliasRefused(self.peek_event())
        return super().compose_node(parent, index)


def _parse_yaml(text: str):
    """yaml.load with _NoAliasLoader, spelled out so the source guard against yaml.load stays simple."""
    loader = _NoAliasLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_yaml(text: str, where: str):
    """Parse `text` (read from `where`, named in every error) as YAML without aliases; one-line errors."""
    try:
        return _parse_yaml(text)
    except _AliasRefused as e:
        raise SpeechFTError(
            f"{where}: {e}; aliases are refused (a few bytes of them can expand to gigabytes): write the value out"
        ) from None
    except yaml.YAMLError as e:  # also python/* tags: the SafeLoader never builds Python objects
        raise SpeechFTError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise SpeechFTError(f"{where}: not valid YAML (nested too deeply)") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise SpeechFTError(f"{where}: not valid YAML ({str(e).split(';')[0]})") from None


def read_yaml_file(path: str | os.PathLike):
    """A user's YAML file (a --config, a score config): UTF-8 text, parsed by `load_yaml`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SpeechFTError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    return load_yaml(text, str(path))


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


def _set_in_mapping(node: dict, path: list[str], value) -> None:
    """node[path[0]][path[1]]... = value, making (or replacing non-mapping values by) mappings on the way."""
    for p in path[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[path[-1]] = value


def _set(data: dict, cls, key: str, value, flag: str) -> None:
    """Put `value` at the dotted `key` of `data` (a to_dict of a `cls`), checking every name."""
    parts = key.strip().split(".")
    node = data
    for i, p in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if p not in fields:
            prefix = ".".join(parts[:i]) or "config"
            raise SpeechFTError(f"{flag} {key}: unknown key '{p}' in {prefix}; valid keys: {', '.join(fields)}")
        sub = _hints(cls)[p]
        if i < len(parts) - 1:
            if typing.get_origin(sub) is dict:  # a free mapping (e.g. per_task): its own __post_init__ checks it
                _set_in_mapping(node, parts[i:], value)
                return
            if not dataclasses.is_dataclass(sub):
                raise SpeechFTError(f"{flag} {key}: '{p}' is a value, not a section")
            if not isinstance(node[p], dict):  # an earlier --set replaced the section
                raise SpeechFTError(
                    f"{flag} {key}: section '{p}' was replaced by an earlier --set; set its keys one by one instead"
                )
            node, cls = node[p], sub
        else:
            if dataclasses.is_dataclass(sub) and not isinstance(value, dict):
                raise SpeechFTError(
                    f"{flag} {key}={value}: '{p}' is a section; set one of its keys, e.g. "
                    f"{flag} {key}.{dataclasses.fields(sub)[0].name}=..."
                )
            node[p] = value


def apply_overrides(cfg: T, overrides: Sequence[str]) -> T:
    """Apply `a.b=value` strings (value parsed as YAML) to a config dataclass, validated."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise SpeechFTError(f"--set {item!r}: expected key=value, e.g. --set optim.lr=1e-4")
        key, raw = item.split("=", 1)
        try:
            value = _parse_yaml(raw) if raw.strip() != "" else ""
        except _AliasRefused as e:
            raise SpeechFTError(f"--set {key}: {e}; aliases are refused: write the value out") from None
        except (yaml.YAMLError, RecursionError, ValueError):  # not YAML (python/* tags included): a plain string
            value = raw
        _set(data, type(cfg), key, value, "--set")
    return from_dict(type(cfg), data)


def apply_values(cfg: T, values: dict[str, Any], flag_of: dict[str, str] | None = None) -> T:
    """Apply {dotted key: Python value} (a command's own flags) to a config dataclass, validated.
    `flag_of` names the flag each key came from, for the error messages."""
    data = to_dict(cfg)
    for key, value in values.items():
        _set(data, type(cfg), key, value, (flag_of or {}).get(key, "--set"))
    try:
        return from_dict(type(cfg), data)
    except SpeechFTError as e:
        flags = ", ".join(sorted({(flag_of or {}).get(k, k) for k in values}))
        raise SpeechFTError(f"{e} (from {flags})") from None


def load_config(
    cls: type[T],
    path: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    values: dict | None = None,
    base=None,
) -> T:
    """Defaults (or `base`, a config to start from) <- YAML file (if given) <- `values` (a command's own
    flags) <- `--set` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise SpeechFTError(f"{path}: config file not found")
        data = read_yaml_file(path) or {}
        if not isinstance(data, dict):
            raise SpeechFTError(f"{path}: a config file must be a mapping of keys to values")
        try:
            cfg = from_dict(cls, _layered(to_dict(base), data) if base is not None else data)
        except SpeechFTError as e:
            raise SpeechFTError(f"{path}: {e}") from None
    else:
        cfg = base if base is not None else cls()
    if values:
        cfg = apply_values(cfg, values)
    return apply_overrides(cfg, overrides)


# ---- the command-line grammar shared by every run-like command ---------------------------------------
def add_config_options(p, cls, example: str) -> None:
    """`--config YAML` and `--set KEY=VALUE ...` over the dataclass `cls` (finetune, pretrain,
    evaluate, analyze, sweep, merge all take both)."""
    p.add_argument("--config", metavar="YAML", help=f"a YAML file of {cls.__name__} keys (unknown keys are errors)")
    p.add_argument(
        "--set",
        dest="set",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help=f"override config values (dotted keys, YAML-typed values), e.g. --set {example}",
    )


def config_from_args(cls: type[T], args, flags: dict[str, str] | None = None, base=None) -> T:
    """A command's config: defaults <- --config <- its own flags that were given <- --set.

    `flags` maps an argparse dest to the dotted config key it sets; a flag left at None was not
    given (so dedicated flags must default to None and show the config's default in their help).
    `base` replaces the defaults (--resume: the run's stored config, so that what is given is exactly
    what would change, and options repeated on --resume need not be all of them)."""
    flags = flags or {}
    values = {key: getattr(args, dest) for dest, key in flags.items() if getattr(args, dest, None) is not None}
    cfg = load_config(cls, getattr(args, "config", None), base=base)
    if values:
        flag_of = {key: "--" + dest.replace("_", "-") for dest, key in flags.items()}
        cfg = apply_values(cfg, values, flag_of)
    return apply_overrides(cfg, list(getattr(args, "set", None) or ()))


def resolve_device(name: str | None = None):
    """`--device`: cpu, cuda, cuda:N (None or 'auto': CUDA when available, else the CPU). Asking for a
    device this machine lacks is an error, never a silent fall-back to the CPU."""
    import torch

    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise SpeechFTError(f"--device {name!r}: not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SpeechFTError(
                f"--device {name}: CUDA is not available here (torch {torch.__version__}); "
                "use --device cpu, or install a CUDA build of torch"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SpeechFTError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise SpeechFTError(f"--device {name}: MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise SpeechFTError(f"--device {name!r}: unsupported; use cpu, cuda or cuda:N")
    return device


def _layered(under: dict, over: dict) -> dict:
    """`over` on top of `under`, section by section (a YAML file given on top of a stored config)."""
    out = dict(under)
    for k, v in over.items():
        out[k] = _layered(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def save_config(cfg, path: str | os.PathLike) -> None:
    with atomic_file(path) as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
