"""`speechft finetune`'s loop vs a bare PyTorch loop, and length bucketing vs random batching.

    OMP_NUM_THREADS=1 python benchmarks/bench_train.py [--steps 30] [--repeats 2] [--threads 1]

1. Throughput (utterances/s) over the same model, the same batches (one TaskStream, so the same
   audio decoding), the same trainable parameters (front end frozen in both) and the same Adam +
   clipping: `speechft.train.finetune` (method regular: no frozen phase, which would flatter it)
   against a bare loop of forward / loss / backward / clip / step. The loop rate is
   utterances / training-step seconds; end-to-end adds finetune's setup, one dev evaluation and
   writing the output folder. Runs alternate (A B A B ...); the median ratio is reported.
   Target: >= 0.95x. On the CPU both loops run single-threaded in this process, so by default they
   are timed with the process CPU clock (`--clock process`): on a shared machine wall-clock ratios
   swing by +-15% with the neighbours' load, CPU time does not. `--clock wall` times wall-clock.
2. Padded fraction of the batch tensors: BucketBatchSampler vs plain shuffled batches, on the
   durations of the synthetic benchmark's train splits (`speechft data synth --size small`,
   when espeak-ng is installed) and on a wide log-uniform 1-20 s distribution. Target: <= 10%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from speechft.config import load_config
from speechft.data.batching import BucketBatchSampler, padded_fraction, random_batches

CLOCK = time.perf_counter  # see use_clock()


# ---- shared with benchmarks/gpu/bench_train_gpu.py --------------------------------------------------------
def tone_task(out: Path, n_train: int, seconds: tuple[float, float], n_classes: int = 4, seed: int = 0) -> Path:
    """A classification task of noisy tones with durations uniform in `seconds`."""
    from speechft.data.audio import write_audio
    from speechft.data.tasks import write_task_folder

    rng = np.random.default_rng(seed)
    audio = out.parent / f"{out.name}_audio"
    audio.mkdir(parents=True, exist_ok=True)
    labels = [f"c{i}" for i in range(n_classes)]
    splits = {}
    for split, n in (("train", n_train), ("dev", max(8, n_train // 8)), ("test", 8)):
        rows = []
        for k in range(n):
            label = labels[k % n_classes]
            dur = float(rng.uniform(*seconds))
            t = np.arange(int(dur * 16000)) / 16000
            wav = 0.3 * np.sin(2 * np.pi * 200 * (1 + labels.index(label)) * t) + 0.05 * rng.standard_normal(len(t))
            p = audio / f"{split}_{k}.wav"
            write_audio(p, wav.astype(np.float32))
            rows.append({"path": f"audio/{p.name}", "duration": round(dur, 3), "label": label})
        splits[split] = rows
    return write_task_folder(
        out,
        {"name": "tones", "type": "classification", "metric": "accuracy", "labels": labels},
        splits,
        audio_dir=audio,
    )


def speechft_run(enc: Path, task: Path, out: Path, steps: int, warmup: int, sets: list[str]) -> dict:
    """Loop rate from finetune's own log windows (each ends with a device sync), skipping the first
    `warmup` steps; end to end = all utterances / wall time of the whole call."""
    from speechft.train import TrainConfig, finetune

    cfg = load_config(TrainConfig, None, [f"steps={steps}", f"eval.every={steps}", f"eval.log_every={warmup}", *sets])
    t0 = CLOCK()
    finetune(enc, [task], out, method="regular", config=cfg)
    wall = CLOCK() - t0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if r["kind"] == "train" and r["step"] > warmup]
    loop = sum(r["utterances"] for r in timed) / sum(r["seconds"] for r in timed)
    total = json.loads((out / "speechft.json").read_text())["timing"]["utterances"]
    return {"loop": loop, "end_to_end": total / wall}


def bare_run(enc: Path, task: Path, steps: int, warmup: int, sets: list[str]) -> dict:
    """The same work written as the shortest correct PyTorch loop, timed after `warmup` steps."""
    from speechft.data import load_task
    from speechft.encoders import load_encoder
    from speechft.heads import TaskHead
    from speechft.train import TaskStream, TrainConfig, freeze_permanently, resolve_config

    cfg = resolve_config(load_config(TrainConfig, None, [f"steps={steps}", *sets]))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)
    t = load_task(task)
    encoder = load_encoder(enc)
    freeze_permanently(encoder)
    encoder.to(device).train()
    head = TaskHead.for_task(t, encoder.hidden_size, encoder.num_layers + 1, cfg.head).to(device).train()
    params = [p for p in encoder.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.Adam(params, lr=cfg.optim.lr, weight_decay=0.0)
    stream = TaskStream(t, cfg.data, cfg.seed, 0, 1, device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    utts = 0
    for step in range(steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, utts = CLOCK(), 0
        batch, _ = next(stream)
        with amp:
            out = encoder(batch.wavs, batch.lengths)
            loss = head.loss(head(out.hidden_states, out.frame_lengths), out.frame_lengths, batch.targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        utts += len(batch.targets)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"loop": utts / (CLOCK() - t0)}


def use_clock(kind: str) -> None:
    """Time both loops with `kind`: finetune's own step timer (speechft.engine's `time.perf_counter`) and
    bare_run's. 'process' = CPU seconds of this process (single-threaded runs only)."""
    import types

    import speechft.engine

    global CLOCK
    CLOCK = time.process_time if kind == "process" else time.perf_counter
    speechft.engine.time = types.SimpleNamespace(perf_counter=CLOCK)


