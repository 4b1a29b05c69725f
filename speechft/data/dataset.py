"""Batches of audio from a task folder split, for training and probing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .audio import SAMPLE_RATE, load_audio
from .batching import BucketBatchSampler, collate_waveforms
from .tasks import Task


@dataclass
class Batch:
    wavs: torch.Tensor  # (B, T) float32, zero-padded
    lengths: torch.Tensor  # (B,) samples
    targets: list[str]  # labels or transcripts
    indices: list[int]  # positions in the split's example list

    def to(self, device) -> Batch:
        return Batch(self.wavs.to(device), self.lengths.to(device), self.targets, self.indices)


class SplitDataset(Dataset):
    """One split of a task folder; items are (waveform, target, index)."""

    def __init__(self, task: Task, split: str, max_seconds: float | None = None):
        self.task, self.split = task, split
        self.examples = task.split(split)
        self.max_seconds = max_seconds

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int):
        ex = self.examples[i]
        wav = load_audio(ex.path)  # always SAMPLE_RATE: task.yaml's sample_rate is informational
        if self.max_seconds is not None and len(wav) > self.max_seconds * SAMPLE_RATE:
            wav = wav[: int(self.max_seconds * SAMPLE_RATE)]  # long clips are cropped, deterministically
        return wav, ex.target, i

    @property
    def durations(self) -> list[float]:
        return [ex.duration for ex in self.examples]


def collate(items) -> Batch:
    wavs, lengths = collate_waveforms([np.asarray(w) for w, _, _ in items])
    return Batch(wavs, lengths, [t for _, t, _ in items], [i for _, _, i in items])


def make_loader(
    task: Task,
    split: str,
    batch_size: int = 8,
    shuffle: bool = False,
    seed: int = 0,
    max_seconds: float | None = None,
    num_workers: int = 0,
    epoch: int = 0,
) -> DataLoader:
    """Length-bucketed loader. With shuffle=False the order is fixed (sorted by length)."""
    ds = SplitDataset(task, split, max_seconds)
    sampler = BucketBatchSampler(ds.durations, batch_size=batch_size, shuffle=shuffle, seed=seed)
    sampler.set_epoch(epoch)
    return split_loader(ds, sampler.batches(epoch), num_workers=num_workers)


def split_loader(dataset: Dataset, batches: list[list[int]], num_workers: int = 0, pin_memory: bool = False):
    """The one way speechft builds a DataLoader: a fixed list of batches (dataset indices), our collate,
    and a private generator. Creating a loader must not draw from the global torch RNG, or a resumed
    run (which creates its loader mid-epoch) or a probe whose features were cached would see other
    dropout masks than an uninterrupted run."""
    return DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=collate,
        num_workers=num_workers,
        generator=torch.Generator(),
        pin_memory=pin_memory,
    )
