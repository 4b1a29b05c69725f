"""The synthetic speaker-verification task (`asv`): the train split teaches speakers, dev and test are trials
between voices that never speak in train.

Speakers are espeak-ng voices (a voice variant with an accent). Train: N_ASV_TRAIN voices from the train
variants; dev and test: every dev (test) variant with N_ASV_HELD_ACCENTS accents each, so a trial pair
of one variant in two accents is a different-speaker trial that timbre alone does not decide. Clips are
augmented as sid's (random channel, noise, gain, rate, pitch, 1.5-2.5 s crops) and no sentence is
spoken in two splits. Trials (`dev_trials.txt`, `test_trials.txt`, VoxCeleb's veri_test2.txt format)
are every pair of the split's clips, or a seeded sample of MAX_TRIALS of them for bigger sizes, with
all same-speaker pairs kept.
"""

from __future__ import annotations

import numpy as np

from . import synth_text as T
from .synth_clips import Clip

N_ASV_TRAIN, N_ASV_HELD_ACCENTS = 24, 2
MAX_TRIALS = 4000


def plan_asv(plan, size, seed: int, voices) -> None:
    from .synth_plan import ACCENTS, SPLITS, _aug, _voice, speaker_name

    rng = np.random.default_rng([seed, 8])
    train_variants = voices.variants["train"]
    picked = [train_variants[i] for i in rng.permutation(len(train_variants))[:N_ASV_TRAIN]]
    per_split = {"train": [("espeak-ng", _voice(ACCENTS[int(rng.integers(len(ACCENTS)))], v)) for v in picked]}
    for split in ("dev", "test"):
        per_split[split] = [
            ("espeak-ng", _voice(ACCENTS[int(a)], v))
            for v in voices.variants[split]
            for a in rng.choice(len(ACCENTS), size=N_ASV_HELD_ACCENTS, replace=False)
        ]
    used: set[str] = set()
    for split, n in zip(SPLITS, size.asv_per_voice):
        speakers = per_split[split]
        texts = T.sentences(rng, n * len(speakers), exclude=used)
        used.update(texts)
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
            spk = speaker_name(engine, voice)
            row = {"label": spk, "speaker": spk, "text": text}  # dev/test: the trials are what is scored
            plan.add("asv", split, "asv", f"{split}-{i:05d}", clip, dict(row, rate=clip.rate, pitch=clip.pitch))


def trial_lines(rows: list[dict], seed: int, split: str) -> str:
    """veri_test2.txt-style trials over a split's rows: `1|0 PATH_A PATH_B` per line."""
    pairs = [(i, j) for i in range(len(rows)) for j in range(i + 1, len(rows))]
    same = [rows[i]["speaker"] == rows[j]["speaker"] for i, j in pairs]
    if len(pairs) > MAX_TRIALS:
        rng = np.random.default_rng([seed, 9, len(split)])
        targets = [p for p, s in zip(pairs, same) if s]
        others = [p for p, s in zip(pairs, same) if not s]
        keep = [others[k] for k in sorted(rng.permutation(len(others))[: max(0, MAX_TRIALS - len(targets))])]
        pairs = sorted(targets + keep)
    lines = [f"{int(rows[i]['speaker'] == rows[j]['speaker'])} {rows[i]['path']} {rows[j]['path']}" for i, j in pairs]
    return "\n".join(lines) + "\n"
