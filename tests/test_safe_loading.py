"""No file a user is handed can run code: pickles are refused, YAML is safe-loaded, remote
code in an encoder folder is never imported, task paths stay inside their folder.

Every hostile file here would create a marker directory if it were executed (`Hostile`);
each test feeds one to a command that reads that kind of file and asserts the command is
refused with one line and that the marker never appears. `test_the_code_has_no_unsafe_loader`
keeps it true: it parses every module and fails on an unsafe loading call.
"""

from __future__ import annotations

import ast
import io
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli

import speechft
from speechft.errors import SpeechFTError


class Hostile:
    """Unpickling this runs os.mkdir(target)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.mkdir, (self.target,))


class HostileEval:
    """Unpickling this runs eval(...), which would create the marker."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (eval, (f"__import__('os').mkdir({self.target!r})",))


def hostile_bytes(marker: Path, how: str) -> bytes:
    """A weights-looking checkpoint with a hostile object inside, in several container formats."""
    payload = {"model": {"encoder.layer_norm.weight": torch.ones(4)}, "extra": Hostile(marker)}
    buf = io.BytesIO()
    if how == "zip":
        torch.save(payload, buf)
    elif how == "legacy":
        torch.save(payload, buf, _use_new_zipfile_serialization=False)
    elif how == "raw_pickle":
        pickle.dump(payload, buf)
    elif how == "eval":
        torch.save({"model": {}, "cfg": HostileEval(marker)}, buf)
    return buf.getvalue()


def refused(capsys, rc, *needles):
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and "Traceback" not in err, (rc, err)
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture
def marker(tmp_path):
    m = tmp_path / "PWNED"
    yield m
    assert not m.exists(), "hostile code ran"


# ---- checkpoints read by `speechft encoder convert` (torch.load with weights_only=True) -----------------------
@pytest.mark.parametrize("how", ["zip", "legacy", "raw_pickle", "eval"])
def test_convert_refuses_hostile_checkpoints(tmp_path, capsys, marker, how):
    evil = tmp_path / "model.pt"
    evil.write_bytes(hostile_bytes(marker, how))
    out = tmp_path / "enc"
    for source in ("fairseq", "s3prl"):
        rc = cli("encoder", "convert", "--from", source, evil, "--out", out)
        err = refused(capsys, rc, str(evil))
        assert "refused to unpickle" in err or "not a readable PyTorch checkpoint" in err
        assert not out.exists()


def test_convert_refuses_a_hostile_like_checkpoint(tmp_path, capsys, marker):
    from test_convert import downstream_ckpt

    from speechft.encoders import tiny_encoder

    torch.save(downstream_ckpt(tiny_encoder("hubert", seed=1)), tmp_path / "dev-best.ckpt")
    evil = tmp_path / "pretrained.pt"
    evil.write_bytes(hostile_bytes(marker, "zip"))
    rc = cli(
        "encoder", "convert", "--from", "s3prl", tmp_path / "dev-best.ckpt", "--like", evil, "--out", tmp_path / "enc"
    )
    refused(capsys, rc, str(evil), "refused to unpickle", "mkdir")
    assert not (tmp_path / "enc").exists()


def test_a_pickle_named_safetensors_is_not_unpickled(tmp_path, capsys, marker):
    evil = tmp_path / "model.safetensors"
    evil.write_bytes(hostile_bytes(marker, "zip"))
    refused(
        capsys,
        cli("encoder", "convert", "--from", "fairseq", evil, "--out", tmp_path / "enc"),
        "not a readable safetensors file",
    )


# ---- encoder folders holding pickled weights: every command that loads an encoder ------------------------------
@pytest.fixture
def pickled_encoder(tiny_encoder_dir, marker):
    """A complete-looking hubert folder whose weights are a hostile pytorch_model.bin."""
    folder = tiny_encoder_dir("hubert", name="pickled")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(hostile_bytes(marker, "zip"))
    return folder


