"""Hugging Face Hub ids as encoders (speechft.encoders.hub), against a Hub cache built here in huggingface_hub's
own layout (models--ORG--NAME/blobs/<sha256>, snapshots/<commit>/<file> -> ../../blobs/<sha256>, refs/main),
with HF_HUB_OFFLINE=1: nothing here touches the network."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import cli, tone, weights

from speechft.encoders import load_encoder, resolve_encoder
from speechft.encoders.hub import converted_dir
from speechft.errors import SpeechFTError

FAST = ["--steps", "2", "--quiet", "--set", "data.batch_size=4", "eval.log_every=1", "head.proj_dim=16",
        "head.lstm_layers=0"]  # fmt: skip
EVAL_FAST = ["--lrs", "0.01", "--epochs", "1", "--min-steps", "0", "--no-cache", "--quiet"]


@dataclass
class HubCache:
    root: Path
    commits: dict[str, str] = field(default_factory=dict)
    # repo -> (the model's state dict as built, the prefix its encoder sits under in the file)
    states: dict[str, tuple[dict, str]] = field(default_factory=dict)
    marker: Path | None = None


def publish(cache: HubCache, repo: str, folder: Path, ref: str = "main") -> str:
    """Put `folder`'s files into the cache as the Hub would: blobs by content, a snapshot of symlinks, a ref."""
    commit = hashlib.sha1(f"{repo}@{ref}".encode()).hexdigest()
    storage = cache.root / f"models--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (storage / "blobs").mkdir(exist_ok=True)
    for f in sorted(folder.iterdir()):
        data = f.read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    cache.commits[f"{repo}@{ref}"] = commit
    return commit


def _legacy_names(state: dict) -> dict:
    """A state dict under the names 2021-era checkpoints use for the weight-normalised positional conv."""
    out = {}
    for k, v in state.items():
        k = k.replace(".parametrizations.weight.original0", ".weight_g").replace(
            ".parametrizations.weight.original1", ".weight_v"
        )
        out[k] = v
    return out


class Hostile:
    """Pickles as a call of os.system: loading it with plain pickle runs `touch MARKER`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> HubCache:
    from transformers import (
        Data2VecAudioForCTC,
        HubertForCTC,
        HubertModel,
        Wav2Vec2ForPreTraining,
        WavLMModel,
        WhisperForConditionalGeneration,
    )

    from speechft.encoders import family_class

    work = tmp_path_factory.mktemp("hub_models")
    cache = HubCache(tmp_path_factory.mktemp("hf") / "hub")
    torch.manual_seed(0)

    def saved(repo, model, prefix, pickled=False, legacy=False, **kw):
        folder = work / repo.replace("/", "__")
        if pickled:  # an older repository: config.json + a weights-only pytorch_model.bin
            folder.mkdir()
            model.config.save_pretrained(folder)
            state = model.state_dict()
            torch.save(_legacy_names(state) if legacy else state, folder / "pytorch_model.bin")
        else:
            model.save_pretrained(folder, **kw)
        (folder / "preprocessor_config.json").write_text(json.dumps({"do_normalize": repo.endswith("wavlm")}))
        cache.states[repo] = ({k: v.detach().clone() for k, v in model.state_dict().items()}, prefix)
        publish(cache, repo, folder)

    cfg = {f: family_class(f).tiny_config() for f in ("hubert", "wav2vec2", "wavlm", "data2vec", "whisper")}
    saved("test-org/tiny-hubert", HubertModel(cfg["hubert"]), "")
    saved("test-org/tiny-hubert-ft", HubertForCTC(family_class("hubert").tiny_config(vocab_size=8)), "hubert.")
    # Sharded safetensors (model-0000k-of-0000n.safetensors + index), with the pre-training quantizer.
    saved("test-org/tiny-wav2vec2", Wav2Vec2ForPreTraining(cfg["wav2vec2"]), "wav2vec2.", max_shard_size="100KB")
    saved("test-org/tiny-wavlm", WavLMModel(cfg["wavlm"]), "", pickled=True, legacy=True)
    saved("test-org/tiny-data2vec-ft", Data2VecAudioForCTC(cfg["data2vec"]), "data2vec_audio.", pickled=True)
    saved("openai-test/tiny-whisper", WhisperForConditionalGeneration(cfg["whisper"]), "model.encoder.")

    evil = work / "evil"
    evil.mkdir()
    HubertModel(cfg["hubert"]).config.save_pretrained(evil)
    cache.marker = tmp_path_factory.mktemp("marker") / "pickle-ran"
    torch.save({"feature_projection.projection.weight": Hostile(cache.marker)}, evil / "pytorch_model.bin")
    publish(cache, "test-org/evil", evil)

    tf_only = work / "tf"
    tf_only.mkdir()
    HubertModel(cfg["hubert"]).config.save_pretrained(tf_only)
    (tf_only / "tf_model.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    publish(cache, "test-org/tf-only", tf_only)
    return cache


@pytest.fixture
def hub(hub_cache, monkeypatch, tmp_path) -> HubCache:
    """The test cache as the Hub cache, offline, and a fresh speechft cache for the converted folders."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache.root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads both variables once, when imported (this process imported it long ago): its own
    # copies are what it consults. A fresh process reading the variables is test_environment_in_a_fresh_process.
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub_cache.root))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("SPEECHFT_CACHE", str(tmp_path / "speechft-cache"))
    return hub_cache


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("speechft: error: "), err
    return err


