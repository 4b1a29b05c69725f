"""`speechft sweep`: how the merge coefficient alpha trades the target task against
feature similarity to the pre-trained encoder.

For each alpha the merged encoder is built in memory (one lerp per tensor along the
straight line from theta_0 to the fine-tuned weights), the fine-tuned task head saved by
`speechft finetune` scores the target task's dev split on it, and linear CKA per layer
against the pre-trained encoder (speechft.cka.LayerwiseCKA) is measured on a small audio
sample. alpha = 0 is the pre-trained encoder with the fine-tuned head; alpha = 1 is the
fine-tuned model itself. The knobs are `SweepConfig` (--config YAML, --set key=value).

This module owns sweep.json: it writes it, `read_sweep` validates it for `speechft analyze
--sweep`, and speechft.plots.plot_sweep draws it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .data.tasks import SPLITS
from .encoders.hub import resolve_encoder
from .errors import SpeechFTError
from .io_utils import atomic_dir, atomic_file, check_output_location, read_json, write_json
from .provenance import check_parents, parent_notes


@dataclass
class SweepConfig:
    """The knobs of `speechft sweep` (`--config YAML`, `--set key=value`, or its flags)."""

    alphas: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.25, 0.5, 0.75, 1.0])
    split: str = "dev"  # split of the target task that is scored (and sampled for CKA)
    cka_utterances: int = 64  # seeded sample of the split on which CKA is measured
    batch_size: int = 8
    # Choose the smallest alpha keeping this fraction (e.g. 0.9) of the fine-tuned model's gain.
    pick_gain: float | None = None
    max_utterances: int | None = None  # score at most this many utterances per alpha (None: all)
    seed: int = 0  # seed of the CKA sample

    def __post_init__(self):
        if not self.alphas or any(not np.isfinite(a) for a in self.alphas):
            raise SpeechFTError(f"alphas {self.alphas}: give at least one finite number")
        if self.pick_gain is not None and not 0 < self.pick_gain <= 1:
            raise SpeechFTError(f"--pick {self.pick_gain}: give a fraction of the fine-tuned gain in (0, 1], e.g. 0.9")
        for k in ("cka_utterances", "batch_size"):
            if getattr(self, k) < 1:
                raise SpeechFTError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.max_utterances is not None and self.max_utterances < 1:
            raise SpeechFTError(f"max_utterances must be >= 1, got {self.max_utterances}")
        if self.split not in SPLITS:
            raise SpeechFTError(f"split {self.split!r}: a task folder's splits are {', '.join(SPLITS)}")
        if self.seed < 0:
            raise SpeechFTError(f"seed must be >= 0, got {self.seed}")


# Each alpha is one merge and one scoring of the dev split: more than this is a typo (0:1:1e-12), not a sweep.
MAX_ALPHAS = 1001


def parse_alphas(values: Sequence[str] | str) -> list[float]:
    """`--alphas 0 0.25 1` (values) or `--alphas 0:1:0.1` (start:stop:step, inclusive), sorted and unique.
    At most MAX_ALPHAS of them, counted before any list is built."""
    tokens = [values] if isinstance(values, str) else list(values)
    text = " ".join(tokens)
    if any("," in t for t in tokens):
        raise SpeechFTError(f"--alphas {text}: separate values by spaces (--alphas 0 0.25 1), not commas")
    try:
        if len(tokens) == 1 and ":" in tokens[0]:
            start, stop, step = (float(x) for x in tokens[0].split(":"))
            if step <= 0:
                raise ValueError
            n = int(round((stop - start) / step))
            if n + 1 > MAX_ALPHAS:
                raise SpeechFTError(
                    f"--alphas {text}: this range has {n + 1:.3g} points, more than the limit of {MAX_ALPHAS}; "
                    "use a larger step"
                )
            out = [round(start + i * step, 10) for i in range(n + 1)]
        else:
            out = [float(x) for x in tokens]
    except (ValueError, OverflowError):  # OverflowError: an infinite start or stop
        raise SpeechFTError(f"--alphas {text}: give numbers like 0 0.25 0.5 1, or a range 0:1:0.1") from None
    if not out or any(not np.isfinite(a) for a in out):
        raise SpeechFTError(f"--alphas {text}: give at least one finite number")
    if len(out) > MAX_ALPHAS:
        raise SpeechFTError(f"--alphas: {len(out)} values, more than the limit of {MAX_ALPHAS}")
    return sorted(set(out))


def head_dir(finetuned: str | os.PathLike, task_name: str) -> Path:
    path = Path(finetuned) / "heads" / task_name
    if not (path / "head.json").exists():
        have = (
            sorted(p.name for p in (Path(finetuned) / "heads").glob("*"))
            if (Path(finetuned) / "heads").exists()
            else []
        )
        raise SpeechFTError(
            f"{path}: no fine-tuned head for task '{task_name}' (heads here: {have or 'none'}); "
            "sweep needs a folder written by `speechft finetune` on that task"
        )
    return path


@torch.inference_mode()
def score_head(
    encoder, head, task, split: str = "dev", batch_size: int = 8, device="cpu", max_utterances: int | None = None
) -> float:
    """The task metric of `head` on top of `encoder` over one split (greedy CTC decoding)."""
    from .data.dataset import make_loader
    from .metrics import compute_metric

    refs, hyps = [], []
    loader = make_loader(task, split, batch_size=batch_size, shuffle=False)
    for batch in loader:
        if max_utterances is not None and len(refs) >= max_utterances:
            break
        b = batch.to(device)
        out = encoder(b.wavs, b.lengths)
        refs += b.targets
        hyps += head.predict(head(out.hidden_states, out.frame_lengths), out.frame_lengths)
    return compute_metric(task.metric, refs, hyps, task.labels)


def pick_alpha(results: list[dict], metric: str, fraction: float) -> dict:
    """The smallest alpha whose gain over alpha=0 reaches `fraction` of the largest alpha's gain."""
    from .metrics import LOWER_IS_BETTER

    rows = sorted(results, key=lambda r: r["alpha"])
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    base, top = rows[0]["target_metric"], rows[-1]["target_metric"]
    full_gain = sign * (top - base)
    rule = (
        f"smallest alpha whose {metric} gain over alpha={rows[0]['alpha']:g} reaches {fraction:.0%} of the gain at "
        f"alpha={rows[-1]['alpha']:g}"
    )
    if full_gain <= 0:
        return {
            "rule": rule,
            "alpha": None,
            "reason": f"no gain to keep: {metric} at alpha={rows[-1]['alpha']:g} is "
            f"not better than at alpha={rows[0]['alpha']:g}",
        }
    for r in rows:
        if sign * (r["target_metric"] - base) >= fraction * full_gain - 1e-12:
            return {"rule": rule, "alpha": r["alpha"], "target_metric": r["target_metric"], "cka_mean": r["cka_mean"]}
    return {"rule": rule, "alpha": rows[-1]["alpha"]}


