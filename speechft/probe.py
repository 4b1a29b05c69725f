"""SUPERB-style probing of frozen encoders: `speechft evaluate`.

For every (encoder, task): the encoder is frozen (eval mode, no gradients); the features
are SUPERB's learnable softmax-weighted sum of all L+1 hidden states (weights start
uniform); a light head is trained for a small grid of learning rates and a few fixed
seeds; the LR with the best mean dev metric is chosen and its test metric reported.

Heads (speechft.heads): `classification` = projector + mean pooling + linear. Projection
and mean pooling are both linear, so the head is trained on cached mean-pooled per-layer
vectors, which gives exactly the model trained on frames, at a fraction of the cost.
`ctc` = projector + (linear | BiLSTM) + CTC over the vocabulary, trained on cached
per-frame features of all layers.

The encoder runs once per split (features.py extracts, feature_cache.py stores); s3prl
instead runs it on every step of every epoch of every LR (benchmarks/bench_probe.py measures
the difference). With `recompute=True` this module does that too, for the benchmark. The
encoder runs on `--device` (default: CUDA when available) and so do the probes; features
come back to the CPU for the cache.

`fbank` is accepted in place of an encoder folder: 80-bin log-mel filterbank frames, one
"layer", SUPERB's FBANK baseline (the SUPERB score's zero point, superb_score.py).
results.json records the SUPERB score config it was scored with, so `speechft report`
prints the same SUPERB_S.

Library: `evaluate(encoders, tasks, out, **options) -> dict` (what results.json holds).
CLI: `speechft evaluate` takes `--config YAML` / `--set key=value` over ProbeConfig.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .errors import SpeechFTError
from .eval_dist import Ranks, check_shared_cache
from .eval_plan import check as check_plan
from .eval_plan import plan_cache
from .feature_cache import FeatureCache
from .features import (
    FEATURE_DTYPES,
    AudioFingerprints,
    EncoderSource,
    FeatureProvider,
    FeatureSource,
    encoder_folders,
    open_source,
    with_layers,
)
from .io_utils import atomic_dir, check_output_location, refuse_existing_output, write_json
from .metrics import LOWER_IS_BETTER, is_better
from .probe_train import PROTOCOLS, ProbeConfig, load_protocol, probe_epochs, train_probes
from .probe_workers import in_workers, resolve_workers
from .progress import progress_bar

RESULTS_FORMAT = 1


def _mean_std(xs: list[float]) -> tuple[float, float]:
    a = np.asarray(xs, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def probe_task(
    source: FeatureSource,
    task,
    cfg: ProbeConfig,
    cache: FeatureCache | None,
    recompute: bool = False,
    progress: bool = True,
    device: torch.device | str = "cpu",
    audio: AudioFingerprints | None = None,
) -> dict:
    """The LR grid x seeds on one task (probes trained on `device`); the LR with the best mean dev metric wins.
    `audio`: the evaluation's clip fingerprints (shared so each clip is hashed once)."""
    ranks = Ranks(device=device)
    return probe_tasks(source, [task], cfg, cache, recompute, progress, ranks, audio)[task.name]