FAMILY_REPOS = {
    "hubert": "test-org/tiny-hubert",
    "wav2vec2": "test-org/tiny-wav2vec2",
    "wavlm": "test-org/tiny-wavlm",
    "data2vec": "test-org/tiny-data2vec-ft",
    "whisper": "openai-test/tiny-whisper",
}


@pytest.mark.parametrize("family", sorted(FAMILY_REPOS))
def test_every_family_from_the_hub_cache(hub, capsys, family):
    repo = FAMILY_REPOS[family]
    assert cli("encoder", "info", repo) == 0
    out = capsys.readouterr().out
    assert f"family: {family}\n" in out
    folder = resolve_encoder(repo)
    commit = hub.commits[f"{repo}@main"]
    assert folder == converted_dir(repo, commit)
    # Every encoder tensor is the one in the repository, under the encoder's own name (prefix stripped,
    # legacy weight_g/weight_v renamed), and nothing else is in the folder.
    state, prefix = hub.states[repo]
    got = weights(folder)
    enc = load_encoder(folder)
    assert set(got) == set(enc.model.state_dict())
    for k, t in got.items():
        torch.testing.assert_close(t, state[prefix + k].float(), rtol=0, atol=0)
    prov = enc.provenance
    assert prov["hub"]["repo"] == repo and prov["hub"]["commit"] == commit and prov["hub"]["revision"] == "main"
    snapshot = hub.root / f"models--{repo.replace('/', '--')}" / "snapshots" / commit
    files = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in snapshot.iterdir()
        if p.name != "generation_config.json"  # Whisper's: not an encoder's, never fetched
    }
    assert prov["hub"]["files_sha256"] == files  # every file read, hashed
    assert prov["hub"]["weights_from"] == ("pickle (torch.load weights_only=True)" if family in ("wavlm", "data2vec")
                                          else "safetensors")  # fmt: skip
    if family == "whisper":
        assert prov["hub"]["dropped"]["decoder"] and "normalize_waveform" not in prov
    else:
        assert prov["normalize_waveform"] is (family == "wavlm")  # from preprocessor_config.json's do_normalize
    if family == "wav2vec2":
        assert {k.split(".")[0] for k in prov["hub"]["dropped"]["pretraining_only"]} == {
            "quantizer", "project_hid", "project_q"}  # fmt: skip


