"""Property-based fuzzing of every parser that reads user files or user strings.

The contract under test: whatever the input, the parser either succeeds or raises
`SpeechFTError` (one line); never another exception type, never a hang. Inputs are both
random and *near-valid* (a valid file with random damage), because near-valid inputs get
past the first sanity checks and reach the deeper code. Examples are kept few so the file
runs in seconds; CI runs it on every push, so over time many more inputs are tried.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from speechft.config import apply_overrides, load_config
from speechft.data.audio import load_audio
from speechft.data.tasks import load_task
from speechft.errors import SpeechFTError

FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)


def one_line(e: SpeechFTError) -> None:
    assert "\n" not in str(e) and str(e).strip()


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    """A few real clips that fuzzed manifests can point at."""
    d = tmp_path_factory.mktemp("fuzz_audio")
    t = np.arange(8000) / 16000
    for i in range(3):
        sf.write(d / f"a{i}.wav", (0.2 * np.sin(2 * np.pi * 300 * (i + 1) * t)).astype(np.float32), 16000)
    return d


def task_folder(audio: Path, spec: str, manifests: dict[str, bytes | str]) -> Path:
    root = Path(tempfile.mkdtemp(prefix="fuzz_task_"))
    (root / "audio").symlink_to(audio)
    (root / "task.yaml").write_text(spec)
    for split in ("train", "dev", "test"):
        data = manifests.get(split, "path\tduration\tlabel\naudio/a0.wav\t0.5\tlow\n")
        (root / f"{split}.tsv").write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return root


CLS_SPEC = "name: fuzz\ntype: classification\nlabels: [low, high]\n"
CTC_SPEC = "name: fuzz\ntype: ctc\nvocabulary: [a, b, c]\ntokenizer: char\n"


def load_or_clean_error(root: Path):
    try:
        return load_task(root)
    except SpeechFTError as e:
        one_line(e)
        return None


# ---- manifests ----------------------------------------------------------------------------------------------
# Atoms that reach the interesting branches: escaping paths, odd numbers, unicode digits, NUL bytes, quotes.
PATHS = [
    "audio/a0.wav",
    "audio/a1.wav",
    "audio/a2.wav",
    "audio/../audio/a0.wav",
    "../x.wav",
    "/etc/passwd",
    "audio/missing.wav",
    "",
    " ",
    "audio",
    "audio/a0.wav\0",
    "~/a.wav",
    "audio//a1.wav",
    "./audio/a2.wav",
    '"audio/a0.wav"',
    "audio/\u00e9.wav",
    "C:\\x.wav",
    "audio/a0.wav " * 3,
]
NUMBERS = [
    "0.5",
    "1",
    "0",
    "-1",
    "nan",
    "inf",
    "-inf",
    "1e400",
    "1e-400",
    "abc",
    "",
    "\u0661.\u0665",
    "0x10",
    "1_0",
    " 2 ",
    "+3",
    "1e3",
    "0.0000001",
    '"1"',
]
LABELS = ["low", "high", "LOW", "", " low", "medium", "a b c", "abc", "a|b", "\u00e9", "a\tb", "cab ", "\0"]
COLUMNS = ["path", "duration", "label", "transcript", "speaker", "extra", "", "path ", "Path", "duration"]


@st.composite
def manifest_text(draw) -> str:
    header = draw(st.lists(st.sampled_from(COLUMNS), min_size=0, max_size=6))
    rows = []
    for _ in range(draw(st.integers(0, 5))):
        n = draw(st.integers(0, len(header) + 1))
        row = [draw(st.sampled_from(PATHS + NUMBERS + LABELS)) for _ in range(n)]
        rows.append("\t".join(row))
    sep = draw(st.sampled_from(["\n", "\r\n", "\r", "\n\n"]))
    return sep.join(["\t".join(header)] + rows) + draw(st.sampled_from(["", "\n", "\t", "\n\t\n"]))


@FUZZ
@given(spec=st.sampled_from([CLS_SPEC, CTC_SPEC]), text=manifest_text(), split=st.sampled_from(["train", "dev"]))
def test_structured_manifests_load_or_fail_cleanly(audio_dir, spec, text, split):
    root = task_folder(audio_dir, spec, {split: text})
    try:
        task = load_or_clean_error(root)
        if task is not None:  # what loads is sane: no escaping paths, positive finite durations
            for ex in task.split(split):
                assert not os.path.isabs(ex.id) and not os.path.normpath(ex.id).startswith("..")
                assert np.isfinite(ex.duration) and ex.duration > 0
                assert ex.path.exists()
    finally:
        shutil.rmtree(root)


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(lambda s: s.encode("utf-8", "surrogatepass"))))
def test_random_bytes_as_a_manifest(audio_dir, data):
    root = task_folder(audio_dir, CLS_SPEC, {"train": data})
    try:
        load_or_clean_error(root)
    finally:
        shutil.rmtree(root)


YAML_VALUES = [
    "classification",
    "ctc",
    "accuracy",
    "per",
    "[low, high]",
    "[a, b, a]",
    "[]",
    "{}",
    "null",
    "~",
    "1",
    "-5",
    "16000",
    "8000.5",
    "true",
    "'false'",
    "no",
    "[[1, 2]]",
    "{a: 1}",
    "char",
    "space",
    "'x'",
    "!!python/object/apply:os.getcwd []",
    "&a [*a]",
    "[unclosed",
    '"\\x00"',
    "2e400",
]
YAML_KEYS = [
    "name",
    "type",
    "metric",
    "labels",
    "vocabulary",
    "tokenizer",
    "sample_rate",
    "allow_outside_paths",
    "extra",
]


@FUZZ
@given(st.dictionaries(st.sampled_from(YAML_KEYS), st.sampled_from(YAML_VALUES), max_size=8))
def test_task_yaml_loads_or_fails_cleanly(audio_dir, fields):
    spec = "".join(f"{k}: {v}\n" for k, v in fields.items())
    root = task_folder(audio_dir, spec, {})
    try:
        task = load_or_clean_error(root)
        if task is not None:
            assert task.type in ("ctc", "classification") and isinstance(task.sample_rate, int)
            assert not isinstance(task.sample_rate, bool) and task.sample_rate > 0
    finally:
        shutil.rmtree(root)


# ---- config overrides ------------------------------------------------------------------------------------
@dataclass
class Inner:
    rate: float = 1e-4
    maybe: float | None = None
    pair: list[float] = field(default_factory=lambda: [0.9, 0.99])
    kind: Literal["a", "b"] = "a"


@dataclass
class Outer:
    steps: int = 10
    name: str = "run"
    flag: bool = False
    table: dict = field(default_factory=dict)
    coords: tuple = (1, 2)
    inner: Inner = field(default_factory=Inner)


KEYS = [
    "steps",
    "name",
    "flag",
    "table",
    "coords",
    "inner",
    "inner.rate",
    "inner.maybe",
    "inner.pair",
    "inner.kind",
    "inner.rate.x",
    "nope",
    "inner.nope",
    "",
    ".",
    "steps.",
    " steps",
    "inner..rate",
    "=",
    "steps=1",
]
VALUES = [
    "1",
    "-1",
    "1.5",
    "1e-4",
    "1e400",
    "nan",
    ".inf",
    "-.inf",
    "true",
    "yes",
    "off",
    "null",
    "~",
    "",
    " ",
    "[1, 2]",
    "[1, [2]]",
    "{a: 1}",
    "{rate: 2}",
    "a",
    "b",
    "c",
    "0x1F",
    "1_000",
    "'1'",
    "[",
    "{",
    "]]",
    "!!python/object/apply:os.getcwd []",
    "!!binary aGVsbG8=",
    "&a [*a]",
    "1,2,3",
    "[" * 50 + "]" * 50,
    "2020-01-01",
    "\x00",
    "\u00e9",
]


@FUZZ
@given(
    st.lists(
        st.one_of(
            st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), st.sampled_from(VALUES)), st.text(max_size=40)
        ),
        max_size=4,
    )
)
def test_config_overrides_apply_or_fail_cleanly(overrides):
    try:
        cfg = apply_overrides(Outer(), overrides)
    except SpeechFTError as e:
        one_line(e)
        return
    assert isinstance(cfg.steps, int) and not isinstance(cfg.steps, bool)
    assert isinstance(cfg.inner.rate, float) and cfg.inner.kind in ("a", "b")
    assert isinstance(cfg.flag, bool) and all(isinstance(x, float) for x in cfg.inner.pair)


@FUZZ
@given(
    st.lists(
        st.builds(
            lambda k, v: f"{k}={v}",
            st.sampled_from(
                [
                    "steps",
                    "seed",
                    "method",
                    "optim.lr",
                    "optim.betas",
                    "optim.grad_accum",
                    "data.batch_size",
                    "data.max_seconds",
                    "head.layers",
                    "head.proj_dim",
                    "frozen_fraction",
                    "lora.targets",
                    "schedule.warmup",
                    "eval.every",
                ]
            ),
            st.sampled_from(VALUES + ["stable", "lora", "weighted", "last", "0.1", "0", "100"]),
        ),
        max_size=3,
    )
)
def test_train_config_overrides_apply_or_fail_cleanly(overrides):
    from speechft.train import TrainConfig

    try:
        apply_overrides(TrainConfig(), overrides)
    except SpeechFTError as e:
        one_line(e)


@FUZZ
@given(
    st.one_of(
        st.text(max_size=200),
        st.dictionaries(st.sampled_from(KEYS[:10]), st.sampled_from(VALUES), max_size=5).map(
            lambda d: "".join(f"{k}: {v}\n" for k, v in d.items())
        ),
    )
)
def test_config_files_load_or_fail_cleanly(text):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_config(Outer, path)
        except SpeechFTError as e:
            one_line(e)


# ---- audio decoding ----------------------------------------------------------------------------------------
def valid_audio(fmt: str) -> bytes:
    buf = io.BytesIO()
    t = np.arange(4000) / 16000
    sf.write(
        buf,
        (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
        16000,
        format=fmt,
        subtype="PCM_16" if fmt in ("WAV", "FLAC") else None,
    )
    return buf.getvalue()


VALID = {"wav": valid_audio("WAV"), "flac": valid_audio("FLAC"), "ogg": valid_audio("OGG")}


@st.composite
def damaged_audio(draw) -> tuple[str, bytes]:
    ext = draw(st.sampled_from(sorted(VALID)))
    how = draw(st.sampled_from(["random", "flip", "truncate", "header"]))
    if how == "random":
        return ext, draw(st.binary(max_size=400))
    data = bytearray(VALID[ext])
    if how == "truncate":
        return ext, bytes(data[: draw(st.integers(0, len(data)))])
    if how == "header" and ext == "wav":  # the fields a decoder trusts: channels, rate, bits, sizes
        at = draw(st.sampled_from([4, 16, 20, 22, 24, 28, 32, 34, 40]))
        size = 2 if at in (20, 22, 32, 34) else 4
        value = draw(st.sampled_from([0, 1, 2 ** (8 * size) - 1, 2 ** (8 * size - 1), 7, 3]))
        data[at : at + size] = value.to_bytes(size, "little")
        return ext, bytes(data)
    for at, value in draw(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=8)):
        data[at % len(data)] = value
    return ext, bytes(data)


@FUZZ
@given(damaged_audio())
def test_damaged_audio_decodes_or_fails_cleanly(item):
    ext, data = item
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"clip.{ext}"
        path.write_bytes(data)
        try:
            wav = load_audio(path)
        except SpeechFTError as e:
            one_line(e)
            assert str(path) in str(e)
            return
        assert wav.dtype == np.float32 and wav.ndim == 1 and np.isfinite(wav).all() and len(wav) >= 400


# ---- CTranslate2 model.bin (test_default_encoder.py fuzzes random bytes and byte flips of one small file;
# here: random valid files round-trip exactly, and insertions/deletions, which shift every later field) ---
CT2_DTYPES = [np.float32, np.float16, np.int8, np.int16, np.int32]


@st.composite
def ct2_variables(draw) -> dict[str, np.ndarray]:
    names = draw(
        st.lists(
            st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1, max_size=12),
            min_size=0,
            max_size=5,
            unique=True,
        )
    )
    out = {}
    for name in names:
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        dtype = draw(st.sampled_from(CT2_DTYPES))
        out[name] = (np.arange(int(np.prod(shape)), dtype=np.int64) % 100).astype(dtype).reshape(shape)
    return out


@FUZZ
@given(ct2_variables(), st.data())
def test_ct2_random_models_round_trip_and_survive_splices(variables, data):
    from speechft.encoders.ctranslate2 import model_bin_bytes, parse_model_bin

    aliases = {}
    if variables and data.draw(st.booleans()):
        aliases = {"alias\u00b7" + next(iter(variables)): next(iter(variables))}
    blob = model_bin_bytes(variables, aliases)
    m = parse_model_bin(blob, "fuzz.bin")
    assert set(m.stored) == set(variables) and m.aliases == aliases
    for k, v in variables.items():
        assert m.variables[k].dtype == v.dtype and m.variables[k].shape == v.shape
        assert np.array_equal(m.variables[k], v)
    # Insert or delete a few bytes somewhere: every later offset shifts.
    at = data.draw(st.integers(0, len(blob)))
    cut = data.draw(st.integers(0, 6))
    spliced = blob[:at] + data.draw(st.binary(max_size=6)) + blob[at + cut :]
    try:
        parse_model_bin(spliced, "fuzz.bin")
    except SpeechFTError as e:
        one_line(e)
        assert str(e).startswith("fuzz.bin: ")


# ---- checkpoints: torch.load(weights_only=True) in `encoder convert`, and merge's safetensors reader -------
def torch_save_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


VALID_PT = torch_save_bytes({"model": {"w": torch.arange(6.0).reshape(2, 3)}, "cfg": {"a": 1}})


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=300),
        st.lists(st.tuples(st.integers(0, len(VALID_PT) - 1), st.integers(0, 255)), min_size=1, max_size=6).map(
            lambda edits: bytes(_apply(VALID_PT, edits))
        ),
        st.integers(0, len(VALID_PT)).map(lambda n: VALID_PT[:n]),
    )
)
def test_checkpoint_loader_fails_cleanly_on_damaged_files(data):
    from speechft.encoders.convert import load_checkpoint

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.pt"
        path.write_bytes(data)
        try:
            load_checkpoint(path)
        except SpeechFTError as e:
            one_line(e)
            assert str(path) in str(e)


def _apply(blob: bytes, edits) -> bytearray:
    out = bytearray(blob)
    for at, value in edits:
        out[at] = value
    return out


def safetensors_bytes(header: dict | list | str, payload: bytes) -> bytes:
    import json

    raw = (header if isinstance(header, str) else json.dumps(header)).encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(raw)) + raw + payload


ST_ENTRY = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "F8_E4M3", "X", 3]),
        "shape": st.one_of(st.lists(st.integers(-2, 4), max_size=3), st.just("2")),
        "data_offsets": st.one_of(st.lists(st.integers(-4, 40), min_size=0, max_size=3), st.just(None)),
    }
)


@FUZZ
@given(
    st.one_of(
        st.builds(
            safetensors_bytes,
            st.one_of(
                st.dictionaries(st.text(max_size=5), ST_ENTRY, max_size=3),
                st.dictionaries(st.just("__metadata__"), st.one_of(st.none(), st.just([1]), st.just("x"))),
                st.lists(st.integers(), max_size=2),
                st.text(max_size=20),
            ),
            st.binary(max_size=48),
        ),
        st.binary(max_size=64),
    )
)
def test_merge_safetensors_reader_fails_cleanly(data):
    from speechft.safetensors_io import SafetensorsFile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.safetensors"
        path.write_bytes(data)
        try:
            f = SafetensorsFile(path)
        except SpeechFTError as e:
            one_line(e)
            return
        try:  # a header that passes validation must also read back
            for key in f.spec():
                f.read(key)
            f.sha256()
        finally:
            f.close()
