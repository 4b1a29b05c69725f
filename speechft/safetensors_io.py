"""Safetensors files: the one reader and writer in speechft (weights, checkpoints, heads, units).

Reading is by plain positional reads into our own buffers, tensor by tensor. We do not use
`safetensors.safe_open`: it memory-maps the file, and every page it touches counts in the
process's RSS until the kernel reclaims it, i.e. up to the whole input (benchmarks/bench_merge.py).
Every header is validated against the file before a tensor is read (offsets, sizes, holes,
dtypes), and a file is hashed (sha256) during the same single pass that reads it, so
provenance costs no second read. Writing announces the layout first, then streams tensor
bytes (sharded with HF's index.json when large); every file is written under a temporary
name and renamed, following the umask like every other output.

    load_tensors(path) / save_tensors(path, tensors)   a small file, whole (checkpoints, heads)
    SafetensorsFile(path).read(key)                    one file, key by key
    Checkpoint(folder).read(key)                       an encoder folder: model.safetensors or shards + index
    ShardedWriter(folder, spec, order).write(key, t)   an encoder folder's weights, incrementally
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import SpeechFTError
from .io_utils import atomic_file, read_json, write_json

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD = 5 * 1000**3  # bytes; HF's own default shard limit in transformers 4.x

Spec = dict[str, tuple[torch.dtype, tuple[int, ...]]]


def nonfinite_error(name: str, key: str) -> SpeechFTError:
    return SpeechFTError(
        f"{name}: tensor '{key}' contains NaN or infinite values; the checkpoint is corrupt (re-export or re-train it)"
    )


def all_finite(t: torch.Tensor) -> bool:
    """Exact, and fast on the common path: a sum is finite iff every entry is, unless the
    sum overflows, and only then is the (much slower) element-wise check needed."""
    if not t.is_floating_point():
        return True
    s = t.sum(dtype=torch.float32) if t.element_size() < 4 else t.sum()
    return bool(torch.isfinite(s)) or bool(torch.isfinite(t).all())


def nonfinite_count(t: torch.Tensor) -> int:
    """How many entries of `t` are NaN or infinite (0 on the fast path of `all_finite`)."""
    return 0 if all_finite(t) else int((~torch.isfinite(t)).sum())


def check_finite(t: torch.Tensor, name: str, key: str) -> None:
    if not all_finite(t):
        raise nonfinite_error(name, key)


def library_error_types() -> tuple[type[BaseException], ...]:
    """The error type of the `safetensors` package itself, which transformers' from_pretrained lets
    through on a damaged file (callers catch it without importing the package)."""
    from safetensors import SafetensorError

    return (SafetensorError,)


def os_error_of(e: BaseException, filename: str | os.PathLike | None = None) -> OSError | None:
    """The OSError behind a `safetensors` library write error ("I/O error: No space left on device (os error
    28) at path ..."), so a full disk or a read-only folder under transformers' save_pretrained is reported
    like any other write; None when it is not one."""
    m = re.search(r"\(os error (\d+)\)", str(e))
    if m is None or not isinstance(e, library_error_types()):
        return None
    return OSError(int(m.group(1)), os.strerror(int(m.group(1))), None if filename is None else str(filename))


DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (
    ("F8_E4M3", "float8_e4m3fn"),
    ("F8_E5M2", "float8_e5m2"),
    ("U16", "uint16"),
    ("U32", "uint32"),
    ("U64", "uint64"),
):
    if hasattr(torch, _attr):
        DTYPES[_name] = getattr(torch, _attr)
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_CHUNK = 8 << 20


@dataclass
class TensorEntry:
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # absolute file offsets
    end: int


class SafetensorsFile:
    """One .safetensors file, read tensor by tensor with positional reads (no mmap).

    It also hashes the file during those reads: bytes read in file order feed a running
    sha256 (gaps are read and hashed too); a read that goes backwards falls back to
    hashing the whole file once at the end."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.f = open(self.path, "rb", buffering=0)
        except OSError as e:
            raise SpeechFTError(f"{self.path}: cannot open ({e.strerror})") from None
        size = os.fstat(self.f.fileno()).st_size
        head = self.f.read(8)
        bad = f"{self.path}: not a valid safetensors file"
        if len(head) < 8:
            raise SpeechFTError(f"{bad} (only {size} bytes); re-save or re-download it")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 << 20):
            raise SpeechFTError(f"{bad} (header length {n} exceeds the file); re-save or re-download it")
        raw = self.f.read(n)
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise SpeechFTError(f"{bad} (its header is not JSON); re-save or re-download it") from None
        if not isinstance(header, dict):
            raise SpeechFTError(
                f"{bad} (its header is a JSON {type(header).__name__}, not an object); re-save or re-download it"
            )
        self.metadata = header.pop("__metadata__", None) or {}
        if not isinstance(self.metadata, dict):
            raise SpeechFTError(f"{bad} (its __metadata__ is not an object); re-save or re-download it")
        start = 8 + n
        self.entries: dict[str, TensorEntry] = {}
        spans = []
        for key, e in header.items():
            try:
                dtype = DTYPES[e["dtype"]]
                shape = tuple(int(s) for s in e["shape"])
                b, en = (int(x) for x in e["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise SpeechFTError(
                    f"{bad} (tensor '{key}' has an unreadable or unsupported entry {json.dumps(e)[:120]})"
                ) from None
            nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
            if en - b != nbytes or b < 0:
                raise SpeechFTError(f"{bad} (tensor '{key}' spans {en - b} bytes, its shape needs {nbytes})")
            self.entries[key] = TensorEntry(dtype, shape, start + b, start + en)
            spans.append((b, en))
        spans.sort()
        pos = 0
        for b, en in spans:
            if b != pos:
                raise SpeechFTError(f"{bad} (tensor data overlaps or has holes at byte {pos})")
            pos = en
        if start + pos != size:
            raise SpeechFTError(
                f"{bad} (header describes {start + pos} bytes, the file has {size}); "
                "it is truncated or padded: re-save or re-download it"
            )
        self.size = size
        self._hash = hashlib.sha256(head + raw)
        self._pos = start
        self._in_order = True

    def spec(self) -> Spec:
        return {k: (e.dtype, e.shape) for k, e in self.entries.items()}

    def _read_into(self, buf, offset: int) -> None:
        view = memoryview(buf).cast("B")
        got = 0
        while got < len(view):
            n = os.preadv(self.f.fileno(), [view[got:]], offset + got)
            if n <= 0:
                raise SpeechFTError(f"{self.path}: unexpected end of file; it changed while being read")
            got += n

    def read(self, key: str) -> torch.Tensor:
        e = self.entries[key]
        nbytes = e.end - e.begin
        buf = torch.empty(nbytes, dtype=torch.uint8)
        if nbytes:
            self._skip_to(e.begin)
            self._read_into(buf.numpy(), e.begin)
            if self._in_order and e.begin == self._pos:
                self._hash.update(buf.numpy())
                self._pos = e.end
        return buf.view(e.dtype).reshape(e.shape)

    def _skip_to(self, offset: int) -> None:
        if not self._in_order:
            return
        if offset < self._pos:
            self._in_order = False
            return
        scratch = bytearray(min(_CHUNK, offset - self._pos))
        while self._pos < offset:
            n = min(len(scratch), offset - self._pos)
            self._read_into(memoryview(scratch)[:n], self._pos)
            self._hash.update(memoryview(scratch)[:n])
            self._pos += n

    def sha256(self) -> str:
        if self._in_order:
            self._skip_to(self.size)
            return self._hash.hexdigest()
        h = hashlib.sha256()
        scratch = bytearray(_CHUNK)
        pos = 0
        while pos < self.size:
            n = min(_CHUNK, self.size - pos)
            self._read_into(memoryview(scratch)[:n], pos)
            h.update(memoryview(scratch)[:n])
            pos += n
        return h.hexdigest()

    def close(self) -> None:
        self.f.close()


class Checkpoint:
    """The weights of an encoder folder: model.safetensors, or shards + index.json."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index = self.folder / INDEX_FILE
        if (self.folder / WEIGHTS_FILE).exists():
            names = [WEIGHTS_FILE]
            weight_map = None
        elif index.exists():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise SpeechFTError(f"{index}: has no 'weight_map'; re-save the folder")
            names = sorted(set(weight_map.values()))
        else:
            other = sorted(p.name for p in self.folder.glob("*.bin")) + sorted(p.name for p in self.folder.glob("*.pt"))
            hint = (
                f" (found {other[0]}: pickled weights are not read; convert with `speechft encoder convert`)"
                if other
                else ""
            )
            raise SpeechFTError(f"{self.folder}: no {WEIGHTS_FILE} or {INDEX_FILE}{hint}")
        self.files: dict[str, SafetensorsFile] = {}
        self.where: dict[str, SafetensorsFile] = {}
        try:
            for name in names:
                if not (self.folder / name).exists():
                    raise SpeechFTError(f"{index}: lists shard {name}, which is missing")
                f = self.files[name] = SafetensorsFile(self.folder / name)
                for key in f.entries:
                    if key in self.where:
                        raise SpeechFTError(f"{self.folder}: tensor '{key}' appears in two shards")
                    self.where[key] = f
            if weight_map is not None:
                wrong = [k for k, v in weight_map.items() if self.where.get(k) is not self.files.get(v)]
                if wrong or len(weight_map) != len(self.where):
                    k = wrong[0] if wrong else sorted(set(self.where) - set(weight_map))[0]
                    raise SpeechFTError(f"{index}: does not match its shards (e.g. tensor '{k}'); re-save the folder")
        except BaseException:
            self.close()
            raise

    def spec(self) -> Spec:
        return {k: (f.entries[k].dtype, f.entries[k].shape) for k, f in self.where.items()}

    def read(self, key: str) -> torch.Tensor:
        return self.where[key].read(key)

    def file_of(self, key: str) -> Path:
        return self.where[key].path

    def sha256(self) -> dict[str, str]:
        return {name: f.sha256() for name, f in self.files.items()}

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def nbytes_of(dtype: torch.dtype, shape) -> int:
    return math.prod(shape) * torch.empty(0, dtype=dtype).element_size()


def header_bytes(spec: Spec, keys: list[str], metadata: dict[str, str]) -> bytes:
    """The 8-byte length and JSON header of a file holding `keys` in this order."""
    header, pos = {"__metadata__": metadata}, 0
    for k in keys:
        dt, shape = spec[k]
        n = nbytes_of(dt, shape)
        header[k] = {"dtype": DTYPE_NAMES[dt], "shape": list(shape), "data_offsets": [pos, pos + n]}
        pos += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # pad so tensor data starts 8-byte aligned, as safetensors does
    return struct.pack("<Q", len(raw)) + raw


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of one (small) file: checkpoints, heads, k-means units. No mmap, no pickle;
    a missing or corrupt file is a one-line SpeechFTError naming it."""
    f = SafetensorsFile(Path(path))
    try:
        return {k: f.read(k) for k in f.entries}
    finally:
        f.close()


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Write `tensors` (from any device) to one file, atomically, in safetensors' own order."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    spec = {k: (v.dtype, tuple(v.shape)) for k, v in cpu.items()}
    order = safetensors_order(spec)
    with atomic_file(path, "wb") as f:
        f.write(header_bytes(spec, order, {"format": "pt", **(metadata or {})}))
        for k in order:
            if cpu[k].numel():
                f.write(cpu[k].reshape(-1).view(torch.uint8).numpy().tobytes())


def safetensors_order(spec: Spec) -> list[str]:
    """The order safetensors itself writes: larger element size first, then by name
    (keeps every tensor aligned to its element size)."""
    size = {k: torch.empty(0, dtype=dt).element_size() for k, (dt, _) in spec.items()}
    return sorted(spec, key=lambda k: (-size[k], k))


class ShardedWriter:
    """Writes a state dict to safetensors incrementally, in a fixed announced order.

    The full layout (names, dtypes, shapes) is known up front, so each shard's header is
    written first and tensor bytes are appended as they are produced; files are hashed
    as they are written. More than one shard gets HF's model.safetensors.index.json."""

    def __init__(
        self,
        folder: Path,
        spec: Spec,
        order: list[str],
        max_shard_size: int = DEFAULT_MAX_SHARD,
        metadata: dict[str, str] | None = None,
    ):
        self.folder = Path(folder)
        self.spec = spec
        self.order = list(order)
        self.metadata = {"format": "pt", **(metadata or {})}
        self.nbytes = {k: nbytes_of(*spec[k]) for k in order}
        self.total = sum(self.nbytes.values())
        shards: list[list[str]] = [[]]
        used = 0
        for k in self.order:
            if shards[-1] and used + self.nbytes[k] > max_shard_size:
                shards.append([])
                used = 0
            shards[-1].append(k)
            used += self.nbytes[k]
        n = len(shards)
        names = [WEIGHTS_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self.shards = list(zip(names, shards))
        self.file_of = {k: name for name, keys in self.shards for k in keys}
        self._next = 0  # index into self.order
        self._shard = -1
        self._f = None
        self._hash = None
        self.hashes: dict[str, str] = {}

    def _open_next_shard(self) -> None:
        self._close_shard()
        self._shard += 1
        name, keys = self.shards[self._shard]
        self._f = open(self.folder / name, "wb")
        self._hash = hashlib.sha256()
        self._emit(header_bytes(self.spec, keys, self.metadata))
        self._remaining = list(keys)

    def _emit(self, data) -> None:
        self._hash.update(data)
        self._f.write(data)

    def _close_shard(self) -> None:
        if self._f is not None:
            self._f.close()
            self.hashes[self.shards[self._shard][0]] = self._hash.hexdigest()
            self._f = None

    def write(self, key: str, t: torch.Tensor) -> None:
        expect = self.order[self._next]
        if key != expect:
            raise RuntimeError(f"ShardedWriter: got '{key}', expected '{expect}'")
        dt, shape = self.spec[key]
        if t.dtype != dt or tuple(t.shape) != tuple(shape):
            raise RuntimeError(f"ShardedWriter: '{key}' is {t.dtype}{list(t.shape)}, announced {dt}{list(shape)}")
        if self._f is None or not self._remaining:
            self._open_next_shard()
        self._remaining.pop(0)
        if self.nbytes[key]:
            self._emit(t.contiguous().reshape(-1).view(torch.uint8).numpy())
        self._next += 1

    def close(self) -> dict[str, str]:
        """Finish; returns {file name: sha256} of the weight files (the index is not one)."""
        if self._next != len(self.order):
            raise RuntimeError(f"ShardedWriter: {len(self.order) - self._next} tensors were never written")
        if self._f is None and self.shards[0][1] == []:  # an empty state dict still gets a valid file
            self._open_next_shard()
        self._close_shard()
        if len(self.shards) > 1:
            write_json(
                self.folder / INDEX_FILE,
                {
                    "metadata": {"total_size": self.total},
                    "weight_map": {k: self.file_of[k] for k in sorted(self.file_of)},
                },
            )
        return dict(self.hashes)

    def abort(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def parse_size(text: str | int) -> int:
    """'5GB', '500MB', '2GiB' or a byte count -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise SpeechFTError(f"--max-shard-size {text!r}: expected a size like 5GB, 500MB or a byte count")
    unit = (m.group(2) or "B").upper()
    base = 1024 if "I" in unit else 1000
    power = {"B": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit[0]]
    size = int(float(m.group(1)) * base**power)
    if size <= 0:
        raise SpeechFTError(f"--max-shard-size {text!r}: must be positive")
    return size