def test_a_ctc_checkpoint_gives_its_encoder_and_says_so(hub, capsys):
    repo = "test-org/tiny-hubert-ft"
    assert cli("encoder", "info", repo) == 0
    notes = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("speechft: note:")]
    assert len(notes) == 1 and "HubertForCTC" in notes[0] and "CTC head (lm_head)" in notes[0], notes
    enc = load_encoder(repo)
    assert enc.provenance["hub"]["dropped"]["head"] == ["lm_head.bias", "lm_head.weight"]
    assert enc.provenance["hub"]["note"] in notes[0]
    # The encoder computes what HubertForCTC's own encoder computes.
    from transformers import HubertForCTC

    state, _ = hub.states[repo]
    ref = HubertForCTC(enc.model.config)
    ref.load_state_dict(state)
    wav = torch.from_numpy(tone(440.0, 0.5))[None]
    with torch.no_grad():
        theirs = ref.eval().hubert(wav, output_hidden_states=True).hidden_states
        ours = enc(wav).hidden_states
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_converted_once_then_reused_without_the_hub(hub, monkeypatch, capsys):
    import huggingface_hub

    from speechft.encoders import hub as hub_module

    repo = "test-org/tiny-hubert-ft"
    first = resolve_encoder(repo)
    stamp = (first / "speechft.json").stat().st_mtime_ns
    capsys.readouterr()

    def no_conversion(*a, **k):
        raise AssertionError("converted twice")

    def no_download(*a, **k):
        assert k.get("local_files_only"), "went online"
        return real(*a, **k)

    real = huggingface_hub.snapshot_download
    monkeypatch.setattr(hub_module, "convert_snapshot", no_conversion)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    commit = hub.commits[f"{repo}@main"]
    assert resolve_encoder(repo) == first == resolve_encoder(f"{repo}@{commit}")
    assert (first / "speechft.json").stat().st_mtime_ns == stamp
    assert "note" not in capsys.readouterr().err  # said once, when converted; speechft.json keeps it
    # A pinned commit that is converted needs not even the Hub cache.
    monkeypatch.setattr(huggingface_hub, "snapshot_download", None)
    assert resolve_encoder(f"{repo}@{commit}") == first