def sweep(
    pretrained,
    finetuned,
    task_dir,
    out=None,
    alphas: Sequence[float] | None = None,
    *,
    config: SweepConfig | None = None,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    allow_foreign_parent: bool = False,
    **options,
) -> dict:
    """Sweep linear interpolation between `pretrained` and `finetuned`; see the module docstring.

    `config` (a SweepConfig) and `options` (its fields: split, cka_utterances, batch_size,
    pick_gain, max_utterances, seed) set the knobs; `alphas` overrides config.alphas. The
    encoders and the head run on `device` (default: CUDA when available)."""
    from .cka import LayerwiseCKA
    from .config import resolve_device
    from .data import load_task
    from .encoders import load_encoder
    from .heads import TaskHead
    from .progress import progress_bar

    cfg = _config(config, alphas, options)
    pretrained = resolve_encoder(pretrained)  # a Hub id: its converted folder
    if out is not None:
        check_output_location(out, {"--pretrained": pretrained, "--finetuned": finetuned, "--task": task_dir})
    if out is not None and Path(out).exists() and not overwrite:
        raise SpeechFTError(f"{out}: output folder already exists; choose another --out or pass --overwrite")
    dev = resolve_device(device)
    task = load_task(task_dir)
    head = TaskHead.load(head_dir(finetuned, task.name)).eval()
    foreign = check_parents(pretrained, [finetuned], allow_foreign_parent)  # its recorded theta0 is `pretrained`
    ref, path = _interpolation(pretrained, finetuned, head, dev)
    head.to(dev)
    sample, audio, ref_states = _cka_sample(ref, task, cfg, dev)

    work = load_encoder(pretrained).to(dev).eval()  # weights overwritten per alpha
    results = []
    for alpha in progress_bar(list(cfg.alphas), desc="sweep", unit="alpha", disable=not progress):
        work.model.load_state_dict({k: v.to(dev) for k, v in path.at(alpha).items()}, strict=False)
        metric = score_head(work, head, task, cfg.split, cfg.batch_size, dev, cfg.max_utterances)
        similarity = LayerwiseCKA(ref.num_layers + 1)
        with torch.inference_mode():
            for (wavs, lengths), xs in zip(audio, ref_states):
                o = work(wavs.to(dev), lengths.to(dev))
                similarity.update(xs, [h[o.padding_mask].float().cpu() for h in o.hidden_states])
        per_layer = similarity.values
        results.append(
            {
                "alpha": alpha,
                "target_metric": metric,
                "cka_mean": float(np.nanmean(per_layer)),
                "cka_per_layer": per_layer,
            }
        )
    report = {
        "pretrained": str(pretrained),
        "finetuned": str(finetuned),
        "task": task.name,
        "split": cfg.split,
        "metric": task.metric,
        "method": "linear",
        "cka_utterances": len(sample),
        "results": results,
        **({"foreign_parents": foreign} if foreign else {}),
    }
    if cfg.pick_gain is not None:
        report["pick"] = pick_alpha(results, task.metric, cfg.pick_gain)
    if out is not None:
        _write_outputs(report, out, overwrite)
        report["out"] = str(out)
    parent_notes(pretrained, [finetuned], foreign)
    return report


