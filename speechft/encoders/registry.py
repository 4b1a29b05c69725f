"""The adapter classes by family, and loading or building an encoder of one (imports transformers)."""

from __future__ import annotations

import os

from ..errors import SpeechFTError
from .base import Encoder
from .decoar2 import DeCoAR2Adapter
from .families import FAMILY_INFO, detect_family
from .hub import resolve_encoder
from .wav2vec2 import Data2VecAudioAdapter, HubertAdapter, Wav2Vec2Adapter, WavLMAdapter
from .whisper import WhisperAdapter

FAMILIES: dict[str, type[Encoder]] = {
    cls.family: cls
    for cls in (HubertAdapter, Wav2Vec2Adapter, WavLMAdapter, Data2VecAudioAdapter, WhisperAdapter, DeCoAR2Adapter)
}
assert set(FAMILIES) == set(FAMILY_INFO), "every family in families.py needs an adapter, and vice versa"


def family_class(family: str) -> type[Encoder]:
    if family not in FAMILIES:
        raise SpeechFTError(f"unknown encoder family '{family}'; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[family]


def load_encoder(path: str | os.PathLike, check_finite: bool = True) -> Encoder:
    """Load an encoder folder (HF layout + optional speechft.json), or a Hugging Face Hub id's (hub.py)."""
    path = resolve_encoder(path)
    return family_class(detect_family(path)).load(path, check_finite=check_finite)


def tiny_encoder(family: str, seed: int = 0, **overrides) -> Encoder:
    """A small random-weight encoder of `family` for tests and examples (deterministic per seed)."""
    cls = family_class(family)
    return cls.from_config(
        cls.tiny_config(**overrides), provenance={"source": f"tiny random {family}, seed {seed}"}, seed=seed
    )