def test_first_uses_at_once_convert_once(hub, monkeypatch):
    """Two processes (here: threads, the lock is per open file) asking for one new id: one converts, the other
    waits and reuses its folder; a temp folder a killed conversion left behind is cleared."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from speechft.encoders import hub as hub_module
    from speechft.io_utils import _host

    repo, calls, real = "test-org/tiny-hubert", [], hub_module.convert_snapshot
    out = converted_dir(repo, hub.commits[f"{repo}@main"])
    killed = out.with_name(f".{out.name}.999999999@{_host()}.abc.tmp")  # no such process
    killed.mkdir(parents=True)

    def slow(*a, **k):
        calls.append(1)
        time.sleep(0.3)
        return real(*a, **k)

    monkeypatch.setattr(hub_module, "convert_snapshot", slow)
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(resolve_encoder, [repo, repo]))
    assert got == [out, out] and len(calls) == 1 and load_encoder(out).family == "hubert"
    assert not killed.exists()


def test_a_revision(hub, capsys):
    repo = "test-org/tiny-hubert"
    commit = hub.commits[f"{repo}@main"]
    assert cli("encoder", "info", f"{repo}@{commit}") == 0
    assert load_encoder(f"{repo}@{commit}").provenance["hub"]["revision"] == commit
    assert resolve_encoder(f"{repo}@main") == converted_dir(repo, commit)
    capsys.readouterr()
    assert cli("encoder", "info", f"{repo}@v9") == 2
    err = one_error_line(capsys)
    for needle in (f"'{repo}@v9'", str(hub.root), "not revision 'v9'", f"main -> {commit}", "HF_HUB_CACHE"):
        assert needle in err, (needle, err)


def test_an_unknown_id_offline_is_one_line_naming_the_id_and_the_cache(hub, capsys):
    assert cli("encoder", "info", "test-org/no-such-model") == 2
    err = one_error_line(capsys)
    for needle in ("'test-org/no-such-model'", str(hub.root), "HF_HUB_OFFLINE", "hf download test-org/no-such-model"):
        assert needle in err, (needle, err)
    assert not (Path(os.environ["SPEECHFT_CACHE"]) / "hub").exists()


def test_a_pickle_that_calls_a_function_is_refused_and_nothing_runs(hub, capsys, tmp_path, cls_task):
    out = tmp_path / "ft"
    assert cli("finetune", "--encoder", "test-org/evil", "--task", cls_task, "--out", out, *FAST) == 2
    err = one_error_line(capsys)
    assert "refused to unpickle 'posix.system'" in err and "pytorch_model.bin" in err, err
    assert not hub.marker.exists() and not out.exists()
    hub_dir = Path(os.environ["SPEECHFT_CACHE"]) / "hub" / "test-org--evil"
    assert not any(p.name.endswith(".tmp") or (p / "config.json").exists() for p in hub_dir.iterdir())
    # The file really is hostile: plain unpickling runs it.
    snapshot = hub.root / "models--test-org--evil" / "snapshots" / hub.commits["test-org/evil@main"]
    torch.load(snapshot / "pytorch_model.bin", weights_only=False)
    assert hub.marker.exists()
    hub.marker.unlink()


def test_weights_in_another_format_are_refused(hub, capsys, monkeypatch):
    assert cli("encoder", "info", "test-org/tf-only") == 2
    err = one_error_line(capsys)
    assert "no model.safetensors or pytorch_model.bin (it has tf_model.h5)" in err and str(hub.root) in err, err
    # Online, the repository itself has nothing else: refused, naming what it has.
    import huggingface_hub
    import huggingface_hub.constants as hf_constants

    real = huggingface_hub.snapshot_download

    def from_the_hub(*a, **k):  # "the Hub": the cache, as if just downloaded
        return real(*a, **{**k, "local_files_only": True})

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", from_the_hub)
    assert cli("encoder", "info", "test-org/tf-only") == 2
    err = one_error_line(capsys)
    assert "test-org/tf-only (commit " in err and "no model.safetensors or pytorch_model.bin (found tf_model.h5)" in err


def test_a_local_folder_wins_over_a_hub_id(hub, monkeypatch, tmp_path, tiny_encoder_dir):
    local = tiny_encoder_dir("wavlm", name="local")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test-org").mkdir()
    local.rename(tmp_path / "test-org" / "tiny-hubert")
    assert resolve_encoder("test-org/tiny-hubert") == Path("test-org/tiny-hubert")
    assert load_encoder("test-org/tiny-hubert").family == "wavlm"


def test_finetune_merge_evaluate_with_hub_ids(hub, capsys, tmp_path, cls_task):
    repo = "test-org/tiny-hubert"
    run = tmp_path / "ft"
    moving = ["schedule.warmup=0", "--method", "regular"]  # (more --set) no frozen phase, no warm-up: it moves
    assert cli("finetune", "--encoder", repo, "--task", cls_task, "--out", run, *FAST, *moving) == 0
    pre = converted_dir(repo, hub.commits[f"{repo}@main"])
    parent = json.loads((run / "speechft.json").read_text())["parents"][0]
    assert parent["path"] == str(pre) and parent["weights_sha256"] == json.loads(
        (pre / "speechft.json").read_text())["weights_sha256"]  # fmt: skip
    assert parent["source"] == f"Hugging Face Hub {repo} @ {hub.commits[repo + '@main']}"
    assert "hub" not in json.loads((run / "speechft.json").read_text())  # how theta0 was made is theta0's alone
    merged = tmp_path / "merged"
    assert cli("merge", "--pretrained", repo, "--finetuned", run, "--alpha", "0.25", "--out", merged) == 0
    w0, w1, wm = weights(pre), weights(run), weights(merged)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    for k in w0:
        if k.startswith("encoder.layers.0.attention.q_proj"):
            torch.testing.assert_close(wm[k], w0[k] + 0.25 * (w1[k] - w0[k]))
    ev = tmp_path / "eval"
    assert cli("evaluate", "--encoder", repo, merged, "--task", cls_task, "--out", ev, *EVAL_FAST) == 0
    results = json.loads((ev / "results.json").read_text())
    assert [m["name"] for m in results["models"]] == [repo, "merged"]
    assert results["models"][0]["encoder"] == str(pre)
    # sweep, analyze and doctor take the id as well.
    sw = tmp_path / "sweep"
    assert cli("sweep", "--pretrained", repo, "--finetuned", run, "--task", cls_task, "--alphas", "0", "1",
               "--cka-utterances", "4", "--out", sw, "--quiet") == 0  # fmt: skip
    assert [r["alpha"] for r in json.loads((sw / "sweep.json").read_text())["results"]] == [0.0, 1.0]
    an = tmp_path / "analysis"
    assert cli("analyze", "--pretrained", repo, "--models", run, "--task", cls_task, "--out", an, "--quiet") == 0
    assert json.loads((an / "analysis.json").read_text())["pretrained"]["path"] == str(pre)
    assert cli("doctor", repo, "--no-audio") == 0
    assert f"[ok] {pre}: family hubert" in capsys.readouterr().out
    # The output rule sees the converted folder: an output inside it is refused, before anything is written.
    capsys.readouterr()
    assert cli("merge", "--pretrained", repo, "--finetuned", run, "--out", pre / "x") == 2
    assert "lies inside the input --pretrained" in one_error_line(capsys) and not (pre / "x").exists()


def test_export_whisper_from_hub_ids(hub, capsys, tmp_path):
    """openai/whisper-*'s encoder, converted, put back together with its own decoder: the original model."""
    repo = "openai-test/tiny-whisper"
    out = tmp_path / "whisper"
    assert cli("encoder", "export-whisper", repo, "--decoder-from", repo, "--out", out) == 0
    state, _ = hub.states[repo]
    got = weights(out)
    assert set(got) == set(state) - {"proj_out.weight"}  # tied to the token embedding, as transformers saves it
    for k, t in got.items():
        torch.testing.assert_close(t, state[k], rtol=0, atol=0)
    assert (out / "generation_config.json").is_file()
    capsys.readouterr()
    assert cli("encoder", "export-whisper", repo, "--decoder-from", "openai-test/absent", "--out", tmp_path / "x") == 2
    assert "'openai-test/absent'" in one_error_line(capsys)


