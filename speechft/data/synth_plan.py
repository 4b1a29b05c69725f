"""What a synthetic benchmark holds: the size and voice tables, the voice pools, and one planner per task
(each with its own RNG stream, so adding a task never changes another's clips). Planning synthesises
nothing: `planned_examples` shows what `speechft.data.synth.synthesize_benchmark` would write.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import SpeechFTError
from . import synth_slots
from . import synth_text as T
from .synth_clips import Clip, load_engines
from .synth_text_de import de_utterances
from .tasks import SPLITS

TASKS = ("pr", "asr", "ks", "sid", "lid", "style", "pr_de", "sf", "asv", "qbe", "sd")
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
    sf: tuple[int, int, int] = (60, 15, 15)  # slot-filling utterances per split
    asv_per_voice: tuple[int, int, int] = (4, 3, 3)  # speaker-verification clips per voice (synth_speakers)
    qbe_documents: tuple[int, int, int] = (0, 20, 20)  # query-by-example documents (no train; 10 queries each)
    sd: tuple[int, int, int] = (40, 12, 12)  # two-voice diarization recordings per split (synth_speakers)


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
        style_per_class=(20, 10, 15),  # dev 90, test 135: the demo's target (demo.py), whose spread must be small
        sentences_de=(150, 40, 40),
        sf=(90, 40, 40),
        asv_per_voice=(5, 4, 4),
        qbe_documents=(0, 30, 30),
        sd=(48, 40, 40),
    ),
    "full": SizeSpec(
        sentences=(2400, 300, 300),
        ks_per_word=(110, 15, 15),
        sid_per_voice=(100, 20, 20),
        lid_per_language=(240, 30, 30),
        style_per_class=(260, 35, 35),
        sentences_de=(1500, 200, 200),
        sf=(180, 50, 50),  # of the 2,364 utterances the templates make
        asv_per_voice=(60, 10, 10),
        qbe_documents=(0, 200, 200),
        sd=(400, 60, 60),
    ),
}


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
class Plan:
    """Clips to synthesise and the manifest rows that use them."""

    clips: dict[str, Clip] = field(default_factory=dict)  # "group/name" -> clip
    rows: dict[str, dict[str, list[dict]]] = field(default_factory=dict)  # task -> split -> rows

    def add(self, task: str, split: str, group: str, name: str, clip: Clip, row: dict):
        ref = f"{group}/{name}"
        self.clips[ref] = clip
        self.rows.setdefault(task, {s: [] for s in SPLITS})[split].append(dict(row, path=f"audio/{name}.wav", _ref=ref))


class Voices:
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
def _plan_sentences(plan: Plan, size: SizeSpec, seed: int, voices: Voices, tasks: set[str]):
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


def _plan_ks(plan: Plan, size: SizeSpec, seed: int, voices: Voices):
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


def _sid_voices(seed: int, voices: Voices) -> list[tuple[str, str]]:
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


def _plan_sid(plan: Plan, size: SizeSpec, seed: int, voices: Voices):
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


def _plan_lid(plan: Plan, size: SizeSpec, seed: int, voices: Voices):
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


def _plan_german(plan: Plan, size: SizeSpec, seed: int, voices: Voices):
    """pr_de: German sentences and digit strings by the German voice with the split's variants."""
    rng = np.random.default_rng([seed, 6])
    used: set[str] = set()
    for split, n in zip(SPLITS, size.sentences_de):
        texts = de_utterances(rng, n, T.digit_string, exclude=used)
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


def _plan_sf(plan: Plan, size: SizeSpec, seed: int, voices: Voices):
    """sf: tagged assistant commands (synth_slots) read by the split's voices, as pr's sentences."""
    rng = np.random.default_rng([seed, 7])
    used: set[str] = set()
    for split, n in zip(SPLITS, size.sf):
        items = synth_slots.utterances(rng, n, exclude=used)
        used.update(plain for plain, _ in items)  # no utterance is spoken in two splits
        for i, (plain, tagged) in enumerate(items):
            engine, voice = voices.english(split, rng)
            clip = Clip(
                engine,
                voice,
                plain,
                rate=int(round(175 * rng.uniform(0.9, 1.15))),
                pitch=int(rng.integers(35, 66)),
                aug=_aug("sentences", rng),
            )
            row = {"transcript": tagged, "speaker": speaker_name(engine, voice), "text": plain}
            plan.add("sf", split, "sf", f"{split}-{i:05d}", clip, dict(row, rate=clip.rate, pitch=clip.pitch))


def style_labels() -> list[str]:
    return [f"{r}-{p}" for r in STYLE_RATES for p in STYLE_PITCHES]


def _plan_style(plan: Plan, size: SizeSpec, seed: int, voices: Voices):
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


def check_args(size: str, seed, tasks) -> list[str]:
    if size not in SIZES:
        raise SpeechFTError(f"--size '{size}' is not one of {', '.join(SIZES)}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise SpeechFTError(f"--seed must be a non-negative integer, got {seed!r}")
    chosen = list(TASKS) if not tasks else [t.strip() for t in tasks if t.strip()]
    bad = [t for t in chosen if t not in TASKS]
    if bad or not chosen:
        raise SpeechFTError(f"--tasks: unknown task(s) {bad or chosen}; choose from {' '.join(TASKS)}")
    return [t for t in TASKS if t in chosen]


def make_plan(spec_size: SizeSpec, seed: int, voices: Voices, chosen: list[str]) -> Plan:
    from .synth_speakers import plan_asv, plan_qbe, plan_sd  # they import this module's tables

    plan = Plan()
    if {"pr", "asr"} & set(chosen):
        _plan_sentences(plan, spec_size, seed, voices, set(chosen))
    for task, planner in (
        ("ks", _plan_ks),
        ("sid", _plan_sid),
        ("lid", _plan_lid),
        ("style", _plan_style),
        ("pr_de", _plan_german),
        ("sf", _plan_sf),
        ("asv", plan_asv),
        ("qbe", plan_qbe),
        ("sd", plan_sd),
    ):
        if task in chosen:
            planner(plan, spec_size, seed, voices)
    return plan


def planned_examples(size: str = "small", seed: int = 0, tasks=None, engines=("espeak-ng",)) -> dict:
    """What `synthesize_benchmark` would write, without synthesising anything:
    {task: {split: [row dicts (text, speaker, label or transcript text, rate, pitch)]}}."""
    chosen = check_args(size, seed, tasks)
    plan = make_plan(SIZES[size], seed, Voices(seed, load_engines(engines)), chosen)
    return {
        task: {s: [{k: v for k, v in r.items() if not k.startswith("_")} for r in plan.rows[task][s]] for s in SPLITS}
        for task in chosen
    }
