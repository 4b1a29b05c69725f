"""`speechft encoder convert`: fairseq / s3prl / Speech-FT containers built from tiny HF models
with an inverse key map written out here (independently of the converter), converted back,
must give the same hidden states; hostile pickles must be refused without running."""

from __future__ import annotations

import argparse
import os
import re
import sys
import types

import pytest
import torch
import yaml

from speechft.encoders import load_encoder, tiny_encoder
from speechft.encoders.convert import convert_checkpoint
from speechft.encoders.fairseq_layout import parse_conv_layers
from speechft.errors import SpeechFTError
from speechft.provenance import read_provenance

# Standard wav2vec 2.0 front-end kernels/strides and 64-dim attention heads, so shape
# inference can recognise the architecture.
STD_FRONTEND = dict(
    conv_dim=(32,) * 7,
    conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    conv_stride=(5, 2, 2, 2, 2, 2, 2),
    hidden_size=128,
    num_attention_heads=2,
)

# transformers name -> fairseq name, per layer part (the fairseq names as they appear in
# hubert_base_ls960.pt / wav2vec_small.pt / WavLM-Base+.pt).
LAYER = {
    "attention.q_proj": "self_attn.q_proj",
    "attention.k_proj": "self_attn.k_proj",
    "attention.v_proj": "self_attn.v_proj",
    "attention.out_proj": "self_attn.out_proj",
    "attention.gru_rel_pos_linear": "self_attn.grep_linear",
    "attention.gru_rel_pos_const": "self_attn.grep_a",
    "attention.rel_attn_embed": "self_attn.relative_attention_bias",
    "layer_norm": "self_attn_layer_norm",
    "feed_forward.intermediate_dense": "fc1",
    "feed_forward.output_dense": "fc2",
    "final_layer_norm": "final_layer_norm",
}


def to_fairseq(hf_name: str, layer_norm_frontend: bool) -> str:
    if (m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+?)(\.weight|\.bias)?", hf_name)) and m.group(2) in LAYER:
        return f"encoder.layers.{m.group(1)}.{LAYER[m.group(2)]}{m.group(3) or ''}"
    if m := re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.conv\.(weight|bias)", hf_name):
        return f"feature_extractor.conv_layers.{m.group(1)}.0.{m.group(2)}"
    if m := re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(weight|bias)", hf_name):
        # fairseq: Sequential(conv, dropout, norm, gelu); a LayerNorm sits inside Sequential(T, LN, T)
        return f"feature_extractor.conv_layers.{m.group(1)}.2.{'1.' if layer_norm_frontend else ''}{m.group(2)}"
    fixed = {
        "encoder.pos_conv_embed.conv.parametrizations.weight.original0": "encoder.pos_conv.0.weight_g",
        "encoder.pos_conv_embed.conv.parametrizations.weight.original1": "encoder.pos_conv.0.weight_v",
        "encoder.pos_conv_embed.conv.bias": "encoder.pos_conv.0.bias",
        "feature_projection.layer_norm.weight": "layer_norm.weight",
        "feature_projection.layer_norm.bias": "layer_norm.bias",
        "feature_projection.projection.weight": "post_extract_proj.weight",
        "feature_projection.projection.bias": "post_extract_proj.bias",
        "feature_projection.weight": "post_extract_proj.weight",  # DeCoAR 2.0
        "feature_projection.bias": "post_extract_proj.bias",
        "encoder.layer_norm.weight": "encoder.layer_norm.weight",
        "encoder.layer_norm.bias": "encoder.layer_norm.bias",
        "masked_spec_embed": "mask_emb",
    }
    return fixed[hf_name]


def fairseq_state(enc) -> dict:
    layer_norm_frontend = getattr(enc.model.config, "feat_extract_norm", "layer") == "layer"
    return {to_fairseq(k, layer_norm_frontend): v.clone() for k, v in enc.model.state_dict().items()}


