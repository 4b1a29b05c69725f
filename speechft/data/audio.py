"""Audio loading: soundfile for decoding (wav, flac, ogg), soxr for band-limited resampling.

torchaudio >= 2.9 moved its I/O to torchcodec, so speechft never depends on it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import SpeechFTError

SAMPLE_RATE = 16000
# Below this many samples no encoder produces a single frame (wav2vec2's front end
# needs 400 samples = 25 ms); refuse rather than crash deep inside a model.
MIN_SAMPLES = 400


def resample(wav: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling (soxr, 'HQ'), float32 in, float32 out."""
    if orig_sr == target_sr:
        return wav.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(wav.astype(np.float32, copy=False), orig_sr, target_sr, quality="HQ").astype(np.float32)


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """Decode `path` to mono float32 at `sample_rate`.

    Multi-channel audio is down-mixed by averaging. Empty, silent-length, NaN/inf or
    undecodable audio raises a one-line `SpeechFTError` naming the file.
    """
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise SpeechFTError(f"{path}: audio file not found; check the manifest's path column")
    if path.is_file() and path.stat().st_size == 0:
        raise SpeechFTError(f"{path}: empty file (0 bytes); re-create it or remove it from the manifest")
    try:
        wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError with varying text
        raise SpeechFTError(
            f"{path}: cannot decode audio ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
            "use wav, flac or ogg"
        ) from None
    if wav.shape[0] == 0:
        raise SpeechFTError(f"{path}: audio is empty (0 samples); remove it from the manifest")
    wav = wav.mean(axis=1) if wav.shape[1] > 1 else wav[:, 0]
    if not np.isfinite(wav).all():
        raise SpeechFTError(f"{path}: audio contains NaN or infinite samples; re-encode or remove it")
    if max_seconds is not None and wav.shape[0] > max_seconds * sr:
        raise SpeechFTError(
            f"{path}: audio is {wav.shape[0] / sr:.1f} s, longer than the limit of {max_seconds} s; "
            "segment it or raise the limit"
        )
    wav = resample(wav, sr, sample_rate)
    if wav.shape[0] < MIN_SAMPLES * sample_rate // SAMPLE_RATE:
        raise SpeechFTError(
            f"{path}: audio is {wav.shape[0] / sample_rate * 1000:.0f} ms long, shorter than the "
            f"{MIN_SAMPLES / SAMPLE_RATE * 1000:.0f} ms minimum; remove it from the manifest"
        )
    return wav


def write_audio(path: str | os.PathLike, wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write 16-bit PCM wav atomically (temp name + rename)."""
    import soundfile as sf

    from ..io_utils import atomic_file

    with atomic_file(path, "wb") as f:
        sf.write(f, np.clip(wav, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
