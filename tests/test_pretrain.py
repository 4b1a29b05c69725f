"""Continued pre-training (speechft.pretrain): k-means targets, span masks, the masked loss, the per-family
frame mask, and whole runs on tiny encoders of all six families (a dozen steps each)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAMILIES, make_classification_task, rows, tone, weights
from safetensors.torch import load_file

from speechft.config import load_config
from speechft.data.audio import write_audio
from speechft.encoders import family_class, load_encoder, tiny_encoder
from speechft.errors import SpeechFTError
from speechft.pretrain import (
    PretrainConfig,
    UnitObjective,
    kmeans,
    masked_unit_loss,
    nearest_centroid,
    pretrain,
    span_mask,
)

# Tiny runs: K=8 units, the whole 12-clip train split in one batch (only the masks vary between steps),
# a constant LR (no warm-up) so a dozen steps show learning.
FAST = [
    "units.clusters=8",
    "data.batch_size=12",
    "eval.log_every=1",
    "optim.lr=1e-3",
    "optim.head_lr=1e-2",
    "schedule.warmup=0",
    "schedule.hold_until=1",
]


def config(steps=12, *sets) -> PretrainConfig:
    return load_config(PretrainConfig, None, [f"steps={steps}", *FAST, *sets])


# ---- k-means ----------------------------------------------------------------------------------------------
def blobs(seed=0, k=5, per=60, dim=16):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, dim, generator=g) * 20  # far apart compared with the unit spread
    labels = torch.arange(k).repeat_interleave(per)
    return means[labels] + torch.randn(k * per, dim, generator=g), labels, means


def test_kmeans_recovers_well_separated_clusters():
    x, labels, means = blobs()
    for seed in (0, 1, 2):
        c, info = kmeans(x, 5, seed=seed)
        assign, _ = nearest_centroid(x, c)
        # each true cluster lands in exactly one found cluster, and no two share one
        mapping = {int(t): set(assign[labels == t].tolist()) for t in range(5)}
        assert all(len(v) == 1 for v in mapping.values()), mapping
        assert len({next(iter(v)) for v in mapping.values()}) == 5
        for t, (j,) in mapping.items():
            assert torch.dist(c[j], means[t]) < 1.0  # the centroid sits on the cluster mean
        assert info["inertia"] < 20  # ~ dim * unit variance
        assert 1 < info["iterations"] <= 100


def test_kmeans_is_deterministic_per_seed_and_leaves_the_global_rng_alone():
    x = torch.randn(400, 8, generator=torch.Generator().manual_seed(3))  # no structure: the seed decides
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, _ = kmeans(x, 10, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    b, _ = kmeans(x, 10, seed=7)
    c, _ = kmeans(x, 10, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_kmeans_needs_as_many_points_as_clusters_and_copes_with_duplicates():
    with pytest.raises(SpeechFTError, match="units.clusters=10: k-means needs at least that many frames"):
        kmeans(torch.randn(5, 3), 10)
    x = torch.tensor([[0.0, 0.0]] * 6 + [[5.0, 5.0]] * 6)  # 2 distinct points, 3 clusters
    c, info = kmeans(x, 3, seed=0)
    assert c.shape == (3, 2) and torch.isfinite(c).all() and info["inertia"] == pytest.approx(0.0, abs=1e-6)


# ---- span masks and the loss ---------------------------------------------------------------------------
def test_span_mask_spans_stay_inside_clips_and_cover_the_hubert_fraction():
    n = torch.tensor([4000, 37, 9, 0])
    g = torch.Generator().manual_seed(0)
    m = span_mask(n, 0.08, 10, min_spans=2, generator=g)
    assert m.shape == (4, 4000) and m.dtype == torch.bool
    for i, k in enumerate(n.tolist()):
        assert not m[i, k:].any(), "masked a frame past the clip"
    # p = 8%, l = 10: a frame is masked unless none of the 10 frames before it started a span
    assert m[0].float().mean().item() == pytest.approx(1 - 0.92**10, abs=0.04)
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, m[0].int().numpy(), 0])))[::2]
    assert runs.min() >= 10  # spans are whole (overlaps only make runs longer)
    assert m[1].any() and m[2, :9].all()  # short clips still get masked: a clip shorter than a span is all masked
    again = span_mask(n, 0.08, 10, min_spans=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(m, again)


def test_min_spans_guarantees_masked_frames():
    n = torch.full((50,), 60)
    m = span_mask(n, 1e-6, 5, min_spans=2, generator=torch.Generator().manual_seed(1))
    assert (m.sum(1) >= 5).all() and (m.sum(1) <= 10).all()


def test_masked_loss_ignores_unmasked_frames_and_padding():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 20, 8, generator=g, requires_grad=True)
    targets = torch.randint(8, (3, 20), generator=g)
    targets[2, 15:] = -100  # past the clip
    mask = torch.rand(3, 20, generator=g) < 0.5
    loss = masked_unit_loss(logits, targets, mask)
    other = targets.clone()
    other[~mask] = (other[~mask] + 3) % 8  # different units wherever nothing is masked
    assert torch.equal(loss, masked_unit_loss(logits, other, mask))
    sel = mask & (targets >= 0)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits[sel], targets[sel]).item())
    changed = targets.clone()
    i = tuple(sel.nonzero()[0])
    changed[i] = (changed[i] + 1) % 8
    assert not torch.equal(loss, masked_unit_loss(logits, changed, mask))
    loss.backward()
    assert (logits.grad[~sel] == 0).all() and (logits.grad[sel].abs().sum(-1) > 0).all()


# ---- the frame mask of every family -----------------------------------------------------------------------
def _capture(module, store):
    return module.register_forward_pre_hook(lambda mod, args: store.append(args[0].detach().clone()))


def masked_input(enc, family):
    """The module whose input is the representation the mask blanks, and that input's time axis."""
    if family == "whisper":
        return enc.model.conv1, -1  # log-mel (B, mels, N)
    if family == "decoar2":
        return enc.model.feature_projection, 1  # filterbank (B, F, 80)
    return enc.model.encoder, 1  # projected conv features (B, F, D)


