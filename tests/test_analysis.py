"""Feature similarity (linear CKA, frame cosine), weight distance and `speechft analyze`."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from speechft.analysis import analyze, layer_index, weight_distance
from speechft.cka import StreamingCKA, frame_cosines, hsic_unbiased_gram, linear_cka, mean_frame_cosine
from speechft.data.manifest import read_audio_list
from speechft.errors import SpeechFTError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def related(n: int, dx: int = 12, dy: int = 9, seed: int = 0, noise: float = 0.5):
    """X and a noisy non-linear function of it: a CKA well inside (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, dx, generator=g, dtype=torch.float64)
    Y = torch.tanh(X @ torch.randn(dx, dy, generator=g, dtype=torch.float64)) + noise * torch.randn(
        n, dy, generator=g, dtype=torch.float64
    )
    return X, Y


def orthogonal(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q


def streamed(X, Y, size: int, full: bool = False) -> StreamingCKA:
    s = StreamingCKA(full=full)
    for i in range(0, X.shape[0], size):
        s.update(X[i : i + size], Y[i : i + size])
    return s


# ---- CKA ------------------------------------------------------------------------------------------
def test_cka_of_a_representation_with_itself_is_one():
    X, _ = related(300)
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(X, X, unbiased=True) == pytest.approx(1.0, abs=1e-12)
    assert streamed(X, X, 50).value == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_rotation_and_isotropic_scaling_but_not_to_anisotropic_scaling():
    X, Y = related(400)
    base = linear_cka(X, Y)
    base_mb = streamed(X, Y, 100).value
    assert 0.2 < base < 0.95
    Y2 = 3.7 * (Y @ orthogonal(Y.shape[1], 1))
    X2 = 0.02 * (X @ orthogonal(X.shape[1], 2)) + 5.0  # a shift too: CKA centres
    assert linear_cka(X2, Y2) == pytest.approx(base, rel=1e-10)
    assert linear_cka(X2, Y2, unbiased=True) == pytest.approx(linear_cka(X, Y, unbiased=True), rel=1e-9)
    assert streamed(X2, Y2, 100).value == pytest.approx(base_mb, rel=1e-9)
    # Stretching one axis is not a similarity transform: CKA must notice.
    stretch = torch.ones(Y.shape[1], dtype=torch.float64)
    stretch[0] = 10.0
    assert abs(linear_cka(X, Y * stretch) - base) > 0.01


def test_cka_is_near_zero_for_independent_features_at_large_n():
    # Expected value of the biased estimator for independent isotropic features is about
    # d/n (= 0.0008 here); the unbiased estimators are centred on 0. Tolerance: 0.01.
    g = torch.Generator().manual_seed(3)
    n, d = 20000, 16
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    Y = torch.randn(n, d, generator=g, dtype=torch.float64)
    assert abs(linear_cka(X, Y)) < 0.01
    assert abs(streamed(X, Y, 500).value) < 0.01
    # ...while a related pair at the same n is far from 0.
    Xr, Yr = related(n)
    assert linear_cka(Xr, Yr) > 0.2


def test_unbiased_hsic_matches_its_u_statistic_definition():
    # Song et al. (2012): HSIC_1 is the U-statistic with kernel
    # h(i,j,q,r) = 1/24 sum over orderings (t,u,v,w) of k_tu l_tu + k_tu l_vw - 2 k_tu l_tv.
    X, Y = related(7, dx=3, dy=2, seed=5)
    K, L = (X @ X.T).numpy(), (Y @ Y.T).numpy()
    total, count = 0.0, 0
    for quad in itertools.combinations(range(7), 4):
        h = 0.0
        for t, u, v, w in itertools.permutations(quad):
            h += K[t, u] * L[t, u] + K[t, u] * L[v, w] - 2 * K[t, u] * L[t, v]
        total += h / 24
        count += 1
    assert hsic_unbiased_gram(K, L) == pytest.approx(total / count, rel=1e-10)


def test_streaming_with_one_minibatch_equals_the_full_unbiased_estimator_exactly():
    X, Y = related(64, seed=7)
    X = X * 40 + 300  # large offsets: the feature-space algebra must not lose precision
    s = StreamingCKA()
    s.update(X, Y)
    assert s.minibatches == 1
    assert s.value == pytest.approx(linear_cka(X, Y, unbiased=True), rel=1e-10)


def test_minibatch_estimate_agrees_with_the_direct_full_computation():
    X, Y = related(2000, seed=11)
    direct = linear_cka(X, Y)
    s = streamed(X, Y, 200, full=True)
    assert s.minibatches == 10
    assert s.value == pytest.approx(direct, abs=0.02)  # measured difference: about 0.002
    # The full-data statistics are exact whatever the split.
    assert s.full_value == pytest.approx(direct, rel=1e-10)


@pytest.mark.parametrize("seed", range(4))
def test_full_data_cka_is_exact_for_uneven_splits_with_tiny_pieces(seed):
    X, Y = related(150, seed=seed)
    X = X + 1e3  # far from zero mean: the pairwise co-moment merge must stay exact
    rng = np.random.default_rng(seed)
    cuts = sorted(rng.choice(np.arange(1, 146), size=12, replace=False).tolist()) + [150]
    s, start = StreamingCKA(full=True), 0
    for c in cuts:
        s.update(X[start:c], Y[start:c])
        start = c
    assert s.frames + s.pending_frames == 150
    assert s.pending_frames == 0  # the last piece holds >= 5 rows, so nothing is left over
    assert s.full_value == pytest.approx(linear_cka(X, Y), rel=1e-9)


def test_pieces_smaller_than_four_rows_are_joined_to_the_next_minibatch():
    X, Y = related(9, seed=2)
    s = StreamingCKA()
    s.update(X[:2], Y[:2])
    assert (s.minibatches, s.pending_frames) == (0, 2)
    assert math.isnan(s.value)
    s.update(X[2:5], Y[2:5])
    one = StreamingCKA()
    one.update(X[:5], Y[:5])
    assert (s.minibatches, s.frames) == (1, 5)
    assert s.value == pytest.approx(one.value, rel=1e-12)


def test_mean_frame_cosine():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(50, 8, generator=g)
    assert mean_frame_cosine(X, X) == pytest.approx(1.0)
    assert mean_frame_cosine(X, -2 * X) == pytest.approx(-1.0)
    Y = torch.zeros_like(X)
    Y[:, 0] = -X[:, 1]
    Y[:, 1] = X[:, 0]  # each frame rotated by 90 degrees in one plane: orthogonal to itself
    X2 = X.clone()
    X2[:, 2:] = 0
    assert mean_frame_cosine(X2, Y) == pytest.approx(0.0, abs=1e-6)
    c = frame_cosines(np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[1.0, 1.0], [1.0, 1.0]]))
    assert c.tolist() == pytest.approx([1 / math.sqrt(2), 1.0])


