"""No input is ever destroyed: an output may not be, contain or lie inside an input, and --overwrite replaces
the old output only once the new run has finished (issue 18's data-loss findings, for finetune and pretrain)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import cli, make_classification_task

from speechft.errors import SpeechFTError
from speechft.io_utils import check_output_location

FAST = ["data.batch_size=4", "eval.log_every=1", "head.proj_dim=16", "head.lstm_layers=0"]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative path -> sha256 of its bytes)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def finetune(encoder, task, out, *extra) -> int:
    return cli("finetune", "--encoder", encoder, "--task", task, "--out", out, "--steps", "2", "--quiet",
               "--set", *FAST, *extra)  # fmt: skip


@pytest.mark.parametrize("how", ["is", "contains", "lies inside"])
def test_the_output_rule_names_the_input_and_the_relation(tmp_path, how):
    enc = tmp_path / "runs" / "enc"
    enc.mkdir(parents=True)
    out = {"is": enc, "contains": tmp_path / "runs", "lies inside": enc / "sub"}[how]
    with pytest.raises(SpeechFTError, match=f"--out {out} {how} the input --encoder {enc}"):
        check_output_location(out, {"--encoder": enc, "--task": [tmp_path / "task"]})
    check_output_location(tmp_path / "runs" / "other", {"--encoder": enc})  # a sibling is fine


@pytest.mark.parametrize("where", ["the encoder", "inside the encoder", "the parent of the task"])
def test_finetune_never_writes_over_its_inputs_even_with_overwrite(tmp_path, capsys, cls_task, tiny_encoder_dir, where):
    enc = tiny_encoder_dir("hubert")
    out = {"the encoder": enc, "inside the encoder": enc / "run", "the parent of the task": cls_task.parent}[where]
    before_enc, before_task = snapshot(enc), snapshot(cls_task)
    assert finetune(enc, cls_task, out, "--overwrite") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the input" in err and "nothing was changed" in err, err
    assert snapshot(enc) == before_enc and snapshot(cls_task) == before_task
    assert not (enc / "run").exists()


def test_overwrite_keeps_the_old_run_when_the_new_one_fails(tmp_path, capsys, cls_task, tiny_encoder_dir):
    enc, out = tiny_encoder_dir("hubert"), tmp_path / "ft"
    assert finetune(enc, cls_task, out) == 0
    finished = snapshot(out)
    # The new run's data is broken: every clip is NaN, found in the first batches.
    for split in ("train", "dev"):
        for row in (cls_task / f"{split}.tsv").read_text().splitlines()[1:]:
            clip = (cls_task / row.split("\t")[0]).resolve()
            sf.write(clip, np.full(8000, np.nan, np.float32), 16000, subtype="FLOAT")
    capsys.readouterr()
    assert finetune(enc, cls_task, out, "--overwrite") == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert snapshot(out) == finished  # the old run, byte for byte
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".ft")) == []


def test_overwrite_replaces_the_old_run_only_once_the_new_one_has_finished(tmp_path, cls_task, tiny_encoder_dir):
    enc, out = tiny_encoder_dir("hubert"), tmp_path / "ft"
    assert finetune(enc, cls_task, out) == 0
    old = snapshot(out)
    assert finetune(enc, cls_task, out, "seed=1", "--overwrite") == 0
    assert snapshot(out) != old and (out / "speechft.json").exists()
    assert not (tmp_path / ".ft.replaced").exists()  # the set-aside copy goes with the new run's success


def test_an_interrupted_replacement_keeps_the_last_finished_run(tmp_path, cls_task, tiny_encoder_dir):
    """Killed mid-run, an --overwrite leaves the new (resumable) run in --out and the old finished one set
    aside; the next --overwrite discards the unfinished one, never the finished one."""
    from speechft.run_folder import replaced_name, set_aside

    enc, out = tiny_encoder_dir("hubert"), tmp_path / "ft"
    assert finetune(enc, cls_task, out) == 0
    finished = snapshot(out)
    set_aside(out)  # what a killed --overwrite leaves: the old run aside ...
    out.mkdir()
    (out / "config.yaml").write_text("steps: 2\n")  # ... and an unfinished new one
    set_aside(out)  # the next --overwrite
    assert not out.exists() and snapshot(replaced_name(out)) == finished


def test_resume_takes_some_of_the_original_options_and_names_the_one_that_changed(
    tmp_path, capsys, cls_task, tiny_encoder_dir
):
    enc, out = tiny_encoder_dir("hubert"), tmp_path / "ft"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("optim:\n  head_lr: 0.002\n")
    assert finetune(enc, cls_task, out, "seed=3", "--config", recipe) == 0
    (out / "speechft.json").unlink()  # as if it had been interrupted
    capsys.readouterr()
    # Repeating one original option (without the recipe) applies on top of the stored config: no change.
    assert finetune(enc, cls_task, out, "seed=3", "--resume") == 0
    (out / "speechft.json").unlink()
    capsys.readouterr()
    assert finetune(enc, cls_task, out, "seed=4", "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "seed is 4 here but 3 in" in err, err


# ---- every output follows the umask (shared cluster storage) ----------------------------------------------------
def modes(folder: Path) -> dict[str, int]:
    """Permission bits of `folder` and of everything under it, by relative path."""
    return {str(p.relative_to(folder)): p.stat().st_mode & 0o777 for p in [folder, *sorted(folder.rglob("*"))]}


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_every_output_file_follows_the_umask(tmp_path, cls_task, umask, file_mode, dir_mode):
    """Weight files once came out 0600 whatever the umask (mkstemp, and safetensors' own temp file): every file
    and folder of an encoder, a fine-tuned run (heads, adapters), a merge and a conversion follows it now."""
    import torch
    from test_convert import fairseq_cfg, fairseq_state

    from speechft.encoders import tiny_encoder

    enc = tiny_encoder("wav2vec2", seed=8)
    torch.save({"model_cfg": {"_name": "wav2vec2", **fairseq_cfg(enc)}, "model_weight": fairseq_state(enc)},
               tmp_path / "ckpt.pt")  # fmt: skip
    old = os.umask(umask)
    try:
        assert cli("encoder", "tiny", "hubert", "--out", tmp_path / "enc") == 0
        assert finetune(tmp_path / "enc", cls_task, tmp_path / "lora", "--method", "lora", "--set",
                        "checkpoint.keep_at_end=true") == 0  # fmt: skip
        assert cli("merge", "--pretrained", tmp_path / "enc", "--finetuned", tmp_path / "lora", "--out",
                   tmp_path / "merged", "--quiet") == 0  # fmt: skip
        assert cli("encoder", "convert", "--from", "s3prl", tmp_path / "ckpt.pt", "--out", tmp_path / "conv") == 0
    finally:
        os.umask(old)
    for name in ("enc", "lora", "merged", "conv"):
        got = modes(tmp_path / name)
        want = {k: dir_mode if (tmp_path / name / k).is_dir() else file_mode for k in got}
        assert got == want, (name, {k: oct(v) for k, v in got.items() if v != want[k]})
    assert (tmp_path / "lora" / "checkpoints").is_dir() and (tmp_path / "lora" / "adapter").is_dir()


# ---- whole folder or nothing: a failure at the last step leaves no --out, and --overwrite keeps the old one ----
class Boom(RuntimeError):
    pass


@pytest.fixture(scope="module")
def staged_inputs(tmp_path_factory):
    import torch
    from test_convert import fairseq_cfg, fairseq_state
    from test_report import model, results

    from speechft.encoders import tiny_encoder

    root = tmp_path_factory.mktemp("staged")
    enc = tiny_encoder("hubert", seed=0).save(root / "enc")
    task = make_classification_task(root / "task", n_per_class=3)
    assert finetune(enc, task, root / "ft") == 0
    (root / "results.json").write_text(json.dumps(results(model("fbank", 0.8, 0.3), model("m", 0.2, 0.7))))
    _voxceleb(root)
    w2v = tiny_encoder("wav2vec2", seed=8)
    torch.save({"model_cfg": {"_name": "wav2vec2", **fairseq_cfg(w2v)}, "model_weight": fairseq_state(w2v)},
               root / "ckpt.pt")  # fmt: skip
    return root


def _voxceleb(root: Path) -> Path:
    """test_prepare's VoxCeleb1 layout (its fixture, called as a function)."""
    import test_prepare

    fixture = test_prepare.voxceleb
    function = getattr(fixture, "__wrapped__", None) or fixture.__pytest_wrapped__.obj  # pytest >= 8.4 / older
    return function(root)


# command -> (argv without --out, the function that fails: module, attribute), each called last, inside the stage
STAGED = {
    "evaluate": (["evaluate", "--encoder", "{enc}", "--task", "{task}", "--epochs", "1", "--min-steps", "1",
                  "--lrs", "1e-3", "--no-cache", "--quiet"], ("speechft.report", "write_report")),
    "report": (["report", "{results}"], ("speechft.report", "write_report")),
    "sweep": (["sweep", "--pretrained", "{enc}", "--finetuned", "{ft}", "--task", "{task}", "--alphas", "0", "1",
               "--quiet"], ("speechft.plots", "plot_sweep")),
    "analyze": (["analyze", "--pretrained", "{enc}", "--models", "{ft}", "--task", "{task}", "--quiet"],
                ("speechft.plots", "plot_distance_vs_cka")),
    "merge": (["merge", "--pretrained", "{enc}", "--finetuned", "{ft}", "--quiet"],
              ("speechft.merge", "copy_side_files")),
    "encoder tiny": (["encoder", "tiny", "hubert"], ("speechft.encoders.base", "write_json")),
    "encoder convert": (["encoder", "convert", "--from", "s3prl", "{ckpt}"], ("speechft.encoders.base", "write_json")),
    "data prepare": (["data", "prepare", "voxceleb1-sid", "--root", "{vox}", "--quiet"],
                     ("speechft.data.prepare", "load_task")),
}  # fmt: skip


@pytest.mark.parametrize("command", sorted(STAGED))
def test_a_failure_at_the_last_step_leaves_no_output_and_overwrite_keeps_the_old_one(
    tmp_path, capsys, monkeypatch, staged_inputs, command
):
    import importlib

    from conftest import leftovers

    template, (module, name) = STAGED[command]
    paths = {"enc": "enc", "task": "task", "ft": "ft", "results": "results.json", "ckpt": "ckpt.pt", "vox": "VoxCeleb1"}
    paths = {k: staged_inputs / v for k, v in paths.items()}
    argv = [a.format(**paths) for a in template]
    out = tmp_path / "out"

    def boom(*args, **kwargs):
        raise Boom("the figures failed")

    monkeypatch.setattr(importlib.import_module(module), name, boom)
    assert cli(*argv, "--out", out) != 0
    assert not out.exists() and leftovers(out) == [], leftovers(out)
    monkeypatch.undo()
    assert cli(*argv, "--out", out) == 0  # the rerun needs no --overwrite: nothing was left behind
    before = snapshot(out)
    monkeypatch.setattr(importlib.import_module(module), name, boom)
    assert cli(*argv, "--out", out, "--overwrite") != 0
    assert snapshot(out) == before and leftovers(out) == [], leftovers(out)
    capsys.readouterr()