@pytest.mark.parametrize("family", FAMILIES)
def test_frame_mask_blanks_exactly_the_masked_frames_input(family):
    enc = tiny_encoder(family)
    wavs = torch.stack([torch.from_numpy(tone(300, 1.0, seed=1)), torch.from_numpy(tone(900, 1.0, seed=2))])
    lengths = torch.tensor([16000, 11000])
    ref = enc(wavs, lengths)
    f = ref.hidden_states[0].shape[1]
    mask = torch.zeros(2, f, dtype=torch.bool)
    mask[0, 3:13] = mask[1, 20:30] = True

    module, axis = masked_input(enc, family)
    seen = []
    handle = _capture(module, seen)
    try:
        none = enc(wavs, lengths, frame_mask=None)
        off = enc(wavs, lengths, frame_mask=torch.zeros(2, f, dtype=torch.bool))
        on = enc(wavs, lengths, frame_mask=mask)
    finally:
        handle.remove()
    for out in (none, off):  # no mask, or an all-False one: bit-identical to the plain call
        assert all(torch.equal(a, b) for a, b in zip(ref.hidden_states, out.hidden_states))
    plain, masked = seen[1], seen[2]
    # which input positions sit under the masked output frames
    under = mask.repeat_interleave(2, dim=1)[:, : plain.shape[-1]] if family == "whisper" else mask
    under = under.unsqueeze(1) if axis == -1 else under.unsqueeze(-1)
    under = under.expand_as(plain)
    assert torch.equal(masked[~under], plain[~under]), "an unmasked frame's input changed"
    if family in ("whisper", "decoar2"):
        assert (masked[under] == 0).all() and (plain[under] != 0).any()
    else:
        token = enc.model.masked_spec_embed
        assert torch.equal(masked.transpose(0, 1)[mask.T], token.expand(int(mask.sum()), -1))
    assert not torch.allclose(on.hidden_states[-1][mask], ref.hidden_states[-1][mask])


