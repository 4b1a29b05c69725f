"""speechft.json: where an encoder folder came from, and the one rule for what a child inherits.

Every folder speechft writes (default, tiny, convert, finetune, pretrain, merge) carries a small
speechft.json beside the HF weights: its family, its source, the sha256 of its weight files and its
parents (each with their own hashes), so a merged model's lineage can be checked byte for byte.
A child keeps its parent's *behaviour* flags (e.g. `normalize_waveform`, which changes how the
encoder reads audio) and never its *bookkeeping* (how the parent itself was made): a merge into a
fine-tuned theta0 is a merge, not a fine-tune with theta0's method and dev score.
`check_parents` is the one check that a fine-tuned folder came from the pre-trained encoder it is
merged into, swept against or compared with (merge, sweep, analyze).
"""

from __future__ import annotations

import os
import sys
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
        # a folder converted from the Hugging Face Hub (its children name it in `parents`)
        "hub",
        "converter_version",
        "normalize_from",
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


def recorded_parent(prov: dict) -> dict | None:
    """The pre-trained parent a fine-tuned (or merged) folder's speechft.json records, with its hashes."""
    for p in prov.get("parents") or ():
        if isinstance(p, dict) and p.get("role") == "pretrained" and isinstance(p.get("weights_sha256"), dict):
            return p
    return None


def folder_sha256(folder: str | os.PathLike) -> dict[str, str]:
    """sha256 of a folder's weight files, keyed by file name (what `weights_sha256` records)."""
    from .io_utils import sha256_file

    return {f.name: sha256_file(f) for f in sorted(Path(folder).glob("*.safetensors"))}


def check_parents(
    pretrained: str | os.PathLike,
    finetuned: list,
    allow_foreign: bool = False,
    pretrained_sha256: dict | None = None,
) -> list[str]:
    """Refuse a fine-tuned folder whose recorded pre-trained parent is not `pretrained` (merge, sweep, analyze).

    Two encoders of one architecture merge without any error, so a fine-tune of encoder A merged into
    encoder B gives a silently meaningless model; the fine-tune's speechft.json records its parent's
    sha256, which is compared with `pretrained_sha256` (hashed here when None and needed). A folder
    without a recorded parent (converted elsewhere, plain HF) is accepted. Returns the foreign folders
    accepted because `allow_foreign` (the caller records them). Prints nothing: the caller says
    `parent_notes` once its work succeeded, so a refusal later on stays one line."""
    from .errors import SpeechFTError

    foreign = []
    for ft in finetuned:
        parent = None if _same(ft, pretrained) else recorded_parent(read_provenance(ft))
        if parent is None:
            continue
        if pretrained_sha256 is None:
            pretrained_sha256 = folder_sha256(pretrained)
        if parent["weights_sha256"] == pretrained_sha256:
            continue
        if not allow_foreign:
            raise SpeechFTError(
                f"{ft} was fine-tuned from {parent.get('path', '?')}, whose weights are not those of {pretrained} "
                "(sha256 differs); pass the pre-trained encoder it came from, or --allow-foreign-parent if "
                "this is deliberate"
            )
        foreign.append(str(Path(ft).resolve()))
    return foreign


def parent_notes(pretrained: str | os.PathLike, finetuned: list, foreign: list[str]) -> None:
    """One stderr line per folder `check_parents` could not check (no recorded parent) or let through."""
    for ft in finetuned:
        if str(Path(ft).resolve()) in foreign:
            print(
                f"speechft: warning: {ft} was not fine-tuned from {pretrained} (--allow-foreign-parent)",
                file=sys.stderr,
            )
        elif not _same(ft, pretrained) and recorded_parent(read_provenance(ft)) is None:
            print(
                f"speechft: note: {ft} records no pre-trained parent in speechft.json; "
                f"cannot check that it was fine-tuned from {pretrained}",
                file=sys.stderr,
            )


def _same(a, b) -> bool:
    return Path(a).resolve() == Path(b).resolve()