@pytest.mark.slow
def test_environment_in_a_fresh_process(hub_cache, tmp_path):
    """HF_HUB_CACHE and HF_HUB_OFFLINE are read by huggingface_hub itself in a process that starts with them."""
    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache.root), "HF_HUB_OFFLINE": "1",
           "SPEECHFT_CACHE": str(tmp_path / "c"), "PYTHONPATH": str(Path(__file__).parents[1])}  # fmt: skip
    env.pop("HF_HOME", None)
    code = (
        "from speechft.cli import main; "
        "print('rc', main(['encoder', 'info', 'test-org/tiny-wavlm']), main(['encoder', 'info', 'test-org/absent']))"
    )
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert "family: wavlm" in p.stdout and "rc 0 2" in p.stdout, p.stderr[-2000:]
    assert str(hub_cache.root) in p.stderr and "HF_HUB_OFFLINE" in p.stderr, p.stderr


def test_a_gated_repository_without_a_token(hub, monkeypatch):
    """Online, a gated repository answers 401/403 without an accepted token: one line saying what to do."""
    import importlib

    import huggingface_hub
    import huggingface_hub.constants as hf_constants

    http = importlib.import_module(huggingface_hub.errors.Response.__module__)  # the HTTP client it was built on

    def gated(*a, **k):
        if k.get("local_files_only"):
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        response = http.Response(401, request=http.Request("GET", "https://huggingface.co/api/models/gated-org/model"))
        raise huggingface_hub.errors.GatedRepoError("gated", response=response)

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    with pytest.raises(SpeechFTError) as e:
        resolve_encoder("gated-org/model")
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and "'gated-org/model' is a gated" in msg and "HF_TOKEN" in msg, msg
