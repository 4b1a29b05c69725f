"""VoxCeleb1 speaker verification (SUPERB ASV), laid out as s3prl's VoxCeleb1SV reader expects it.

    ROOT/iden_split.txt     `1|2|3 ID/VIDEO/UTT.wav` (VoxCeleb's identification split)
    ROOT/veri_test2.txt     `1|0 ID/VIDEO/UTT.wav ID/VIDEO/UTT.wav` (the cleaned official trials,
                            also published as voxceleb1_test_v2.txt; either name, or --trials)
    ROOT/dev/wav/ID/VIDEO/UTT.wav, ROOT/test/wav/ID/VIDEO/UTT.wav   (the two archives side by side;
                            a merged ROOT/wav/ is accepted too)

As s3prl (s3prl/dataio/corpus/voxceleb1sv.py): the 40 test speakers id10270-id10309 are left out of
training; every other speaker's iden_split lines 1 and 3 are train (1,211 speakers), lines 2 dev; test is
the trial list's clips. s3prl validates on the dev clips by speaker classification; a verification folder
scores trials, so dev trials are built from the dev clips (deterministically: for each clip, one
same-speaker and one different-speaker partner; a deviation, stated in the folder's README).
"""

from __future__ import annotations

from pathlib import Path

from ...errors import SpeechFTError
from ..manifest import read_text_file
from .common import Prepared, hash_fraction, need_path, rows_with_durations

TEST_SPEAKERS = {f"id{n}" for n in range(10270, 10310)}
TRIAL_NAMES = ("veri_test2.txt", "voxceleb1_test_v2.txt")


def _wav_dirs(root: Path, part: str) -> list[Path]:
    dirs = [d for d in (root / part / "wav", root / "wav") if d.is_dir()]
    if not dirs:
        raise SpeechFTError(f"{root / part / 'wav'}: not found; expected VoxCeleb1's {part}/wav/ID/VIDEO/UTT.wav")
    return dirs


def _find(dirs: list[Path], rel: str, listed_in: Path) -> Path:
    for d in dirs:
        if (d / rel).exists():
            return d / rel
    raise SpeechFTError(f"{dirs[0] / rel}: not found (listed in {listed_in.name}); is --root the VoxCeleb1 folder?")


def _trial_file(root: Path, trials) -> Path:
    if trials:
        return need_path(Path(trials), "VoxCeleb1's trial list (lines '1|0 ID/VIDEO/UTT.wav ID/VIDEO/UTT.wav')")
    for name in TRIAL_NAMES:
        if (root / name).exists():
            return root / name
    raise SpeechFTError(f"{root / TRIAL_NAMES[0]}: not found; put VoxCeleb1's trial list in --root or pass --trials")


def _dev_trials(rows: list[dict]) -> list[str]:
    by_speaker: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_speaker.setdefault(r["label"], []).append(i)
    speakers = sorted(by_speaker)
    lines = []
    for i, r in enumerate(rows):
        own = by_speaker[r["label"]]
        if len(own) > 1:
            lines.append(f"1 {r['path']} {rows[own[(own.index(i) + 1) % len(own)]]['path']}")
        if len(speakers) > 1:
            k = int(hash_fraction(r["path"]) * (len(speakers) - 1))
            other = [s for s in speakers if s != r["label"]][k]
            lines.append(f"0 {r['path']} {rows[by_speaker[other][0]]['path']}")
    return lines


def voxceleb1_verification(root: Path, stage: Path, split_file=None, trials=None) -> Prepared:
    split_file = need_path(
        Path(split_file) if split_file else root / "iden_split.txt",
        "VoxCeleb1's identification split iden_split.txt (lines '1 id10001/VIDEO/00001.wav'); put it in --root "
        "or pass --split-file",
    )
    trial_file = _trial_file(root, trials)
    dev_dirs = _wav_dirs(root, "dev")
    items: dict[str, list] = {"train": [], "dev": []}
    for lineno, line in enumerate(read_text_file(split_file).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[0] not in ("1", "2", "3"):
            raise SpeechFTError(f"{split_file}:{lineno}: '{line.strip()}' is not '<1|2|3> ID/VIDEO/UTT.wav'")
        spk = parts[1].split("/")[0]
        if spk in TEST_SPEAKERS:
            continue
        split = "dev" if parts[0] == "2" else "train"
        items[split].append((_find(dev_dirs, parts[1], split_file), {"label": spk, "speaker": spk}))
    test_dirs = _wav_dirs(root, "test")
    raw_trials, test_items = [], {}
    for lineno, line in enumerate(read_text_file(trial_file).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or parts[0] not in ("0", "1"):
            raise SpeechFTError(
                f"{trial_file}:{lineno}: '{line.strip()}' is not '1|0 ID/VIDEO/UTT.wav ID/VIDEO/UTT.wav'"
            )
        for rel in parts[1:]:
            if rel not in test_items:
                test_items[rel] = (_find(test_dirs, rel, trial_file), {"label": rel.split("/")[0]})
                test_items[rel][1]["speaker"] = test_items[rel][1]["label"]
        raw_trials.append(parts)
    notes = [
        "VoxCeleb1 verification as SUPERB's ASV: train on iden_split lines 1 and 3 of the speakers outside "
        "id10270-id10309, test on the trials of " + trial_file.name + "; dev trials built from iden_split "
        "line-2 clips (one same- and one different-speaker partner each; s3prl validates those clips by "
        "classification instead). Metric EER, minDCF (p_target 0.01) also reported."
    ]
    splits = {s: rows_with_durations(v, root, "audio", f"VoxCeleb1 {s}", notes) for s, v in items.items()}
    splits["test"] = rows_with_durations(list(test_items.values()), root, "audio", "VoxCeleb1 test", notes)
    kept = {r["path"] for r in splits["test"]}  # empty audio files are skipped, and so their trials
    test_path = {rel: f"audio/{item[0].relative_to(root).as_posix()}" for rel, item in test_items.items()}
    test_lines = [f"{t[0]} {test_path[t[1]]} {test_path[t[2]]}" for t in raw_trials]
    test_lines = [line for line in test_lines if set(line.split()[1:]) <= kept]
    (stage / "dev_trials.txt").write_text("\n".join(_dev_trials(splits["dev"])) + "\n")
    (stage / "test_trials.txt").write_text("\n".join(test_lines) + "\n")
    spec = {"name": "asv", "type": "verification", "metric": "eer"}
    return Prepared(spec, splits, {"audio": root}, notes)
