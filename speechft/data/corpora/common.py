"""What every corpus reader shares: the `Prepared` result, path checks, audio durations, stable hashing
and the switch for progress bars."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import SpeechFTError

# Whether readers draw progress bars (`speechft data prepare --quiet` turns them off). A context
# variable rather than a parameter of every reader: a reader's parameters are its corpus options,
# which `prepare` checks against CORPORA, and bars are the caller's concern.
_SHOW_PROGRESS: ContextVar[bool] = ContextVar("speechft_corpus_progress", default=True)


@contextmanager
def progress_bars(show: bool):
    token = _SHOW_PROGRESS.set(show)
    try:
        yield
    finally:
        _SHOW_PROGRESS.reset(token)


def progress_bar(items, disable: bool = False, **kwargs):
    from ...progress import progress_bar

    return progress_bar(items, disable=disable or not _SHOW_PROGRESS.get(), **kwargs)


@dataclass
class Prepared:
    spec: dict
    splits: dict[str, list[dict]]
    links: dict[str, Path] = field(default_factory=dict)  # name inside the task folder -> corpus folder
    notes: list[str] = field(default_factory=list)  # README lines: rules, deviations, counts


# ---------------------------------------------------------------------------------------
# small shared helpers
# ---------------------------------------------------------------------------------------
def need_path(path: Path, what: str) -> Path:
    if not path.exists():
        raise SpeechFTError(f"{path}: not found; expected {what}")
    return path


def find_corpus_base(root: Path, marker: str, parents: tuple[str, ...] = ()) -> Path:
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


def rows_with_durations(
    items: list[tuple[Path, dict]], link_root: Path, link: str, desc: str, notes: list[str]
) -> list[dict]:
    """items: (absolute audio path, row fields) -> rows with path/duration; empty files skipped."""
    rows, empty = [], []
    for path, fields in progress_bar(items, desc=desc, unit="file", leave=False, disable=len(items) < 2000):
        dur = audio_duration(path)
        if dur <= 0:
            empty.append(path.name)
            continue
        rel = path.relative_to(link_root).as_posix()
        rows.append({"path": f"{link}/{rel}", "duration": round(dur, 3), **fields})
    if empty:
        notes.append(f"{desc}: skipped {len(empty)} empty audio file(s), e.g. {empty[0]}")
    return rows


def hash_fraction(key: str) -> float:
    """A stable pseudo-random number in [0, 1) per key (same on every machine)."""
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:12], 16) / float(1 << 48)


def char_vocabulary(texts) -> list[str]:
    chars = sorted({c for t in texts for c in t if c != " "})
    return (["|"] if any(" " in t for t in texts) else []) + chars
