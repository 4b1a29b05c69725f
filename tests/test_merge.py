"""Merging: the methods' arithmetic, what is never merged, streaming I/O, refusals, provenance, CLI."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import weights
from safetensors.torch import save_file

from speechft.encoders import load_encoder
from speechft.errors import SpeechFTError
from speechft.io_utils import sha256_file
from speechft.merge import InterpolationPath, merge_encoders, merge_state_dicts
from speechft.merge_methods import (
    MERGE_METHODS,
    dare_keep_mask,
    disjoint_mean,
    global_top_k_thresholds,
    keep_count,
    trim_top_k,
)
from speechft.safetensors_io import ShardedWriter

# ---------------------------------------------------------------- helpers


def rewrite(folder, sd) -> None:
    save_file(sd, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})


def bits(t: torch.Tensor) -> torch.Tensor:
    """Bit pattern of a float tensor, so equality is bit-exact (-0.0 != 0.0, NaN == NaN)."""
    return t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def assert_bit_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(bits(a), bits(b))


@pytest.fixture
def pair(tiny_encoder_dir, tmp_path):
    """A tiny HuBERT (theta0) and 'fine-tuned' copies: theta0 plus seeded noise on every float tensor
    (the pre-training-only masked_spec_embed too, so keeping theta0's value is visible)."""
    pre = tiny_encoder_dir("hubert", seed=0, name="pre")

    def finetuned(seed: int, scale: float = 0.05, name: str | None = None, dtype=None):
        out = tmp_path / (name or f"ft{seed}")
        enc = load_encoder(pre)
        g = torch.Generator().manual_seed(100 + seed)
        with torch.no_grad():
            for p in enc.model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * scale)
        if dtype is not None:
            enc.model.to(dtype)
        enc.save(out, provenance={"source": f"test fine-tune {seed}", "parents": [str(pre)]})
        return out

    return pre, finetuned


def no_leftovers(out) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], "temp folder left behind"


# ---------------------------------------------------------------- the arithmetic, on encoder folders


def test_alpha_zero_is_theta0_bit_exact(pair, tmp_path):
    pre, ft = pair
    out = merge_encoders(pre, [ft(1)], alpha=0, out=tmp_path / "m")
    got, want = weights(out), weights(pre)
    assert got.keys() == want.keys()
    for k in want:
        assert_bit_equal(got[k], want[k])


def test_alpha_one_is_the_finetuned_model(pair, tmp_path):
    pre, ft = pair
    f1 = ft(1)
    out = merge_encoders(pre, [f1], alpha=1, out=tmp_path / "m")
    got, p0, p1 = weights(out), weights(pre), weights(f1)
    for k in p0:
        # masked_spec_embed is pre-training-only: it keeps theta0's value at any alpha.
        assert_bit_equal(got[k], p0[k] if k == "masked_spec_embed" else p1[k])
    assert not torch.equal(p0["masked_spec_embed"], p1["masked_spec_embed"])


def test_speech_ft_default_alpha_is_a_quarter_of_the_finetuned_model(pair, tmp_path):
    pre, ft = pair
    f1 = ft(1)
    out = merge_encoders(pre, [f1], out=tmp_path / "m")  # linear, alpha 0.25 by default
    got, p0, p1 = weights(out), weights(pre), weights(f1)
    for k in p0:
        if k != "masked_spec_embed":
            torch.testing.assert_close(got[k], 0.75 * p0[k] + 0.25 * p1[k], rtol=1e-6, atol=1e-7)
    assert json.load(open(out / "speechft.json"))["merge"]["params"] == {"alpha": 0.25}


def test_n_model_average(pair, tmp_path):
    pre, ft = pair
    fts = [ft(s) for s in (1, 2, 3)]
    out = merge_encoders(pre, fts, alpha=0.5, out=tmp_path / "m")
    got, p0 = weights(out), weights(pre)
    ps = [weights(f) for f in fts]
    k = "encoder.layers.0.attention.q_proj.weight"
    want = p0[k] + 0.5 * sum(p[k] - p0[k] for p in ps) / 3
    torch.testing.assert_close(got[k], want, rtol=1e-6, atol=1e-7)


def test_half_precision_is_merged_in_fp32_and_saved_as_fp16(pair, tmp_path):
    pre, ft = pair
    pre16 = ft(0, scale=0.0, name="pre16", dtype=torch.float16)
    ft16 = ft(1, name="ft16", dtype=torch.float16)
    out = merge_encoders(pre16, [ft16], alpha=0.25, out=tmp_path / "m")
    got, p0, p1 = weights(out), weights(pre16), weights(ft16)
    k = "encoder.layers.1.feed_forward.output_dense.weight"
    assert got[k].dtype == torch.float16
    assert torch.equal(got[k], torch.lerp(p0[k].float(), p1[k].float(), 0.25).half())


# ---------------------------------------------------------------- the arithmetic, hand-computed, in memory


def sd(*values, key="w"):
    return {key: torch.tensor(values, dtype=torch.float32)}


def test_task_arithmetic_hand_computed():
    theta0, t1, t2 = sd(1, 2, 3), sd(2, 2, 2), sd(0, 4, 3)
    # task vectors [1, 0, -1] and [-1, 2, 0]; sum [0, 2, -1]; alpha (lambda) 0.5
    out = merge_state_dicts(theta0, [t1, t2], method="task-arithmetic", alpha=0.5)
    torch.testing.assert_close(out["w"], torch.tensor([1.0, 3.0, 2.5]))
    assert torch.equal(
        merge_state_dicts(theta0, [t1, t2], method="task-arithmetic", **{"lambda": 1})["w"],
        torch.tensor([1.0, 4.0, 2.0]),
    )


