"""Speech encoders: one wrapper (`Encoder`), thin per-family adapters, load/save/tiny.

What needs no model code (family metadata and patterns, folder detection, config comparison) is in
families.py and imported here at once. Everything else loads torch and transformers, so it is imported
on first use of its name (PEP 562): `speechft merge` and doctor's weight checks import this package
without paying for transformers.
"""

from __future__ import annotations

import importlib

from .families import FAMILY_INFO, MODEL_TYPES, FamilyInfo, config_summary, detect_family, family_info

# name -> submodule defining it
_LAZY = {
    "Encoder": "base",
    "EncoderOutput": "base",
    "FAMILIES": "registry",
    "family_class": "registry",
    "load_encoder": "registry",
    "tiny_encoder": "registry",
    "resolve_encoder": "hub",
    "HubertAdapter": "wav2vec2",
    "Wav2Vec2Adapter": "wav2vec2",
    "WavLMAdapter": "wav2vec2",
    "Data2VecAudioAdapter": "wav2vec2",
    "WhisperAdapter": "whisper",
    "DeCoAR2Adapter": "decoar2",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "FAMILY_INFO",
    "MODEL_TYPES",
    "FamilyInfo",
    "config_summary",
    "detect_family",
    "family_info",
    *_LAZY,
]
