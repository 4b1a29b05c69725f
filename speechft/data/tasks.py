"""Task folders: the one format every corpus becomes.

A task folder holds::

    task.yaml   name, type (ctc | classification | verification | qbe | diarization), metric, labels or
                vocabulary, tokenizer
    train.tsv   manifests with a header row; columns: path, duration, and label
    dev.tsv     (classification, verification) or transcript (ctc) or role (qbe); optional speaker; other
    test.tsv    columns kept as `Example.extra`. Paths are relative to the folder.

SUPERB's other task types: slot filling is a ctc task with tokenizer `slots`; `verification` adds
dev_trials.txt / test_trials.txt (its dev/test clips need no label); `qbe` has no train.tsv and adds
dev_truth.txt / test_truth.txt; `diarization` lists recordings (path, duration) and adds {split}.rttm,
the reference speaker segments (docs/task-folder.md).

`load_task` validates everything up front (files exist, columns, labels in the
vocabulary, non-empty splits, no duplicate paths, no path escaping the folder) so nothing
runs on a broken folder; each problem is one line naming the file and the first
offending rows. The manifests are read by `speechft.data.manifest` (whose docstring holds
the rules every TSV manifest follows); this module adds the task's own rules (labels and
transcripts in the vocabulary, paths confined to the folder unless allowed).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import load_yaml
from ..errors import SpeechFTError
from ..io_utils import atomic_dir, sha256_bytes
from .audio import SAMPLE_RATE
from .manifest import ManifestRow, read_manifest, read_text_file

SPLITS = ("train", "dev", "test")
TASK_TYPES = ("ctc", "classification", "verification", "qbe", "diarization")
METRICS = {
    "ctc": ("per", "cer", "wer", "slot_type_f1", "slot_value_cer"),
    "classification": ("accuracy", "macro_f1"),
    "verification": ("eer", "min_dcf"),
    "qbe": ("mtwv",),
    "diarization": ("der",),
}
# Speaker verification (SUPERB ASV): train.tsv is labelled by speaker; dev and test are scored on trial
# lists beside them, one trial a line as in VoxCeleb's veri_test2.txt: `1|0 PATH_A PATH_B` (1 = same speaker).
TRIAL_SPLITS = ("dev", "test")
# Query by example (SUPERB QbE): no training. dev.tsv and test.tsv list queries and documents (column
# `role`: query | document); `{split}_truth.txt` lists `QUERY_PATH DOCUMENT_PATH` for every query that
# occurs in a document; train.tsv is optional (and unused).
QBE_ROLES = ("query", "document")
# Speaker diarization (SUPERB SD, LibriMix's setting): each manifest row is a recording (path, duration);
# `{split}.rttm` holds its reference segments, standard RTTM lines
# `SPEAKER REC 1 START DUR <NA> <NA> SPK <NA> <NA>` where REC is the recording's file name without its
# extension; at most task.yaml's `speakers` (default 2) speakers per recording.
DIARIZATION_SPEAKERS = 2
TOKENIZERS = ("space", "char", "slots")
# Slot filling (SUPERB SF): a ctc task with tokenizer `slots` whose transcripts mark each slot value as
# `B-type value words E-type`; the markers are single tokens, everything else is characters.
SLOT_METRICS = ("slot_type_f1", "slot_value_cer")
SLOT_MARKER = re.compile(r"^[BE]-\S+$")
# In char-tokenized CTC tasks a space is spelled with this token (wav2vec2's convention).
WORD_SEPARATOR = "|"


class Vocabulary:
    """The one tokeniser: how a target (a class label, or a transcript) becomes ids and back. A Task has
    one (`Task.vocabulary`) and a trained head stores the same one (heads.TaskHead: labels + tokenizer in
    head.json), so the head decodes its own outputs without the task folder.

    Classification: the label's index in `labels`. CTC: one token per word (tokenizer "space") or per
    character (tokenizer "char", a space spelled WORD_SEPARATOR); tokenizer "slots" is "char" except that
    a word that is a slot marker of the vocabulary (`B-time`, `E-time`) is one token, as in SUPERB SF's
    character-slot tokenizer. Ids are 1-based, 0 is the CTC blank."""

    def __init__(self, kind: str, labels: list[str], tokenizer: str | None = None):
        self.kind, self.labels, self.tokenizer = kind, list(labels), tokenizer
        self._index = {t: i for i, t in enumerate(self.labels)}
        self._markers = {t for t in self.labels if len(t) > 1} if tokenizer == "slots" else set()

    def tokens(self, text: str) -> list[str]:
        if self.tokenizer == "space":
            return text.split()
        if self.tokenizer == "slots":
            out: list[str] = []
            for word in text.split():
                if out:
                    out.append(WORD_SEPARATOR)
                out += [word] if word in self._markers else list(word)
            return out
        return [WORD_SEPARATOR if c == " " else c for c in text.strip()]

    def encode(self, target: str) -> list[int] | int:
        if self.kind in ("classification", "verification"):
            return self._index[target]
        return [self._index[t] + 1 for t in self.tokens(target)]

    def decode(self, ids) -> str:
        """CTC ids (already collapsed, blanks removed) back to text in the manifest's form."""
        toks = [self.labels[i - 1] for i in ids if i > 0]
        if self.tokenizer == "space":
            return " ".join(toks)
        if self.tokenizer == "slots":  # markers stand apart as words, however the head spaced them
            text = "".join(f" {t} " if t in self._markers else (" " if t == WORD_SEPARATOR else t) for t in toks)
            return " ".join(text.split())
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
    # verification: split -> trials (index of clip a, index of clip b, same speaker) into that split;
    # qbe: split -> every (query index, document index, the query occurs in the document)
    trials: dict[str, list[tuple[int, int, bool]]] = field(default_factory=dict)
    # diarization: split -> per recording (in manifest order) its reference (start, end, speaker) segments
    segments: dict[str, list[list[tuple[float, float, str]]]] = field(default_factory=dict)

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
        path = self.root / f"{split}.tsv"
        # A qbe task has no train.tsv (read_split gives it an empty train split): the hash of no rows.
        return sha256_bytes(path.read_bytes() if path.exists() or self.type != "qbe" else b"")

    def __post_init__(self):
        self._vocabulary = Vocabulary(self.type, self.labels, self.tokenizer)


