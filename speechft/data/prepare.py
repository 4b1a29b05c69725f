"""`speechft data prepare NAME --root DIR --out DIR`: a real corpus -> a task folder.

    speechft data prepare librispeech-pr --root /data/LibriSpeech --out tasks/pr \\
        --lexicon librispeech-lexicon-200k-g2p.txt librispeech-lexicon-allothers-g2p.txt
    speechft data prepare voxceleb1-sid --root /data/VoxCeleb1 --out tasks/sid
    speechft data prepare iemocap-er --root /data/IEMOCAP_full_release --fold 1 --out tasks/er1
    speechft data prepare tedlium3-asr --root /data/TEDLIUM_release-3 --out tasks/ted10h
    speechft data prepare snips-sf --root /data/audio_snips --out tasks/sf
    speechft data prepare quesst14-qbe --root /data/quesst14Database --out tasks/qbe
    speechft data prepare voxceleb1-asv --root /data/VoxCeleb1 --out tasks/asv   (ROOT/veri_test2.txt)
    speechft data prepare librimix-sd --root /data/LibriMix --out tasks/sd   (ROOT/Libri2Mix/wav16k/max)

PR transcripts: SUPERB's PR task is LibriSpeech with every word replaced by its phones
(71 ARPAbet phones with stress marks in s3prl's vocabulary). Give the word -> phones
lexicon with ``--lexicon`` (one or more files; s3prl uses librispeech-lexicon-200k-g2p.txt plus
librispeech-lexicon-allothers-g2p.txt, which together cover all of LibriSpeech; the first
pronunciation of a word wins, as in s3prl), or, if you already ran s3prl's SuperbPR data
preparation, point ``--phone-csv`` at its csv folder (train-clean-100.csv, dev-clean.csv,
test-clean.csv with phone transcriptions); their absolute wav paths are re-rooted at --root.

What each corpus becomes (audio in place or generated, split rules, deviations from s3prl)
is written into the task folder's README.md; see speechft/data/corpora/ (one reader per corpus).
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections import Counter
from pathlib import Path

from ..cli import add_quiet_option
from ..errors import SpeechFTError
from ..io_utils import atomic_dir, check_output_location
from .corpora import CORPORA, corpus_reader, progress_bars
from .tasks import load_task, write_task_folder


def prepare_corpus(
    name: str, root, out, overwrite: bool = False, task_name: str | None = None, progress: bool = True, **opts
) -> Path:
    """Read corpus `name` under `root` and write a validated task folder at `out`.

    Options (None = the corpus default) depend on the corpus: see `CORPORA`. `task_name`
    replaces the task's name (by default the SUPERB key: pr, asr, sid, er, ks, ic, ...). `progress`: False
    draws no progress bars."""
    reader, accepted, _ = corpus_reader(name)
    opts = {k: v for k, v in opts.items() if v is not None and v != () and v != []}
    unknown = sorted(set(opts) - set(accepted))
    if unknown:
        raise SpeechFTError(
            f"{name} does not take option(s) {', '.join('--' + u.replace('_', '-') for u in unknown)}"
            f"; it takes {', '.join('--' + a.replace('_', '-') for a in accepted) or 'none'}"
        )
    check_options(opts, task_name, reader)
    root, out = Path(root).expanduser(), Path(out)
    if not root.is_dir():
        raise SpeechFTError(f"{root}: corpus folder not found; pass --root the folder you extracted the corpus into")
    check_output_location(out, {"--root": root})
    if out.exists() and not overwrite:
        raise SpeechFTError(f"{out}: output folder already exists; choose another --out or pass --overwrite")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        with progress_bars(progress):
            prep = reader(root.resolve(), tmp, **opts)
        for split in ("train", "dev", "test") if prep.spec["type"] != "qbe" else ("dev", "test"):  # qbe: no train
            if not prep.splits.get(split):
                raise SpeechFTError(f"{root}: the {name} {split} split came out empty; check --root and the options")
        spec = dict(prep.spec)
        if task_name:
            spec["name"] = str(task_name)
        spec["source"] = {
            "corpus": name,
            "root": str(root.resolve()),
            "options": {k: _plain(v) for k, v in opts.items()},
        }
        # manifests via the shared writer (into a sub-folder, then moved up beside the audio)
        sub = write_task_folder(
            tmp / ".manifests", spec, prep.splits, files={"README.md": _readme(name, root, prep).encode("utf-8")}
        )
        for f in sub.iterdir():
            os.replace(f, tmp / f.name)
        shutil.rmtree(sub)
        for link, target in prep.links.items():
            # absolute: task folders get copied around, corpora stay where they were extracted
            os.symlink(Path(target).resolve(), tmp / link, target_is_directory=True)
        try:
            load_task(tmp)
        except SpeechFTError as e:  # name the final folder, not the temporary one
            raise SpeechFTError(str(e).replace(str(tmp), str(out))) from None
    return out


# option -> (lowest, lowest allowed itself, what it is); every value must also be finite
_RANGES = {
    "dev_fraction": (0.0, False, "a share of the training utterances in (0, 1)"),
    "hours": (0.0, True, "a number of hours >= 0 (0 = all)"),
    "min_seconds": (0.0, True, "a number of seconds >= 0"),
    "max_seconds": (0.0, False, "a number of seconds > 0"),
}
_PATHS = ("lexicon", "phone_csv", "split_file", "test_root", "trials")
_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_options(opts: dict, task_name: str | None, reader=None) -> None:
    """The corpus options' values, checked before the corpus is read (so a typo costs no scan of it);
    `reader`'s own defaults stand in for the options not given."""
    import inspect

    defaults = {k: v.default for k, v in inspect.signature(reader).parameters.items()} if reader else {}
    flag = {k: "--" + k.replace("_", "-") for k in (*_RANGES, *_PATHS)}
    for key, (low, inclusive, what) in _RANGES.items():
        v = opts.get(key)
        if v is not None and not (math.isfinite(v) and (v >= low if inclusive else v > low)):
            raise SpeechFTError(f"{flag[key]} {v}: give {what}")
    if opts.get("dev_fraction") is not None and opts["dev_fraction"] >= 1:
        raise SpeechFTError(f"--dev-fraction {opts['dev_fraction']}: give {_RANGES['dev_fraction'][2]}")
    low, high = (opts.get(k, defaults.get(k)) for k in ("min_seconds", "max_seconds"))
    if isinstance(low, (int, float)) and isinstance(high, (int, float)) and low >= high:
        raise SpeechFTError(f"--min-seconds {low} is not below --max-seconds {high} (no segment would be kept)")
    for key in _PATHS:
        for p in [opts[key]] if isinstance(opts.get(key), (str, os.PathLike)) else opts.get(key) or []:
            if not Path(p).expanduser().exists():
                raise SpeechFTError(f"{flag[key]} {p}: not found")
    if task_name is not None and not _TASK_NAME.fullmatch(str(task_name)):
        raise SpeechFTError(
            f"--name {task_name!r}: a task name is letters, digits, '_', '.' or '-' (at most 64), e.g. sid"
        )


