"""Resumable training state on disk: tensors in safetensors, everything else in JSON.

A checkpoint is a folder `step-0000123/` written under a temporary name and renamed
into place (io_utils.atomic_dir); `latest.json` is then rewritten atomically to point at
it, and only after that are older folders removed. A process killed at any moment
leaves either the previous checkpoint or the new one, never a half-written one.
Nothing here unpickles: optimizer and RNG states are split into tensors (safetensors)
and plain numbers (JSON).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from . import safetensors_io
from .errors import SpeechFTError
from .io_utils import CANNOT_WRITE, atomic_dir, read_json, write_json

LATEST = "latest.json"
STEP_DIR = re.compile(r"^step-(\d+)$")


# ---- tensors ---------------------------------------------------------------------------
def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> None:
    safetensors_io.save_tensors(path, tensors)


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise SpeechFTError(f"{path}: missing from the checkpoint; it is incomplete (delete it to fall back)")
    try:
        return safetensors_io.load_tensors(path)
    except SpeechFTError as e:  # a corrupt header or truncated file, named by the reader
        detail = str(e).removeprefix(f"{path}: ")
        raise SpeechFTError(f"{path}: cannot read the checkpoint tensors ({detail})") from None


def module_state(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """CPU copies of a module's state_dict with keys prefixed (a snapshot that later
    training steps cannot modify)."""
    return {f"{prefix}{k}": v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def load_module_state(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str, where: str) -> None:
    own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        module.load_state_dict(own, strict=True)
    except RuntimeError as e:
        raise SpeechFTError(
            f"{where}: the checkpoint does not match the model ({str(e).splitlines()[0][:200]}); "
            "it was written by a different encoder, task or method"
        ) from None


# ---- optimizer -------------------------------------------------------------------------
def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        _, idx, k = key.split(".", 2)
        state.setdefault(int(idx), {})[k] = v
    for key, v in meta.get("scalars", {}).items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    try:
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError) as e:
        raise SpeechFTError(
            f"optimizer state does not match the model ({e}); the checkpoint belongs to another run"
        ) from None


# ---- random number generators ----------------------------------------------------------
def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Every RNG a training step may draw from: torch (CPU and each CUDA device), numpy, random."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(keys.astype(np.int64))
    version, py_state, gauss = random.getstate()
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(cached)], "python": [version, list(py_state), gauss]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda_")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, py_state, gauss = meta["python"]
    random.setstate((version, tuple(py_state), gauss))


# ---- checkpoint folders ----------------------------------------------------------------
def write_checkpoint(
    root: Path, step: int, tensor_files: dict[str, dict[str, torch.Tensor]], state: dict, keep_last: int = 1
) -> Path:
    """Write root/step-NNNNNNN/ ({name}.safetensors per entry + state.json), point
    latest.json at it, then prune older step folders beyond `keep_last`."""
    name = f"step-{step:07d}"
    with refused_run_write(root.parent, f"checkpoint {name}"):
        root.mkdir(parents=True, exist_ok=True)
        with atomic_dir(root / name, overwrite=True) as tmp:
            for fname, tensors in tensor_files.items():
                save_tensors(tmp / f"{fname}.safetensors", tensors)
            write_json(tmp / "state.json", state)
        write_json(root / LATEST, {"step": step, "dir": name})
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir())
    for s, p in steps[: max(0, len(steps) - max(1, keep_last))]:
        if s != step:
            shutil.rmtree(p, ignore_errors=True)
    return root / name


@contextlib.contextmanager
def refused_run_write(run: Path, what: str) -> Iterator[None]:
    """A full disk or a read-only run folder while writing `what` (a checkpoint, the finished encoder):
    one line naming the run folder (not a hidden temp name) and how to go on. The checkpoint before it is
    untouched, so the run continues from there with --resume."""
    try:
        yield
    except (OSError, SpeechFTError) as e:
        cause = e if isinstance(e, OSError) else e.__cause__
        if not isinstance(cause, OSError) or cause.errno not in CANNOT_WRITE:
            raise
        raise SpeechFTError(
            f"{run}: {os.strerror(cause.errno).lower()} while writing {what} (the run keeps its last checkpoint); "
            "free some space or make the folder writable, then continue it with --resume"
        ) from cause


def latest_checkpoint(root: Path) -> Path | None:
    """The folder latest.json points at, or None when there is no checkpoint yet."""
    pointer = root / LATEST
    if not pointer.exists():
        return None
    folder = root / read_json(pointer)["dir"]
    if not (folder / "state.json").exists():
        raise SpeechFTError(
            f"{pointer}: points at {folder.name}, which is missing or incomplete; delete the run folder and start again"
        )
    return folder
