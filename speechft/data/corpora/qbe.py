"""QUESST 2014 query by example (SUPERB QbE), laid out as the quesst14Database archive ships it.

    ROOT/Audio/quesst14_NNNNN.wav                 the documents (8 kHz)
    ROOT/dev_queries/quesst14_dev_NNNN.wav, ROOT/eval_queries/quesst14_eval_NNNN.wav
    ROOT/scoring/language_key_utterances.lst      `<prefix>/Audio/quesst14_00001.wav nnenglish` per line
    ROOT/scoring/language_key_dev.lst, language_key_eval.lst   the same for the queries
    ROOT/scoring/groundtruth_quesst14_dev/quesst14_dev.rttm    `LEXEME quesst14_NNNNN ... quesst14_dev_NNNN ...`
    ROOT/scoring/groundtruth_quesst14_eval/quesst14_eval.rttm

As s3prl's quesst14_dtw (SUPERB's QbE), only the English (`nnenglish`) documents and queries are kept; dev
holds the dev queries and test the eval queries, each with every document (the two share them). The
rttm's LEXEME lines say which query occurs in which document. Scoring is MTWV over query-document pairs,
computed in speechft (s3prl runs the QUESST toolkit's score-TWV-Cnxe.sh on the same detections).
"""

from __future__ import annotations

import re
from pathlib import Path

from ...errors import SpeechFTError
from ..manifest import read_text_file
from .common import Prepared, need_path, rows_with_durations

_LEXEME = re.compile(r"LEXEME\s+(quesst14_[0-9]+).*?(quesst14_(dev|eval)_[0-9]+)")


def _english(root: Path, name: str) -> list[Path]:
    lst = need_path(root / "scoring" / name, f"QUESST 2014's language list scoring/{name} in --root")
    out = []
    for lineno, line in enumerate(read_text_file(lst).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise SpeechFTError(f"{lst}:{lineno}: '{line.strip()}' is not 'AUDIO_PATH LANGUAGE'")
        if parts[1] != "nnenglish":
            continue
        rel = parts[0].split("/", 1)[1] if "/" in parts[0] else parts[0]  # the archive's folder name first
        path = root / rel if (root / rel).exists() else root / parts[0]
        out.append(need_path(path, f"the audio listed in scoring/{name}"))
    return out


def _occurrences(root: Path, split: str) -> set[tuple[str, str]]:
    rttm = root / "scoring" / f"groundtruth_quesst14_{split}" / f"quesst14_{split}.rttm"
    need_path(rttm, f"QUESST 2014's {split} ground truth (LEXEME lines)")
    found = set()
    for line in read_text_file(rttm).splitlines():
        m = _LEXEME.match(line.strip())
        if m:
            found.add((m.group(2), m.group(1)))  # (query, document)
    return found


def quesst14(root: Path, stage: Path) -> Prepared:
    docs = _english(root, "language_key_utterances.lst")
    notes = [
        "QUESST 2014 as SUPERB's QbE (s3prl quesst14_dtw): English (nnenglish) documents and queries only; "
        f"{len(docs)} documents shared by dev (dev queries) and test (eval queries); metric MTWV."
    ]
    splits = {"train": []}
    for split, name in (("dev", "dev"), ("test", "eval")):
        queries = _english(root, f"language_key_{name}.lst")
        items = [(q, {"role": "query"}) for q in queries] + [(d, {"role": "document"}) for d in docs]
        rows = rows_with_durations(items, root, "audio", f"QUESST14 {split}", notes)
        splits[split] = rows
        path_of = {Path(r["path"]).stem: r["path"] for r in rows}
        truth = sorted(
            f"{path_of[q]} {path_of[d]}" for q, d in _occurrences(root, name) if q in path_of and d in path_of
        )
        if not truth:
            raise SpeechFTError(f"{root}: no English {name} query occurs in an English document; check the rttm")
        (stage / f"{split}_truth.txt").write_text("\n".join(truth) + "\n")
    spec = {"name": "qbe", "type": "qbe", "metric": "mtwv"}
    return Prepared(spec, splits, {"audio": root}, notes)
