"""One probe: a weighted-sum head trained on frozen features at one LR and seed (probe.py runs the grid).

ProbeConfig is the probing protocol: the LR grid, epochs, seeds, the heads' sizes, and how features
are extracted and stored. `train_probes` trains one head per (LR, seed) pair on the cached features of
one task and keeps each head's state with the best dev metric; `score` computes a split's metric.

`train_probe` is the reference: one pair, the features standardised on every step, torch's default
thread count and Adam's single-tensor loop. `train_probes` gives the same numbers faster
(benchmarks/bench_probe_train.py; tests/test_probe_train.py checks they agree):
- one torch thread on the CPU (`probe_threads`): a probe's ops are tiny, and two threads on a 2-core
  machine shared with anything else spend their time waiting for each other (16x slower, measured);
- the features standardised once per task, in float32 (`StandardizedSplit`), not on every step;
- Adam's foreach path (bit-identical to the single-tensor loop, fewer kernel launches).
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import SpeechFTError
from .features import FEATURE_DTYPES, FeatureProvider, PooledFeatures
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
    # Slot filling's head (ctc tasks with tokenizer `slots`), under the per_task entries: SUPERB's SF takes ASR's
    # BiLSTM head. A per-frame linear head cannot place the slot markers, which depend on the words around
    # them, not on the frame: with it no encoder learned slot values on the synthetic sf (CER 93-96%); with the
    # BiLSTM the real encoder's CER is 85 vs 91 for random weights (benchmarks/README.md). It costs ~10x the time.
    sf_head: str = "bilstm"
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
    # The protocol's name, recorded in results.json (`--protocol superb` loads PROTOCOL_DIR/protocol_superb.yaml).
    name: str = "speechft"
    # Settings per task over the ones above: {task type or task name: {key: value}} with PER_TASK_KEYS; a task
    # takes its type's entry, then its name's on top (protocol_superb.yaml: `ctc` = the ASR head, `pr` = PR's).
    per_task: dict[str, dict] = field(default_factory=dict)

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
        for k in ("ctc_head", "sf_head"):
            if getattr(self, k) not in ("linear", "bilstm"):
                raise SpeechFTError(f"{k} must be 'linear' or 'bilstm', got '{getattr(self, k)}'")
        if self.dtype not in FEATURE_DTYPES:
            raise SpeechFTError(f"dtype must be one of {', '.join(FEATURE_DTYPES)}, got '{self.dtype}'")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise SpeechFTError(f"precision must be fp32, bf16 or fp16, got '{self.precision}'")
        _check_layers(self.layers)
        for k in ("batch_size", "ctc_batch_size", "extract_batch_size", "eval_batch_size"):
            if getattr(self, k) < 1:
                raise SpeechFTError(f"{k} must be >= 1, got {getattr(self, k)}")
        if not (0 <= self.dropout < 1):
            raise SpeechFTError(f"dropout must be a number in [0, 1), got {self.dropout}")
        try:  # the head's widths, refused here rather than when the first head is built
            HeadConfig(proj_dim=self.proj_dim, lstm_layers=self.lstm_layers, lstm_hidden=self.lstm_hidden)
        except ValueError as e:
            raise SpeechFTError(str(e)) from None
        if not isinstance(self.per_task, dict):
            raise SpeechFTError(f"per_task must map task types or names to settings, got {self.per_task!r}")
        for key, entry in self.per_task.items():
            self._with(key, entry)  # each entry's keys and values, checked as the global ones are

    def _with(self, key: str, entry) -> ProbeConfig:
        """This config with the per_task entry `key` applied (and no per_task of its own); one-line errors
        name per_task.KEY and the setting."""
        from .config import _coerce

        where = f"per_task.{key}"
        if not isinstance(entry, dict):
            raise SpeechFTError(f"{where}: expected a mapping of {', '.join(PER_TASK_KEYS)}, got {entry!r}")
        unknown = [k for k in entry if k not in PER_TASK_KEYS]
        if unknown:
            raise SpeechFTError(f"{where}: unknown key '{unknown[0]}'; valid keys: {', '.join(PER_TASK_KEYS)}")
        hints = typing.get_type_hints(ProbeConfig)
        values = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in entry.items()}
        try:
            return dataclasses.replace(self, per_task={}, **values)
        except SpeechFTError as e:
            raise SpeechFTError(f"{where}: {e}") from None

    def for_task(self, task) -> ProbeConfig:
        """The settings `task` is probed with: the global ones (sf_head for a slot-filling task), its type's
        per_task entry, then its name's."""
        from .probe_sf import is_slot_task

        merged: dict = {"ctc_head": self.sf_head} if is_slot_task(task) and self.sf_head != self.ctc_head else {}
        for key in (task.type, task.name):
            merged.update(self.per_task.get(key) or {})
        return self._with(task.name, merged) if merged else dataclasses.replace(self, per_task={})

    def task_settings(self) -> dict:
        """The PER_TASK_KEYS values (a task's entry in results.json records those it was probed with)."""
        return {k: getattr(self, k) for k in PER_TASK_KEYS}

    def head_config(self, task_type: str) -> HeadConfig:
        layers = self.lstm_layers if (task_type == "ctc" and self.ctc_head == "bilstm") else 0
        return HeadConfig(
            layers="weighted",
            proj_dim=self.proj_dim,
            lstm_layers=layers,
            lstm_hidden=self.lstm_hidden,
            dropout=self.dropout,
        )


