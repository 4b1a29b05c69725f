"""Manifests: the one reader of the TSV files that list audio.

Three things in speechft are "a TSV that lists audio": a task folder's train/dev/test.tsv
(`speechft.data.tasks`), `speechft pretrain --audio LIST` and `speechft analyze --audio
LIST`. They all go through `read_manifest`, so they share one set of rules:

- the file is UTF-8 text (an error names the byte offset) without NUL bytes;
- fields are tab-separated, no quoting; blank lines are skipped; the first row is the header
  (names stripped of spaces) and must hold the `required` columns;
- every row has as many fields as the header;
- `path` is relative to the manifest's folder (or absolute); with `outside` set, a path that
  leaves the folder (absolute, or `..` after normalisation - checked lexically, so a folder may
  symlink a shared audio cache) is refused; the stripped path is the row's id and must be unique;
- `duration` (where the header has it) is a positive finite number of seconds;
- the audio file exists;
- at least one row below the header.

Problems with rows are collected and reported as one line,
``FILE: line N: ...; line M: ... (and K more)``, naming the column that is wrong, so one
run shows what to fix; nothing is returned from a manifest with any bad row.

Entry points:

- `read_manifest(path, required, ...) -> list[ManifestRow]`: the general reader (task folders);
- `read_audio_list(path, durations=...) -> list[AudioItem]`: an audio list, a TSV with a `path`
  column and an optional `duration` column (what `--audio LIST` names).

No other module in speechft/ parses a TSV manifest (tests/test_architecture.py checks it).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ..errors import SpeechFTError

# How many row problems one error line shows before "(and N more)".
SHOWN_PROBLEMS = 3
AUDIO_LIST_HINT = (
    "an audio list needs a header row with a 'path' column (tab-separated; 'duration' optional), then one clip per line"
)


@dataclass(frozen=True)
class ManifestRow:
    line: int  # line number in the file (1 = the header), for error messages
    id: str  # the path column as written, stripped: the row's identity
    path: Path  # the audio file: the manifest's folder joined with the path column
    duration: float | None  # seconds; None where the header has no duration column
    columns: dict[str, str]  # every column by header name, as written (path and duration included)


class AudioItem(NamedTuple):
    """One clip of an audio list. A tuple, because `analyze` unpacks (id, path, duration)."""

    id: str
    path: Path
    duration: float | None


def read_text_file(path: Path) -> str:
    """A UTF-8 text file, refusing what is not text (a NUL byte, invalid UTF-8) with the byte offset."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpeechFTError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    if "\0" in text:
        raise SpeechFTError(f"{path}: contains a NUL byte (at character {text.index(chr(0))}); it is not a text file")
    return text