def test_ties_hand_computed():
    theta0 = sd(10, 10, 10, 10, 10)
    t1 = sd(13, 9, 10.5, 8, 10.1)  # task vector [3, -1, .5, -2, .1] -> top 60%: [3, -1, 0, -2, 0]
    t2 = sd(9, 7, 10.2, 11, 10.4)  # task vector [-1, -3, .2, 1, .4] -> top 60%: [-1, -3, 0, 1, 0]
    # summed [2, -4, 0, -1, 0] elects [+, -, +, -, +]; agreeing entries averaged: [3, -2, 0, -2, 0]
    out = merge_state_dicts(theta0, [t1, t2], method="ties", k=60, alpha=1)
    torch.testing.assert_close(out["w"], torch.tensor([13.0, 8.0, 10.0, 8.0, 10.0]))
    out = merge_state_dicts(theta0, [t1, t2], method="ties", k=60, alpha=0.5)
    torch.testing.assert_close(out["w"], torch.tensor([11.5, 9.0, 10.0, 9.0, 10.0]))
    # k = 100 trims nothing
    torch.testing.assert_close(trim_top_k(torch.tensor([3.0, -1.0, 0.5]), 100), torch.tensor([3.0, -1.0, 0.5]))
    torch.testing.assert_close(
        disjoint_mean([torch.tensor([1.0, -2.0]), torch.tensor([3.0, 1.0])]), torch.tensor([2.0, -2.0])
    )


# TIES' two trims, hand-computed on two tensors of different scales. Tensor `a` is small in model
# 1's task vector and large in model 2's, tensor `b` the other way round. Each task vector has 64
# entries (two tensors of 32, 4 non-zero each); k = 6.25 % keeps 4 of them per task vector (global)
# or 2 per tensor. Globally model 1 keeps all of b (its 4 largest: 4, 3, 2, 1; threshold 1.0) and
# nothing of a, model 2 all of a (threshold 0.625) and nothing of b; per tensor each keeps its 2
# largest in each tensor. Sign election and disjoint mean of those trimmed vectors, by hand:
#   global  a: model 2 alone [.625, .75, -.875, 1]     b: model 1 alone [4, -3, 2, -1]
#   tensor  a: sums [0, 0, -.5, .5] elect [+, +, -, +], only model 2 agrees: [0, 0, -.875, 1]
#           b: [4, -3, 0, 0] and [0, 0, .375, -.5] never overlap: [4, -3, .375, -.5]
TIES_K = 6.25
TIES_THETA0 = {"a": 1.0, "b": 10.0}
TIES_DELTAS = [
    {"a": [0.125, -0.25, 0.375, -0.5], "b": [4.0, -3.0, 2.0, -1.0]},
    {"a": [0.625, 0.75, -0.875, 1.0], "b": [0.125, 0.25, 0.375, -0.5]},
]
TIES_MERGED_DELTA = {
    "global": {"a": [0.625, 0.75, -0.875, 1.0], "b": [4.0, -3.0, 2.0, -1.0]},
    "tensor": {"a": [0.0, 0.0, -0.875, 1.0], "b": [4.0, -3.0, 0.375, -0.5]},
}


def example_tensor(base: float, head: list[float]) -> torch.Tensor:
    """A 32-wide tensor: `base` everywhere, plus `head` on its first entries (all exact in fp32)."""
    return torch.full((32,), base) + torch.tensor(head + [0.0] * (32 - len(head)))


def ties_example() -> tuple[dict, list[dict]]:
    theta0 = {k: example_tensor(v, []) for k, v in TIES_THETA0.items()}
    return theta0, [{k: example_tensor(TIES_THETA0[k], d[k]) for k in d} for d in TIES_DELTAS]


def ties_want(scope: str, alpha: float = 1.0) -> dict[str, torch.Tensor]:
    return {k: example_tensor(v, [alpha * x for x in TIES_MERGED_DELTA[scope][k]]) for k, v in TIES_THETA0.items()}


@pytest.mark.parametrize("scope", ["global", "tensor"])
def test_ties_global_and_per_tensor_trims_hand_computed(scope):
    theta0, thetas = ties_example()
    assert keep_count(64, TIES_K) == 4 and keep_count(32, TIES_K) == 2
    path = InterpolationPath(theta0, thetas, method="ties", k=TIES_K, scope=scope)
    assert path.statistics == ({"thresholds": [1.0, 0.625]} if scope == "global" else {})
    for alpha in (1.0, 0.5):
        got = path.at(alpha)
        for k, want in ties_want(scope, alpha).items():
            assert torch.equal(got[k], want), (scope, alpha, k, got[k][:4])
    other = {"global": "tensor", "tensor": "global"}[scope]
    assert not torch.equal(ties_want(scope)["b"], ties_want(other)["b"])  # the example tells them apart


def test_ties_default_scope_is_the_papers_global_trim():
    theta0, thetas = ties_example()
    assert MERGE_METHODS["ties"].resolve({})["scope"] == "global"
    got = merge_state_dicts(theta0, thetas, method="ties", k=TIES_K)
    assert all(torch.equal(got[k], want) for k, want in ties_want("global").items())


