"""Length-bucketed batching: sort by duration into buckets, shuffle between buckets.

Random batching of speech pads every short clip to the longest one in its batch; sorting
by length first keeps the padded fraction small (benchmarks/README.md records both).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch


class BucketBatchSampler:
    """Yields lists of indices. Batches hold `batch_size` items, or as many as fit in
    `max_seconds` of (padded) audio when that is given. Deterministic for a given
    (seed, epoch): resuming a run replays the same order."""

    def __init__(
        self,
        durations: Sequence[float],
        batch_size: int = 8,
        max_seconds: float | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.durations = np.asarray(durations, dtype=np.float64)
        self.batch_size, self.max_seconds = batch_size, max_seconds
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        epoch = self.epoch if epoch is None else epoch
        rng = random.Random(self.seed * 100003 + epoch)
        order = list(range(len(self.durations)))
        if self.shuffle:
            rng.shuffle(order)  # random tie-breaking among equal durations
        order.sort(key=lambda i: self.durations[i])
        out, cur, longest = [], [], 0.0
        for i in order:
            d = self.durations[i]
            too_long = self.max_seconds is not None and cur and max(longest, d) * (len(cur) + 1) > self.max_seconds
            if cur and (len(cur) >= self.batch_size or too_long):
                out.append(cur)
                cur, longest = [], 0.0
            cur.append(i)
            longest = max(longest, d)
        if cur and not (self.drop_last and len(cur) < self.batch_size and self.max_seconds is None):
            out.append(cur)
        if self.shuffle:
            rng.shuffle(out)
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches(0))


def random_batches(n: int, batch_size: int, seed: int = 0) -> list[list[int]]:
    """Plain shuffled batching, the baseline the bucketing benchmark compares against."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def padded_fraction(batches: list[list[int]], lengths: Sequence[float]) -> float:
    """Fraction of the padded batch tensors that is padding."""
    lengths = np.asarray(lengths, dtype=np.float64)
    total = sum(len(b) * lengths[b].max() for b in batches if b)
    real = sum(lengths[b].sum() for b in batches if b)
    return float(1.0 - real / total) if total > 0 else 0.0


def collate_waveforms(wavs: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad to (B, T) float32 and return the true lengths (B,) int64."""
    lengths = torch.tensor([len(w) for w in wavs], dtype=torch.long)
    out = torch.zeros(len(wavs), int(lengths.max()) if len(wavs) else 0, dtype=torch.float32)
    for i, w in enumerate(wavs):
        out[i, : len(w)] = torch.as_tensor(w, dtype=torch.float32)
    return out, lengths
