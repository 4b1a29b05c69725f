"""An on-disk cache of frozen-encoder features, so probing extracts each split once.

s3prl runs the frozen encoder again on every training step of every epoch of every
learning rate; the encoder is by far the most expensive part of probing, and its output
does not change. Here features are extracted once per

    (encoder weights, task manifest + the sha256 of every clip, front-end settings, dtype, code version)

and stored as fp16 `.npy` shards that are memory-mapped on reuse.

Layout of one entry (``<root>/<key>/``)::

    meta.json     what the entry holds (the key's fields, shapes, every file's size and sha256)
    *.npy         the arrays
    COMPLETE      written last: the sha256 of meta.json. Its mtime is the entry's last use (LRU).

An entry is written in a temporary folder and renamed into place (`atomic_dir`), so a
killed run never leaves a partial entry under the final name. On open, the marker, the
meta checksum and every file's size and sha256 are checked; anything that does not match
is reported, deleted and rebuilt by the caller, never used. The cache keeps itself under
a size limit by deleting the least recently used entries.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import SpeechFTError
from .io_utils import atomic_dir, cache_root, sha256_file, write_json

# Bump when the layout of an entry changes (old entries are then simply never matched).
CACHE_FORMAT = 1
MARKER = "COMPLETE"
DEFAULT_MAX_GB = 20.0
# Temporary folders of a writer that died are removed once they are this old.
STALE_TMP_SECONDS = 6 * 3600


def default_cache_dir() -> Path:
    return cache_root("features")


def default_max_bytes() -> int:
    gb = os.environ.get("SPEECHFT_CACHE_MAX_GB")
    try:
        return int(float(gb) * 1e9) if gb else int(DEFAULT_MAX_GB * 1e9)
    except ValueError:
        return int(DEFAULT_MAX_GB * 1e9)


def cache_key(fields: dict) -> str:
    """A stable hash of everything the cached features depend on."""
    blob = json.dumps({"cache_format": CACHE_FORMAT, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _warn(msg: str) -> None:
    print(f"speechft: feature cache: {msg}", file=sys.stderr)


# A cache that cannot be written: full disk or quota, read-only mount, no permission.
_CANNOT_WRITE = {
    errno.ENOSPC,
    getattr(errno, "EDQUOT", errno.ENOSPC),
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
}


def write_error(root: Path, e: OSError) -> SpeechFTError | None:
    """The one line for a failed cache write, naming the cache folder (never the hidden temp
    folder the entry was being written in); None when `e` is not about the disk."""
    if e.errno not in _CANNOT_WRITE:
        return None
    return SpeechFTError(
        f"feature cache {root}: {os.strerror(e.errno).lower()} while writing an entry (nothing was kept); "
        "free some space, pass --cache DIR on a writable disk, or --no-cache"
    )


class CacheEntry:
    """A verified entry: `meta` (dict) and memory-mapped arrays by name."""

    def __init__(self, path: Path, meta: dict):
        self.path, self.meta = path, meta

    def array(self, name: str) -> np.ndarray:
        return np.load(self.path / f"{name}.npy", mmap_mode="r", allow_pickle=False)

    @property
    def names(self) -> list[str]:
        return [f[: -len(".npy")] for f in self.meta["files"] if f.endswith(".npy")]


class EntryWriter:
    """Collects arrays for one entry inside its temporary folder."""

    def __init__(self, tmp: Path, root: Path):
        self.tmp, self.root = tmp, root
        self.info: dict = {}

    def add(self, name: str, array: np.ndarray) -> None:
        if "/" in name or name in (MARKER, "meta"):
            raise ValueError(f"bad array name {name!r}")
        try:
            np.save(self.tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
        except OSError as e:
            err = write_error(self.root, e)
            if err is None:
                raise
            raise err from e


class FeatureCache:
    """`root` defaults to $SPEECHFT_CACHE/features (~/.cache/speechft/features);
    `max_bytes` to $SPEECHFT_CACHE_MAX_GB (20 GB)."""

    def __init__(self, root: str | os.PathLike | None = None, max_bytes: int | None = None, verify: bool = True):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.max_bytes = default_max_bytes() if max_bytes is None else int(max_bytes)
        self.verify = verify
        # Entries used by this process are never evicted by it.
        self._protected: set[str] = set()
        # Inside `hold()` (one evaluation, planned beforehand) writing an entry evicts nothing.
        self._holding = False

    # ---- reading --------------------------------------------------------------------
    def open(self, key: str, verify: bool | None = None) -> CacheEntry | None:
        """The verified entry for `key`, or None (missing, or broken: then it is deleted). `verify=False`
        checks sizes but not the sha256 of every file (one that another process has just verified)."""
        path = self.root / key
        if not path.exists():
            return None
        problem = self._check(path, self.verify if verify is None else verify)
        if problem:
            _warn(f"entry {key} is unusable ({problem}); deleting it and extracting again")
            shutil.rmtree(path, ignore_errors=True)
            return None
        with contextlib.suppress(OSError):  # a read-only shared cache is still readable
            os.utime(path / MARKER)  # last use, for LRU eviction
        self._protected.add(key)
        return CacheEntry(path, json.loads((path / "meta.json").read_text()))

    def _check(self, path: Path, verify: bool = True) -> str | None:
        marker, meta_path = path / MARKER, path / "meta.json"
        if not marker.exists():
            return "no completion marker: it was never finished"
        if not meta_path.exists():
            return "meta.json missing"
        meta_bytes = meta_path.read_bytes()
        if marker.read_text().strip() != hashlib.sha256(meta_bytes).hexdigest():
            return "meta.json does not match its checksum"
        try:
            meta = json.loads(meta_bytes)
        except json.JSONDecodeError:
            return "meta.json is not valid JSON"
        if meta.get("key") != path.name:
            return f"meta.json belongs to entry {meta.get('key')}"
        for name, info in meta.get("files", {}).items():
            f = path / name
            if not f.exists():
                return f"{name} missing"
            if f.stat().st_size != info["bytes"]:
                return f"{name} has {f.stat().st_size} bytes, expected {info['bytes']}"
            if verify and sha256_file(f) != info["sha256"]:
                return f"{name} does not match its sha256"
            if name.endswith(".npy"):
                # A forged entry can carry a valid checksum; what it cannot do is hold Python objects
                # and still open as a plain memory-mapped numeric array (np.load never unpickles here).
                try:
                    np.load(f, mmap_mode="r", allow_pickle=False)
                except (ValueError, OSError) as e:
                    return f"{name} is not a plain numeric array ({str(e).splitlines()[0][:80]})"
        return None

    # ---- writing --------------------------------------------------------------------
    @contextmanager
    def write(self, key: str, fields: dict) -> Iterator[EntryWriter]:
        """Write an entry: add arrays to the yielded writer (and `writer.info`); on a clean
        exit the checksums, meta.json and the marker are written and the folder is renamed
        into place. On an exception nothing is left behind; a full, read-only or forbidden
        disk is one line naming the cache folder. Errors of the caller's own work (inside the
        `with`) pass through unchanged."""
        in_body = False
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with atomic_dir(self.root / key, overwrite=True) as tmp:
                writer = EntryWriter(tmp, self.root)
                in_body = True
                yield writer
                in_body = False
                self._finish(tmp, key, fields, writer.info)
        except (OSError, SpeechFTError) as e:
            # atomic_file / atomic_dir turn a full disk into a line, but one naming the temp folder.
            cause = e if isinstance(e, OSError) else e.__cause__
            err = None if in_body or not isinstance(cause, OSError) else write_error(self.root, cause)
            if err is None:
                raise
            raise err from cause
        self._protected.add(key)
        if not self._holding:
            self.evict()

    @contextmanager
    def hold(self, keys) -> Iterator[None]:
        """One evaluation: the entries `keys` are pinned, and nothing is evicted until it ends (the
        evaluation evicted what its plan needed before it started, eval_plan.py)."""
        self._protected.update(keys)
        self._holding, before = True, self._holding
        try:
            yield
        finally:
            self._holding = before

    @staticmethod
    def _finish(tmp: Path, key: str, fields: dict, info: dict) -> None:
        files = {
            p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(tmp.iterdir()) if p.is_file()
        }
        meta = {"key": key, "fields": fields, "created": time.time(), "files": files, **info}
        write_json(tmp / "meta.json", meta)
        (tmp / MARKER).write_text(hashlib.sha256((tmp / "meta.json").read_bytes()).hexdigest() + "\n")

    # ---- housekeeping ---------------------------------------------------------------
    def entries(self) -> list[tuple[Path, float, int]]:
        """(folder, last use, bytes) of every finished entry, oldest first."""
        out = []
        if not self.root.exists():
            return out
        for p in self.root.iterdir():
            if p.is_dir() and not p.name.startswith(".") and (p / MARKER).exists():
                size = sum(f.stat().st_size for f in p.iterdir() if f.is_file())
                out.append((p, (p / MARKER).stat().st_mtime, size))
        return sorted(out, key=lambda e: e[1])

    def size(self) -> int:
        return sum(e[2] for e in self.entries())

    def evict(self, reserve: int = 0, keep=()) -> list[str]:
        """Delete least recently used entries until the cache plus `reserve` bytes (what is about to be
        written) fits `max_bytes`, plus unfinished leftovers of dead writers. Entries this process used, and
        `keep`, are kept."""
        removed = []
        if not self.root.exists():
            return removed
        now = time.time()
        for p in self.root.iterdir():
            unfinished = p.is_dir() and (p.name.startswith(".") or not (p / MARKER).exists())
            if unfinished and now - p.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        for path, _ in self.eviction_plan(reserve, keep):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
        return removed

    def eviction_plan(self, reserve: int = 0, keep=()) -> list[tuple[Path, int]]:
        """(folder, bytes) of the entries `evict(reserve, keep)` would delete, least recently used first."""
        entries = self.entries()
        total, out = sum(e[2] for e in entries), []
        for path, _, size in entries:
            if total + reserve <= self.max_bytes:
                break
            if path.name in self._protected or path.name in keep:
                continue
            out.append((path, size))
            total -= size
        return out

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
