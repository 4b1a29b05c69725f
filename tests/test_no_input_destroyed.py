"""Property: for every command that writes, whatever the relation of --out to an input (the same folder,
its parent, a folder inside it, a file inside it, a sibling), with or without --overwrite, no input byte
changes: the command refuses in one line, or writes beside the inputs. (Issue 18's data-loss rule.)"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from conftest import cli, make_classification_task

from speechft.encoders import tiny_encoder

RELATIONS = ("same", "parent", "child", "file", "sibling")
FAST = ["data.batch_size=4", "eval.log_every=1", "head.proj_dim=16", "head.lstm_layers=0"]


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Inputs made once: an encoder, a task folder and a fine-tuned run (copied for every case)."""
    root = tmp_path_factory.mktemp("inputs")
    tiny_encoder("hubert", seed=0).save(root / "enc")
    task = make_classification_task(root / "task", n_per_class=3)
    assert cli("finetune", "--encoder", root / "enc", "--task", task, "--out", root / "ft", "--steps", "2",
               "--quiet", "--set", *FAST) == 0  # fmt: skip
    return root


def commands(work: Path) -> dict[str, tuple[list, list[Path]]]:
    """command -> (argv without --out, the input folders it reads)."""
    enc, task, ft = work / "enc", work / "task", work / "ft"
    return {
        "finetune": (
            ["finetune", "--encoder", enc, "--task", task, "--steps", "2", "--quiet", "--set", *FAST], [enc, task]
        ),
        "merge": (["merge", "--pretrained", enc, "--finetuned", ft, "--quiet"], [enc, ft]),
        "evaluate": (
            ["evaluate", "--encoder", enc, "--task", task, "--epochs", "1", "--min-steps", "1", "--lrs", "1e-3",
             "--no-cache", "--quiet"],
            [enc, task],
        ),
        "analyze": (["analyze", "--pretrained", enc, "--models", ft, "--task", task, "--quiet"], [enc, ft, task]),
        "sweep": (["sweep", "--pretrained", enc, "--finetuned", ft, "--task", task, "--alphas", "0", "1", "--quiet"],
                  [enc, ft, task]),
    }  # fmt: skip


def location(relation: str, of: Path) -> Path:
    return {
        "same": of,
        "parent": of.parent,
        "child": of / "out",
        "file": of / "config.json" if (of / "config.json").exists() else of / "task.yaml",
        "sibling": of.parent / f"{of.name}-out",
    }[relation]


@pytest.mark.slow
@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("relation", RELATIONS)
@pytest.mark.parametrize("command", ["finetune", "merge", "evaluate", "analyze", "sweep"])
def test_no_input_byte_changes(tmp_path, capsys, made, command, relation, overwrite):
    work = tmp_path / "work"
    shutil.copytree(made, work)  # links followed: each case owns a copy of the audio
    argv, inputs = commands(work)[command]
    before = snapshot(work)
    for target in inputs:
        out = location(relation, target)
        rc = cli(*argv, "--out", out, *(["--overwrite"] if overwrite else []))
        err = capsys.readouterr().err.strip()
        if relation == "sibling":
            assert rc == 0, err
            shutil.rmtree(out)
        else:
            assert rc == 2 and len(err.splitlines()) == 1, (rc, err)
        assert snapshot(work) == before, f"{command} --out {relation} of {target.name} changed an input"
