"""Task folders: the one format every corpus becomes.

A task folder holds::

    task.yaml   name, type (ctc | classification), metric, labels or vocabulary, tokenizer
    train.tsv   manifests with a header row; columns: path, duration, and label
    dev.tsv     (classification) or transcript (ctc); optional speaker; other columns kept
    test.tsv    as `Example.extra`. Paths are relative to the folder.

`load_task` validates everything up front (files exist, columns, labels in the
vocabulary, non-empty splits, no duplicate paths, no path escaping the folder) so nothing
runs on a broken folder; each problem is one line naming the file and the first
offending rows.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import SpeechFTError
from ..io_utils import atomic_dir, sha256_bytes

SPLITS = ("train", "dev", "test")
TASK_TYPES = ("ctc", "classification")
METRICS = {"ctc": ("per", "cer", "wer"), "classification": ("accuracy", "macro_f1")}
TOKENIZERS = ("space", "char")
# In char-tokenized CTC tasks a space is spelled with this token (wav2vec2's convention).
WORD_SEPARATOR = "|"


class Vocabulary:
    """The one tokeniser: how a target (a class label, or a transcript) becomes ids and back. A Task has
    one (`Task.vocabulary`) and a trained head stores the same one (heads.TaskHead: labels + tokenizer in
    head.json), so the head decodes its own outputs without the task folder.

    Classification: the label's index in `labels`. CTC: one token per word (tokenizer "space") or per
    character (tokenizer "char", a space spelled WORD_SEPARATOR); ids are 1-based, 0 is the CTC blank."""

    def __init__(self, kind: str, labels: list[str], tokenizer: str | None = None):
        self.kind, self.labels, self.tokenizer = kind, list(labels), tokenizer
        self._index = {t: i for i, t in enumerate(self.labels)}

    def tokens(self, text: str) -> list[str]:
        if self.tokenizer == "space":
            return text.split()
        return [WORD_SEPARATOR if c == " " else c for c in text.strip()]

    def encode(self, target: str) -> list[int] | int:
        if self.kind == "classification":
            return self._index[target]
        return [self._index[t] + 1 for t in self.tokens(target)]

    def decode(self, ids) -> str:
        """CTC ids (already collapsed, blanks removed) back to text in the manifest's form."""
        toks = [self.labels[i - 1] for i in ids if i > 0]
        if self.tokenizer == "space":
            return " ".join(toks)
        return "".join(" " if t == WORD_SEPARATOR else t for t in toks)


@dataclass
class Example:
    id: str
    path: Path  # absolute
    duration: float
    target: str  # label (classification) or transcript (ctc)
    speaker: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Task:
    """A validated task folder. CTC targets use id 0 for the blank, tokens from 1."""

    root: Path
    name: str
    type: str
    metric: str
    labels: list[str]  # classification classes, or the CTC token vocabulary
    tokenizer: str | None
    sample_rate: int
    splits: dict[str, list[Example]]
    spec: dict

    @property
    def num_outputs(self) -> int:
        return len(self.labels) + (1 if self.type == "ctc" else 0)

    def split(self, name: str) -> list[Example]:
        return self.splits[name]

    @property
    def vocabulary(self) -> Vocabulary:
        return self._vocabulary

    def tokens(self, text: str) -> list[str]:
        return self.vocabulary.tokens(text)

    def encode(self, target: str) -> list[int] | int:
        """Classification: the class index. CTC: token ids (1-based; 0 is the blank)."""
        return self.vocabulary.encode(target)

    def decode(self, ids) -> str:
        """CTC ids (already collapsed, blanks removed) back to text in the manifest's form."""
        return self.vocabulary.decode(ids)

    def manifest_hash(self, split: str) -> str:
        return sha256_bytes((self.root / f"{split}.tsv").read_bytes())

    def __post_init__(self):
        self._vocabulary = Vocabulary(self.type, self.labels, self.tokenizer)


def _fail(msg: str):
    raise SpeechFTError(msg)