def _fail(msg: str):
    raise SpeechFTError(msg)


def load_spec(root: Path) -> dict:
    """task.yaml validated, with defaults filled in (metric, tokenizer, sample_rate); `speechft doctor` reads it too."""
    path = root / "task.yaml"
    if not root.is_dir():
        _fail(f"{root}: task folder not found; pass a folder holding task.yaml and train/dev/test.tsv")
    if not path.exists():
        _fail(f"{path}: missing; a task folder needs task.yaml (see docs/task-folder.md)")
    spec = load_yaml(read_text_file(path), str(path))  # no aliases: a 381-byte alias bomb reached 6 GB
    if not isinstance(spec, dict):
        _fail(f"{path}: must be a mapping with keys name, type, metric, labels/vocabulary")
    for key in ("name", "type"):
        if key not in spec:
            _fail(f"{path}: missing key '{key}'")
    if spec["type"] not in TASK_TYPES:
        _fail(f"{path}: type '{spec['type']}' is not one of {', '.join(TASK_TYPES)}")
    slot_task = spec["type"] == "ctc" and spec.get("tokenizer") == "slots"
    metric = spec.setdefault("metric", SLOT_METRICS[0] if slot_task else METRICS[spec["type"]][0])
    if metric not in METRICS[spec["type"]]:
        _fail(
            f"{path}: metric '{metric}' does not fit type {spec['type']}; use one of {', '.join(METRICS[spec['type']])}"
        )
    if spec["type"] == "diarization":
        n = spec.setdefault("speakers", DIARIZATION_SPEAKERS)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            _fail(f"{path}: speakers must be a positive integer (speakers per recording), got {n!r}")
    if spec["type"] in ("verification", "qbe", "diarization"):  # verification: classes are its train speakers
        return _check_common(path, spec)
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
        _check_slots(path, tok, metric, labels)
    return _check_common(path, spec)


