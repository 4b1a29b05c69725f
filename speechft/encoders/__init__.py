"""Speech encoders: one wrapper (`Encoder`), thin per-family adapters, load/save/tiny."""

from __future__ import annotations

import os

from ..errors import SpeechFTError
from .base import Encoder, EncoderOutput, config_summary, detect_family, read_provenance
from .decoar2 import DeCoAR2Encoder
from .wav2vec2 import Data2VecAudioEncoder, HubertEncoder, Wav2Vec2Encoder, WavLMEncoder
from .whisper import WhisperEncoder

FAMILIES: dict[str, type[Encoder]] = {
    cls.family: cls
    for cls in (HubertEncoder, Wav2Vec2Encoder, WavLMEncoder, Data2VecAudioEncoder, WhisperEncoder, DeCoAR2Encoder)
}
# config.json model_type -> family
MODEL_TYPES = {
    "hubert": "hubert",
    "wav2vec2": "wav2vec2",
    "wavlm": "wavlm",
    "data2vec-audio": "data2vec",
    "whisper": "whisper",
    "decoar2": "decoar2",
}


def family_class(family: str) -> type[Encoder]:
    if family not in FAMILIES:
        raise SpeechFTError(f"unknown encoder family '{family}'; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[family]


def load_encoder(path: str | os.PathLike, check_finite: bool = True) -> Encoder:
    """Load an encoder folder (HF layout + optional speechft.json)."""
    return family_class(detect_family(path)).load(path, check_finite=check_finite)


def tiny_encoder(family: str, seed: int = 0, **overrides) -> Encoder:
    """A small random-weight encoder of `family` for tests and examples (deterministic per seed)."""
    cls = family_class(family)
    return cls.from_config(
        cls.tiny_config(**overrides), provenance={"source": f"tiny random {family}, seed {seed}"}, seed=seed
    )


__all__ = [
    "Encoder",
    "EncoderOutput",
    "FAMILIES",
    "MODEL_TYPES",
    "load_encoder",
    "tiny_encoder",
    "family_class",
    "detect_family",
    "read_provenance",
    "config_summary",
]
