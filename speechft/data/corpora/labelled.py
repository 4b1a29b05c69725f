"""Readers for the labelled corpora (classification tasks): VoxCeleb1, IEMOCAP, Speech Commands and
Fluent Speech Commands."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import numpy as np

from ...errors import SpeechFTError
from ..audio import SAMPLE_RATE, resample, write_audio
from ..manifest import read_text_file
from .common import (
    Prepared,
    find_corpus_base,
    hash_fraction,
    need_path,
    rows_with_durations,
)


# ---------------------------------------------------------------------------------------
# VoxCeleb1 speaker identification
# ---------------------------------------------------------------------------------------
def voxceleb1(root: Path, stage: Path, split_file=None) -> Prepared:
    split_file = Path(split_file) if split_file else root / "iden_split.txt"
    need_path(
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
    for lineno, line in enumerate(read_text_file(split_file).splitlines(), 1):
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
    splits = {s: rows_with_durations(v, root, "audio", f"VoxCeleb1 {s}", notes) for s, v in items.items()}
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
    root = find_corpus_base(root, "Session1", ("IEMOCAP_full_release",))
    items: dict[str, list] = {"train": [], "dev": [], "test": []}
    skipped = Counter()
    for n in range(1, 6):
        emo_dir = need_path(
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
                split = "test" if n == fold else ("dev" if hash_fraction(turn) < dev_fraction else "train")
                items[split].append((audio, {"label": label, "speaker": speaker, "emotion": emo}))
    notes = [
        f"IEMOCAP fold {fold}: Session{fold} is the test set; the other four sessions are split into train and "
        f"dev ({dev_fraction:.0%} of utterances by a hash of their name; s3prl uses random_split with seed 0, "
        "not reproducible across versions).",
        "Four classes as in SUPERB: neu, hap (+exc merged in), ang, sad; skipped labels: "
        + (", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) or "none")
        + ".",
    ]
    splits = {s: rows_with_durations(v, root, "audio", f"IEMOCAP {s}", notes) for s, v in items.items()}
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
    noise = need_path(
        root / "_background_noise_",
        "Speech Commands v0.01 (the folder holding yes/, no/, ..., "
        "_background_noise_/, validation_list.txt, testing_list.txt)",
    )
    lists = {}
    for name in ("validation_list.txt", "testing_list.txt"):
        f = need_path(root / name, f"Speech Commands' official {name} (lines 'WORD/HASH_nohash_N.wav')")
        lists[name] = {ln.strip() for ln in read_text_file(f).splitlines() if ln.strip()}
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
        s: rows_with_durations(v, root, "audio", f"Speech Commands {s}", notes)
        for s, v in items.items()
        if v or s != "test"
    }
    links = {"audio": root}
    if test_root:
        test_root = need_path(
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
        splits["test"] = rows_with_durations(test_items, test_root, "test_audio", "Speech Commands test", notes)
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
    root = find_corpus_base(root, "data/train_data.csv", ("fluent_speech_commands_dataset",))
    items: dict[str, list] = {}
    for split, name in (("train", "train_data.csv"), ("dev", "valid_data.csv"), ("test", "test_data.csv")):
        f = need_path(
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
    splits = {s: rows_with_durations(v, root, "audio", f"Fluent {s}", notes) for s, v in items.items()}
    spec = {"name": "ic", "type": "classification", "metric": "accuracy", "labels": labels}
    return Prepared(spec, splits, {"audio": root}, notes)