def fairseq_cfg(enc, **extra) -> dict:
    c = enc.model.config
    cfg = dict(
        encoder_layers=c.num_hidden_layers,
        encoder_embed_dim=c.hidden_size,
        encoder_ffn_embed_dim=c.intermediate_size,
        encoder_attention_heads=c.num_attention_heads,
        activation_fn="gelu",
        dropout=0.1,
        attention_dropout=0.1,
        activation_dropout=0.0,
        encoder_layerdrop=0.05,
        dropout_input=0.1,
        layer_norm_first=False,
        extractor_mode="layer_norm" if c.feat_extract_norm == "layer" else "default",
        # the string form fairseq stores, evaluated by the converter without eval()
        conv_feature_layers=" + ".join(
            f"[({d}, {k}, {s})]" for d, k, s in zip(c.conv_dim, c.conv_kernel, c.conv_stride)
        ),
        conv_bias=c.conv_bias,
        conv_pos=c.num_conv_pos_embeddings,
        conv_pos_groups=c.num_conv_pos_embedding_groups,
        mask_prob=0.65,
        feature_grad_mult=0.1,
    )
    cfg.update(extra)
    return cfg


def wav_batch():
    g = torch.Generator().manual_seed(1)
    wavs = torch.randn(2, 12000, generator=g) * 0.1
    wavs[1, 9000:] = 0
    return wavs, torch.tensor([12000, 9000])


def assert_same_states(enc, out_dir):
    converted = load_encoder(out_dir)
    assert converted.family == enc.family
    wavs, lengths = wav_batch()
    with torch.no_grad():
        a = enc(wavs, lengths).hidden_states
        b = converted(wavs, lengths).hidden_states
    assert len(a) == len(b) == enc.num_layers + 1
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)
    return converted


@pytest.fixture
def fake_fairseq(monkeypatch):
    """A stand-in `fairseq.data.dictionary.Dictionary` so a checkpoint can pickle one, as
    real HuBERT checkpoints do; removed again before conversion, proving the converter never
    imports it."""
    mods = {n: types.ModuleType(n) for n in ("fairseq", "fairseq.data", "fairseq.data.dictionary")}

    class Dictionary:
        def __init__(self):
            self.symbols, self.indices = ["<s>", "<pad>", "0", "1"], {"0": 2, "1": 3}

    Dictionary.__module__ = "fairseq.data.dictionary"
    Dictionary.__qualname__ = "Dictionary"
    mods["fairseq.data.dictionary"].Dictionary = Dictionary
    for n, m in mods.items():
        monkeypatch.setitem(sys.modules, n, m)
    yield Dictionary
    for n in mods:
        monkeypatch.delitem(sys.modules, n, raising=False)


def test_fairseq_hubert_original_round_trip(tmp_path, fake_fairseq):
    enc = tiny_encoder("hubert", seed=3)
    state = fairseq_state(enc)
    state["label_embs_concat"] = torch.randn(504, 16)  # the pre-training heads real files carry
    state["final_proj.weight"], state["final_proj.bias"] = torch.randn(16, 32), torch.randn(16)
    ckpt = {
        "cfg": {
            "model": {"_name": "hubert", **fairseq_cfg(enc)},
            "task": {"_name": "hubert_pretraining", "normalize": False},
        },
        "model": state,
        "task_state": {"dictionaries": [fake_fairseq()]},
        "args": None,
        "optimizer_history": [{"criterion_name": "HubertCriterion", "num_updates": 400000}],
    }
    torch.save(ckpt, tmp_path / "hubert_base_ls960.pt")
    for n in ("fairseq.data.dictionary", "fairseq.data", "fairseq"):
        del sys.modules[n]
    out = convert_checkpoint(tmp_path / "hubert_base_ls960.pt", "fairseq", tmp_path / "enc")
    converted = assert_same_states(enc, out)
    prov = read_provenance(out)
    assert prov["source_format"] == "fairseq"
    assert (
        prov["source_sha256"]
        == __import__("hashlib").sha256((tmp_path / "hubert_base_ls960.pt").read_bytes()).hexdigest()
    )
    assert prov["source"] == str((tmp_path / "hubert_base_ls960.pt").resolve())
    assert {"label_embs_concat", "final_proj.weight", "final_proj.bias"} <= set(prov["dropped_keys"])
    assert converted.model.config.layerdrop == 0.0