# What a per_task entry may set: the probe's training and its head, not extraction (features are shared by tasks).
PER_TASK_KEYS = (
    "lrs",
    "epochs",
    "min_steps",
    "batch_size",
    "ctc_batch_size",
    "ctc_head",
    "lstm_layers",
    "lstm_hidden",
    "proj_dim",
    "dropout",
    "standardize",
)
PROTOCOL_DIR = Path(__file__).resolve().parent / "configs"
PROTOCOLS = ("speechft", "superb")  # speechft: ProbeConfig's defaults (the synthetic benchmark's protocol)


def load_protocol(name: str) -> ProbeConfig:
    """A packaged protocol preset: `speechft` (the defaults) or `superb` (configs/protocol_superb.yaml)."""
    if name not in PROTOCOLS:
        raise SpeechFTError(f"--protocol {name}: unknown protocol; use one of {', '.join(PROTOCOLS)}")
    if name == "speechft":
        return ProbeConfig()
    from .config import load_config

    return load_config(ProbeConfig, PROTOCOL_DIR / f"protocol_{name}.yaml")


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


# ---- the fast path: many (lr, seed) pairs over features standardised once ------------------
# Train + dev + test features are standardised once, in float32, up to this many bytes; a larger task
# standardises each batch as it is gathered, as train_probe does (the same values, more work per step).
STANDARDIZE_ONCE_BYTES = 2 << 30


@contextmanager
def probe_threads(device: torch.device | str, threads: int | None = 1) -> Iterator[None]:
    """Limit torch to `threads` CPU threads while probes train on the CPU, then restore the count.
    A probe's ops are small (a 384 x 256 projection of a 64-vector batch): with torch's default of one
    thread per core, each op's threads wait for each other, and on a 2-core machine shared with other
    work that made the ks probe of the embedded default 16x slower (benchmarks/README.md)."""
    if threads is None or torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(min(threads, before))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _feature_bytes(feats) -> int:
    arrays = [feats.data] if isinstance(feats, PooledFeatures) else feats.shards
    return sum(4 * int(np.prod(a.shape)) for a in arrays)


class StandardizedSplit:
    """One split's features as `TaskHead.standardize` leaves them, computed once (`once=True`) or per
    batch. Elementwise float32 arithmetic in the same layout as train_probe's: the values are
    bit-identical, padding included (a padded frame holds the standardised zero, as there)."""

    def __init__(self, feats, head: TaskHead, device, once: bool = True):
        self.feats, self.head, self.device = feats, head, device
        self.pooled = isinstance(feats, PooledFeatures)
        self.shards = None
        with torch.no_grad():
            if self.pooled:  # (N, S, D), laid out as train_probe's per-batch standardize leaves it
                self.x = head.standardize(feats.tensor().to(device).transpose(0, 1)).transpose(0, 1)
            elif once:
                self.shards = [self._standardize_frames(torch.from_numpy(np.array(s))) for s in feats.shards]
                zero = torch.zeros(1, head.num_states, head.input_dim)
                self.pad = self._standardize_frames(zero)  # (S, 1, D): what a zero-padded frame becomes

    def _standardize_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(n, S, D) stored frames -> (S, n, D) float32 standardised, contiguous: a clip's frames of one
        layer are one block, so gathering a batch copies S blocks per clip."""
        return self.head.standardize(frames.float().transpose(0, 1)).contiguous()

    @property
    def lengths(self) -> np.ndarray:
        return self.feats.lengths

    def __len__(self) -> int:
        return len(self.x) if self.pooled else len(self.feats.index)

    def pooled_batch(self, ids: torch.Tensor) -> torch.Tensor:
        """(S, B, D) standardised pooled vectors of `ids`."""
        return self.x[ids].transpose(0, 1)

    def frames_batch(self, ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, B, F, D) standardised frames of `ids` on the device, and their frame lengths (B,)."""
        if self.shards is None:
            x, lengths = self.feats.batch(ids)
            with torch.no_grad():
                return self.head.standardize(x.to(self.device)), lengths
        index = self.feats.index
        lengths = torch.tensor([int(index[i, 2]) for i in ids], dtype=torch.long)
        frames = int(lengths.max())
        out = torch.empty(self.pad.shape[0], len(ids), frames, self.pad.shape[2])
        for b, i in enumerate(ids):
            shard, start, n = (int(v) for v in index[i])
            out[:, b, :n] = self.shards[shard][:, start : start + n]
            out[:, b, n:] = self.pad
        return out.to(self.device), lengths