# ---- weight distance ------------------------------------------------------------------------------
def test_layer_index_parsing():
    assert layer_index("encoder.layers.3.attention.k_proj.weight") == 3
    assert layer_index("layers.11.fc1.weight") == 11  # Whisper encoder
    assert layer_index("model.encoder.layers.0.fc1.bias") == 0
    assert layer_index("encoder.pos_conv_embed.layers.2.conv.weight") is None  # data2vec positional convs
    assert layer_index("feature_extractor.conv_layers.2.conv.weight") is None
    assert layer_index("encoder.layer_norm.weight") is None


def test_weight_distance_to_itself_is_zero(tiny_encoder_dir):
    d = tiny_encoder_dir("hubert")
    wd = weight_distance(d, d)
    assert wd["family"] == "hubert"
    assert wd["total"]["distance"] == 0.0 and wd["total"]["relative"] == 0.0
    assert wd["total"]["norm0"] > 0
    assert [g["layer"] for g in wd["per_layer"]] == [0, 1]
    assert all(g["distance"] == 0.0 for g in wd["per_layer"])
    assert wd["excluded_tensors"]["frontend"] > 0 and wd["excluded_tensors"]["pretraining_only"] == 1


@pytest.mark.parametrize(
    "family,layer_key,other_key,frontend_key",
    [
        (
            "hubert",
            "encoder.layers.1.attention.k_proj.weight",
            "encoder.layer_norm.weight",
            "feature_extractor.conv_layers.0.conv.weight",
        ),
        ("whisper", "layers.1.fc1.weight", "layer_norm.bias", "conv1.weight"),
    ],
)
def test_weight_distance_of_a_perturbed_copy_is_the_perturbation_norm(
    tmp_path, family, layer_key, other_key, frontend_key
):
    from speechft.encoders import load_encoder, tiny_encoder

    base = tiny_encoder(family, seed=0)
    base.save(tmp_path / "base")
    theta0 = {k: v.clone() for k, v in base.model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    state = base.model.state_dict()
    d_layer = 0.01 * torch.randn(state[layer_key].shape, generator=g)
    d_other = 0.03 * torch.randn(state[other_key].shape, generator=g)
    with torch.no_grad():
        state[layer_key] += d_layer
        state[other_key] += d_other
        state[frontend_key] += 1.0  # the front end is frozen in Speech-FT: not counted
    base.save(tmp_path / "moved")
    expect_total = math.sqrt(float(d_layer.double().square().sum() + d_other.double().square().sum()))
    norm0 = math.sqrt(
        sum(
            float(v.double().square().sum())
            for k, v in theta0.items()
            if not base.is_frontend(k) and not base.is_pretraining_only(k)
        )
    )
    for a, b in (
        ((tmp_path / "base"), (tmp_path / "moved")),
        (theta0, load_encoder(tmp_path / "moved").model.state_dict()),
    ):
        wd = weight_distance(a, b, family)
        # float32 storage of theta: the difference carries float32 rounding of theta0 + delta.
        assert wd["total"]["distance"] == pytest.approx(expect_total, rel=1e-5)
        assert wd["total"]["norm0"] == pytest.approx(norm0, rel=1e-12)
        assert wd["total"]["relative"] == pytest.approx(expect_total / norm0, rel=1e-5)
        per = {g["layer"]: g["distance"] for g in wd["per_layer"]}
        assert per[0] == 0.0
        assert per[1] == pytest.approx(float(d_layer.double().norm()), rel=1e-5)
        assert wd["other"]["distance"] == pytest.approx(float(d_other.double().norm()), rel=1e-5)


def test_weight_distance_refuses_mismatched_or_corrupt_checkpoints(tmp_path, tiny_encoder_dir):
    from speechft.encoders import tiny_encoder

    h = tiny_encoder_dir("hubert")
    with pytest.raises(SpeechFTError, match="same family"):
        weight_distance(h, tiny_encoder_dir("wav2vec2"))
    tiny_encoder("hubert", num_hidden_layers=3).save(tmp_path / "deeper")
    with pytest.raises(SpeechFTError, match="encoder.layers.2"):
        weight_distance(h, tmp_path / "deeper")
    tiny_encoder("hubert", intermediate_size=48).save(tmp_path / "narrow")
    with pytest.raises(SpeechFTError, match="has shape"):
        weight_distance(h, tmp_path / "narrow")
    bad = tiny_encoder("hubert")
    with torch.no_grad():
        bad.model.encoder.layers[0].feed_forward.output_dense.weight[0, 0] = float("nan")
    with pytest.raises(SpeechFTError, match="NaN"):
        weight_distance(h, bad)
    with pytest.raises(ValueError, match="encoder_family"):
        weight_distance({"a": torch.zeros(2)}, {"a": torch.ones(2)})


# ---- analyze --------------------------------------------------------------------------------------
def _copy_dir(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("family", ["hubert", "whisper"])
def test_analyze_end_to_end(tmp_path, cls_task, tiny_encoder_dir, family):
    pre = tiny_encoder_dir(family, seed=0, name="pre")
    same = _copy_dir(pre, tmp_path / "same")
    other = tiny_encoder_dir(family, seed=1, name="other")
    sweep = tmp_path / "sweep.json"
    sweep.write_text(
        json.dumps(
            {
                "metric": "accuracy",
                "results": [
                    {
                        "alpha": a,
                        "target_metric": 0.5 + a / 4,
                        "cka_mean": 1 - a / 2,
                        "cka_per_layer": [1, 1 - a / 3, 1 - a],
                    }
                    for a in (0.0, 0.25, 0.5, 1.0)
                ],
            }
        )
    )
    out = tmp_path / "analysis"
    rep = analyze(pre, [same, other], cls_task, out, split="dev", batch_size=2, sweep=sweep, progress=False)

    files = {p.name for p in out.iterdir()}
    assert {
        "analysis.json",
        "analysis.md",
        "cka_per_layer.png",
        "weight_distance_vs_cka.png",
        "alpha_vs_cka.png",
        "weight_distance_per_layer.png",
        "cosine_per_layer.png",
    } <= files
    for f in files:
        if f.endswith(".png"):
            assert (out / f).read_bytes()[:8] == PNG_MAGIC
    saved = json.loads((out / "analysis.json").read_text())
    assert [m["label"] for m in saved["models"]] == ["same", "other"]
    assert saved["audio"]["utterances"] == 6 and saved["audio"]["split"] == "dev"
    assert saved["audio"]["frames_in_cka"] == saved["audio"]["frames"] > 0

    s, o = rep["models"]
    n_states = rep["pretrained"]["num_layers"] + 1
    assert len(s["cka_per_layer"]) == len(s["cosine_per_layer"]) == n_states
    assert s["cka_per_layer"] == pytest.approx([1.0] * n_states, abs=1e-6)
    assert s["cka_full_per_layer"] == pytest.approx([1.0] * n_states, abs=1e-6)
    assert s["cosine_per_layer"] == pytest.approx([1.0] * n_states, abs=1e-6)
    assert s["weight_distance"]["total"]["distance"] == 0.0
    # A differently initialised encoder: lower similarity, non-zero distance. (A random tiny
    # Whisper's states are dominated by its fixed sinusoidal positions, so its CKA with
    # another random Whisper stays near 1: only "below 1" is asserted there.)
    bound = 0.99 if family == "hubert" else 1 - 1e-5
    assert o["cka_mean"] < bound and o["cosine_mean"] < bound
    assert o["weight_distance"]["total"]["distance"] > 0
    assert "| same | 1.0000 |" in (out / "analysis.md").read_text()


def test_analyze_on_an_audio_manifest_with_labels_and_utterance_limit(tmp_path, cls_task, tiny_encoder_dir):
    pre = tiny_encoder_dir("hubert", seed=0, name="pre")
    other = tiny_encoder_dir("hubert", seed=2, name="other")
    manifest = tmp_path / "audio.tsv"
    rows = (cls_task / "train.tsv").read_text().splitlines()[1:]
    # Only a path column (no durations): they are read from the files' headers.
    manifest.write_text("path\n" + "\n".join(f"cls_task/{r.split(chr(9))[0]}" for r in rows) + "\n")
    assert len(read_audio_list(manifest)) == 12
    rep = analyze(
        pre,
        [other, pre],
        manifest,
        tmp_path / "out",
        labels=["seed 2", "itself"],
        max_utterances=5,
        batch_size=3,
        cka_estimator="full",
        progress=False,
    )
    assert rep["audio"]["utterances"] == 5 and rep["audio"]["minibatches"] == 2
    assert rep["cka"]["estimator"] == "full"
    assert rep["models"][0]["cka_per_layer"] == rep["models"][0]["cka_full_per_layer"]
    assert rep["models"][0]["cka_per_layer"] != rep["models"][0]["cka_minibatch_per_layer"]
    assert [m["label"] for m in rep["models"]] == ["seed 2", "itself"]
    assert rep["models"][1]["cka_mean"] == pytest.approx(1.0, abs=1e-6)
    assert rep["models"][0]["cka_mean"] < 0.99


def test_analyze_refuses_bad_input_before_running(tmp_path, cls_task, tiny_encoder_dir):
    pre = tiny_encoder_dir("hubert", seed=0, name="pre")
    with pytest.raises(SpeechFTError, match="--labels gives 2 names for 1 models"):
        analyze(pre, [pre], cls_task, tmp_path / "a", labels=["x", "y"], progress=False)
    with pytest.raises(SpeechFTError, match="same family"):
        analyze(pre, [tiny_encoder_dir("wavlm")], cls_task, tmp_path / "b", progress=False)
    bad = tmp_path / "bad.tsv"
    bad.write_text("file\tduration\nx.wav\t1.0\n")
    with pytest.raises(SpeechFTError, match=r"missing column\(s\) path"):
        analyze(pre, [pre], bad, tmp_path / "c", progress=False)
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"results": [{"alpha": 0.25}]}))
    with pytest.raises(SpeechFTError, match="cka_mean"):
        analyze(pre, [pre], cls_task, tmp_path / "d", sweep=sweep, progress=False)
    (tmp_path / "exists").mkdir()
    with pytest.raises(SpeechFTError, match="already exists"):
        analyze(pre, [pre], cls_task, tmp_path / "exists", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "d").exists()


