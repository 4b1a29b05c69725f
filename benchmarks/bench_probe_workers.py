"""`evaluate` with each task's probes in one process vs spread over the cores, side by side.

    python benchmarks/bench_probe_workers.py [--tasks pr asr ks sid] [--workers 2] [--repeats 2]
                                             [--size small|demo] [--encoder DIR] [--bench DIR]

Run it WITHOUT OMP_NUM_THREADS (as a user runs `speechft evaluate`). Encoder: the embedded default
(Whisper tiny.en) or --encoder DIR. Tasks: the synthetic benchmark (espeak-ng, seed 0), generated into a
temp folder unless --bench names one; the probe grid is the full demo's (LRs 1e-2 1e-3 x seeds 0 1,
8 epochs, >= 100 steps). First one cold `evaluate` into an empty cache, which also shows tasks over the
same clips (asr and pr) sharing one extraction; then, features cached, `evaluate --probe-workers 1`
and `--probe-workers N` alternately, best of --repeats each. The script asserts that both give the same
results.json numbers (every task's per-seed dev and test, chosen LR and layer weights).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from bench_inputs import encoder_and_bench

from speechft.feature_cache import FeatureCache
from speechft.probe import evaluate
from speechft.probe_train import ProbeConfig


def numbers(results: dict) -> dict:
    return {
        t: (r["chosen_lr"], r["lr_search"], r["layer_weights_per_seed"])
        for t, r in results["models"][0]["tasks"].items()
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["pr", "asr", "ks", "sid"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--size", default="small", choices=("small", "demo"))
    p.add_argument("--encoder", type=Path, default=None, help="default: the embedded default encoder")
    p.add_argument("--bench", type=Path, default=None, help="a synthetic benchmark folder (default: generate)")
    args = p.parse_args()
    cfg = ProbeConfig(lrs=[1e-2, 1e-3], seeds=[0, 1], epochs=8, min_steps=100)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        encoder, bench = encoder_and_bench(args.encoder, args.bench, tmp, args.size, args.tasks)
        tasks = [bench / name for name in args.tasks]
        cache = FeatureCache(tmp / "features")

        def run(workers: int) -> tuple[float, dict]:
            t0 = time.perf_counter()
            r = evaluate([encoder], tasks, None, config=cfg, cache=cache, probe_workers=workers, progress=False)
            return time.perf_counter() - t0, r

        print(
            f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
            f"tasks {' '.join(args.tasks)} ({args.size}); grid 2 LRs x 2 seeds, 8 epochs, >= 100 steps"
        )
        cold, first = run(1)
        passes = {t: r["encoder_passes"] for t, r in first["models"][0]["tasks"].items()}
        print(f"cold cache, 1 worker: {cold:.1f} s; encoder passes per task (3 = its splits extracted): {passes}")
        best = {1: float("inf"), args.workers: float("inf")}
        for _ in range(args.repeats):
            for w in best:
                seconds, r = run(w)
                assert numbers(r) == numbers(first), f"--probe-workers {w} gave other numbers"
                best[w] = min(best[w], seconds)
        print("| tasks | probe workers 1, s | probe workers N, s | N | speed-up | same numbers |")
        print("|---|---:|---:|---:|---:|---|")
        print(
            f"| {' '.join(args.tasks)} | {best[1]:.1f} | {best[args.workers]:.1f} | {args.workers} | "
            f"{best[1] / best[args.workers]:.2f}x | yes |"
        )
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
