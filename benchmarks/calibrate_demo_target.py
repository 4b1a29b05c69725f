"""Which target can the demo fine-tune on? Stable-FT vs the frozen pre-trained encoder, on the target only.

    OMP_NUM_THREADS=1 python benchmarks/calibrate_demo_target.py [--tasks ks,style,lid,sid,pr,asr]
                                                                 [--steps 200] [--work DIR]

The paper's first claim (Speech-FT improves the fine-tuning task) can only be shown on a target that
fine-tuning itself learns. This script fine-tunes each candidate with the demo's own plan (`demo.PLANS
["full"]`: benchmark size `demo`, batch 8, clips <= 2.5 s, the demo's small head, seed 0) and probes the
pre-trained encoder and the Stable-FT encoder on that task only, with the demo's probes (LRs 1e-2/1e-3,
8 epochs, probe seeds 0-1). It never merges and never looks at Speech-FT.

The rule, fixed before any run: Speech-FT at alpha = 0.25 moves the weights a quarter of the way, so to
first order it keeps about a quarter of Stable-FT's gain. The target must therefore gain at least
4 x (2 x spread) under Stable-FT, where spread is the demo's (the largest probe-seed std of the two,
at least one test example). Among the candidates that pass, the demo takes the one with the largest
gain / (2 x spread); the table, the chosen task and the seconds per fine-tuning step go to
<work>/calibration.json and benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEEDED_RATIO = 4.0  # gain / (2 x spread) a candidate needs (see the docstring)


def main() -> int:
    from speechft.demo import PLANS, Demo
    from speechft.metrics import LOWER_IS_BETTER
    from speechft.probe import evaluate

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="ks,style,lid,sid,pr,asr")
    p.add_argument("--steps", type=int, default=PLANS["full"].steps)
    p.add_argument("--work", default=str(REPO / ".cache" / "calibrate_demo_target"))
    args = p.parse_args()
    import dataclasses

    plan = dataclasses.replace(PLANS["full"], steps=args.steps)
    work = Path(args.work)
    d = Demo(work, plan, targets=[], scenario="single", seed=0, progress=False)
    pretrained = d.pretrained()
    d.benchmark()
    rows = []
    for name in [t for t in args.tasks.split(",") if t]:
        t0 = time.perf_counter()
        ft = d.finetune(pretrained, [name], "stable", work / "finetuned" / f"stable-{name}-{args.steps}")
        ft_seconds = time.perf_counter() - t0
        res = evaluate(
            [("pre-trained", pretrained), ("Stable-FT", ft)],
            [d.task_dir(name)],
            None,
            config=d.probe_config(),
            cache=work / "feature_cache",
            progress=False,
            report=False,
        )
        pre, st = (next(iter(m["tasks"].values())) for m in res["models"])
        sign = -1.0 if pre["metric"] in LOWER_IS_BETTER else 1.0
        gain = sign * (st["test"] - pre["test"])
        spread = max(1.0 / pre["n"]["test"], pre["test_std"], st["test_std"])
        ratio = gain / (2 * spread)
        rows.append(
            {
                "task": name,
                "metric": pre["metric"],
                "pretrained": pre["test"],
                "pretrained_std": pre["test_std"],
                "stable_ft": st["test"],
                "stable_ft_std": st["test_std"],
                "gain": gain,
                "two_spread": 2 * spread,
                "ratio": ratio,
                "steps": args.steps,
                "finetune_s": round(ft_seconds, 1),
            }
        )
        print(
            f"{name:6s} {pre['metric']:9s} pre-trained {100 * pre['test']:5.1f} ± {100 * pre['test_std']:.1f}  "
            f"Stable-FT {100 * st['test']:5.1f} ± {100 * st['test_std']:.1f}  gain {100 * gain:+5.1f}  "
            f"2x spread {200 * spread:4.1f}  ratio {ratio:5.1f}  fine-tune {ft_seconds:.0f} s",
            flush=True,
        )
        (work / "calibration.json").write_text(json.dumps({"rule_ratio": NEEDED_RATIO, "rows": rows}, indent=1))
    passing = [r for r in rows if r["ratio"] >= NEEDED_RATIO]
    chosen = max(passing, key=lambda r: r["ratio"])["task"] if passing else None
    (work / "calibration.json").write_text(
        json.dumps({"rule_ratio": NEEDED_RATIO, "rows": rows, "chosen": chosen}, indent=1)
    )
    print(f"\nchosen target: {chosen or 'none passes'} (needs gain >= {NEEDED_RATIO:g} x 2 x spread)")
    return 0 if chosen else 1


if __name__ == "__main__":
    sys.exit(main())