def test_encoder_commands_never_unpickle_pytorch_model_bin(
    tmp_path, capsys, pickled_encoder, tiny_encoder_dir, cls_task
):
    good = tiny_encoder_dir("hubert", seed=1)
    refused(capsys, cli("encoder", "info", pickled_encoder), "pytorch_model.bin", "never unpickles")
    refused(
        capsys,
        cli("evaluate", "--encoder", pickled_encoder, "--task", cls_task, "--out", tmp_path / "e", "--no-cache"),
        "never unpickles",
    )
    refused(
        capsys,
        cli("finetune", "--encoder", pickled_encoder, "--task", cls_task, "--out", tmp_path / "f", "--steps", "2"),
        "no model.safetensors",
    )
    refused(
        capsys,
        cli("merge", "--pretrained", good, "--finetuned", pickled_encoder, "--out", tmp_path / "m"),
        "pickled weights are not read",
    )
    refused(
        capsys,
        cli("analyze", "--pretrained", good, "--models", pickled_encoder, "--task", cls_task, "--out", tmp_path / "a"),
        str(pickled_encoder),
    )
    assert cli("doctor", pickled_encoder) == 1
    assert "never unpickles" in capsys.readouterr().out
    for name in ("e", "f", "m", "a"):
        assert not (tmp_path / name).exists()


def test_transformers_is_never_asked_to_read_a_pickle(tmp_path, pickled_encoder):
    """Even with a stray model.safetensors elsewhere, loading goes through safetensors only."""
    from speechft.encoders import load_encoder

    shutil.copy(pickled_encoder / "pytorch_model.bin", pickled_encoder / "model.pt")
    with pytest.raises(SpeechFTError, match="never unpickles"):
        load_encoder(pickled_encoder)


def test_remote_code_in_an_encoder_folder_is_never_imported(tmp_path, capsys, tiny_encoder_dir, cls_task, marker):
    """DeCoAR 2.0 folders carry decoar2_hf.py for transformers' trust_remote_code; speechft uses
    its own copy of the class, so a tampered file beside the weights never runs."""
    folder = tiny_encoder_dir("decoar2")
    code = folder / "decoar2_hf.py"
    assert code.exists()
    code.write_text(f"import os\nos.mkdir({str(marker)!r})\n" + code.read_text())
    assert cli("encoder", "info", folder) == 0
    assert cli("doctor", folder) == 0
    capsys.readouterr()


# ---- resumable training checkpoints and task heads (safetensors + JSON, never pickles) --------------------------
@pytest.fixture
def finished_run(tmp_path, tiny_encoder_dir, cls_task):
    from speechft.config import load_config
    from speechft.train import TrainConfig, finetune

    cfg = load_config(
        TrainConfig,
        None,
        ["steps=4", "eval.every=2", "data.batch_size=4", "head.proj_dim=8", "checkpoint.keep_at_end=true"],
    )
    enc = tiny_encoder_dir("hubert")
    return enc, cls_task, finetune(enc, [cls_task], tmp_path / "run", config=cfg)


def test_resume_refuses_a_hostile_checkpoint(tmp_path, capsys, finished_run, marker):
    enc, task, run = finished_run
    latest = run / "checkpoints" / json.loads((run / "checkpoints" / "latest.json").read_text())["dir"]
    (run / "speechft.json").unlink()  # make the run look unfinished, so --resume reads the checkpoint
    for name in ("model.safetensors", "optimizer.safetensors"):
        (latest / name).write_bytes(hostile_bytes(marker, "zip"))
    capsys.readouterr()
    rc = cli("finetune", "--encoder", enc, "--task", task, "--out", run, "--resume")
    refused(capsys, rc, str(latest / "model.safetensors"), "cannot read the checkpoint tensors")


def test_sweep_refuses_a_hostile_head(tmp_path, capsys, finished_run, marker):
    enc, task, run = finished_run
    head = run / "heads" / "tones" / "head.safetensors"
    assert head.exists()
    head.write_bytes(hostile_bytes(marker, "legacy"))
    capsys.readouterr()
    rc = cli(
        "sweep", "--pretrained", enc, "--finetuned", run, "--task", task, "--out", tmp_path / "sw", "--alphas", "0", "1"
    )
    refused(capsys, rc, str(run / "heads" / "tones"), "not a valid speechft head folder")
    assert not (tmp_path / "sw").exists()