def _load_spec(root: Path) -> dict:
    path = root / "task.yaml"
    if not root.is_dir():
        _fail(f"{root}: task folder not found; pass a folder holding task.yaml and train/dev/test.tsv")
    if not path.exists():
        _fail(f"{path}: missing; a task folder needs task.yaml (see docs/task-folder.md)")
    try:
        spec = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as e:  # also python/* tags: safe_load never builds Python objects
        _fail(f"{path}: not valid YAML ({str(e).splitlines()[0]})")
    except RecursionError:
        _fail(f"{path}: not valid YAML (nested too deeply)")
    if not isinstance(spec, dict):
        _fail(f"{path}: must be a mapping with keys name, type, metric, labels/vocabulary")
    for key in ("name", "type"):
        if key not in spec:
            _fail(f"{path}: missing key '{key}'")
    if spec["type"] not in TASK_TYPES:
        _fail(f"{path}: type '{spec['type']}' is not one of {', '.join(TASK_TYPES)}")
    metric = spec.setdefault("metric", METRICS[spec["type"]][0])
    if metric not in METRICS[spec["type"]]:
        _fail(
            f"{path}: metric '{metric}' does not fit type {spec['type']}; use one of {', '.join(METRICS[spec['type']])}"
        )
    key = "labels" if spec["type"] == "classification" else "vocabulary"
    labels = spec.get(key)
    if not isinstance(labels, list) or not labels:
        _fail(f"{path}: '{key}' must be a non-empty list")
    labels = [str(x) for x in labels]
    if len(set(labels)) != len(labels):
        dup = sorted({x for x in labels if labels.count(x) > 1})
        _fail(f"{path}: '{key}' lists {dup[:5]} more than once")
    spec[key] = labels
    if spec["type"] == "ctc":
        tok = spec.setdefault("tokenizer", "char")
        if tok not in TOKENIZERS:
            _fail(f"{path}: tokenizer '{tok}' is not one of {', '.join(TOKENIZERS)}")
    sr = spec.setdefault("sample_rate", 16000)
    if not isinstance(sr, int) or isinstance(sr, bool) or sr <= 0:
        _fail(f"{path}: sample_rate must be a positive integer, got {sr!r}")
    # Only a real YAML boolean opens the folder to outside paths (a string 'false' would be truthy).
    if not isinstance(spec.get("allow_outside_paths", False), bool):
        _fail(f"{path}: allow_outside_paths must be true or false, got {spec['allow_outside_paths']!r}")
    return spec


