"""Feature sources: what probing needs from an encoder (all hidden states of a batch, and an identity).

`EncoderSource` wraps an encoder folder (run on a chosen device; the states come back to the CPU);
`FbankSource` is the `fbank` pseudo-encoder, 80-bin log-mel filterbank frames as one "layer", SUPERB's FBANK
baseline (the SUPERB score's zero point, superb_score.py); `LayerSubset` keeps the hidden states `--layers`
picks. `open_source(spec)` picks one from a command-line spec. features.py extracts and caches what they give.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from .errors import SpeechFTError
from .io_utils import sha256_file

FBANK = "fbank"

_FINGERPRINTS: dict[tuple, str] = {}


def folder_fingerprint(path: str | os.PathLike) -> str:
    """sha256 over the files that decide an encoder's outputs (config.json, weights, remote
    code). speechft.json is left out: it changes on every save (timestamps)."""
    path = Path(path).resolve()
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and (p.name == "config.json" or p.suffix in (".safetensors", ".py", ".bin"))
    )
    stamp = (str(path), tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if stamp not in _FINGERPRINTS:
        h = hashlib.sha256()
        for p in files:
            h.update(f"{p.name}:{sha256_file(p)}\n".encode())
        _FINGERPRINTS[stamp] = h.hexdigest()
    return _FINGERPRINTS[stamp]


class FeatureSource:
    """What probing needs from an encoder: all states of a batch, and an identity."""

    name: str
    num_states: int
    dim: int
    fingerprint: dict
    info: dict
    device = torch.device("cpu")
    autocasts = False  # whether --precision bf16/fp16 applies (an encoder's forward pass; not fbank)

    def __call__(self, wavs: torch.Tensor, lengths: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    def frames(self, samples: torch.Tensor) -> torch.Tensor:
        """Frames of each clip of `samples` samples (what extraction will store; the cache plan's count)."""
        raise NotImplementedError


class EncoderSource(FeatureSource):
    """An encoder folder (or a Hugging Face Hub id's converted folder), run on `device` (default: the CPU)."""

    def __init__(self, path: str | os.PathLike, name: str | None = None, encoder=None, device=None):
        from .encoders import load_encoder
        from .encoders.hub import parse_hub_id, resolve_encoder

        name = name or (str(path) if parse_hub_id(path) else None)  # a Hub model is named by its id
        self.path = resolve_encoder(path)
        self.device = torch.device(device or "cpu")
        self.encoder = encoder if encoder is not None else load_encoder(self.path)
        self.encoder.to(self.device).eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.name = name or self.path.name
        self.num_states, self.dim = self.encoder.num_layers + 1, self.encoder.hidden_size
        self.fingerprint = {"kind": "encoder", "family": self.encoder.family, "weights": folder_fingerprint(self.path)}
        prov = self.encoder.provenance
        self.info = {
            "encoder": str(self.path),
            "family": self.encoder.family,
            "fingerprint": self.fingerprint["weights"],
            "num_states": self.num_states,
            "dim": self.dim,
            "provenance": {k: prov[k] for k in prov if k not in ("weights_sha256",)},
        }

    autocasts = True

    def __call__(self, wavs, lengths):
        out = self.encoder(wavs.to(self.device), lengths.to(self.device))
        return out.hidden_states, out.frame_lengths

    def frames(self, samples):
        return self.encoder.frame_lengths(samples)


class FbankSource(FeatureSource):
    """80-bin log-mel filterbank, 25 ms windows every 10 ms: SUPERB's FBANK baseline.

    The log-mel is Whisper's (Slaney mel, log10, an 80 dB dynamic range per utterance,
    scaled to about [-1, 1]), reused because it is already batch-exact on padded input
    and well scaled for a probe. One "layer": the weighted sum is the identity. It runs on the
    CPU whatever the device: it costs a fraction of reading the audio."""

    N_MELS = 80

    def __init__(self, name: str = FBANK):
        from .encoders.whisper import mel_filters

        self.filters = mel_filters(self.N_MELS)
        self.name, self.num_states, self.dim = name, 1, self.N_MELS
        self.fingerprint = {"kind": "fbank", "n_mels": self.N_MELS, "recipe": "whisper-log-mel", "version": 1}
        self.info = {
            "encoder": FBANK,
            "family": FBANK,
            "fingerprint": "fbank-80",
            "num_states": 1,
            "dim": self.N_MELS,
            "provenance": {"source": "80-bin log-mel filterbank (SUPERB's FBANK baseline)"},
        }

    def __call__(self, wavs, lengths):
        from .encoders.whisper import HOP, log_mel

        frames = lengths // HOP
        if int(frames.min()) < 1:
            raise SpeechFTError("audio shorter than 10 ms has no filterbank frame")
        mel = log_mel(wavs, lengths, self.filters)  # (B, 80, N), zero past each item's end
        return [mel.transpose(1, 2)], frames

    def frames(self, samples):
        from .encoders.whisper import HOP

        return samples // HOP


class LayerSubset(FeatureSource):
    """A source's hidden states `layers` only (`--layers`): what is stored, and what the weighted sum is
    over. Its fingerprint names the subset, so the cache never mixes it up with all states."""

    def __init__(self, source: FeatureSource, layers: list[int]):
        self.inner, self.layers = source, list(layers)
        self.name, self.dim, self.num_states = source.name, source.dim, len(self.layers)
        self.device, self.autocasts = source.device, source.autocasts
        self.fingerprint = {**source.fingerprint, "layers": self.layers}
        self.info = {**source.info, "num_states": self.num_states, "layers": self.layers}

    def __call__(self, wavs, lengths):
        states, frame_lengths = self.inner(wavs, lengths)
        return [states[i] for i in self.layers], frame_lengths

    def frames(self, samples):
        return self.inner.frames(samples)


def resolve_layers(spec, num_states: int, name: str) -> list[int] | None:
    """`--layers` against a source with `num_states` hidden states: None (all), a list of indices, or
    'every:N' (0, N, 2N, ...). Sorted, each index once."""
    if spec is None:
        return None
    if isinstance(spec, str):
        step = int(spec.split(":", 1)[1])
        return list(range(0, num_states, step))
    bad = [i for i in spec if not 0 <= i < num_states]
    if bad:
        raise SpeechFTError(
            f"--layers {' '.join(map(str, bad))}: {name} has {num_states} hidden states (0-{num_states - 1}); "
            "pick indices in that range or every:N"
        )
    return sorted(set(spec))


def with_layers(source: FeatureSource, spec) -> FeatureSource:
    """`source`, or its LayerSubset when `--layers` picks fewer than all of its states."""
    layers = resolve_layers(spec, source.num_states, source.name)
    if layers is None or layers == list(range(source.num_states)):
        return source
    return LayerSubset(source, layers)


def encoder_folders(specs) -> list[Path]:
    """The folders among `evaluate`'s encoder specs (what open_source would load; a Hub id's converted folder),
    for the output rule."""
    from .encoders.hub import resolve_encoder

    folders = []
    for spec in specs:
        if isinstance(spec, FeatureSource):
            continue
        path = str(spec[1] if isinstance(spec, tuple) else spec)
        if "=" in path and not Path(path).exists():
            path = path.split("=", 1)[1]
        path = resolve_encoder(path)
        if path.is_dir():
            folders.append(path)
    return folders


def open_source(spec, device=None) -> FeatureSource:
    """`spec`: a FeatureSource, an encoder folder, `fbank`, or `NAME=FOLDER` / (name, folder).
    An encoder folder is loaded onto `device`."""
    if isinstance(spec, FeatureSource):
        return spec
    name = None
    if isinstance(spec, tuple):
        name, spec = spec
    spec = str(spec)
    if name is None and "=" in spec and not Path(spec).exists():
        name, spec = spec.split("=", 1)
    if spec == FBANK and not Path(spec).is_dir():
        return FbankSource(name or FBANK)
    return EncoderSource(spec, name=name, device=device)
