"""SplitDataset's crops: the first max_seconds, or a random window per (seed, epoch, clip) (data.crop)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import make_classification_task, make_ctc_task

from speechft.data import load_task
from speechft.data.audio import load_audio
from speechft.data.dataset import SplitDataset
from speechft.train import DataConfig, TaskStream

KEEP_SECONDS = 0.4  # the conftest clips are 0.5-1.0 s (ctc: 0.5-1.0 s too), so every one is longer
KEEP = int(KEEP_SECONDS * 16000)


def window_start(full: np.ndarray, crop: np.ndarray) -> int:
    """Where `crop` sits in `full` (an independent check: search, do not recompute the seed)."""
    starts = [s for s in np.flatnonzero(full == crop[0]) if np.array_equal(full[s : s + len(crop)], crop)]
    assert len(starts) == 1, "the crop is not one contiguous window of the clip"
    return int(starts[0])


@pytest.fixture
def task(tmp_path):
    return load_task(make_classification_task(tmp_path / "cls"))


def test_start_crop_keeps_the_first_max_seconds_every_epoch(task):
    ds = SplitDataset(task, "train", KEEP_SECONDS, crop="start", seed=3)
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        for i, ex in enumerate(ds.examples):
            assert np.array_equal(ds[i][0], load_audio(ex.path)[:KEEP])


def test_random_crop_is_a_window_fixed_by_seed_epoch_and_clip(task):
    ds = SplitDataset(task, "train", KEEP_SECONDS, crop="random", seed=0)
    starts = {}
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i, ex in enumerate(ds.examples):
            wav, target, index = ds[i]
            assert len(wav) == KEEP and target == ex.target and index == i
            full = load_audio(ex.path)
            starts[epoch, i] = window_start(full, wav)
            assert 0 <= starts[epoch, i] <= len(full) - KEEP
    n = len(ds.examples)
    assert all(starts[0, i] != starts[1, i] for i in range(n)), "a clip got the same window in two epochs"
    assert len({starts[0, i] for i in range(n)}) > 1 and any(starts[0, i] > 0 for i in range(n))
    # the same (seed, epoch, clip) gives the same window, in a fresh dataset too; another seed another one
    again = SplitDataset(task, "train", KEEP_SECONDS, crop="random", seed=0)
    again.set_epoch(1)
    assert all(window_start(load_audio(ex.path), again[i][0]) == starts[1, i] for i, ex in enumerate(again.examples))
    other = SplitDataset(task, "train", KEEP_SECONDS, crop="random", seed=1)
    assert any(window_start(load_audio(ex.path), other[i][0]) != starts[0, i] for i, ex in enumerate(other.examples))


def test_clips_within_max_seconds_and_uncropped_splits_are_whole(task):
    for crop in ("random", "start"):
        long_enough = SplitDataset(task, "train", 5.0, crop=crop, seed=0)
        whole = SplitDataset(task, "dev", crop=crop)
        for ds in (long_enough, whole):
            for i, ex in enumerate(ds.examples):
                assert np.array_equal(ds[i][0], load_audio(ex.path))
    with pytest.raises(ValueError, match="crop"):
        SplitDataset(task, "train", 1.0, crop="middle")


def stream_items(task, cfg: DataConfig, batches: int, seed: int = 0) -> list[tuple[int, int, np.ndarray]]:
    """(epoch, clip, waveform) of each item of the first `batches` batches of a TaskStream."""
    stream = TaskStream(task, cfg, seed, 0, 1, torch.device("cpu"))
    out = []
    for _ in range(batches):
        batch, _ = next(stream)
        out += [(stream.epoch, i, batch.wavs[row, : batch.lengths[row]].numpy()) for row, i in enumerate(batch.indices)]
    return out


def test_stream_crops_reach_dataloader_workers_and_follow_the_epoch(task):
    """A worker process gets its copy of the dataset when the epoch's loader is built: its crops must be the
    ones the main process would make, epoch by epoch."""
    cfg = DataConfig(batch_size=4, max_seconds=KEEP_SECONDS, crop="random")
    main = stream_items(task, cfg, 6)  # 12 training clips: two epochs
    workers = stream_items(task, DataConfig(batch_size=4, max_seconds=KEEP_SECONDS, crop="random", num_workers=1), 6)
    assert [(e, i) for e, i, _ in main] == [(e, i) for e, i, _ in workers]
    assert all(np.array_equal(a, b) for (_, _, a), (_, _, b) in zip(main, workers))
    by_epoch = {(e, i): w for e, i, w in main}
    assert {e for e, _ in by_epoch} == {0, 1}
    assert all(not np.array_equal(by_epoch[0, i], by_epoch[1, i]) for e, i in by_epoch if e == 0)


def test_ctc_and_unlabelled_audio_are_never_cropped_at_random(tmp_path, task):
    """CTC transcripts would no longer match a window; unit targets (speechft pretrain) are labelled once on
    the start crop. data.crop=random concerns classification clips only."""
    ctc = load_task(make_ctc_task(tmp_path / "ctc"))
    cfg = DataConfig(batch_size=4, max_seconds=0.9, crop="random")
    items = stream_items(ctc, cfg, 4)
    kept = [ex for ex in ctc.split("train") if ex.duration <= 0.9]  # the longer ones are skipped, not cropped
    assert 0 < len(kept) < len(ctc.split("train"))
    assert all(np.array_equal(w, load_audio(kept[i].path)) for _, i, w in items)

    audio = dataclasses.replace(task, type="audio")  # what speechft.pretrain's AudioSource builds
    for _, i, w in stream_items(audio, DataConfig(batch_size=4, max_seconds=KEEP_SECONDS, crop="random"), 6):
        assert np.array_equal(w, load_audio(audio.split("train")[i].path)[:KEEP])
