"""The synthetic speaker-verification (`asv`), query-by-example (`qbe`) and diarization (`sd`) tasks.

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


# ------------------------------------------------------------------ speaker diarization (`sd`)
# Three turns of two voices of the split, each turn a short sentence: A, then B starting at a random point
# of A's speech (MIX_OFFSET: a share of it), then a third turn by A or by B (a coin per recording) after a
# pause of MIX_GAP seconds once B has ended. So every recording has a one-speaker start, an overlap, and a
# last turn whose speaker only the voice tells: its timing is the same for both, and with two speakers in
# one order only, timing alone would solve the task (measured: random weights reached the real encoder's
# DER when each recording was A then B). Mixtures longer than MAX_MIX_SECONDS are cut there.
MIX_OFFSET = (0.3, 0.7)
MIX_GAP = (0.1, 0.4)
MAX_MIX_SECONDS = 5.0
MIX_VERSION = 2  # bump when mixing changes what it produces (the mixtures are cached by it); 2: three turns


def plan_sd(plan, size, seed: int, voices) -> None:
    """sd: per split, size.sd recordings of two different voices of that split (held-out variants in dev
    and test), three turns each; the source clips are planned like any clip, the mixtures made by
    `mix_recordings`."""
    from .synth_plan import SPLITS, speaker_name

    rng = np.random.default_rng([seed, 11])
    plan.rows.setdefault("sd", {s: [] for s in SPLITS})
    for split, n in zip(SPLITS, size.sd):
        for i in range(n):
            a = voices.english(split, rng)
            b = voices.english(split, rng)
            while b[1].split("+")[-1] == a[1].split("+")[-1]:  # another voice variant, not just accent
                b = voices.english(split, rng)
            turns = (a, b, (a, b)[int(rng.integers(2))])
            name, refs = f"{split}-{i:05d}", []
            for part, (engine, voice) in zip("abc", turns):
                clip = Clip(engine, voice, T.sentence(rng, max_words=4), rate=int(rng.integers(165, 200)), pitch=50)
                refs.append(f"sd_src/{name}{part}")
                plan.clips[refs[-1]] = clip
            frac = round(float(rng.uniform(*MIX_OFFSET)), 3)
            gap = round(float(rng.uniform(*MIX_GAP)), 3)
            speakers = [speaker_name(*t) for t in turns]
            row = {"speaker": ",".join(speakers[:2]), "text": " | ".join(plan.clips[r].text for r in refs)}
            plan.rows["sd"][split].append(
                dict(row, path=f"audio/{name}.wav", _ref=f"sd/{name}", _mix=(refs, frac, gap, speakers))
            )


def trim(wav: np.ndarray, floor: float = 0.01) -> np.ndarray:
    """The clip without its leading and trailing silence (samples below `floor` x its peak)."""
    loud = np.flatnonzero(np.abs(wav) > floor * max(float(np.abs(wav).max()), 1e-9))
    return wav[loud[0] : loud[-1] + 1] if loud.size else wav[:0]


def mix(turns: list[np.ndarray], frac: float, gap: float, sr: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """(mixture, [(start, end) in seconds of each turn]) of three trimmed turns: the second starts at `frac`
    of the first, the third `gap` seconds after the second ends."""
    a, b, c = (trim(t) for t in turns)
    starts = [0, int(frac * len(a))]
    starts.append(starts[1] + len(b) + int(gap * sr))
    out = np.zeros(max(s + len(t) for s, t in zip(starts, (a, b, c))), dtype=np.float32)
    for s0, t in zip(starts, (a, b, c)):
        out[s0 : s0 + len(t)] += t
    out = out[: int(MAX_MIX_SECONDS * sr)]
    peak = float(np.abs(out).max())
    if peak > 0.9:
        out *= 0.9 / peak
    end = len(out) / sr
    return out, [(min(s0 / sr, end), min((s0 + len(t)) / sr, end)) for s0, t in zip(starts, (a, b, c))]


def mix_recordings(plan, results: dict, cache, versions: dict) -> None:
    """Make (or take from the cache) every sd mixture: results[row _ref] = (wav, meta with its segments)."""
    import hashlib
    import json

    from .audio import SAMPLE_RATE, load_audio

    for rows in plan.rows.get("sd", {}).values():
        for r in rows:
            refs, frac, gap, speakers = r["_mix"]
            keys = [plan.clips[x].key(versions[plan.clips[x].engine]) for x in refs]
            key = hashlib.sha256(json.dumps(["sd-mix", MIX_VERSION, keys, frac, gap]).encode()).hexdigest()
            got = cache.get(key)
            if got is None:
                wav, spans = mix([load_audio(results[x][0]) for x in refs], frac, gap, SAMPLE_RATE)
                meta = {"samples": int(len(wav)), "spans": [list(s) for s in spans]}
                got = cache.put(key, wav, meta)
            results[r["_ref"]] = got
            r["_segments"] = [(s, e, spk) for (s, e), spk in zip(got[1]["spans"], speakers) if e > s]


def rttm_lines(rows: list[dict]) -> str:
    """The split's reference segments as RTTM (recording = the file name without extension)."""
    lines = []
    for r in rows:
        rec = r["path"].rsplit("/", 1)[-1].removesuffix(".wav")
        for start, end, spk in r["_segments"]:
            lines.append(f"SPEAKER {rec} 1 {start:.3f} {end - start:.3f} <NA> <NA> {spk} <NA> <NA>")
    return "\n".join(lines) + "\n"