def probe_tasks(
    source: FeatureSource,
    tasks: Sequence,
    cfg: ProbeConfig,
    cache: FeatureCache | None,
    recompute: bool,
    progress: bool,
    ranks: Ranks,
    audio: AudioFingerprints | None = None,
    workers: int = 1,
) -> dict[str, dict]:
    """The probes of one encoder on every task, by task name. In one process: task by task (features of one
    task in memory at a time without a cache), each task's pairs over `workers` processes (probe_workers.py).
    Across processes (eval_dist.py): every split of every task extracted into the cache first, then the
    whole grid divided among the processes."""
    from .probe_special import is_special, special_probe

    special = {  # slot filling, speaker verification, query by example: their own heads and metrics
        t.name: special_probe(source, t, cfg.for_task(t), cache, recompute, progress, ranks.device, audio, ranks=ranks)
        for t in tasks
        if is_special(t)
    }
    if special:
        others = [t for t in tasks if not is_special(t)]
        rest = probe_tasks(source, others, cfg, cache, recompute, progress, ranks, audio, workers)
        return {t.name: special.get(t.name) or rest[t.name] for t in tasks}
    providers = [
        FeatureProvider(source, t, cfg, cache, recompute=recompute, progress=progress, audio=audio, ranks=ranks)
        for t in tasks
    ]
    cfgs = [cfg.for_task(t) for t in tasks]  # each task's LR grid, batch and head (ProbeConfig.per_task)
    groups = [[i] for i in range(len(tasks))] if ranks.world == 1 else [list(range(len(tasks)))]
    out = {}
    for group in groups:
        t0 = time.perf_counter()
        if not recompute:
            for i in group:
                for split in ("train", "dev", "test"):
                    providers[i].get(split)  # extract (or open) everything up front, once
        jobs = [(i, lr, seed) for i in group for lr in cfgs[i].lrs for seed in cfgs[i].seeds]
        mine = jobs[ranks.rank :: ranks.world]
        bar = progress_bar(
            total=sum(probe_epochs(tasks[i], cfgs[i]) for i, _, _ in mine),
            desc=f"probe {source.name}/" + (tasks[group[0]].name if len(group) == 1 else f"{len(group)} tasks"),
            unit="epoch",
            leave=False,
            disable=not progress,
        )

        def run(pairs, bar=bar):  # one task's share of this process: its pairs share the standardised features
            i = pairs[0][0]
            if cfgs[i].standardize and not recompute:
                providers[i].train_statistics()  # once, before any worker forks: they inherit it

            def train(share):
                return train_probes(providers[i], share, cfgs[i], on_epoch=lambda: bar.update(1), device=ranks.device)

            epochs = probe_epochs(tasks[i], cfgs[i])
            n = 1 if recompute else workers  # s3prl's way counts its encoder passes (and runs the encoder) here
            return in_workers(train, [p[1:] for p in pairs], n, on_done=lambda k: bar.update(k * epochs))

        results = _divide_by_task(ranks, jobs, run)
        bar.close()
        for i in group:
            runs = {lr: [r for (j, lr_, _), r in zip(jobs, results) if j == i and lr_ == lr] for lr in cfgs[i].lrs}
            out[tasks[i].name] = _summary(providers[i], cfgs[i], runs, time.perf_counter() - t0)
            if cache is None:
                providers[i].memo.clear()  # features kept in memory: one task at a time
    return out


def _divide_by_task(ranks: Ranks, jobs: list[tuple], run) -> list:
    """eval_dist.divide's dealing (job j in process j mod N, every process gets every result in job order),
    with this process's jobs of one task handed to `run` together, in job order (run returns one result
    per job): the (lr, seed) pairs of a task share its standardised features (probe_train.train_probes)."""

    def share() -> dict:
        mine: dict = {}
        for j in range(ranks.rank, len(jobs), ranks.world):
            mine.setdefault(jobs[j][0], []).append(j)
        out = {}
        for js in mine.values():
            out.update(zip(js, run([jobs[j] for j in js])))
        return out

    results = {}
    for part in ranks.collect(share):
        results.update(part)
    return [results[j] for j in range(len(jobs))]


def _reported_metrics(runs: list[dict]) -> dict:
    """Tasks scored by several metrics (slot filling: F1 and CER; verification: EER and minDCF): each one's
    test value, mean over seeds and per seed; nothing for a task with one metric."""
    if not runs or "metrics" not in runs[0]:
        return {}
    names = list(runs[0]["metrics"])
    return {
        "metrics": {m: _mean_std([r["metrics"][m] for r in runs])[0] for m in names},
        "metrics_per_seed": {m: [r["metrics"][m] for r in runs] for m in names},
    }


def _summary(provider: FeatureProvider, cfg: ProbeConfig, runs: dict[float, list[dict]], seconds: float) -> dict:
    """One task's entry of results.json from its probes' results (by LR, in seed order)."""
    task, source = provider.task, provider.source
    search = [
        {
            "lr": lr,
            "dev": _mean_std([r["dev"] for r in runs[lr]])[0],
            "dev_per_seed": [r["dev"] for r in runs[lr]],
            "test_per_seed": [r["test"] for r in runs[lr]],
            "best_epoch_per_seed": [r["best_epoch"] for r in runs[lr]],
            "epochs": runs[lr][0]["epochs"],
        }
        for lr in cfg.lrs
    ]
    chosen = search[0]
    for s in search[1:]:
        if is_better(task.metric, s["dev"], chosen["dev"]):
            chosen = s
    chosen_runs = runs[chosen["lr"]]
    test_mean, test_std = _mean_std(chosen["test_per_seed"])
    weights = np.mean([r["layer_weights"] for r in chosen_runs], axis=0).tolist()
    return {
        "task": task.name,
        "task_dir": str(task.root),
        "type": task.type,
        "metric": task.metric,
        "lower_is_better": task.metric in LOWER_IS_BETTER,
        "dev": chosen["dev"],
        "test": test_mean,
        "test_std": test_std,
        "dev_per_seed": chosen["dev_per_seed"],
        "test_per_seed": chosen["test_per_seed"],
        "seeds": list(cfg.seeds),
        "probe": cfg.task_settings(),  # the LR grid, batch, head and standardisation this task was probed with
        "chosen_lr": chosen["lr"],
        "lr_search": search,
        "layer_weights": weights,
        "layer_weights_per_seed": [r["layer_weights"] for r in chosen_runs],
        **_reported_metrics(chosen_runs),
        "num_states": source.num_states,
        "cache": dict(provider.status),
        "encoder_passes": provider.extractions,
        "n": {s: len(task.split(s)) for s in ("train", "dev", "test")},
        "seconds": {
            "extract": provider.extract_seconds,
            "fingerprint": provider.audio.seconds,
            "total": seconds,
        },
    }