def _check_common(path: Path, spec: dict) -> dict:
    sr = spec.setdefault("sample_rate", SAMPLE_RATE)
    if not isinstance(sr, int) or isinstance(sr, bool) or sr <= 0:
        _fail(f"{path}: sample_rate must be a positive integer, got {sr!r}")
    # Only a real YAML boolean opens the folder to outside paths (a string 'false' would be truthy).
    if not isinstance(spec.get("allow_outside_paths", False), bool):
        _fail(f"{path}: allow_outside_paths must be true or false, got {spec['allow_outside_paths']!r}")
    return spec


def _check_slots(path: Path, tokenizer: str, metric: str, vocabulary: list[str]) -> None:
    """Slot filling's own rules: its metrics need slot markers, and every marker is a B-/E- pair."""
    if metric in SLOT_METRICS and tokenizer != "slots":
        _fail(f"{path}: metric '{metric}' needs tokenizer: slots (transcripts with B-type ... E-type markers)")
    if tokenizer != "slots":
        return
    if metric not in SLOT_METRICS:
        _fail(f"{path}: a tokenizer: slots task is scored by {' or '.join(SLOT_METRICS)}, not '{metric}'")
    long = [t for t in vocabulary if len(t) > 1]
    bad = [t for t in long if not SLOT_MARKER.match(t)]
    if bad:
        _fail(f"{path}: tokenizer slots allows single characters and slot markers B-type/E-type, got {bad[:5]}")
    unpaired = sorted(t for t in long if ("E-" if t[0] == "B" else "B-") + t[2:] not in long)
    if unpaired:
        _fail(f"{path}: slot markers {unpaired[:5]} have no partner (each B-type needs its E-type)")


def _row_check(task: dict):
    """The task's own rule for a row: a known label, or a non-empty transcript of known tokens."""
    if task["type"] == "verification":  # train clips need their speaker; dev/test ones may leave it empty

        def check(row: ManifestRow) -> str | None:
            return None if row.columns.get("label", "x").strip() else "empty label (the speaker)"

        return check
    if task["type"] == "classification":
        labels = set(task["labels"])

        def check(row: ManifestRow) -> str | None:
            target = row.columns["label"].strip()
            return None if target in labels else f"label uses {[target]} not in task.yaml's labels"

        return check
    vocab = set(task["vocabulary"])
    tokenizer = Vocabulary("ctc", task["vocabulary"], task["tokenizer"])

    def check(row: ManifestRow) -> str | None:
        target = row.columns["transcript"].strip()
        unknown = sorted({x for x in tokenizer.tokens(target) if x not in vocab})
        if not target:
            return "empty transcript"
        return f"transcript uses {unknown[:5]} not in task.yaml's vocabulary" if unknown else None

    return check


def read_split(root: Path, split: str, task: dict, allow_outside: bool) -> list[Example]:
    """One split's manifest as validated examples (`task` is `load_spec`'s result)."""
    path = root / f"{split}.tsv"
    if task["type"] == "qbe" and split == "train" and not path.exists():
        return []
    if not path.exists():
        _fail(f"{path}: missing; every task folder needs {', '.join(s + '.tsv' for s in SPLITS)}")
    if task["type"] == "qbe":
        return _read_qbe_split(path, split, allow_outside)
    if task["type"] == "diarization":  # a recording: its targets are the segments of {split}.rttm
        rows = read_manifest(
            path,
            ("path", "duration"),
            hint="a diarization manifest needs path, duration",
            what=f"the {split} split",
            outside=None if allow_outside else "the task folder (allow with allow_outside_paths)",
        )
        fixed = ("path", "duration", "speaker")  # speaker, if given: who speaks in the recording
        return [
            Example(
                r.id,
                r.path,
                r.duration,
                "",
                r.columns.get("speaker", "").strip() or None,
                {h: v for h, v in r.columns.items() if h not in fixed},
            )
            for r in rows
        ]
    target_col = "transcript" if task["type"] == "ctc" else "label"
    # verification's dev and test clips need no label: their trials say which pairs share a speaker
    required = (
        ("path", "duration")
        if task["type"] == "verification" and split != "train"
        else ("path", "duration", target_col)
    )
    rows = read_manifest(
        path,
        required,
        hint=f"a {task['type']} manifest needs {', '.join(required)}",
        what=f"the {split} split",
        outside=None if allow_outside else "the task folder (allow with allow_outside_paths)",
        check=None if task["type"] == "verification" and split != "train" else _row_check(task),
    )
    examples = []
    for row in rows:
        speaker = row.columns["speaker"].strip() if "speaker" in row.columns else None
        extra = {h: v for h, v in row.columns.items() if h not in ("path", "duration", target_col, "speaker")}
        target = row.columns.get(target_col, "").strip()
        examples.append(Example(row.id, row.path, row.duration, target, speaker, extra))
    return examples


