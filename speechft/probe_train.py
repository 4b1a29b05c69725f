"""One probe: a weighted-sum head trained on frozen features at one LR and seed (probe.py runs the grid).

ProbeConfig is the probing protocol: the LR grid, epochs, seeds, the heads' sizes, and how features
are extracted and stored. `train_probe` trains one head on the cached features of one task and keeps
the state with the best dev metric; `score` computes a split's metric.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import SpeechFTError
from .features import FEATURE_DTYPES, FeatureProvider
from .heads import HeadConfig, TaskHead
from .metrics import compute_metric, is_better


@dataclass
class ProbeConfig:
    lrs: list[float] = field(default_factory=lambda: [1e-2, 1e-3, 1e-4])
    epochs: int = 20
    # Small training sets get more epochs, so that every probe takes at least this many
    # optimizer steps (20 epochs of a 60-clip task at batch 64 would be 20 steps).
    min_steps: int = 200
    seeds: list[int] = field(default_factory=lambda: [0])
    batch_size: int = 64  # classification: utterances (pooled vectors) per step
    ctc_batch_size: int = 16  # ctc: utterances per step
    ctc_head: str = "linear"  # "linear" (SUPERB PR) | "bilstm" (SUPERB ASR)
    lstm_layers: int = 2  # bilstm only
    lstm_hidden: int = 256
    proj_dim: int = 256
    dropout: float = 0.1
    dtype: str = "float16"  # stored feature precision
    max_seconds: float | None = None  # crop longer clips (deterministically) before encoding
    extract_batch_size: int = 16
    extract_batch_seconds: float = 160.0  # padded audio per extraction batch
    eval_batch_size: int = 64
    # Standardise each layer's features with train-split statistics before the weighted sum
    # (s3prl's featurizer offers layer normalisation for the same reason: layers differ in scale).
    standardize: bool = True
    # Fingerprint clips for the cache by size and mtime instead of their bytes: faster, but
    # fooled by copies that restore mtimes (cp -p, rsync -a, tar, zip).
    trust_mtime: bool = False
    # The encoder's forward pass during extraction: fp32, or bf16/fp16 autocast on its device (fp16: CUDA only).
    precision: str = "fp32"
    # The hidden states stored and summed (`--layers`): None = all, a list of indices, or "every:N".
    layers: list[int] | str | None = None

    def __post_init__(self):
        # A probe LR above 1 diverges (and inf reaches the plots as NaN); SUPERB's grid is 1e-4 .. 1e-2.
        if not self.lrs or any(not (0 < lr <= 1) for lr in self.lrs):
            raise SpeechFTError(f"lrs must be numbers in (0, 1], got {self.lrs}")
        if self.epochs < 1:
            raise SpeechFTError(f"epochs must be >= 1, got {self.epochs}")
        if self.min_steps < 0:
            raise SpeechFTError(f"min_steps must be >= 0, got {self.min_steps}")
        if not self.seeds or any(seed < 0 for seed in self.seeds):
            raise SpeechFTError(f"seeds must list at least one seed, each >= 0, got {self.seeds}")
        if self.max_seconds is not None and not (0 < self.max_seconds < float("inf")):
            raise SpeechFTError(f"max_seconds must be a number > 0 (or null: no cropping), got {self.max_seconds}")
        if not (0 < self.extract_batch_seconds < float("inf")):
            raise SpeechFTError(f"extract_batch_seconds must be a number > 0, got {self.extract_batch_seconds}")
        if self.ctc_head not in ("linear", "bilstm"):
            raise SpeechFTError(f"ctc_head must be 'linear' or 'bilstm', got '{self.ctc_head}'")
        if self.dtype not in FEATURE_DTYPES:
            raise SpeechFTError(f"dtype must be one of {', '.join(FEATURE_DTYPES)}, got '{self.dtype}'")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise SpeechFTError(f"precision must be fp32, bf16 or fp16, got '{self.precision}'")
        _check_layers(self.layers)
        for k in ("batch_size", "ctc_batch_size", "extract_batch_size", "eval_batch_size"):
            if getattr(self, k) < 1:
                raise SpeechFTError(f"{k} must be >= 1, got {getattr(self, k)}")

    def head_config(self, task_type: str) -> HeadConfig:
        layers = self.lstm_layers if (task_type == "ctc" and self.ctc_head == "bilstm") else 0
        return HeadConfig(
            layers="weighted",
            proj_dim=self.proj_dim,
            lstm_layers=layers,
            lstm_hidden=self.lstm_hidden,
            dropout=self.dropout,
        )


def _check_layers(layers) -> None:
    if layers is None:
        return
    if isinstance(layers, str):
        step = layers.split(":", 1)[1] if layers.startswith("every:") else ""
        if not (step.isdigit() and int(step) >= 1):
            raise SpeechFTError(f"layers {layers!r}: give indices (e.g. 0 2 4) or every:N with N >= 1")
    elif not layers or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers):
        raise SpeechFTError(f"layers {layers}: give hidden-state indices >= 0 (e.g. 0 2 4) or every:N")


# ---- probe training ------------------------------------------------------------------
def _targets(task, split: str) -> list[str]:
    return [ex.target for ex in task.split(split)]


def _device_of(head: torch.nn.Module) -> torch.device:
    return next(head.parameters()).device


def _predict(head: TaskHead, task, feats, cfg: ProbeConfig) -> list[str]:
    head.eval()
    device = _device_of(head)
    with torch.no_grad():
        if task.type == "classification":
            x = feats.tensor().to(device)
            logits = head.pooled_logits(x)
            return head.predict(logits, torch.ones(len(x), dtype=torch.long))
        preds: list[str] = [""] * len(feats.index)
        order = np.argsort(feats.lengths, kind="stable")
        for start in range(0, len(order), cfg.eval_batch_size):
            ids = order[start : start + cfg.eval_batch_size].tolist()
            x, lengths = feats.batch(ids)
            out = head(x.to(device), lengths.to(device))
            for i, p in zip(ids, head.predict(out, lengths)):
                preds[i] = p
        return preds


def score(head: TaskHead, task, feats, split: str, cfg: ProbeConfig) -> float:
    labels = task.labels if task.type == "classification" else None
    return compute_metric(task.metric, _targets(task, split), _predict(head, task, feats, cfg), labels)


def _step(opt, loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _train_epoch(head: TaskHead, opt, feats, task, targets, epoch: int, seed: int, gen, cfg: ProbeConfig) -> None:
    """One pass over the training features: shuffled pooled vectors (classification), or
    length-bucketed batches of frames (ctc); the order depends only on (seed, epoch)."""
    device = _device_of(head)
    head.train()
    if task.type == "classification":
        x_all = feats.tensor().to(device)
        for ids in torch.randperm(len(x_all), generator=gen).split(cfg.batch_size):
            ids = ids.to(device)
            _step(opt, torch.nn.functional.cross_entropy(head.pooled_logits(x_all[ids]), targets[ids]))
        return
    from .data.batching import BucketBatchSampler
    from .heads import ctc_loss

    sampler = BucketBatchSampler(feats.lengths.tolist(), batch_size=cfg.ctc_batch_size, shuffle=True, seed=seed)
    for ids in sampler.batches(epoch):
        x, lengths = feats.batch(ids)
        out = head(x.to(device), lengths.to(device))
        _step(opt, ctc_loss(out, lengths, [targets[i] for i in ids]))


def train_probe(
    provider: FeatureProvider,
    lr: float,
    seed: int,
    cfg: ProbeConfig,
    on_epoch: Callable[[], None] | None = None,
    device: torch.device | str = "cpu",
) -> dict:
    """Train one head at one LR and seed on `device`; keep the state with the best dev metric.
    Returns {dev, test, best_epoch, epochs, layer_weights}."""
    task, source = provider.task, provider.source
    torch.manual_seed(seed)
    head = TaskHead.for_task(task, source.dim, source.num_states, cfg.head_config(task.type))
    if cfg.standardize:
        head.set_standardization(*provider.train_statistics())
    head.to(device)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    if task.type == "classification":
        targets = torch.tensor([task.encode(t) for t in _targets(task, "train")], device=device)
    else:
        targets = [task.encode(t) for t in _targets(task, "train")]
    epochs = probe_epochs(task, cfg)
    best = {"dev": None, "epoch": -1, "state": None}
    for epoch in range(epochs):
        _train_epoch(head, opt, provider.get("train"), task, targets, epoch, seed, gen, cfg)
        dev = score(head, task, provider.get("dev"), "dev", cfg)
        if best["dev"] is None or is_better(task.metric, dev, best["dev"]):
            best = {"dev": dev, "epoch": epoch, "state": copy.deepcopy(head.state_dict())}
        if on_epoch:
            on_epoch()
    head.load_state_dict(best["state"])
    test = score(head, task, provider.get("test"), "test", cfg)
    return {
        "dev": best["dev"],
        "test": test,
        "best_epoch": best["epoch"],
        "epochs": epochs,
        "layer_weights": head.select.layer_weights(),
    }


def probe_epochs(task, cfg: ProbeConfig) -> int:
    """cfg.epochs, or more when that many epochs would take fewer than cfg.min_steps steps."""
    batch = cfg.batch_size if task.type == "classification" else cfg.ctc_batch_size
    steps_per_epoch = max(1, -(-len(task.split("train")) // batch))
    return max(cfg.epochs, -(-cfg.min_steps // steps_per_epoch))