def compare(enc: Path, task: Path, tmp: Path, steps: int, warmup: int, repeats: int, sets: list[str]) -> dict:
    ours, bare = [], []
    for r in range(repeats):
        bare.append(bare_run(enc, task, steps, warmup, sets))
        ours.append(speechft_run(enc, task, tmp / f"run{r}", steps, warmup, sets))
    ratios = [o["loop"] / b["loop"] for o, b in zip(ours, bare)]
    return {
        "bare": statistics.median(b["loop"] for b in bare),
        "ours": statistics.median(o["loop"] for o in ours),
        "e2e": statistics.median(o["end_to_end"] for o in ours),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
    }


# ---- padding ----------------------------------------------------------------------------------------------
def synthetic_benchmark_durations(tmp: Path) -> dict[str, list[float]] | None:
    try:
        from speechft.data.synth import synthesize_benchmark

        synthesize_benchmark(tmp / "synth", size="small", seed=0, progress=False)
    except Exception as e:  # espeak-ng missing or any engine problem: report and skip
        print(f"(synthetic benchmark unavailable: {type(e).__name__}: {e})", file=sys.stderr)
        return None
    from speechft.data import load_task

    out = {}
    for folder in sorted(p for p in (tmp / "synth").iterdir() if (p / "task.yaml").exists()):
        task = load_task(folder)
        out[task.name] = [ex.duration for ex in task.split("train")]
    return out


def padding_rows(name: str, durations: list[float], batch_sizes) -> list[str]:
    rows = []
    for bs in batch_sizes:
        bucket = BucketBatchSampler(durations, batch_size=bs, shuffle=True, seed=0).batches(0)
        rand = random_batches(len(durations), bs, seed=0)
        pb, pr = padded_fraction(bucket, durations), padded_fraction(rand, durations)
        rows.append(
            f"| {name} | {len(durations)} | {np.mean(durations):.1f} s ({min(durations):.1f}-"
            f"{max(durations):.1f}) | {bs} | {100 * pr:.1f}% | {100 * pb:.2f}% | "
            f"{pr / max(pb, 1e-9):.0f}x less |"
        )
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the loop rates (both loops)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=["process", "wall"], default="process")
    args = p.parse_args(argv)
    if args.clock == "process" and args.threads != 1:
        p.error("--clock process needs --threads 1 (CPU time of several threads is not elapsed time)")
    torch.set_num_threads(args.threads)
    use_clock(args.clock)
    from speechft.encoders import tiny_encoder

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        # The offline-assets "small" shape: 4 layers, hidden 256, conv dim 256 (4.5 M parameters).
        enc = tmp / "enc"
        tiny_encoder(
            "hubert",
            seed=0,
            hidden_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=1024,
            conv_dim=(256,) * 7,
            conv_stride=(5, 2, 2, 2, 2, 2, 2),
            conv_kernel=(10, 3, 3, 3, 3, 2, 2),
            num_conv_pos_embeddings=32,
            num_conv_pos_embedding_groups=4,
        ).save(enc)
        task = tone_task(tmp / "task", n_train=96, seconds=(1.0, 3.0))
        sets = ["data.batch_size=8", "head.proj_dim=256"]
        r = compare(enc, task, tmp, args.steps, args.warmup, args.repeats, sets)
        print(
            f"\n### Throughput ({args.steps} steps x 8 utterances of 1-3 s, the first {args.warmup} not timed, "
            f"{args.threads} thread(s), {args.clock} clock, {args.repeats} alternating repeats)\n"
        )
        print("| loop | utterances/s | ratio to bare |")
        print("|---|---|---|")
        print(f"| bare PyTorch loop | {r['bare']:.2f} | 1.00x |")
        print(
            f"| speechft finetune, training steps | {r['ours']:.2f} | {r['ratio']:.3f}x "
            f"(runs: {', '.join(f'{x:.3f}' for x in r['ratios'])}) |"
        )
        print(
            f"| speechft finetune, end to end (setup, 1 dev eval, save) | {r['e2e']:.2f} | "
            f"{r['e2e'] / r['bare']:.3f}x |"
        )

        print("\n### Padded fraction of the batch tensors\n")
        print("| durations | clips | mean (min-max) | batch | random batching | bucketed | |")
        print("|---|---|---|---|---|---|---|")
        synth = synthetic_benchmark_durations(tmp)
        for name, durs in (synth or {}).items():
            # --size small has 54-112 training clips per task: batches of 32 would be only 2-4 batches.
            for row in padding_rows(f"synthetic benchmark `{name}` train", durs, (8, 16)):
                print(row)
        rng = np.random.default_rng(0)
        wide = np.exp(rng.uniform(np.log(1.0), np.log(20.0), 10000)).tolist()
        for row in padding_rows("log-uniform 1-20 s", wide, (8, 32)):
            print(row)


if __name__ == "__main__":
    main()
