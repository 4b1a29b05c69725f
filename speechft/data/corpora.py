"""Readers for the real corpora behind the paper's tasks (used by `speechft data prepare`).

Each reader takes the corpus root and a staging folder and returns a `Prepared`: the
task.yaml spec, the rows of train/dev/test, and where the audio lives. Two ways of
holding audio, chosen per corpus:

- in place: the corpus folder is linked as `audio` inside the task folder (an absolute
  symlink) and manifests say `audio/<path inside the corpus>`. Nothing is copied; moving
  the corpus breaks the link (re-run prepare). Used for LibriSpeech, VoxCeleb1, IEMOCAP,
  Speech Commands, Fluent Speech Commands and AISHELL-3, whose files are already one
  utterance each.
- generated: audio that does not exist as files is written as 16-bit wav into the task
  folder itself: TED-LIUM 3 segments (cut from the talk-long .sph files by the .stm
  times) and the Speech Commands `_silence_` class (1-s slices of `_background_noise_`).

Task names are the keys of SUPERB score configs (speechft/configs/superb_paper.yaml: pr, asr,
sid, er, ks, ic), so `speechft evaluate` scores the folders without renaming; the corpus
and options are recorded under `source` in task.yaml.

Every problem with the corpus is one `SpeechFTError` naming the file that was expected.
The splits and label rules follow s3prl's SUPERB recipes and the Speech-FT reference code;
where this module deviates (stated in each reader and in the folder's README.md) it is to
be deterministic across machines.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import SpeechFTError
from .audio import SAMPLE_RATE, resample, write_audio


@dataclass
class Prepared:
    spec: dict
    splits: dict[str, list[dict]]
    links: dict[str, Path] = field(default_factory=dict)  # name inside the task folder -> corpus folder
    notes: list[str] = field(default_factory=list)  # README lines: rules, deviations, counts


# ---------------------------------------------------------------------------------------
# small shared helpers
# ---------------------------------------------------------------------------------------
def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise SpeechFTError(f"{path}: not found; expected {what}")
    return path


def _find(root: Path, marker: str, parents: tuple[str, ...] = ()) -> Path:
    """The folder holding `marker`: `root` itself or one of root/<parent>."""
    for base in (root, *(root / p for p in parents)):
        if (base / marker).exists():
            return base
    return root


def audio_duration(path: Path) -> float:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SpeechFTError(f"{path}: cannot read the audio header ({msg}); the file is corrupt or not audio") from None
    return info.frames / info.samplerate if info.samplerate else 0.0


def _rows_with_durations(
    items: list[tuple[Path, dict]], link_root: Path, link: str, desc: str, notes: list[str]
) -> list[dict]:
    """items: (absolute audio path, row fields) -> rows with path/duration; empty files skipped."""
    rows, empty = [], []
    for path, fields in tqdm(items, desc=desc, unit="file", leave=False, disable=len(items) < 2000):
        dur = audio_duration(path)
        if dur <= 0:
            empty.append(path.name)
            continue
        rel = path.relative_to(link_root).as_posix()
        rows.append({"path": f"{link}/{rel}", "duration": round(dur, 3), **fields})
    if empty:
        notes.append(f"{desc}: skipped {len(empty)} empty audio file(s), e.g. {empty[0]}")
    return rows


def _hash_fraction(key: str) -> float:
    """A stable pseudo-random number in [0, 1) per key (same on every machine)."""
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:12], 16) / float(1 << 48)


def _char_vocabulary(texts) -> list[str]:
    chars = sorted({c for t in texts for c in t if c != " "})
    return (["|"] if any(" " in t for t in texts) else []) + chars


# ---------------------------------------------------------------------------------------
# LibriSpeech (SUPERB PR and ASR)
# ---------------------------------------------------------------------------------------
LIBRI_SETS = ("train-clean-100", "dev-clean", "test-clean")


def _libri_root(root: Path, sets) -> Path:
    base = _find(root, sets[0], ("LibriSpeech",))
    for s in sets:
        _need(
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
        for lineno, line in enumerate(t.read_text(encoding="utf-8").splitlines(), 1):
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
        p = _need(
            Path(p),
            "a lexicon file with lines 'WORD PH1 PH2 ...' (e.g. s3prl's "
            "librispeech-lexicon-200k-g2p.txt and librispeech-lexicon-allothers-g2p.txt)",
        )
        for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
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
        split: _rows_with_durations(
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
            "vocabulary": _char_vocabulary(texts),
        }
    return Prepared(spec, splits, {"audio": base}, notes)


# ---------------------------------------------------------------------------------------
# VoxCeleb1 speaker identification
# ---------------------------------------------------------------------------------------
def voxceleb1(root: Path, stage: Path, split_file=None) -> Prepared:
    split_file = Path(split_file) if split_file else root / "iden_split.txt"
    _need(
        split_file,
        "VoxCeleb1's official identification split iden_split.txt (lines '1 id10001/VIDEO/00001.wav'; "
        "1 = train, 2 = dev, 3 = test); put it in --root or pass --split-file",
    )
    # s3prl looks in root/*/wav/ (dev and test archives extracted side by side); the merged
    # root/wav/ layout is accepted too.
    wav_dirs = [d for d in [root / "wav", *sorted(root.glob("*/wav"))] if d.is_dir()]
    if not wav_dirs:
        raise SpeechFTError(
            f"{root / 'wav'}: not found; expected VoxCeleb1's wav/ID/VIDEO/UTT.wav (or the dev and test "
            "archives extracted as */wav/) under --root"
        )
    where: dict[str, Path] = {}
    items: dict[str, list] = {"train": [], "dev": [], "test": []}
    names = {"1": "train", "2": "dev", "3": "test"}
    missing = []
    for lineno, line in enumerate(split_file.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[0] not in names:
            raise SpeechFTError(f"{split_file}:{lineno}: '{line.strip()}' is not '<1|2|3> ID/VIDEO/UTT.wav'")
        spk = parts[1].split("/")[0]
        if spk not in where:
            where[spk] = next((d for d in wav_dirs if (d / spk).is_dir()), wav_dirs[0])
        audio = where[spk] / parts[1]
        if not audio.exists():
            missing.append(str(audio))
            continue
        items[names[parts[0]]].append((audio, {"label": spk, "speaker": spk}))
    if missing:
        raise SpeechFTError(
            f"{missing[0]}: not found (listed in {split_file.name}; {len(missing)} listed file(s) "
            "missing in all); is --root the VoxCeleb1 folder with both dev and test audio?"
        )
    notes = [
        "VoxCeleb1 identification with the official iden_split.txt (1 train / 2 dev / 3 test); "
        f"{len(where)} speakers, labels are speaker ids."
    ]
    splits = {s: _rows_with_durations(v, root, "audio", f"VoxCeleb1 {s}", notes) for s, v in items.items()}
    labels = sorted({r["label"] for rows in splits.values() for r in rows})
    spec = {"name": "sid", "type": "classification", "metric": "accuracy", "labels": labels}
    return Prepared(spec, splits, {"audio": root}, notes)


# ---------------------------------------------------------------------------------------
# IEMOCAP emotion recognition
# ---------------------------------------------------------------------------------------
IEMOCAP_CLASSES = ("neu", "hap", "ang", "sad")  # s3prl's order; 'exc' is merged into 'hap'
_EMO_LINE = re.compile(r"^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\s+(Ses\d\d[FM]_\S+)\s+(\w+)")


def iemocap(root: Path, stage: Path, fold: int = 1, dev_fraction: float = 0.2) -> Prepared:
    if int(fold) not in range(1, 6):
        raise SpeechFTError(f"--fold {fold}: IEMOCAP has sessions 1-5; --fold names the session held out as test")
    fold = int(fold)
    root = _find(root, "Session1", ("IEMOCAP_full_release",))
    items: dict[str, list] = {"train": [], "dev": [], "test": []}
    skipped = Counter()
    for n in range(1, 6):
        emo_dir = _need(
            root / f"Session{n}" / "dialog" / "EmoEvaluation",
            f"IEMOCAP's Session{n}/dialog/EmoEvaluation/*.txt label files (pass --root the "
            "IEMOCAP_full_release folder)",
        )
        files = sorted(emo_dir.glob("Ses*.txt"))
        if not files:
            raise SpeechFTError(f"{emo_dir}: no Ses*.txt label files found")
        for f in files:
            for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
                m = _EMO_LINE.match(line)
                if not m:
                    continue
                turn, emo = m.group(3), m.group(4)
                label = "hap" if emo == "exc" else emo
                if label not in IEMOCAP_CLASSES:
                    skipped[emo] += 1
                    continue
                dialog = turn.rsplit("_", 1)[0]
                audio = root / f"Session{n}" / "sentences" / "wav" / dialog / f"{turn}.wav"
                if not audio.exists():
                    raise SpeechFTError(f"{audio}: not found, but labelled in {f}")
                # the speaker of a turn: session + the gender letter of the turn's own suffix
                speaker = f"Ses{n:02d}{turn.rsplit('_', 1)[1][0]}"
                split = "test" if n == fold else ("dev" if _hash_fraction(turn) < dev_fraction else "train")
                items[split].append((audio, {"label": label, "speaker": speaker, "emotion": emo}))
    notes = [
        f"IEMOCAP fold {fold}: Session{fold} is the test set; the other four sessions are split into train and "
        f"dev ({dev_fraction:.0%} of utterances by a hash of their name; s3prl uses random_split with seed 0, "
        "not reproducible across versions).",
        "Four classes as in SUPERB: neu, hap (+exc merged in), ang, sad; skipped labels: "
        + (", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) or "none")
        + ".",
    ]
    splits = {s: _rows_with_durations(v, root, "audio", f"IEMOCAP {s}", notes) for s, v in items.items()}
    spec = {"name": "er", "type": "classification", "metric": "accuracy", "labels": list(IEMOCAP_CLASSES)}
    return Prepared(spec, splits, {"audio": root}, notes)


# ---------------------------------------------------------------------------------------
# Speech Commands v0.01 keyword spotting (SUPERB KS, 12 classes)
# ---------------------------------------------------------------------------------------
KS_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
KS_CLASSES = KS_WORDS + ("_unknown_", "_silence_")


def _write_silence(noise_dir: Path, stage: Path, splits: tuple[str, ...], fractions: tuple[float, ...]) -> dict:
    """Cut each _background_noise_ file into 1-s slices; contiguous blocks of slices go to
    the splits (so no split hears the same stretch of noise as another)."""
    import soundfile as sf

    rows: dict[str, list] = {s: [] for s in splits}
    files = sorted(noise_dir.glob("*.wav"))
    if not files:
        raise SpeechFTError(f"{noise_dir}: no *.wav noise files; the _silence_ class is cut from them")
    for f in files:
        try:
            wav, sr = sf.read(str(f), dtype="float32", always_2d=True)
        except Exception as e:
            raise SpeechFTError(f"{f}: cannot decode audio ({str(e).splitlines()[0] if str(e) else e})") from None
        wav = resample(wav.mean(axis=1), sr, SAMPLE_RATE)
        n = len(wav) // SAMPLE_RATE
        bounds = np.cumsum([0] + [round(n * fr) for fr in fractions[:-1]] + [n])
        bounds[-1] = n
        for split, lo, hi in zip(splits, bounds[:-1], bounds[1:]):
            for k in range(int(lo), int(hi)):
                rel = f"silence/{split}/{f.stem}_{k:03d}.wav"
                write_audio(stage / rel, wav[k * SAMPLE_RATE : (k + 1) * SAMPLE_RATE])
                rows[split].append({"path": rel, "duration": 1.0, "label": "_silence_", "speaker": f.stem})
    return rows


def speech_commands(root: Path, stage: Path, test_root=None) -> Prepared:
    noise = _need(
        root / "_background_noise_",
        "Speech Commands v0.01 (the folder holding yes/, no/, ..., "
        "_background_noise_/, validation_list.txt, testing_list.txt)",
    )
    lists = {}
    for name in ("validation_list.txt", "testing_list.txt"):
        f = _need(root / name, f"Speech Commands' official {name} (lines 'WORD/HASH_nohash_N.wav')")
        lists[name] = {ln.strip() for ln in f.read_text().splitlines() if ln.strip()}
    items: dict[str, list] = {"train": [], "dev": [], "test": []}
    word_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("_"))
    for d in word_dirs:
        label = d.name if d.name in KS_WORDS else "_unknown_"
        for f in sorted(d.glob("*.wav")):
            rel = f"{d.name}/{f.name}"
            split = (
                "dev"
                if rel in lists["validation_list.txt"]
                else "test"
                if rel in lists["testing_list.txt"]
                else "train"
            )
            if split == "test" and test_root:
                continue  # the official SUPERB test set replaces testing_list
            items[split].append((f, {"label": label, "speaker": f.name.split("_nohash_")[0]}))
    notes = [
        "Speech Commands v0.01, SUPERB's 12 classes: 10 words, _unknown_ (every other word), _silence_ (1-s "
        "slices of _background_noise_). train = files in neither list; dev = validation_list.txt; test = "
        + (
            "the official test set in --test-root."
            if test_root
            else "testing_list.txt (pass --test-root speech_commands_test_set_v0.01 for SUPERB's official test set)."
        )
    ]
    missing = [r for r in lists["validation_list.txt"] if not (root / r).exists()]
    if missing:
        raise SpeechFTError(
            f"{root / missing[0]}: listed in validation_list.txt but not found ({len(missing)} missing)"
        )
    splits = {
        s: _rows_with_durations(v, root, "audio", f"Speech Commands {s}", notes)
        for s, v in items.items()
        if v or s != "test"
    }
    links = {"audio": root}
    if test_root:
        test_root = _need(
            Path(test_root), "the Speech Commands v0.01 test set (class folders incl. _silence_, _unknown_)"
        )
        test_items = []
        for d in sorted(x for x in test_root.iterdir() if x.is_dir()):
            if d.name not in KS_CLASSES:
                raise SpeechFTError(
                    f"{d}: class folder '{d.name}' is not one of SUPERB's 12 classes ({', '.join(KS_CLASSES)})"
                )
            test_items += [
                (f, {"label": d.name, "speaker": f.name.split("_nohash_")[0]}) for f in sorted(d.glob("*.wav"))
            ]
        if not test_items:
            raise SpeechFTError(f"{test_root}: no CLASS/*.wav files found")
        splits["test"] = _rows_with_durations(test_items, test_root, "test_audio", "Speech Commands test", notes)
        links["test_audio"] = test_root
        silence = _write_silence(noise, stage, ("train", "dev"), (0.9, 0.1))
    else:
        silence = _write_silence(noise, stage, ("train", "dev", "test"), (0.8, 0.1, 0.1))
    for s, rows in silence.items():
        splits[s] = splits.get(s, []) + rows
    notes.append(
        "s3prl samples classes with inverse-frequency weights during training; these manifests are not "
        "re-balanced (class counts are in this README)."
    )
    spec = {"name": "ks", "type": "classification", "metric": "accuracy", "labels": list(KS_CLASSES)}
    return Prepared(spec, splits, links, notes)


# ---------------------------------------------------------------------------------------
# Fluent Speech Commands intent classification
# ---------------------------------------------------------------------------------------
FSC_SLOTS = ("action", "object", "location")


def fluent(root: Path, stage: Path) -> Prepared:
    root = _find(root, "data/train_data.csv", ("fluent_speech_commands_dataset",))
    items: dict[str, list] = {}
    for split, name in (("train", "train_data.csv"), ("dev", "valid_data.csv"), ("test", "test_data.csv")):
        f = _need(
            root / "data" / name,
            f"Fluent Speech Commands' data/{name} (columns path, speakerId, transcription, action, object, location)",
        )
        with open(f, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = {"path", "speakerId", *FSC_SLOTS} - set(reader.fieldnames or [])
            if missing:
                raise SpeechFTError(f"{f}: missing column(s) {', '.join(sorted(missing))}")
            rows = []
            for i, r in enumerate(reader, 2):
                audio = root / r["path"]
                if not audio.exists():
                    raise SpeechFTError(f"{audio}: not found (listed at {f}:{i})")
                intent = "/".join(r[s].strip() for s in FSC_SLOTS)
                rows.append(
                    (
                        audio,
                        {
                            "label": intent,
                            "speaker": r["speakerId"],
                            **{s: r[s].strip() for s in FSC_SLOTS},
                            "transcription": " ".join(r.get("transcription", "").split()),
                        },
                    )
                )
        items[split] = rows
    labels = sorted({fields["label"] for _, fields in items["train"]})
    for split in ("dev", "test"):
        unseen = sorted({fields["label"] for _, fields in items[split]} - set(labels))
        if unseen:
            raise SpeechFTError(f"{root / 'data'}: intent(s) {unseen[:3]} occur in {split} but never in train_data.csv")
    notes = [
        f"Fluent Speech Commands: intent = action/object/location ({len(labels)} intents in train); SUPERB's IC "
        "accuracy counts an utterance right only when all three slots are, which equals accuracy over these "
        "joint labels. The slots are kept as extra columns."
    ]
    splits = {s: _rows_with_durations(v, root, "audio", f"Fluent {s}", notes) for s, v in items.items()}
    spec = {"name": "ic", "type": "classification", "metric": "accuracy", "labels": labels}
    return Prepared(spec, splits, {"audio": root}, notes)


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

    root = _find(root, "legacy", ("TEDLIUM_release-3",))
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
        bar = tqdm(stms, desc=f"TED-LIUM {split}", unit="talk", leave=False)
        for stm in bar:
            if total > cap:
                break
            sph = _need(d / "sph" / f"{stm.stem}.sph", f"the talk audio for {stm.name}")
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
        "vocabulary": _char_vocabulary(texts),
    }
    return Prepared(spec, splits, {}, notes)


# ---------------------------------------------------------------------------------------
# AISHELL-3 (Mandarin; continued pre-training audio + character transcripts)
# ---------------------------------------------------------------------------------------
_PINYIN = re.compile(r"^[a-z]+[1-5]?$")


def aishell3(root: Path, stage: Path, dev_fraction: float = 0.05) -> Prepared:
    root = _find(root, "train/content.txt", ("data_aishell3",))
    items: dict[str, list] = {"train": [], "dev": [], "test": []}
    for part in ("train", "test"):
        content = _need(
            root / part / "content.txt",
            f"AISHELL-3's {part}/content.txt (lines 'SSB00050001.wav<TAB>"
            "广 guang3 州 zhou1 ...') and {part}/wav/SPEAKER/*.wav",
        )
        for lineno, line in enumerate(content.read_text(encoding="utf-8").splitlines(), 1):
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
            split = part if part == "test" else ("dev" if _hash_fraction(name) < dev_fraction else "train")
            items[split].append((audio, {"transcript": chars, "speaker": speaker}))
    notes = [
        f"AISHELL-3: train/ split into train and dev ({dev_fraction:.0%} of utterances by a hash of their "
        "name), test/ as test. Transcripts are the Chinese characters of content.txt (pinyin dropped); metric "
        "CER. The train split's audio is what continued pre-training (speechft pretrain) reads."
    ]
    splits = {s: _rows_with_durations(v, root, "audio", f"AISHELL-3 {s}", notes) for s, v in items.items()}
    texts = [r["transcript"] for rows in splits.values() for r in rows]
    spec = {
        "name": "aishell3-asr",
        "type": "ctc",
        "metric": "cer",
        "tokenizer": "char",
        "vocabulary": _char_vocabulary(texts),
    }
    return Prepared(spec, splits, {"audio": root}, notes)


# name -> (reader, options it accepts, one-line description)
CORPORA: dict[str, tuple[Callable[..., Prepared], tuple[str, ...], str]] = {
    "librispeech-pr": (
        lambda root, stage, **kw: librispeech(root, stage, "pr", **kw),
        ("lexicon", "phone_csv", "sets", "skip_oov"),
        "LibriSpeech phoneme recognition (SUPERB PR)",
    ),
    "librispeech-asr": (
        lambda root, stage, **kw: librispeech(root, stage, "asr", **kw),
        ("sets",),
        "LibriSpeech character ASR",
    ),
    "voxceleb1-sid": (voxceleb1, ("split_file",), "VoxCeleb1 speaker identification (SUPERB SID)"),
    "iemocap-er": (iemocap, ("fold", "dev_fraction"), "IEMOCAP 4-class emotion recognition (SUPERB ER)"),
    "speechcommands-ks": (speech_commands, ("test_root",), "Speech Commands v0.01 keyword spotting (SUPERB KS)"),
    "fluent-ic": (fluent, (), "Fluent Speech Commands intent classification (SUPERB IC)"),
    "tedlium3-asr": (tedlium3, ("hours", "min_seconds", "max_seconds"), "TED-LIUM 3 ASR, the paper's 10 h subset"),
    "aishell3": (aishell3, ("dev_fraction",), "AISHELL-3 Mandarin: pre-training audio + character transcripts"),
}


def corpus_reader(name: str):
    if name not in CORPORA:
        raise SpeechFTError(f"unknown corpus '{name}'; choose one of {', '.join(CORPORA)}")
    return CORPORA[name]