def test_ties_global_scope_on_one_tensor_is_the_per_tensor_trim():
    # One rule for the threshold: over a single tensor both scopes keep the same entries, bit for bit.
    g = torch.Generator().manual_seed(3)
    theta0 = {"w": torch.randn(40, 7, generator=g)}
    thetas = [{"w": theta0["w"] + torch.randn(40, 7, generator=g) * s} for s in (0.1, 1.0, 3.0)]
    for k in (1, 13.5, 50, 99.9, 100):
        a = merge_state_dicts(theta0, thetas, method="ties", k=k, scope="global")["w"]
        b = merge_state_dicts(theta0, thetas, method="ties", k=k, scope="tensor")["w"]
        assert_bit_equal(a, b)


def test_global_threshold_is_the_exact_kth_largest_magnitude_of_the_whole_task_vector():
    g = torch.Generator().manual_seed(4)
    # Scales from 1e-30 to 1e3, a block of exact ties, zeros, -0.0, a tensor with no entries.
    tensors = [torch.randn(50, generator=g) * 1e-30, torch.randn(7, 9, generator=g) * 1e3, torch.zeros(0)]
    tensors += [torch.tensor([0.5, -0.5, 0.5, 0.0, -0.0, 0.5]), torch.randn(300, generator=g)]
    models = [[t * (i + 1) for t in tensors] for i in range(2)]
    mags = [torch.cat([t.abs().reshape(-1) for t in m]) for m in models]
    n = mags[0].numel()
    walks = []

    def task_vectors():
        walks.append(1)
        return zip(*models)

    for k in (0.1, 1, 5, 33.3, 50, 90, 99.6):  # 99.6: the threshold falls on the zeros
        walks.clear()
        got = global_top_k_thresholds(lambda: (list(ds) for ds in task_vectors()), k)
        keep = keep_count(n, k)
        assert got == [m.kthvalue(n - keep + 1).values.item() for m in mags], k
        assert len(walks) == 2  # one histogram walk, one refining walk: the files are read twice
    walks.clear()
    assert global_top_k_thresholds(lambda: (list(ds) for ds in task_vectors()), 100) == [0.0, 0.0]
    assert len(walks) == 1  # nothing trimmed: no refining walk
    # Ties at the threshold are all kept (here 4 entries of magnitude 0.5 where 3 would do).
    tau = global_top_k_thresholds(lambda: iter([[torch.tensor([0.5, -0.5, 0.5, 0.5, 0.1, 0.0])]]), 50)
    assert tau == [0.5]


def test_ties_tensor_scope_measures_nothing():
    def forbidden():
        raise AssertionError("per-tensor TIES walked the task vectors")

    ties = MERGE_METHODS["ties"]
    assert ties.prepare(ties.resolve({"scope": "tensor"}), forbidden) == {}
    for name in ("linear", "task-arithmetic", "dare"):
        assert MERGE_METHODS[name].prepare(MERGE_METHODS[name].resolve({}), forbidden) == {}


def test_dare_hand_computed_from_its_masks():
    g = torch.Generator().manual_seed(0)
    theta0 = {"w": torch.randn(4, 6, generator=g)}
    thetas = [{"w": theta0["w"] + torch.randn(4, 6, generator=g)} for _ in range(2)]
    p, seed = 0.5, 7
    masks = [dare_keep_mask(seed, "w", i, (4, 6), p) for i in range(2)]
    deltas = [(t["w"] - theta0["w"]) * m / (1 - p) for t, m in zip(thetas, masks)]
    out = merge_state_dicts(theta0, thetas, method="dare", p=p, seed=seed)  # combine linear, alpha 0.25
    torch.testing.assert_close(out["w"], theta0["w"] + 0.25 * (deltas[0] + deltas[1]) / 2, rtol=1e-6, atol=1e-6)
    out = merge_state_dicts(theta0, thetas, method="dare", p=p, seed=seed, combine="ties")  # alpha 1.0
    torch.testing.assert_close(out["w"], theta0["w"] + disjoint_mean(deltas), rtol=1e-6, atol=1e-6)
    # p = 0 drops nothing: DARE-linear is the linear merge
    torch.testing.assert_close(
        merge_state_dicts(theta0, thetas, method="dare", p=0)["w"],
        merge_state_dicts(theta0, thetas, method="linear")["w"],
    )


def test_dare_masks_are_seeded_and_drop_at_rate_p():
    m = dare_keep_mask(3, "layer.weight", 0, (100, 100), 0.3)
    assert torch.equal(m, dare_keep_mask(3, "layer.weight", 0, (100, 100), 0.3))
    assert not torch.equal(m, dare_keep_mask(4, "layer.weight", 0, (100, 100), 0.3))
    assert not torch.equal(m, dare_keep_mask(3, "layer.weight", 1, (100, 100), 0.3))
    assert abs(m.float().mean().item() - 0.7) < 0.02  # 10k draws: std 0.0046


def test_dare_from_files_equals_dare_in_memory(pair, tmp_path):
    pre, ft = pair
    fts = [ft(1), ft(2)]
    out = merge_encoders(pre, fts, method="dare", p=0.4, seed=5, out=tmp_path / "m", max_shard_size=30_000)
    mem = merge_state_dicts(weights(pre), [weights(f) for f in fts], method="dare", family="hubert", p=0.4, seed=5)
    got = weights(out)
    for k in mem:
        assert_bit_equal(got[k], mem[k])


