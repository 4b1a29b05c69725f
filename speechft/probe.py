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

The encoder runs once per split (feature_cache.py); s3prl instead runs it on every step of
every epoch of every LR (benchmarks/bench_probe.py measures the difference). With
`recompute=True` this module does that too, for the benchmark.

`fbank` is accepted in place of an encoder folder: 80-bin log-mel filterbank frames, one
"layer", SUPERB's FBANK baseline (the SUPERB score's zero point, superb_score.py).

Library: `evaluate(encoders, tasks, out, **options) -> dict` (what results.json holds).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import SpeechFTError
from .feature_cache import FeatureCache, cache_key
from .heads import HeadConfig, TaskHead, mean_pool
from .io_utils import sha256_file, write_json
from .metrics import LOWER_IS_BETTER, compute_metric, is_better

FBANK = "fbank"
# Bump when extraction changes what it produces (pooling, cropping, the fbank recipe...):
# cache entries made by older code then stop matching.
FEATURE_CODE_VERSION = 1
RESULTS_FORMAT = 1
FEATURE_DTYPES = {"float16": np.float16, "float32": np.float32}


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

    def __post_init__(self):
        if not self.lrs or any(not (lr > 0) for lr in self.lrs):
            raise SpeechFTError(f"lrs must be positive numbers, got {self.lrs}")
        if self.epochs < 1:
            raise SpeechFTError(f"epochs must be >= 1, got {self.epochs}")
        if self.min_steps < 0:
            raise SpeechFTError(f"min_steps must be >= 0, got {self.min_steps}")
        if not self.seeds:
            raise SpeechFTError("seeds must list at least one seed")
        if self.ctc_head not in ("linear", "bilstm"):
            raise SpeechFTError(f"ctc_head must be 'linear' or 'bilstm', got '{self.ctc_head}'")
        if self.dtype not in FEATURE_DTYPES:
            raise SpeechFTError(f"dtype must be one of {', '.join(FEATURE_DTYPES)}, got '{self.dtype}'")
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


# ---- feature sources: an encoder folder, or the fbank pseudo-encoder ---------------------
_FINGERPRINTS: dict[tuple, str] = {}


def folder_fingerprint(path: str | os.PathLike) -> str:
    """sha256 over the files that decide an encoder's outputs (config.json, weights, remote
    code). speechft.json is left out: it changes on every save (timestamps)."""
    path = Path(path).resolve()
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and (p.name == "config.json" or p.suffix in (".safetensors", ".py", ".bin"))
    )
    stamp = (str(path), tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if stamp not in _FINGERPRINTS:
        import hashlib

        h = hashlib.sha256()
        for p in files:
            h.update(f"{p.name}:{sha256_file(p)}\n".encode())
        _FINGERPRINTS[stamp] = h.hexdigest()
    return _FINGERPRINTS[stamp]


class FeatureSource:
    """What probing needs from an encoder: all states of a batch, and an identity."""

    name: str
    num_states: int
    dim: int
    fingerprint: dict
    info: dict

    def __call__(self, wavs: torch.Tensor, lengths: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        raise NotImplementedError


class EncoderSource(FeatureSource):
    def __init__(self, path: str | os.PathLike, name: str | None = None, encoder=None):
        from .encoders import load_encoder

        self.path = Path(path)
        self.encoder = encoder if encoder is not None else load_encoder(self.path)
        self.encoder.eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.name = name or self.path.name
        self.num_states, self.dim = self.encoder.num_layers + 1, self.encoder.hidden_size
        self.fingerprint = {"kind": "encoder", "family": self.encoder.family, "weights": folder_fingerprint(self.path)}
        prov = self.encoder.provenance
        self.info = {
            "encoder": str(self.path),
            "family": self.encoder.family,
            "fingerprint": self.fingerprint["weights"],
            "num_states": self.num_states,
            "dim": self.dim,
            "provenance": {k: prov[k] for k in prov if k not in ("weights_sha256",)},
        }

    def __call__(self, wavs, lengths):
        out = self.encoder(wavs, lengths)
        return out.hidden_states, out.frame_lengths


class FbankSource(FeatureSource):
    """80-bin log-mel filterbank, 25 ms windows every 10 ms: SUPERB's FBANK baseline.

    The log-mel is Whisper's (Slaney mel, log10, an 80 dB dynamic range per utterance,
    scaled to about [-1, 1]), reused because it is already batch-exact on padded input
    and well scaled for a probe. One "layer": the weighted sum is the identity."""

    N_MELS = 80

    def __init__(self, name: str = FBANK):
        from .encoders.whisper import mel_filters

        self.filters = mel_filters(self.N_MELS)
        self.name, self.num_states, self.dim = name, 1, self.N_MELS
        self.fingerprint = {"kind": "fbank", "n_mels": self.N_MELS, "recipe": "whisper-log-mel", "version": 1}
        self.info = {
            "encoder": FBANK,
            "family": FBANK,
            "fingerprint": "fbank-80",
            "num_states": 1,
            "dim": self.N_MELS,
            "provenance": {"source": "80-bin log-mel filterbank (SUPERB's FBANK baseline)"},
        }

    def __call__(self, wavs, lengths):
        from .encoders.whisper import HOP, log_mel

        frames = lengths // HOP
        if int(frames.min()) < 1:
            raise SpeechFTError("audio shorter than 10 ms has no filterbank frame")
        mel = log_mel(wavs, lengths, self.filters)  # (B, 80, N), zero past each item's end
        return [mel.transpose(1, 2)], frames


def open_source(spec) -> FeatureSource:
    """`spec`: a FeatureSource, an encoder folder, `fbank`, or `NAME=FOLDER` / (name, folder)."""
    if isinstance(spec, FeatureSource):
        return spec
    name = None
    if isinstance(spec, tuple):
        name, spec = spec
    spec = str(spec)
    if name is None and "=" in spec and not Path(spec).exists():
        name, spec = spec.split("=", 1)
    if spec == FBANK and not Path(spec).is_dir():
        return FbankSource(name or FBANK)
    return EncoderSource(spec, name=name)


# ---- extracted features --------------------------------------------------------------
class PooledFeatures:
    """Mean-pooled states of every utterance: (N, S, D)."""

    def __init__(self, data: np.ndarray):
        self.data = data

    def tensor(self) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.data).astype(np.float32))  # a copy: the cache is read-only


