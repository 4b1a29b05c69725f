"""Probing for the SUPERB task types that `probe_train.train_probe` does not cover, behind one dispatch.

`probe.probe_task` hands a task to `special_probe` when `is_special(task)`: slot filling (a ctc task with
tokenizer `slots`: probe_sf.py), speaker verification (type `verification`: probe_asv.py) and query by
example (type `qbe`: probe_qbe.py, which trains nothing and returns its own result) and speaker
diarization (type `diarization`: probe_sd.py). Each trained type
supplies one function that trains (or scores) one probe at one LR and seed; `grid_probe` runs the LR grid
x seeds exactly as probe_task does (the LR with the best mean dev value of the task's main metric wins,
its test values are reported as the mean over seeds) and returns the same result dict, plus `metrics`:
the test value of every metric the type reports (SF: slot-type F1 and slot-value CER), which the SUPERB
score reads (superb_score.metric_values).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from .features import FeatureProvider
from .heads import LayerSelect
from .progress import progress_bar


def is_special(task) -> bool:
    from .probe_sf import is_slot_task

    return task.type in ("verification", "qbe", "diarization") or is_slot_task(task)


def special_probe(
    source, task, cfg, cache, recompute=False, progress=True, device="cpu", audio=None, ranks=None
) -> dict:
    """probe.probe_task for the task types of this module (same arguments, same result shape). Across
    processes (`ranks`) the extraction is divided as for the other tasks; the probes then run in every
    process alike (deterministic, so every process holds the same result; the main one writes it)."""
    provider = FeatureProvider(
        source, task, cfg, cache, recompute=recompute, progress=progress, audio=audio, ranks=ranks
    )
    if task.type == "qbe":  # nothing to train: DTW on each layer, the layer chosen on dev
        from .probe_qbe import qbe_probe

        return qbe_probe(provider, cfg, progress)
    if task.type == "verification":
        from .probe_asv import train_asv_probe as train_one
    elif task.type == "diarization":
        from .probe_sd import train_sd_probe as train_one
    else:
        from .probe_sf import train_sf_probe as train_one
    return grid_probe(provider, cfg, train_one, progress, device)


def grid_probe(provider: FeatureProvider, cfg, train_one: Callable, progress: bool, device) -> dict:
    """LR grid x seeds of `train_one(provider, lr, seed, cfg, on_epoch, device)`, which returns
    {dev, test, metrics (test value of each reported metric), best_epoch, epochs, layer_weights}."""
    from .probe_train import probe_epochs

    task, source = provider.task, provider.source
    t0 = time.perf_counter()
    if not provider.recompute:
        for split in ("train", "dev", "test"):
            provider.get(split)
    bar = progress_bar(
        total=len(cfg.lrs) * len(cfg.seeds) * probe_epochs(task, cfg),
        desc=f"probe {source.name}/{task.name}",
        unit="epoch",
        leave=False,
        disable=not progress,
    )
    runs = {
        lr: [train_one(provider, lr, seed, cfg, lambda: bar.update(1), device) for seed in cfg.seeds] for lr in cfg.lrs
    }
    bar.close()
    from .probe import _summary

    return _summary(provider, cfg, runs, time.perf_counter() - t0)


def keep_best(head, epochs: int, train_epoch: Callable, evaluate: Callable, metric: str, on_epoch=None) -> dict:
    """The epoch loop of every probe here: `train_epoch(epoch)`, then `evaluate("dev")` (a dict of metrics);
    the state with the best dev value of `metric` is kept and scored on test. Returns train_probe's dict
    plus `metrics` (the test value of each metric)."""
    import copy

    from .metrics import is_better

    best = {"dev": None, "epoch": -1, "state": None}
    for epoch in range(epochs):
        head.train()
        train_epoch(epoch)
        dev = evaluate("dev")[metric]
        if best["dev"] is None or is_better(metric, dev, best["dev"]):
            best = {"dev": dev, "epoch": epoch, "state": copy.deepcopy(head.state_dict())}
        if on_epoch:
            on_epoch()
    head.load_state_dict(best["state"])
    test = evaluate("test")
    return {
        "dev": best["dev"],
        "test": test[metric],
        "metrics": test,
        "best_epoch": best["epoch"],
        "epochs": epochs,
        "layer_weights": head.select.layer_weights(),
    }


class WeightedLayers(torch.nn.Module):
    """What the heads here share: SUPERB's softmax-weighted sum of every layer, each layer standardised with
    the train split's statistics (as probe.py's heads), for heads that do not go through heads.TaskHead."""

    def __init__(self, input_dim: int, num_states: int):
        super().__init__()
        self.select = LayerSelect(num_states, "weighted")
        self.register_buffer("feature_mean", torch.zeros(num_states, input_dim))
        self.register_buffer("feature_std", torch.ones(num_states, input_dim))

    def set_standardization(self, mean: torch.Tensor, std: torch.Tensor, eps: float = 1e-5) -> None:
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp(min=eps))

    def weighted(self, states: torch.Tensor) -> torch.Tensor:
        """states (S, B, F, D) -> (B, F, D)."""
        return self.select((states - self.feature_mean[:, None, None]) / self.feature_std[:, None, None])