def evaluate(
    encoders: Sequence,
    tasks: Sequence,
    out: str | os.PathLike | None = None,
    *,
    config: ProbeConfig | None = None,
    cache: FeatureCache | str | os.PathLike | bool | None = True,
    recompute: bool = False,
    score_config: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
    report: bool = True,
    device: str | torch.device | None = None,
    probe_workers: int | None = None,
    **options,
) -> dict:
    """Probe every encoder on every task; write `out/results.json` (and a report).

    encoders: folders, `fbank`, `NAME=FOLDER` strings, (name, folder) pairs or FeatureSources.
    tasks: task folders or loaded `Task`s. cache: True (the default location), a folder, a
    FeatureCache, or False/None (no disk cache; features kept in memory for this run).
    A cache entry is keyed by the sha256 of every clip (`trust_mtime=True`: by size and mtime,
    the faster, older way; recorded in results.json's protocol). Before extracting, the cache's
    plan (eval_plan.py) is checked against its size limit and the free disk: one that does not fit
    stops here, with nothing written.
    recompute: run the encoder again for every epoch and every evaluation, as s3prl does
    (no cache). device: where the encoders and the probes run (default: CUDA when available;
    under `accelerate launch`, the launcher's; eval_dist.py). score_config: the SUPERB score
    config (recorded in results.json). probe_workers: processes sharing a task's probes on the CPU
    (probe_workers.py: one per core by default; the same results). options: ProbeConfig fields.
    """
    from .superb_score import load_score_config, superb_scores

    cfg = _with_options(config or ProbeConfig(), options)
    if out is not None:
        out = Path(out)
        check_output_location(out, {"--encoder": encoder_folders(encoders), "--task": list(tasks)})
        refuse_existing_output(out, overwrite)
    score_cfg = load_score_config(score_config)  # fail early on a bad config
    t_start = time.perf_counter()
    ranks = Ranks.start(None if device is None else str(device))
    workers = resolve_workers(probe_workers, ranks.device, ranks.world)
    if cfg.precision == "fp16" and ranks.device.type != "cuda":
        raise SpeechFTError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    task_objs = _load_tasks(tasks)
    if not encoders:
        raise SpeechFTError("no encoder given; pass --encoder DIR (or fbank)")
    feature_cache = _open_cache(cache, recompute)
    if ranks.world > 1 and feature_cache is None and not recompute:
        raise SpeechFTError(
            "--no-cache under accelerate launch: the processes share their features through the cache; "
            "pass --cache DIR on a disk they all see, or --recompute"
        )
    progress = progress and ranks.main
    audio = AudioFingerprints(cfg.trust_mtime)  # one per evaluation: clips are hashed once, never across runs
    keys: list[str] = []
    if feature_cache is not None:
        check_shared_cache(ranks, feature_cache)

        def plan():
            p = plan_cache(encoders, task_objs, cfg, feature_cache, audio)
            check_plan(p, feature_cache, show=progress)  # stops here when it does not fit; evicts only now
            return p.keys

        keys = ranks.agree(plan, main_only=True)
    with feature_cache.hold(keys) if feature_cache is not None else contextlib.nullcontext():
        models = _probe_all(encoders, task_objs, cfg, feature_cache, recompute, progress, ranks, audio, workers)
    import datetime

    results = {
        "format": RESULTS_FORMAT,
        "kind": "speechft-evaluation",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "protocol": {
            **dataclasses.asdict(cfg),
            "features": "softmax-weighted sum of all hidden states"
            if cfg.layers is None
            else "softmax-weighted sum of the hidden states --layers picks (each model's `layers`)",
            "selection": "LR with the best mean dev metric; test metric reported (mean over seeds)",
            "cache": "recompute" if recompute else (str(feature_cache.root) if feature_cache else "off"),
            "processes": ranks.world,
            "probe_workers": workers,
        },
        "models": models,
        "score_config": score_cfg.record(),
        "seconds": time.perf_counter() - t_start,  # the evaluation itself (no interpreter start or imports)
    }
    results["superb"] = superb_scores(models, score_cfg)
    for m in models:
        m["superb_score"] = results["superb"]["scores"].get(m["name"])
    if out is not None and ranks.main:
        # The whole folder appears at once (results.json, report.md, figures) or not at all: a failure while
        # drawing the figures leaves no half-written --out, and --overwrite keeps the old one until then.
        with atomic_dir(out, overwrite=overwrite) as tmp:
            write_json(tmp / "results.json", results)
            if report:
                from .report import write_report

                write_report([results], tmp)  # scored with the config recorded in results
    return results