def test_wav2vec2_family_without_a_mask_embedding_masks_with_zeros():
    enc = tiny_encoder("hubert", mask_time_prob=0.0)
    assert not hasattr(enc.model, "masked_spec_embed")
    seen = []
    handle = _capture(enc.model.encoder, seen)
    wavs = torch.from_numpy(tone(440, 0.5))[None]
    mask = torch.zeros(1, 24, dtype=torch.bool)
    mask[0, 5:9] = True
    enc(wavs, frame_mask=mask)
    handle.remove()
    assert (seen[0][0, 5:9] == 0).all() and (seen[0][0, :5] != 0).any()


# ---- whole runs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_pretrain_learns_keeps_the_front_end_and_merges(tmp_path, tiny_encoder_dir, cls_task, family):
    from speechft.merge import merge_encoders

    enc = tiny_encoder_dir(family)
    out = pretrain(enc, cls_task, tmp_path / "run", config=config(12, "eval.every=6"), progress=False)

    losses = [r["loss"] for r in rows(out, "train")]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    before, after = weights(enc), weights(out)
    assert set(before) == set(after)  # no prediction head, no new mask embedding: merges key for key
    cls = family_class(family)
    for k in before:
        if cls.is_frontend(k) or cls.is_pretraining_only(k) or cls.is_fixed(k):
            assert torch.equal(before[k], after[k]), f"{k} changed"
        else:
            assert not torch.equal(before[k], after[k]), f"{k} did not train"

    prov = json.loads((out / "speechft.json").read_text())
    assert prov["method"] == "continued-pretraining" and prov["training_method"] == "regular"
    assert prov["units"]["clusters"] == 8 and prov["units"]["layer"] == 1  # tiny encoders: 2 layers -> the middle
    assert (
        prov["steps"] == 12
        and prov["parents"][0]["weights_sha256"] == json.loads((enc / "speechft.json").read_text())["weights_sha256"]
    )
    assert prov["dev_metrics"]["units"]["metric"] == "masked_accuracy"
    assert not (out / "heads").exists() and not (out / "checkpoints").exists()
    assert sorted(p.name for p in (out / "units").iterdir()) == ["kmeans.safetensors", "units.json"]
    assert load_encoder(out).family == family

    merged = merge_encoders(enc, [out], out=tmp_path / "merged", progress=False)
    m = weights(merged)
    k = next(k for k in before if not torch.equal(before[k], after[k]))
    torch.testing.assert_close(m[k], 0.75 * before[k] + 0.25 * after[k])
    assert load_encoder(merged).family == family


def test_targets_are_the_initial_encoders_units_of_the_training_crops(tmp_path, tiny_encoder_dir, cls_task):
    from speechft.data import load_task
    from speechft.data.audio import load_audio

    enc_dir = tiny_encoder_dir("wav2vec2")
    out = pretrain(
        enc_dir,
        cls_task,
        tmp_path / "run",
        config=config(2, "checkpoint.keep_at_end=true"),
        max_seconds=0.6,
        progress=False,
    )
    t = load_file(str(out / "units" / "targets.safetensors"))
    centroids = load_file(str(out / "units" / "kmeans.safetensors"))["centroids"]
    assert centroids.shape == (8, 32)
    enc = load_encoder(enc_dir)
    train = load_task(cls_task).split("train")
    offsets = t["train.offsets"]
    assert len(offsets) == len(train) + 1 and len(t["dev.offsets"]) == len(load_task(cls_task).split("dev")) + 1
    for i, ex in enumerate(train):
        wav = torch.from_numpy(load_audio(ex.path))[: int(0.6 * 16000)]  # the crop the stream yields
        with torch.no_grad():
            feats = enc(wav[None]).hidden_states[1][0]
        units = t["train.units"][offsets[i] : offsets[i + 1]].long()
        assert len(units) == int(enc.frame_lengths(torch.tensor([len(wav)]))[0])
        assert torch.equal(units, nearest_centroid(feats, centroids)[0])