def _read_qbe_split(path: Path, split: str, allow_outside: bool) -> list[Example]:
    def check(row: ManifestRow) -> str | None:
        role = row.columns["role"].strip()
        return None if role in QBE_ROLES else f"role {role!r} is not query or document"

    rows = read_manifest(
        path,
        ("path", "duration", "role"),
        hint="a qbe manifest needs path, duration, role (query | document)",
        what=f"the {split} split",
        outside=None if allow_outside else "the task folder (allow with allow_outside_paths)",
        check=check,
    )
    fixed = ("path", "duration", "role", "speaker")
    return [
        Example(
            r.id,
            r.path,
            r.duration,
            r.columns["role"].strip(),
            r.columns.get("speaker", "").strip() or None,
            {h: v for h, v in r.columns.items() if h not in fixed},
        )
        for r in rows
    ]


def read_truth(root: Path, split: str, examples: list[Example]) -> list[tuple[int, int, bool]]:
    """`{split}_truth.txt` of a qbe folder -> every (query index, document index, occurs) of the split."""
    path = root / f"{split}_truth.txt"
    if not path.exists():
        _fail(f"{path}: missing; a qbe task needs {split}_truth.txt (lines 'QUERY_PATH DOCUMENT_PATH')")
    role = {ex.id: ex.target for ex in examples}
    index = {ex.id: i for i, ex in enumerate(examples)}
    occurs = set()
    for lineno, line in enumerate(read_text_file(path).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or role.get(parts[0]) != "query" or role.get(parts[1]) != "document":
            _fail(f"{path}:{lineno}: '{line.strip()[:80]}' is not 'QUERY_PATH DOCUMENT_PATH' of {split}.tsv")
        occurs.add((index[parts[0]], index[parts[1]]))
    queries = [i for i, ex in enumerate(examples) if ex.target == "query"]
    docs = [i for i, ex in enumerate(examples) if ex.target == "document"]
    if not queries or not docs or not occurs:
        _fail(f"{path}: a qbe split needs queries, documents and at least one occurrence")
    return [(q, d, (q, d) in occurs) for q in queries for d in docs]


def read_trials(root: Path, split: str, examples: list[Example]) -> list[tuple[int, int, bool]]:
    """`{split}_trials.txt` of a verification folder: lines `1|0 PATH_A PATH_B`, paths as in the split's manifest."""
    path = root / f"{split}_trials.txt"
    if not path.exists():
        _fail(f"{path}: missing; a verification task needs {split}_trials.txt (lines '1|0 PATH_A PATH_B')")
    index = {ex.id: i for i, ex in enumerate(examples)}
    trials = []
    for lineno, line in enumerate(read_text_file(path).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or parts[0] not in ("0", "1"):
            _fail(f"{path}:{lineno}: '{line.strip()[:80]}' is not '1|0 PATH_A PATH_B' (1 = same speaker)")
        unknown = [p for p in parts[1:] if p not in index]
        if unknown:
            _fail(f"{path}:{lineno}: {unknown[0]} is not a path of {split}.tsv; list every trial clip there")
        trials.append((index[parts[1]], index[parts[2]], parts[0] == "1"))
    kinds = {same for _, _, same in trials}
    if kinds != {True, False}:
        _fail(f"{path}: needs both same-speaker (1) and different-speaker (0) trials, got {len(trials)} of one kind")
    return trials


def read_rttm(root: Path, split: str, examples: list[Example], speakers: int) -> list[list[tuple[float, float, str]]]:
    """`{split}.rttm` of a diarization folder -> per recording of the split its (start, end, speaker) segments."""
    path = root / f"{split}.rttm"
    if not path.exists():
        _fail(f"{path}: missing; a diarization task needs {split}.rttm (lines 'SPEAKER REC 1 START DUR ... SPK ...')")
    index: dict[str, int] = {}
    for i, ex in enumerate(examples):
        rec = Path(ex.id).stem
        if rec in index:
            _fail(
                f"{root / (split + '.tsv')}: recordings {examples[index[rec]].id} and {ex.id} share the RTTM name {rec}"
            )
        index[rec] = i
    segments: list[list[tuple[float, float, str]]] = [[] for _ in examples]
    for lineno, line in enumerate(read_text_file(path).splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith(";"):
            continue
        where = f"{path}:{lineno}: '{line.strip()[:80]}'"
        try:
            start, dur = float(parts[3]), float(parts[4])
        except (IndexError, ValueError):
            start = dur = float("nan")
        if len(parts) < 8 or parts[0] != "SPEAKER" or not (start >= 0 and dur > 0):
            _fail(f"{where} is not 'SPEAKER REC 1 START DUR <NA> <NA> SPK <NA> <NA>' (START >= 0, DUR > 0)")
        if parts[1] not in index:
            _fail(f"{where}: recording {parts[1]} is not a file of {split}.tsv (REC is its name without extension)")
        i = index[parts[1]]
        if start >= examples[i].duration:
            _fail(f"{where}: starts at {start}s, after the recording ends ({examples[i].duration}s)")
        segments[i].append((start, start + dur, parts[7]))
    for i, segs in enumerate(segments):
        names = {s for _, _, s in segs}
        if len(names) > speakers:
            _fail(
                f"{path}: recording {Path(examples[i].id).stem} has {len(names)} speakers; task.yaml allows {speakers}"
            )
    if not any(segments):
        _fail(f"{path}: lists no segment of the {split} recordings; DER needs reference speech")
    return segments


def load_task(root: str | os.PathLike, allow_outside_paths: bool = False) -> Task:
    """Load and validate a task folder; raises `SpeechFTError` on the first broken file."""
    root = Path(root)
    spec = load_spec(root)
    allow = allow_outside_paths or bool(spec.get("allow_outside_paths", False))
    splits = {s: read_split(root, s, spec, allow) for s in SPLITS}
    trials, segments = {}, {}
    if spec["type"] == "diarization":
        labels = [f"speaker{k + 1}" for k in range(spec["speakers"])]  # the head's outputs, in PIT's order
        segments = {s: read_rttm(root, s, splits[s], spec["speakers"]) for s in SPLITS}
    elif spec["type"] == "verification":
        labels = sorted({ex.target for ex in splits["train"]})
        if len(labels) < 2:
            _fail(f"{root / 'train.tsv'}: a verification task needs at least 2 train speakers, got {labels}")
        trials = {s: read_trials(root, s, splits[s]) for s in TRIAL_SPLITS}
    elif spec["type"] == "qbe":
        labels = list(QBE_ROLES)
        trials = {s: read_truth(root, s, splits[s]) for s in TRIAL_SPLITS}
    else:
        labels = spec["labels"] if spec["type"] == "classification" else spec["vocabulary"]
    if spec.get("tokenizer") == "slots":
        from ..metrics_superb import parse_slots

        for s in ("dev", "test"):  # slot-value CER divides by the reference slot characters
            if not any(v for ex in splits[s] for _, v in parse_slots(ex.target)):
                _fail(
                    f"{root / f'{s}.tsv'}: no transcript holds a slot value (B-type ... E-type), so slot-value CER "
                    "is undefined; a slot-filling split needs at least one tagged slot"
                )
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
        trials=trials,
        segments=segments,
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
    target_col = {"ctc": "transcript", "qbe": "role", "diarization": None}.get(spec["type"], "label")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "task.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
        for split in SPLITS:
            rows = splits.get(split) or []
            if not rows and spec["type"] == "qbe":
                continue  # qbe trains nothing: no train.tsv
            cols = ["path", "duration"] + ([target_col] if target_col else [])
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