def _read_text(path: Path) -> str:
    """A UTF-8 text file, refusing what is not text (a NUL byte, invalid UTF-8) with the byte offset."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        _fail(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8")
    if "\0" in text:
        _fail(f"{path}: contains a NUL byte (at character {text.index(chr(0))}); it is not a text file")
    return text


def _read_manifest(root: Path, split: str, task: dict, allow_outside: bool) -> list[Example]:
    path = root / f"{split}.tsv"
    if not path.exists():
        _fail(f"{path}: missing; every task folder needs {', '.join(s + '.tsv' for s in SPLITS)}")
    text = _read_text(path)
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))
    except csv.Error as e:
        _fail(f"{path}: not a tab-separated manifest ({e}); one row per line, fields separated by tabs")
    rows = [r for r in rows if r and any(c.strip() for c in r)]
    if not rows:
        _fail(f"{path}: empty; it needs a header row (path, duration, ...) and at least one example")
    header = [h.strip() for h in rows[0]]
    target_col = "label" if task["type"] == "classification" else "transcript"
    missing = [c for c in ("path", "duration", target_col) if c not in header]
    if missing:
        _fail(
            f"{path}: missing column(s) {', '.join(missing)} in header {header}; "
            f"a {task['type']} manifest needs path, duration, {target_col}"
        )
    if len(rows) == 1:
        _fail(f"{path}: the {split} split has no examples")
    col = {h: i for i, h in enumerate(header)}
    vocab = set(task["labels"] if task["type"] == "classification" else task["vocabulary"])
    examples, bad, seen = [], [], {}
    if task["type"] == "ctc":
        tokenizer = Vocabulary("ctc", task["vocabulary"], task["tokenizer"])
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            bad.append(f"line {lineno}: {len(row)} fields, header has {len(header)}")
            continue
        rel = row[col["path"]].strip()
        audio = root / rel
        # Lexical check (not resolve()): a task folder may symlink a shared audio cache.
        norm = os.path.normpath(rel)
        if not allow_outside and (os.path.isabs(rel) or norm == ".." or norm.startswith(".." + os.sep)):
            bad.append(f"line {lineno}: path '{rel}' points outside the task folder (allow with allow_outside_paths)")
            continue
        if rel in seen:
            bad.append(f"line {lineno}: path '{rel}' repeats line {seen[rel]}")
            continue
        seen[rel] = lineno
        try:
            duration = float(row[col["duration"]])
            if not 0 < duration < float("inf"):
                raise ValueError
        except ValueError:
            bad.append(f"line {lineno}: duration '{row[col['duration']]}' is not a positive number")
            continue
        target = row[col[target_col]].strip()
        if task["type"] == "classification":
            unknown = [] if target in vocab else [target]
        else:
            unknown = sorted({x for x in tokenizer.tokens(target) if x not in vocab})
            if not target:
                bad.append(f"line {lineno}: empty transcript")
                continue
        if unknown:
            bad.append(
                f"line {lineno}: {target_col} uses {unknown[:5]} not in task.yaml's "
                f"{'labels' if task['type'] == 'classification' else 'vocabulary'}"
            )
            continue
        if not audio.exists():
            bad.append(f"line {lineno}: audio file '{rel}' not found")
            continue
        speaker = row[col["speaker"]].strip() if "speaker" in col else None
        extra = {h: row[i] for h, i in col.items() if h not in ("path", "duration", target_col, "speaker")}
        examples.append(Example(rel, audio, duration, target, speaker, extra))
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        _fail(f"{path}: {'; '.join(bad[:3])}{more}")
    return examples


def load_task(root: str | os.PathLike, allow_outside_paths: bool = False) -> Task:
    """Load and validate a task folder; raises `SpeechFTError` on the first broken file."""
    root = Path(root)
    spec = _load_spec(root)
    allow = allow_outside_paths or bool(spec.get("allow_outside_paths", False))
    splits = {s: _read_manifest(root, s, spec, allow) for s in SPLITS}
    labels = spec["labels"] if spec["type"] == "classification" else spec["vocabulary"]
    return Task(
        root=root,
        name=str(spec["name"]),
        type=spec["type"],
        metric=spec["metric"],
        labels=labels,
        tokenizer=spec.get("tokenizer"),
        sample_rate=spec["sample_rate"],
        splits=splits,
        spec=spec,
    )


def write_task_folder(
    out: str | os.PathLike,
    spec: dict,
    splits: dict[str, list[dict]],
    files: dict[str, bytes] | None = None,
    overwrite: bool = False,
    audio_dir: str | os.PathLike | None = None,
) -> Path:
    """Write a task folder atomically (temp folder + rename).

    `splits` maps train/dev/test to rows (dicts with path, duration, label|transcript,
    optional speaker and extra columns); paths are written as given (relative to the
    folder). `files` adds small extra files (e.g. README.md). `audio_dir`, if given, is
    symlinked as `audio` inside the folder so manifests can say `audio/xyz.wav` while
    the audio itself lives in a shared cache.
    """
    out = Path(out)
    target_col = "label" if spec["type"] == "classification" else "transcript"
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "task.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
        for split in SPLITS:
            rows = splits.get(split) or []
            cols = ["path", "duration", target_col]
            extra = sorted({k for r in rows for k in r if k not in cols})
            cols += extra
            lines = ["\t".join(cols)]
            for r in rows:
                vals = [str(r.get(c, "")) for c in cols]
                if any("\t" in v or "\n" in v for v in vals):
                    raise SpeechFTError(f"{out}/{split}.tsv: a value contains a tab or newline: {vals}")
                lines.append("\t".join(vals))
            (tmp / f"{split}.tsv").write_text("\n".join(lines) + "\n")
        for name, data in (files or {}).items():
            (tmp / name).write_bytes(data)
        if audio_dir is not None:
            os.symlink(os.path.relpath(Path(audio_dir).resolve(), out.resolve()), tmp / "audio")
    return out
