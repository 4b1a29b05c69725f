"""Feature similarity and weight deviation between a pre-trained encoder and models derived from it.

The paper explains Speech-FT this way: a merged model moves far from theta_0 in weight
space, yet its features stay close to the pre-trained encoder's, layer by layer. This
module measures both sides:

* linear CKA per layer between each model's hidden states and the pre-trained model's on
  the same audio (the maths, with its references, is speechft/cka.py), plus the mean
  cosine similarity of aligned frames. Frames are aligned by construction: every model
  runs the same padded batch and must report the same frame lengths; only valid
  (unpadded) frames are compared. Both the minibatch estimate (unbiased HSIC averaged
  over minibatches, Nguyen et al. 2021) and the exact full-data CKA are reported.
* ||theta - theta_0|| per transformer layer and in total, absolute and relative to
  ||theta_0||, over the parameters fine-tuning may change (front end and
  pre-training-only parameters excluded). Folders are read tensor by tensor through
  speechft.safetensors_io.

`speechft analyze --pretrained DIR --models DIR [DIR ...] (--task TASKDIR | --audio MANIFEST.tsv) --out DIR`
writes analysis.json, analysis.md and PNG plots; its numeric knobs are `AnalyzeConfig`
(--config YAML, --set key=value).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .cka import CKA_REFERENCE, MIN_FRAMES, LayerwiseCKA
from .data.audio import SAMPLE_RATE
from .data.manifest import read_audio_list
from .data.tasks import SPLITS
from .encoders.hub import resolve_encoder
from .errors import SpeechFTError
from .io_utils import atomic_dir, atomic_file, check_output_location, write_json
from .provenance import check_parents, parent_notes

CKA_ESTIMATORS = ("minibatch", "full")


@dataclass
class AnalyzeConfig:
    """The numeric knobs of `speechft analyze` (`--config YAML`, `--set key=value`, or its flags)."""

    split: str = "dev"  # split of --task whose audio is used
    max_utterances: int | None = 1000  # random (seeded) subset of at most this many utterances
    # Utterances per batch = one CKA minibatch; keep it >= 8 for the minibatch estimator.
    batch_size: int = 8
    cka_estimator: str = "minibatch"  # reported and plotted: minibatch | full (both are saved)
    seed: int = 0  # seed of the utterance subset

    def __post_init__(self):
        if self.batch_size < 1:
            raise SpeechFTError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.cka_estimator not in CKA_ESTIMATORS:
            raise SpeechFTError(f"--cka '{self.cka_estimator}' is not an estimator; use minibatch or full")
        if self.max_utterances is not None and self.max_utterances < 1:
            raise SpeechFTError(f"--max-utterances must be at least 1, got {self.max_utterances}")
        if self.split not in SPLITS:
            raise SpeechFTError(f"--split {self.split!r}: a task folder's splits are {', '.join(SPLITS)}")
        if self.seed < 0:
            raise SpeechFTError(f"--seed must be >= 0, got {self.seed}")


# ---------------------------------------------------------------------------------------------------
# Weight distance
# ---------------------------------------------------------------------------------------------------
# Transformer layer index from a parameter name: `encoder.layers.3.` (wav2vec2 family,
# DeCoAR) or a leading `layers.3.` (Whisper's encoder). Anchored so that e.g. data2vec's
# `encoder.pos_conv_embed.layers.2.` or `feature_extractor.conv_layers.2.` are not layers.
_LAYER_RE = re.compile(r"(?:^|\.)encoder\.layers\.(\d+)\.|^layers\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """0-based transformer layer of a parameter (its output is hidden state index + 1), or None."""
    m = _LAYER_RE.search(name)
    if not m:
        return None
    return int(m.group(1) if m.group(1) is not None else m.group(2))


class _Weights:
    """name -> tensor access to an encoder folder (read tensor by tensor through
    safetensors_io.Checkpoint: single file or shards), an Encoder, or a state dict."""

    def __init__(self, src):
        self.where = "state dict"
        self.family = None
        self._state: Mapping | None = None
        self._checkpoint = None
        if isinstance(src, torch.nn.Module):
            model = getattr(src, "model", src)
            self.family = getattr(src, "family", None)
            self._state = model.state_dict()
        elif isinstance(src, Mapping):
            self._state = src
        else:
            from .encoders import detect_family
            from .safetensors_io import Checkpoint

            path = Path(src)
            self.where = str(path)
            self.family = detect_family(path)
            self._checkpoint = Checkpoint(path)

    def keys(self) -> list[str]:
        return list(self._state.keys()) if self._state is not None else list(self._checkpoint.spec())

    def get(self, key: str) -> torch.Tensor:
        if self._state is not None:
            return torch.as_tensor(self._state[key])
        return self._checkpoint.read(key)

    def close(self) -> None:
        if self._checkpoint is not None:
            self._checkpoint.close()


def _norms(sq_diff: float, sq_ref: float, params: int) -> dict:
    dist, norm = math.sqrt(sq_diff), math.sqrt(sq_ref)
    return {"distance": dist, "norm0": norm, "relative": dist / norm if norm > 0 else float("nan"), "params": params}


def weight_distance(theta0, theta, encoder_family: str | None = None) -> dict:
    """||theta - theta0|| per transformer layer and in total, absolute and relative to ||theta0||.

    `theta0`, `theta`: encoder folders, Encoder objects or state dicts (name -> tensor; the
    names of the folder's model.safetensors). Only floating-point tensors that fine-tuning
    can change count: the family's front end and pre-training-only parameters are left
    out (`family_info(f).is_frontend / is_pretraining_only`). Layers are 0-based as in the
    parameter names; everything outside a transformer layer is grouped as "other".
    """
    w0 = _Weights(theta0)
    try:
        w1 = _Weights(theta)
    except BaseException:
        w0.close()
        raise
    try:
        return _distance(w0, w1, encoder_family)
    finally:
        w0.close()
        w1.close()


def _distance(w0: _Weights, w1: _Weights, encoder_family: str | None) -> dict:
    from .encoders.families import family_info

    family = encoder_family or w0.family or w1.family
    if family is None:
        raise ValueError("weight_distance on state dicts needs encoder_family= (e.g. 'hubert')")
    for w in (w0, w1):
        if w.family is not None and w.family != family:
            raise SpeechFTError(
                f"{w.where}: a {w.family} encoder, but the comparison is for {family}; "
                "compare models of the same family"
            )
    cls = family_info(family)
    keys0, keys1 = set(w0.keys()), set(w1.keys())
    for a, b, missing in ((w0, w1, sorted(keys0 - keys1)), (w1, w0, sorted(keys1 - keys0))):
        if missing:
            raise SpeechFTError(
                f"{b.where}: lacks weight '{missing[0]}' found in {a.where} ({len(missing)} keys "
                "differ); the two are not the same architecture"
            )
    groups: dict[int | str, list[float]] = {}
    excluded = {"frontend": 0, "pretraining_only": 0, "non_float": 0}
    total = [0.0, 0.0, 0]
    for key in sorted(keys0):
        if cls.is_frontend(key):
            excluded["frontend"] += 1
            continue
        if cls.is_pretraining_only(key):
            excluded["pretraining_only"] += 1
            continue
        t0, t1 = w0.get(key), w1.get(key)
        if not t0.is_floating_point():
            excluded["non_float"] += 1
            continue
        if t0.shape != t1.shape:
            raise SpeechFTError(
                f"{w1.where}: weight '{key}' has shape {tuple(t1.shape)}, {w0.where} has "
                f"{tuple(t0.shape)}; the two are not the same architecture"
            )
        t0, t1 = t0.to(torch.float64), t1.to(torch.float64)
        for w, t in ((w0, t0), (w1, t1)):
            if not torch.isfinite(t).all():
                raise SpeechFTError(
                    f"{w.where}: weight '{key}' contains NaN or infinite values; the checkpoint "
                    "is corrupt (re-export or re-train it)"
                )
        sq_diff, sq_ref = float((t1 - t0).square().sum()), float(t0.square().sum())
        idx = layer_index(key)
        g = groups.setdefault("other" if idx is None else idx, [0.0, 0.0, 0])
        for acc in (g, total):
            acc[0] += sq_diff
            acc[1] += sq_ref
            acc[2] += t0.numel()
    layers = sorted(k for k in groups if k != "other")
    return {
        "family": family,
        "total": _norms(*total),
        "per_layer": [{"layer": i, **_norms(*groups[i])} for i in layers],
        "other": _norms(*groups["other"]) if "other" in groups else None,
        "excluded_tensors": excluded,
    }


# ---------------------------------------------------------------------------------------------------
# Which audio to run
# ---------------------------------------------------------------------------------------------------
def _audio_items(audio, split: str) -> tuple[list[tuple[str, Path, float | None]], dict]:
    from .data import Task, load_task

    if isinstance(audio, Task) or (Path(audio).is_dir()):
        task = audio if isinstance(audio, Task) else load_task(audio)
        if split not in task.splits:
            raise SpeechFTError(f"{task.root}: no split '{split}'; choose one of {', '.join(task.splits)}")
        items = [(e.id, e.path, e.duration) for e in task.split(split)]
        return items, {"task": str(task.root), "task_name": task.name, "split": split}
    return read_audio_list(audio), {"manifest": str(audio)}


def _durations(items) -> list[float]:
    import soundfile as sf

    out = []
    for _rid, p, d in items:
        if d is None:
            try:
                d = sf.info(str(p)).duration
            except Exception:
                raise SpeechFTError(f"{p}: cannot read the audio header; use wav, flac or ogg") from None
        out.append(float(d))
    return out


# ---------------------------------------------------------------------------------------------------
# analyze
# ---------------------------------------------------------------------------------------------------
def _labels(models: list, labels: list[str] | None) -> list[str]:
    if labels is not None:
        if len(labels) != len(models):
            raise SpeechFTError(f"--labels gives {len(labels)} names for {len(models)} models; give one per model")
        if len(set(labels)) != len(labels):
            raise SpeechFTError(f"--labels repeats a name: {labels}; labels must be distinct")
        return list(labels)
    out = [Path(m).name for m in models]
    if len(set(out)) != len(out):  # e.g. run1/model, run2/model
        out = [f"{Path(m).parent.name}/{Path(m).name}" for m in models]
    if len(set(out)) != len(out):
        out = [f"{i}:{o}" for i, o in enumerate(out)]
    return out


def analyze(
    pretrained,
    models: list,
    audio,
    out=None,
    *,
    config: AnalyzeConfig | None = None,
    labels: list[str] | None = None,
    sweep=None,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    allow_foreign_parent: bool = False,
    **options,
) -> dict:
    """Compare each model in `models` with `pretrained` on the same audio.

    `audio`: a task folder (or `Task`; `split` chooses the manifest) or an audio manifest
    TSV. Up to `max_utterances` are drawn at random (seeded), run in duration-sorted
    batches of `batch_size` through every encoder on `device` (default: CUDA when
    available); per layer the valid frames feed a `StreamingCKA` (one minibatch per batch)
    and the frame cosine. All encoders are held in memory together so the pre-trained
    model runs once per batch. `config` (an AnalyzeConfig) and `options` (its fields:
    split, max_utterances, batch_size, cka_estimator, seed) set the knobs.

    Both CKA estimates are stored (`cka_minibatch_per_layer`, `cka_full_per_layer`);
    `cka_estimator` ("minibatch" or "full") picks the one reported as `cka_per_layer` and
    plotted. A minibatch holds the frames of `batch_size` utterances: with one utterance
    per minibatch it only sees within-utterance variation and reads low (measured on tiny
    encoders: 0.923 vs 0.985 full-data); from about 8 utterances on the two agree to
    about 0.001 (benchmarks/README.md, "analysis").

    Writes `out`/analysis.json, analysis.md and PNG plots when `out` is given; returns the
    same dict.
    """
    from .config import resolve_device
    from .sweep import read_sweep

    cfg = _config(config, options)
    if not models:
        raise SpeechFTError("give at least one model folder to compare with the pre-trained encoder (--models)")
    names = _labels(models, labels)  # from the names given (a Hub id's, not its cache folder's)
    pretrained, models = resolve_encoder(pretrained), [resolve_encoder(m) for m in models]
    sweep_data = read_sweep(sweep) if sweep is not None else None
    if out is not None:
        check_output_location(out, {"--pretrained": pretrained, "--models": models, "--task/--audio": audio})
    if out is not None and Path(out).exists() and not overwrite:
        raise SpeechFTError(f"{out}: output folder already exists; choose another --out or pass --overwrite")
    dev = resolve_device(device)
    items, source = _audio_items(audio, cfg.split)
    if cfg.max_utterances is not None and len(items) > cfg.max_utterances:
        keep = sorted(random.Random(cfg.seed).sample(range(len(items)), cfg.max_utterances))
        items = [items[i] for i in keep]
    durations = _durations(items)

    # Weights first: cheap, and it catches mismatched checkpoints before any audio runs.
    foreign = check_parents(pretrained, models, allow_foreign_parent)  # their recorded theta0 is `pretrained`
    distances = [weight_distance(pretrained, m) for m in models]
    ref, encs = _load_encoders(pretrained, models, dev)
    similarity, seconds = _measure(ref, encs, models, items, durations, cfg.batch_size, dev, progress)
    frames = similarity[0].cosine_frames
    if similarity[0].minibatches == 0:
        raise SpeechFTError(
            f"only {frames} frames of audio: CKA needs at least {MIN_FRAMES}; give more or longer audio"
        )
    results = [
        _model_row(name, path, sim, distance, cfg.cka_estimator)
        for path, name, sim, distance in zip(models, names, similarity, distances)
    ]
    report = _summary(pretrained, ref, source, len(items), seconds, similarity[0], cfg, results)
    report.update({"foreign_parents": foreign} if foreign else {})
    if sweep_data is not None:
        report["sweep"] = {"path": str(sweep), **sweep_data}
    if out is not None:
        _write_outputs(report, out, overwrite)
        report["out"] = str(out)
    parent_notes(pretrained, models, foreign)
    return report


def _config(config: AnalyzeConfig | None, options: dict) -> AnalyzeConfig:
    import dataclasses

    valid = {f.name for f in dataclasses.fields(AnalyzeConfig)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise SpeechFTError(f"unknown analyze option(s) {unknown}; valid: {', '.join(sorted(valid))}")
    return dataclasses.replace(config or AnalyzeConfig(), **options)


def _load_encoders(pretrained, models: list[Path], device: torch.device):
    from .encoders import load_encoder

    ref = load_encoder(pretrained).to(device).eval()
    encs = [load_encoder(m).to(device).eval() for m in models]
    for m, e in zip(models, encs):
        if e.num_layers != ref.num_layers:
            raise SpeechFTError(
                f"{m}: {e.num_layers} layers, the pre-trained encoder has {ref.num_layers}; "
                "layer-wise comparison needs the same depth"
            )
    return ref, encs


def _measure(ref, encs, models, items, durations, batch_size: int, device, progress: bool):
    """One LayerwiseCKA per model against `ref` over every batch; also the seconds of audio."""
    from .data import BucketBatchSampler, collate_waveforms, load_audio
    from .progress import progress_bar

    similarity = [LayerwiseCKA(ref.num_layers + 1, full=True, cosines=True) for _ in encs]
    seconds = 0.0
    batches = BucketBatchSampler(durations, batch_size=batch_size, shuffle=False).batches(0)
    with torch.inference_mode():
        for batch in progress_bar(batches, desc="analyze", unit="batch", disable=not progress):
            wavs, lengths = collate_waveforms([load_audio(items[i][1]) for i in batch])
            wavs, lengths = wavs.to(device), lengths.to(device)
            base = ref(wavs, lengths)
            valid = base.padding_mask
            xs = [h[valid] for h in base.hidden_states]
            for k, enc in enumerate(encs):
                o = enc(wavs, lengths)
                if not torch.equal(o.frame_lengths, base.frame_lengths):
                    raise SpeechFTError(
                        f"{models[k]}: produces different frame counts from the pre-trained encoder "
                        "on the same audio; frames cannot be aligned (different front end?)"
                    )
                similarity[k].update(xs, [h[valid] for h in o.hidden_states])
            seconds += float(lengths.sum()) / SAMPLE_RATE
    return similarity, seconds


def _summary(pretrained, ref, source: dict, utterances: int, seconds: float, sim: LayerwiseCKA, cfg, results) -> dict:
    """analysis.json: what was compared, on which audio, how, and the per-model rows."""
    report = {
        "pretrained": {
            "path": str(pretrained),
            "family": ref.family,
            "num_layers": ref.num_layers,
            "hidden_size": ref.hidden_size,
        },
        "audio": {
            **source,
            "utterances": utterances,
            "seconds": round(seconds, 3),
            "frames": sim.cosine_frames,
            "frames_in_cka": sim.frames,
            "minibatches": sim.minibatches,
            "batch_size": cfg.batch_size,
            "seed": cfg.seed,
        },
        "cka": {
            "estimator": cfg.cka_estimator,
            "cka_minibatch_per_layer": "unbiased-HSIC linear CKA averaged over minibatches of valid frames, "
            f"one minibatch per batch of utterances ({CKA_REFERENCE})",
            "cka_full_per_layer": "exact full-data linear CKA (Kornblith et al. 2019), same frames",
            "layers": "hidden state index: 0 = input to the first transformer layer, i = output of layer i",
        },
        "weight_distance": {
            "over": "parameters fine-tuning can change (front end and pre-training-only excluded)",
            "per_layer": "0-based transformer layers as in the parameter names (layer i produces hidden state i + 1)",
        },
        "models": results,
    }
    return report


def _model_row(name: str, path: Path, sim: LayerwiseCKA, distance: dict, estimator: str) -> dict:
    minibatch, full = sim.values, sim.full_values
    per_layer = minibatch if estimator == "minibatch" else full
    cos = sim.mean_cosines
    return {
        "label": name,
        "path": str(path),
        "cka_per_layer": per_layer,
        "cka_mean": float(np.nanmean(per_layer)),
        "cka_minibatch_per_layer": minibatch,
        "cka_full_per_layer": full,
        "cosine_per_layer": cos,
        "cosine_mean": float(np.mean(cos)),
        "weight_distance": distance,
    }


def _write_outputs(report: dict, out, overwrite: bool) -> None:
    from .plots import (
        plot_cka_per_layer,
        plot_cosine_per_layer,
        plot_distance_per_layer,
        plot_distance_vs_cka,
        plot_sweep,
    )

    results = report["models"]
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_json(tmp / "analysis.json", report)
        with atomic_file(tmp / "analysis.md") as f:
            f.write(markdown_table(report))
        plot_cka_per_layer(results, tmp / "cka_per_layer.png")
        plot_cosine_per_layer(results, tmp / "cosine_per_layer.png")
        plot_distance_per_layer(results, tmp / "weight_distance_per_layer.png")
        plot_distance_vs_cka(results, tmp / "weight_distance_vs_cka.png")
        if "sweep" in report:
            plot_sweep(report["sweep"], tmp / "alpha_vs_cka.png")


def markdown_table(report: dict) -> str:
    rows = ["| model | mean CKA | min-layer CKA | mean cosine | ‖θ−θ₀‖ | ‖θ−θ₀‖ / ‖θ₀‖ |", "|---|---|---|---|---|---|"]
    for r in report["models"]:
        wd = r["weight_distance"]["total"]
        rows.append(
            f"| {r['label']} | {r['cka_mean']:.4f} | {np.nanmin(r['cka_per_layer']):.4f} | "
            f"{r['cosine_mean']:.4f} | {wd['distance']:.4g} | {wd['relative']:.4f} |"
        )
    a = report["audio"]
    head = (
        f"# Feature similarity and weight distance to {report['pretrained']['path']}\n\n"
        f"{a['utterances']} utterances, {a['seconds']:.1f} s, {a['frames']} frames; "
        f"CKA estimator: {report['cka']['estimator']} (see analysis.json).\n\n"
    )
    return head + "\n".join(rows) + "\n"


# ---------------------------------------------------------------------------------------------------
# CLI: speechft analyze
# ---------------------------------------------------------------------------------------------------
# dedicated flag (argparse dest) -> AnalyzeConfig key
FLAGS = {
    "split": "split",
    "max_utterances": "max_utterances",
    "batch_size": "batch_size",
    "cka": "cka_estimator",
    "seed": "seed",
}


def add_arguments(p) -> None:
    from .cli import add_device_option, add_quiet_option
    from .config import add_config_options

    d = AnalyzeConfig()
    p.add_argument("--pretrained", required=True, help="the pre-trained encoder folder (theta_0)")
    p.add_argument("--models", required=True, nargs="+", help="encoder folders to compare with it")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", help="a task folder; its --split manifest gives the audio")
    src.add_argument("--audio", help="an audio manifest .tsv with a 'path' column (relative to the manifest)")
    p.add_argument("--split", default=None, help=f"split of --task to use (default: {d.split})")
    p.add_argument("--out", required=True, help="output folder (analysis.json, analysis.md, PNG plots)")
    p.add_argument(
        "--max-utterances",
        type=int,
        default=None,
        help=f"random (seeded) subset of at most this many utterances (default: {d.max_utterances})",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="utterances per batch = one CKA minibatch; keep it >= 8 for the minibatch estimator "
        f"(default: {d.batch_size})",
    )
    p.add_argument(
        "--cka",
        choices=CKA_ESTIMATORS,
        default=None,
        help="CKA reported and plotted: minibatch (unbiased HSIC averaged over minibatches, Nguyen et al. "
        f"2021) or full (exact full-data linear CKA); both are saved (default: {d.cka_estimator})",
    )
    p.add_argument("--labels", nargs="+", help="names for the models in plots and tables (default: folder names)")
    p.add_argument("--sweep", help="sweep.json from `speechft sweep`: also plot alpha vs CKA")
    p.add_argument("--seed", type=int, default=None, help=f"seed for the utterance subset (default: {d.seed})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument(
        "--allow-foreign-parent",
        action="store_true",
        help="compare models whose speechft.json records another pre-trained parent (recorded)",
    )
    add_config_options(p, AnalyzeConfig, "max_utterances=200")
    add_device_option(p)
    add_quiet_option(p)


def main(args) -> int:
    from .config import config_from_args
    from .data import load_task

    cfg = config_from_args(AnalyzeConfig, args, FLAGS)
    # --task must name a task folder (load_task says what is wrong with it); --audio a manifest.
    audio = load_task(args.task) if args.task else args.audio
    report = analyze(
        args.pretrained,
        args.models,
        audio,
        args.out,
        config=cfg,
        labels=args.labels,
        sweep=args.sweep,
        device=args.device,
        overwrite=args.overwrite,
        progress=not args.quiet,
        allow_foreign_parent=args.allow_foreign_parent,
    )
    print(markdown_table(report))
    print(f"wrote {args.out}/analysis.json, analysis.md and plots")
    return 0