def hubert_checkpoint_with_head(path, enc, units=8, final_dim=16, symbols=None, seed=0):
    """An s3prl converted HuBERT container with its pre-training head (final_proj + label_embs_concat for
    fairseq's 4 special symbols and `units` units) and, optionally, its label dictionary; dropout off."""
    g = torch.Generator().manual_seed(seed)
    state = fairseq_state(enc)
    state["label_embs_concat"] = torch.randn(units + 4, final_dim, generator=g)
    state["final_proj.weight"] = torch.randn(final_dim, enc.hidden_size, generator=g)
    state["final_proj.bias"] = torch.randn(final_dim, generator=g)
    off = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, dropout_input=0.0, encoder_layerdrop=0.0)
    ckpt = {
        "task_cfg": {"normalize": False, "labels": ["km"]},
        "model_cfg": {"_name": "hubert", **fairseq_cfg(enc, **off), "logit_temp": 0.1},
        "model_weight": state,
    }
    if symbols is not None:
        ckpt["dictionaries_symbols"] = [symbols]
    torch.save(ckpt, path)
    return state


def test_hubert_pretraining_head_is_kept_beside_the_encoder(tmp_path, fake_fairseq, capsys):
    from transformers import AutoModel

    from speechft.cli import main
    from speechft.encoders.pretraining_heads import HEADS_DIR, read_pretraining_heads

    enc = tiny_encoder("hubert", seed=3)
    symbols = ["<s>", "<pad>", "</s>", "<unk>", "2", "0", "1"]
    state = hubert_checkpoint_with_head(tmp_path / "hubert.pt", enc, units=3, symbols=symbols)
    out = convert_checkpoint(tmp_path / "hubert.pt", "s3prl", tmp_path / "enc")
    assert_same_states(enc, out)
    heads = read_pretraining_heads(out)
    for k in ("final_proj.weight", "final_proj.bias", "label_embs_concat"):
        assert torch.equal(heads.tensors[k], state[k]), k
    assert heads.info["units"] == 3 and heads.info["rows"] == 7 and heads.info["symbols"] == symbols
    prov = read_provenance(out)
    assert prov["pretraining_heads"]["sha256"] == heads.sha256 and prov["pretraining_heads"]["units"] == 3
    # outside the encoder: not in model.safetensors, nothing extra for transformers to load
    assert not any("final_proj" in k or "label_embs" in k for k in load_encoder(out).model.state_dict())
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    model, info = AutoModel.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    # a fairseq original: the dictionary comes from the pickled task state (4 symbols for 7 rows: ignored,
    # fairseq's own layout assumed)
    ckpt = torch.load(tmp_path / "hubert.pt")
    torch.save(
        {
            "cfg": {"model": ckpt["model_cfg"], "task": {"normalize": False}},
            "model": ckpt["model_weight"],
            "task_state": {"dictionaries": [fake_fairseq()]},
        },
        tmp_path / "fairseq.pt",
    )
    for n in ("fairseq.data.dictionary", "fairseq.data", "fairseq"):
        del sys.modules[n]
    out2 = convert_checkpoint(tmp_path / "fairseq.pt", "fairseq", tmp_path / "enc2")
    info = read_pretraining_heads(out2).info
    assert info["symbols"] == ["<s>", "<pad>", "</s>", "<unk>", "0", "1", "2"]
    assert "4 symbols" in info["dictionary_note"]
    argv = ["encoder", "convert", "--from", "s3prl", str(tmp_path / "hubert.pt"), "--out", str(tmp_path / "enc3")]
    assert main(argv) == 0
    assert "kept its pre-training head beside the encoder (pretraining_heads/: 3 units" in capsys.readouterr().out
    # a tampered head is refused with one line
    (out / HEADS_DIR / "heads.safetensors").write_bytes(b"x" * 16)
    with pytest.raises(SpeechFTError, match="sha256 differs"):
        read_pretraining_heads(out)


def test_incomplete_or_foreign_head_is_not_kept(tmp_path, capsys):
    enc = tiny_encoder("hubert", seed=3)
    state = fairseq_state(enc)
    state["label_embs_concat"] = torch.randn(12, 16)  # no final_proj: nothing to continue
    torch.save({"model_cfg": {"_name": "hubert", **fairseq_cfg(enc)}, "model_weight": state}, tmp_path / "a.pt")
    out = convert_checkpoint(tmp_path / "a.pt", "s3prl", tmp_path / "enc")
    assert not (out / "pretraining_heads").exists() and "pretraining_heads" not in read_provenance(out)
    assert "pre-training head is not kept (no final_proj" in capsys.readouterr().err