def forge_cache_with_pickles(cache: Path, marker: Path) -> None:
    """Rewrite every array of every cache entry as an object array holding a Hostile, with
    checksums recomputed: the cache's checksums are integrity, not security."""
    import hashlib

    entries = [p for p in cache.iterdir() if (p / "COMPLETE").exists()]
    assert entries
    for entry in entries:
        meta = json.loads((entry / "meta.json").read_text())
        for name in list(meta["files"]):
            if name.endswith(".npy"):
                arr = np.empty(2, dtype=object)
                arr[0] = Hostile(marker)
                with open(entry / name, "wb") as f:
                    np.save(f, arr, allow_pickle=True)
                data = (entry / name).read_bytes()
                meta["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        (entry / "meta.json").write_text(json.dumps(meta))
        (entry / "COMPLETE").write_text(hashlib.sha256((entry / "meta.json").read_bytes()).hexdigest() + "\n")


def evaluate_argv(tmp_path, enc, task):
    return [
        "evaluate",
        "--encoder",
        enc,
        "--task",
        task,
        "--out",
        tmp_path / "eval",
        "--cache",
        tmp_path / "cache",
        "--epochs",
        "1",
        "--lrs",
        "1e-2",
        "--min-steps",
        "0",
        "--quiet",
        "--overwrite",
    ]


def test_a_forged_feature_cache_entry_holding_a_pickle_is_never_unpickled(
    tmp_path, capsys, tiny_encoder_dir, cls_task, marker
):
    """The guarantee is np.load(allow_pickle=False): whatever happens next, no code runs."""
    argv = evaluate_argv(tmp_path, tiny_encoder_dir("hubert"), cls_task)
    assert cli(*argv) == 0
    forge_cache_with_pickles(tmp_path / "cache", marker)
    cli(*argv)
    capsys.readouterr()


def test_a_forged_feature_cache_entry_is_rebuilt(tmp_path, capsys, tiny_encoder_dir, cls_task, marker):
    argv = evaluate_argv(tmp_path, tiny_encoder_dir("hubert"), cls_task)
    assert cli(*argv) == 0
    first = json.loads((tmp_path / "eval" / "results.json").read_text())["models"][0]["tasks"]
    forge_cache_with_pickles(tmp_path / "cache", marker)
    assert cli(*argv) == 0, capsys.readouterr().err
    again = json.loads((tmp_path / "eval" / "results.json").read_text())["models"][0]["tasks"]
    assert again["tones"]["test"] == first["tones"]["test"]


# ---- YAML: safe_load everywhere -----------------------------------------------------------------------------
def python_tag(marker: Path) -> str:
    return f"!!python/object/apply:os.mkdir [{str(marker)!r}]"


def test_task_yaml_with_a_python_tag_is_refused(tmp_path, capsys, cls_task, tiny_encoder_dir, marker):
    y = cls_task / "task.yaml"
    y.write_text(y.read_text().replace("name: tones", f"name: {python_tag(marker)}"))
    refused(
        capsys,
        cli("evaluate", "--encoder", tiny_encoder_dir("hubert"), "--task", cls_task, "--out", tmp_path / "e"),
        f"{y}: not valid YAML",
    )
    assert cli("doctor", cls_task) == 1
    assert "not valid YAML" in capsys.readouterr().out


def test_config_and_score_config_with_python_tags_are_refused(tmp_path, capsys, cls_task, tiny_encoder_dir, marker):
    enc = tiny_encoder_dir("hubert")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"steps: 2\noptim: {python_tag(marker)}\n")
    refused(
        capsys,
        cli("finetune", "--encoder", enc, "--task", cls_task, "--out", tmp_path / "f", "--config", recipe),
        f"{recipe}: not valid YAML",
    )
    # On the command line the tag is not YAML to us: it stays the plain string it looks like.
    refused(
        capsys,
        cli(
            "finetune",
            "--encoder",
            enc,
            "--task",
            cls_task,
            "--out",
            tmp_path / "f",
            "--set",
            f"seed={python_tag(marker)}",
        ),
        "seed: expected an integer",
        "!!python/object",
    )
    score = tmp_path / "score.yaml"
    score.write_text(f"name: {python_tag(marker)}\n")
    refused(
        capsys,
        cli("evaluate", "--encoder", enc, "--task", cls_task, "--out", tmp_path / "e", "--score-config", score),
        f"{score}: not valid YAML",
    )


