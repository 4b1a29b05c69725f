"""`speechft evaluate` in 2 processes (`accelerate launch --num_processes 2`, gloo on the CPU) vs 1 process.

    OMP_NUM_THREADS=1 python benchmarks/bench_eval_processes.py [--repeats 2] [--train 96] [--epochs 4]

One script, the same machine, runs alternated: the same evaluation (a random-weight HuBERT-shaped encoder of
4 layers x d=256, a classification task and a CTC task of tones, 2 LRs x 2 seeds) as

- **1 process, 1 thread**: `python -m speechft evaluate` with OMP_NUM_THREADS=1 (the baseline);
- **1 process, 2 threads**: the same with OMP_NUM_THREADS=2 (what one process gets from two cores);
- **2 processes, 1 thread each**: `accelerate launch --multi_gpu --num_processes 2 -m speechft evaluate`;

each end to end (interpreter start, imports, a cold feature cache, results.json) and inside evaluate (results.json's
`seconds`: the evaluation without interpreter start and imports), and each also warm (the same cache again: the
probe grid alone). Wall seconds, median of the repeats. The script checks that every variant
gives the same metrics, chosen LRs and layer weights in 1 and 2 processes (exits 1 otherwise; the 2-thread process
may differ in float rounding and is only reported).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import tone_task


def ctc_task(out: Path, n_train: int, seed: int = 0) -> Path:
    """A CTC task: sequences of 2-5 tones (a=300 Hz, b=900 Hz, c=2 kHz), transcribed as letters."""
    from speechft.data.audio import write_audio
    from speechft.data.tasks import write_task_folder

    freqs = {"a": 300.0, "b": 900.0, "c": 2000.0}
    rng = np.random.default_rng(seed)
    audio = out.parent / f"{out.name}_audio"
    audio.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, n in (("train", n_train), ("dev", max(8, n_train // 8)), ("test", 8)):
        rows = []
        for k in range(n):
            letters = "".join(rng.choice(list(freqs), size=int(rng.integers(2, 6))))
            t = np.arange(int(0.3 * 16000)) / 16000
            wav = np.concatenate([0.3 * np.sin(2 * np.pi * freqs[c] * t) for c in letters])
            wav = (wav + 0.05 * rng.standard_normal(len(wav))).astype(np.float32)
            p = audio / f"{split}_{k}.wav"
            write_audio(p, wav)
            rows.append(
                {"path": f"audio/{p.name}", "duration": round(len(wav) / 16000, 3), "transcript": " ".join(letters)}
            )
        splits[split] = rows
    spec = {"name": "beeps", "type": "ctc", "metric": "per", "vocabulary": list(freqs), "tokenizer": "space"}
    return write_task_folder(out, spec, splits, audio_dir=audio)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(variant: str, args: list[str]) -> tuple[list[str], dict]:
    env = {**os.environ, "TQDM_DISABLE": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    if variant == "1 process, 2 threads":
        env["OMP_NUM_THREADS"] = "2"
    if variant.startswith("2 processes"):
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
        launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        launch += ["--main_process_port", str(free_port())]
        return [*launch, "-m", "speechft", "evaluate", *args], env
    return [sys.executable, "-m", "speechft", "evaluate", *args], env


def outcome(results_json: Path) -> dict:
    r = json.loads(results_json.read_text())
    return r["seconds"], {
        (m["name"], t): (x["chosen_lr"], x["dev"], x["test"], x["layer_weights"])
        for m in r["models"]
        for t, x in m["tasks"].items()
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--train", type=int, default=96, help="training clips per task")
    p.add_argument("--epochs", type=int, default=4)
    a = p.parse_args(argv)
    from speechft.encoders import tiny_encoder

    variants = ["1 process, 1 thread", "1 process, 2 threads", "2 processes, 1 thread each"]
    times: dict[tuple[str, str], list[float]] = {}
    outcomes = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        enc = tmp / "enc"
        tiny_encoder(
            "hubert", seed=0, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024
        ).save(enc)
        tasks = [tone_task(tmp / "cls", a.train, (1.0, 3.0)), ctc_task(tmp / "ctc", a.train)]
        for rep in range(a.repeats):
            for variant in variants:
                cache = tmp / "cache"
                shutil.rmtree(cache, ignore_errors=True)
                for phase in ("cold", "warm"):
                    out = tmp / "out"
                    shutil.rmtree(out, ignore_errors=True)
                    args = ["--encoder", str(enc), "--task", *map(str, tasks), "--out", str(out), "--cache", str(cache)]
                    args += [
                        "--lrs",
                        "1e-2",
                        "1e-3",
                        "--seeds",
                        "0",
                        "1",
                        "--epochs",
                        str(a.epochs),
                        "--min-steps",
                        "0",
                    ]
                    args += ["--quiet", "--device", "cpu"] if not variant.startswith("2") else ["--quiet"]
                    cmd, env = command(variant, args)
                    t0 = time.perf_counter()
                    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
                    dt = time.perf_counter() - t0
                    if res.returncode != 0:
                        print(res.stderr[-3000:], file=sys.stderr)
                        return 1
                    inside, outcomes[(variant, phase, rep)] = outcome(out / "results.json")
                    times.setdefault((variant, phase), []).append(dt)
                    times.setdefault((variant, phase + " inside"), []).append(inside)
                    print(f"run {rep + 1} {variant}, {phase}: {dt:.1f} s ({inside:.1f} s inside)", file=sys.stderr)
    # Results must not depend on the number of processes; compared at 1 thread per process (a process with 2
    # threads may round float sums differently: reported, not required to match bit for bit).
    ref = json.dumps(sorted(outcomes[(variants[0], "cold", 0)].items()), default=str)

    def matches(v):
        return all(json.dumps(sorted(o.items()), default=str) == ref for (w, _, _), o in outcomes.items() if w == v)

    verdict = {v: "identical" if matches(v) else "differ" for v in variants}
    same = verdict[variants[0]] == verdict[variants[2]] == "identical"
    load = os.getloadavg()[0]
    print(f"\nload average {load:.1f}; {a.train} training clips per task; metrics identical: {same}\n")
    phases = ("cold", "cold inside", "warm", "warm inside")
    print(
        "| variant | cold cache: end to end s | speed-up | cold: inside evaluate s | speed-up"
        " | warm (probes only): end to end s | speed-up | warm: inside s | speed-up | metrics |"
    )
    print("|---|" + "---:|" * 8 + "---|")
    base = {ph: statistics.median(times[(variants[0], ph)]) for ph in phases}
    for v in variants:
        cells = []
        for ph in phases:
            t = statistics.median(times[(v, ph)])
            cells += [f"{t:.1f}", f"{base[ph] / t:.2f}x"]
        print(f"| {v} | {' | '.join(cells)} | {verdict[v]} |")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