def test_fairseq_wav2vec2_with_args_namespace_and_group_norm(tmp_path):
    enc = tiny_encoder("wav2vec2", seed=4, feat_extract_norm="group")
    state = fairseq_state(enc)
    assert "feature_extractor.conv_layers.0.2.weight" in state  # GroupNorm on the first conv only
    assert "feature_extractor.conv_layers.1.2.weight" not in state
    state["quantizer.vars"] = torch.randn(1, 640, 8)
    state["project_q.weight"] = torch.randn(16, 8)
    args = argparse.Namespace(arch="wav2vec2", normalize=False, **fairseq_cfg(enc))
    torch.save({"args": args, "model": state, "extra_state": {"epoch": 3}}, tmp_path / "wav2vec_small.pt")
    out = convert_checkpoint(tmp_path / "wav2vec_small.pt", "fairseq", tmp_path / "enc")
    assert_same_states(enc, out)
    assert read_provenance(out)["normalize_waveform"] is False


def test_fairseq_finetuned_ctc_model_keeps_the_encoder_only(tmp_path):
    enc = tiny_encoder("wav2vec2", seed=5)
    inner = {f"w2v_encoder.w2v_model.{k}": v for k, v in fairseq_state(enc).items()}
    inner["w2v_encoder.proj.weight"], inner["w2v_encoder.proj.bias"] = torch.randn(32, 32), torch.randn(32)
    cfg = {
        "model": {
            "_name": "wav2vec_ctc",
            "w2v_args": {"model": {"_name": "wav2vec2", **fairseq_cfg(enc)}, "task": {"normalize": True}},
        }
    }
    torch.save({"cfg": cfg, "model": inner}, tmp_path / "wav2vec2_ctc.pt")
    out = convert_checkpoint(tmp_path / "wav2vec2_ctc.pt", "fairseq", tmp_path / "enc")
    prov = read_provenance(out)
    assert prov["source_format"] == "fairseq-finetuned" and prov["normalize_waveform"] is True
    assert "w2v_encoder.proj.weight" in prov["dropped_keys"]
    # normalize_waveform changes the forward pass; compare on the raw model
    converted = load_encoder(out)
    for (k, a), b in zip(enc.model.state_dict().items(), converted.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_unilm_wavlm_checkpoint(tmp_path):
    enc = tiny_encoder("wavlm", seed=6)
    state = fairseq_state(enc)
    assert "encoder.layers.0.self_attn.relative_attention_bias.weight" in state
    cfg = fairseq_cfg(
        enc,
        num_buckets=enc.model.config.num_buckets,
        max_distance=enc.model.config.max_bucket_distance,
        relative_position_embedding=True,
        gru_rel_pos=True,
        normalize=False,
    )
    torch.save({"cfg": cfg, "model": state}, tmp_path / "WavLM-Base+.pt")
    out = convert_checkpoint(tmp_path / "WavLM-Base+.pt", "s3prl", tmp_path / "enc")
    assert_same_states(enc, out)
    assert read_provenance(out)["source_format"] == "unilm-wavlm"


def test_s3prl_converted_container(tmp_path):
    enc = tiny_encoder("hubert", seed=7)
    state = fairseq_state(enc)
    state["label_embs_concat"] = torch.randn(504, 16)
    ckpt = {
        "task_cfg": {"normalize": False, "sample_rate": 16000, "labels": ["km"]},
        "model_cfg": {"_name": "hubert", **fairseq_cfg(enc)},
        "model_weight": state,
        "dictionaries_symbols": [["<s>", "0", "1"]],
    }
    torch.save(ckpt, tmp_path / "hubert_base_ls960.pt")
    with pytest.raises(SpeechFTError, match="pass --from s3prl"):
        convert_checkpoint(tmp_path / "hubert_base_ls960.pt", "fairseq", tmp_path / "bad")
    out = convert_checkpoint(tmp_path / "hubert_base_ls960.pt", "s3prl", tmp_path / "enc")
    assert_same_states(enc, out)
    assert read_provenance(out)["source_format"] == "s3prl-converted"


def test_speechft_reference_merged_checkpoint(tmp_path):
    """nervjack2/Speech-FT writes merged_model.pt (the s3prl container with merged weights) and
    config.yaml (the merge recipe) into one folder."""
    enc = tiny_encoder("wav2vec2", seed=8)
    ckpt = {
        "task_cfg": {"normalize": False},
        "model_cfg": {"_name": "wav2vec2", **fairseq_cfg(enc)},
        "model_weight": fairseq_state(enc),
    }
    (tmp_path / "merged").mkdir()
    torch.save(ckpt, tmp_path / "merged" / "merged_model.pt")
    (tmp_path / "merged" / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "base_model_name": "wav2vec2",
                "merge_method": "linear",
                "alpha": 0.25,
                "finetune_model_paths": ["/exp/asr_ted/dev-best.ckpt"],
                "output_dir": "/exp/merged",
            }
        )
    )
    out = convert_checkpoint(tmp_path / "merged" / "merged_model.pt", "s3prl", tmp_path / "enc")
    assert_same_states(enc, out)
    prov = read_provenance(out)
    assert prov["source_format"].startswith("speechft-reference-merged")
    assert prov["reference_merge_config"]["alpha"] == 0.25


