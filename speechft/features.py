"""Frozen-encoder features for probing: the sources, extraction, and the cache glue.

A feature source (feature_sources.py: an encoder folder, `fbank`, a `--layers` subset) gives all
hidden states of a batch and an identity; they are re-exported here.

`extract_features` runs a source over one split of a task: mean-pooled states per utterance
(`PooledFeatures`, classification) or every frame of every state (`FrameFeatures`, CTC),
in length-sorted batches (`extract_batches` runs any share of them, `assemble_features` lays
them out: under `accelerate launch` each process extracts every N-th batch and eval_dist.py
assembles one entry, byte-identical to one process's). `FeatureProvider` hands a probe the features of each split from
the on-disk cache (feature_cache.py, keyed by `feature_fields`, whose audio part is the
content hash of every clip, `AudioFingerprints`), from memory, or - with
`recompute` - from the encoder again on every request (s3prl's way, for the benchmark).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from .data.audio import SAMPLE_RATE
from .errors import SpeechFTError
from .feature_cache import FeatureCache, cache_key
from .feature_sources import (  # noqa: F401  (re-exported: features.py is where callers look for sources)
    FBANK,
    EncoderSource,
    FbankSource,
    FeatureSource,
    LayerSubset,
    encoder_folders,
    folder_fingerprint,
    open_source,
    resolve_layers,
    with_layers,
)
from .heads import mean_pool
from .io_utils import sha256_bytes, sha256_file
from .progress import progress_bar


class ExtractionSettings(Protocol):
    """What extraction reads of its config (probe.ProbeConfig has these fields, among the probes' own)."""

    dtype: str  # stored feature precision, a key of FEATURE_DTYPES
    max_seconds: float | None  # longer clips are cropped, deterministically
    extract_batch_size: int
    extract_batch_seconds: float  # padded audio per extraction batch
    trust_mtime: bool  # fingerprint clips by size and mtime only (fast, fooled by `cp -p`)
    precision: str  # fp32 | bf16 | fp16: autocast of the encoder's forward pass


# Bump when extraction changes what it produces (pooling, cropping, the fbank recipe...):
# cache entries made by older code then stop matching.
FEATURE_CODE_VERSION = 2  # 2: DeCoAR 2.0's s3prl front end (an old folder's files did not change)
FEATURE_DTYPES = {"float16": np.float16, "float32": np.float32}
SHARD_BYTES = 256 << 20


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


class AudioFingerprints:
    """The content fingerprint (sha256 of the bytes) of every clip of a split.

    Size and mtime alone are not enough: `cp -p`, `rsync -a`, tar and zip restore mtimes, so
    other audio of the same size would look unchanged and the cache would hand back the old
    clips' features. Hashing costs a fraction of extraction (benchmarks/README.md). One
    instance lives for one evaluation and hashes each file once, memoised by (path, size,
    mtime_ns, inode) - never across runs, where a file can change in place behind an
    identical stat. `trust_mtime` keeps the old, faster stat-only fingerprint (and its
    cache keys)."""

    def __init__(self, trust_mtime: bool = False):
        self.trust_mtime = trust_mtime
        self._hashes: dict[tuple, str] = {}
        self.files_hashed = 0
        self.seconds = 0.0

    def split(self, task, split: str) -> str:
        t0 = time.perf_counter()
        h = hashlib.sha256()
        for ex in task.split(split):
            try:
                st = ex.path.stat()
            except OSError as e:
                raise SpeechFTError(
                    f"{ex.path}: cannot read this clip ({e.strerror}); check the manifest's path column"
                ) from e
            if self.trust_mtime:
                h.update(f"{ex.id}:{st.st_size}:{st.st_mtime_ns}\n".encode())
            else:
                h.update(f"{ex.id}:{self._file(ex.path, st)}\n".encode())
        self.seconds += time.perf_counter() - t0
        # The stat-only digest is what older versions stored: with trust_mtime their entries still match.
        return h.hexdigest() if self.trust_mtime else "sha256:" + h.hexdigest()

    def _file(self, path: Path, st: os.stat_result) -> str:
        stamp = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
        if stamp not in self._hashes:
            try:
                self._hashes[stamp] = sha256_file(path)
            except OSError as e:
                raise SpeechFTError(f"{path}: cannot read this clip ({e.strerror}); check its permissions") from e
            self.files_hashed += 1
        return self._hashes[stamp]


def feature_fields(
    source: FeatureSource,
    task,
    split: str,
    kind: str,
    cfg: ExtractionSettings,
    audio: AudioFingerprints | None = None,
) -> dict:
    """Everything the features of one split depend on (the cache key's fields). `audio`: the
    evaluation's fingerprints, shared so that each clip is hashed once (default: a fresh one,
    following `cfg.trust_mtime`)."""
    import transformers

    if audio is None:
        audio = AudioFingerprints(cfg.trust_mtime)

    # The key names the clips (their bytes, order and durations: the durations make the batches), not the
    # task: tasks over the same audio (asr and pr of one corpus) share one extraction. The targets and the
    # split's name play no part in the features. A stat-only fingerprint (trust_mtime) names files by
    # their manifest path, so there the task folder is part of the key.
    fields = {
        "source": source.fingerprint,
        "clips": audio.split(task, split),
        "durations": sha256_bytes(repr([ex.duration for ex in task.split(split)]).encode()),
        "kind": kind,
        "dtype": cfg.dtype,
        "sample_rate": SAMPLE_RATE,
        "max_seconds": cfg.max_seconds,
        "extract_batch": [cfg.extract_batch_size, cfg.extract_batch_seconds],
        "code": FEATURE_CODE_VERSION,
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
    }
    if audio.trust_mtime:
        fields["task_root"] = str(Path(task.root).resolve())
    precision = getattr(cfg, "precision", "fp32")
    if source.autocasts and precision != "fp32":  # absent for fp32: entries made before --precision still match
        fields["precision"] = precision
    return fields


def split_batches(task, split: str, cfg: ExtractionSettings) -> list[list[int]]:
    """The length-sorted extraction batches (indices into the split) of one split: the same list in every
    process, so that an utterance meets the same neighbours (and padding) however many processes share the
    work, and its features come out bit-identical."""
    from .data.batching import BucketBatchSampler
    from .data.dataset import SplitDataset

    ds = SplitDataset(task, split, cfg.max_seconds)
    sampler = BucketBatchSampler(
        ds.durations, batch_size=cfg.extract_batch_size, max_seconds=cfg.extract_batch_seconds, shuffle=False
    )
    return sampler.batches(0)


def _autocast(source: FeatureSource, precision: str):
    """bf16/fp16 autocast around an encoder's forward pass on its device (fp32: a no-op)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    device = getattr(source, "device", torch.device("cpu"))
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None and source.autocasts)


def extract_batches(
    source: FeatureSource,
    task,
    split: str,
    kind: str,
    cfg: ExtractionSettings,
    keep: Callable[[int], bool] | None = None,
    progress: bool = True,
) -> Iterator[tuple[int, list[int], list[np.ndarray]]]:
    """Run the source over the batches of a split (only those whose number `keep` accepts: one process's
    share): yields (batch number, indices, arrays), one array per utterance - its mean-pooled states (S, D)
    for kind 'pooled', its frames (F, S, D) for 'frames' - in the stored dtype."""
    from .data.dataset import SplitDataset, split_loader

    dtype = FEATURE_DTYPES[cfg.dtype]
    numbered = [(k, b) for k, b in enumerate(split_batches(task, split, cfg)) if keep is None or keep(k)]
    # split_loader's private generator leaves the global torch RNG alone: dropout in a probe must not depend
    # on whether its features were recomputed.
    loader = split_loader(SplitDataset(task, split, cfg.max_seconds), [b for _, b in numbered])
    bar = progress_bar(
        total=sum(len(b) for _, b in numbered),
        desc=f"extract {source.name}/{task.name}/{split}",
        unit="utt",
        leave=False,
        disable=not progress,
    )
    precision = getattr(cfg, "precision", "fp32")
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        for (k, _), batch in zip(numbered, loader):
            with _autocast(source, precision):
                states, frame_lengths = source(batch.wavs, batch.lengths)
            if kind == "pooled":
                vecs = torch.stack([mean_pool(s.float(), frame_lengths) for s in states], dim=1)
                vals = vecs.cpu().numpy().astype(dtype)
                _check_finite(vals, source, task, split)
                arrays = list(vals)
            else:
                states, frame_lengths = [s.cpu() for s in states], frame_lengths.cpu()
                arrays = []
                for b in range(len(batch.indices)):
                    f = int(frame_lengths[b])
                    x = torch.stack([s[b, :f] for s in states], dim=1).float().numpy().astype(dtype)
                    _check_finite(x, source, task, split)
                    arrays.append(x)
            bar.update(len(batch.indices))
            yield k, list(batch.indices), arrays
    bar.close()


def assemble_features(
    n: int,
    kind: str,
    shape: tuple[int, int],
    dtype,
    batches,
    add_array: Callable[[str, np.ndarray], None] | None = None,
):
    """Lay out the per-utterance arrays of `batches` (extract_batches' output, in batch order) as one split's
    features: PooledFeatures (N, S, D), or FrameFeatures in shards of about SHARD_BYTES. With `add_array`
    the arrays go to it (the cache writer) as they are finished, and None is returned. The layout depends only
    on the batches, so features extracted by several processes and assembled here are byte-identical to one
    process's."""
    pooled = np.zeros((n, *shape), dtype=dtype) if kind == "pooled" else None
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

    for _, indices, arrays in batches:
        for i, x in zip(indices, arrays):
            if kind == "pooled":
                pooled[i] = x
                continue
            index[i] = (len(shards), sum(len(p) for p in pending), len(x))
            pending.append(x)
            pending_bytes += x.nbytes
            if pending_bytes >= SHARD_BYTES:
                flush()
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


def extract_features(
    source: FeatureSource,
    task,
    split: str,
    kind: str,
    cfg: ExtractionSettings,
    add_array: Callable[[str, np.ndarray], None] | None = None,
    progress: bool = True,
):
    """Run the source over a split. kind 'pooled' -> PooledFeatures, 'frames' ->
    FrameFeatures. With `add_array`, arrays are handed to it (the cache writer) as they are
    finished and the returned features are None (the caller reopens them memory-mapped)."""
    n = len(task.split(split))
    batches = extract_batches(source, task, split, kind, cfg, progress=progress)
    shape = (source.num_states, source.dim)
    return assemble_features(n, kind, shape, FEATURE_DTYPES[cfg.dtype], batches, add_array)


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
        cfg: ExtractionSettings,
        cache: FeatureCache | None,
        recompute: bool = False,
        progress: bool = True,
        audio: AudioFingerprints | None = None,
        ranks=None,
    ):
        self.source, self.task, self.cfg, self.cache = source, task, cfg, cache
        # eval_dist.Ranks under `accelerate launch`: each process extracts its share of a missing entry
        self.ranks = ranks if ranks is not None and ranks.world > 1 else None
        self.audio = audio if audio is not None else AudioFingerprints(cfg.trust_mtime)
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
            fields = feature_fields(self.source, self.task, split, self.kind, self.cfg, self.audio)
            key = cache_key(fields)
            entry = self.cache.open(key) if self.ranks is None else self.ranks.open_entry(self.cache, key)
            if entry is None:
                t0 = time.perf_counter()
                if self.ranks is not None:
                    from .eval_dist import extract_shared

                    extract_shared(self, split, key, fields)
                else:
                    with self.cache.write(key, fields) as w:
                        extract_features(
                            self.source, self.task, split, self.kind, self.cfg, add_array=w.add, progress=self.progress
                        )
                        w.info = self.entry_info(split)
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

    def entry_info(self, split: str) -> dict:
        """What a cache entry of `split` records besides its key's fields."""
        return {
            "kind": self.kind,
            "made_for": f"{Path(self.task.root).resolve()}/{split}",  # the first task to ask (others may share it)
            "num_states": self.source.num_states,
            "dim": self.source.dim,
            "items": len(self.task.split(split)),
        }

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
