"""Length-bucketed batching."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from speechft.data.batching import BucketBatchSampler, collate_waveforms, padded_fraction, random_batches


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.1, 20.0), min_size=1, max_size=200), st.integers(1, 16), st.integers(0, 5))
def test_every_index_exactly_once(durations, batch_size, seed):
    batches = BucketBatchSampler(durations, batch_size=batch_size, seed=seed).batches()
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(durations)))
    assert all(1 <= len(b) <= batch_size for b in batches)


def test_deterministic_per_seed_and_epoch():
    d = np.random.default_rng(0).uniform(1, 10, 100)
    s = BucketBatchSampler(d, batch_size=8, seed=1)
    assert s.batches(0) == BucketBatchSampler(d, batch_size=8, seed=1).batches(0)
    assert s.batches(0) != s.batches(1)
    assert s.batches(0) != BucketBatchSampler(d, batch_size=8, seed=2).batches(0)


def test_bucketing_pads_far_less_than_random():
    d = np.random.default_rng(0).uniform(1, 15, 2000)
    bucketed = padded_fraction(BucketBatchSampler(d, batch_size=16).batches(), d)
    rand = padded_fraction(random_batches(len(d), 16), d)
    assert bucketed < 0.05 < 0.3 < rand


def test_max_seconds_caps_padded_batch_audio():
    d = np.random.default_rng(1).uniform(1, 10, 300)
    batches = BucketBatchSampler(d, batch_size=64, max_seconds=40).batches()
    assert all(len(b) * d[b].max() <= 40 or len(b) == 1 for b in batches)


def test_collate_pads_with_zeros():
    wavs, lengths = collate_waveforms([np.ones(3, np.float32), np.ones(5, np.float32)])
    assert wavs.shape == (2, 5) and lengths.tolist() == [3, 5]
    assert wavs[0, 3:].abs().sum() == 0 and wavs[0, :3].sum() == 3
