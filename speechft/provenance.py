"""speechft.json: where an encoder folder came from, and the one rule for what a child inherits.

Every folder speechft writes (default, tiny, convert, finetune, pretrain, merge) carries a small
speechft.json beside the HF weights: its family, its source, the sha256 of its weight files and its
parents (each with their own hashes), so a merged model's lineage can be checked byte for byte.
A child keeps its parent's *behaviour* flags (e.g. `normalize_waveform`, which changes how the
encoder reads audio) and never its *bookkeeping* (how the parent itself was made): a merge into a
fine-tuned theta0 is a merge, not a fine-tune with theta0's method and dev score.
"""

from __future__ import annotations

import os
from pathlib import Path

from .io_utils import read_json

PROVENANCE_FILE = "speechft.json"
FORMAT_VERSION = 1

# Keys that describe how one folder was made: they belong to that folder alone.
PARENT_ONLY_KEYS = frozenset(
    {
        "format",
        "family",
        "source",
        "parents",
        "weights_sha256",
        "created",
        # finetune / pretrain
        "method",
        "steps",
        "steps_run",
        "frozen_steps",
        "best_step",
        "dev_score",
        "dev_metrics",
        "tasks",
        "timing",
        "config",
        "training_method",
        "units",
        "masking",
        "audio",
        "pretraining_heads",  # the head kept beside a converted/pre-trained folder, not copied to its children
        "prediction_head",
        # merge
        "merge",
        "merge_chain",
    }
)


def read_provenance(folder: str | os.PathLike) -> dict:
    """A folder's speechft.json ({} when it has none, e.g. a plain HF folder)."""
    p = Path(folder) / PROVENANCE_FILE
    return read_json(p) if p.exists() else {}


def inherited(parent: dict) -> dict:
    """What a child folder (fine-tuned, continued or merged) carries over from its parent."""
    return {k: v for k, v in parent.items() if k not in PARENT_ONLY_KEYS}


def lineage_entry(role: str, path: str | os.PathLike, family: str, parent: dict, weights_sha256: dict) -> dict:
    """One element of a child's `parents` list: the parent folder and the hashes it had when read."""
    return {
        "role": role,
        "path": str(Path(path).resolve()),
        "family": family,
        "source": parent.get("source", "unknown"),
        "weights_sha256": weights_sha256,
    }
