"""Readers for the transcribed corpora (CTC tasks and pre-training audio): LibriSpeech, TED-LIUM 3, AISHELL-3."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

from ...errors import SpeechFTError
from ..audio import SAMPLE_RATE, resample, write_audio
from ..manifest import read_text_file
from .common import (
    Prepared,
    char_vocabulary,
    find_corpus_base,
    hash_fraction,
    need_path,
    progress_bar,
    rows_with_durations,
)

# ---------------------------------------------------------------------------------------
# LibriSpeech (SUPERB PR and ASR)
# ---------------------------------------------------------------------------------------
LIBRI_SETS = ("train-clean-100", "dev-clean", "test-clean")


def _libri_root(root: Path, sets) -> Path:
    base = find_corpus_base(root, sets[0], ("LibriSpeech",))
    for s in sets:
        need_path(
            base / s,
            f"the LibriSpeech subset '{s}' (SPEAKER/CHAPTER/*.flac + *.trans.txt); pass --root the "
            "folder holding train-clean-100, dev-clean and test-clean",
        )
    return base


def _libri_utterances(base: Path, subset: str) -> list[tuple[Path, str, str]]:
    """(flac path, speaker, transcript) for every line of every *.trans.txt in a subset."""
    out = []
    trans = sorted((base / subset).glob("*/*/*.trans.txt"))
    if not trans:
        raise SpeechFTError(
            f"{base / subset}: no SPEAKER/CHAPTER/*.trans.txt transcripts found; is this a LibriSpeech subset folder?"
        )
    for t in trans:
        for lineno, line in enumerate(read_text_file(t).splitlines(), 1):
            if not line.strip():
                continue
            utt, _, text = line.partition(" ")
            audio = t.parent / f"{utt}.flac"
            if not audio.exists():
                raise SpeechFTError(f"{audio}: not found, but listed at {t}:{lineno}")
            out.append((audio, utt.split("-")[0], " ".join(text.split())))
    return out


def read_lexicon(paths) -> dict[str, list[str]]:
    """s3prl / LibriSpeech lexicon files, `WORD<tab or space>PH1 PH2 ...`; the first
    pronunciation of a word wins (s3prl's rule, for a deterministic mapping)."""
    lex: dict[str, list[str]] = {}
    for p in paths:
        p = need_path(
            Path(p),
            "a lexicon file with lines 'WORD PH1 PH2 ...' (e.g. s3prl's "
            "librispeech-lexicon-200k-g2p.txt and librispeech-lexicon-allothers-g2p.txt)",
        )
        for lineno, line in enumerate(read_text_file(p).splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise SpeechFTError(
                    f"{p}:{lineno}: '{line.strip()}' has a word but no phones; expected 'WORD PH1 PH2 ...'"
                )
            lex.setdefault(parts[0].upper(), parts[1:])
    if not lex:
        raise SpeechFTError(f"{', '.join(map(str, paths))}: the lexicon is empty")
    return lex


def _libri_from_phone_csv(base: Path, csv_dir: Path, sets) -> dict[str, list[tuple[Path, str, str]]]:
    """s3prl's SuperbPR csvs (id, wav_path, transcription already in phones). wav_path is
    usually absolute on the machine that made them; it is re-rooted at --root by its
    subset folder name."""
    out = {}
    for split, subset in zip(("train", "dev", "test"), sets):
        f = next((csv_dir / n for n in (f"{subset}.csv", f"{split}.csv") if (csv_dir / n).exists()), None)
        if f is None:
            raise SpeechFTError(
                f"{csv_dir / (subset + '.csv')}: not found; --phone-csv needs the SuperbPR csv files "
                f"{', '.join(s + '.csv' for s in sets)} (columns id, wav_path, transcription)"
            )
        with open(f, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = {"wav_path", "transcription"} - set(reader.fieldnames or [])
            if missing:
                raise SpeechFTError(
                    f"{f}: missing column(s) {', '.join(sorted(missing))}; expected id, wav_path, transcription"
                )
            rows = []
            for i, r in enumerate(reader, 2):
                parts = Path(r["wav_path"]).parts
                if subset not in parts:
                    raise SpeechFTError(
                        f"{f}:{i}: wav_path '{r['wav_path']}' does not contain the subset folder '{subset}'"
                    )
                audio = base.joinpath(*parts[parts.index(subset) :])
                if not audio.exists():
                    raise SpeechFTError(f"{audio}: not found (from {f}:{i}); is --root the LibriSpeech folder?")
                rows.append((audio, audio.name.split("-")[0], " ".join(r["transcription"].split())))
        out[split] = rows
    return out


def librispeech(
    root: Path, stage: Path, task: str, lexicon=None, phone_csv=None, sets=LIBRI_SETS, skip_oov: bool = False
) -> Prepared:
    sets = tuple(sets)
    if len(sets) != 3:
        raise SpeechFTError(f"--sets needs three LibriSpeech subsets (train, dev, test), got {list(sets)}")
    base = _libri_root(root, sets)
    notes = [f"LibriSpeech {sets[0]} / {sets[1]} / {sets[2]} as train / dev / test (SUPERB's split)."]
    if task == "pr" and phone_csv:
        utts = _libri_from_phone_csv(base, Path(phone_csv), sets)
        notes.append(f"Phone transcripts taken as they are from the SuperbPR csv files in {phone_csv}.")
    else:
        utts = {split: _libri_utterances(base, s) for split, s in zip(("train", "dev", "test"), sets)}
    if task == "pr" and not phone_csv:
        if not lexicon:
            raise SpeechFTError(
                "librispeech-pr needs --lexicon FILE (word -> phones, e.g. s3prl's "
                "librispeech-lexicon-200k-g2p.txt and librispeech-lexicon-allothers-g2p.txt) or "
                "--phone-csv DIR (s3prl's SuperbPR csv files with phone transcripts)"
            )
        lex = read_lexicon(lexicon)
        dropped = 0
        for split, items in utts.items():
            kept = []
            for audio, spk, text in items:
                oov = [w for w in text.split() if w.upper() not in lex]
                if oov:
                    if not skip_oov:
                        raise SpeechFTError(
                            f"{audio.name}: word '{oov[0]}' is not in the lexicon "
                            f"({', '.join(map(str, lexicon))}); add a lexicon that covers it "
                            "(s3prl's allothers-g2p file covers LibriSpeech) or pass --skip-oov"
                        )
                    dropped += 1
                    continue
                kept.append((audio, spk, " ".join(p for w in text.split() for p in lex[w.upper()])))
            utts[split] = kept
        notes.append(
            f"Words mapped to phones with {', '.join(Path(p).name for p in lexicon)} (first pronunciation "
            f"of a word wins, as in s3prl's G2P); {dropped} utterance(s) with unknown words dropped."
        )
    key = "transcript"
    splits = {
        split: rows_with_durations(
            [(a, {key: t, "speaker": s}) for a, s, t in items], base, "audio", f"LibriSpeech {split}", notes
        )
        for split, items in utts.items()
    }
    texts = [r[key] for rows in splits.values() for r in rows]
    if task == "pr":
        vocab = sorted({p for t in texts for p in t.split()})
        spec = {"name": "pr", "type": "ctc", "metric": "per", "tokenizer": "space", "vocabulary": vocab}
    else:
        spec = {
            "name": "asr",
            "type": "ctc",
            "metric": "wer",
            "tokenizer": "char",
            "vocabulary": char_vocabulary(texts),
        }
    return Prepared(spec, splits, {"audio": base}, notes)


# ---------------------------------------------------------------------------------------
# TED-LIUM 3 ASR (the Speech-FT paper's 10 h subset)
# ---------------------------------------------------------------------------------------
def ted_normalize(text: str) -> str:
    """The Speech-FT reference normalisation: upper case, "word 's" -> "word's", hyphens to
    spaces, only A-Z, apostrophe and space kept."""
    text = text.upper().replace(" '", "'").replace("-", " ")
    return " ".join(re.sub(r"[^ A-Z']", "", text).split())


def _stm_segments(stm: Path):
    for lineno, line in enumerate(stm.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip() or line.startswith(";;"):
            continue
        parts = line.split(None, 6)
        if len(parts) < 6:
            raise SpeechFTError(f"{stm}:{lineno}: expected 'TALK CHANNEL SPEAKER START END <LABEL> TEXT'")
        talk, _, speaker, start, end, _label = parts[:6]
        text = parts[6] if len(parts) > 6 else ""
        try:
            yield talk, speaker, float(start), float(end), text.strip()
        except ValueError:
            raise SpeechFTError(f"{stm}:{lineno}: start/end '{start}' '{end}' are not numbers") from None


def _ted_dir(root: Path, names) -> Path:
    for n in names:
        if (root / n / "stm").is_dir():
            return root / n
    raise SpeechFTError(
        f"{root / names[0] / 'stm'}: not found; expected TED-LIUM 3 (TEDLIUM_release-3 with data/ and "
        "legacy/dev, legacy/test, each holding stm/ and sph/)"
    )


def tedlium3(
    root: Path, stage: Path, hours: float = 10.0, min_seconds: float = 1.0, max_seconds: float = 60.0
) -> Prepared:
    import soundfile as sf

    root = find_corpus_base(root, "legacy", ("TEDLIUM_release-3",))
    dirs = {
        "train": _ted_dir(root, ("data", "train", "legacy/train")),
        "dev": _ted_dir(root, ("legacy/dev", "dev")),
        "test": _ted_dir(root, ("legacy/test", "test")),
    }
    splits: dict[str, list] = {}
    counts = Counter()
    for split, d in dirs.items():
        cap = hours * 3600 if (split == "train" and hours and hours > 0) else float("inf")
        total, rows = 0.0, []
        stms = sorted((d / "stm").glob("*.stm"))
        if not stms:
            raise SpeechFTError(f"{d / 'stm'}: no *.stm files")
        bar = progress_bar(stms, desc=f"TED-LIUM {split}", unit="talk", leave=False)
        for stm in bar:
            if total > cap:
                break
            sph = need_path(d / "sph" / f"{stm.stem}.sph", f"the talk audio for {stm.name}")
            try:
                audio = sf.SoundFile(str(sph))
            except Exception as e:
                raise SpeechFTError(
                    f"{sph}: cannot read this NIST SPHERE file ({str(e).splitlines()[0] if str(e) else e});"
                    " shorten-compressed files must be converted first: sph2pipe -f wav IN OUT"
                ) from None
            with audio:
                sr = audio.samplerate
                for talk, speaker, start, end, text in _stm_segments(stm):
                    dur = end - start
                    if text == "ignore_time_segment_in_scoring":
                        counts["ignored (no transcript)"] += 1
                        continue
                    if not (min_seconds <= dur <= max_seconds):
                        counts[f"outside {min_seconds:g}-{max_seconds:g} s"] += 1
                        continue
                    if "<unk>" in text:
                        counts["containing <unk>"] += 1
                        continue
                    norm = ted_normalize(text)
                    if not norm:
                        counts["empty after normalisation"] += 1
                        continue
                    a, b = int(round(start * sr)), int(round(end * sr))
                    audio.seek(min(a, audio.frames))
                    wav = audio.read(max(0, min(b, audio.frames) - a), dtype="float32", always_2d=True)
                    if (b - a) - len(wav) > 0.25 * sr:  # a few ms past the end happen; more is the wrong audio
                        raise SpeechFTError(
                            f"{sph}: segment {start}-{end} s of {stm.name} runs past the end of the "
                            f"audio ({audio.frames / sr:.1f} s); the .sph does not belong to this .stm "
                            "(TED-LIUM 3 transcripts need TED-LIUM 3 audio)"
                        )
                    wav = resample(wav.mean(axis=1), sr, SAMPLE_RATE)
                    rel = f"segments/{split}/{talk}_{start:09.2f}_{end:09.2f}.wav"
                    write_audio(stage / rel, wav)
                    rows.append(
                        {
                            "path": rel,
                            "duration": round(len(wav) / SAMPLE_RATE, 3),
                            "transcript": norm,
                            "speaker": speaker,
                        }
                    )
                    total += dur
                    if total > cap:  # the reference stops right after the segment that crosses the cap
                        break
        splits[split] = rows
    texts = [r["transcript"] for rows in splits.values() for r in rows]
    train_h = sum(r["duration"] for r in splits["train"]) / 3600
    notes = [
        f"TED-LIUM 3: train from {dirs['train'].relative_to(root)}, dev/test from "
        f"{dirs['dev'].relative_to(root)} / {dirs['test'].relative_to(root)}.",
        f"The Speech-FT rule: segments of {min_seconds:g}-{max_seconds:g} s whose transcript has no <unk>; train "
        f"stops once {hours:g} h are collected ({train_h:.2f} h here). Talks are taken in sorted order (the "
        "reference walks them in file-system order, so its exact subset is not reproducible).",
        "ignore_time_segment_in_scoring segments are left out (they have no transcript). Skipped: "
        + (", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none")
        + ".",
        "Transcripts normalised like the reference: upper case, hyphens to spaces, only A-Z ' and space.",
    ]
    spec = {
        "name": "ted-asr",
        "type": "ctc",
        "metric": "wer",
        "tokenizer": "char",
        "vocabulary": char_vocabulary(texts),
    }
    return Prepared(spec, splits, {}, notes)


# ---------------------------------------------------------------------------------------
# AISHELL-3 (Mandarin; continued pre-training audio + character transcripts)
# ---------------------------------------------------------------------------------------
_PINYIN = re.compile(r"^[a-z]+[1-5]?$")


def aishell3(root: Path, stage: Path, dev_fraction: float = 0.05) -> Prepared:
    root = find_corpus_base(root, "train/content.txt", ("data_aishell3",))
    items: dict[str, list] = {"train": [], "dev": [], "test": []}
    for part in ("train", "test"):
        content = need_path(
            root / part / "content.txt",
            f"AISHELL-3's {part}/content.txt (lines 'SSB00050001.wav<TAB>"
            "广 guang3 州 zhou1 ...') and {part}/wav/SPEAKER/*.wav",
        )
        for lineno, line in enumerate(read_text_file(content).splitlines(), 1):
            if not line.strip():
                continue
            name, _, text = line.partition("\t") if "\t" in line else line.partition(" ")
            name = name.strip()
            # the text alternates characters and their pinyin; keep the characters
            chars = "".join(t for t in text.split() if not _PINYIN.match(t) and t not in ("%", "$"))
            if not chars:
                raise SpeechFTError(f"{content}:{lineno}: no characters in '{line.strip()[:40]}'")
            speaker = name[:7]
            audio = root / part / "wav" / speaker / name
            if not audio.exists():
                raise SpeechFTError(f"{audio}: not found, but listed at {content}:{lineno}")
            split = part if part == "test" else ("dev" if hash_fraction(name) < dev_fraction else "train")
            items[split].append((audio, {"transcript": chars, "speaker": speaker}))
    notes = [
        f"AISHELL-3: train/ split into train and dev ({dev_fraction:.0%} of utterances by a hash of their "
        "name), test/ as test. Transcripts are the Chinese characters of content.txt (pinyin dropped); metric "
        "CER. The train split's audio is what continued pre-training (speechft pretrain) reads."
    ]
    splits = {s: rows_with_durations(v, root, "audio", f"AISHELL-3 {s}", notes) for s, v in items.items()}
    texts = [r["transcript"] for rows in splits.values() for r in rows]
    spec = {
        "name": "aishell3-asr",
        "type": "ctc",
        "metric": "cer",
        "tokenizer": "char",
        "vocabulary": char_vocabulary(texts),
    }
    return Prepared(spec, splits, {"audio": root}, notes)
