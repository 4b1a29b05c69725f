"""Probe training: the reference loop (train_probe per LR and seed) vs train_probes, side by side.

    python benchmarks/bench_probe_train.py [--tasks ks pr] [--lrs 1e-2 1e-3] [--seeds 0 1]
                                           [--epochs 8] [--min-steps 100] [--repeats 2]
                                           [--encoder DIR] [--bench DIR]

Run it WITHOUT OMP_NUM_THREADS, as a user runs `speechft evaluate`: torch's thread count is one of the
things measured. Encoder: the embedded default (Whisper tiny.en, `speechft encoder default`), or
--encoder DIR. Tasks: the synthetic benchmark (size small, seed 0, espeak-ng), generated into a temp
folder unless --bench names one. Features are extracted into a temp cache first (not timed); then, per
task, the same (LR, seed) grid three ways, in one process:

  reference          train_probe for each pair, torch's default threads: what `evaluate` did before
  reference, 1 thr   the same loop under probe_threads (one torch thread): the threads' share
  train_probes       the fast path (features standardised once, foreach Adam, one thread)

(the default-thread reference once; the two one-thread paths alternately, best of --repeats)

and asserts that train_probes gives exactly what the 1-thread reference gives (dev, test, best epoch
per pair; layer weights to 1e-7); whether the default-thread reference agrees too is printed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_inputs import encoder_and_bench

from speechft.data import load_task
from speechft.feature_cache import FeatureCache
from speechft.features import FeatureProvider, open_source
from speechft.probe_train import ProbeConfig, probe_epochs, probe_threads, train_probe, train_probes


def same(a: list[dict], b: list[dict]) -> bool:
    return all(
        (x["dev"], x["test"], x["best_epoch"]) == (y["dev"], y["test"], y["best_epoch"])
        and np.allclose(x["layer_weights"], y["layer_weights"], rtol=0, atol=1e-7)
        for x, y in zip(a, b)
    )


def bench_task(encoder: Path, task_dir: Path, cfg: ProbeConfig, cache: FeatureCache, repeats: int) -> dict:
    task = load_task(task_dir)
    prov = FeatureProvider(open_source(encoder), task, cfg, cache, progress=False)
    for split in ("train", "dev", "test"):
        prov.get(split)  # extracted once, before any clock starts
    prov.train_statistics()
    pairs = [(lr, seed) for lr in cfg.lrs for seed in cfg.seeds]
    timings, results = {}, {}
    t0 = time.perf_counter()
    results["reference"] = [train_probe(prov, lr, seed, cfg) for lr, seed in pairs]
    timings["reference"] = time.perf_counter() - t0
    # The two one-thread paths alternate, best of `repeats` each: the load of a shared machine drifts.
    runs = {
        "reference, 1 thr": lambda: [train_probe(prov, lr, seed, cfg) for lr, seed in pairs],
        "train_probes": lambda: train_probes(prov, pairs, cfg),
    }
    for _ in range(repeats):
        for mode, run in runs.items():
            t0 = time.perf_counter()
            with probe_threads("cpu"):
                results[mode] = run()
            timings[mode] = min(timings.get(mode, float("inf")), time.perf_counter() - t0)
    assert same(results["reference, 1 thr"], results["train_probes"]), f"{task.name}: train_probes differs"
    return {
        "task": task.name,
        "type": task.type,
        "pairs": len(pairs),
        "epochs": probe_epochs(task, cfg),
        "timings": timings,
        "default_threads_agree": same(results["reference"], results["train_probes"]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["ks", "pr"])
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-2, 1e-3])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--min-steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=2, help="runs of each one-thread path (best kept)")
    p.add_argument("--encoder", type=Path, default=None, help="default: the embedded default encoder")
    p.add_argument("--bench", type=Path, default=None, help="a synthetic benchmark folder (default: generate)")
    args = p.parse_args()
    cfg = ProbeConfig(lrs=args.lrs, seeds=args.seeds, epochs=args.epochs, min_steps=args.min_steps)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        encoder, bench = encoder_and_bench(args.encoder, args.bench, tmp, "small", args.tasks)
        cache = FeatureCache(tmp / "features")
        print(
            f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
            f"load average {os.getloadavg()[0]:.1f}; grid {len(cfg.lrs)} LRs x {len(cfg.seeds)} seeds, "
            f"epochs {cfg.epochs}, min steps {cfg.min_steps}"
        )
        print(
            "| task | type | pairs x epochs | reference s | reference, 1 thr s | train_probes s | speed-up | "
            "vs 1 thr | default threads agree |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for name in args.tasks:
            r = bench_task(encoder, bench / name, cfg, cache, args.repeats)
            t = r["timings"]
            print(
                f"| {r['task']} | {r['type']} | {r['pairs']} x {r['epochs']} | {t['reference']:.1f} | "
                f"{t['reference, 1 thr']:.1f} | {t['train_probes']:.1f} | {t['reference'] / t['train_probes']:.1f}x | "
                f"{t['reference, 1 thr'] / t['train_probes']:.2f}x | {r['default_threads_agree']} |",
                flush=True,
            )
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