def test_objective_loss_masks_the_input_and_scores_masked_frames_only(tmp_path, tiny_encoder_dir, cls_task):
    from speechft.data.dataset import SplitDataset, collate
    from speechft.objective import Loop

    enc = load_encoder(tiny_encoder_dir("hubert"))
    cfg = UnitObjective.resolve(config(2))
    obj = UnitObjective(cls_task)
    heads = obj.build_heads(enc, cfg, tmp_path / "run", Loop.single("cpu"), progress=False)
    batch = collate([SplitDataset(obj.task, "train")[i] for i in (0, 3, 5)])
    calls = []

    def encode(wavs, lengths, **kw):
        calls.append(kw["frame_mask"])
        return enc(wavs, lengths, **kw)

    torch.manual_seed(0)
    loss = obj.loss(encode, heads["units"], "units", batch)
    mask = calls[0]
    frames = enc.frame_lengths(batch.lengths)
    assert mask.any(1).all() and not (mask & ~(torch.arange(mask.shape[1]) < frames[:, None])).any()
    with torch.no_grad():
        logits = heads["units"](enc(batch.wavs, batch.lengths, frame_mask=mask).hidden_states[-1])
    targets = obj.targets["train"].batch(batch.indices, frames)
    assert loss.item() == pytest.approx(masked_unit_loss(logits, targets, mask).item(), rel=1e-6)
    # new units wherever the frame is not masked: the same loss
    stored = obj.targets["train"]
    for row, i in enumerate(batch.indices):
        o = int(stored.offsets[i])
        keep = ~mask[row, : frames[row]]
        stored.units[o : o + int(frames[row])][keep] = (stored.units[o : o + int(frames[row])][keep] + 1) % 8
    torch.manual_seed(0)
    assert obj.loss(encode, heads["units"], "units", batch).item() == pytest.approx(loss.item(), rel=1e-6)
    assert torch.equal(calls[1], mask)


def test_resume_after_a_crash_equals_an_uninterrupted_run_and_reuses_the_targets(
    tmp_path, tiny_encoder_dir, cls_task, monkeypatch
):
    import speechft.pretrain as pt

    enc = tiny_encoder_dir("hubert")
    sets = ["data.batch_size=4", "eval.every=4", "checkpoint.every=3", "deterministic=true"]
    ref = pretrain(enc, cls_task, tmp_path / "ref", config=config(8, *sets), progress=False)

    real_loss, calls = pt.UnitObjective.loss, []

    def crash_at_step_5(self, *a, **kw):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt  # as if killed during step 5 (0-based); the checkpoint of step 3 is on disk
        return real_loss(self, *a, **kw)

    monkeypatch.setattr(pt.UnitObjective, "loss", crash_at_step_5)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        pretrain(enc, cls_task, run, config=config(8, *sets), progress=False)
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 3
    assert not (run / "speechft.json").exists()
    monkeypatch.setattr(pt.UnitObjective, "loss", real_loss)

    def recompute(*a, **kw):
        raise AssertionError("the targets were recomputed on resume")

    import speechft.units as units

    monkeypatch.setattr(units, "fit_units", recompute)
    monkeypatch.setattr(units, "label_split", recompute)
    assert pretrain(enc, cls_task, run, resume=True, progress=False) == run  # the stored config counts
    a, b = weights(ref), weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    assert [r["loss"] for r in rows(ref, "train")] == [r["loss"] for r in rows(run, "train")]
    assert [r["metrics"] for r in rows(ref, "dev")] == [r["metrics"] for r in rows(run, "dev")]
    with pytest.raises(SpeechFTError, match="steps is 9 here but 8"):
        (run / "speechft.json").unlink()
        pretrain(enc, cls_task, run, config=config(9, *sets), resume=True, progress=False)