def _config(config: SweepConfig | None, alphas, options: dict) -> SweepConfig:
    import dataclasses

    valid = {f.name for f in dataclasses.fields(SweepConfig)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise SpeechFTError(f"unknown sweep option(s) {unknown}; valid: {', '.join(sorted(valid))}")
    if alphas is not None:
        options = {**options, "alphas": [float(a) for a in alphas]}
    return dataclasses.replace(config or SweepConfig(), **options)


def _interpolation(pretrained, finetuned, head, device):
    """The pre-trained encoder on `device` and the straight line from its weights to the fine-tuned ones."""
    from .encoders import load_encoder
    from .merge import InterpolationPath

    # Validated as `speechft merge` validates its inputs (family, config, names, shapes, finite weights).
    path = InterpolationPath.from_folders(pretrained, [finetuned], method="linear")
    ref = load_encoder(pretrained).to(device).eval()
    if head.input_dim != ref.hidden_size or head.num_states != ref.num_layers + 1:
        raise SpeechFTError(
            f"{finetuned}: its head expects width {head.input_dim} and {head.num_states} states; "
            f"the encoder has {ref.hidden_size} and {ref.num_layers + 1}"
        )
    return ref, path


def _cka_sample(ref, task, cfg: SweepConfig, device):
    """A seeded subset of the split, its batches of audio, and the pre-trained states kept in memory."""
    from .data import BucketBatchSampler, collate_waveforms, load_audio

    examples = task.split(cfg.split)
    idx = sorted(random.Random(cfg.seed).sample(range(len(examples)), min(cfg.cka_utterances, len(examples))))
    sample = [examples[i] for i in idx]
    batches = BucketBatchSampler([e.duration for e in sample], batch_size=cfg.batch_size, shuffle=False).batches(0)
    audio = [collate_waveforms([load_audio(sample[i].path) for i in b]) for b in batches]
    ref_states = []
    with torch.inference_mode():
        for wavs, lengths in audio:
            o = ref(wavs.to(device), lengths.to(device))
            ref_states.append([h[o.padding_mask].float().cpu() for h in o.hidden_states])
    return sample, audio, ref_states


def _write_outputs(report: dict, out, overwrite: bool) -> None:
    from .plots import plot_sweep

    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_json(tmp / "sweep.json", report)
        with atomic_file(tmp / "sweep.md") as f:
            f.write(markdown_table(report))
        plot_sweep(report, tmp / "sweep.png")


def read_sweep(path: str | os.PathLike) -> dict:
    """Validate sweep output: {"results": [{"alpha", "target_metric", "cka_mean", "cka_per_layer"}, ...]}."""
    data = read_json(path)
    rows = data.get("results") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise SpeechFTError(
            f"{path}: needs a non-empty 'results' list of {{alpha, target_metric, cka_mean, "
            "cka_per_layer}} (the format `speechft sweep` writes)"
        )
    for i, r in enumerate(rows):
        for key in ("alpha", "cka_mean"):
            if not isinstance(r, dict) or not isinstance(r.get(key), (int, float)):
                raise SpeechFTError(f"{path}: results[{i}] has no numeric '{key}'")
    return data


def markdown_table(report: dict) -> str:
    lines = [
        f"# alpha sweep: {report['task']} ({report['split']}, {report['metric']})\n",
        f"| alpha | {report['metric']} | mean CKA vs pre-trained |",
        "|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(f"| {r['alpha']:g} | {r['target_metric']:.4f} | {r['cka_mean']:.4f} |")
    if "pick" in report:
        p = report["pick"]
        lines.append(f"\npick ({p['rule']}): alpha = {p['alpha']}" + (f" ({p['reason']})" if p.get("reason") else ""))
    return "\n".join(lines) + "\n"


# ---- CLI ---------------------------------------------------------------------------------------------
# dedicated flag (argparse dest) -> SweepConfig key
FLAGS = {
    "split": "split",
    "pick": "pick_gain",
    "cka_utterances": "cka_utterances",
    "batch_size": "batch_size",
    "max_utterances": "max_utterances",
    "seed": "seed",
}


def add_arguments(p):
    from .cli import add_device_option, add_quiet_option
    from .config import add_config_options

    d = SweepConfig()
    p.add_argument("--pretrained", required=True, help="the pre-trained encoder folder (theta_0)")
    p.add_argument("--finetuned", required=True, help="a `speechft finetune` output folder (encoder + heads/)")
    p.add_argument("--task", required=True, help="the target task folder (its head is in FINETUNED/heads/NAME)")
    p.add_argument(
        "--alphas",
        nargs="+",
        default=None,
        metavar="ALPHA",
        help=f"values (0 0.25 1) or one range start:stop:step (0:1:0.1); default {' '.join(map(str, d.alphas))}",
    )
    p.add_argument("--out", required=True, help="output folder: sweep.json, sweep.md, sweep.png")
    p.add_argument("--split", default=None, help=f"default: {d.split}")
    p.add_argument(
        "--pick",
        type=float,
        default=None,
        metavar="FRACTION",
        help="choose the smallest alpha keeping FRACTION (e.g. 0.9) of the fine-tuned model's gain",
    )
    p.add_argument("--cka-utterances", type=int, default=None, help=f"default: {d.cka_utterances}")
    p.add_argument("--batch-size", type=int, default=None, help=f"default: {d.batch_size}")
    p.add_argument("--max-utterances", type=int, default=None, help="score at most this many utterances per alpha")
    p.add_argument("--seed", type=int, default=None, help=f"seed of the CKA sample (default: {d.seed})")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument(
        "--allow-foreign-parent",
        action="store_true",
        help="sweep a fine-tune whose speechft.json records another pre-trained parent (recorded)",
    )
    add_config_options(p, SweepConfig, "alphas=[0,0.5,1]")
    add_device_option(p)
    add_quiet_option(p)


def main(args):
    from .config import config_from_args

    if args.alphas is not None:
        args.alphas = parse_alphas(args.alphas)
    cfg = config_from_args(SweepConfig, args, {**FLAGS, "alphas": "alphas"})
    report = sweep(
        args.pretrained,
        args.finetuned,
        args.task,
        args.out,
        config=cfg,
        device=args.device,
        overwrite=args.overwrite,
        progress=not args.quiet,
        allow_foreign_parent=args.allow_foreign_parent,
    )
    print(markdown_table(report))
    print(f"wrote {args.out}/sweep.json, sweep.md, sweep.png")
