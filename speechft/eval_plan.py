"""The feature cache's plan for one evaluation, made before anything is extracted.

All hidden states of a Base encoder at 50 frames/s in fp16 are about 1 MB per second of audio, so the
frame-level features of a real corpus (CTC tasks: every frame of every state) need hundreds of GB, while
utterance-level tasks (classification) store one mean-pooled vector per state and utterance - exactly what
their head needs (features.py), so they are already small. Without a plan an LRU cache that is too small
would evict entries this very evaluation still needs and extract them again.

So `plan_cache` lists, per encoder, task and split: items or frames x states x dim x bytes per value =
bytes (the frames counted with the encoder's own frame arithmetic from the manifest's durations), whether
the entry is already there, and compares what this evaluation needs with `--cache-max-gb` and the free disk
space of the cache folder. `check` then either evicts, once and before any extraction, the least recently
used entries of *other* evaluations that the limit requires, or stops with one line naming the options;
during the evaluation its entries are pinned and nothing is evicted (FeatureCache.hold).
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .data.audio import SAMPLE_RATE
from .errors import SpeechFTError
from .feature_cache import MARKER, FeatureCache, cache_key
from .features import FEATURE_DTYPES, AudioFingerprints, EncoderSource, feature_fields, open_source, with_layers

SPLITS = ("train", "dev", "test")
ENTRY_OVERHEAD = 64 << 10  # meta.json, the marker and .npy headers: generously


@dataclass
class PlanRow:
    encoder: str
    task: str
    split: str
    kind: str  # pooled | frames
    items: int
    frames: int  # stored vectors: items (pooled) or frames (frames)
    states: int
    dim: int
    value_bytes: int
    key: str
    cached: bool  # the entry is already there (its size on disk below)
    bytes: int  # the entry's size: on disk when cached, else the estimate

    @property
    def array_bytes(self) -> int:
        return self.frames * self.states * self.dim * self.value_bytes


@dataclass
class CachePlan:
    root: Path
    max_bytes: int
    free_bytes: int
    rows: list[PlanRow] = field(default_factory=list)
    evict: list[tuple[Path, int]] = field(default_factory=list)  # what the limit requires, before extracting

    @property
    def keys(self) -> list[str]:
        return [r.key for r in self.rows]

    @property
    def needed(self) -> int:  # this evaluation's entries, all pinned while it runs
        return sum(r.bytes for r in self.rows)

    @property
    def new(self) -> int:  # what extraction will write
        return sum(r.bytes for r in self.rows if not r.cached)

    def problem(self) -> str | None:
        if self.needed > self.max_bytes:
            return f"needs {gb(self.needed)} in {self.root}, more than --cache-max-gb {self.max_bytes / 1e9:g}"
        room = self.free_bytes + sum(size for _, size in self.evict)
        if self.new > room:
            return f"would write {gb(self.new)} to {self.root}, more than the {gb(room)} free on its disk"
        return None

    def lines(self) -> list[str]:
        out = [f"feature cache plan ({self.root}):"]
        for r in self.rows:
            what = f"{r.items} utterances (pooled)" if r.kind == "pooled" else f"{r.frames} frames"
            state = "cached" if r.cached else "to extract"
            out.append(
                f"  {r.encoder}/{r.task}/{r.split}: {what} x {r.states} states x {r.dim} x {r.value_bytes} B"
                f" = {gb(r.array_bytes)} ({state})"
            )
        evicted = sum(size for _, size in self.evict)
        out.append(
            f"  needs {gb(self.needed)} ({gb(self.new)} new) of --cache-max-gb {self.max_bytes / 1e9:g};"
            f" {gb(self.free_bytes)} free on disk" + (f"; evicting {gb(evicted)} of older entries" if evicted else "")
        )
        return out


def gb(n: int) -> str:
    return f"{n / 1e9:.3g} GB" if n >= 1e7 else f"{n / 1e6:.3g} MB"


def _free_bytes(root: Path) -> int:
    """Free space of the disk the cache folder is (or will be) on."""
    p = root.resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def _frames(source, task, split: str, max_seconds: float | None) -> int:
    """Frames extraction will store for a split: the source's frame arithmetic on each clip's samples (the
    manifest's duration, cropped as SplitDataset crops)."""
    samples = np.array([round(ex.duration * SAMPLE_RATE) for ex in task.split(split)], dtype=np.int64)
    if max_seconds is not None:
        samples = np.minimum(samples, int(max_seconds * SAMPLE_RATE))
    try:
        return int(source.frames(torch.from_numpy(samples)).sum())
    except NotImplementedError:  # a caller's own FeatureSource without frame arithmetic: 50 frames/s, the usual
        return int((samples // 320).sum())


def plan_cache(encoders, tasks, cfg, cache: FeatureCache, audio: AudioFingerprints) -> CachePlan:
    """Every entry the evaluation of `encoders` x `tasks` uses: its key, and its size (module docstring)."""
    plan = CachePlan(cache.root, cache.max_bytes, _free_bytes(cache.root))
    value_bytes = np.dtype(FEATURE_DTYPES[cfg.dtype]).itemsize
    for spec in encoders:
        source = with_layers(open_source(spec, device="cpu"), cfg.layers)  # its identity and shape only
        for task in tasks:
            kind = "pooled" if task.type == "classification" else "frames"
            for split in SPLITS:
                fields = feature_fields(source, task, split, kind, cfg, audio)
                key = cache_key(fields)
                items = len(task.split(split))
                vectors = items if kind == "pooled" else _frames(source, task, split, cfg.max_seconds)
                row = PlanRow(
                    source.name, task.name, split, kind, items, vectors, source.num_states, source.dim, value_bytes,
                    key, False, 0,
                )  # fmt: skip
                path = cache.root / key
                if (path / MARKER).exists():
                    row.cached, row.bytes = True, sum(f.stat().st_size for f in path.iterdir() if f.is_file())
                else:
                    row.bytes = row.array_bytes + (items * 3 * 8 if kind == "frames" else 0) + ENTRY_OVERHEAD
                plan.rows.append(row)
        inner = getattr(source, "inner", source)
        if isinstance(inner, EncoderSource) and inner is not spec:  # one loaded here, not the caller's
            inner.encoder = None  # the run loads it again onto its device, one encoder at a time
    plan.evict = cache.eviction_plan(reserve=plan.new, keep=set(plan.keys))
    return plan


def check(plan: CachePlan, cache: FeatureCache, show: bool) -> None:
    """Print the plan (unless quiet); stop with one line when it does not fit, before anything is written;
    else evict what the plan says, now, once."""
    if show:
        print("\n".join(plan.lines()), file=sys.stderr)
    problem = plan.problem()
    if problem:
        frame_level = sum(r.bytes for r in plan.rows if r.kind == "frames" and not r.cached)
        raise SpeechFTError(
            f"feature cache plan: this evaluation {problem} (frame-level tasks: {gb(frame_level)}; utterance-level "
            "tasks are already stored pooled); nothing was extracted. Options: --layers (a subset, e.g. every:2), "
            "a larger --cache-max-gb, --cache DIR on a larger disk, or --recompute (no cache: the encoder runs "
            "every epoch, slower but no disk)"
        )
    cache.evict(reserve=plan.new, keep=set(plan.keys))