def _plain(v):
    """An option value as YAML-safe data (paths become strings)."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v if isinstance(v, (bool, int, float, str)) else str(v)


def _readme(name: str, root: Path, prep) -> str:
    spec = prep.spec
    lines = [f"# {spec['name']}", "", f"Prepared by `speechft data prepare {name}` from `{root.resolve()}`.", ""]
    lines += [f"- {n}" for n in prep.notes]
    lines += ["", "| split | utterances | hours |", "|---|---|---|"]
    for split in ("train", "dev", "test"):
        rows = prep.splits.get(split, [])
        lines.append(f"| {split} | {len(rows)} | {sum(r['duration'] for r in rows) / 3600:.2f} |")
    if spec["type"] == "classification":
        counts = {s: Counter(r["label"] for r in prep.splits.get(s, [])) for s in ("train", "dev", "test")}
        if len(spec["labels"]) <= 40:
            lines += ["", "| label | train | dev | test |", "|---|---|---|---|"]
            lines += [
                f"| {lab} | {counts['train'][lab]} | {counts['dev'][lab]} | {counts['test'][lab]} |"
                for lab in spec["labels"]
            ]
        else:
            lines += ["", f"{len(spec['labels'])} classes."]
    elif spec["type"] == "qbe":
        lines += ["", "No training split; where each query occurs: dev_truth.txt and test_truth.txt."]
    elif spec["type"] == "diarization":
        lines += ["", "Recordings of 2 speakers; reference segments in train.rttm, dev.rttm, test.rttm; metric der."]
    elif spec["type"] == "verification":
        speakers = len({r["label"] for r in prep.splits.get("train", [])})
        lines += ["", f"{speakers} train speakers; dev and test scored on dev_trials.txt and test_trials.txt."]
    else:
        lines += [
            "",
            f"{len(spec['vocabulary'])} output tokens ({spec['tokenizer']} tokenizer), metric {spec['metric']}.",
        ]
    if prep.links:
        lines += [
            "",
            "Audio is referenced in place: "
            + ", ".join(f"`{k}` -> `{Path(v).resolve()}`" for k, v in prep.links.items())
            + " (symlinks; re-run prepare if the corpus moves).",
        ]
    return "\n".join(lines) + "\n"


def add_arguments(p):
    import argparse

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "corpora:\n" + "\n".join(f"  {n:<18} {d}" for n, (_, _, d) in CORPORA.items())
    p.add_argument("corpus", choices=list(CORPORA), metavar="NAME", help="corpus: " + ", ".join(CORPORA))
    p.add_argument("--root", required=True, help="the folder the corpus was extracted into")
    p.add_argument("--out", required=True, help="output task folder")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--name", help="task name in task.yaml (default: the SUPERB key, e.g. pr, sid, er)")
    g = p.add_argument_group("corpus options (each applies to the corpora named)")
    g.add_argument(
        "--lexicon",
        nargs="+",
        action="extend",
        metavar="FILE",
        help="librispeech-pr: word -> phones lexicon file(s), first wins",
    )
    g.add_argument("--phone-csv", help="librispeech-pr: folder of s3prl SuperbPR csv files with phone transcripts")
    g.add_argument(
        "--skip-oov",
        action="store_true",
        default=None,
        help="librispeech-pr: drop utterances with words missing from the lexicon instead of failing",
    )
    g.add_argument(
        "--sets",
        nargs="+",
        action="extend",
        metavar="SUBSET",
        help="librispeech-*: the train, dev and test subsets (default train-clean-100 dev-clean test-clean)",
    )
    g.add_argument("--split-file", help="voxceleb1-sid, voxceleb1-asv: iden_split.txt (default ROOT/iden_split.txt)")
    g.add_argument("--trials", help="voxceleb1-asv: the test trial list (default ROOT/veri_test2.txt)")
    g.add_argument("--fold", type=int, help="iemocap-er: session 1-5 held out as the test set (default 1)")
    g.add_argument(
        "--dev-fraction",
        type=float,
        help="iemocap-er (default 0.2), aishell3 (default 0.05): share of training utterances kept for dev",
    )
    g.add_argument("--test-root", help="speechcommands-ks: SUPERB's official test set speech_commands_test_set_v0.01")
    g.add_argument(
        "--hours", type=float, help="tedlium3-asr: training hours to keep (default 10, the paper's; 0 = all)"
    )
    g.add_argument("--min-seconds", type=float, help="tedlium3-asr: shortest segment kept (default 1)")
    g.add_argument("--max-seconds", type=float, help="tedlium3-asr: longest segment kept (default 60)")
    add_quiet_option(p)


def main(args):
    opts = dict(
        lexicon=args.lexicon,
        phone_csv=args.phone_csv,
        skip_oov=args.skip_oov,
        sets=args.sets,
        split_file=args.split_file,
        trials=args.trials,
        fold=args.fold,
        dev_fraction=args.dev_fraction,
        test_root=args.test_root,
        hours=args.hours,
        min_seconds=args.min_seconds,
        max_seconds=args.max_seconds,
    )
    out = prepare_corpus(
        args.corpus, args.root, args.out, overwrite=args.overwrite, task_name=args.name, progress=not args.quiet, **opts
    )
    task = load_task(out)
    sizes = ", ".join(f"{s} {len(task.splits[s])}" for s in ("train", "dev", "test"))
    print(f"wrote task folder {out} ({task.name}: {task.type}, {task.num_outputs} outputs; {sizes} utterances)")