# ---- task paths stay inside the task folder ---------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    ["/etc/hostname", "../outside.wav", "audio/../../outside.wav", "./../outside.wav", "audio/./../../../etc/hostname"],
)
def test_task_paths_cannot_escape_the_folder(cls_task, path):
    from speechft.data import load_task

    (cls_task.parent / "outside.wav").write_bytes(
        (cls_task / "audio").resolve().joinpath(next(iter(sorted(os.listdir(cls_task / "audio"))))).read_bytes()
    )
    tsv = cls_task / "dev.tsv"
    lines = tsv.read_text().splitlines()
    tsv.write_text("\n".join([lines[0], f"{path}\t0.7\tlow\tspk0"] + lines[2:]) + "\n")
    with pytest.raises(SpeechFTError, match="points outside the task folder .allow with allow_outside_paths."):
        load_task(cls_task)
    try:  # explicitly allowed: no longer refused as outside (the file may or may not exist there)
        assert load_task(cls_task, allow_outside_paths=True).split("dev")[0].id == path
    except SpeechFTError as e:
        assert "not found" in str(e) and "points outside" not in str(e)


# ---- the static guard ---------------------------------------------------------------------------------------
def unsafe_calls(source: str, filename: str) -> list[str]:
    """Calls that can execute code from data: pickle loading, torch.load without weights_only=True,
    yaml.load/unsafe_load/full_load, numpy loads with allow_pickle=True, trust_remote_code=True,
    eval/exec."""
    found = []

    def kw(call, name):
        return next((k.value for k in call.keywords if k.arg == name), None)

    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
        where = f"{filename}:{node.lineno}"
        if owner == "pickle" or name in ("Unpickler",) or (owner in ("", "dill", "joblib") and name == "loads"):
            found.append(f"{where}: {owner}.{name}")
        if owner == "torch" and name == "load":
            w = kw(node, "weights_only")
            if not (isinstance(w, ast.Constant) and w.value is True):
                found.append(f"{where}: torch.load without weights_only=True")
        if owner == "yaml" and name in ("load", "unsafe_load", "full_load", "load_all", "unsafe_load_all"):
            found.append(f"{where}: yaml.{name}")
        if owner in ("np", "numpy") and name == "load":
            a = kw(node, "allow_pickle")
            if a is not None and not (isinstance(a, ast.Constant) and a.value is False):
                found.append(f"{where}: np.load with allow_pickle")
        t = kw(node, "trust_remote_code")
        if t is not None and not (isinstance(t, ast.Constant) and t.value is False):
            found.append(f"{where}: trust_remote_code")
        if isinstance(f, ast.Name) and f.id in ("eval", "exec"):
            found.append(f"{where}: {f.id}()")
    return found


def test_the_code_has_no_unsafe_loader():
    root = Path(speechft.__file__).parent
    bad = [b for p in sorted(root.rglob("*.py")) for b in unsafe_calls(p.read_text(), str(p.relative_to(root)))]
    assert bad == []


def test_the_guard_itself_catches_unsafe_calls():
    src = (
        "import torch, yaml, pickle, numpy as np\n"
        "torch.load('a')\ntorch.load('a', weights_only=False)\nyaml.load(s)\npickle.loads(b)\n"
        "np.load('x', allow_pickle=True)\nM.from_pretrained(d, trust_remote_code=True)\neval('1')\n"
        "torch.load('a', weights_only=True)\nyaml.safe_load(s)\nnp.load('x')\n"
    )
    assert len(unsafe_calls(src, "x.py")) == 7
