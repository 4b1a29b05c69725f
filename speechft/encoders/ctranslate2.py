"""Read (and, for tests, write) CTranslate2 `model.bin` files, format version 6, without ctranslate2.

Layout, all little-endian::

    u32 version (6) | str spec_name | u32 spec_revision | u32 n_variables
    n_variables x ( str name | u8 rank | u32 dims[rank] | u8 dtype | u32 nbytes | nbytes of raw data )
    u32 n_aliases | n_aliases x ( str alias | str target )

where a `str` is a u16 length that counts a trailing NUL, then that many bytes ending in NUL.
dtype codes: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16.

Every read is bounds-checked against the buffer, so a truncated or corrupt file (or random
bytes) raises `SpeechFTError` with one line of the form
``<file>: not a valid CTranslate2 model.bin (<what is wrong, at byte N>); <what to do>``
and never reads past the end or allocates more than the file holds.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SpeechFTError

SUPPORTED_VERSION = 6
# code -> (numpy dtype, item size). bfloat16 has no numpy dtype: it is read as raw uint16
# and widened to float32 exactly (a bf16 value is the top half of an fp32 one).
DTYPES: dict[int, tuple[str, int]] = {
    0: ("<f4", 4),
    1: ("i1", 1),
    2: ("<i2", 2),
    3: ("<i4", 4),
    4: ("<f2", 2),
    5: ("<u2", 2),
}
DTYPE_NAMES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
MAX_RANK = 8  # CTranslate2 tensors have rank <= 4; anything far beyond is corruption
DEFAULT_FIX = "re-download or re-convert the model"


@dataclass
class CT2Model:
    """A parsed model.bin. `variables` holds every tensor by name, aliases included
    (an alias maps to the very same array as its target)."""

    path: str
    version: int
    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)

    @property
    def stored(self) -> dict[str, np.ndarray]:
        """The tensors stored in the file, without alias names."""
        return {k: v for k, v in self.variables.items() if k not in self.aliases}


class _Reader:
    """A cursor over a byte buffer whose every read checks the bounds first."""

    def __init__(self, data, source: str, fix: str):
        self.data = memoryview(data).cast("B")
        self.pos = 0
        self.source = source
        self.fix = fix

    def fail(self, what: str) -> SpeechFTError:
        return SpeechFTError(f"{self.source}: not a valid CTranslate2 model.bin ({what}); {self.fix}")

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"truncated: {what} needs {n} bytes at byte {self.pos}, the file has {len(self.data)}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return struct.unpack("<H", self.take(2, what))[0]

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def string(self, what: str) -> str:
        at = self.pos
        n = self.u16(f"the length of {what}")
        if n == 0:
            raise self.fail(f"{what} at byte {at} has length 0 (a string ends with NUL, so at least 1)")
        raw = bytes(self.take(n, what))
        if raw[-1] != 0 or 0 in raw[:-1]:
            raise self.fail(f"{what} at byte {at} is not a NUL-terminated string")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} at byte {at} is not UTF-8 text") from None


def parse_model_bin(data, source: str = "<bytes>", fix: str = DEFAULT_FIX) -> CT2Model:
    """Parse model.bin bytes. `source` names the file in errors; `fix` says what to do."""
    r = _Reader(data, source, fix)
    version = r.u32("the format version")
    if version != SUPPORTED_VERSION:
        raise SpeechFTError(
            f"{source}: CTranslate2 model.bin format version {version} is not supported (this reader "
            f"reads version {SUPPORTED_VERSION}); {fix}"
        )
    spec = r.string("the spec name")
    revision = r.u32("the spec revision")
    count_at = r.pos
    n_vars = r.u32("the number of variables")
    # Each variable takes at least 2+1 (name) + 1 (rank) + 1 (dtype) + 4 (nbytes) bytes.
    if n_vars * 9 > len(r.data) - r.pos:
        raise r.fail(f"{n_vars} variables announced at byte {count_at} cannot fit in the {len(r.data)}-byte file")
    variables: dict[str, np.ndarray] = {}
    for i in range(n_vars):
        name = r.string(f"the name of variable {i}")
        if name in variables:
            raise r.fail(f"variable '{name}' appears twice")
        rank = r.u8(f"the rank of '{name}'")
        if rank > MAX_RANK:
            raise r.fail(f"'{name}' has rank {rank} (at most {MAX_RANK} expected)")
        dims = [r.u32(f"dimension {d} of '{name}'") for d in range(rank)]
        code_at = r.pos
        code = r.u8(f"the dtype of '{name}'")
        if code not in DTYPES:
            raise r.fail(
                f"'{name}' has unknown dtype code {code} at byte {code_at} "
                f"(known: {', '.join(f'{k} {v}' for k, v in DTYPE_NAMES.items())})"
            )
        nbytes = r.u32(f"the byte size of '{name}'")
        np_dtype, itemsize = DTYPES[code]
        expected = itemsize * int(np.prod(dims, dtype=object))  # Python ints: no overflow
        if nbytes != expected:
            raise r.fail(
                f"'{name}' declares {nbytes} bytes but its shape {tuple(dims)} of {DTYPE_NAMES[code]} needs {expected}"
            )
        raw = r.take(nbytes, f"the data of '{name}'")
        # A copy: aligned, writable and independent of the file buffer.
        arr = np.frombuffer(raw, dtype=np_dtype).copy().reshape(dims)
        if code == 5:
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        variables[name] = arr
    n_alias = r.u32("the number of aliases")
    if n_alias * 4 > len(r.data) - r.pos:
        raise r.fail(f"{n_alias} aliases announced cannot fit in the rest of the file")
    aliases: dict[str, str] = {}
    for i in range(n_alias):
        alias = r.string(f"alias {i}")
        target = r.string(f"the target of alias '{alias}'")
        if alias in variables or alias in aliases:
            raise r.fail(f"alias '{alias}' reuses the name of a variable or another alias")
        if target not in variables:
            raise r.fail(f"alias '{alias}' points at '{target}', which is not a stored variable")
        aliases[alias] = target
    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} bytes of trailing data after the aliases at byte {r.pos}")
    for alias, target in aliases.items():
        variables[alias] = variables[target]
    return CT2Model(source, version, spec, revision, variables, aliases)


def read_model_bin(path: str | os.PathLike, fix: str = DEFAULT_FIX) -> CT2Model:
    """Read a CTranslate2 model.bin file (format version 6)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SpeechFTError(f"{path}: file not found; {fix}") from None
    except OSError as e:
        raise SpeechFTError(f"{path}: cannot read ({e.strerror}); {fix}") from None
    return parse_model_bin(data, str(path), fix)


