"""`speechft data synth`: a deterministic, cached synthetic "mini-SUPERB" made with speech synthesis.

    speechft data synth --out bench/ [--size small|demo|full] [--seed 0] [--tasks pr,asr,ks,sid,lid,style,pr_de]

writes one task folder per task (see `speechft.data.tasks`), all from espeak-ng (plus flite
voices when the `flite` program is installed):

    pr     phoneme recognition: CTC over a 40-phone English inventory (espeak's IPA events)
    asr    character CTC on the same sentences (the same audio as pr)
    ks     keyword spotting: yes no up down left right on off stop go, the ten digits, 'unknown'
    sid    voice identification over 24 voices (8 variants x 3 accents); different sentences in
           train and test, and augmentation (channel EQ, noise 0-20 dB SNR, gain, +-10% rate,
           pitch jitter, 1.5-2.5 s crops)
    lid    language identification over 10 languages (digit strings read as number words)
    style  speaking style: 3 rates x 3 pitch registers (a prosody task - not emotion)
    pr_de  German phoneme recognition: CTC over a 42-phone German inventory, on German sentences
           and digit strings (the new language of the continued pre-training scenario: its
           train audio is the "new-language audio")

Sizes (seed 0, espeak-ng only; hours of audio summed over all tasks and splits, pr and asr
each counted although they share their clips - an encoder probed on every task runs over it all):

    small     684 examples   0.26 h   tests and the quick demo; ~10 s to generate here
    demo    2,092 examples   0.81 h   the full `speechft demo` on 2 CPU cores; ~25 s to generate
    full   20,310 examples  ~7.8 h    thousands per task (hours estimated from the demo's mean
                                      clip lengths); minutes to generate

Voices are espeak-ng accents x voice variants. The variants are split by the seed into
train / dev / test groups: in pr, asr, ks, lid, style and pr_de the dev and test clips are spoken
by variants that never speak in train, so those tasks measure generalisation to new
voices. Sentences come from a word-list grammar (`synth_text`), so nothing is downloaded.

Every clip is a pure function of (engine, engine version, voice, text, rate, pitch,
augmentation incl. its seed) and is cached under that key in
`$SPEECHFT_CACHE/synth` (default ~/.cache/speechft/synth), written atomically: a killed
run resumes where it stopped, a rerun reuses everything, and the same seed gives
byte-identical manifests and audio. The benchmark folder itself appears atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SpeechFTError
from ..io_utils import atomic_dir, atomic_file, cache_root, write_json
from . import synth_text as T
from .audio import SAMPLE_RATE, write_audio
from .tasks import write_task_folder

GENERATOR_VERSION = "speechft-synth 2"  # 2: task pr_de, size demo
CACHE_FORMAT = 2  # bump when the meaning of a cached clip changes
TASKS = ("pr", "asr", "ks", "sid", "lid", "style", "pr_de")
# CTC phone tasks -> the language of their phone inventory (synth_text.INVENTORIES)
PHONE_TASKS = {"pr": "en", "pr_de": "de"}
GERMAN_VOICE = "de"  # espeak-ng has one German accent; the voice variants give the speakers

# espeak-ng English accents (all accepted by espeak_SetVoiceByName in 1.52; 'en-gb' is refused, 'en' is British).
ACCENTS = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc")
# Variants left out: a name with a space, a speed test, unvoiced or heavily distorted voices, and one
# ('Storm') whose file forces the language to en-us, which would break language ID.
EXCLUDED_VARIANTS = {"Mr serious", "fast", "whisper", "whisperf", "Demonic", "UniRobot", "anikaRobot", "Storm"}
# Language ID: label -> espeak voice. All read digit strings as number words in their language.
LANGUAGES = {
    "en": "en-us",
    "de": "de",
    "fr": "fr",
    "es": "es",
    "it": "it",
    "pt": "pt",
    "nl": "nl",
    "sv": "sv",
    "pl": "pl",
    "fi": "fi",
}
# Speaking style classes: espeak rate (words/minute) and pitch (0-100) bands.
STYLE_RATES = {"slow": (115, 135), "normal": (160, 185), "fast": (215, 245)}
STYLE_PITCHES = {"low": (15, 30), "mid": (42, 58), "high": (70, 85)}
KS_RATES = (120, 150, 175, 210, 250)
KS_PITCHES = (25, 40, 50, 60, 75)
N_TEST_VARIANTS, N_DEV_VARIANTS = 8, 6
# sid: 8 voice variants x 3 accents each. Variants differ in timbre, which global spectral statistics
# (and so random-weight features) pick up easily; accents of one variant share the timbre and
# differ in pronunciation, which takes phonetic features to tell apart.
N_SID_VARIANTS, N_SID_ACCENTS = 8, 3

# Augmentation per task. snr: additive white/pink/brown noise, dB range; peak: output peak level
# range (log-uniform: the gain); crop: random window, seconds; pad_to: place the word at a random
# offset in a window of this many seconds (Speech Commands' 1 s clips); eq: a random channel - a
# spectral tilt in this dB/octave range plus one +-9 dB band - so the long-term spectrum varies
# from clip to clip and is not a voice's fingerprint.
AUG = {
    "sentences": {"snr": (20.0, 40.0), "peak": (0.3, 0.9)},
    "ks": {"pad_to": 1.0, "snr": (10.0, 40.0), "peak": (0.1, 0.9)},
    "sid": {"crop": (1.5, 2.5), "eq": (-4.0, 4.0), "snr": (0.0, 20.0), "peak": (0.05, 0.9)},
    "lid": {"snr": (15.0, 40.0), "peak": (0.2, 0.9)},
    "style": {"snr": (5.0, 30.0), "peak": (0.1, 0.9)},
}


@dataclass(frozen=True)
class SizeSpec:
    sentences: tuple[int, int, int]  # pr/asr clips per split (train, dev, test)
    ks_per_word: tuple[int, int, int]  # per keyword; 'unknown' gets twice as many
    sid_per_voice: tuple[int, int, int]
    lid_per_language: tuple[int, int, int]
    style_per_class: tuple[int, int, int]
    sentences_de: tuple[int, int, int]  # pr_de clips per split


SIZES = {
    "small": SizeSpec(
        sentences=(60, 15, 15),
        ks_per_word=(3, 1, 1),
        sid_per_voice=(4, 1, 1),
        lid_per_language=(6, 2, 2),
        style_per_class=(6, 2, 2),
        sentences_de=(40, 10, 10),
    ),
    # The full demo on 2 cores: ~9 encoders each run over all of it, so ~0.8 h in all, with
    # dev and test big enough to measure (>= 45 clips per classification split, >= 40 sentences).
    "demo": SizeSpec(
        sentences=(200, 50, 50),
        ks_per_word=(8, 3, 3),
        sid_per_voice=(10, 3, 3),
        lid_per_language=(20, 5, 5),
        style_per_class=(20, 5, 5),
        sentences_de=(150, 40, 40),
    ),
    "full": SizeSpec(
        sentences=(2400, 300, 300),
        ks_per_word=(110, 15, 15),
        sid_per_voice=(100, 20, 20),
        lid_per_language=(240, 30, 30),
        style_per_class=(260, 35, 35),
        sentences_de=(1500, 200, 200),
    ),
}
SPLITS = ("train", "dev", "test")


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


def _engines(names=None) -> dict:
    """espeak-ng (required) plus the optional engines installed here; `names` restricts them."""
    if names is not None:
        names = [n.strip() for n in names if n.strip()]
        bad = [n for n in names if n not in ENGINES]
        if bad or "espeak-ng" not in names:
            raise SpeechFTError(
                f"--engines {','.join(names)}: choose from {','.join(ENGINES)} (espeak-ng is always needed)"
            )
    engines = {"espeak-ng": _Espeak()}
    from . import engines as optional

    for eng in optional.available_engines(names):
        engines[eng.name] = eng
    missing = [n for n in (names or []) if n not in engines]
    if missing:
        raise SpeechFTError(
            f"--engines: {','.join(missing)} not installed here (flite: apt install flite); drop it from --engines"
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


def _aug(group: str, rng: np.random.Generator) -> tuple:
    spec = dict(AUG[group], seed=int(rng.integers(2**31)))
    return tuple(sorted(spec.items()))


# ------------------------------------------------------------------ voices
def variant_splits(seed: int) -> dict[str, list[str]]:
    """espeak-ng voice variants ('' = the accent's own voice) split train/dev/test by `seed`."""
    from . import espeak

    names = sorted(set(espeak.variant_names()) - EXCLUDED_VARIANTS) + [""]
    rng = np.random.default_rng([seed, 1001])
    names = [names[i] for i in rng.permutation(len(names))]
    test, dev, train = (
        names[:N_TEST_VARIANTS],
        names[N_TEST_VARIANTS : N_TEST_VARIANTS + N_DEV_VARIANTS],
        names[N_TEST_VARIANTS + N_DEV_VARIANTS :],
    )
    return {"train": sorted(train), "dev": sorted(dev), "test": sorted(test)}


def _voice(base: str, variant: str) -> str:
    return f"{base}+{variant}" if variant else base


def speaker_name(engine: str, voice: str) -> str:
    """The manifests' speaker (and sid label): espeak voices by name, others as 'engine:voice'."""
    return voice if engine == "espeak-ng" else f"{engine}:{voice}"


@dataclass
class _Plan:
    """Clips to synthesise and the manifest rows that use them."""

    clips: dict[str, Clip] = field(default_factory=dict)  # "group/name" -> clip
    rows: dict[str, dict[str, list[dict]]] = field(default_factory=dict)  # task -> split -> rows

    def add(self, task: str, split: str, group: str, name: str, clip: Clip, row: dict):
        ref = f"{group}/{name}"
        self.clips[ref] = clip
        self.rows.setdefault(task, {s: [] for s in SPLITS})[split].append(dict(row, path=f"audio/{name}.wav", _ref=ref))


class _Voices:
    """Voice pools shared by the planners; external engines add their voices here."""

    def __init__(self, seed: int, engines: dict):
        self.variants = variant_splits(seed)
        # Extra engines' voices: one held out for test (and one for dev when there are 3+).
        self.extra: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
        rng = np.random.default_rng([seed, 1002])
        for name in sorted(engines):
            if name == "espeak-ng":
                continue
            vs = sorted(engines[name].voices())
            vs = [vs[i] for i in rng.permutation(len(vs))]
            n_dev = 1 if len(vs) >= 3 else 0
            held = {"test": vs[:1], "dev": vs[1 : 1 + n_dev], "train": vs[1 + n_dev :]}
            for s in SPLITS:
                self.extra[s] += [(name, v) for v in held[s]]

    def english(self, split: str, rng: np.random.Generator) -> tuple[str, str]:
        """(engine, voice) for an English clip of `split`."""
        extra = self.extra[split]
        if extra and rng.random() < 0.1:
            return extra[int(rng.integers(len(extra)))]
        variant = self.variants[split][int(rng.integers(len(self.variants[split])))]
        return "espeak-ng", _voice(ACCENTS[int(rng.integers(len(ACCENTS)))], variant)


# ------------------------------------------------------------------ planners (one RNG stream each)
def _plan_sentences(plan: _Plan, size: SizeSpec, seed: int, voices: _Voices, tasks: set[str]):
    rng = np.random.default_rng([seed, 1])
    used: set[str] = set()
    for split, n in zip(SPLITS, size.sentences):
        texts = T.sentences(rng, n, exclude=used)
        used.update(texts)
        for i, text in enumerate(texts):
            engine, voice = voices.english(split, rng)
            clip = Clip(
                engine,
                voice,
                text,
                rate=int(round(175 * rng.uniform(0.85, 1.15))),
                pitch=int(rng.integers(35, 66)),
                aug=_aug("sentences", rng),
            )
            name = f"{split}-{i:05d}"
            for task in ("pr", "asr"):
                if task in tasks:
                    plan.add(
                        task,
                        split,
                        "sentences",
                        name,
                        clip,
                        {
                            "transcript": text,
                            "speaker": speaker_name(engine, voice),
                            "text": text,
                            "rate": clip.rate,
                            "pitch": clip.pitch,
                        },
                    )


def _plan_ks(plan: _Plan, size: SizeSpec, seed: int, voices: _Voices):
    rng = np.random.default_rng([seed, 2])
    for split, n in zip(SPLITS, size.ks_per_word):
        items = [(w, w) for w in T.KEYWORDS for _ in range(n)]
        items += [(T.UNKNOWN, T.UNKNOWN_WORDS[int(rng.integers(len(T.UNKNOWN_WORDS)))]) for _ in range(2 * n)]
        for i, (label, word) in enumerate(items):
            engine, voice = voices.english(split, rng)
            clip = Clip(
                engine,
                voice,
                word,
                rate=KS_RATES[int(rng.integers(len(KS_RATES)))],
                pitch=KS_PITCHES[int(rng.integers(len(KS_PITCHES)))],
                aug=_aug("ks", rng),
            )
            plan.add(
                "ks",
                split,
                "ks",
                f"{split}-{i:05d}",
                clip,
                {
                    "label": label,
                    "speaker": speaker_name(engine, voice),
                    "text": word,
                    "rate": clip.rate,
                    "pitch": clip.pitch,
                },
            )


def _sid_voices(seed: int, voices: _Voices) -> list[tuple[str, str]]:
    """N_SID_VARIANTS variants x N_SID_ACCENTS accents (any split: sid is closed-set), plus extra engines'."""
    rng = np.random.default_rng([seed, 1003])
    variants = sorted(v for s in SPLITS for v in voices.variants[s])
    picked = [variants[i] for i in rng.permutation(len(variants))[:N_SID_VARIANTS]]
    out = [
        ("espeak-ng", _voice(ACCENTS[int(a)], v))
        for v in picked
        for a in rng.choice(len(ACCENTS), size=N_SID_ACCENTS, replace=False)
    ]
    return sorted(out + [ev for s in SPLITS for ev in voices.extra[s]])


def _plan_sid(plan: _Plan, size: SizeSpec, seed: int, voices: _Voices):
    rng = np.random.default_rng([seed, 3])
    speakers = _sid_voices(seed, voices)
    used: set[str] = set()
    for split, n in zip(SPLITS, size.sid_per_voice):
        texts = T.sentences(rng, n * len(speakers), exclude=used)
        used.update(texts)  # no sentence is spoken in two splits
        for i, text in enumerate(texts):
            engine, voice = speakers[i % len(speakers)]
            clip = Clip(
                engine,
                voice,
                text,
                rate=int(round(175 * rng.uniform(0.9, 1.1))),
                pitch=int(rng.integers(38, 63)),
                aug=_aug("sid", rng),
            )
            label = speaker_name(engine, voice)
            plan.add(
                "sid",
                split,
                "sid",
                f"{split}-{i:05d}",
                clip,
                {"label": label, "speaker": label, "text": text, "rate": clip.rate, "pitch": clip.pitch},
            )


def _plan_lid(plan: _Plan, size: SizeSpec, seed: int, voices: _Voices):
    rng = np.random.default_rng([seed, 4])
    for split, n in zip(SPLITS, size.lid_per_language):
        variants = voices.variants[split]
        i = 0
        for _ in range(n):
            for label, base in LANGUAGES.items():
                voice = _voice(base, variants[int(rng.integers(len(variants)))])
                text = T.digit_string(rng)
                clip = Clip(
                    "espeak-ng",
                    voice,
                    text,
                    rate=int(rng.integers(165, 211)),
                    pitch=int(rng.integers(35, 66)),
                    aug=_aug("lid", rng),
                )
                plan.add(
                    "lid",
                    split,
                    "lid",
                    f"{split}-{i:05d}",
                    clip,
                    {"label": label, "speaker": voice, "text": text, "rate": clip.rate, "pitch": clip.pitch},
                )
                i += 1


def _plan_german(plan: _Plan, size: SizeSpec, seed: int, voices: _Voices):
    """pr_de: German sentences and digit strings by the German voice with the split's variants."""
    rng = np.random.default_rng([seed, 6])
    used: set[str] = set()
    for split, n in zip(SPLITS, size.sentences_de):
        texts = T.de_utterances(rng, n, exclude=used)
        used.update(texts)  # no utterance is spoken in two splits
        variants = voices.variants[split]
        for i, text in enumerate(texts):
            voice = _voice(GERMAN_VOICE, variants[int(rng.integers(len(variants)))])
            clip = Clip(
                "espeak-ng",
                voice,
                text,
                rate=int(round(175 * rng.uniform(0.85, 1.15))),
                pitch=int(rng.integers(35, 66)),
                aug=_aug("sentences", rng),
            )
            plan.add(
                "pr_de",
                split,
                "sentences_de",
                f"{split}-{i:05d}",
                clip,
                {"transcript": text, "speaker": voice, "text": text, "rate": clip.rate, "pitch": clip.pitch},
            )


def style_labels() -> list[str]:
    return [f"{r}-{p}" for r in STYLE_RATES for p in STYLE_PITCHES]


def _plan_style(plan: _Plan, size: SizeSpec, seed: int, voices: _Voices):
    rng = np.random.default_rng([seed, 5])
    for split, n in zip(SPLITS, size.style_per_class):
        i = 0
        for _ in range(n):
            for rate_name, (r0, r1) in STYLE_RATES.items():
                for pitch_name, (p0, p1) in STYLE_PITCHES.items():
                    engine, voice = (
                        "espeak-ng",
                        _voice(
                            ACCENTS[int(rng.integers(len(ACCENTS)))],
                            voices.variants[split][int(rng.integers(len(voices.variants[split])))],
                        ),
                    )
                    text = T.sentence(rng, max_words=5)
                    clip = Clip(
                        engine,
                        voice,
                        text,
                        rate=int(rng.integers(r0, r1 + 1)),
                        pitch=int(rng.integers(p0, p1 + 1)),
                        aug=_aug("style", rng),
                    )
                    plan.add(
                        "style",
                        split,
                        "style",
                        f"{split}-{i:05d}",
                        clip,
                        {
                            "label": f"{rate_name}-{pitch_name}",
                            "speaker": voice,
                            "text": text,
                            "rate": clip.rate,
                            "pitch": clip.pitch,
                        },
                    )
                    i += 1


# ------------------------------------------------------------------ task specs and READMEs
TASK_INFO = {
    "pr": "Phoneme recognition: CTC over a 40-phone English inventory; targets are espeak-ng's IPA phoneme "
    "events for the voice actually speaking, stress and length marks stripped, mapped by "
    "`speechft.data.synth_text.ESPEAK_TO_PHONE`.",
    "asr": "Character ASR: CTC over lower-case letters and the word separator '|', on the same clips as pr.",
    "ks": "Keyword spotting: 20 keywords (yes no up down left right on off stop go and the ten digits) "
    "and 'unknown' (other words), single words at several rates and pitches, placed at a random "
    "offset in a 1 s window with background noise (10-40 dB SNR).",
    "sid": "Voice identification (closed set): 8 espeak-ng voice variants x 3 accents each (plus flite voices "
    "when installed), so telling voices apart takes pronunciation as well as timbre. Train, dev and test "
    "use different sentences; every clip is augmented (random channel EQ, noise 0-20 dB SNR "
    "white/pink/brown, random gain, +-10% rate, pitch jitter, 1.5-2.5 s random crop) so that voice "
    "identity, not recording conditions or a fixed long-term spectrum, is what is learned.",
    "lid": "Language identification: digit strings (1-3 numbers of up to 4 digits) read as number words by "
    "espeak-ng in each language; mild noise.",
    "style": "Speaking style: 3 speaking rates (slow 115-135, normal 160-185, fast 215-245 words/min) x 3 "
    "pitch registers (espeak pitch low 15-30, mid 42-58, high 70-85), noise 5-30 dB SNR. A prosody "
    "task; it is not emotion recognition.",
    "pr_de": "German phoneme recognition: CTC over a 42-phone German inventory (vowel length kept, stress "
    "stripped); targets are espeak-ng's IPA phoneme events for the German voice, mapped by "
    "`speechft.data.synth_text.ESPEAK_DE_TO_PHONE`. Utterances: sentences from a small German grammar "
    "(gender, case and adjective agreement over a fixed word list) and digit strings read as German "
    "number words. The new language of the continued pre-training scenario: its train audio is the "
    "new-language audio.",
}


def _task_spec(task: str, rows: dict[str, list[dict]]) -> dict:
    if task in PHONE_TASKS:
        inventory = T.INVENTORIES[PHONE_TASKS[task]][0]
        return {
            "name": f"synth_{task}",
            "type": "ctc",
            "metric": "per",
            "tokenizer": "space",
            "vocabulary": list(inventory),
        }
    if task == "asr":
        # The whole alphabet, not just the letters this seed happened to use: the same head fits every seed.
        return {
            "name": "synth_asr",
            "type": "ctc",
            "metric": "cer",
            "tokenizer": "char",
            "vocabulary": ["|"] + [chr(c) for c in range(ord("a"), ord("z") + 1)],
        }
    labels = {
        "ks": list(T.KEYWORDS) + [T.UNKNOWN],
        "lid": list(LANGUAGES),
        "style": style_labels(),
        "sid": sorted({r["label"] for r in rows["train"]}),
    }[task]
    return {"name": f"synth_{task}", "type": "classification", "metric": "accuracy", "labels": labels}


def _task_readme(
    task: str,
    spec: dict,
    rows: dict[str, list[dict]],
    seed: int,
    size: str,
    engines: dict[str, str],
    variants: dict[str, list[str]],
    dropped: Counter,
) -> str:
    lines = [
        f"# synth_{task}",
        "",
        TASK_INFO[task],
        "",
        f"- generator: {GENERATOR_VERSION}; seed {seed}; size {size}",
        "- engines: " + "; ".join(f"{k} {v}" for k, v in sorted(engines.items())),
        f"- type {spec['type']}, metric {spec['metric']}, "
        + (
            f"{len(spec['labels'])} classes"
            if "labels" in spec
            else f"{len(spec['vocabulary'])} tokens ({spec['tokenizer']} tokenizer)"
        ),
        "",
        "| split | clips | hours | voices |",
        "|---|---|---|---|",
    ]
    for s in SPLITS:
        hours = sum(r["duration"] for r in rows[s]) / 3600
        lines.append(f"| {s} | {len(rows[s])} | {hours:.3f} | {len({r['speaker'] for r in rows[s]})} |")
    lines += ["", "## Voices per split", ""]
    for s in SPLITS:
        lines.append(f"- {s}: " + ", ".join(sorted({r["speaker"] for r in rows[s]})))
    if task != "sid":
        lines += ["", "espeak-ng voice variants by split (dev and test variants never speak in train):", ""]
        lines += [f"- {s}: " + ", ".join(v or "(base)" for v in variants[s]) for s in SPLITS]
    if "labels" in spec:
        counts = Counter(r["label"] for r in rows["train"])
        lines += ["", "## Train examples per class", "", ", ".join(f"{c} {counts[c]}" for c in spec["labels"])]
    if task in PHONE_TASKS and dropped:
        lines += [
            "",
            "espeak phoneme events with no inventory phone (dropped): "
            + ", ".join(f"{k} x{v}" for k, v in sorted(dropped.items())),
        ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ main entry
def _check_args(size: str, seed, tasks) -> list[str]:
    if size not in SIZES:
        raise SpeechFTError(f"--size '{size}' is not one of {', '.join(SIZES)}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise SpeechFTError(f"--seed must be a non-negative integer, got {seed!r}")
    chosen = list(TASKS) if not tasks else [t.strip() for t in tasks if t.strip()]
    bad = [t for t in chosen if t not in TASKS]
    if bad or not chosen:
        raise SpeechFTError(f"--tasks: unknown task(s) {bad or chosen}; choose from {','.join(TASKS)}")
    return [t for t in TASKS if t in chosen]


def _make_plan(spec_size: SizeSpec, seed: int, voices: _Voices, chosen: list[str]) -> _Plan:
    plan = _Plan()
    if {"pr", "asr"} & set(chosen):
        _plan_sentences(plan, spec_size, seed, voices, set(chosen))
    for task, planner in (
        ("ks", _plan_ks),
        ("sid", _plan_sid),
        ("lid", _plan_lid),
        ("style", _plan_style),
        ("pr_de", _plan_german),
    ):
        if task in chosen:
            planner(plan, spec_size, seed, voices)
    return plan


def planned_examples(size: str = "small", seed: int = 0, tasks=None, engines=("espeak-ng",)) -> dict:
    """What `synthesize_benchmark` would write, without synthesising anything:
    {task: {split: [row dicts (text, speaker, label or transcript text, rate, pitch)]}}."""
    chosen = _check_args(size, seed, tasks)
    plan = _make_plan(SIZES[size], seed, _Voices(seed, _engines(engines)), chosen)
    return {
        task: {s: [{k: v for k, v in r.items() if k != "_ref"} for r in plan.rows[task][s]] for s in SPLITS}
        for task in chosen
    }


def _link(src: Path, dst: Path):
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed
        shutil.copyfile(src, dst)


def synthesize_benchmark(
    out,
    size: str = "small",
    seed: int = 0,
    tasks=None,
    overwrite: bool = False,
    cache_dir=None,
    engines=None,
    progress: bool = True,
) -> dict:
    """Generate the synthetic benchmark into `out` (one task folder per task); returns the summary.

    `engines`: None uses espeak-ng plus every optional engine installed (flite); a list
    such as ["espeak-ng"] pins them, which keeps a benchmark reproducible across machines.
    """
    chosen = _check_args(size, seed, tasks)
    out = Path(out)
    if out.exists() and not overwrite:
        raise SpeechFTError(f"{out}: output folder already exists; choose another --out or pass --overwrite")
    cache = ClipCache(Path(cache_dir) if cache_dir else default_cache_dir())
    engines = _engines(engines)
    versions = {name: eng.version for name, eng in engines.items()}
    voices = _Voices(seed, engines)
    plan = _make_plan(SIZES[size], seed, voices, chosen)

    results: dict[str, tuple[Path, dict]] = {}
    todo = []
    for ref, clip in sorted(plan.clips.items()):
        key = clip.key(versions[clip.engine])
        got = cache.get(key)
        if got is None:
            todo.append((ref, clip, key))
        else:
            results[ref] = got
    hits = len(results)
    t0 = time.time()
    from tqdm import tqdm

    with (
        tqdm(total=len(plan.clips), initial=hits, desc=f"synth {size}", unit="clip", disable=not progress) as bar,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        # Synthesis (in the engine's own process) overlaps with augmenting and writing the previous clips.
        pending: deque = deque()
        queue = iter(todo)

        def submit_next():
            item = next(queue, None)
            if item is not None:
                pending.append((item, pool.submit(engines[item[1].engine].synthesize, item[1])))

        for _ in range(4):
            submit_next()
        while pending:
            (ref, clip, key), future = pending.popleft()
            submit_next()
            audio, phonemes = future.result()
            if clip.aug:
                audio = augment(audio, dict(clip.aug))
            results[ref] = cache.put(
                key,
                audio,
                {
                    "samples": int(len(audio)),
                    "phonemes": phonemes,
                    "engine": clip.engine,
                    "voice": clip.voice,
                    "text": clip.text,
                },
            )
            bar.update()
    synth_seconds = time.time() - t0

    dropped: dict[str, Counter] = {task: Counter() for task in plan.rows}
    for task, splits in plan.rows.items():
        for s in SPLITS:
            for r in splits[s]:
                _, meta = results[r["_ref"]]
                r["duration"] = round(meta["samples"] / SAMPLE_RATE, 4)
                if task in PHONE_TASKS:
                    phones, unmapped = T.to_phones([p for p, _ in meta["phonemes"]], PHONE_TASKS[task])
                    dropped[task].update(unmapped)
                    if not phones:
                        raise SpeechFTError(f"synth: espeak gave no phonemes for {r['text']!r} ({r['speaker']})")
                    r["transcript"] = " ".join(phones)

    summary = {
        "generator": GENERATOR_VERSION,
        "seed": int(seed),
        "size": size,
        "engines": versions,
        "variants": voices.variants,
        "tasks": {},
    }
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for ref in sorted({r["_ref"] for splits in plan.rows.values() for s in SPLITS for r in splits[s]}):
            _link(results[ref][0], tmp / "audio" / f"{ref}.wav")
        for task in chosen:
            rows = plan.rows[task]
            spec = _task_spec(task, rows)
            group = rows["train"][0]["_ref"].split("/")[0]
            clean = {s: [{k: v for k, v in r.items() if k != "_ref"} for r in rows[s]] for s in SPLITS}
            readme = _task_readme(task, spec, clean, seed, size, versions, voices.variants, dropped[task])
            write_task_folder(
                tmp / task, spec, clean, files={"README.md": readme.encode()}, audio_dir=tmp / "audio" / group
            )
            summary["tasks"][task] = {
                "type": spec["type"],
                "metric": spec["metric"],
                "outputs": len(spec.get("labels") or spec.get("vocabulary")),
                "clips": {s: len(clean[s]) for s in SPLITS},
                "hours": {s: round(sum(r["duration"] for r in clean[s]) / 3600, 4) for s in SPLITS},
                "voices": {s: sorted({r["speaker"] for r in clean[s]}) for s in SPLITS},
            }
        write_json(tmp / "summary.json", summary)
        (tmp / "README.md").write_text(_top_readme(summary))
    summary = dict(
        summary,
        out=str(out),
        cache=str(cache.root),
        clips=len(plan.clips),
        cache_hits=hits,
        synth_seconds=round(synth_seconds, 2),
    )
    return summary


def _top_readme(summary: dict) -> str:
    lines = [
        "# Synthetic mini-SUPERB",
        "",
        "Generated by `speechft data synth` with speech synthesis (no recorded speech). "
        "Every task folder loads with `speechft.data.load_task`; each has its own README.md.",
        "",
        f"- generator: {summary['generator']}; seed {summary['seed']}; size {summary['size']}",
        "- engines: " + "; ".join(f"{k} {v}" for k, v in sorted(summary["engines"].items())),
        "",
        "| task | type | metric | classes/tokens | train | dev | test | hours (train/dev/test) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, t in summary["tasks"].items():
        c, h = t["clips"], t["hours"]
        lines.append(
            f"| {task} | {t['type']} | {t['metric']} | {t['outputs']} | {c['train']} | {c['dev']} | "
            f"{c['test']} | {h['train']:.3f} / {h['dev']:.3f} / {h['test']:.3f} |"
        )
    total = sum(sum(t["hours"].values()) for t in summary["tasks"].values())
    lines.append(
        f"| all | | | | {sum(t['clips']['train'] for t in summary['tasks'].values())} | "
        f"{sum(t['clips']['dev'] for t in summary['tasks'].values())} | "
        f"{sum(t['clips']['test'] for t in summary['tasks'].values())} | {total:.3f} h in all |"
    )
    lines += [
        "",
        "pr and asr share their clips (counted in both rows): an encoder probed on every task runs over "
        "all the hours above.",
        "",
    ]
    lines += [
        "Held-out voice variants (dev/test of pr, asr, ks, lid, style and pr_de never share a variant with train):",
        "",
    ]
    lines += [f"- {s}: " + ", ".join(v or "(base)" for v in summary["variants"][s]) for s in SPLITS]
    lines += [
        "",
        "sid and style are built so that random-weight features do not solve them "
        "(augmentation, different sentences per split); style is prosody, not emotion.",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ CLI
def add_arguments(parser):
    parser.add_argument("--out", required=True, help="folder to create (one task folder per task inside)")
    parser.add_argument(
        "--size",
        default="small",
        choices=list(SIZES),
        help="small: a few hundred clips, seconds (tests, quick demo); demo: ~0.8 h, the full "
        "demo on 2 cores; full: thousands of clips per task",
    )
    parser.add_argument("--seed", type=int, default=0, help="fixes voices, sentences and augmentation")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
    parser.add_argument(
        "--cache-dir", default=None, help="clip cache (default $SPEECHFT_CACHE/synth or ~/.cache/speechft/synth)"
    )
    parser.add_argument(
        "--engines",
        default=None,
        help=f"comma-separated synthesisers from {','.join(ENGINES)} (default: all installed)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def main(args) -> int:
    t0 = time.time()
    s = synthesize_benchmark(
        args.out,
        size=args.size,
        seed=args.seed,
        tasks=args.tasks.split(","),
        overwrite=args.overwrite,
        cache_dir=args.cache_dir,
        engines=args.engines.split(",") if args.engines else None,
    )
    print(f"{'task':6s} {'train':>6s} {'dev':>5s} {'test':>5s} {'hours':>7s}")
    for task, t in s["tasks"].items():
        print(
            f"{task:6s} {t['clips']['train']:6d} {t['clips']['dev']:5d} {t['clips']['test']:5d} "
            f"{sum(t['hours'].values()):7.3f}"
        )
    print(f"{s['clips']} clips ({s['cache_hits']} from the cache {s['cache']}) in {time.time() - t0:.1f} s")
    print(f"wrote {s['out']}")
    return 0
