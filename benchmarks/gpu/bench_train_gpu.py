"""GPU: `speechft finetune`'s loop vs a bare PyTorch loop, HuBERT-Base size, bf16 autocast.

    python benchmarks/gpu/bench_train_gpu.py [--steps 60] [--warmup 10] [--batch 8] [--repeats 2]

The same comparison as benchmarks/bench_train.py (same model, same batches through one TaskStream,
front end frozen in both, Adam + clipping, bf16 autocast with fp32 master weights), on a CUDA GPU
with a randomly initialised HuBERT Base (12 layers, d=768, 94 M parameters; throughput does not
depend on the weights) and 4-8 s clips. Also reports peak GPU memory of each loop. Target: >= 0.95x.

Exits 0 with a message when no CUDA GPU is present. `--allow-cpu` runs a tiny version on the CPU,
only to check the script itself.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_train import bare_run, speechft_run, tone_task


def rates(runs) -> str:
    return ", ".join(f"{x['loop']:.1f}" for x in runs)


def peak(fn, *args):
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    out = fn(*args)
    out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument(
        "--allow-cpu", action="store_true", help="tiny model on the CPU (checks the script, measures nothing)"
    )
    args = p.parse_args(argv)
    gpu = torch.cuda.is_available()
    if not gpu and not args.allow_cpu:
        print("bench_train_gpu: no CUDA GPU on this machine; skipped (pass --allow-cpu to dry-run on the CPU)")
        return 0

    from speechft.encoders import tiny_encoder

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        enc = tmp / "enc"
        if gpu:
            from transformers import HubertConfig

            from speechft.encoders import HubertAdapter

            HubertAdapter.from_config(HubertConfig(), provenance={"source": "random HuBERT Base"}, seed=0).save(enc)
            seconds = (4.0, 8.0)
            task = tone_task(tmp / "task", n_train=40 * args.batch, seconds=seconds)
        else:
            tiny_encoder("hubert", seed=0).save(enc)
            seconds = (0.5, 1.0)
            task = tone_task(tmp / "task", n_train=16, seconds=seconds)
            args.steps, args.warmup, args.repeats, args.workers = 4, 2, 1, 0
        sets = [f"data.batch_size={args.batch}", "precision=bf16", f"data.num_workers={args.workers}"]
        ours, bare = [], []
        for r in range(args.repeats):
            bare.append(peak(bare_run, enc, task, args.steps, args.warmup, sets))
            ours.append(peak(speechft_run, enc, task, tmp / f"run{r}", args.steps, args.warmup, sets))
        name = torch.cuda.get_device_name() if gpu else "CPU dry run"
        n = sum(1 for _ in enc.glob("*.safetensors"))
        model = "HuBERT Base" if gpu else "tiny HuBERT stand-in"
        print(
            f"\n### {name}: {model}, bf16, batch {args.batch} x {seconds[0]:g}-{seconds[1]:g} s, "
            f"{args.steps} steps (first {args.warmup} not timed), {args.repeats} alternating repeats, "
            f"{args.workers} loader workers, {n} weight file(s)\n"
        )
        print("| loop | utterances/s (each repeat) | ratio to bare | peak GPU memory |")
        print("|---|---|---|---|")
        b = max(x["loop"] for x in bare)
        print(f"| bare PyTorch loop | {rates(bare)} | 1.00x | {bare[-1]['peak_gib']:.2f} GiB |")
        o = max(x["loop"] for x in ours)
        print(
            f"| speechft finetune, training steps | {rates(ours)} | {o / b:.3f}x "
            f"(best vs best) | {ours[-1]['peak_gib']:.2f} GiB |"
        )
        e = max(x["end_to_end"] for x in ours)
        print(f"| speechft finetune, end to end (setup, 1 dev eval, save) | {e:.1f} | {e / b:.3f}x | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