class FrameFeatures:
    """Per-frame states of every utterance, concatenated in shards of (frames, S, D);
    `index[i] = (shard, start, frames)`."""

    def __init__(self, shards: list[np.ndarray], index: np.ndarray):
        self.shards, self.index = shards, index

    @property
    def lengths(self) -> np.ndarray:
        return self.index[:, 2]

    def get(self, i: int) -> np.ndarray:
        s, start, n = (int(v) for v in self.index[i])
        return self.shards[s][start : start + n]

    def batch(self, ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, B, F, D) float32 zero-padded, and frame lengths (B,)."""
        lengths = torch.tensor([int(self.index[i, 2]) for i in ids], dtype=torch.long)
        first = self.shards[0]
        # Gather in the stored dtype, convert once in torch (numpy's fp16 -> fp32 is slow).
        out = np.zeros((first.shape[1], len(ids), int(lengths.max()), first.shape[2]), dtype=first.dtype)
        for b, i in enumerate(ids):
            x = self.get(i)  # (n, S, D)
            out[:, b, : x.shape[0]] = x.transpose(1, 0, 2)
        return torch.from_numpy(out).float(), lengths


SHARD_BYTES = 256 << 20


def _audio_fingerprint(task, split: str) -> str:
    """Manifest order and paths are in the manifest hash; the audio's size and mtime catch
    files rewritten under the same name."""
    import hashlib

    h = hashlib.sha256()
    for ex in task.split(split):
        st = ex.path.stat()
        h.update(f"{ex.id}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def feature_fields(source: FeatureSource, task, split: str, kind: str, cfg: ProbeConfig) -> dict:
    import transformers

    return {
        "source": source.fingerprint,
        "task_root": str(Path(task.root).resolve()),
        "split": split,
        "manifest": task.manifest_hash(split),
        "audio": _audio_fingerprint(task, split),
        "kind": kind,
        "dtype": cfg.dtype,
        "sample_rate": 16000,
        "max_seconds": cfg.max_seconds,
        "extract_batch": [cfg.extract_batch_size, cfg.extract_batch_seconds],
        "code": FEATURE_CODE_VERSION,
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
    }


def _split_batches(task, split: str, cfg: ProbeConfig):
    """Length-sorted batches of (wavs, lengths, indices), without a DataLoader: a loader
    iterator draws from the global torch RNG, which would make dropout in a probe depend
    on whether features were recomputed."""
    from .data.batching import BucketBatchSampler
    from .data.dataset import SplitDataset, collate

    ds = SplitDataset(task, split, cfg.max_seconds)
    sampler = BucketBatchSampler(
        ds.durations, batch_size=cfg.extract_batch_size, max_seconds=cfg.extract_batch_seconds, shuffle=False
    )
    for ids in sampler:
        yield collate([ds[i] for i in ids])


def extract_features(
    source: FeatureSource,
    task,
    split: str,
    kind: str,
    cfg: ProbeConfig,
    add_array: Callable[[str, np.ndarray], None] | None = None,
    progress: bool = True,
):
    """Run the source over a split. kind 'pooled' -> PooledFeatures, 'frames' ->
    FrameFeatures. With `add_array`, arrays are handed to it (the cache writer) as they are
    finished and the returned features are None (the caller reopens them memory-mapped)."""
    dtype = FEATURE_DTYPES[cfg.dtype]
    n = len(task.split(split))
    pooled = np.zeros((n, source.num_states, source.dim), dtype=dtype) if kind == "pooled" else None
    shards, pending, pending_bytes = [], [], 0
    index = np.zeros((n, 3), dtype=np.int64)

    def flush():
        nonlocal pending, pending_bytes
        if not pending:
            return
        arr = np.concatenate(pending, axis=0)
        if add_array is not None:
            add_array(f"frames_{len(shards):05d}", arr)
            shards.append(None)
        else:
            shards.append(arr)
        pending, pending_bytes = [], 0

    bar = tqdm(
        total=n, desc=f"extract {source.name}/{task.name}/{split}", unit="utt", leave=False, disable=not progress
    )
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        for batch in _split_batches(task, split, cfg):
            states, frame_lengths = source(batch.wavs, batch.lengths)
            if kind == "pooled":
                vecs = torch.stack([mean_pool(s.float(), frame_lengths) for s in states], dim=1)
                vals = vecs.numpy().astype(dtype)
                _check_finite(vals, source, task, split)
                pooled[batch.indices] = vals
            else:
                for b, i in enumerate(batch.indices):
                    f = int(frame_lengths[b])
                    x = torch.stack([s[b, :f] for s in states], dim=1).float().numpy().astype(dtype)
                    _check_finite(x, source, task, split)
                    offset = sum(len(p) for p in pending)
                    index[i] = (len(shards), offset, f)
                    pending.append(x)
                    pending_bytes += x.nbytes
                    if pending_bytes >= SHARD_BYTES:
                        flush()
            bar.update(len(batch.indices))
    bar.close()
    if kind == "pooled":
        if add_array is not None:
            add_array("pooled", pooled)
            return None
        return PooledFeatures(pooled)
    flush()
    if add_array is not None:
        add_array("index", index)
        return None
    return FrameFeatures(shards, index)


def _check_finite(x: np.ndarray, source, task, split) -> None:
    if not np.isfinite(x).all():
        hint = "; rerun with --dtype float32" if x.dtype == np.float16 else ""
        raise SpeechFTError(
            f"{source.name}: features on {task.name}/{split} contain NaN or infinite values"
            f"{hint} (or check the encoder's weights)"
        )


def _features_from_entry(entry, kind: str):
    if kind == "pooled":
        return PooledFeatures(entry.array("pooled"))
    index = np.asarray(entry.array("index"))
    names = sorted(n for n in entry.names if n.startswith("frames_"))
    return FrameFeatures([entry.array(n) for n in names], index)


class FeatureProvider:
    """Features of one (source, task) for each split, from the cache, from memory, or -
    with `recompute` - from the encoder again on every request (s3prl's way)."""

    def __init__(
        self,
        source: FeatureSource,
        task,
        cfg: ProbeConfig,
        cache: FeatureCache | None,
        recompute: bool = False,
        progress: bool = True,
    ):
        self.source, self.task, self.cfg, self.cache = source, task, cfg, cache
        self.recompute, self.progress = recompute, progress
        self.kind = "pooled" if task.type == "classification" else "frames"
        self.memo: dict[str, object] = {}
        self.status: dict[str, str] = {}
        self.extract_seconds = 0.0
        self.extractions = 0

    def get(self, split: str):
        if self.recompute:
            self.status[split] = "recomputed"
            return self._extract(split)
        if split in self.memo:
            return self.memo[split]
        if self.cache is None:
            feats, self.status[split] = self._extract(split), "off"
        else:
            fields = feature_fields(self.source, self.task, split, self.kind, self.cfg)
            key = cache_key(fields)
            entry = self.cache.open(key)
            if entry is None:
                t0 = time.perf_counter()
                with self.cache.write(key, fields) as w:
                    extract_features(
                        self.source, self.task, split, self.kind, self.cfg, add_array=w.add, progress=self.progress
                    )
                    w.info = {
                        "kind": self.kind,
                        "num_states": self.source.num_states,
                        "dim": self.source.dim,
                        "items": len(self.task.split(split)),
                    }
                self.extract_seconds += time.perf_counter() - t0
                self.extractions += 1
                entry = self.cache.open(key)
                if entry is None:
                    raise SpeechFTError(
                        f"{self.cache.root}/{key}: the feature cache entry just written cannot be "
                        "read back; check the disk (or pass --no-cache)"
                    )
                self.status[split] = "miss"
            else:
                self.status[split] = "hit"
            feats = _features_from_entry(entry, self.kind)
        self.memo[split] = feats
        return feats

    def train_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-layer, per-dimension mean and std of the training features (pooled vectors, or every
        valid frame), accumulated in float64; computed once per provider."""
        if getattr(self, "_stats", None) is None:
            feats = self.get("train")
            if self.kind == "pooled":
                x = np.asarray(feats.data, dtype=np.float64)
                mean, var = x.mean(0), x.var(0)
            else:
                n, s1, s2 = 0, 0.0, 0.0
                for shard in feats.shards:
                    for start in range(0, shard.shape[0], 65536):
                        x = np.asarray(shard[start : start + 65536], dtype=np.float64)
                        n, s1, s2 = n + x.shape[0], s1 + x.sum(0), s2 + (x * x).sum(0)
                mean = s1 / max(n, 1)
                var = np.maximum(s2 / max(n, 1) - mean * mean, 0.0)
            self._stats = (torch.from_numpy(mean).float(), torch.from_numpy(np.sqrt(var)).float())
        return self._stats

    def _extract(self, split: str):
        t0 = time.perf_counter()
        feats = extract_features(self.source, self.task, split, self.kind, self.cfg, progress=self.progress)
        self.extract_seconds += time.perf_counter() - t0
        self.extractions += 1
        return feats


# ---- probe training ------------------------------------------------------------------
def _targets(task, split: str) -> list[str]:
    return [ex.target for ex in task.split(split)]


def _predict(head: TaskHead, task, feats, cfg: ProbeConfig) -> list[str]:
    head.eval()
    with torch.no_grad():
        if task.type == "classification":
            x = feats.tensor()
            logits = head.pooled_logits(x)
            return head.predict(logits, torch.ones(len(x), dtype=torch.long))
        preds: list[str] = [""] * len(feats.index)
        order = np.argsort(feats.lengths, kind="stable")
        for start in range(0, len(order), cfg.eval_batch_size):
            ids = order[start : start + cfg.eval_batch_size].tolist()
            x, lengths = feats.batch(ids)
            out = head(x, lengths)
            for i, p in zip(ids, head.predict(out, lengths)):
                preds[i] = p
        return preds


def score(head: TaskHead, task, feats, split: str, cfg: ProbeConfig) -> float:
    labels = task.labels if task.type == "classification" else None
    return compute_metric(task.metric, _targets(task, split), _predict(head, task, feats, cfg), labels)


def train_probe(
    provider: FeatureProvider, lr: float, seed: int, cfg: ProbeConfig, on_epoch: Callable[[], None] | None = None
) -> dict:
    """Train one head at one LR and seed; keep the state with the best dev metric.
    Returns {dev, test, best_epoch, epochs, layer_weights}."""
    task, source = provider.task, provider.source
    torch.manual_seed(seed)
    head = TaskHead.for_task(task, source.dim, source.num_states, cfg.head_config(task.type))
    if cfg.standardize:
        head.set_standardization(*provider.train_statistics())
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    if task.type == "classification":
        y_all = torch.tensor([task.encode(t) for t in _targets(task, "train")])
    else:
        enc_targets = [task.encode(t) for t in _targets(task, "train")]
    epochs = probe_epochs(task, cfg)
    best = {"dev": None, "epoch": -1, "state": None}
    for epoch in range(epochs):
        feats = provider.get("train")
        head.train()
        if task.type == "classification":
            x_all = feats.tensor()
            for ids in torch.randperm(len(x_all), generator=gen).split(cfg.batch_size):
                logits = head.pooled_logits(x_all[ids])
                loss = torch.nn.functional.cross_entropy(logits, y_all[ids])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        else:
            from .data.batching import BucketBatchSampler
            from .heads import ctc_loss

            sampler = BucketBatchSampler(feats.lengths.tolist(), batch_size=cfg.ctc_batch_size, shuffle=True, seed=seed)
            for ids in sampler.batches(epoch):
                x, lengths = feats.batch(ids)
                out = head(x, lengths)
                loss = ctc_loss(out, lengths, [enc_targets[i] for i in ids])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
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
) -> dict:
    """The LR grid x seeds on one task; the LR with the best mean dev metric wins."""
    provider = FeatureProvider(source, task, cfg, cache, recompute=recompute, progress=progress)
    t0 = time.perf_counter()
    if not recompute:
        for split in ("train", "dev", "test"):
            provider.get(split)  # extract (or open) everything up front, once
    runs: dict[float, list[dict]] = {}
    bar = tqdm(
        total=len(cfg.lrs) * len(cfg.seeds) * probe_epochs(task, cfg),
        desc=f"probe {source.name}/{task.name}",
        unit="epoch",
        leave=False,
        disable=not progress,
    )
    for lr in cfg.lrs:
        runs[lr] = [train_probe(provider, lr, seed, cfg, on_epoch=lambda: bar.update(1)) for seed in cfg.seeds]
    bar.close()
    search = []
    for lr in cfg.lrs:
        dev_mean, _ = _mean_std([r["dev"] for r in runs[lr]])
        search.append(
            {
                "lr": lr,
                "dev": dev_mean,
                "dev_per_seed": [r["dev"] for r in runs[lr]],
                "test_per_seed": [r["test"] for r in runs[lr]],
                "best_epoch_per_seed": [r["best_epoch"] for r in runs[lr]],
                "epochs": runs[lr][0]["epochs"],
            }
        )
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
        "chosen_lr": chosen["lr"],
        "lr_search": search,
        "layer_weights": weights,
        "layer_weights_per_seed": [r["layer_weights"] for r in chosen_runs],
        "num_states": source.num_states,
        "cache": dict(provider.status),
        "encoder_passes": provider.extractions,
        "n": {s: len(task.split(s)) for s in ("train", "dev", "test")},
        "seconds": {"extract": provider.extract_seconds, "total": time.perf_counter() - t0},
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
    **options,
) -> dict:
    """Probe every encoder on every task; write `out/results.json` (and a report).

    encoders: folders, `fbank`, `NAME=FOLDER` strings, (name, folder) pairs or FeatureSources.
    tasks: task folders or loaded `Task`s. cache: True (the default location), a folder, a
    FeatureCache, or False/None (no disk cache; features kept in memory for this run).
    recompute: run the encoder again for every epoch and every evaluation, as s3prl does
    (the benchmark's baseline; implies no cache). options: ProbeConfig fields.
    """
    from .data import load_task
    from .superb_score import load_score_config, superb_scores

    valid = {f.name for f in dataclasses.fields(ProbeConfig)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise SpeechFTError(f"unknown probe option(s) {unknown}; valid: {', '.join(sorted(valid))}")
    cfg = dataclasses.replace(config or ProbeConfig(), **options) if options else (config or ProbeConfig())
    if out is not None:
        out = Path(out)
        if (out / "results.json").exists() and not overwrite:
            raise SpeechFTError(f"{out}/results.json already exists; choose another --out or pass --overwrite")
    score_cfg = load_score_config(score_config)  # fail early on a bad config
    task_objs = [t if hasattr(t, "splits") else load_task(t) for t in tasks]
    names = [t.name for t in task_objs]
    if len(set(names)) != len(names):
        raise SpeechFTError(f"two task folders have the same task name ({', '.join(names)}); rename one in task.yaml")
    if not encoders:
        raise SpeechFTError("no encoder given; pass --encoder DIR (or fbank)")
    if recompute or cache is False or cache is None:
        feature_cache = None
    elif isinstance(cache, FeatureCache):
        feature_cache = cache
    else:
        feature_cache = FeatureCache(None if cache is True else cache)

    models = []
    for spec in encoders:
        source = open_source(spec)
        base, k = source.name, 1
        while source.name in {m["name"] for m in models}:  # two folders with one name: name-2, name-3
            k += 1
            source.name = f"{base}-{k}"
        model = {"name": source.name, **source.info, "tasks": {}}
        for task in task_objs:
            model["tasks"][task.name] = probe_task(
                source, task, cfg, feature_cache, recompute=recompute, progress=progress
            )
        models.append(model)
        if isinstance(source, EncoderSource):
            source.encoder = None  # free the weights before loading the next encoder
    import datetime

    results = {
        "format": RESULTS_FORMAT,
        "kind": "speechft-evaluation",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "protocol": {
            **dataclasses.asdict(cfg),
            "features": "softmax-weighted sum of all hidden states",
            "selection": "LR with the best mean dev metric; test metric reported (mean over seeds)",
            "cache": "recompute" if recompute else (str(feature_cache.root) if feature_cache else "off"),
        },
        "models": models,
    }
    results["superb"] = superb_scores(models, score_cfg)
    for m in models:
        m["superb_score"] = results["superb"]["scores"].get(m["name"])
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "results.json", results)
        if report:
            from .report import write_report

            write_report([results], out, score_config=score_config)
    return results


# ---- CLI -----------------------------------------------------------------------------
def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = ProbeConfig()
    p.add_argument(
        "--encoder",
        nargs="+",
        required=True,
        metavar="DIR",
        help="encoder folder(s); NAME=DIR to name one; `fbank` = the filterbank baseline",
    )
    p.add_argument("--task", nargs="+", required=True, metavar="TASKDIR", help="task folder(s)")
    p.add_argument("--out", required=True, help="output folder (results.json, report.md, figures)")
    p.add_argument(
        "--lrs", type=_floats, default=d.lrs, help="learning-rate grid, chosen on dev (default 1e-2,1e-3,1e-4)"
    )
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs per LR and seed (default {d.epochs})")
    p.add_argument(
        "--min-steps",
        type=int,
        default=d.min_steps,
        help=f"at least this many optimizer steps per probe: small sets get more epochs (default {d.min_steps})",
    )
    p.add_argument("--seeds", type=_ints, default=d.seeds, help="seeds, e.g. 0,1,2: mean and spread are reported")
    p.add_argument("--ctc-head", choices=("linear", "bilstm"), default=d.ctc_head, help="head for ctc tasks")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="classification probe batch (utterances)")
    p.add_argument("--ctc-batch-size", type=int, default=d.ctc_batch_size, help="ctc probe batch (utterances)")
    p.add_argument("--dtype", choices=tuple(FEATURE_DTYPES), default=d.dtype, help="stored feature precision")
    p.add_argument("--max-seconds", type=float, default=None, help="crop longer clips to this many seconds")
    p.add_argument(
        "--cache",
        default=None,
        metavar="DIR",
        help="feature cache folder (default $SPEECHFT_CACHE/features, ~/.cache/speechft/features)",
    )
    p.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    p.add_argument(
        "--cache-max-gb", type=float, default=None, help="cache size limit (LRU); default 20 or $SPEECHFT_CACHE_MAX_GB"
    )
    p.add_argument(
        "--score-config",
        default=None,
        help="SUPERB score config (YAML or a name in speechft/configs; default superb_synthetic)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing results.json in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def main(args) -> int:
    from .report import results_table

    cache: FeatureCache | bool
    if args.no_cache:
        cache = False
    else:
        max_bytes = None if args.cache_max_gb is None else int(args.cache_max_gb * 1e9)
        cache = FeatureCache(args.cache, max_bytes=max_bytes)
    cfg = ProbeConfig(
        lrs=args.lrs,
        epochs=args.epochs,
        min_steps=args.min_steps,
        seeds=args.seeds,
        ctc_head=args.ctc_head,
        batch_size=args.batch_size,
        ctc_batch_size=args.ctc_batch_size,
        dtype=args.dtype,
        max_seconds=args.max_seconds,
    )
    results = evaluate(
        args.encoder,
        args.task,
        args.out,
        config=cfg,
        cache=cache,
        score_config=args.score_config,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(results_table([results]))
    out = Path(args.out)
    print(f"wrote {out / 'results.json'} and {out / 'report.md'}")
    return 0
