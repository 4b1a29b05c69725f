"""Cost of one CKA minibatch: feature-space unbiased HSIC (speechft.cka.StreamingCKA)
against the textbook form on n x n Gram matrices (linear_cka(..., unbiased=True)).

Both compute the same number (checked here); the baseline runs side by side in the same
script, each configuration in a fresh subprocess so peak memory is its own.

    OMP_NUM_THREADS=1 python benchmarks/bench_cka.py            # the table in benchmarks/README.md
    OMP_NUM_THREADS=1 python benchmarks/bench_cka.py --sizes 1000 --dim 256   # quicker
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def one(method: str, n: int, d: int, repeats: int) -> dict:
    import torch

    from speechft.cka import StreamingCKA, linear_cka

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    Y = torch.tanh(X @ torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5) + 0.3 * torch.randn(
        n, d, generator=g, dtype=torch.float64
    )
    before = rss_mib()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        if method == "gram":
            value = linear_cka(X, Y, unbiased=True)
        else:
            s = StreamingCKA()
            s.update(X, Y)
            value = s.value
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {
        "method": method,
        "n": n,
        "d": d,
        "seconds": min(times),
        "extra_peak_mib": max(0.0, peak - before),
        "cka": value,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000])
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--one", nargs=3, metavar=("METHOD", "N", "D"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), int(args.one[2]), args.repeats)))
        return
    print(
        "| frames n | d | Gram form: s | feature form: s | speed-up | Gram extra MiB | feature extra MiB | "
        "memory ratio | CKA difference (abs) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        rows = {}
        for method in ("gram", "feature"):
            out = subprocess.run(
                [sys.executable, __file__, "--one", method, str(n), str(args.dim), "--repeats", str(args.repeats)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            rows[method] = json.loads(out.strip().splitlines()[-1])
        g, f = rows["gram"], rows["feature"]
        print(
            f"| {n} | {args.dim} | {g['seconds']:.3f} | {f['seconds']:.3f} | {g['seconds'] / f['seconds']:.1f}x | "
            f"{g['extra_peak_mib']:.0f} | {f['extra_peak_mib']:.0f} | "
            f"{g['extra_peak_mib'] / max(f['extra_peak_mib'], 1.0):.0f}x | {abs(g['cka'] - f['cka']):.1e} |"
        )


if __name__ == "__main__":
    main()
