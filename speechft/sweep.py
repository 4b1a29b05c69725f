"""`speechft sweep`: how the merge coefficient alpha trades the target task against
feature similarity to the pre-trained encoder.

For each alpha the merged encoder is built in memory (one lerp per tensor along the
straight line from theta_0 to the fine-tuned weights), the fine-tuned task head saved by
`speechft finetune` scores the target task's dev split on it, and linear CKA per layer
against the pre-trained encoder is measured on a small audio sample. alpha = 0 is the
pre-trained encoder with the fine-tuned head; alpha = 1 is the fine-tuned model itself.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from .errors import SpeechFTError
from .io_utils import atomic_dir, atomic_file, write_json


def parse_alphas(text: str) -> list[float]:
    """'0,0.25,1' or 'start:stop:step' (inclusive), e.g. '0:1:0.1'."""
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if step <= 0:
                raise ValueError
            n = int(round((stop - start) / step))
            values = [round(start + i * step, 10) for i in range(n + 1)]
        else:
            values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SpeechFTError(f"--alphas {text!r}: give numbers like 0,0.25,0.5,1 or 0:1:0.1") from None
    if not values or any(not np.isfinite(a) for a in values):
        raise SpeechFTError(f"--alphas {text!r}: give at least one finite number")
    return sorted(set(values))


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
    alphas=(0.0, 0.1, 0.25, 0.5, 0.75, 1.0),
    *,
    split: str = "dev",
    cka_utterances: int = 64,
    batch_size: int = 8,
    pick_gain: float | None = None,
    max_utterances=None,
    device: str | None = None,
    overwrite: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Sweep linear interpolation between `pretrained` and `finetuned`; see the module docstring."""
    from tqdm import tqdm

    from .analysis import StreamingCKA, plot_sweep
    from .data import BucketBatchSampler, collate_waveforms, load_audio, load_task
    from .encoders import load_encoder
    from .heads import TaskHead
    from .merge import InterpolationPath

    if out is not None and Path(out).exists() and not overwrite:
        raise SpeechFTError(f"{out}: output folder already exists; choose another --out or pass --overwrite")
    if pick_gain is not None and not 0 < pick_gain <= 1:
        raise SpeechFTError(f"--pick {pick_gain}: give a fraction of the fine-tuned gain in (0, 1], e.g. 0.9")
    task = load_task(task_dir)
    head = TaskHead.load(head_dir(finetuned, task.name)).eval()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ref = load_encoder(pretrained).to(dev).eval()
    ft = load_encoder(finetuned)
    if ft.family != ref.family:
        raise SpeechFTError(f"{finetuned}: a {ft.family} encoder, but {pretrained} is {ref.family}")
    if head.input_dim != ref.hidden_size or head.num_states != ref.num_layers + 1:
        raise SpeechFTError(
            f"{finetuned}: its head expects width {head.input_dim} and {head.num_states} states; "
            f"the encoder has {ref.hidden_size} and {ref.num_layers + 1}"
        )
    head.to(dev)
    path = InterpolationPath(
        {k: v.detach().cpu() for k, v in ref.model.state_dict().items()},
        [ft.model.state_dict()],
        method="linear",
        family=ref.family,
    )
    del ft

    # The CKA sample: a seeded subset of the split, with the pre-trained states kept in memory.
    examples = task.split(split)
    idx = sorted(random.Random(seed).sample(range(len(examples)), min(cka_utterances, len(examples))))
    sample = [examples[i] for i in idx]
    batches = BucketBatchSampler([e.duration for e in sample], batch_size=batch_size, shuffle=False).batches(0)
    audio = [collate_waveforms([load_audio(sample[i].path) for i in b]) for b in batches]
    with torch.inference_mode():
        ref_states = []
        for wavs, lengths in audio:
            o = ref(wavs.to(dev), lengths.to(dev))
            ref_states.append([h[o.padding_mask].float().cpu() for h in o.hidden_states])

    work = load_encoder(pretrained).to(dev).eval()  # weights overwritten per alpha
    results = []
    for alpha in tqdm(list(alphas), desc="sweep", unit="alpha", disable=not progress):
        work.model.load_state_dict({k: v.to(dev) for k, v in path.at(alpha).items()}, strict=False)
        metric = score_head(work, head, task, split, batch_size, dev, max_utterances)
        ckas = [StreamingCKA() for _ in range(ref.num_layers + 1)]
        with torch.inference_mode():
            for (wavs, lengths), xs in zip(audio, ref_states):
                o = work(wavs.to(dev), lengths.to(dev))
                for layer, h in enumerate(o.hidden_states):
                    ckas[layer].update(xs[layer], h[o.padding_mask].float().cpu())
        per_layer = [c.value for c in ckas]
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
        "split": split,
        "metric": task.metric,
        "method": "linear",
        "cka_utterances": len(sample),
        "results": results,
    }
    if pick_gain is not None:
        report["pick"] = pick_alpha(results, task.metric, pick_gain)
    if out is not None:
        with atomic_dir(out, overwrite=overwrite) as tmp:
            write_json(tmp / "sweep.json", report)
            with atomic_file(tmp / "sweep.md") as f:
                f.write(markdown_table(report))
            plot_sweep(report, tmp / "sweep.png")
        report["out"] = str(out)
    return report


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


def add_arguments(p):
    p.add_argument("--pretrained", required=True, help="the pre-trained encoder folder (theta_0)")
    p.add_argument("--finetuned", required=True, help="a `speechft finetune` output folder (encoder + heads/)")
    p.add_argument("--task", required=True, help="the target task folder (its head is in FINETUNED/heads/NAME)")
    p.add_argument("--alphas", default="0,0.1,0.25,0.5,0.75,1", help="e.g. 0,0.25,1 or 0:1:0.1 (default: %(default)s)")
    p.add_argument("--out", required=True, help="output folder: sweep.json, sweep.md, sweep.png")
    p.add_argument("--split", default="dev")
    p.add_argument(
        "--pick",
        type=float,
        default=None,
        metavar="FRACTION",
        help="choose the smallest alpha keeping FRACTION (e.g. 0.9) of the fine-tuned model's gain",
    )
    p.add_argument("--cka-utterances", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device")
    p.add_argument("--overwrite", action="store_true")


def main(args):
    report = sweep(
        args.pretrained,
        args.finetuned,
        args.task,
        args.out,
        parse_alphas(args.alphas),
        split=args.split,
        cka_utterances=args.cka_utterances,
        batch_size=args.batch_size,
        pick_gain=args.pick,
        device=args.device,
        overwrite=args.overwrite,
    )
    print(markdown_table(report))
    print(f"wrote {args.out}/sweep.json, sweep.md, sweep.png")
