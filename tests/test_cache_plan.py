"""The feature cache's plan (eval_plan.py): exact sizes, a plan that does not fit stops before anything is
extracted or written, eviction only before an evaluation; and the extraction options it names (--layers,
--precision)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import make_classification_task, make_ctc_task

import speechft.features as features
from speechft import eval_plan
from speechft.cli import main as cli_main
from speechft.data import load_task
from speechft.encoders import tiny_encoder
from speechft.errors import SpeechFTError
from speechft.feature_cache import FeatureCache
from speechft.features import AudioFingerprints, feature_fields, open_source, with_layers
from speechft.probe import ProbeConfig, evaluate

FAST = dict(lrs=[1e-2], epochs=1, min_steps=0, progress=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    tiny_encoder("hubert", seed=0).save(root / "enc")  # 2 layers: 3 hidden states of 32 dims
    return SimpleNamespace(
        root=root,
        enc=root / "enc",
        cls=make_classification_task(root / "cls", n_per_class=3),
        ctc=make_ctc_task(root / "ctc", n=4),
    )


def plan_of(world, cache, **cfg):
    tasks = [load_task(world.cls), load_task(world.ctc)]
    return eval_plan.plan_cache([world.enc], tasks, ProbeConfig(**cfg), cache, AudioFingerprints())


def test_the_plan_counts_what_extraction_stores(world, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    before = plan_of(world, cache)
    assert [(r.task, r.split, r.kind) for r in before.rows[:4]] == [
        ("tones", "train", "pooled"),
        ("tones", "dev", "pooled"),
        ("tones", "test", "pooled"),
        ("beeps", "train", "frames"),
    ]
    assert not any(r.cached for r in before.rows) and not cache.root.exists()  # planning writes nothing
    evaluate([world.enc], [world.cls, world.ctc], None, cache=cache, **FAST)
    after = plan_of(world, FeatureCache(tmp_path / "cache"))
    for b, a in zip(before.rows, after.rows):
        assert a.key == b.key and a.cached
        entry = cache.open(a.key)
        if a.kind == "pooled":
            stored = entry.array("pooled").shape
            assert stored == (b.items, 3, 32) and b.frames == b.items
        else:
            assert b.frames == int(np.asarray(entry.array("index"))[:, 2].sum())  # the encoder's frame arithmetic
        assert b.states == 3 and b.dim == 32 and b.value_bytes == 2  # float16
        assert b.bytes - eval_plan.ENTRY_OVERHEAD <= a.bytes <= b.bytes  # the estimate covers the entry
    assert after.new == 0 and after.needed == cache.size()


def test_a_plan_over_the_limit_stops_before_extracting_with_nothing_written(world, tmp_path, capsys, monkeypatch):
    def no_extraction(*a, **k):
        raise AssertionError("extraction started")

    monkeypatch.setattr(features, "extract_batches", no_extraction)
    cache, out = tmp_path / "cache", tmp_path / "out"
    argv = ["evaluate", "--encoder", str(world.enc), "--task", str(world.cls), str(world.ctc), "--out", str(out)]
    argv += ["--cache", str(cache), "--cache-max-gb", "0.00001", "--epochs", "1"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "feature cache plan (" in err and "beeps/train:" in err  # the plan is printed first
    last = err.strip().splitlines()[-1]
    assert last.startswith("speechft: error: feature cache plan: this evaluation needs ")
    assert "more than --cache-max-gb 1e-05" in last and "nothing was extracted" in last
    for option in ("--layers", "every:2", "--cache-max-gb", "--cache DIR", "--recompute"):
        assert option in last
    assert not cache.exists() and not out.exists() and not list(tmp_path.glob(".out*"))


def test_a_plan_larger_than_the_free_disk_stops_too(world, tmp_path, monkeypatch):
    monkeypatch.setattr(eval_plan, "_free_bytes", lambda root: 1000)
    with pytest.raises(SpeechFTError, match=r"would write .* more than the 0.001 MB free on its disk"):
        evaluate([world.enc], [world.cls], None, cache=FeatureCache(tmp_path / "cache"), **FAST)
    assert not (tmp_path / "cache").exists()


def test_eviction_happens_before_the_evaluation_and_never_during_it(world, tmp_path, monkeypatch):
    root = tmp_path / "cache"
    evaluate([world.enc], [world.ctc], None, cache=FeatureCache(root), **FAST)  # an older evaluation's entries
    old = {p.name for p, _, _ in FeatureCache(root).entries()}
    assert len(old) == 3
    need = plan_of(world, FeatureCache(root))
    cls_bytes = sum(r.bytes for r in need.rows if r.task == "tones")
    calls = []
    real = FeatureCache.evict
    monkeypatch.setattr(FeatureCache, "evict", lambda self, *a, **k: calls.append(k) or real(self, *a, **k))
    # Room for the classification task's entries only: the old frame-level entries must go, before extracting.
    small = FeatureCache(root, max_bytes=cls_bytes + 1000)
    r = evaluate([world.enc], [world.cls], None, cache=small, **FAST)
    now = {p.name for p, _, _ in FeatureCache(root).entries()}
    assert len(calls) == 1 and calls[0]["reserve"] > 0  # the plan's eviction, once; none while writing entries
    assert not (old & now) and len(now) == 3
    assert r["models"][0]["tasks"]["tones"]["cache"] == {"train": "miss", "dev": "miss", "test": "miss"}


def test_layers_subset_is_stored_summed_and_recorded(world, tmp_path, capsys):
    cache, out = tmp_path / "cache", tmp_path / "out"
    argv = ["evaluate", "--encoder", str(world.enc), "--task", str(world.cls), "--out", str(out), "--quiet"]
    argv += ["--cache", str(cache), "--epochs", "1", "--lrs", "1e-2", "--min-steps", "0", "--layers", "0", "2"]
    assert cli_main(argv) == 0
    capsys.readouterr()
    res = json.loads((out / "results.json").read_text())
    assert res["protocol"]["layers"] == [0, 2]
    model = res["models"][0]
    assert model["layers"] == [0, 2] and model["num_states"] == 2
    assert len(model["tasks"]["tones"]["layer_weights"]) == 2
    # The stored vectors are states 0 and 2 of the full extraction, bit for bit.
    task, cfg = load_task(world.cls), ProbeConfig()
    full = features.extract_features(open_source(world.enc), task, "train", "pooled", cfg, progress=False)
    sub = with_layers(open_source(world.enc), [0, 2])
    key = features.cache_key(feature_fields(sub, task, "train", "pooled", cfg))
    stored = np.asarray(FeatureCache(cache).open(key).array("pooled"))
    assert np.array_equal(stored, full.data[:, [0, 2]])
    assert with_layers(open_source(world.enc), "every:2").layers == [0, 2]
    plain = open_source(world.enc)
    assert with_layers(plain, [2, 1, 0]) is plain  # all states, in any order: the plain source (and its entries)


def test_bad_layers_are_one_line_errors(world, tmp_path, capsys):
    base = ["evaluate", "--encoder", str(world.enc), "--task", str(world.cls), "--quiet", "--no-cache"]
    for layers, msg in [
        (["5"], "--layers 5: enc has 3 hidden states (0-2)"),
        (["every:0"], "every:N with N >= 1"),
        (["a"], "--layers a: give indices"),
    ]:
        out = tmp_path / f"out-{layers[0]}"
        assert cli_main([*base, "--out", str(out), "--layers", *layers]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.strip().count("\n") == 0, err
        assert not out.exists()


def test_precision_bf16_autocasts_extraction_and_keys_the_cache(world, tmp_path):
    task, cfg32, cfg16 = (
        load_task(world.cls),
        ProbeConfig(dtype="float32"),
        ProbeConfig(dtype="float32", precision="bf16"),
    )
    src = open_source(world.enc)
    f32 = features.extract_features(src, task, "dev", "pooled", cfg32, progress=False).data
    f16 = features.extract_features(src, task, "dev", "pooled", cfg16, progress=False).data
    assert not np.array_equal(f32, f16) and np.allclose(f32, f16, atol=0.1)  # bf16 ran, close to fp32
    assert "precision" not in feature_fields(src, task, "dev", "pooled", cfg32)  # old fp32 entries still match
    assert feature_fields(src, task, "dev", "pooled", cfg16)["precision"] == "bf16"
    fb = open_source("fbank")  # the filterbank is not autocast: one entry whatever the precision
    assert feature_fields(fb, task, "dev", "pooled", cfg16) == feature_fields(fb, task, "dev", "pooled", cfg32)
    r = evaluate([world.enc], [world.cls], None, cache=False, precision="bf16", **FAST)
    assert r["protocol"]["precision"] == "bf16"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_fp16_without_cuda_is_a_one_line_error(world, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["evaluate", "--encoder", str(world.enc), "--task", str(world.cls), "--out", str(out), "--no-cache"]
    assert cli_main([*argv, "--precision", "fp16", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--precision fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU" in err and err.strip().count("\n") == 0
    assert not out.exists()
