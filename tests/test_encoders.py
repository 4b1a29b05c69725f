"""The encoder wrapper: hidden states, frame lengths, padding, save/load, loading without speechft."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAMILIES as ALL_FAMILIES
from safetensors.torch import load_file, save_file

from speechft.encoders import FAMILIES, load_encoder, tiny_encoder
from speechft.errors import SpeechFTError

LENGTHS = [16000, 11000, 7000]
# data2vec-audio's positional embedding is a stack of convolutions: padded frames leak
# into valid ones after the first conv (transformers zeroes them only once), so a padded
# batch cannot match items run alone. The longest (unpadded) item still must.
PADDING_EXACT = [f for f in ALL_FAMILIES if f != "data2vec"]


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    wavs = torch.randn(len(LENGTHS), max(LENGTHS), generator=g) * 0.1
    lengths = torch.tensor(LENGTHS)
    for i, n in enumerate(LENGTHS):
        wavs[i, n:] = 0
    return wavs, lengths


def test_all_six_families_registered():
    assert set(FAMILIES) == set(ALL_FAMILIES)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_hidden_states_and_frame_lengths(family):
    enc = tiny_encoder(family)
    wavs, lengths = batch()
    with torch.no_grad():
        out = enc(wavs, lengths)
    assert len(out.hidden_states) == enc.num_layers + 1
    f = out.hidden_states[0].shape[1]
    assert all(h.shape == (3, f, enc.hidden_size) for h in out.hidden_states)
    # The longest item fills the padded tensor exactly; shorter ones have fewer frames.
    assert int(out.frame_lengths[0]) == f
    assert out.frame_lengths.tolist() == sorted(out.frame_lengths.tolist(), reverse=True)
    assert out.frame_lengths.tolist() == enc.frame_lengths(lengths).tolist()
    # Each item alone has exactly its computed number of frames.
    for i, n in enumerate(LENGTHS):
        with torch.no_grad():
            alone = enc(wavs[i : i + 1, :n], lengths[i : i + 1])
        assert alone.hidden_states[0].shape[1] == int(out.frame_lengths[i])


@pytest.mark.parametrize("family", PADDING_EXACT)
def test_padded_batch_matches_items_alone(family):
    enc = tiny_encoder(family)
    wavs, lengths = batch()
    with torch.no_grad():
        out = enc(wavs, lengths)
        for i, n in enumerate(LENGTHS):
            alone = enc(wavs[i : i + 1, :n], lengths[i : i + 1])
            m = int(out.frame_lengths[i])
            for layer, (a, b) in enumerate(zip(out.hidden_states, alone.hidden_states)):
                torch.testing.assert_close(a[i, :m], b[0], atol=1e-4, rtol=1e-4, msg=f"{family} item {i} layer {layer}")


def test_data2vec_unpadded_item_matches_alone():
    enc = tiny_encoder("data2vec")
    wavs, lengths = batch()
    with torch.no_grad():
        out = enc(wavs, lengths)
        alone = enc(wavs[:1], lengths[:1])
    for a, b in zip(out.hidden_states, alone.hidden_states):
        torch.testing.assert_close(a[0], b[0], atol=1e-4, rtol=1e-4)


def test_group_norm_front_end_frame_lengths():
    # HuBERT/wav2vec2 Base use a group-norm front end (normalised over time): padding
    # changes the statistics, so only lengths and shapes are exact there.
    enc = tiny_encoder("hubert", feat_extract_norm="group")
    wavs, lengths = batch()
    with torch.no_grad():
        out = enc(wavs, lengths)
    expected = [int(enc.model._get_feat_extract_output_lengths(n)) for n in LENGTHS]
    assert out.frame_lengths.tolist() == expected


def test_frame_lengths_follow_conv_arithmetic_not_hop():
    enc = tiny_encoder("wav2vec2")
    # 400 samples is the receptive field of the first frame (kernels 10,8,4,4 strides 5,4,4,4).
    n = torch.tensor([399, 400, 719, 720, 16000])
    got = enc.frame_lengths(n).tolist()
    manual = []
    for L in n.tolist():
        for k, s in zip((10, 8, 4, 4), (5, 4, 4, 4)):
            L = (L - k) // s + 1
        manual.append(max(L, 0))
    assert got == manual
    assert got != [L // 320 for L in n.tolist()]


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_save_load_round_trip_bit_identical(family, tmp_path):
    enc = tiny_encoder(family, seed=3)
    wavs, lengths = batch()
    out_dir = enc.save(tmp_path / family, provenance={"source": "test"})
    prov = json.loads((out_dir / "speechft.json").read_text())
    assert prov["family"] == family and prov["source"] == "test"
    assert set(prov["weights_sha256"]) == {"model.safetensors"}
    loaded = load_encoder(out_dir)
    assert type(loaded) is type(enc)
    with torch.no_grad():
        a, b = enc(wavs, lengths), loaded(wavs, lengths)
    for x, y in zip(a.hidden_states, b.hidden_states):
        assert torch.equal(x, y)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_front_end_and_pretraining_declarations(family):
    enc = tiny_encoder(family)
    front = [n for n, _ in enc.frontend_parameters()]
    # DeCoAR 2.0's fbank has no parameters: the reference freezes only `feature_extractor*`, so all of it trains
    assert bool(front) == (family != "decoar2"), f"{family} front end: {front}"
    names = {n for n, _ in enc.model.named_parameters()}
    trainable = {n for n, _ in enc.finetunable_parameters()}
    assert trainable and trainable.isdisjoint(front)
    assert trainable | set(front) | {n for n in names if enc.is_pretraining_only(n)} == names
    if family in ("hubert", "wav2vec2", "wavlm", "data2vec"):
        assert all(n.startswith("feature_extractor.") for n in front)
        assert enc.is_pretraining_only("masked_spec_embed")
    if family == "hubert":
        assert enc.is_pretraining_only("final_proj.weight") and enc.is_pretraining_only("label_embs_concat")


def test_masking_and_layerdrop_disabled_at_load(tmp_path):
    no_dropout = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0)
    enc = tiny_encoder("hubert", layerdrop=0.5, mask_time_prob=0.5, **no_dropout)
    enc.save(tmp_path / "e")
    loaded = load_encoder(tmp_path / "e")
    loaded.train()
    assert loaded.model.config.layerdrop == 0.0
    assert loaded.model.config.apply_spec_augment is False
    wavs, lengths = batch()
    with torch.no_grad():  # without dropout, training mode may differ only by masking/layerdrop
        b = loaded(wavs, lengths).hidden_states
        loaded.eval()
        a = loaded(wavs, lengths).hidden_states
    assert len(a) == len(b) == 3
    torch.testing.assert_close(a[-1], b[-1])


# Every way a published config can switch on training noise inside the encoder. They are set on where the
# family's config has them (as in published checkpoints), so the test fails if any survives into training mode.
TRAINING_NOISE_ON = {
    "mask_time_prob": 0.5,
    "mask_feature_prob": 0.5,
    "mask_feature_length": 2,
    "layerdrop": 0.5,
    "encoder_layerdrop": 0.5,
}


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_training_mode_equals_eval_mode_without_dropout(family, tmp_path):
    """The README's promise: no masking, SpecAugment or layerdrop inside the encoder for any family, whatever
    its config says (data2vec-audio's config has no apply_spec_augment and masks by default). With every
    dropout at 0, training mode changes nothing - also after a save/load round trip."""
    cls = FAMILIES[family]
    cfg = cls.tiny_config()
    for key, value in TRAINING_NOISE_ON.items():
        if hasattr(cfg, key):
            setattr(cfg, key, value)
    for key in [k for k in vars(cfg) if "dropout" in k]:
        setattr(cfg, key, 0.0)
    built = cls.from_config(cfg, seed=0)
    built.save(tmp_path / family)
    wavs, lengths = batch()
    for enc in (built, load_encoder(tmp_path / family)):
        with torch.no_grad():
            enc.eval()
            want = enc(wavs, lengths).hidden_states
            enc.train()
            got = enc(wavs, lengths).hidden_states
        assert enc.training and len(got) == len(want)
        for layer, (a, b) in enumerate(zip(want, got)):
            torch.testing.assert_close(b, a, atol=1e-6, rtol=0, msg=f"{family}: layer {layer} differs in training mode")


FRESH_PROCESS = textwrap.dedent("""
    import sys, json
    class Block:  # prove speechft is not needed: importing it fails
        def find_spec(self, name, path=None, target=None):
            if name == "speechft" or name.startswith("speechft."):
                raise ImportError("speechft blocked")
    sys.meta_path.insert(0, Block())
    import numpy as np, torch, transformers
    folder, family, wav_file, out_file = sys.argv[1:5]
    wav = torch.from_numpy(np.load(wav_file))
    if family == "whisper":
        from transformers.models.whisper.modeling_whisper import WhisperEncoder
        model = WhisperEncoder.from_pretrained(folder).eval()
        # speechft stores its own log-mel input next to the wav for this check
        feats = torch.from_numpy(np.load(wav_file.replace(".npy", "_mel.npy")))
        with torch.no_grad():
            x = torch.nn.functional.gelu(model.conv1(feats))
            x = torch.nn.functional.gelu(model.conv2(x)).transpose(1, 2)
            x = x + model.embed_positions.weight[: x.shape[1]]
            for layer in model.layers:
                x = layer(x, None)
                x = x[0] if isinstance(x, tuple) else x
            last = model.layer_norm(x)
    else:
        kw = {"trust_remote_code": True} if family == "decoar2" else {}
        model = transformers.AutoModel.from_pretrained(folder, **kw).eval()
        with torch.no_grad():
            last = model(wav, output_hidden_states=True).hidden_states[-1]
    assert not any(m.startswith("speechft") for m in sys.modules)
    np.save(out_file, last.numpy())
""")


@pytest.mark.slow
@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_folder_loads_with_transformers_without_speechft(family, tmp_path):
    enc = tiny_encoder(family, seed=1)
    folder = enc.save(tmp_path / "enc")
    wav = torch.randn(1, 12000, generator=torch.Generator().manual_seed(0)) * 0.1
    np.save(tmp_path / "wav.npy", wav.numpy())
    if family == "whisper":
        mel = enc.features(wav, torch.tensor([12000]))
        np.save(tmp_path / "wav_mel.npy", mel.numpy())
    script = tmp_path / "fresh.py"
    script.write_text(FRESH_PROCESS)
    proc = subprocess.run(
        [sys.executable, str(script), str(folder), family, str(tmp_path / "wav.npy"), str(tmp_path / "out.npy")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = torch.from_numpy(np.load(tmp_path / "out.npy"))
    with torch.no_grad():
        ours = enc(wav, torch.tensor([12000])).hidden_states[-1]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_hub_id_without_network_is_one_clear_line():
    with pytest.raises(SpeechFTError, match="no-such-org/no-such-model' is not a local folder.*Hugging Face cache"):
        load_encoder("no-such-org/no-such-model")


def test_missing_folder_and_missing_config(tmp_path):
    with pytest.raises(SpeechFTError, match="not found"):
        load_encoder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpeechFTError, match="config.json: missing"):
        load_encoder(tmp_path / "empty")


def test_nan_weights_refused(tmp_path):
    folder = tiny_encoder("wavlm").save(tmp_path / "e")
    sd = load_file(str(folder / "model.safetensors"))
    key = next(k for k in sd if "encoder.layers.0" in k and sd[k].is_floating_point())
    sd[key][0] = float("nan")
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(SpeechFTError, match=f"'{key}'.*NaN"):
        load_encoder(folder)


def test_weights_of_another_architecture_refused(tmp_path):
    a = tiny_encoder("hubert").save(tmp_path / "a")
    b = tiny_encoder("hubert", num_hidden_layers=3).save(tmp_path / "b")
    (a / "model.safetensors").write_bytes((b / "model.safetensors").read_bytes())
    with pytest.raises(SpeechFTError, match="does not match config.json"):
        load_encoder(a)


def test_unknown_model_type_refused(tmp_path):
    folder = tiny_encoder("hubert").save(tmp_path / "a")
    (folder / "speechft.json").unlink()
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "bert"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SpeechFTError, match="model_type 'bert' is not a supported"):
        load_encoder(folder)


def test_save_refuses_existing_output_and_leaves_nothing(tmp_path):
    enc = tiny_encoder("hubert")
    enc.save(tmp_path / "e")
    with pytest.raises(SpeechFTError, match="already exists"):
        enc.save(tmp_path / "e")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


def test_family_metadata_imports_no_model_code(tiny_encoder_dir):
    """merge and doctor read patterns and detect folders through speechft.encoders without torch/transformers;
    the adapters read the same patterns (written once, in families.py)."""
    folder = tiny_encoder_dir("hubert")
    code = (
        "import sys\n"
        "import speechft.encoders as e\n"
        f"assert e.detect_family({str(folder)!r}) == 'hubert'\n"
        "assert e.family_info('hubert').is_pretraining_only('final_proj.weight')\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "assert not heavy, heavy[:5]\n"
    )
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    from speechft.encoders import FAMILY_INFO

    for name, cls in FAMILIES.items():
        info = FAMILY_INFO[name]
        assert (cls.frontend_patterns, cls.pretraining_only_patterns, cls.fixed_patterns) == (
            info.frontend_patterns,
            info.pretraining_only_patterns,
            info.fixed_patterns,
        )


def test_saved_files_follow_the_umask(tmp_path):
    umask = os.umask(0o027)
    try:
        out = tiny_encoder("hubert").save(tmp_path / "enc")
    finally:
        os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes["model.safetensors"] == 0o640 and set(modes.values()) == {0o640}, modes
