"""Shared test fixtures: tiny random encoders and tiny synthetic task folders in tmp_path."""

from __future__ import annotations

import json
import os
from pathlib import Path

# Two cores on CI: keep each test process from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite never goes online: a Hub id is looked up in the local Hugging Face cache only (huggingface_hub reads
# this once, when first imported, which is below).
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from speechft.data.audio import write_audio  # noqa: E402
from speechft.data.tasks import write_task_folder  # noqa: E402

FAMILIES = ("hubert", "wav2vec2", "wavlm", "data2vec", "whisper", "decoar2")


# ---- helpers shared by the test modules (`from conftest import ...`) -------------------------------------
def cli(*argv) -> int:
    """Run `speechft ARGV...` in-process; returns the exit code."""
    from speechft.cli import main

    return main([str(a) for a in argv])


def weights(folder) -> dict[str, torch.Tensor]:
    """All tensors of an encoder folder, single-file or sharded, read with safetensors itself (an
    independent reader, so speechft's own cannot hide its own mistakes)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    )
    out = {}
    for f in files:
        out.update(load_file(str(folder / f)))
    return out


def rows(out, kind: str) -> list[dict]:
    """The rows of one kind ("train", "dev") of a run folder's metrics.jsonl."""
    return [r for r in map(json.loads, (Path(out) / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def leftovers(path) -> list[str]:
    """Temp or backup entries that atomic writers put beside `path` (.NAME.*)."""
    path = Path(path)
    if not path.parent.exists():
        return []
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def tone(freq: float, seconds: float, sr: int = 16000, seed: int = 0, noise: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t) + noise * rng.standard_normal(len(t))).astype(np.float32)


def make_classification_task(root, n_per_class: int = 6, classes=("low", "high"), seed: int = 0, name: str = "tones"):
    """A separable task: each class is a tone at its own frequency, plus noise."""
    freqs = {c: 200.0 * (i + 1) ** 2 for i, c in enumerate(classes)}
    rng = np.random.default_rng(seed)
    splits, audio = {}, root.parent / f"{root.name}_audio"
    audio.mkdir(parents=True, exist_ok=True)
    for s, split in enumerate(("train", "dev", "test")):
        rows = []
        for c in classes:
            for k in range(n_per_class if split == "train" else max(2, n_per_class // 2)):
                dur = float(rng.uniform(0.5, 1.0))
                path = audio / f"{split}_{c}_{k}.wav"
                write_audio(path, tone(freqs[c], dur, seed=seed * 1000 + s * 100 + k))
                rows.append(
                    {"path": f"audio/{path.name}", "duration": round(dur, 3), "label": c, "speaker": f"spk{k % 2}"}
                )
        splits[split] = rows
    spec = {"name": name, "type": "classification", "metric": "accuracy", "labels": list(classes)}
    return write_task_folder(root, spec, splits, audio_dir=audio)


def make_ctc_task(root, n: int = 8, seed: int = 0, name: str = "beeps"):
    """A CTC task: a sequence of tones, transcribed as letters (a=low, b=mid, c=high)."""
    freqs = {"a": 300.0, "b": 900.0, "c": 2000.0}
    rng = np.random.default_rng(seed)
    splits, audio = {}, root.parent / f"{root.name}_audio"
    audio.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        rows = []
        for k in range(n if split == "train" else max(2, n // 2)):
            letters = "".join(rng.choice(list(freqs), size=int(rng.integers(2, 5))))
            wav = np.concatenate([tone(freqs[ch], 0.25, seed=k * 10 + j) for j, ch in enumerate(letters)])
            path = audio / f"{split}_{k}.wav"
            write_audio(path, wav)
            rows.append(
                {"path": f"audio/{path.name}", "duration": round(len(wav) / 16000, 3), "transcript": " ".join(letters)}
            )
        splits[split] = rows
    spec = {"name": name, "type": "ctc", "metric": "per", "vocabulary": list(freqs), "tokenizer": "space"}
    return write_task_folder(root, spec, splits, audio_dir=audio)


@pytest.fixture
def cls_task(tmp_path):
    return make_classification_task(tmp_path / "cls_task")


@pytest.fixture
def ctc_task(tmp_path):
    return make_ctc_task(tmp_path / "ctc_task")


@pytest.fixture
def tiny_encoder_dir(tmp_path):
    """Factory: tiny_encoder_dir(family, seed=0) -> saved encoder folder."""
    from speechft.encoders import tiny_encoder

    def make(family: str = "hubert", seed: int = 0, name: str | None = None):
        out = tmp_path / (name or f"enc_{family}_{seed}")
        tiny_encoder(family, seed=seed).save(out)
        return out

    return make
