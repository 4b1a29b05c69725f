"""GPU: evaluation and fine-tuning speed of a HuBERT Base-size encoder (random weights), fp32 vs bf16.

    python benchmarks/gpu/bench_eval_gpu.py [--clips 256] [--epochs 5] [--steps 40] [--batch 8]

On one CUDA GPU, with a randomly initialised HuBERT Base (12 layers, d=768, 94 M parameters; speed does not
depend on the weights) and 4-8 s tone clips (a classification task and a CTC task of --clips training clips):

- **extraction**: `extract_features` over the training split, fp32 and `--precision bf16` (autocast), in
  x real time (seconds of audio per second of wall time) and peak GPU memory; the bf16 features' largest
  difference from fp32 is printed too;
- **probe epoch**: `speechft.probe.evaluate` on the cached bf16 features (warm cache, so no encoder pass):
  seconds per probe epoch per task (classification: pooled vectors; CTC: every frame of 13 states);
- **fine-tuning step**: `speechft finetune`'s loop (benchmarks/bench_train.py's `speechft_run`, bf16, batch
  --batch, first steps not timed): seconds per step and peak GPU memory.

Exits 0 with a message where no CUDA GPU exists; `--allow-cpu` runs a tiny version on the CPU, only to check the
script itself (the numbers then mean nothing).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_eval_processes import ctc_task
from bench_train import speechft_run, tone_task


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def extraction(enc: Path, task_dir: Path, device: str) -> list[dict]:
    from speechft.data import load_task
    from speechft.features import extract_features, open_source
    from speechft.probe import ProbeConfig

    task = load_task(task_dir)
    audio = sum(ex.duration for ex in task.split("train"))
    source = open_source(enc, device=device)
    kind = "pooled" if task.type == "classification" else "frames"
    rows, ref = [], None
    for precision in ("fp32", "bf16", "bf16"):  # bf16 twice: the first call also warms the kernels up
        cfg = ProbeConfig(precision=precision, dtype="float32")
        reset_peak()
        sync()
        t0 = time.perf_counter()
        feats = extract_features(source, task, "train", kind, cfg, progress=False)
        sync()
        wall = time.perf_counter() - t0
        x = feats.data if kind == "pooled" else np.concatenate([feats.get(i) for i in range(len(feats.index))])
        if ref is None:
            ref = x
        rows.append(
            {
                "precision": precision,
                "xrt": audio / wall,
                "peak": peak_gib(),
                "maxdiff": float(np.abs(x - ref).max()),
                "scale": float(np.abs(ref).max()),
            }
        )
    return [rows[0], rows[2]]


def probe_epochs(enc: Path, tasks: list[Path], cache: Path, epochs: int, device: str) -> dict:
    from speechft.feature_cache import FeatureCache
    from speechft.probe import evaluate

    opts = dict(lrs=[1e-3], epochs=epochs, min_steps=0, precision="bf16", progress=False, device=device)
    evaluate([enc], tasks, None, cache=FeatureCache(cache), **opts)  # cold: extracts
    reset_peak()
    r = evaluate([enc], tasks, None, cache=FeatureCache(cache), **opts)  # warm: the probes alone
    out = {name: t["seconds"]["total"] / epochs for name, t in r["models"][0]["tasks"].items()}
    out["peak"] = peak_gib()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=256, help="training clips per task")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--allow-cpu", action="store_true", help="tiny model on the CPU (checks the script only)")
    a = p.parse_args(argv)
    gpu = torch.cuda.is_available()
    if not gpu and not a.allow_cpu:
        print("bench_eval_gpu: no CUDA GPU on this machine; skipped (pass --allow-cpu to dry-run on the CPU)")
        return 0
    device = "cuda" if gpu else "cpu"
    from speechft.encoders import tiny_encoder

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        enc = tmp / "enc"
        if gpu:
            from transformers import HubertConfig

            from speechft.encoders import HubertAdapter

            HubertAdapter.from_config(HubertConfig(), provenance={"source": "random HuBERT Base"}, seed=0).save(enc)
            seconds, clips = (4.0, 8.0), a.clips
        else:
            tiny_encoder("hubert", seed=0).save(enc)
            seconds, clips = (0.5, 1.0), 16
            a.epochs, a.steps, a.warmup = 1, 4, 2
        cls = tone_task(tmp / "cls", clips, seconds)
        ctc = ctc_task(tmp / "ctc", clips)
        ext = {"cls": extraction(enc, cls, device), "ctc": extraction(enc, ctc, device)}
        probes = probe_epochs(enc, [cls, ctc], tmp / "cache", a.epochs, device)
        reset_peak()
        sets = [f"data.batch_size={a.batch}", "precision=bf16", "data.num_workers=4" if gpu else "data.num_workers=0"]
        ft = speechft_run(enc, cls, tmp / "ft", a.steps, a.warmup, sets)
        ft_peak = peak_gib()
    name = torch.cuda.get_device_name() if gpu else "CPU dry run"
    model = "HuBERT Base (random)" if gpu else "tiny HuBERT stand-in"
    print(f"\n### {name}: {model}; {clips} clips of {seconds[0]:g}-{seconds[1]:g} s per task\n")
    print("| measure | fp32 | bf16 | bf16 / fp32 | peak GPU memory (fp32, bf16) |")
    print("|---|---:|---:|---:|---|")
    for key, label in (("cls", "pooled"), ("ctc", "frames")):
        f32, b16 = ext[key]
        ratio = b16["xrt"] / f32["xrt"]
        diff = f"bf16 max abs diff {b16['maxdiff']:.3g} of {f32['scale']:.3g}"
        print(
            f"| extraction, {label}: x real time | {f32['xrt']:.0f} | {b16['xrt']:.0f} | {ratio:.2f}x |"
            f" {f32['peak']:.2f}, {b16['peak']:.2f} GiB ({diff}) |"
        )
    cls_epoch = f"{probes['tones']:.3f} s"
    print(f"| probe epoch, classification (cached, bf16 features) | | {cls_epoch} | | {probes['peak']:.2f} GiB |")
    print(f"| probe epoch, CTC (cached, bf16 features) | | {probes['beeps']:.3f} s | | |")
    print(f"| fine-tuning step, batch {a.batch} (bf16) | | {a.batch / ft['loop']:.3f} s | | {ft_peak:.2f} GiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