# ---- continuing a converted HuBERT's own prediction head ------------------------------------------------------
def converted_hubert_with_head(tmp_path, units=8, permutation=(3, 0, 7, 1, 6, 2, 5, 4)):
    """A tiny HuBERT converted from an s3prl container with its pre-training head; its label dictionary lists
    the units out of order, so unit k's row must come from the dictionary, not from k."""
    from test_convert import hubert_checkpoint_with_head

    from speechft.encoders.convert import convert_checkpoint

    enc = tiny_encoder("hubert", seed=3)
    symbols = ["<s>", "<pad>", "</s>", "<unk>", *map(str, permutation)]
    state = hubert_checkpoint_with_head(tmp_path / "hubert.pt", enc, units=units, symbols=symbols)
    return enc, state, symbols, convert_checkpoint(tmp_path / "hubert.pt", "s3prl", tmp_path / "enc")


def test_pretrain_continues_the_checkpoints_head_from_its_values(tmp_path, cls_task, monkeypatch, capsys):
    import speechft.pretrain as pt
    from speechft.merge import merge_encoders

    enc, state, symbols, enc_dir = converted_hubert_with_head(tmp_path)
    seen = {}
    real_loss, real_mask = pt.UnitObjective.loss, pt.span_mask

    def record_loss(self, encode, head, name, batch):
        seen.setdefault("batch", batch)
        return real_loss(self, encode, head, name, batch)

    def record_mask(frame_lengths, *a, **kw):
        mask = real_mask(frame_lengths, *a, **kw)
        if len(frame_lengths) > 1:  # a training batch (the fixed dev masks are drawn one clip at a time)
            seen.setdefault("mask", mask)
        return mask

    monkeypatch.setattr(pt.UnitObjective, "loss", record_loss)
    monkeypatch.setattr(pt, "span_mask", record_mask)
    out = pretrain(enc_dir, cls_task, tmp_path / "run", config=config(3, "checkpoint.keep_at_end=true"), progress=False)
    assert "prediction head: the checkpoint's HuBERT head (8 units, 12 label embeddings" in capsys.readouterr().out

    # the step-1 loss, computed here from the checkpoint's tensors: fairseq's cosine / 0.1 over all 12 rows
    batch, mask = seen["batch"], seen["mask"]
    t = load_file(str(out / "units" / "targets.safetensors"))
    frames = enc.frame_lengths(batch.lengths)
    target = torch.full(mask.shape, -1)
    for row, i in enumerate(batch.indices):
        units = t["train.units"][t["train.offsets"][i] : t["train.offsets"][i + 1]].long()
        target[row, : frames[row]] = torch.tensor([symbols.index(str(int(u))) for u in units])
    with torch.no_grad():
        h = enc(batch.wavs, batch.lengths, frame_mask=mask).hidden_states[-1]
        x = torch.nn.functional.linear(h, state["final_proj.weight"], state["final_proj.bias"])
        cos = torch.cosine_similarity(x[:, :, None, :], state["label_embs_concat"][None, None], dim=-1)
    sel = mask & (target >= 0)
    expected = torch.nn.functional.cross_entropy(cos[sel] / 0.1, target[sel]).item()
    assert rows(out, "train")[0]["loss"] == pytest.approx(expected, abs=2e-6)

    prov = json.loads((out / "speechft.json").read_text())
    assert prov["prediction_head"]["head"] == "checkpoint"
    assert (
        prov["prediction_head"]["sha256"]
        == json.loads((enc_dir / "speechft.json").read_text())["pretraining_heads"]["sha256"]
    )
    # the continued head stays beside the result (it trained), outside its weights
    kept = load_file(str(out / "pretraining_heads" / "heads.safetensors"))
    assert not torch.equal(kept["label_embs_concat"], state["label_embs_concat"])
    assert (
        prov["pretraining_heads"]["units"] == 8
        and "kmeans" in json.loads((out / "pretraining_heads" / "heads.json").read_text())["units_origin"]
    )
    assert set(weights(out)) == set(weights(enc_dir))

    merged = merge_encoders(enc_dir, [out], out=tmp_path / "merged", progress=False)
    assert set(weights(merged)) == set(weights(enc_dir))
    assert not any("final_proj" in k or "label_embs" in k for k in weights(merged))
    assert not (merged / "pretraining_heads").exists()
    assert "pretraining_heads" not in json.loads((merged / "speechft.json").read_text())
    assert "prediction_head" not in json.loads((merged / "speechft.json").read_text())

    # the result continues again, labelled with the very centroids its head was trained on (units.kmeans)
    given = out / "units" / "kmeans.safetensors"
    again = pretrain(out, cls_task, tmp_path / "again", config=config(1, f"units.kmeans={given}"), progress=False)
    assert "the checkpoint's HuBERT head (8 units" in capsys.readouterr().out
    assert torch.equal(
        load_file(str(again / "units" / "kmeans.safetensors"))["centroids"], load_file(str(given))["centroids"]
    )
    prov = json.loads((again / "speechft.json").read_text())
    assert (
        prov["prediction_head"]["sha256"]
        == json.loads((out / "speechft.json").read_text())["pretraining_heads"]["sha256"]
    )
    assert prov["units"]["kmeans_from"] == str(given.resolve()) and "given centroids" in prov["prediction_head"]["note"]


