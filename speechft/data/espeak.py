"""espeak-ng speech synthesis through the library shipped by the `espeakng-loader` wheel.

    >>> r = synthesize("turn left", voice="en-us+f3", rate=175, pitch=50)
    >>> r.audio.shape, r.sample_rate == SAMPLE_RATE, r.phonemes[:2]   # float32 mono, IPA + onset seconds
    ((11529,), True, [('t', 0.04898), ('ˈɜː', 0.08898)])

The library is driven with ctypes inside one small worker process per Python process
(`_espeak_worker.py`, stdlib only). The worker initialises libespeak-ng once and forks a
child per utterance, because the library carries synthesis state from one call to the
next that no API resets (see the worker's docstring): forking from a pristine copy is what
makes every clip a pure function of (voice, text, rate, pitch), byte for byte, whatever
was synthesised before - the property the synthetic benchmark's cache and its
determinism tests rely on. Calls are serialised with a lock (the worker is one pipe); a
forked Python process (e.g. a DataLoader worker) starts its own worker.
"""

from __future__ import annotations

import atexit
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SpeechFTError
from .audio import SAMPLE_RATE, resample

# espeak-ng clamps outside these; refusing is clearer than silently clamping.
RATE_RANGE = (80, 450)  # words per minute
PITCH_RANGE = (0, 100)
# Stress and length marks ride on espeak's IPA phoneme events; callers mapping to a phone
# inventory usually strip them.
IPA_SUPRASEGMENTALS = "ˈˌːˑ"


@dataclass
class SynthResult:
    audio: np.ndarray  # float32 mono at `sample_rate`
    sample_rate: int
    phonemes: list[tuple[str, float]] = field(default_factory=list)  # (IPA phoneme, onset in seconds)

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate


@dataclass(frozen=True)
class Voice:
    name: str  # espeak's display name, e.g. "English_(America)"
    identifier: str  # file under espeak-ng-data/voices, e.g. "gmw/en-US" or "!v/f3" for a variant
    languages: tuple[str, ...]  # language codes usable as voice names, e.g. ("en-us",)
    gender: int  # 0 unknown, 1 male, 2 female


def _paths() -> tuple[str, str]:
    try:
        import espeakng_loader
    except ImportError:
        raise SpeechFTError(
            "espeak-ng is not installed; run `pip install espeakng-loader` (or `pip install speechft[default]`)"
        ) from None
    return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()


def library_version() -> str:
    """The synthesiser build, e.g. 'espeak-ng 1.52.0 (espeakng-loader 0.2.4)': part of the
    synthetic benchmark's cache key, so a different build never reuses another's audio."""
    with _lock:
        version = _get_worker().version
    try:
        from importlib.metadata import version as dist_version

        return f"espeak-ng {version} (espeakng-loader {dist_version('espeakng-loader')})"
    except Exception:
        return f"espeak-ng {version}"


def available() -> bool:
    try:
        _paths()
        return True
    except SpeechFTError:
        return False


class _Worker:
    def __init__(self):
        lib, data = _paths()
        script = Path(__file__).with_name("_espeak_worker.py")
        # -I: isolated mode (no user site, no PYTHON* env, cwd not on sys.path); the worker is stdlib only.
        # stderr to a file, not a pipe: espeak-ng may print warnings, and an unread pipe would fill and block it.
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-I", str(script), lib, data],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
        )
        self.pid = os.getpid()
        hello = self.call({"op": "hello"})
        self.native_rate = int(hello["sample_rate"])
        self.isolated = bool(hello["isolated"])
        self.version = str(hello["version"])

    def _read(self) -> bytes:
        head = self.proc.stdout.read(4)
        if len(head) < 4:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.stderr.seek(0)
            err = self.stderr.read().decode(errors="replace").strip().splitlines()
            raise SpeechFTError(
                f"the espeak-ng worker stopped ({err[-1] if err else 'no message'}); "
                "check `pip show espeakng-loader` and rerun"
            )
        (n,) = struct.unpack("<I", head)
        return self.proc.stdout.read(n)

    def call(self, req: dict, with_pcm: bool = False):
        data = json.dumps(req).encode()
        try:
            self.proc.stdin.write(struct.pack("<I", len(data)) + data)
            self.proc.stdin.flush()
        except BrokenPipeError:
            self._read()  # raises with the worker's last message
        head = json.loads(self._read())
        pcm = self._read() if with_pcm else None
        if not head.get("ok"):
            if head.get("kind") == "voice":
                raise SpeechFTError(
                    f"{head['error']}; pick one from speechft.data.espeak.list_voices() "
                    "(variants: list_voices(variants=True), used as 'en-us+f3')"
                )
            raise SpeechFTError(head.get("error", "espeak-ng failed"))
        return (head, pcm) if with_pcm else head

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.stderr.close()


