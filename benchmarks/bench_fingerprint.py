"""What the feature cache's content fingerprint costs, against the extraction it guards.

    OMP_NUM_THREADS=1 python benchmarks/bench_fingerprint.py [--tasks pr asr ks sid lid style] [--encoder DIR]

For every split of the tasks of bench_probe.py (the synthetic benchmark, or its tone tasks when
speech synthesis is unavailable) and the same encoder (random weights, Whisper tiny.en's
dimensions), side by side on the same split:

  sha256       AudioFingerprints().split: the sha256 of every clip's bytes (a fresh instance, so
               every file is hashed: the cost of each evaluation's first look at a split)
  stat only    AudioFingerprints(trust_mtime=True).split: size and mtime (`--trust-mtime`)
  extraction   extract_features: what a cache miss costs (and what a stale hit would have skipped)

and prints fingerprint time / extraction time per split and in total.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from bench_probe import REPO, benchmark_tasks, whisper_tiny_sized

from speechft.data import load_task
from speechft.features import AudioFingerprints, extract_features, open_source
from speechft.probe import ProbeConfig


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["pr", "asr", "ks", "sid", "lid", "style"])
    p.add_argument("--encoder", default=None, help="encoder folder (default: random Whisper tiny.en-sized)")
    p.add_argument("--work", default=str(REPO / ".cache" / "bench_probe"))
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    task_dirs, task_desc = benchmark_tasks(work, args.tasks)
    encoder = Path(args.encoder) if args.encoder else whisper_tiny_sized(work / "whisper_tiny_sized")
    source, cfg = open_source(encoder), ProbeConfig()
    print(f"{task_desc}; encoder {encoder.name}; torch threads {torch.get_num_threads()}\n")
    print("| task/split | clips | MB | sha256 s | stat only s | extraction s | sha256 / extraction |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    totals = [0, 0.0, 0.0, 0.0, 0.0]
    for task in map(load_task, task_dirs):
        kind = "pooled" if task.type == "classification" else "frames"
        for split in ("train", "dev", "test"):
            clips = task.split(split)
            mb = sum(ex.path.stat().st_size for ex in clips) / 1e6
            sha = timed(lambda: AudioFingerprints().split(task, split))  # noqa: B023 (called at once)
            stat = timed(lambda: AudioFingerprints(trust_mtime=True).split(task, split))  # noqa: B023
            ext = timed(lambda: extract_features(source, task, split, kind, cfg, progress=False))  # noqa: B023
            for i, v in enumerate((len(clips), mb, sha, stat, ext)):
                totals[i] += v
            row = f"| {task.name}/{split} | {len(clips)} | {mb:.1f} | {sha:.4f} | {stat:.4f} | {ext:.2f}"
            print(f"{row} | {sha / ext:.2%} |")
    n, mb, sha, stat, ext = totals
    print(f"| all | {n} | {mb:.1f} | {sha:.4f} | {stat:.4f} | {ext:.2f} | {sha / ext:.2%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
