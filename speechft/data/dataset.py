"""Batches of audio from a task folder split, for training and probing.

Clips longer than `max_seconds` are cropped in one of two ways (CROPS). "start" keeps the first
`max_seconds`: the same audio every time, which probing needs (its features are cached) and which
unlabelled audio for continued pre-training needs (its unit targets are labelled once, on that crop).
"random" keeps a window at a random start, drawn anew every epoch, as s3prl's VoxCeleb1 SID dataset
does for its training clips (downstream/voxceleb1/dataset.py: `random.randint(0, length - max_timestep)`
each time a clip is drawn; dev and test clips are whole). The start is a function of (seed, epoch, clip)
only, never of a global RNG, so a resumed run, which restarts mid-epoch in a fresh process, or with
DataLoader workers, sees exactly the crops an uninterrupted run does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

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


CROPS = ("random", "start")  # how a clip longer than max_seconds is cut (module docstring)


class SplitDataset(Dataset):
    """One split of a task folder; items are (waveform, target, index).

    With crop="random" the window of clip i depends on (seed, epoch, i): set the epoch (set_epoch) before
    the epoch's loader is built, so that worker processes receive it with their copy of the dataset.
    """

    def __init__(
        self,
        task: Task,
        split: str,
        max_seconds: float | None = None,
        crop: Literal["random", "start"] = "start",
        seed: int = 0,
    ):
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        self.task, self.split = task, split
        self.examples = task.split(split)
        self.max_seconds, self.crop, self.seed = max_seconds, crop, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int):
        ex = self.examples[i]
        wav = load_audio(ex.path)  # always SAMPLE_RATE: task.yaml's sample_rate is informational
        if self.max_seconds is not None and len(wav) > self.max_seconds * SAMPLE_RATE:
            keep = int(self.max_seconds * SAMPLE_RATE)
            start = self.crop_start(i, len(wav), keep)
            wav = wav[start : start + keep]
        return wav, ex.target, i

    def crop_start(self, i: int, length: int, keep: int) -> int:
        """Where the window of `keep` samples of clip `i` (`length` samples) begins in this epoch."""
        if self.crop == "start":
            return 0
        # A string seed is hashed with SHA-512 by random.Random: stable across processes and Python
        # versions (unlike hash()), and distinct for every (seed, epoch, clip), negative seeds included.
        return random.Random(f"crop/{self.seed}/{self.epoch}/{i}").randint(0, length - keep)

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
