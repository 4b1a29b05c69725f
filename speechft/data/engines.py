"""Optional speech synthesisers for the synthetic benchmark, used when present on the machine.

espeak-ng (pip, `speechft.data.espeak`) is always there; these add voices of other kinds:

- flite (Debian/Ubuntu `apt install flite`): awb, rms and slt are statistical parametric
  voices trained on real speakers, kal16 a diphone voice. Deterministic; phones from `-ps`.

An engine has `name`, `version`, `voices()` and `synthesize(clip) -> (audio float32 16 kHz,
[(phone IPA, onset seconds or None)])`. Nothing here is needed for the benchmark to work:
a missing engine is skipped and the benchmark README lists the engines that were used.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..errors import SpeechFTError
from .audio import SAMPLE_RATE, load_audio

# CMU/ARPAbet (flite's phone set) -> the benchmark's IPA phone inventory (synth_text.PHONES).
ARPABET_TO_IPA = {
    "aa": "ɑ",
    "ae": "æ",
    "ah": "ʌ",
    "ao": "ɔ",
    "aw": "aʊ",
    "ax": "ə",
    "ay": "aɪ",
    "b": "b",
    "ch": "tʃ",
    "d": "d",
    "dh": "ð",
    "eh": "ɛ",
    "er": "ɝ",
    "ey": "eɪ",
    "f": "f",
    "g": "ɡ",
    "hh": "h",
    "ih": "ɪ",
    "iy": "i",
    "jh": "dʒ",
    "k": "k",
    "l": "l",
    "m": "m",
    "n": "n",
    "ng": "ŋ",
    "ow": "oʊ",
    "oy": "ɔɪ",
    "p": "p",
    "r": "ɹ",
    "s": "s",
    "sh": "ʃ",
    "t": "t",
    "th": "θ",
    "uh": "ʊ",
    "uw": "u",
    "v": "v",
    "w": "w",
    "y": "j",
    "z": "z",
    "zh": "ʒ",
}


class Flite:
    name = "flite"
    # kal (8 kHz) is the same speaker as kal16 and awb_time a limited-domain voice: left out.
    VOICES = ("awb", "kal16", "rms", "slt")

    def __init__(self, exe: str):
        self.exe = exe
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
        found = re.search(r"version:\s*(.+?)\s*(\(|$)", out.stdout + out.stderr, re.M)
        self.version = found.group(1) if found else "flite (version unknown)"  # e.g. "flite-2.2-current Sep 2018"
        listed = subprocess.run([exe, "-lv"], capture_output=True, text=True, timeout=30).stdout.split()
        self._voices = [v for v in self.VOICES if v in listed]

    def voices(self) -> list[str]:
        return list(self._voices)

    def synthesize(self, clip) -> tuple[np.ndarray, list[tuple[str, float | None]]]:
        # rate in words/minute like espeak (175 = the voice's own speed); pitch 0-100 around 50
        # becomes a multiplicative F0 shift of 0.71-1.41, as espeak's pitch parameter roughly does.
        stretch = 175.0 / clip.rate
        shift = 2.0 ** ((clip.pitch - 50) / 100.0)
        with tempfile.TemporaryDirectory(prefix="speechft-flite-") as d:
            wav = Path(d) / "out.wav"
            cmd = [
                self.exe,
                "-voice",
                clip.voice,
                "--setf",
                f"duration_stretch={stretch:.4f}",
                "--setf",
                f"f0_shift={shift:.4f}",
                "-ps",
                "-t",
                clip.text,
                "-o",
                str(wav),
            ]
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if res.returncode != 0 or not wav.exists():
                raise SpeechFTError(
                    f"flite failed for voice '{clip.voice}' text {clip.text[:40]!r}: "
                    f"{(res.stderr or res.stdout).strip()[:200]}"
                )
            audio = load_audio(wav, SAMPLE_RATE)
        phones = [(ARPABET_TO_IPA[p], None) for p in res.stdout.split() if p in ARPABET_TO_IPA]
        return audio, phones


def available_engines(names=None) -> list:
    """Optional engines installed here (restricted to `names` if given)."""
    out = []
    exe = shutil.which("flite")
    if exe and (names is None or "flite" in names):
        try:
            eng = Flite(exe)
            if eng.voices():
                out.append(eng)
        except (OSError, subprocess.SubprocessError):
            pass  # a broken install is the same as none: the benchmark uses espeak-ng only
    return out
