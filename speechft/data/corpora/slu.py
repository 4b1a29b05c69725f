"""Audio SNIPS slot filling (SUPERB SF), laid out as s3prl's SNIPS reader expects it.

    ROOT/all.iob.snips.txt                      one line per utterance:
        {Speaker}-snips-{split}-{n} BOS w1 ... wn EOS<TAB>O t1 ... tn Intent
    ROOT/train/**/{Speaker}-snips-train-{n}.wav  (and valid/, test/)

(s3prl: s3prl/dataio/corpus/snips.py and problem/asr/superb_sf.py, SUPERB's SF recipe; the audio is the
Amazon-Polly synthesis of the SNIPS NLU benchmark by aws-samples/aws-lex-noisy-spoken-language-understanding.)
Splits are by voice, as SUPERB's: train speakers Ivy Joanna Joey Justin Kendra Kimberly Matthew Salli,
dev Aditi Amy Geraint Nicole, test Brian Emma Raveena Russell. A tag t_i is the slot type of word i or O;
consecutive words of one type are one slot (a `B-`/`I-` prefixed tag, where a file has them, is read as
its type, a `B-` starting a new slot). The transcript becomes SUPERB's character-slot form
`... B-type words E-type ...` (task tokenizer `slots`), with s3prl's text clean-up: letters folded to
unaccented upper case, `&` read as AND, punctuation-only words dropped with their tags.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from ...errors import SpeechFTError
from ..manifest import read_text_file
from .common import Prepared, need_path, rows_with_durations

SNIPS_SPEAKERS = {
    "train": ("Ivy", "Joanna", "Joey", "Justin", "Kendra", "Kimberly", "Matthew", "Salli"),
    "dev": ("Aditi", "Amy", "Geraint", "Nicole"),
    "test": ("Brian", "Emma", "Raveena", "Russell"),
}
SNIPS_FOLDERS = {"train": "train", "dev": "valid", "test": "test"}
_PUNCT = set("?!.,;-–…")


def _fold(word: str) -> str:
    word = word.replace("&", "AND").replace("–", "-")
    word = unicodedata.normalize("NFKD", word)
    return "".join(c for c in word if not unicodedata.combining(c)).upper()


def snips_transcript(words: list[str], tags: list[str]) -> str:
    """Words and their slot tags -> `WAKE ME AT B-time SEVEN AM E-time`."""
    out: list[str] = []
    kept = [(_fold(w), t) for w, t in zip(words, tags) if w and not set(w) <= _PUNCT]
    kinds = [None if t == "O" else re.sub(r"^[BI]-", "", t) for _, t in kept]
    for i, ((word, tag), kind) in enumerate(zip(kept, kinds)):
        if kind and (i == 0 or kinds[i - 1] != kind or tag.startswith("B-")):
            out.append(f"B-{kind}")
        out.append(word)
        nxt = kept[i + 1][1] if i + 1 < len(kept) else "O"
        if kind and (i + 1 == len(kept) or kinds[i + 1] != kind or nxt.startswith("B-")):
            out.append(f"E-{kind}")
    return " ".join(out)


def _read_iob(path: Path) -> dict[str, str]:
    out = {}
    for lineno, line in enumerate(read_text_file(path).splitlines(), 1):
        if not line.strip():
            continue
        uid, _, rest = line.strip().partition(" ")
        text, tab, tagged = rest.partition("\t")
        words, tags = text.split()[1:-1], tagged.split()[1:-1]  # drop BOS/EOS and the BOS tag / the intent
        if not tab or len(words) != len(tags):
            raise SpeechFTError(
                f"{path}:{lineno}: expected 'ID BOS words EOS<TAB>O tags INTENT' with one tag per word, "
                f"got {line.strip()[:80]!r}"
            )
        out[uid] = snips_transcript(words, tags)
    return out


def audio_snips(root: Path, stage: Path) -> Prepared:
    iob = need_path(root / "all.iob.snips.txt", "Audio SNIPS' transcripts all.iob.snips.txt in --root")
    transcripts = _read_iob(iob)
    notes = [
        "Audio SNIPS slot filling as SUPERB's SF: splits by voice (train "
        + ", ".join(f"{s}: {' '.join(v)}" for s, v in SNIPS_SPEAKERS.items())
        + "); transcripts in SUPERB's character-slot form (B-type ... E-type around each slot value), "
        "upper case, accents folded; metric slot-type F1 (SUPERB's checkpoint choice), slot-value CER also reported."
    ]
    splits = {}
    for split, folder in SNIPS_FOLDERS.items():
        base = need_path(root / folder, f"Audio SNIPS' {folder}/ folder of wav files in --root")
        items, unlabelled = [], 0
        for wav in sorted(base.rglob("*.wav")):
            speaker = wav.stem.split("-")[0]
            if speaker not in SNIPS_SPEAKERS[split]:
                continue
            if wav.stem not in transcripts:
                unlabelled += 1
                continue
            items.append((wav, {"transcript": transcripts[wav.stem], "speaker": speaker}))
        if unlabelled:
            notes.append(f"{folder}: {unlabelled} wav file(s) with no line in all.iob.snips.txt skipped")
        splits[split] = rows_with_durations(items, root, "audio", f"Audio SNIPS {split}", notes)
    texts = [r["transcript"] for rows in splits.values() for r in rows]
    markers = sorted({w for t in texts for w in t.split() if re.match(r"^[BE]-", w)})
    chars = sorted({c for t in texts for w in t.split() if not re.match(r"^[BE]-", w) for c in w})
    spec = {
        "name": "sf",
        "type": "ctc",
        "metric": "slot_type_f1",
        "tokenizer": "slots",
        "vocabulary": ["|", *chars, *markers],
    }
    return Prepared(spec, splits, {"audio": root}, notes)
