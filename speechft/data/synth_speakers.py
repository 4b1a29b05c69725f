"""The synthetic speaker-verification task (`asv`) and query-by-example task (`qbe`, at the end).

asv: the train split teaches speakers, dev and test are trials between voices that never speak in train.

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


# ------------------------------------------------------------------ query by example (`qbe`)
# Spoken terms: long words outside synth_text's grammar, so a document holds one only where it was put.
QBE_TERMS = (
    "elephant", "umbrella", "volcano", "pineapple", "telescope",
    "dinosaur", "accordion", "kangaroo", "submarine", "avalanche",
)  # fmt: skip


def plan_qbe(plan, size, seed: int, voices) -> None:
    """qbe (no train split): per split, every term spoken once by one query voice, and documents - short
    sentences with a term put in half of them - by the split's other voices (held-out variants)."""
    from .synth_plan import SPLITS, _aug

    rng = np.random.default_rng([seed, 10])
    plan.rows.setdefault("qbe", {s: [] for s in SPLITS})
    for split, n_docs in zip(SPLITS, size.qbe_documents):
        if not n_docs:
            continue
        engine, query_voice = voices.english(split, rng)
        for i, term in enumerate(QBE_TERMS):
            clip = Clip(engine, query_voice, term, rate=160, pitch=50, aug=_aug("lid", rng))
            row = {"role": "query", "speaker": query_voice, "text": term, "term": term}
            plan.add("qbe", split, "qbe", f"{split}-q{i:03d}", clip, row)
        for i in range(n_docs):
            words = T.sentence(rng, max_words=4).split()
            term = QBE_TERMS[(i // 2) % len(QBE_TERMS)] if i % 2 == 0 else ""  # every term, in turn
            if term:
                words.insert(int(rng.integers(len(words) + 1)), term)
            engine, voice = voices.english(split, rng)
            while voice == query_voice:
                engine, voice = voices.english(split, rng)
            clip = Clip(
                engine, voice, " ".join(words), rate=int(rng.integers(150, 200)), pitch=int(rng.integers(35, 66))
            )
            row = {"role": "document", "speaker": voice, "text": clip.text, "term": term}
            plan.add("qbe", split, "qbe", f"{split}-d{i:05d}", clip, row)


def truth_lines(rows: list[dict]) -> str:
    """`QUERY_PATH DOCUMENT_PATH` for every document that holds a query's term."""
    query = {r["term"]: r["path"] for r in rows if r["role"] == "query"}
    return "".join(f"{query[r['term']]} {r['path']}\n" for r in rows if r["role"] == "document" and r["term"])
