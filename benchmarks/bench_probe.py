"""Probing with the feature cache vs recomputing the frozen encoder every epoch (s3prl's way).

    OMP_NUM_THREADS=1 python benchmarks/bench_probe.py [--epochs 10] [--lrs 1e-2 1e-3 1e-4]
                                                       [--tasks pr asr ks sid lid style] [--encoder DIR]

Same script, same tasks, same probes, same seeds; three runs of `speechft.probe.evaluate`:

  s3prl-style   recompute=True: the encoder runs on the training split every epoch and on dev
                at every evaluation, for every LR (and once on test per LR)
  cache, cold   an empty feature cache: each split is extracted once, then probes train on it
  cache, warm   the same cache again: no encoder pass at all (a later run, another head, ...)

and asserts that all three give identical metrics (dev and test per LR, chosen LR, layer
weights). Tasks: the synthetic benchmark (`speechft.data.synth`, size small, seed 0,
espeak-ng only), or tiny tone tasks when speech synthesis is unavailable. Encoder: a
random-weight Whisper encoder with tiny.en's dimensions (4 layers, d=384: the same compute
as the embedded default), or --encoder DIR.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from speechft.feature_cache import FeatureCache
from speechft.probe import evaluate

REPO = Path(__file__).resolve().parents[1]


def tone_tasks(out: Path) -> list[Path]:
    """Fallback tasks without speech synthesis: tones (classification) and tone sequences (CTC)."""
    from speechft.data.audio import write_audio
    from speechft.data.tasks import write_task_folder

    rng = np.random.default_rng(0)
    audio = out / "audio"
    audio.mkdir(parents=True, exist_ok=True)

    def tone(freq, seconds):
        t = np.arange(int(seconds * 16000)) / 16000
        return (0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)

    freqs = {"a": 300.0, "b": 700.0, "c": 1500.0, "d": 3000.0}
    cls, ctc = {}, {}
    for split, n in (("train", 60), ("dev", 20), ("test", 20)):
        cls[split], ctc[split] = [], []
        for k in range(n):
            label = "abcd"[k % 4]
            p = audio / f"cls_{split}_{k}.wav"
            write_audio(p, tone(freqs[label], float(rng.uniform(1.0, 3.0))))
            cls[split].append({"path": f"audio/{p.name}", "duration": 2.0, "label": label})
            letters = "".join(rng.choice(list(freqs), size=int(rng.integers(3, 8))))
            p = audio / f"ctc_{split}_{k}.wav"
            wav = np.concatenate([tone(freqs[ch], 0.3) for ch in letters])
            write_audio(p, wav)
            ctc[split].append(
                {"path": f"audio/{p.name}", "duration": len(wav) / 16000, "transcript": " ".join(letters)}
            )
    return [
        write_task_folder(
            out / "tones",
            {"name": "tones", "type": "classification", "metric": "accuracy", "labels": list(freqs)},
            cls,
            audio_dir=audio,
            overwrite=True,
        ),
        write_task_folder(
            out / "beeps",
            {"name": "beeps", "type": "ctc", "metric": "per", "vocabulary": list(freqs), "tokenizer": "space"},
            ctc,
            audio_dir=audio,
            overwrite=True,
        ),
    ]


def benchmark_tasks(work: Path, names: list[str]) -> tuple[list[Path], str]:
    try:
        from speechft.data.synth import synthesize_benchmark

        out = work / "synth_small_seed0"
        if not all((out / t / "task.yaml").exists() for t in names):
            synthesize_benchmark(
                out, size="small", seed=0, tasks=names, engines=["espeak-ng"], overwrite=True, progress=False
            )
        return [out / t for t in names], "synthetic benchmark (size small, seed 0)"
    except Exception as e:  # no espeak-ng: still measure, on tones
        print(f"speech synthesis unavailable ({type(e).__name__}: {e}); using tone tasks", file=sys.stderr)
        return tone_tasks(work / "tones"), "tone tasks"


def whisper_tiny_sized(out: Path) -> Path:
    from speechft.encoders.whisper import WhisperAdapter

    if not (out / "config.json").exists():
        cfg = WhisperAdapter.tiny_config(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536)
        WhisperAdapter.from_config(cfg, provenance={"source": "random, Whisper tiny.en dimensions"}, seed=0).save(
            out, overwrite=True
        )
    return out


def outcome(results) -> dict:
    out = {}
    for m in results["models"]:
        for t, r in m["tasks"].items():
            out[t] = (
                r["chosen_lr"],
                r["dev"],
                r["test"],
                r["layer_weights"],
                [(s["lr"], s["dev_per_seed"], s["test_per_seed"]) for s in r["lr_search"]],
            )
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-2, 1e-3, 1e-4])
    p.add_argument("--tasks", nargs="+", default=["pr", "asr", "ks", "sid", "lid", "style"])
    p.add_argument("--encoder", default=None, help="encoder folder (default: random Whisper tiny.en-sized)")
    p.add_argument("--work", default=str(REPO / ".cache" / "bench_probe"))
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tasks, task_desc = benchmark_tasks(work, args.tasks)
    encoder = Path(args.encoder) if args.encoder else whisper_tiny_sized(work / "whisper_tiny_sized")
    # min_steps=0: exactly --epochs epochs per LR in every run (the default would add epochs
    # on these small sets, and s3prl-style would pay an encoder pass for each).
    opts = dict(lrs=list(args.lrs), epochs=args.epochs, min_steps=0, seeds=[0], progress=False)

    timings, results = {}, {}
    with tempfile.TemporaryDirectory(dir=work) as cache_dir:
        for mode in ("s3prl-style (recompute every epoch)", "cache, cold", "cache, warm"):
            t0 = time.perf_counter()
            if mode.startswith("s3prl"):
                r = evaluate([encoder], tasks, None, recompute=True, **opts)
            else:
                r = evaluate([encoder], tasks, None, cache=FeatureCache(cache_dir), **opts)
            timings[mode] = time.perf_counter() - t0
            results[mode] = r
            passes = sum(t["encoder_passes"] for t in r["models"][0]["tasks"].values())
            print(f"{mode}: {timings[mode]:.1f} s, {passes} encoder passes over a split", flush=True)
    base = outcome(results["s3prl-style (recompute every epoch)"])
    for mode, r in results.items():
        assert outcome(r) == base, f"{mode} gave different metrics than the s3prl-style run"

    ref = timings["s3prl-style (recompute every epoch)"]
    n_clips = sum(v for t in results["cache, cold"]["models"][0]["tasks"].values() for v in t["n"].values())
    print(
        f"\n{task_desc}: {len(tasks)} tasks, {n_clips} clips; encoder {encoder.name}; "
        f"LRs {opts['lrs']} x {args.epochs} epochs x 1 seed; torch threads {torch.get_num_threads()}\n"
    )
    print("| run | encoder passes (splits) | wall s | speed-up vs s3prl-style | metrics |")
    print("|---|---:|---:|---:|---|")
    for mode, r in results.items():
        passes = sum(t["encoder_passes"] for t in r["models"][0]["tasks"].values())
        same = "reference" if mode.startswith("s3prl") else "identical"
        print(f"| {mode} | {passes} | {timings[mode]:.1f} | {ref / timings[mode]:.1f}x | {same} |")
    print("\n| task | metric | chosen LR | dev | test |")
    print("|---|---|---:|---:|---:|")
    for t, r in results["cache, cold"]["models"][0]["tasks"].items():
        print(f"| {t} | {r['metric']} | {r['chosen_lr']:g} | {100 * r['dev']:.1f} | {100 * r['test']:.1f} |")
    (work / "bench_probe.json").write_text(json.dumps({"timings": timings, "tasks": task_desc}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
