"""One synthetic clip: what determines it (`Clip`), the cache that keeps it, the engines that speak it,
and the augmentation applied to it. Used by `speechft.data.synth`; the plan of which clips a benchmark
needs is `speechft.data.synth_plan`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SpeechFTError
from ..io_utils import atomic_file, cache_root
from .audio import SAMPLE_RATE, write_audio

CACHE_FORMAT = 2  # bump when the meaning of a cached clip changes


# ------------------------------------------------------------------ clips and the cache
@dataclass(frozen=True)
class Clip:
    """Everything that determines one audio file."""

    engine: str
    voice: str
    text: str
    rate: int
    pitch: int
    aug: tuple = ()  # sorted (name, value) pairs of the augmentation, its seed included

    def key(self, engine_version: str) -> str:
        blob = json.dumps(
            {
                "format": CACHE_FORMAT,
                "engine": self.engine,
                "engine_version": engine_version,
                "voice": self.voice,
                "text": self.text,
                "rate": self.rate,
                "pitch": self.pitch,
                "aug": [list(x) for x in self.aug],
            },
            sort_keys=True,
            ensure_ascii=False,
        )
        return hashlib.sha256(blob.encode()).hexdigest()


def default_cache_dir() -> Path:
    return cache_root("synth")


class ClipCache:
    """wav + JSON sidecar per key; the sidecar is written last, so its presence marks a complete entry."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _paths(self, key: str) -> tuple[Path, Path]:
        d = self.root / key[:2]
        return d / f"{key}.wav", d / f"{key}.json"

    def get(self, key: str) -> tuple[Path, dict] | None:
        wav, meta = self._paths(key)
        if not (meta.exists() and wav.exists()):
            return None
        try:
            return wav, json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # a damaged entry is regenerated

    def put(self, key: str, audio: np.ndarray, meta: dict) -> tuple[Path, dict]:
        wav, meta_path = self._paths(key)
        write_audio(wav, audio, SAMPLE_RATE)
        with atomic_file(meta_path) as f:
            json.dump(meta, f, ensure_ascii=False)
        return wav, meta


# ------------------------------------------------------------------ engines
class _Espeak:
    name = "espeak-ng"

    def __init__(self):
        from . import espeak

        self._espeak = espeak
        self.version = espeak.library_version()

    def synthesize(self, clip: Clip) -> tuple[np.ndarray, list[tuple[str, float]]]:
        r = self._espeak.synthesize(clip.text, voice=clip.voice, rate=clip.rate, pitch=clip.pitch)
        return r.audio, r.phonemes


ENGINES = ("espeak-ng", "flite")


def load_engines(names=None) -> dict:
    """espeak-ng (required) plus the optional engines installed here; `names` restricts them."""
    if names is not None:
        names = [n.strip() for n in names if n.strip()]
        bad = [n for n in names if n not in ENGINES]
        if bad or "espeak-ng" not in names:
            raise SpeechFTError(
                f"--engines {' '.join(names)}: choose from {' '.join(ENGINES)} (espeak-ng is always needed)"
            )
    engines = {"espeak-ng": _Espeak()}
    from . import engines as optional

    for eng in optional.available_engines(names):
        engines[eng.name] = eng
    missing = [n for n in (names or []) if n not in engines]
    if missing:
        raise SpeechFTError(
            f"--engines: {' '.join(missing)} not installed here (flite: apt install flite); drop it from --engines"
        )
    return engines


# ------------------------------------------------------------------ augmentation
def _colored_noise(n: int, color: int, rng: np.random.Generator) -> np.ndarray:
    """color 0 white, 1 pink (1/f power), 2 brown (1/f^2 power)."""
    white = rng.standard_normal(n)
    if color == 0 or n < 4:
        return white
    spec = np.fft.rfft(white)
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    noise = np.fft.irfft(spec / f ** (color / 2.0), n)
    return noise / (noise.std() + 1e-12)


def augment(wav: np.ndarray, aug: dict, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Apply crop / pad / channel EQ / noise / gain as `aug` asks, driven by its "seed": deterministic."""
    rng = np.random.default_rng(int(aug["seed"]))
    wav = wav.astype(np.float64)
    if "crop" in aug:
        length = int(rng.uniform(*aug["crop"]) * sr)
        if len(wav) > length:
            start = int(rng.integers(0, len(wav) - length + 1))
            wav = wav[start : start + length]
    if "pad_to" in aug:
        length = int(aug["pad_to"] * sr)
        if len(wav) < length:
            off = int(rng.integers(0, length - len(wav) + 1))
            wav = np.pad(wav, (off, length - len(wav) - off))
    if "eq" in aug:
        tilt = rng.uniform(*aug["eq"])
        centre = float(np.exp(rng.uniform(np.log(300.0), np.log(4000.0))))
        band_db = rng.uniform(-9.0, 9.0)
        freqs = np.maximum(np.fft.rfftfreq(len(wav), 1.0 / sr), 50.0)
        gain_db = tilt * np.log2(freqs / 1000.0) + band_db * np.exp(-0.5 * (np.log2(freqs / centre) / 0.5) ** 2)
        wav = np.fft.irfft(np.fft.rfft(wav) * 10 ** (gain_db / 20.0), len(wav))
    if "snr" in aug:
        snr_db = rng.uniform(*aug["snr"])
        noise = _colored_noise(len(wav), int(rng.integers(3)), rng)
        peak = np.abs(wav).max()
        active = wav[np.abs(wav) > 0.05 * peak] if peak > 0 else wav
        p_signal = float(np.mean(active**2)) if active.size else 0.0
        wav = wav + noise * np.sqrt(p_signal / 10 ** (snr_db / 10) / (np.mean(noise**2) + 1e-12))
    if "peak" in aug:
        lo, hi = aug["peak"]
        target = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        wav = wav * (target / (np.abs(wav).max() + 1e-12))
    return wav.astype(np.float32)