def test_a_head_that_does_not_fit_falls_back_to_a_fresh_one_and_says_so(tmp_path, cls_task, capsys):
    *_, enc_dir = converted_hubert_with_head(tmp_path)
    out = pretrain(enc_dir, cls_task, tmp_path / "run", config=config(1, "units.clusters=6"), progress=False)
    said = capsys.readouterr().out
    assert "prediction head: a fresh linear head (its head predicts 8 units, units.clusters=6)" in said
    prov = json.loads((out / "speechft.json").read_text())
    assert prov["prediction_head"] == {"head": "fresh", "reason": "its head predicts 8 units, units.clusters=6"}
    assert not (out / "pretraining_heads").exists() and "pretraining_heads" not in prov
    with pytest.raises(SpeechFTError, match=r"units.head=checkpoint: cannot continue .*8 units, units.clusters=6"):
        pretrain(enc_dir, cls_task, tmp_path / "run2", config=config(1, "units.clusters=6", "units.head=checkpoint"))
    fresh = pretrain(enc_dir, cls_task, tmp_path / "run3", config=config(1, "units.head=fresh"), progress=False)
    assert json.loads((fresh / "speechft.json").read_text())["prediction_head"]["head"] == "fresh"


def test_a_run_continuing_the_checkpoints_head_resumes_exactly(tmp_path, cls_task, monkeypatch):
    import speechft.pretrain as pt

    *_, enc_dir = converted_hubert_with_head(tmp_path)
    sets = ["data.batch_size=4", "eval.every=2", "checkpoint.every=2", "deterministic=true"]
    ref = pretrain(enc_dir, cls_task, tmp_path / "ref", config=config(4, *sets), progress=False)
    real_loss, calls = pt.UnitObjective.loss, []

    def crash_at_step_3(self, *a, **kw):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_loss(self, *a, **kw)

    monkeypatch.setattr(pt.UnitObjective, "loss", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        pretrain(enc_dir, cls_task, tmp_path / "run", config=config(4, *sets), progress=False)
    monkeypatch.setattr(pt.UnitObjective, "loss", real_loss)
    run = pretrain(enc_dir, cls_task, tmp_path / "run", resume=True, progress=False)
    for name in ("model.safetensors", "pretraining_heads/heads.safetensors"):
        a, b = load_file(str(ref / name)), load_file(str(run / name))
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), name
    assert [r["loss"] for r in rows(ref, "train")] == [r["loss"] for r in rows(run, "train")]