def _table(path: Path, text: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank line."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        # line_num, not a count of rows: blank lines are skipped but an error must name the real line
        return [(reader.line_num, row) for row in reader if row and any(c.strip() for c in row)]
    except csv.Error as e:
        raise SpeechFTError(
            f"{path}: not a tab-separated manifest ({e}); one row per line, fields separated by tabs"
        ) from None


def _escapes(rel: str) -> bool:
    norm = os.path.normpath(rel)
    return os.path.isabs(rel) or norm == ".." or norm.startswith(".." + os.sep)


def _parse_duration(value: str) -> float:
    duration = float(value)
    if not 0 < duration < math.inf:
        raise ValueError(value)
    return duration


class _Rows:
    """Validates rows one at a time, remembering ids (for duplicates) and the problems found."""

    def __init__(self, path: Path, header: list[str], outside: str | None, check):
        self.path, self.header, self.outside, self.check = path, header, outside, check
        self.seen: dict[str, int] = {}
        self.problems: list[str] = []

    def row(self, lineno: int, fields: list[str]) -> ManifestRow | None:
        problem, row = self._validate(lineno, fields)
        if problem:
            self.problems.append(f"line {lineno}: {problem}")
        return row

    def _validate(self, lineno: int, fields: list[str]) -> tuple[str | None, ManifestRow | None]:
        if len(fields) != len(self.header):
            return f"{len(fields)} fields, header has {len(self.header)}", None
        columns = dict(zip(self.header, fields))
        rel = columns["path"].strip()
        if not rel:
            return "empty path", None
        if self.outside is not None and _escapes(rel):
            return f"path '{rel}' points outside {self.outside}", None
        if rel in self.seen:
            return f"path '{rel}' repeats line {self.seen[rel]}", None
        self.seen[rel] = lineno
        duration = None
        if "duration" in columns:
            try:
                duration = _parse_duration(columns["duration"])
            except ValueError:
                return f"duration '{columns['duration']}' is not a positive number", None
        row = ManifestRow(lineno, rel, self.path.parent / rel, duration, columns)
        problem = self.check(row) if self.check else None
        if problem:
            return problem, None
        if not row.path.is_file():
            return f"audio file '{rel}' not found", None
        return None, row


def _fail_rows(path: Path, problems: list[str]):
    more = f" (and {len(problems) - SHOWN_PROBLEMS} more)" if len(problems) > SHOWN_PROBLEMS else ""
    raise SpeechFTError(f"{path}: {'; '.join(problems[:SHOWN_PROBLEMS])}{more}")


def read_manifest(
    path: str | os.PathLike,
    required: Sequence[str] = ("path",),
    *,
    hint: str = AUDIO_LIST_HINT,
    what: str = "the manifest",
    outside: str | None = None,
    check: Callable[[ManifestRow], str | None] | None = None,
) -> list[ManifestRow]:
    """Read and validate a TSV manifest (the rules are in the module docstring).

    `required`: header columns that must be present (`path` always is). `hint`: what a
    correct header looks like, appended to the missing-column error. `what`: the manifest
    in words ("the train split") for the error when it lists nothing. `outside`: None
    allows paths outside the manifest's folder; otherwise paths that leave it are refused
    with "points outside {outside}". `check(row)`: the caller's own rule for a row (e.g.
    a label in the vocabulary), returning a problem in words or None; it runs after the
    shared checks, before the audio file's existence is checked.
    """
    path = Path(path)
    rows = _table(path, read_text_file(path))
    if not rows:
        raise SpeechFTError(f"{path}: empty; {hint}")
    header = [h.strip() for h in rows[0][1]]
    missing = [c for c in dict.fromkeys(["path", *required]) if c not in header]
    if missing:
        raise SpeechFTError(f"{path}: missing column(s) {', '.join(missing)} in header {header}; {hint}")
    if len(rows) == 1:
        raise SpeechFTError(f"{path}: {what} has no examples")
    validator = _Rows(path, header, outside, check)
    good = [r for r in (validator.row(lineno, fields) for lineno, fields in rows[1:]) if r is not None]
    if validator.problems:
        _fail_rows(path, validator.problems)
    return good


def header_duration(path: Path) -> float:
    """Seconds of audio according to the file's header (no decoding)."""
    import soundfile as sf

    try:
        return _parse_duration(str(sf.info(str(path)).duration))
    except Exception:  # soundfile raises LibsndfileError / RuntimeError with varying text
        raise ValueError(path) from None


def read_audio_list(path: str | os.PathLike, durations: bool = False) -> list[AudioItem]:
    """The clips of an audio list (`--audio LIST`): a TSV with a `path` column, `duration` optional.

    `durations=True` reads a missing duration from each file's header, so every item has one;
    otherwise it stays None (cheaper when only some clips will be used)."""
    path = Path(path)
    if not path.is_file():
        raise SpeechFTError(f"{path}: audio list not found; pass a .tsv with a 'path' column")
    rows = read_manifest(path, ("path",), hint=AUDIO_LIST_HINT, what="the audio list")
    items, problems = [], []
    for row in rows:
        duration = row.duration
        if duration is None and durations:
            try:
                duration = header_duration(row.path)
            except ValueError:
                problems.append(f"line {row.line}: no positive duration in the header of '{row.id}'; add a duration")
                continue
        items.append(AudioItem(row.id, row.path, duration))
    if problems:
        _fail_rows(path, problems)
    return items
