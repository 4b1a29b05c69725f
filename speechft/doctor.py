"""`speechft doctor PATH`: check an encoder folder or a task folder and report every problem at once.

Loading (`load_encoder`, `load_task`) stops at the first problem, which is what a run
wants; a person fixing a folder wants the whole list. Doctor runs the same checks file
by file, and adds the slower ones (decode every audio file, hash the weights, run the
encoder once on --device). The weight checks read files with speechft.safetensors_io and
need no model code; `--no-forward` stops there, without importing transformers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import SpeechFTError


@dataclass
class Finding:
    level: str  # "error" | "warning" | "ok"
    where: str
    message: str

    def __str__(self) -> str:
        return f"[{self.level}] {self.where}: {self.message}"


def _safetensors_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def check_weights(folder: str | Path) -> tuple[str | None, list[Finding]]:
    """(family, findings) from the folder's files alone: family, weight files, NaN, stale hashes.
    Reads only headers, bytes and config.json, so it imports neither transformers nor the adapters.
    The family is None when the weights cannot be loaded at all."""
    from .encoders.families import detect_family
    from .provenance import read_provenance
    from .safetensors_io import SafetensorsFile, nonfinite_count

    folder = Path(folder)
    try:
        family = detect_family(folder)
    except SpeechFTError as e:
        return None, [Finding("error", str(folder), str(e))]
    found = [Finding("ok", str(folder), f"family {family}")]
    files = _safetensors_files(folder)
    if not files:
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        what = f" (found pickled {', '.join(pickled[:3])}, which speechft never unpickles)" if pickled else ""
        found.append(
            Finding(
                "error",
                str(folder),
                f"no *.safetensors weights{what}; convert .pt/.bin checkpoints with `speechft encoder convert`",
            )
        )
        return None, found
    prov = read_provenance(folder)
    for f in files:
        try:
            st = SafetensorsFile(f)
        except SpeechFTError as e:
            found.append(Finding("error", str(f), f"unreadable safetensors file ({str(e).removeprefix(f'{f}: ')})"))
            return None, found
        try:
            for key in st.entries:
                bad = nonfinite_count(st.read(key))
                if bad:
                    found.append(Finding("error", f"{f.name}:{key}", f"{bad} NaN/infinite values"))
            digest = st.sha256()  # hashed during the reads above: one pass over the file
        finally:
            st.close()
        want = (prov.get("weights_sha256") or {}).get(f.name)
        if want and digest != want:
            found.append(
                Finding(
                    "warning",
                    str(f),
                    "sha256 differs from speechft.json: the weights changed after "
                    "they were written (provenance is stale)",
                )
            )
    return family, found


def check_encoder(folder: str | Path, device: str | None = None) -> list[Finding]:
    """Every problem of an encoder folder (missing files, keys, shapes, NaN, stale hashes, forward)."""
    family, found = check_weights(folder)
    if family is None:
        return found
    import torch

    from .config import resolve_device
    from .data.audio import SAMPLE_RATE
    from .encoders import family_class

    folder = Path(folder)
    try:
        enc = family_class(family).load(folder, check_finite=False)
    except SpeechFTError as e:
        found.append(Finding("error", str(folder), str(e)))
        return found
    dev = resolve_device(device)
    try:
        with torch.no_grad():
            wav = torch.zeros(1, SAMPLE_RATE).normal_(0, 0.1)
            out = enc.to(dev)(wav.to(dev), torch.tensor([SAMPLE_RATE], device=dev))
        ok = all(torch.isfinite(h).all() for h in out.hidden_states)
        found.append(
            Finding(
                "ok" if ok else "error",
                str(folder),
                f"forward on 1 s ({dev.type}): {len(out.hidden_states)} hidden states, {int(out.frame_lengths[0])} "
                f"frames, {'finite' if ok else 'NON-FINITE outputs'}",
            )
        )
    except Exception as e:
        found.append(Finding("error", str(folder), f"forward pass failed: {type(e).__name__}: {e}"))
    return found


def check_task(folder: str | Path, decode_audio: bool = True, max_seconds: float = 60.0) -> list[Finding]:
    """Every problem of a task folder: spec, each manifest, and (optionally) every audio file."""
    import soundfile as sf

    from .data.audio import SAMPLE_RATE, load_audio
    from .data.tasks import SPLITS, load_spec, read_split

    folder = Path(folder)
    try:
        spec = load_spec(folder)
    except SpeechFTError as e:
        return [Finding("error", str(folder), str(e))]
    found = [Finding("ok", str(folder / "task.yaml"), f"{spec['type']} task '{spec['name']}', metric {spec['metric']}")]
    splits = {}
    for split in SPLITS:
        try:
            splits[split] = read_split(folder, split, spec, bool(spec.get("allow_outside_paths", False)))
            found.append(Finding("ok", f"{folder / split}.tsv", f"{len(splits[split])} examples"))
        except SpeechFTError as e:
            found.append(Finding("error", f"{folder / split}.tsv", str(e)))
    if spec["type"] == "classification" and "train" in splits:
        seen = {ex.target for ex in splits["train"]}
        missing = [c for c in spec["labels"] if c not in seen]
        if missing:
            found.append(Finding("warning", f"{folder}/train.tsv", f"classes with no training example: {missing[:10]}"))
    if "train" in splits and "test" in splits:
        tr = {ex.speaker for ex in splits["train"] if ex.speaker}
        te = {ex.speaker for ex in splits["test"] if ex.speaker}
        if te and tr and te <= tr:
            found.append(
                Finding(
                    "warning", str(folder), "every test speaker also appears in train (results measure seen speakers)"
                )
            )
    if decode_audio:
        for split, examples in splits.items():
            for ex in examples:
                try:
                    info = sf.info(str(ex.path))
                    wav = load_audio(ex.path)
                    notes = []
                    if len(wav) > max_seconds * SAMPLE_RATE:
                        notes.append(
                            f"{len(wav) / SAMPLE_RATE:.0f} s long (over {max_seconds:g} s): memory grows with "
                            "clip length; segment it, or crop with data.max_seconds / --max-seconds"
                        )
                    if info.channels > 1:
                        notes.append(f"{info.channels} channels (down-mixed)")
                    if info.samplerate != SAMPLE_RATE:
                        notes.append(f"{info.samplerate} Hz (resampled)")
                    if abs(len(wav) / SAMPLE_RATE - ex.duration) > max(0.1, 0.05 * ex.duration):
                        notes.append(f"manifest duration {ex.duration} s but audio is {len(wav) / SAMPLE_RATE:.2f} s")
                    if float(abs(wav).max()) < 1e-4:
                        notes.append("silent")
                    if notes:
                        found.append(Finding("warning", str(ex.path), "; ".join(notes)))
                except SpeechFTError as e:
                    found.append(Finding("error", f"{split}.tsv", str(e)))
                except Exception as e:
                    found.append(Finding("error", str(ex.path), f"cannot read audio ({str(e).splitlines()[0]})"))
    return found


def check_ctc_frames(encoder_folder: str | Path, task_folder: str | Path) -> list[Finding]:
    """CTC needs at least one encoder frame per token (plus a blank between repeated tokens).
    Every clip of a ctc task whose transcript needs more frames than this encoder gives for
    the clip's duration (from the manifest) can never be learnt; each is one error."""
    from .data import load_task
    from .encoders import load_encoder
    from .heads import ctc_misfits

    try:
        task = load_task(task_folder)
        if task.type != "ctc":
            return []
        enc = load_encoder(encoder_folder)
    except SpeechFTError:
        return []  # already reported by the folder's own checks
    found = []
    for split, examples in task.splits.items():
        bad = ctc_misfits(enc, examples, task.vocabulary)  # the same rule as finetune's refusal
        for ex, n, need in bad:
            found.append(
                Finding(
                    "error",
                    f"{task.root / split}.tsv:{ex.id}",
                    f"{ex.duration:g} s gives {n} frames with {Path(encoder_folder).name} "
                    f"({enc.family}) but its transcript needs at least {need} for CTC; drop or "
                    "re-segment the clip, or use an encoder with more frames per second",
                )
            )
        if not bad:
            found.append(
                Finding(
                    "ok",
                    f"{task.root / split}.tsv",
                    f"every transcript fits the frames of {Path(encoder_folder).name} for CTC",
                )
            )
    return found