def _with_options(cfg: ProbeConfig, options: dict) -> ProbeConfig:
    valid = {f.name for f in dataclasses.fields(ProbeConfig)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise SpeechFTError(f"unknown probe option(s) {unknown}; valid: {', '.join(sorted(valid))}")
    return dataclasses.replace(cfg, **options) if options else cfg


def _open_cache(cache, recompute: bool) -> FeatureCache | None:
    if recompute or cache is False or cache is None:
        return None
    if isinstance(cache, FeatureCache):
        return cache
    return FeatureCache(None if cache is True else cache)


def _probe_all(encoders, task_objs, cfg, feature_cache, recompute, progress, ranks, audio, workers) -> list[dict]:
    """Each encoder in turn (loaded onto the device, probed on every task, freed): results.json's models."""
    models = []
    for spec in encoders:
        source = with_layers(open_source(spec, device=ranks.device), cfg.layers)
        base, k = source.name, 1
        while source.name in {m["name"] for m in models}:  # two folders with one name: name-2, name-3
            k += 1
            source.name = f"{base}-{k}"
        model = {"name": source.name, **source.info, "tasks": {}}
        model["tasks"] = probe_tasks(source, task_objs, cfg, feature_cache, recompute, progress, ranks, audio, workers)
        models.append(model)
        inner = getattr(source, "inner", source)
        if isinstance(inner, EncoderSource):
            inner.encoder = None  # free the weights before loading the next encoder
    return models


def _load_tasks(tasks: Sequence) -> list:
    from .data import load_task

    task_objs = [t if hasattr(t, "splits") else load_task(t) for t in tasks]
    names = [t.name for t in task_objs]
    if len(set(names)) != len(names):
        raise SpeechFTError(f"two task folders have the same task name ({', '.join(names)}); rename one in task.yaml")
    return task_objs


# ---- CLI -----------------------------------------------------------------------------
# dedicated flag (argparse dest) -> ProbeConfig key; each defaults to None (= not given), so that
# defaults <- --config <- these flags <- --set.
FLAGS = {
    k: k
    for k in (
        "lrs",
        "epochs",
        "min_steps",
        "seeds",
        "ctc_head",
        "batch_size",
        "ctc_batch_size",
        "dtype",
        "max_seconds",
        "trust_mtime",
        "precision",
        "layers",
    )
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .cli import add_device_option, add_quiet_option, positive_float
    from .config import add_config_options

    d = ProbeConfig()
    p.add_argument(
        "--encoder",
        nargs="+",
        required=True,
        metavar="DIR",
        help="encoder folder(s) or Hub id(s) org/name[@revision]; NAME=DIR to name one; `fbank` = filterbank",
    )
    p.add_argument("--task", nargs="+", required=True, metavar="TASKDIR", help="task folder(s)")
    p.add_argument("--out", required=True, help="output folder (results.json, report.md, figures)")
    p.add_argument(
        "--lrs",
        type=float,
        nargs="+",
        metavar="LR",
        help=f"learning-rate grid, chosen on dev (default {' '.join(map(str, d.lrs))})",
    )
    p.add_argument("--epochs", type=int, help=f"epochs per LR and seed (default {d.epochs})")
    p.add_argument(
        "--min-steps",
        type=int,
        help=f"at least this many optimizer steps per probe: small sets get more epochs (default {d.min_steps})",
    )
    p.add_argument(
        "--seeds", type=int, nargs="+", metavar="SEED", help="seeds, e.g. 0 1 2: mean and spread are reported"
    )
    p.add_argument("--ctc-head", choices=("linear", "bilstm"), help=f"head for ctc tasks (default {d.ctc_head})")
    p.add_argument("--batch-size", type=int, help=f"classification probe batch (utterances; default {d.batch_size})")
    p.add_argument("--ctc-batch-size", type=int, help=f"ctc probe batch (utterances; default {d.ctc_batch_size})")
    p.add_argument("--dtype", choices=tuple(FEATURE_DTYPES), help=f"stored feature precision (default {d.dtype})")
    p.add_argument("--max-seconds", type=float, help="crop longer clips to this many seconds")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        help="the encoder's forward pass during extraction: autocast on its device "
        f"(fp16: CUDA only; default {d.precision})",
    )
    p.add_argument(
        "--layers",
        nargs="+",
        metavar="L",
        help="hidden states to store and sum (default all): indices, e.g. 0 2 4, or every:N; recorded in results.json",
    )
    p.add_argument(
        "--recompute",
        action="store_true",
        help="no feature cache: run the encoder on every epoch, as s3prl does (slower, no disk)",
    )
    p.add_argument(
        "--cache",
        default=None,
        metavar="DIR",
        help="feature cache folder (default $SPEECHFT_CACHE/features, ~/.cache/speechft/features)",
    )
    p.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    p.add_argument(
        "--trust-mtime",
        action="store_true",
        default=None,
        help="fingerprint clips for the cache by size and mtime, not their bytes: faster, but a copy that "
        "restores mtimes (cp -p, rsync -a, tar, zip) then reuses the old clips' features",
    )
    p.add_argument(
        "--cache-max-gb",
        type=positive_float,
        default=None,
        help="cache size limit (LRU); default 20 or $SPEECHFT_CACHE_MAX_GB",
    )
    p.add_argument(
        "--score-config",
        default=None,
        help="SUPERB score config (YAML or a name in speechft/configs; default superb_synthetic); "
        "recorded in results.json",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out folder (once the new one is complete)"
    )
    p.add_argument(
        "--protocol",
        default="speechft",
        choices=PROTOCOLS,
        help="probing protocol preset under --config/flags/--set: speechft (default; the synthetic benchmark's) "
        "or superb (s3prl's downstream recipes: heads, batches, LR grids, no standardisation)",
    )
    p.add_argument(
        "--probe-workers",
        type=int,
        default=None,
        metavar="N",
        help="processes that share each task's probes on the CPU, one core each (default: one per core, at "
        "most 4; the results do not depend on it)",
    )
    add_config_options(p, ProbeConfig, "epochs=5")
    add_device_option(p)
    add_quiet_option(p)


def main(args) -> int:
    from .config import config_from_args
    from .report import results_table

    if args.layers is not None:  # "0 2 4" -> [0, 2, 4]; "every:2" stays a string (resolved per encoder)
        one = len(args.layers) == 1 and args.layers[0].startswith("every:")
        if not one and not all(v.isdigit() for v in args.layers):
            raise SpeechFTError(f"--layers {' '.join(args.layers)}: give indices (e.g. 0 2 4) or every:N")
        args.layers = args.layers[0] if one else [int(v) for v in args.layers]
    cfg = config_from_args(ProbeConfig, args, FLAGS, base=load_protocol(args.protocol))
    cache: FeatureCache | bool
    if args.no_cache or args.recompute:
        cache = False
    else:
        max_bytes = None if args.cache_max_gb is None else int(args.cache_max_gb * 1e9)
        cache = FeatureCache(args.cache, max_bytes=max_bytes)
    results = evaluate(
        args.encoder,
        args.task,
        args.out,
        config=cfg,
        cache=cache,
        recompute=args.recompute,
        score_config=args.score_config,
        overwrite=args.overwrite,
        progress=not args.quiet,
        device=args.device,
        probe_workers=args.probe_workers,
    )
    if results["protocol"]["processes"] > 1 and not _main_process():
        return 0  # the main process prints (and wrote --out)
    print(results_table([results]))
    out = Path(args.out)
    print(f"wrote {out / 'results.json'} and {out / 'report.md'}")
    return 0


def _main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process