_lock = threading.Lock()
_worker: _Worker | None = None


def _get_worker() -> _Worker:
    global _worker
    if _worker is None or _worker.pid != os.getpid() or _worker.proc.poll() is not None:
        _worker = _Worker()  # a forked process must not share its parent's pipe
    return _worker


@atexit.register
def _shutdown():
    if _worker is not None and _worker.pid == os.getpid():
        _worker.close()


def synthesize(
    text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50, sample_rate: int = SAMPLE_RATE
) -> SynthResult:
    """Speak `text` with espeak-ng voice `voice` (e.g. "en-us", "en-us+f3", "de", "fr+klatt").

    `rate` in words per minute (80-450), `pitch` 0-100 (50 is the voice's default).
    Returns float32 mono audio resampled from espeak's 22050 Hz to `sample_rate`, and the
    IPA phoneme events with onsets in seconds (pauses dropped). Deterministic: the same
    arguments give the same samples in any process, in any call order.
    """
    if not isinstance(text, str) or not text.strip():
        raise SpeechFTError(f"espeak: text must be a non-empty string, got {text!r}")
    if not isinstance(voice, str) or not voice.strip() or "\0" in voice:
        raise SpeechFTError(f"espeak: voice must be a name like 'en-us' or 'en-us+f3', got {voice!r}")
    for what, value, (lo, hi) in (("rate", rate, RATE_RANGE), ("pitch", pitch, PITCH_RANGE)):
        if not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
            raise SpeechFTError(f"espeak: {what}={value!r} is outside {lo}-{hi}; pass an integer in that range")
    with _lock:
        worker = _get_worker()
        head, pcm = worker.call(
            {"op": "synth", "voice": voice, "text": text, "rate": int(rate), "pitch": int(pitch)}, with_pcm=True
        )
    native = int(head["sample_rate"])
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    if audio.size == 0:
        raise SpeechFTError(
            f"espeak: voice '{voice}' produced no audio for {text[:40]!r}; check the text is speakable in that language"
        )
    audio = resample(audio, native, sample_rate)
    phonemes = [(ipa, round(sample / native, 6)) for ipa, sample in head["phonemes"] if ipa]
    return SynthResult(audio=audio, sample_rate=sample_rate, phonemes=phonemes)


def list_voices(variants: bool = False) -> list[Voice]:
    """espeak-ng's languages (use `languages[0]` as a voice name), or with `variants=True`
    the voice variants (append as `+name`, e.g. 'en-us+f3', 'en-us+klatt')."""
    with _lock:
        head = _get_worker().call({"op": "voices", "spec": "variant" if variants else None})
    return [Voice(v["name"], v["identifier"], tuple(v["languages"]), v["gender"]) for v in head["voices"]]


def variant_names() -> list[str]:
    """Names to append after '+' (e.g. 'f3', 'klatt'): the identifiers of the variant voices."""
    return sorted(v.identifier.split("/", 1)[-1] for v in list_voices(variants=True))


def check_voice(voice: str) -> bool:
    """True if espeak-ng accepts `voice` (some older spellings such as 'en-sc' are refused)."""
    try:
        synthesize("a", voice=voice)
        return True
    except SpeechFTError as e:
        if "refused" in str(e):
            return False
        raise


def is_isolated() -> bool:
    """False on platforms without fork (Windows): then clips depend slightly on call order."""
    with _lock:
        return _get_worker().isolated