def downstream_ckpt(enc, upstream="hubert"):
    return {
        "Downstream": {"projector.weight": torch.randn(4, 32)},
        "Optimizer": {"state": {}, "param_groups": []},
        "Step": 50000,
        "Epoch": 3,
        "Config": {"runner": {"total_steps": 50000}},
        "Args": argparse.Namespace(upstream=upstream, upstream_trainable=True, expdir="/exp/asr_ted"),
        "Upstream": {f"model.{k}": v for k, v in fairseq_state(enc).items()},
    }


def test_s3prl_downstream_upstream_state_with_like(tmp_path, tiny_encoder_dir):
    pretrained = tiny_encoder_dir("hubert", seed=9)
    enc = tiny_encoder("hubert", seed=10)  # "fine-tuned": other weights, same architecture
    torch.save(downstream_ckpt(enc), tmp_path / "dev-best.ckpt")
    out = convert_checkpoint(tmp_path / "dev-best.ckpt", "s3prl", tmp_path / "enc", like=pretrained)
    assert_same_states(enc, out)
    prov = read_provenance(out)
    assert prov["source_format"] == "s3prl-downstream" and prov["s3prl_step"] == 50000
    assert prov["config_from"].startswith("--like")


def test_s3prl_downstream_without_config_infers_standard_architecture(tmp_path, capsys):
    enc = tiny_encoder("hubert", seed=11, feat_extract_norm="group", **STD_FRONTEND)
    torch.save(downstream_ckpt(enc), tmp_path / "states-1000.ckpt")
    out = convert_checkpoint(tmp_path / "states-1000.ckpt", "s3prl", tmp_path / "enc")
    assert_same_states(enc, out)
    assert "weight shapes" in read_provenance(out)["config_from"]
    assert "--like" in capsys.readouterr().err


def test_s3prl_downstream_nonstandard_front_end_asks_for_like(tmp_path):
    torch.save(downstream_ckpt(tiny_encoder("hubert")), tmp_path / "states-1000.ckpt")
    with pytest.raises(SpeechFTError, match="--like"):
        convert_checkpoint(tmp_path / "states-1000.ckpt", "s3prl", tmp_path / "enc")
    assert not (tmp_path / "enc").exists()


def test_frozen_upstream_downstream_checkpoint_is_explained(tmp_path):
    ckpt = downstream_ckpt(tiny_encoder("hubert"))
    del ckpt["Upstream"]
    torch.save(ckpt, tmp_path / "dev-best.ckpt")
    with pytest.raises(SpeechFTError, match="no 'Upstream' weights"):
        convert_checkpoint(tmp_path / "dev-best.ckpt", "s3prl", tmp_path / "enc")


def test_decoar2_s3prl_checkpoint(tmp_path):
    # the file has no config: heads are read as hidden/64, as in the released 768/12 model
    enc = tiny_encoder("decoar2", seed=12, hidden_size=128, num_attention_heads=2)
    state = fairseq_state(enc)
    assert "post_extract_proj.weight" in state and "encoder.layers.1.fc2.weight" in state
    state["decoder.proj.weight"] = torch.randn(80, 32)  # pre-training parts real files may carry
    torch.save({"model": state}, tmp_path / "checkpoint_decoar2.pt")
    out = convert_checkpoint(tmp_path / "checkpoint_decoar2.pt", "s3prl", tmp_path / "enc")
    assert_same_states(enc, out)
    assert read_provenance(out)["dropped_keys"] == ["decoder.proj.weight"]
    # s3prl's front end (its checkpoints store none): Hamming window, every second 10 ms frame
    config = load_encoder(out).model.config
    assert (config.window_type, config.frame_subsampling) == ("hamming", 2)