def test_interpolation_path_matches_direct_merges():
    g = torch.Generator().manual_seed(1)
    theta0 = {"a": torch.randn(5, 3, generator=g), "n": torch.tensor([3, 4])}
    thetas = [{"a": theta0["a"] + torch.randn(5, 3, generator=g), "n": torch.tensor([9, 9])} for _ in range(2)]
    path = InterpolationPath(theta0, thetas, method="ties", k=50)
    for alpha in (0.0, 0.3, 1.0):
        direct = merge_state_dicts(theta0, thetas, method="ties", k=50, alpha=alpha)
        got = path.at(alpha)
        torch.testing.assert_close(got["a"], direct["a"], rtol=1e-6, atol=1e-6)
        assert torch.equal(got["n"], theta0["n"])
    assert_bit_equal(path.at(0.0)["a"], theta0["a"])


# ---------------------------------------------------------------- what is never merged


def test_integer_excluded_and_pretraining_only_tensors_keep_theta0():
    g = torch.Generator().manual_seed(2)
    theta0 = {
        "final_proj.weight": torch.randn(3, 3, generator=g),
        "encoder.norm.weight": torch.randn(3, generator=g),
        "encoder.lin.weight": torch.randn(3, 3, generator=g),
        "bn.num_batches_tracked": torch.tensor(5),
        "flags": torch.tensor([True, False]),
    }
    ft = {k: (v + 1 if v.is_floating_point() else (v + 7 if v.dtype != torch.bool else ~v)) for k, v in theta0.items()}
    out = merge_state_dicts(theta0, [ft], family="hubert", exclude=[r"norm\."], alpha=1)
    for k in ("final_proj.weight", "encoder.norm.weight", "bn.num_batches_tracked", "flags"):
        assert torch.equal(out[k], theta0[k]), k
    assert torch.equal(out["encoder.lin.weight"], ft["encoder.lin.weight"])


def test_files_keep_integer_excluded_and_pretraining_only_tensors(pair, tmp_path):
    pre, ft = pair
    f1 = ft(1)
    for folder, value in ((pre, 3), (f1, 11)):  # an integer buffer that differs between the two
        w = weights(folder)
        w["encoder.counter"] = torch.tensor([value, value], dtype=torch.int64)
        rewrite(folder, w)
    out = merge_encoders(pre, [f1], alpha=1, out=tmp_path / "m", exclude=[r"^encoder\.layers\.1\."])
    got, p0, p1 = weights(out), weights(pre), weights(f1)
    assert got["encoder.counter"].tolist() == [3, 3]
    assert torch.equal(got["masked_spec_embed"], p0["masked_spec_embed"])
    assert torch.equal(got["encoder.layers.1.attention.q_proj.weight"], p0["encoder.layers.1.attention.q_proj.weight"])
    assert torch.equal(got["encoder.layers.0.attention.q_proj.weight"], p1["encoder.layers.0.attention.q_proj.weight"])
    copied = json.load(open(out / "speechft.json"))["merge"]["copied_tensors"]
    assert copied["integer"] == ["encoder.counter"] and copied["pretraining-only"] == ["masked_spec_embed"]
    assert all(k.startswith("encoder.layers.1.") for k in copied["excluded"]) and len(copied["excluded"]) > 5


# ---------------------------------------------------------------- refusals write nothing


def _nan_in(folder):
    w = weights(folder)
    w["encoder.layers.1.attention.v_proj.weight"][0, 0] = float("nan")
    rewrite(folder, w)


def _prefixed(folder):
    rewrite(folder, {f"module.{k}": v for k, v in weights(folder).items()})


def _reshaped(folder):
    w = weights(folder)
    w["encoder.layers.0.attention.q_proj.bias"] = torch.zeros(33)
    rewrite(folder, w)


def _truncated(folder):
    path = os.path.join(folder, "model.safetensors")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) - 100])


@pytest.mark.parametrize(
    "damage, message",
    [
        (_nan_in, "'encoder.layers.1.attention.v_proj.weight' contains NaN"),
        (_prefixed, "extra prefix 'module.'"),
        (_reshaped, "/model.safetensors: tensor 'encoder.layers.0.attention.q_proj.bias' has shape [33]"),
        (_truncated, "truncated"),
    ],
)
def test_damaged_finetuned_checkpoint_is_refused_and_nothing_written(pair, tmp_path, damage, message):
    pre, ft = pair
    f1 = ft(1)
    damage(f1)
    out = tmp_path / "m"
    with pytest.raises(SpeechFTError, match="^" + str(f1).replace("\\", "\\\\") + ".*" + _re(message)):
        merge_encoders(pre, [f1], out=out)
    no_leftovers(out)


def _re(s):
    import re

    return re.escape(s)


def test_nan_in_theta0_and_failed_overwrite_keep_the_old_output(pair, tmp_path):
    pre, ft = pair
    f1 = ft(1)
    out = merge_encoders(pre, [f1], out=tmp_path / "m")
    before = sha256_file(out / "model.safetensors")
    _nan_in(pre)
    with pytest.raises(SpeechFTError, match=r"pre/model.safetensors: tensor 'encoder.layers.1.attention.v_proj"):
        merge_encoders(pre, [f1], out=out, overwrite=True)
    assert sha256_file(out / "model.safetensors") == before
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".m.")]


