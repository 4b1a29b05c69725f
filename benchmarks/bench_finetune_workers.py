"""Two fine-tuning runs one after the other (one process, 2 threads) vs side by side (two processes, 1 thread each).

    python benchmarks/bench_finetune_workers.py [--steps 40] [--work DIR]

The full demo trains seven independent runs (two Stable-FT seeds and the five baselines) on the same
target. On a 2-core CPU one process with two torch threads leaves part of the second core idle on these
small matrices (batch 8 x <= 2.5 s through Whisper tiny.en); two processes with one thread each may use it
better. This script measures both on the demo's own plan (benchmark `demo`, target style, Stable-FT seeds 0
and 1, `--steps` each), alternating, each variant in fresh output folders, wall clock of the two runs
together. The ratio decides whether `speechft demo` trains in two workers.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
from speechft.demo import PLANS, Demo
import dataclasses
from pathlib import Path
plan = dataclasses.replace(PLANS["full"], steps=int(sys.argv[3]))
d = Demo(Path(sys.argv[2]), plan, targets=["style"], scenario="single", seed=0, progress=False)
for seed in sys.argv[5:]:
    d.finetune(d.pretrained(), ["style"], "stable", Path(sys.argv[4]) / f"stable-seed{seed}", seed=int(seed))
"""


def run(work: Path, steps: int, out: Path, groups: list[list[str]], threads: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(threads), str(work), str(steps), str(out), *seeds])
        for seeds in groups
    ]
    if any(p.wait() for p in procs):
        raise SystemExit("a fine-tuning run failed")
    return time.perf_counter() - t0


def main() -> int:
    from speechft.demo import PLANS, Demo

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--work", default=str(REPO / ".cache" / "bench_finetune_workers"))
    args = p.parse_args()
    work = Path(args.work)
    d = Demo(work, dataclasses.replace(PLANS["full"]), targets=["style"], scenario="single", seed=0, progress=False)
    d.pretrained()
    d.benchmark()
    serial, parallel = [], []
    for r in range(args.repeats):
        serial.append(run(work, args.steps, work / "serial", [["0", "1"]], threads=2))
        parallel.append(run(work, args.steps, work / "parallel", [["0"], ["1"]], threads=1))
        print(f"repeat {r}: one process 2 threads {serial[-1]:.1f} s, two processes 1 thread {parallel[-1]:.1f} s")
    s, q = min(serial), min(parallel)
    print(f"| two Stable-FT runs x {args.steps} steps | {s:.1f} | {q:.1f} | {s / q:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