def is_task_folder(path: Path) -> bool:
    return (path / "task.yaml").exists() or (path / "train.tsv").exists()


def doctor(
    path: str | Path, decode_audio: bool = True, device: str | None = None, forward: bool = True
) -> list[Finding]:
    path = Path(path)
    if is_task_folder(path):
        return check_task(path, decode_audio=decode_audio)
    from .encoders.hub import resolve_encoder

    try:
        path = resolve_encoder(path)  # a Hub id: its converted folder is what gets checked
    except SpeechFTError as e:
        return [Finding("error", str(path), str(e))]
    if not forward:
        return check_weights(path)[1]
    return check_encoder(path, device=device)


def add_arguments(p):
    from .cli import add_device_option

    p.add_argument(
        "paths",
        nargs="+",
        help="encoder folder(s) and/or task folder(s); given both, ctc tasks are "
        "also checked against each encoder's frame rate",
    )
    p.add_argument("--no-audio", action="store_true", help="skip decoding every audio file of task folders")
    p.add_argument(
        "--no-forward",
        action="store_true",
        help="check encoder folders' files only (family, weights, NaN, hashes): no model is loaded or run",
    )
    p.add_argument("--json", action="store_true", help="print findings as JSON")
    p.add_argument("--problems-only", action="store_true", help="print only errors and warnings")
    add_device_option(p)


def main(args):
    if args.device is not None and not args.no_forward:
        from .config import resolve_device

        resolve_device(args.device)  # an unavailable device is refused before any check runs
    findings = [
        f
        for p in args.paths
        for f in doctor(p, decode_audio=not args.no_audio, device=args.device, forward=not args.no_forward)
    ]
    # An encoder and a ctc task given together: can the encoder's frame rate carry the transcripts?
    tasks = [Path(p) for p in args.paths if is_task_folder(Path(p))]
    encoders = [Path(p) for p in args.paths if not is_task_folder(Path(p))]
    findings += [f for e in encoders for t in tasks for f in check_ctc_frames(e, t)]
    if args.json:
        print(json.dumps([f.__dict__ for f in findings], indent=2))
    else:
        for f in findings:
            if not (args.problems_only and f.level == "ok"):
                print(f)
    errors = sum(f.level == "error" for f in findings)
    warnings = sum(f.level == "warning" for f in findings)
    print(f"doctor: {errors} error(s), {warnings} warning(s) in {len(args.paths)} folder(s)")
    return 1 if errors else 0