def test_other_family_other_config_and_prefix_lacking_are_refused(pair, tiny_encoder_dir, tmp_path):
    from speechft.encoders import tiny_encoder

    pre, ft = pair
    out = tmp_path / "m"
    w2v = tiny_encoder_dir("wav2vec2", seed=1)
    with pytest.raises(SpeechFTError, match="is a wav2vec2 encoder but .* is hubert"):
        merge_encoders(pre, [w2v], out=out)
    wide = tiny_encoder("hubert", seed=1, intermediate_size=80).save(tmp_path / "wide")
    with pytest.raises(SpeechFTError, match=r"config.json differs .*intermediate_size 80 vs 64"):
        merge_encoders(pre, [wide], out=out)
    f1 = ft(1)
    rewrite(f1, {k.removeprefix("encoder."): v for k, v in weights(f1).items()})
    with pytest.raises(SpeechFTError, match="lack the prefix 'encoder.'"):
        merge_encoders(pre, [f1], out=out)
    no_leftovers(out)


@pytest.mark.parametrize(
    "method, params, message",
    [
        ("linear", {"alpha": "abc"}, "alpha='abc' for method 'linear' must be a number"),
        ("linear", {"alpha": float("nan")}, "must be a finite number"),
        ("dare", {"p": 1.0}, "p=1.0 for method 'dare' must be in [0, 1)"),
        ("dare", {"p": -0.1}, "must be in [0, 1)"),
        ("dare", {"combine": "mean"}, "must be one of linear, ties"),
        ("ties", {"k": 0}, "k=0 for method 'ties' must be in (0, 100]"),
        ("ties", {"k": 101}, "must be in (0, 100]"),
        ("ties", {"density": 0.2}, "has no parameter 'density'; its parameters: k, alpha"),
        ("ties", {"scope": "layer"}, "scope='layer' for method 'ties' must be one of global, tensor"),
        ("slerp", {}, "unknown merge method 'slerp'"),
    ],
)
def test_nonsense_parameters_are_refused_before_reading(pair, tmp_path, method, params, message):
    pre, ft = pair
    out = tmp_path / "m"
    with pytest.raises(SpeechFTError, match=_re(message)) as e:
        merge_encoders(pre, [ft(1)], method=method, out=out, **params)
    assert "\n" not in str(e.value)
    no_leftovers(out)


def test_existing_output_and_output_equal_to_input_are_refused(pair, tmp_path):
    pre, ft = pair
    f1 = ft(1)
    (tmp_path / "m").mkdir()
    with pytest.raises(SpeechFTError, match="already exists"):
        merge_encoders(pre, [f1], out=tmp_path / "m")
    with pytest.raises(SpeechFTError, match="is the input --finetuned"):
        merge_encoders(pre, [f1], out=f1, overwrite=True)
    assert load_encoder(f1)  # untouched


# ---------------------------------------------------------------- I/O: shards, hashes, loading, provenance


def test_sharded_output_loads_everywhere_and_equals_single_file(pair, tmp_path):
    from transformers import HubertModel

    pre, ft = pair
    fts = [ft(1), ft(2)]
    single = merge_encoders(pre, fts, out=tmp_path / "single")
    sharded = merge_encoders(pre, fts, out=tmp_path / "sharded", max_shard_size="40kB")
    index = json.load(open(sharded / "model.safetensors.index.json"))
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 3 and not (sharded / "model.safetensors").exists()
    a, b = weights(single), weights(sharded)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    prov = json.load(open(sharded / "speechft.json"))
    assert prov["weights_sha256"] == {f: sha256_file(sharded / f) for f in files}
    hf = HubertModel.from_pretrained(sharded)
    assert all(torch.equal(v, b[k]) for k, v in hf.state_dict().items())
    # a sharded folder is a valid theta0 for the next round
    again = merge_encoders(sharded, [fts[0]], alpha=0, out=tmp_path / "again")
    assert all(torch.equal(v, b[k]) for k, v in weights(again).items())


def test_merged_folder_loads_and_runs(pair, tmp_path):
    pre, ft = pair
    out = merge_encoders(pre, [ft(1)], out=tmp_path / "m")
    enc = load_encoder(out)
    wavs = torch.randn(2, 8000) * 0.1
    with torch.no_grad():
        states = enc(wavs, torch.tensor([8000, 6000])).hidden_states
    assert len(states) == enc.num_layers + 1 and all(torch.isfinite(s).all() for s in states)
    assert (out / "config.json").read_bytes() == (pre / "config.json").read_bytes()


@pytest.mark.parametrize("family", ["hubert", "wav2vec2", "wavlm", "data2vec", "whisper"])
def test_every_family_merges_into_a_loadable_encoder(tiny_encoder_dir, tmp_path, family):
    pre, f1 = tiny_encoder_dir(family, seed=0), tiny_encoder_dir(family, seed=1)
    out = merge_encoders(pre, f1, alpha=0.5, out=tmp_path / "m")
    merged, a, b = (load_encoder(p).model.state_dict() for p in (out, pre, f1))
    for k, v in merged.items():
        kind = "copied" if k == "masked_spec_embed" else "merged"
        want = a[k] if kind == "copied" else torch.lerp(a[k], b[k], 0.5)
        torch.testing.assert_close(v, want, rtol=1e-6, atol=1e-7, msg=f"{family} {kind} {k}")


def test_decoar_remote_code_is_copied_so_the_merge_loads(tiny_encoder_dir, tmp_path):
    pre, f1 = tiny_encoder_dir("decoar2", seed=0), tiny_encoder_dir("decoar2", seed=1)
    out = merge_encoders(pre, [f1], out=tmp_path / "m")
    assert (out / "decoar2_hf.py").read_bytes() == (pre / "decoar2_hf.py").read_bytes()
    assert load_encoder(out).family == "decoar2"