def read_variables(path: str | os.PathLike, fix: str = DEFAULT_FIX) -> dict[str, np.ndarray]:
    """name -> numpy array (stored dtype kept, fp16 stays fp16; aliases resolved)."""
    return read_model_bin(path, fix).variables


def model_bin_bytes(
    variables: dict[str, np.ndarray], aliases: dict[str, str] | None = None, spec: str = "TestSpec", revision: int = 1
) -> bytes:
    """Serialise tensors into model.bin v6 bytes: the inverse of `parse_model_bin`, for
    tests and fuzzing. bfloat16 is not written (numpy has no such dtype)."""
    codes = {("f", 4): 0, ("i", 1): 1, ("i", 2): 2, ("i", 4): 3, ("f", 2): 4}

    def s(text: str) -> bytes:
        raw = text.encode("utf-8") + b"\0"
        return struct.pack("<H", len(raw)) + raw

    out = [struct.pack("<I", SUPPORTED_VERSION), s(spec), struct.pack("<II", revision, len(variables))]
    for name, arr in variables.items():
        arr = np.asarray(arr)  # (not ascontiguousarray: it turns 0-d scalars into 1-d)
        code = codes[(arr.dtype.kind, arr.dtype.itemsize)]
        data = arr.astype(DTYPES[code][0]).tobytes()
        out += [
            s(name),
            struct.pack("<B", arr.ndim),
            struct.pack(f"<{arr.ndim}I", *arr.shape),
            struct.pack("<BI", code, len(data)),
            data,
        ]
    aliases = aliases or {}
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [s(alias), s(target)]
    return b"".join(out)