def test_the_checkpoint_head_scores_in_fp32_under_autocast():
    from speechft.encoders.pretraining_heads import HubertPredictionHead

    g = torch.Generator().manual_seed(0)
    tensors = {
        "final_proj.weight": torch.randn(4, 8, generator=g),
        "final_proj.bias": torch.randn(4, generator=g),
        "label_embs_concat": torch.randn(7, 4, generator=g),
    }
    head = HubertPredictionHead(tensors, {"target_glu": False, "logit_temp": 0.1, "symbols": [*"abcd", "0", "2", "1"]})
    assert head.unit_rows.tolist() == [4, 6, 5]
    x = torch.randn(2, 3, 8, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = head(x)
    assert low.dtype == torch.float32
    proj = torch.autocast("cpu", dtype=torch.bfloat16)(head.final_proj)(x).float()  # only final_proj runs in bf16
    expected = torch.cosine_similarity(proj[:, :, None], tensors["label_embs_concat"][None, None], dim=-1) / 0.1
    torch.testing.assert_close(low, expected, rtol=1e-5, atol=1e-5)


def test_units_kmeans_labels_with_the_given_centroids(tmp_path, tiny_encoder_dir, cls_task):
    enc_dir = tiny_encoder_dir("hubert")
    enc = load_encoder(enc_dir)
    c = torch.randn(8, enc.hidden_size, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "km.npy", c.numpy())
    sets = [f"units.kmeans={tmp_path / 'km.npy'}", "checkpoint.keep_at_end=true"]
    out = pretrain(enc_dir, cls_task, tmp_path / "run", config=config(1, *sets), progress=False)
    assert torch.equal(load_file(str(out / "units" / "kmeans.safetensors"))["centroids"], c)
    t = load_file(str(out / "units" / "targets.safetensors"))
    from speechft.data import load_task
    from speechft.data.audio import load_audio

    wav = torch.from_numpy(load_audio(load_task(cls_task).split("train")[0].path))
    with torch.no_grad():
        feats = enc(wav[None]).hidden_states[1][0]
    assert torch.equal(t["train.units"][: t["train.offsets"][1]].long(), nearest_centroid(feats, c)[0])
    assert json.loads((out / "speechft.json").read_text())["units"]["kmeans_from"] == str(
        (tmp_path / "km.npy").resolve()
    )
    np.save(tmp_path / "km6.npy", c[:6].numpy())
    with pytest.raises(SpeechFTError, match=r"km6.npy: centroids of shape \(6, 32\), expected finite \(8, 32\)"):
        pretrain(enc_dir, cls_task, tmp_path / "bad", config=config(1, f"units.kmeans={tmp_path / 'km6.npy'}"))
    assert not (tmp_path / "bad").exists()


# ---- the command line, manifests, refusals -------------------------------------------------------------
def audio_manifest(root: Path, n=12) -> Path:
    (root / "clips").mkdir(parents=True)
    lines = ["path\tduration"]
    for i in range(n):
        write_audio(root / "clips" / f"{i}.wav", tone(200 + 150 * i, 0.7, seed=i))
        lines.append(f"clips/{i}.wav\t0.7")
    (root / "audio.tsv").write_text("\n".join(lines) + "\n")
    return root / "audio.tsv"


def test_cli_on_a_bare_manifest_holds_out_dev_clips(tmp_path, tiny_encoder_dir, capsys):
    from speechft.cli import main

    manifest = audio_manifest(tmp_path / "data")
    enc = tiny_encoder_dir("whisper")
    out = tmp_path / "run"
    argv = ["pretrain", "--encoder", str(enc), "--audio", str(manifest), "--out", str(out), "--steps", "2"]
    for s in FAST:
        argv += ["--set", s]
    assert main(argv) == 0
    assert f"to {out}" in capsys.readouterr().out
    prov = json.loads((out / "speechft.json").read_text())
    assert (prov["audio"]["train_clips"], prov["audio"]["dev_clips"]) == (11, 1)  # a tenth, at least one
    assert main(argv[: -2 * len(FAST)] + ["--resume"]) == 0  # finished: nothing to do
    assert "already finished" in capsys.readouterr().out


@pytest.mark.parametrize(
    "sets, needle",
    [
        (["units.clusters=100000", "units.sample_frames=100000"], "k-means needs at least that many frames"),
        (["units.layer=3"], "units.layer=3: this hubert encoder has 2 layers"),
        (["head.proj_dim=64"], "takes no head settings"),
        (["mask.start_prob=1.5"], "mask.start_prob=1.5"),
        (["units.clusters=1"], "at least 2 clusters"),
        (["units.kmeans=/nowhere/km.npy"], "units.kmeans='/nowhere/km.npy': file not found"),
        (["units.head=always"], "units.head"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, tiny_encoder_dir, cls_task, capsys, sets, needle):
    from speechft.cli import main

    argv = [
        "pretrain",
        "--encoder",
        str(tiny_encoder_dir("hubert")),
        "--audio",
        str(cls_task),
        "--out",
        str(tmp_path / "run"),
        "--steps",
        "2",
    ]
    for s in [*FAST, *sets]:
        argv += ["--set", s]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def test_bad_audio_arguments(tmp_path, tiny_encoder_dir):
    enc = tiny_encoder_dir("hubert")
    with pytest.raises(SpeechFTError, match="--audio not found"):
        pretrain(enc, tmp_path / "nowhere", tmp_path / "a", config=config(2))
    bad = tmp_path / "bad.tsv"
    bad.write_text("file\tduration\nx.wav\t1.0\n")
    with pytest.raises(SpeechFTError, match="needs a header row with a 'path' column"):
        pretrain(enc, bad, tmp_path / "b", config=config(2))
    bad.write_text("path\nmissing.wav\n")
    with pytest.raises(SpeechFTError, match="line 2: audio file 'missing.wav' not found"):
        pretrain(enc, bad, tmp_path / "c", config=config(2))
    assert not any((tmp_path / d).exists() for d in "abc")  # refused before any run folder was made


def test_recipe_loads_as_a_pretrain_config():
    cfg = load_config(
        PretrainConfig, Path(__file__).resolve().parents[1] / "configs" / "paper" / "pretrain-aishell3.yaml"
    )
    cfg = UnitObjective.resolve(cfg)
    assert (cfg.units.clusters, cfg.units.layer, cfg.mask.start_prob, cfg.mask.span) == (500, 9, 0.08, 10)
    assert cfg.method == "regular" and cfg.steps == 20000
    assert cfg.data.crop is None  # the objective's own: pretrain cuts at the start


def test_random_crops_are_refused_for_pretrain_where_units_are_labelled_once():
    cfg = load_config(PretrainConfig, overrides=["data.crop=random"])
    with pytest.raises(SpeechFTError, match="data.crop='random'.*start crop"):
        UnitObjective.resolve(cfg)
    assert UnitObjective.resolve(load_config(PretrainConfig, overrides=["data.crop=start"])).data.crop == "start"


def test_task_folder_with_the_same_name_elsewhere_is_a_different_resume(tmp_path, tiny_encoder_dir, cls_task):
    enc = tiny_encoder_dir("hubert")
    out = pretrain(enc, cls_task, tmp_path / "run", config=config(2), progress=False)
    (out / "speechft.json").unlink()
    other = make_classification_task(tmp_path / "other", seed=4)
    with pytest.raises(SpeechFTError, match="pass the same --audio"):
        pretrain(enc, other, out, resume=True, progress=False)