@pytest.mark.parametrize("method", ["linear", "ties"])  # ties: its walks read the files first
def test_input_hashes_are_right_even_when_read_out_of_order(pair, tmp_path, method):
    pre, ft = pair
    f1 = ft(1)
    # Rewrite the fine-tuned file in reverse order: the single-pass hash must fall back.
    w = weights(f1)
    spec = {k: (v.dtype, tuple(v.shape)) for k, v in w.items()}
    os.remove(f1 / "model.safetensors")
    writer = ShardedWriter(f1, spec, sorted(w, reverse=True))
    for k in sorted(w, reverse=True):
        writer.write(k, w[k])
    writer.close()
    assert load_encoder(f1)  # our writer's files load with transformers
    out = merge_encoders(pre, [f1], method=method, out=tmp_path / "m")
    merge = json.load(open(out / "speechft.json"))["merge"]
    assert merge["pretrained"]["weights_sha256"] == {"model.safetensors": sha256_file(pre / "model.safetensors")}
    assert merge["finetuned"][0]["weights_sha256"] == {"model.safetensors": sha256_file(f1 / "model.safetensors")}


def test_sequential_speech_ft_records_the_chain(pair, tmp_path):
    pre, ft = pair
    f1, f2 = ft(1), ft(2)
    round1 = merge_encoders(pre, [f1], out=tmp_path / "r1")
    round2 = merge_encoders(round1, [f2], method="ties", k=50, out=tmp_path / "r2")
    prov = json.load(open(round2 / "speechft.json"))
    assert prov["merge"]["round"] == 2 and prov["family"] == "hubert"
    assert [s["method"] for s in prov["merge_chain"]] == ["linear", "ties"]
    assert prov["merge_chain"][0]["pretrained"]["path"] == str(pre.resolve())
    assert prov["parents"][0]["role"] == "pretrained" and prov["parents"][0]["path"] == str(round1.resolve())
    r1_sha = json.load(open(round1 / "speechft.json"))["weights_sha256"]
    assert prov["parents"][0]["weights_sha256"] == r1_sha
    assert prov["merge"]["params"] == {"k": 50.0, "alpha": 1.0, "scope": "global"}


# ---------------------------------------------------------------- CLI