def _predict_standardized(head: TaskHead, task, split: StandardizedSplit, cfg: ProbeConfig) -> list[str]:
    """_predict over a StandardizedSplit."""
    head.eval()
    with torch.no_grad():
        if split.pooled:
            logits = head.pooled_logits_standardized(split.x.transpose(0, 1))
            return head.predict(logits, torch.ones(len(split), dtype=torch.long))
        preds: list[str] = [""] * len(split)
        order = np.argsort(split.lengths, kind="stable")
        for start in range(0, len(order), cfg.eval_batch_size):
            ids = order[start : start + cfg.eval_batch_size].tolist()
            x, lengths = split.frames_batch(ids)
            out = head.forward_standardized(x, lengths.to(x.device))
            for i, p in zip(ids, head.predict(out, lengths)):
                preds[i] = p
        return preds


def _score_standardized(head: TaskHead, task, split: StandardizedSplit, name: str, cfg: ProbeConfig) -> float:
    labels = task.labels if task.type == "classification" else None
    preds = _predict_standardized(head, task, split, cfg)
    return compute_metric(task.metric, _targets(task, name), preds, labels)


def _train_epoch_standardized(head: TaskHead, opt, split: StandardizedSplit, task, targets, epoch, seed, gen, cfg):
    """_train_epoch over a StandardizedSplit: the same batches in the same order."""
    head.train()
    if split.pooled:
        for ids in torch.randperm(len(split), generator=gen).split(cfg.batch_size):
            ids = ids.to(split.device)
            logits = head.pooled_logits_standardized(split.pooled_batch(ids))
            _step(opt, torch.nn.functional.cross_entropy(logits, targets[ids]))
        return
    from .data.batching import BucketBatchSampler
    from .heads import ctc_loss

    sampler = BucketBatchSampler(split.lengths.tolist(), batch_size=cfg.ctc_batch_size, shuffle=True, seed=seed)
    for ids in sampler.batches(epoch):
        x, lengths = split.frames_batch(ids)
        out = head.forward_standardized(x, lengths.to(x.device))
        _step(opt, ctc_loss(out, lengths, [targets[i] for i in ids]))


def _new_head(provider: FeatureProvider, seed: int, cfg: ProbeConfig, device) -> TaskHead:
    """The head train_probe starts from: initialised right after torch.manual_seed(seed)."""
    task, source = provider.task, provider.source
    torch.manual_seed(seed)
    head = TaskHead.for_task(task, source.dim, source.num_states, cfg.head_config(task.type))
    if cfg.standardize:
        head.set_standardization(*provider.train_statistics())
    return head.to(device)


def train_probes(
    provider: FeatureProvider,
    pairs: Sequence[tuple[float, int]],
    cfg: ProbeConfig,
    on_epoch: Callable[[], None] | None = None,
    device: torch.device | str = "cpu",
    threads: int | None = 1,
) -> list[dict]:
    """train_probe(provider, lr, seed, ...) for every (lr, seed) of `pairs`, in order, the features
    standardised once for all of them; on the CPU with `threads` torch threads (None: torch's setting).
    With `provider.recompute` (s3prl's way, for the benchmark) each pair runs train_probe itself."""
    with probe_threads(device, threads):
        if provider.recompute:
            return [train_probe(provider, lr, seed, cfg, on_epoch, device) for lr, seed in pairs]
        task = provider.task
        names = ("train", "dev", "test")
        once = sum(_feature_bytes(provider.get(n)) for n in names) <= STANDARDIZE_ONCE_BYTES
        splits: dict[str, StandardizedSplit] = {}
        results = []
        for lr, seed in pairs:
            head = _new_head(provider, seed, cfg, device)
            if not splits:  # every head holds the same statistics: standardise with the first
                splits = {n: StandardizedSplit(provider.get(n), head, device, once) for n in names}
            results.append(_fit(head, splits, task, lr, seed, cfg, on_epoch, device))
        return results


def _fit(head: TaskHead, splits: dict, task, lr: float, seed: int, cfg: ProbeConfig, on_epoch, device) -> dict:
    """train_probe's loop for one head over standardised splits."""
    opt = torch.optim.Adam(head.parameters(), lr=lr, foreach=True)
    gen = torch.Generator().manual_seed(seed)
    if task.type == "classification":
        targets = torch.tensor([task.encode(t) for t in _targets(task, "train")], device=device)
    else:
        targets = [task.encode(t) for t in _targets(task, "train")]
    epochs = probe_epochs(task, cfg)
    best = {"dev": None, "epoch": -1, "state": None}
    for epoch in range(epochs):
        _train_epoch_standardized(head, opt, splits["train"], task, targets, epoch, seed, gen, cfg)
        dev = _score_standardized(head, task, splits["dev"], "dev", cfg)
        if best["dev"] is None or is_better(task.metric, dev, best["dev"]):
            best = {"dev": dev, "epoch": epoch, "state": copy.deepcopy(head.state_dict())}
        if on_epoch:
            on_epoch()
    head.load_state_dict(best["state"])
    return {
        "dev": best["dev"],
        "test": _score_standardized(head, task, splits["test"], "test", cfg),
        "best_epoch": best["epoch"],
        "epochs": epochs,
        "layer_weights": head.select.layer_weights(),
    }