def test_unknown_and_missing_keys_are_one_line_errors(tmp_path):
    enc = tiny_encoder("hubert")
    state = fairseq_state(enc)
    cfg = {"model": {"_name": "hubert", **fairseq_cfg(enc)}, "task": {}}
    extra = dict(state, **{"encoder.layers.0.adapter.weight": torch.zeros(3)})
    torch.save({"cfg": cfg, "model": extra}, tmp_path / "extra.pt")
    with pytest.raises(SpeechFTError, match=r"no place in a hubert encoder: encoder\.layers\.0\.adapter\.weight") as e:
        convert_checkpoint(tmp_path / "extra.pt", "fairseq", tmp_path / "a")
    assert "\n" not in str(e.value)
    partial = {k: v for k, v in state.items() if "fc2" not in k}
    torch.save({"cfg": cfg, "model": partial}, tmp_path / "partial.pt")
    with pytest.raises(
        SpeechFTError,
        match=r"missing 4 weight\(s\) a hubert encoder needs: encoder\.layers\.0\.feed_forward\.output_dense",
    ):
        convert_checkpoint(tmp_path / "partial.pt", "fairseq", tmp_path / "b")
    wrong = dict(cfg, model={**cfg["model"], "encoder_ffn_embed_dim": 48})
    torch.save({"cfg": wrong, "model": state}, tmp_path / "wrong.pt")
    with pytest.raises(SpeechFTError, match="does not match its weights"):
        convert_checkpoint(tmp_path / "wrong.pt", "fairseq", tmp_path / "c")
    nan = dict(state)
    nan["encoder.layers.0.fc1.weight"] = torch.full_like(nan["encoder.layers.0.fc1.weight"], float("nan"))
    torch.save({"cfg": cfg, "model": nan}, tmp_path / "nan.pt")
    with pytest.raises(SpeechFTError, match="NaN"):
        convert_checkpoint(tmp_path / "nan.pt", "fairseq", tmp_path / "d")
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_wrong_family_is_refused(tmp_path):
    enc = tiny_encoder("wavlm")
    torch.save({"cfg": fairseq_cfg(enc), "model": fairseq_state(enc)}, tmp_path / "w.pt")
    with pytest.raises(SpeechFTError, match="wavlm model but --family says hubert"):
        convert_checkpoint(tmp_path / "w.pt", "s3prl", tmp_path / "enc", family="hubert")


class Hostile:
    """Unpickling this would create a directory: the converter must refuse before that."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_hostile_pickle_is_refused_without_running(tmp_path):
    enc = tiny_encoder("hubert")
    marker = tmp_path / "pwned"
    torch.save(
        {"cfg": {"model": fairseq_cfg(enc)}, "model": fairseq_state(enc), "extra": Hostile(str(marker))},
        tmp_path / "evil.pt",
    )
    with pytest.raises(SpeechFTError, match="refused to unpickle .*mkdir") as e:
        convert_checkpoint(tmp_path / "evil.pt", "fairseq", tmp_path / "enc")
    assert "\n" not in str(e.value)
    assert not marker.exists() and not (tmp_path / "enc").exists()


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(SpeechFTError, match="not a readable PyTorch checkpoint"):
        convert_checkpoint(tmp_path / "x.pt", "fairseq", tmp_path / "enc")
    with pytest.raises(SpeechFTError, match="not found"):
        convert_checkpoint(tmp_path / "missing.pt", "fairseq", tmp_path / "enc")


def test_conv_layer_spec_is_parsed_without_eval():
    assert (
        parse_conv_layers("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2")
        == [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    )
    with pytest.raises(SpeechFTError):
        parse_conv_layers("__import__('os').system('true')")


def test_cli_convert(tmp_path, capsys):
    from speechft.cli import main

    enc = tiny_encoder("hubert", seed=13)
    torch.save(
        {"task_cfg": {}, "model_cfg": {"_name": "hubert", **fairseq_cfg(enc)}, "model_weight": fairseq_state(enc)},
        tmp_path / "c.pt",
    )
    assert main(["encoder", "convert", "--from", "s3prl", str(tmp_path / "c.pt"), "--out", str(tmp_path / "o")]) == 0
    assert str(tmp_path / "o") in capsys.readouterr().out
    assert main(["encoder", "convert", "--from", "s3prl", str(tmp_path / "c.pt"), "--out", str(tmp_path / "o")]) == 2
    assert "already exists" in capsys.readouterr().err
