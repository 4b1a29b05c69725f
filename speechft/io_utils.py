"""Atomic file and folder writes, hashing and small JSON helpers.

Everything speechft writes goes to a temporary name beside the destination and is
renamed into place, so a killed process never leaves a half-written file under the
final name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import SpeechFTError


def cache_root(kind: str | None = None) -> Path:
    """Where speechft keeps what it can regenerate (synthesized clips, converted default encoders,
    feature caches): `$SPEECHFT_CACHE`, default ~/.cache/speechft; `kind` names the subfolder."""
    root = Path(os.environ.get("SPEECHFT_CACHE") or Path.home() / ".cache" / "speechft").expanduser()
    return root / kind if kind else root


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# A full disk or quota surfaces as one of these while writing (or at fsync/close).
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}


# A folder that cannot be written: a read-only mount, no permission.
READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}
CANNOT_WRITE = _DISK_FULL | READ_ONLY


def write_error(e: BaseException, path: Path, done: str = "nothing was changed") -> SpeechFTError | None:
    """The one line for a write that the disk refused, naming `path` (what the user asked for, never a
    hidden temp name); None when `e` is not about the disk."""
    if not isinstance(e, OSError) or e.errno not in CANNOT_WRITE:
        return None
    full = e.errno in _DISK_FULL
    what = "free some space or write to another folder" if full else "write to a folder you may write to"
    return SpeechFTError(f"{path}: {os.strerror(e.errno).lower()} while writing it ({done}); {what}, then rerun")


def _disk_full(e: BaseException, path: Path) -> SpeechFTError | None:
    return write_error(e, path) if isinstance(e, OSError) and e.errno in _DISK_FULL else None


def _within(e: OSError, folder: Path) -> bool:
    return e.filename is not None and Path(os.fsdecode(e.filename)).is_relative_to(folder)


def check_output_location(out: str | os.PathLike, inputs: dict) -> None:
    """The rule for every command that writes: its output may never be, contain, or lie inside one of
    its inputs (so no --overwrite can delete an input, and no output lands among an input's files).
    `inputs` maps the flag that named each input to a path, a list of paths, or loaded inputs."""
    target = Path(out).resolve()
    for flag, paths in inputs.items():
        for p in _input_paths(paths):
            source = Path(p).resolve()
            if target == source:
                how = "is"
            elif source.is_relative_to(target):
                how = "contains"
            elif target.is_relative_to(source):
                how = "lies inside"
            else:
                continue
            raise SpeechFTError(
                f"--out {out} {how} the input {flag} {p}; write the output to a folder outside every input "
                "(nothing was changed)"
            )


def _input_paths(x) -> list:
    """The paths in an input argument: a path, a list of them, or objects that live in a folder (a loaded
    Task's `root`); in-memory inputs (state dicts, loaded encoders) have none."""
    if isinstance(x, (str, os.PathLike)):
        return [x]
    if isinstance(x, (list, tuple)):
        return [p for item in x for p in _input_paths(item)]
    root = getattr(x, "root", None)
    return [root] if isinstance(root, (str, os.PathLike)) else []


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator:
    """Open a temp file beside `path`; on clean exit fsync and rename it to `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # a read-only folder: named as the file asked for, not the temp name tried
        if (refused := write_error(e, path)) is not None:
            raise refused from e
        raise
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a plain open() would respect the umask
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        refused = write_error(e, path)
        if refused is not None:
            raise refused from e
        raise


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_file(path) as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.write("\n")


def read_json(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise SpeechFTError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise SpeechFTError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); fix or delete the file") from None


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_dead_temps(path: Path) -> list[Path]:
    """Remove the temp folders that killed writers of `path` left beside it.

    atomic_dir names its temp `.NAME.PID@HOST.XXXXXXXX.tmp`; a temp whose writer ran on this
    host and is no longer alive can never be finished, so it is deleted. Temps of live
    processes, of other hosts (shared file systems) and of unknown form are left alone."""
    removed = []
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)@([A-Za-z0-9-]+)\.[A-Za-z0-9_]+\.tmp$")
    host = _host()
    with contextlib.suppress(OSError):
        for p in path.parent.iterdir():
            m = pattern.match(p.name)
            if m and m.group(2) == host and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def is_empty_dir(path: Path) -> bool:
    try:
        return path.is_dir() and not any(path.iterdir())
    except OSError:
        return False


def refuse_existing_output(out: str | os.PathLike, overwrite: bool) -> None:
    """The check every command makes before its work: an existing, non-empty --out needs --overwrite
    (which replaces it only once the new output is complete: atomic_dir)."""
    out = Path(out)
    if out.exists() and not overwrite and not is_empty_dir(out):
        raise SpeechFTError(f"{out}: output folder already exists; choose another --out or pass --overwrite")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside `path`; on clean exit rename it to `path`.

    Refuses an existing `path` unless `overwrite` (then the old folder is replaced only
    once the new one is complete); an existing empty folder is simply filled. Temp folders left
    by killed writers of the same `path` are removed first (`remove_dead_temps`).
    """
    path = Path(path)
    refuse_existing_output(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_temps(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}@{_host()}.", suffix=".tmp", dir=path.parent))
    except OSError as e:  # a read-only folder: named as the output asked for, not the temp name tried
        if (refused := write_error(e, path)) is not None:
            raise refused from e
        raise
    # mkdtemp makes the folder 0700; give it the permissions a plain mkdir would (umask), so
    # outputs on shared cluster storage stay readable by the group.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    old = path.with_name(f".{path.name}.old")
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
        else:
            os.replace(tmp, path)
        # The previous output, or one left by a writer killed between the two renames above.
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        # A full disk is always about writing; a permission error only when it is about the output's own files
        # (the work inside may read an input it may not read, which is that input's error).
        refused = _disk_full(e, path) or (
            write_error(e, path) if isinstance(e, OSError) and (_within(e, tmp) or _within(e, path)) else None
        )
        if refused is None and isinstance(e, SpeechFTError) and str(tmp) in str(e):
            # A writer inside (atomic_file, a cache) named its file under the hidden temp folder.
            refused = SpeechFTError(str(e).replace(str(tmp), str(path)))
        if refused is not None:
            raise refused from (e if isinstance(e, OSError) else e.__cause__ or e)
        raise
