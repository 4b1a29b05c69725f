"""The fast probe path (train_probes) gives what the reference (train_probe, one pair at a time) gives:
the same dev and test per (LR, seed), the same best epoch, the same layer weights, the same chosen LR."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import make_classification_task, make_ctc_task

import speechft.probe as probe
import speechft.probe_train as probe_train
from speechft.feature_cache import FeatureCache
from speechft.features import FeatureProvider, open_source
from speechft.probe import evaluate
from speechft.probe_train import ProbeConfig, probe_threads, train_probe, train_probes


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from speechft.encoders import tiny_encoder

    root = tmp_path_factory.mktemp("probe_train")
    tiny_encoder("hubert", seed=0).save(root / "enc")
    return SimpleNamespace(
        root=root,
        enc=root / "enc",
        cls=make_classification_task(root / "cls", n_per_class=10),
        ctc=make_ctc_task(root / "ctc", n=12),
    )


PAIRS = [(1e-2, 0), (1e-2, 1), (1e-3, 0), (1e-3, 1)]


def provider(world, task_dir, cfg, cache=None):
    from speechft.data import load_task

    return FeatureProvider(open_source(world.enc), load_task(task_dir), cfg, cache, progress=False)


def reference(prov, cfg) -> list[dict]:
    """The old loop, one train_probe per pair, under the same thread count as train_probes."""
    with probe_threads("cpu"):
        return [train_probe(prov, lr, seed, cfg) for lr, seed in PAIRS]


def assert_same(old: list[dict], new: list[dict]) -> None:
    assert len(old) == len(new) == len(PAIRS)
    for o, n in zip(old, new):
        keys = ("dev", "test", "best_epoch", "epochs")
        assert [n[k] for k in keys] == [o[k] for k in keys]
        np.testing.assert_allclose(n["layer_weights"], o["layer_weights"], rtol=0, atol=1e-7)
    # The runs differ from each other, so agreeing is not a coincidence of untrained heads.
    assert len({tuple(o["layer_weights"]) for o in old}) == len(PAIRS)


def test_classification_matches_the_reference_per_lr_and_seed(world, tmp_path):
    cfg = ProbeConfig(epochs=6, min_steps=0, batch_size=8)
    prov = provider(world, world.cls, cfg, FeatureCache(tmp_path / "cache"))  # memory-mapped, read-only
    assert_same(reference(prov, cfg), train_probes(prov, PAIRS, cfg))


@pytest.mark.parametrize("head", ["linear", "bilstm"])
def test_ctc_matches_the_reference_per_lr_and_seed(world, head):
    cfg = ProbeConfig(epochs=4, min_steps=0, ctc_batch_size=4, ctc_head=head, lstm_layers=1, lstm_hidden=16)
    prov = provider(world, world.ctc, cfg)
    assert_same(reference(prov, cfg), train_probes(prov, PAIRS, cfg))


def test_a_task_too_large_to_standardise_once_is_standardised_per_batch_with_the_same_result(world, monkeypatch):
    cfg = ProbeConfig(epochs=3, min_steps=0, ctc_batch_size=4)
    prov = provider(world, world.ctc, cfg)
    once = train_probes(prov, PAIRS, cfg)
    monkeypatch.setattr(probe_train, "STANDARDIZE_ONCE_BYTES", 0)
    built = []
    real = probe_train.StandardizedSplit

    def spy(feats, head, device, once):
        built.append(once)
        return real(feats, head, device, once)

    monkeypatch.setattr(probe_train, "StandardizedSplit", spy)
    assert_same(once, train_probes(prov, PAIRS, cfg))
    assert built == [False, False, False]


def test_standardised_frames_equal_the_per_batch_standardisation_padding_included(world):
    cfg = ProbeConfig()
    prov = provider(world, world.ctc, cfg)
    head = probe_train._new_head(prov, 0, cfg, "cpu")
    feats = prov.get("train")
    ids = [3, 0, 7, 5]  # different lengths: the shorter ones are padded
    x, lengths = feats.batch(ids)
    want = head.standardize(x)
    got, got_lengths = probe_train.StandardizedSplit(feats, head, "cpu").frames_batch(ids)
    assert len(set(lengths.tolist())) > 1
    assert torch.equal(got_lengths, lengths) and torch.equal(got, want)


def test_evaluate_chooses_the_same_lr_and_reports_the_same_numbers_as_the_reference_loop(world, monkeypatch):
    opts = dict(lrs=[1e-2, 1e-3], seeds=[0, 1], epochs=4, min_steps=0, ctc_batch_size=4, progress=False)

    def summary(r):
        return {
            t: (x["chosen_lr"], x["dev"], x["test"], x["test_per_seed"], x["layer_weights_per_seed"], x["lr_search"])
            for t, x in r["models"][0]["tasks"].items()
        }

    new = summary(evaluate([world.enc], [world.cls, world.ctc], None, cache=False, **opts))

    def old_loop(prov, pairs, cfg, on_epoch=None, device="cpu"):
        with probe_threads(device):
            return [train_probe(prov, lr, seed, cfg, on_epoch, device) for lr, seed in pairs]

    monkeypatch.setattr(probe, "train_probes", old_loop)
    old = summary(evaluate([world.enc], [world.cls, world.ctc], None, cache=False, **opts))
    assert set(new) == {"tones", "beeps"}
    for task in new:
        chosen, dev, test, test_per_seed, weights, search = new[task]
        assert (chosen, dev, test, test_per_seed, search) == old[task][:4] + (old[task][5],)
        np.testing.assert_allclose(weights, old[task][4], rtol=0, atol=1e-7)


def test_probe_threads_limits_the_cpu_threads_and_restores_them():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with probe_threads("cpu"):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with probe_threads("cpu", threads=None), probe_threads("cuda"):
            assert torch.get_num_threads() == 2  # left alone: torch's own setting / not on the CPU
        with pytest.raises(RuntimeError), probe_threads("cpu"):
            raise RuntimeError("a failing probe")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_each_process_hands_its_jobs_of_one_task_to_train_probes_together_in_the_dealt_order():
    from speechft.eval_dist import Ranks

    jobs = [(task, lr, seed) for task in (0, 1) for lr in (1e-2, 1e-3) for seed in (0, 1)]  # 8 jobs
    # Process 1 of 3 gets jobs 1, 4, 7 (j mod 3, as eval_dist.divide deals them); the others' shares are faked.
    others = {r: {j: ("other", j) for j in range(r, len(jobs), 3)} for r in (0, 2)}
    ranks = Ranks(1, 3, "cpu", gather=lambda mine: [mine[0] if r == 1 else (others[r], None) for r in range(3)])
    calls = []

    def run(group):
        calls.append(group)
        return [("mine", job) for job in group]

    results = probe._divide_by_task(ranks, jobs, run)
    assert calls == [[jobs[1]], [jobs[4], jobs[7]]]  # task 0: job 1; task 1: jobs 4 and 7, one call each
    assert results == [("mine", jobs[j]) if j % 3 == 1 else ("other", j) for j in range(len(jobs))]