def test_cli_end_to_end(pair, tmp_path, capsys):
    from speechft.cli import main

    pre, ft = pair
    f1, f2 = ft(1), ft(2)
    out = tmp_path / "m"
    rc = main(
        [
            "merge",
            "--pretrained",
            str(pre),
            "--finetuned",
            str(f1),
            str(f2),
            "--method",
            "dare",
            "--alpha",
            "0.5",
            "--param",
            "p=0.2",
            "combine=ties",
            "--exclude",
            "layer_norm",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "copied from theta0" in printed
    merge = json.load(open(out / "speechft.json"))["merge"]
    assert merge["params"] == {"p": 0.2, "combine": "ties", "seed": 0, "alpha": 0.5}
    assert merge["exclude"] == ["layer_norm"] and merge["copied_tensors"]["excluded"]
    rc = main(
        [
            "merge",
            "--pretrained",
            str(pre),
            "--finetuned",
            str(f1),
            "--param",
            "p=2",
            "--method",
            "dare",
            "--out",
            str(tmp_path / "bad"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "p='2' for method 'dare' must be in [0, 1)" in err
    no_leftovers(tmp_path / "bad")


def test_every_method_declares_a_reference_and_valid_defaults():
    for m in MERGE_METHODS.values():
        assert "arXiv" in m.reference
        params = m.resolve({})
        assert "alpha" in params and params == m.resolve(params)


def test_interpolation_path_from_folders_equals_the_streamed_merge(pair, tmp_path):
    pre, ft = pair
    fts = [ft(1), ft(2)]
    path = InterpolationPath.from_folders(pre, fts, method="ties", k=30)
    for alpha in (0.25, 0.6):
        out = merge_encoders(pre, fts, method="ties", k=30, alpha=alpha, out=tmp_path / f"m{alpha}")
        got, mem = weights(out), path.at(alpha)
        assert got.keys() == mem.keys() and all(torch.equal(got[k], mem[k]) for k in got)
    _nan_in(fts[1])
    with pytest.raises(SpeechFTError, match=_re(f"{fts[1]}/model.safetensors: tensor 'encoder.layers.1.")):
        InterpolationPath.from_folders(pre, fts)


@pytest.mark.parametrize("scope", ["global", "tensor"])
def test_ties_scopes_through_files_equal_the_hand_computed_merge(pair, tmp_path, scope):
    pre, ft = pair
    # Only the two example tensors merge (every other name excluded), so the task vectors are the example's.
    keys = {"a": "encoder.layers.0.attention.q_proj.bias", "b": "encoder.layers.1.feed_forward.output_dense.bias"}
    theta0, thetas = ties_example()
    folders = [pre] + [ft(i) for i in (1, 2)]
    for folder, sd_ in zip(folders, [theta0, *thetas]):
        w = weights(folder)
        w.update({keys[k]: v for k, v in sd_.items()})
        rewrite(folder, w)
    only = [r"^(?!(" + "|".join(v.replace(".", r"\.") for v in keys.values()) + r")$)"]
    out = merge_encoders(pre, folders[1:], method="ties", k=TIES_K, scope=scope, exclude=only, out=tmp_path / "m")
    got, want = weights(out), ties_want(scope)
    for k, key in keys.items():
        assert torch.equal(got[key], want[k]), (k, got[key][:4])
    mem = InterpolationPath.from_folders(pre, folders[1:], method="ties", k=TIES_K, scope=scope, exclude=only).at()
    assert got.keys() == mem.keys() and all(torch.equal(got[k], mem[k]) for k in got)
    merge = json.load(open(out / "speechft.json"))["merge"]
    assert merge["params"] == {"k": TIES_K, "alpha": 1.0, "scope": scope} and merge["merged_tensors"] == 2
    assert merge.get("statistics") == ({"thresholds": [1.0, 0.625]} if scope == "global" else None)
    # the walks over the files leave the inputs' hashes right
    for entry, folder in zip([merge["pretrained"], *merge["finetuned"]], folders):
        assert entry["weights_sha256"] == {"model.safetensors": sha256_file(folder / "model.safetensors")}


def test_global_ties_refuses_a_nan_after_its_walks_and_writes_nothing(pair, tmp_path):
    pre, ft = pair
    f1 = ft(1)
    _nan_in(f1)
    out = tmp_path / "m"
    with pytest.raises(SpeechFTError, match=_re("'encoder.layers.1.attention.v_proj.weight' contains NaN")):
        merge_encoders(pre, [f1, ft(2)], method="ties", out=out)
    no_leftovers(out)


def test_result_that_overflows_half_precision_is_refused():
    theta0 = {"w": torch.tensor([60000.0, 1.0], dtype=torch.float16)}
    ft = {"w": torch.tensor([65000.0, 2.0], dtype=torch.float16)}
    # within range: fine
    assert merge_state_dicts(theta0, [ft], method="task-arithmetic", alpha=0.5)["w"][1].item() == 1.5
    with pytest.raises(SpeechFTError, match="merged tensor 'w' overflows float16 with alpha=2"):
        merge_state_dicts(theta0, [ft], method="task-arithmetic", alpha=2)


def test_cli_config_file_flags_and_set_layer_in_order(pair, tmp_path):
    from speechft.cli import main

    pre, ft = pair
    f1 = ft(1)
    cfg = tmp_path / "merge.yaml"
    cfg.write_text("method: ties\nalpha: 0.8\nparams:\n  k: 50\nexclude: [layer_norm]\n")
    out = tmp_path / "m"
    argv = ["merge", "--pretrained", str(pre), "--finetuned", str(f1), "--out", str(out), "--config", str(cfg)]
    # the YAML's alpha loses to --alpha, which loses to --set; --param adds to the YAML's params
    argv += [
        "--alpha",
        "0.5",
        "--set",
        "alpha=0.6",
        "max_shard_size=40kB",
        "--param",
        "k=30",
        "scope=tensor",
        "--quiet",
    ]
    assert main(argv) == 0
    merge = json.load(open(out / "speechft.json"))["merge"]
    assert merge["method"] == "ties" and merge["params"] == {"k": 30.0, "alpha": 0.6, "scope": "tensor"}
    assert merge["exclude"] == ["layer_norm"] and merge["copied_tensors"]["excluded"]
    assert (out / "model.safetensors.index.json").exists()  # max_shard_size from --set took effect
    want = merge_state_dicts(
        weights(pre),
        [weights(f1)],
        method="ties",
        family="hubert",
        exclude=["layer_norm"],
        k=30,
        alpha=0.6,
        scope="tensor",
    )
    got = weights(out)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_merge_into_a_finetuned_theta0_records_the_merge_not_the_finetune(tiny_encoder_dir, cls_task, tmp_path):
    from speechft.config import load_config
    from speechft.provenance import PARENT_ONLY_KEYS
    from speechft.train import TrainConfig, finetune

    pre = tiny_encoder_dir("hubert")
    cfg = load_config(TrainConfig, None, ["steps=2", "eval.every=2", "data.batch_size=4", "head.proj_dim=8"])
    tuned = finetune(pre, [cls_task], tmp_path / "tuned", method="regular", config=cfg, progress=False)
    tuned_prov = json.load(open(tuned / "speechft.json"))
    assert tuned_prov["method"] == "regular" and {"steps", "dev_score", "config"} <= set(tuned_prov)
    out = merge_encoders(tuned, [tiny_encoder_dir("hubert", 1)], out=tmp_path / "m")
    prov = json.load(open(out / "speechft.json"))
    assert prov["merge"]["method"] == "linear" and prov["source"].startswith("speechft merge linear")
    # none of theta0's bookkeeping: the merged folder is a merge, not a fine-tune with theta0's dev score
    own = {"format", "family", "source", "parents", "weights_sha256", "created", "merge", "merge_chain"}
    assert set(prov) & PARENT_ONLY_KEYS == own
    assert prov["parents"][0]["source"] == "speechft finetune"
    assert prov["parents"][0]["weights_sha256"] == tuned_prov["weights_sha256"]


def test_merge_and_doctor_weight_checks_never_import_transformers(pair, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    pre, ft = pair
    f1, out = ft(1), tmp_path / "m"
    code = (
        "import sys\n"
        "from speechft.cli import main\n"
        f"rc = main(['merge', '--pretrained', {str(pre)!r}, '--finetuned', {str(f1)!r}, '--out', {str(out)!r}])\n"
        f"rc += main(['doctor', '--no-forward', {str(out)!r}])\n"
        "assert rc == 0, rc\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'safetensors'))\n"
        "assert not heavy, heavy[:5]\n"
    )
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "doctor: 0 error(s)" in r.stdout and (out / "model.safetensors").exists()


# ---------------------------------------------------------------- issue 18: merges that are silently wrong


def test_fine_tune_of_another_encoder_is_refused_by_merge_sweep_and_analyze(tiny_encoder_dir, cls_task, tmp_path):
    from speechft.analysis import analyze
    from speechft.config import load_config
    from speechft.sweep import sweep
    from speechft.train import TrainConfig, finetune

    pre_a, pre_b = tiny_encoder_dir("hubert", 0, name="pre_a"), tiny_encoder_dir("hubert", 7, name="pre_b")
    cfg = load_config(TrainConfig, None, ["steps=2", "eval.every=2", "data.batch_size=4", "head.proj_dim=8"])
    tuned = finetune(pre_a, [cls_task], tmp_path / "tuned", method="regular", config=cfg, progress=False)
    out = tmp_path / "m"
    with pytest.raises(SpeechFTError, match=r"tuned was fine-tuned from .*pre_a.*pre_b.*--allow-foreign-parent"):
        merge_encoders(pre_b, [tuned], out=out)
    no_leftovers(out)
    with pytest.raises(SpeechFTError, match=r"tuned was fine-tuned from .*pre_a"):
        sweep(pre_b, tuned, cls_task, tmp_path / "s", alphas=[0, 1], device="cpu", progress=False)
    assert not (tmp_path / "s").exists()
    with pytest.raises(SpeechFTError, match=r"tuned was fine-tuned from .*pre_a"):
        analyze(pre_b, [tuned], cls_task, tmp_path / "a", device="cpu", progress=False)
    assert not (tmp_path / "a").exists()
    # its own parent merges; the deliberate case is allowed and recorded
    merge_encoders(pre_a, [tuned], out=tmp_path / "own")
    assert "foreign_parents" not in json.load(open(tmp_path / "own" / "speechft.json"))["merge"]
    merge_encoders(pre_b, [tuned], out=out, allow_foreign_parent=True)
    assert json.load(open(out / "speechft.json"))["merge"]["foreign_parents"] == [str(tuned.resolve())]


def test_a_lying_theta0_record_is_caught_by_the_streamed_hash(pair, tmp_path):
    from speechft.provenance import folder_sha256, lineage_entry

    pre, _ = pair
    other = tmp_path / "other"
    enc = load_encoder(pre)
    with torch.no_grad():
        next(enc.model.parameters()).add_(1.0)
    enc.save(other)
    ft = tmp_path / "ft"
    parent = lineage_entry("pretrained", other, "hubert", {}, folder_sha256(other))
    load_encoder(other).save(ft, provenance={"parents": [parent]})
    # `pre` claims to be `other`: the cheap pre-check passes, the hash streamed during the merge refuses
    prov = json.load(open(pre / "speechft.json"))
    json.dump({**prov, "weights_sha256": folder_sha256(other)}, open(pre / "speechft.json", "w"))
    with pytest.raises(SpeechFTError, match="fine-tuned from .*other"):
        merge_encoders(pre, [ft], out=tmp_path / "m")
    no_leftovers(tmp_path / "m")


def test_finetuned_folder_without_a_recorded_parent_merges_with_a_note(pair, tmp_path, capsys):
    pre, ft = pair
    merge_encoders(pre, [ft(1)], out=tmp_path / "m")
    assert "ft1 records no pre-trained parent" in capsys.readouterr().err


def test_alpha_that_makes_the_forward_non_finite_is_refused_and_nothing_written(pair, tmp_path, capsys):
    pre, ft = pair
    out = tmp_path / "m"
    with pytest.raises(SpeechFTError, match="(not finite|overflows).*alpha"):
        merge_encoders(pre, [ft(1)], alpha=1e30, out=out)
    no_leftovers(out)


def test_alpha_outside_zero_one_extrapolates_with_a_warning(pair, tmp_path, capsys):
    pre, ft = pair
    f1 = ft(1)
    merge_encoders(pre, [f1], alpha=-1, out=tmp_path / "m")
    assert "alpha=-1 is outside [0, 1]" in capsys.readouterr().err
    merge_encoders(pre, [f1], alpha=0.5, out=tmp_path / "m2")
    assert "outside [0, 1]" not in capsys.readouterr().err


def test_only_the_auto_map_module_is_copied_and_hashed(tiny_encoder_dir, tmp_path, capsys):
    pre, f1 = tiny_encoder_dir("decoar2", seed=0), tiny_encoder_dir("decoar2", seed=1)
    (pre / "notes.py").write_text("raise SystemExit('not needed by the model')\n")
    out = merge_encoders(pre, [f1], out=tmp_path / "m")
    assert sorted(p.name for p in out.glob("*.py")) == ["decoar2_hf.py"]
    code = json.load(open(out / "speechft.json"))["merge"]["remote_code_sha256"]
    assert code == {"decoar2_hf.py": sha256_file(pre / "decoar2_hf.py")}
    assert "notes.py: not copied" in capsys.readouterr().err
    assert load_encoder(out).family == "decoar2"


def test_a_killed_finetune_folder_says_continue_it_with_resume(pair, tmp_path, capsys):
    from speechft.cli import main

    pre, _ = pair
    killed = tmp_path / "killed"
    (killed / "checkpoints" / "step_2").mkdir(parents=True)
    with pytest.raises(SpeechFTError, match=r"killed: this run has not finished.*finetune --resume"):
        merge_encoders(pre, [killed], out=tmp_path / "m")
    assert main(["encoder", "info", str(killed)]) != 0
    assert "killed: this run has not finished" in capsys.readouterr().err