def test_cli_analyze(tmp_path, cls_task, tiny_encoder_dir, capsys):
    from speechft.cli import main

    pre = tiny_encoder_dir("hubert", seed=0, name="pre")
    other = tiny_encoder_dir("hubert", seed=1, name="other")
    out = tmp_path / "out"
    rc = main(
        [
            "analyze",
            "--pretrained",
            str(pre),
            "--models",
            str(other),
            "--task",
            str(cls_task),
            "--split",
            "test",
            "--out",
            str(out),
            "--max-utterances",
            "4",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| other |" in printed and f"wrote {out}" in printed
    assert json.loads((out / "analysis.json").read_text())["audio"]["utterances"] == 4
    # Refused: the folder exists now (one-line error, exit 2), and nothing is replaced.
    rc = main(["analyze", "--pretrained", str(pre), "--models", str(other), "--task", str(cls_task), "--out", str(out)])
    assert rc == 2
    assert "already exists" in capsys.readouterr().err


def test_layerwise_cka_is_one_streaming_cka_and_one_mean_cosine_per_state():
    from speechft.cka import LayerwiseCKA

    pairs = [related(120, dx=8, dy=8, seed=s) for s in range(3)]  # three "states" of equal width
    lw = LayerwiseCKA(3, full=True, cosines=True)
    for start in range(0, 120, 40):
        lw.update([x[start : start + 40] for x, _ in pairs], [y[start : start + 40] for _, y in pairs])
    for layer, (x, y) in enumerate(pairs):
        assert lw.values[layer] == pytest.approx(streamed(x, y, 40).value, rel=1e-12)
        assert lw.full_values[layer] == pytest.approx(linear_cka(x, y), rel=1e-9)
        assert lw.mean_cosines[layer] == pytest.approx(mean_frame_cosine(x, y), rel=1e-12)
    assert (lw.minibatches, lw.frames) == (3, 120)


def test_cli_analyze_config_set_and_device(tmp_path, cls_task, tiny_encoder_dir, capsys):
    from speechft.cli import main

    pre = tiny_encoder_dir("hubert", seed=0, name="pre")
    other = tiny_encoder_dir("hubert", seed=1, name="other")
    cfg = tmp_path / "analyze.yaml"
    cfg.write_text("max_utterances: 3\nbatch_size: 3\nsplit: train\n")
    argv = ["analyze", "--pretrained", pre, "--models", other, "--task", cls_task, "--config", cfg, "--quiet"]
    argv += ["--split", "test", "--set", "cka_estimator=full", "--device", "cpu", "--out", tmp_path / "out"]
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert (saved["audio"]["utterances"], saved["audio"]["batch_size"]) == (3, 3)  # from the YAML
    assert saved["audio"]["split"] == "test"  # the flag over the YAML
    assert saved["cka"]["estimator"] == "full"  # --set
    rc = main([str(a) for a in argv[:-2] + ["--out", tmp_path / "out2", "--set", "batch_size=0"]])
    assert rc == 2 and "--batch-size must be at least 1" in capsys.readouterr().err
    if not torch.cuda.is_available():
        rc = main([str(a) for a in argv[:-4] + ["--device", "cuda", "--out", tmp_path / "out3"]])
        assert rc == 2 and "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists() and not (tmp_path / "out3").exists()
