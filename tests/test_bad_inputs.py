"""The bad-input catalogue: every command, fed the inputs users really produce by mistake.

For each refused input the contract is the same (`refused()`):
  - a non-zero exit code (2: a user error);
  - exactly one line on stderr, naming the bad file / key / value and saying what to do;
  - no traceback (`--debug` re-raises instead, so a traceback is one flag away);
  - nothing half-written: the output does not exist and no `.NAME.*` temp is left beside it.

Some odd inputs are *valid* and must work (8 kHz, stereo, silent, a truncated WAV, very long
clips): `test_odd_but_valid_audio_works` runs them end to end, and `speechft doctor` warns.
Commands run in-process through `speechft.cli.main` (fast); one case runs as a real process.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import cli, leftovers, make_ctc_task, tone
from safetensors.torch import load_file, save_file

from speechft.cli import main
from speechft.encoders import tiny_encoder
from speechft.errors import SpeechFTError

# A tqdm progress bar line (long commands draw one on stderr before they fail).
PROGRESS = re.compile(r"\d+%\|.*\|")


def refused(capsys, rc: int, needles: list[str], outputs=(), debug_argv=None) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 2, (rc, err)
    lines = [line for line in re.split(r"[\r\n]+", err) if line.strip() and not PROGRESS.search(line)]
    assert len(lines) == 1, err
    assert lines[0].startswith("speechft") and "error:" in lines[0], err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, f"{n!r} not in: {err}"
    for out in outputs:
        assert not Path(out).exists(), f"{out} was written"
        assert leftovers(out) == [], leftovers(out)
    if debug_argv is not None:  # --debug: the exception propagates (Python prints its traceback)
        with pytest.raises(SpeechFTError):
            main(["--debug", *map(str, debug_argv)])
        capsys.readouterr()
    return err


# =========================================================================================================
# Audio
# =========================================================================================================
def first_clip(task: Path, split: str = "dev") -> Path:
    """The audio file behind the first row of a split (a private copy per test: fixtures are per test)."""
    rel = (task / f"{split}.tsv").read_text().splitlines()[1].split("\t")[0]
    return task / rel


def write_bad_audio(path: Path, kind: str) -> None:
    wav = tone(440, 1.0)
    if kind == "empty_file":
        path.write_bytes(b"")
    elif kind == "no_samples":
        sf.write(path, np.zeros(0, np.float32), 16000)
    elif kind == "truncated_flac":
        sf.write(path.with_suffix(".flac"), wav, 16000)
        data = path.with_suffix(".flac").read_bytes()
        path.with_suffix(".flac").unlink()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "not_audio":
        path.write_text("id,label\n1,yes\n" * 40)
    elif kind == "nan":
        bad = wav.copy()
        bad[100:200] = np.nan
        sf.write(path, bad, 16000, subtype="FLOAT")
    elif kind == "too_short":
        sf.write(path, wav[:100], 16000)
    else:
        raise ValueError(kind)


@pytest.mark.parametrize(
    "kind, needles",
    [
        ("empty_file", ["empty file (0 bytes)", "remove it from the manifest"]),
        ("no_samples", ["audio is empty (0 samples)", "remove it from the manifest"]),
        ("truncated_flac", ["cannot decode audio", "use wav, flac or ogg"]),
        ("not_audio", ["cannot decode audio", "Format not recognised", "use wav, flac or ogg"]),
        ("nan", ["NaN or infinite samples", "re-encode or remove it"]),
        ("too_short", ["shorter than the 25 ms minimum", "remove it from the manifest"]),
    ],
)
def test_bad_audio_stops_evaluate_before_anything_is_written(
    tmp_path, capsys, cls_task, tiny_encoder_dir, kind, needles
):
    clip = first_clip(cls_task)
    write_bad_audio(clip, kind)
    out, cache = tmp_path / "eval", tmp_path / "cache"
    argv = [
        "evaluate",
        "--encoder",
        tiny_encoder_dir("hubert"),
        "--task",
        cls_task,
        "--out",
        out,
        "--cache",
        cache,
        "--epochs",
        "1",
        "--lrs",
        "1e-2",
        "--quiet",
    ]
    refused(capsys, cli(*argv), [str(clip), *needles], outputs=[out])
    # The feature cache holds only complete entries (splits extracted before the bad one), no temp.
    for entry in cache.glob("*"):
        assert not entry.name.startswith(".") and (entry / "COMPLETE").exists(), entry


def test_missing_audio_is_caught_by_the_manifest_check(tmp_path, capsys, cls_task, tiny_encoder_dir):
    clip = first_clip(cls_task, "train")
    clip.unlink()
    out = tmp_path / "ft"
    rc = cli("finetune", "--encoder", tiny_encoder_dir("hubert"), "--task", cls_task, "--out", out, "--steps", "2")
    refused(capsys, rc, ["train.tsv", f"audio file 'audio/{clip.name}' not found"], outputs=[out])


def test_bad_audio_during_finetune_is_one_line_and_leaves_no_encoder(tmp_path, capsys, cls_task, tiny_encoder_dir):
    for split in ("train", "dev"):
        for row in (cls_task / f"{split}.tsv").read_text().splitlines()[1:]:
            write_bad_audio((cls_task / row.split("\t")[0]).resolve(), "nan")
    out = tmp_path / "ft"
    rc = cli(
        "finetune",
        "--encoder",
        tiny_encoder_dir("hubert"),
        "--task",
        cls_task,
        "--out",
        out,
        "--steps",
        "2",
        "--set",
        "data.batch_size=4",
    )
    refused(capsys, rc, ["NaN or infinite samples"])
    # The run folder may stay (it is resumable), but it is never an encoder folder.
    assert not (out / "speechft.json").exists() and not (out / "model.safetensors").exists()
    assert leftovers(out) == []


def test_finetune_failing_before_its_first_checkpoint_leaves_no_folder(tmp_path, capsys, cls_task, tiny_encoder_dir):
    for row in (cls_task / "train.tsv").read_text().splitlines()[1:]:
        write_bad_audio((cls_task / row.split("\t")[0]).resolve(), "nan")
    out = tmp_path / "ft"
    rc = cli("finetune", "--encoder", tiny_encoder_dir("hubert"), "--task", cls_task, "--out", out, "--steps", "2")
    refused(capsys, rc, ["NaN or infinite samples"], outputs=[out])


def test_odd_but_valid_audio_works(tmp_path, capsys, cls_task, tiny_encoder_dir):
    """8 kHz, stereo, silent, a WAV cut short and a 70 s clip all decode (mono, 16 kHz) and evaluate;
    doctor names each oddity as a warning, not an error."""
    rows = (cls_task / "train.tsv").read_text().splitlines()[1:]
    clips = [(cls_task / r.split("\t")[0]).resolve() for r in rows]
    t8 = tone(300, 0.8, sr=8000)
    sf.write(clips[0], t8, 8000)
    sf.write(clips[1], np.stack([tone(300, 0.8), tone(600, 0.8)], axis=1), 16000)
    sf.write(clips[2], np.zeros(12000, np.float32), 16000)
    data = clips[3].read_bytes()
    clips[3].write_bytes(data[: len(data) // 2 + 1])  # a WAV cut mid-data: the samples that are there load
    sf.write(first_clip(cls_task, "test"), tone(700, 70.0, noise=0.01), 16000, subtype="PCM_16")

    from speechft.data.audio import load_audio

    for clip, samples in zip(clips[:3], (12800, 12800, 12000)):  # 0.8 s (8 kHz resampled), 0.8 s, 0.75 s
        wav = load_audio(clip)
        assert wav.ndim == 1 and wav.dtype == np.float32 and abs(len(wav) - samples) <= 2, clip
    stereo = load_audio(clips[1])
    assert np.allclose(stereo, (tone(300, 0.8) + tone(600, 0.8)) / 2, atol=1e-4)  # the channels' mean

    assert cli("doctor", cls_task) == 0
    report = capsys.readouterr().out
    assert "8000 Hz (resampled)" in report and "2 channels (down-mixed)" in report and "silent" in report
    assert "manifest duration" in report  # the truncated WAV: shorter than its manifest says
    assert "70 s long (over 60 s)" in report
    assert "doctor: 0 error(s)" in report

    out = tmp_path / "eval"
    rc = cli(
        "evaluate",
        "--encoder",
        tiny_encoder_dir("hubert"),
        "--task",
        cls_task,
        "--out",
        out,
        "--no-cache",
        "--epochs",
        "1",
        "--lrs",
        "1e-2",
        "--min-steps",
        "0",
        "--quiet",
    )
    assert rc == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["models"][0]["tasks"]["tones"]["n"]["train"] == len(rows)


# =========================================================================================================
# Manifests and task.yaml (load_task validates everything before finetune creates its run folder)
# =========================================================================================================
def edit_manifest(task: Path, split: str, fn: Callable[[list[str]], list[str]]) -> None:
    path = task / f"{split}.tsv"
    path.write_text("\n".join(fn(path.read_text().splitlines())) + "\n")


MANIFEST_CASES = {
    "missing_column": (
        lambda ls: [ls[0].replace("label", "class")] + ls[1:],
        ["train.tsv", "missing column(s) label", "a classification manifest needs path, duration, label"],
    ),
    "duplicate_id": (lambda ls: ls + [ls[1]], ["train.tsv", "repeats line 2"]),
    "unknown_label": (
        lambda ls: [ls[0], ls[1].replace("\tlow\t", "\tmedium\t")] + ls[2:],
        ["train.tsv", "line 2: label uses ['medium'] not in task.yaml's labels"],
    ),
    "absolute_path": (
        lambda ls: [ls[0], "/etc/hostname\t1.0\tlow\tspk0"] + ls[2:],
        ["path '/etc/hostname' points outside the task folder", "allow_outside_paths"],
    ),
    "parent_path": (
        lambda ls: [ls[0], "../../secret.wav\t1.0\tlow\tspk0"] + ls[2:],
        ["path '../../secret.wav' points outside the task folder"],
    ),
    "empty_split": (lambda ls: ls[:1], ["train.tsv", "the train split has no examples"]),
    "infinite_duration": (
        lambda ls: [ls[0], "\t".join(ls[1].split("\t")[:1] + ["inf"] + ls[1].split("\t")[2:])] + ls[2:],
        ["line 2: duration 'inf' is not a positive number"],
    ),
    "ragged_row": (lambda ls: [ls[0], ls[1] + "\textra"] + ls[2:], ["line 2: 5 fields, header has 4"]),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_bad_manifests_stop_finetune_before_its_run_folder_exists(tmp_path, capsys, cls_task, tiny_encoder_dir, case):
    fn, needles = MANIFEST_CASES[case]
    edit_manifest(cls_task, "train", fn)
    out = tmp_path / "ft"
    argv = ["finetune", "--encoder", tiny_encoder_dir("hubert"), "--task", cls_task, "--out", out, "--steps", "2"]
    refused(capsys, cli(*argv), needles, outputs=[out], debug_argv=argv if case == "missing_column" else None)


def test_missing_split_file_and_binary_manifest(tmp_path, capsys, cls_task, tiny_encoder_dir):
    enc = tiny_encoder_dir("hubert")
    (cls_task / "test.tsv").unlink()
    rc = cli("evaluate", "--encoder", enc, "--task", cls_task, "--out", tmp_path / "e", "--no-cache")
    refused(
        capsys,
        rc,
        ["test.tsv: missing", "every task folder needs train.tsv, dev.tsv, test.tsv"],
        outputs=[tmp_path / "e"],
    )
    (cls_task / "test.tsv").write_bytes(b"path\tduration\tlabel\n\xff\xfe\x00garbage\n")
    rc = cli("evaluate", "--encoder", enc, "--task", cls_task, "--out", tmp_path / "e", "--no-cache")
    refused(capsys, rc, ["test.tsv: not UTF-8 text (byte 20)", "save it as UTF-8"], outputs=[tmp_path / "e"])


@pytest.mark.parametrize(
    "edit, needles",
    [
        (
            lambda y: y.replace("type: classification", "type: regression"),
            ["task.yaml", "type 'regression' is not one of ctc, classification"],
        ),
        (lambda y: y + "allow_outside_paths: 'yes'\n", ["allow_outside_paths must be true or false, got 'yes'"]),
        (lambda y: y + "sample_rate: true\n", ["sample_rate must be a positive integer, got True"]),
        (lambda y: "name: [unclosed\n", ["task.yaml: not valid YAML"]),
    ],
)
def test_bad_task_yaml(tmp_path, capsys, cls_task, tiny_encoder_dir, edit, needles):
    y = cls_task / "task.yaml"
    y.write_text(edit(y.read_text()))
    rc = cli("evaluate", "--encoder", tiny_encoder_dir("hubert"), "--task", cls_task, "--out", tmp_path / "e")
    refused(capsys, rc, needles, outputs=[tmp_path / "e"])


def test_outside_paths_work_when_explicitly_allowed(tmp_path, cls_task):
    """The same absolute path that is refused above loads once task.yaml opts in."""
    from speechft.data import load_task

    outside = tmp_path / "elsewhere.wav"
    sf.write(outside, tone(300, 0.6), 16000)
    edit_manifest(cls_task, "train", lambda ls: [ls[0], f"{outside}\t0.6\tlow\tspk0"] + ls[2:])
    with pytest.raises(SpeechFTError, match="points outside the task folder"):
        load_task(cls_task)
    (cls_task / "task.yaml").write_text((cls_task / "task.yaml").read_text() + "allow_outside_paths: true\n")
    assert load_task(cls_task).split("train")[0].path == outside
    assert load_task(cls_task.parent / cls_task.name, allow_outside_paths=True).split("train")[0].path == outside


# =========================================================================================================
# Encoder folders
# =========================================================================================================
def break_encoder(folder: Path, how: str, tmp_path: Path) -> None:
    if how == "missing_weights":
        (folder / "model.safetensors").unlink()
    elif how == "pickled_weights_only":
        (folder / "model.safetensors").unlink()
        torch.save({"w": torch.zeros(2)}, folder / "pytorch_model.bin")
    elif how == "missing_config":
        (folder / "config.json").unlink()
    elif how in ("wrong_family", "unknown_family"):
        prov = json.loads((folder / "speechft.json").read_text())
        prov["family"] = "wav2vec2" if how == "wrong_family" else "conformer"
        (folder / "speechft.json").write_text(json.dumps(prov))
    elif how == "mismatched_shapes":
        from speechft.encoders import tiny_encoder

        tiny_encoder("hubert", hidden_size=48, num_attention_heads=2).save(tmp_path / "h48")
        shutil.copy(tmp_path / "h48" / "model.safetensors", folder / "model.safetensors")
    elif how == "prefixed_keys":
        sd = load_file(str(folder / "model.safetensors"))
        save_file(
            {f"module.{k}": v for k, v in sd.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"}
        )
    elif how == "nan_weights":
        sd = load_file(str(folder / "model.safetensors"))
        sd["encoder.layer_norm.weight"][3] = float("nan")
        save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    elif how == "truncated_weights":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "config_not_json":
        (folder / "config.json").write_text("{'model_type': hubert")
    else:
        raise ValueError(how)


ENCODER_CASES = {
    "missing_weights": ["no model.safetensors", "speechft encoder default|tiny|convert"],
    "pickled_weights_only": ["pytorch_model.bin", "never unpickles", "speechft encoder convert"],
    "missing_config": ["config.json: missing", "speechft doctor"],
    "wrong_family": ["speechft.json: family 'wav2vec2' contradicts config.json's model_type 'hubert'", "fix or delete"],
    "unknown_family": ["speechft.json: unknown family 'conformer'", "known: hubert"],
    "mismatched_shapes": [
        "mismatched keys: encoder.layer_norm.bias (file [48] vs config [32])",
        "pair them with their own config",
    ],
    "prefixed_keys": ["missing keys: encoder.layer_norm.bias", "unexpected keys: module.encoder", "prefix"],
    "nan_weights": ["weight 'encoder.layer_norm.weight' contains NaN or infinite values", "re-export or re-train"],
    "truncated_weights": ["cannot load the hubert weights", "complete, matching encoder folder"],
    "config_not_json": ["config.json: not valid JSON", "fix or delete the file"],
}


@pytest.mark.parametrize("how", sorted(ENCODER_CASES))
def test_broken_encoder_folders(tmp_path, capsys, tiny_encoder_dir, cls_task, how):
    enc = tiny_encoder_dir("hubert")
    break_encoder(enc, how, tmp_path)
    refused(capsys, cli("encoder", "info", enc), [str(enc), *ENCODER_CASES[how]])
    # The same folder, given to a command that writes: refused before its output exists.
    out = tmp_path / "eval"
    refused(
        capsys,
        cli("evaluate", "--encoder", enc, "--task", cls_task, "--out", out, "--no-cache"),
        [str(enc)],
        outputs=[out],
    )


@pytest.mark.parametrize(
    "spec, needles",
    [
        ("nowhere", ["encoder folder not found", "speechft encoder default|tiny|convert"]),
        ("no-such-org/no-such-model", ["'no-such-org/no-such-model' is not a local folder", "Hugging Face cache"]),
        ("a_file", ["is a file", "an encoder is a folder with config.json and model.safetensors"]),
    ],
)
def test_encoder_argument_that_is_not_a_folder(tmp_path, capsys, monkeypatch, spec, needles):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("x")
    refused(capsys, cli("encoder", "info", spec), needles)


# =========================================================================================================
# merge
# =========================================================================================================
@pytest.fixture
def pair(tiny_encoder_dir):
    return tiny_encoder_dir("hubert", 0), tiny_encoder_dir("hubert", 1)


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--alpha", "abc"], ["alpha='abc'", "must be a number", "Speech-FT uses 0.25"]),
        (["--alpha", "nan"], ["alpha='nan'", "must be a finite number"]),
        (["--param", "k=20"], ["method 'linear' has no parameter 'k'", "its parameters: alpha"]),
        (["--method", "ties", "--param", "k=lots"], ["k='lots'", "must be a number"]),
        (["--param", "alpha"], ["--param 'alpha': expected PARAM=VALUE"]),
        (["--exclude", "(unclosed"], ["--exclude pattern '(unclosed' is not a valid regular expression"]),
        (["--max-shard-size", "huge"], ["--max-shard-size 'huge'", "expected a size like 5GB"]),
    ],
)
def test_merge_bad_options(tmp_path, capsys, pair, extra, needles):
    pre, ft = pair
    out = tmp_path / "merged"
    argv = ["merge", "--pretrained", pre, "--finetuned", ft, "--out", out, *extra]
    refused(capsys, cli(*argv), needles, outputs=[out], debug_argv=argv if extra[0] == "--alpha" else None)


def test_merge_without_a_finetuned_model_is_a_one_line_usage_error(tmp_path, capsys, pair):
    out = tmp_path / "merged"
    refused(
        capsys,
        cli("merge", "--pretrained", pair[0], "--out", out),
        ["the following arguments are required: --finetuned", "see `speechft merge --help`"],
        outputs=[out],
    )
    refused(
        capsys,
        cli("merge", "--pretrained", pair[0], "--finetuned", "--out", out),
        ["argument --finetuned: expected at least one argument"],
        outputs=[out],
    )


def test_merge_refuses_an_existing_output_unless_overwrite(tmp_path, capsys, pair):
    pre, ft = pair
    out = tmp_path / "merged"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    refused(
        capsys,
        cli("merge", "--pretrained", pre, "--finetuned", ft, "--out", out),
        [f"{out}: output folder already exists", "pass --overwrite"],
    )
    assert (out / "mine.txt").read_text() == "keep me" and leftovers(out) == []
    assert cli("merge", "--pretrained", pre, "--finetuned", ft, "--out", out, "--overwrite") == 0
    assert not (out / "mine.txt").exists() and (out / "model.safetensors").exists() and leftovers(out) == []


def test_merge_refuses_incompatible_inputs(tmp_path, capsys, tiny_encoder_dir):
    pre = tiny_encoder_dir("hubert")
    out = tmp_path / "merged"
    refused(
        capsys,
        cli("merge", "--pretrained", pre, "--finetuned", tiny_encoder_dir("whisper"), "--out", out),
        ["is a whisper encoder but", "is hubert", "merge fine-tuned encoders into the pre-trained encoder"],
        outputs=[out],
    )
    wide = tiny_encoder_dir("hubert", 3, name="wide")
    break_encoder(wide, "mismatched_shapes", tmp_path)
    shutil.copy(tmp_path / "h48" / "config.json", wide / "config.json")
    refused(
        capsys,
        cli("merge", "--pretrained", pre, "--finetuned", wide, "--out", out),
        [f"{wide}/config.json differs from {pre}/config.json", "merging needs the same architecture"],
        outputs=[out],
    )
    refused(
        capsys,
        cli("merge", "--pretrained", pre, "--finetuned", pre, "--out", pre),
        ["is the input --pretrained", "write the output to a folder outside every input"],
    )


# =========================================================================================================
# Options and configs
# =========================================================================================================
@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--set", "optim.lr=abc"], ["optim.lr: expected a number, got 'abc'"]),
        (["--set", "nope=1"], ["--set nope: unknown key 'nope' in config", "valid keys: method, steps"]),
        (["--set", "optim=1"], ["--set optim=1: 'optim' is a section", "--set optim.lr=..."]),
        (["--set", "head.layers=sideways"], ["layers must be 'last' or 'weighted'"]),
        (["--steps", "many"], ["argument --steps: invalid int value: 'many'", "see `speechft finetune --help`"]),
        (["--resume", "--overwrite"], ["--resume and --overwrite contradict each other"]),
    ],
)
def test_finetune_bad_options(tmp_path, capsys, cls_task, tiny_encoder_dir, extra, needles):
    out = tmp_path / "ft"
    refused(
        capsys,
        cli("finetune", "--encoder", tiny_encoder_dir("hubert"), "--task", cls_task, "--out", out, *extra),
        needles,
        outputs=[out],
    )


def test_config_file_with_a_python_tag_is_refused_and_runs_nothing(tmp_path, capsys, cls_task, tiny_encoder_dir):
    marker = tmp_path / "pwned"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"steps: 2\nseed: !!python/object/apply:os.mkdir ['{marker}']\n")
    out = tmp_path / "ft"
    refused(
        capsys,
        cli("finetune", "--encoder", tiny_encoder_dir("hubert"), "--task", cls_task, "--out", out, "--config", recipe),
        [f"{recipe}: not valid YAML", "python/object/apply:os.mkdir"],
        outputs=[out],
    )
    assert not marker.exists()


def test_data_commands_bad_options(tmp_path, capsys):
    out = tmp_path / "bench"
    refused(
        capsys,
        cli("data", "synth", "--out", out, "--tasks", "asr", "emotion"),
        ["--tasks: unknown task(s) ['emotion']", "choose from"],
        outputs=[out],
    )
    refused(
        capsys,
        cli("data", "prepare", "librispeech-pr", "--root", tmp_path / "nowhere", "--out", out),
        ["corpus folder not found", "--root"],
        outputs=[out],
    )
    refused(capsys, cli("data", "shuffle"), ["invalid choice: 'shuffle'"])


# =========================================================================================================
# Task / encoder frame-rate mismatch (CTC needs at least one frame per token)
# =========================================================================================================
def dense_ctc_task(root: Path, alignable: int = 0) -> Path:
    """A char-CTC task whose 0.3 s clips carry 40-character transcripts: ~15 frames at 50 Hz for 40+ tokens.
    The first `alignable` clips of each split get a 2-character transcript instead."""
    from speechft.data.tasks import write_task_folder

    audio = root.parent / f"{root.name}_audio"
    audio.mkdir(parents=True)
    splits = {}
    for split in ("train", "dev", "test"):
        rows = []
        for k in range(4):
            sf.write(audio / f"{split}{k}.wav", tone(300 + 100 * k, 0.3, seed=k), 16000)
            text = "ab" if k < alignable else "abcab cabca " * 3 + "abca"
            rows.append({"path": f"audio/{split}{k}.wav", "duration": 0.3, "transcript": text})
        splits[split] = rows
    spec = {"name": "dense", "type": "ctc", "metric": "cer", "vocabulary": ["a", "b", "c", "|"], "tokenizer": "char"}
    return write_task_folder(root, spec, splits, audio_dir=audio)


def test_doctor_reports_every_clip_too_short_for_its_transcript(tmp_path, capsys, tiny_encoder_dir):
    task = dense_ctc_task(tmp_path / "dense")
    enc = tiny_encoder_dir("hubert")
    assert cli("doctor", enc, task, "--no-audio") == 1
    out = capsys.readouterr().out
    assert out.count("gives 14 frames with") == 12  # every clip of every split, each named
    assert "needs at least 40 for CTC" in out and "train.tsv:audio/train0.wav" in out
    assert "use an encoder with more frames per second" in out
    # An ordinary ctc task fits the same encoder.
    assert cli("doctor", enc, make_ctc_task(tmp_path / "ok"), "--no-audio") == 0
    assert "every transcript fits the frames" in capsys.readouterr().out


def test_finetune_skips_unalignable_clips_with_a_warning_not_a_nan_loss(tmp_path, capsys, tiny_encoder_dir):
    task = dense_ctc_task(tmp_path / "dense", alignable=2)
    out = tmp_path / "ft"
    rc = cli(
        "finetune",
        "--encoder",
        tiny_encoder_dir("hubert"),
        "--task",
        task,
        "--out",
        out,
        "--steps",
        "2",
        "--set",
        "data.batch_size=4",
        "--set",
        "head.lstm_layers=0",
        "--set",
        "head.proj_dim=8",
    )
    err = capsys.readouterr().err
    assert "gives 14 encoder frames but its transcript" in err and "needs at least 40 for CTC" in err
    assert err.count("speechft: warning: dense:") == 1  # said once, not per batch
    losses = [
        json.loads(line)["loss"]
        for line in (out / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "train"
    ]
    assert rc == 0 and losses and all(np.isfinite(losses))


def test_finetune_refuses_a_task_no_clip_of_which_is_alignable(tmp_path, capsys, tiny_encoder_dir):
    task = dense_ctc_task(tmp_path / "dense")
    out = tmp_path / "ft"
    rc = cli(
        "finetune",
        "--encoder",
        tiny_encoder_dir("hubert"),
        "--task",
        task,
        "--out",
        out,
        "--steps",
        "2",
        "--set",
        "data.batch_size=4",
    )
    refused(capsys, rc, ["train.tsv", "frames"], outputs=[out])


# =========================================================================================================
# Out of disk space during a write
# =========================================================================================================
class FullDisk:
    """A write-mode file whose writes fail with ENOSPC once `budget` bytes are written."""

    def __init__(self, f, budget: int):
        self.f, self.budget = f, budget

    def write(self, data):
        n = len(data.encode()) if isinstance(data, str) else len(memoryview(data).cast("B"))
        if n > self.budget:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.budget -= n
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_disk_full_in_atomic_file_keeps_the_old_file(tmp_path, monkeypatch):
    import speechft.io_utils as io_utils

    dest = tmp_path / "results.json"
    io_utils.write_json(dest, {"old": True})
    real = io_utils.os.fdopen
    monkeypatch.setattr(io_utils.os, "fdopen", lambda fd, mode="r", *a, **k: FullDisk(real(fd, mode, *a, **k), 64))
    with pytest.raises(SpeechFTError, match="no space left on device while writing it") as e:
        io_utils.write_json(dest, {"new": "x" * 10_000})
    assert str(dest) in str(e.value) and "\n" not in str(e.value)
    monkeypatch.undo()
    assert json.loads(dest.read_text()) == {"old": True} and leftovers(dest) == []


def test_disk_full_in_atomic_dir_keeps_the_old_folder(tmp_path):
    from speechft.io_utils import atomic_dir

    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "a.txt").write_text("old")
    with pytest.raises(SpeechFTError, match="no space left on device"):
        with atomic_dir(dest, overwrite=True) as tmp:
            (tmp / "a.txt").write_text("new")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert (dest / "a.txt").read_text() == "old" and leftovers(dest) == []


def test_disk_full_during_merge(tmp_path, capsys, monkeypatch, pair):
    import speechft.safetensors_io as safetensors_io

    def full_open(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        return FullDisk(f, 4096) if "w" in mode else f

    monkeypatch.setattr(safetensors_io, "open", full_open, raising=False)
    out = tmp_path / "merged"
    rc = cli("merge", "--pretrained", pair[0], "--finetuned", pair[1], "--out", out)
    refused(capsys, rc, [str(out), "no space left on device", "free some space"], outputs=[out])


def test_disk_full_when_evaluate_writes_results_keeps_the_previous_results(
    tmp_path, capsys, monkeypatch, cls_task, tiny_encoder_dir
):
    import speechft.io_utils as io_utils

    out = tmp_path / "eval"
    argv = [
        "evaluate",
        "--encoder",
        tiny_encoder_dir("hubert"),
        "--task",
        cls_task,
        "--out",
        out,
        "--no-cache",
        "--epochs",
        "1",
        "--lrs",
        "1e-2",
        "--min-steps",
        "0",
        "--quiet",
        "--overwrite",
    ]
    out.mkdir()
    (out / "results.json").write_text('{"previous": 1}\n')

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_utils.os, "fsync", no_space)
    refused(capsys, cli(*argv), [f"{out / 'results.json'}: no space left on device", "nothing was changed"])
    assert json.loads((out / "results.json").read_text()) == {"previous": 1}
    assert leftovers(out / "results.json") == []


# =========================================================================================================
# The same contract from a real process (exit status and stderr as a shell sees them)
# =========================================================================================================
def test_a_real_process_gets_one_line_and_exit_2(tmp_path, pair):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "speechft",
            "merge",
            "--pretrained",
            str(pair[0]),
            "--finetuned",
            str(pair[1]),
            "--alpha",
            "a quarter",
            "--out",
            str(tmp_path / "m"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "alpha='a quarter'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "m").exists()


# =========================================================================================================
# The feature cache cannot be written (issue 18): one line naming the cache folder, nothing half-written
# =========================================================================================================
def _evaluate_into_cache(cls_task, out, cache) -> int:
    return cli(
        *("evaluate", "--encoder", "fbank", "--task", cls_task, "--out", out, "--cache", cache),
        *("--epochs", "1", "--lrs", "1e-2", "--min-steps", "0", "--quiet"),
    )


def test_disk_full_while_writing_a_feature_cache_entry(tmp_path, capsys, monkeypatch, cls_task):
    import speechft.feature_cache as feature_cache

    def full_save(file, arr, allow_pickle=False):
        Path(file).write_bytes(b"\x93NUMPY half")  # a partial array, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(feature_cache.np, "save", full_save)
    out, cache = tmp_path / "eval", tmp_path / "cache"
    rc = _evaluate_into_cache(cls_task, out, cache)
    refused(capsys, rc, [f"feature cache {cache}: no space left on device", "--no-cache"], outputs=[out])
    assert list(cache.iterdir()) == []  # no entry, no temp folder


def test_disk_full_while_writing_a_cache_entrys_meta_names_the_cache_not_its_temp_folder(tmp_path, monkeypatch):
    import speechft.io_utils as io_utils
    from speechft.feature_cache import FeatureCache

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    cache = FeatureCache(tmp_path / "cache")
    monkeypatch.setattr(io_utils.os, "fsync", no_space)  # meta.json goes through atomic_file
    with pytest.raises(SpeechFTError) as e:
        with cache.write("f" * 32, {}) as w:
            w.add("x", np.ones(4))
    msg = str(e.value)
    assert msg.startswith(f"feature cache {tmp_path / 'cache'}: no space left on device") and ".tmp" not in msg
    assert list((tmp_path / "cache").iterdir()) == []


def test_read_only_feature_cache_is_one_line(tmp_path, capsys, monkeypatch, cls_task):
    import speechft.io_utils as io_utils

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(io_utils.tempfile, "mkdtemp", read_only)
    out, cache = tmp_path / "eval", tmp_path / "cache"
    rc = _evaluate_into_cache(cls_task, out, cache)
    refused(capsys, rc, [f"feature cache {cache}: read-only file system", "--cache DIR"], outputs=[out])


def test_a_clip_removed_after_its_task_was_loaded_is_one_line(cls_task):
    # The cache's content fingerprint reads every clip before extraction does (loading checked they exist).
    from speechft.data import load_task
    from speechft.features import AudioFingerprints

    task = load_task(cls_task)
    gone = task.split("test")[0].path
    gone.unlink()
    with pytest.raises(SpeechFTError, match="cannot read this clip") as e:
        AudioFingerprints().split(task, "test")
    assert str(e.value).startswith(str(gone)) and "\n" not in str(e.value)


# =========================================================================================================
# Issue 18: merges that are silently wrong
# =========================================================================================================
def test_merge_of_a_fine_tune_of_another_encoder_is_refused_in_one_line(tmp_path, capsys, tiny_encoder_dir):
    from speechft.encoders import load_encoder
    from speechft.provenance import folder_sha256, lineage_entry

    pre_a, pre_b = tiny_encoder_dir("hubert", 0), tiny_encoder_dir("hubert", 1)
    ft = tmp_path / "ft"
    parent = lineage_entry("pretrained", pre_a, "hubert", {}, folder_sha256(pre_a))
    load_encoder(pre_a).save(ft, provenance={"parents": [parent]})
    out = tmp_path / "merged"
    argv = ["merge", "--pretrained", pre_b, "--finetuned", ft, "--out", out]
    refused(capsys, cli(*argv), [f"{ft} was fine-tuned from {pre_a}", str(pre_b), "--allow-foreign-parent"], [out])
    assert cli(*argv, "--allow-foreign-parent") == 0
    assert json.loads((out / "speechft.json").read_text())["merge"]["foreign_parents"] == [str(ft.resolve())]


def test_merge_alpha_whose_forward_is_not_finite_is_refused_in_one_line(tmp_path, capsys, pair):
    out = tmp_path / "merged"
    argv = ["merge", "--pretrained", pair[0], "--finetuned", pair[1], "--out", out, "--alpha", "1e30"]
    refused(capsys, cli(*argv), ["not finite", "alpha"], [out])


def test_merge_of_a_killed_finetune_says_resume_it(tmp_path, capsys, pair):
    killed, out = tmp_path / "killed", tmp_path / "merged"
    (killed / "checkpoints").mkdir(parents=True)
    argv = ["merge", "--pretrained", pair[0], "--finetuned", killed, "--out", out]
    refused(capsys, cli(*argv), [f"{killed}: this run has not finished", "speechft finetune --resume"], [out])


# =========================================================================================================
# Tiny files and options that would exhaust the machine (tests/test_bounds.py measures the bounds)
# =========================================================================================================
def test_task_yaml_with_a_yaml_alias_is_refused(tmp_path, capsys, cls_task, tiny_encoder_dir):
    y = cls_task / "task.yaml"
    y.write_text(y.read_text().replace("labels:", "_l: &l [low, high]\nlabels: *l\nunused:", 1))
    out = tmp_path / "e"
    rc = cli("evaluate", "--encoder", tiny_encoder_dir("hubert"), "--task", cls_task, "--out", out, "--no-cache")
    refused(capsys, rc, [f"{y}: line", "uses the YAML alias *l", "aliases are refused"], outputs=[out])


@pytest.mark.parametrize("where", ["--config", "--set"])
def test_finetune_config_with_a_yaml_alias_is_refused(tmp_path, capsys, cls_task, tiny_encoder_dir, where):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("seed: &s 3\nsteps: *s\n")
    extra = ["--config", recipe] if where == "--config" else ["--set", "optim.betas=[&b 0.9, *b]"]
    needles = [f"{recipe}: line 2 uses the YAML alias *s"] if where == "--config" else ["--set optim.betas: line 1"]
    out = tmp_path / "ft"
    rc = cli("finetune", "--encoder", tiny_encoder_dir("hubert"), "--task", cls_task, "--out", out, *extra)
    refused(capsys, rc, [*needles, "aliases are refused"], outputs=[out])


def test_sweep_refuses_an_alpha_range_past_its_limit(tmp_path, capsys, pair, cls_task):
    out = tmp_path / "sw"
    argv = ["sweep", "--pretrained", pair[0], "--finetuned", pair[1], "--task", cls_task, "--out", out]
    refused(capsys, cli(*argv, "--alphas", "0:1:1e-12"), ["--alphas 0:1:1e-12", "more than the limit of 1001"], [out])


# =========================================================================================================
# Sizes declared by a file are bounded before anything is allocated
# =========================================================================================================
@pytest.mark.parametrize("spec", ["[(512, 10, 5)] * 1000000000000", "([(512, 3, 2)] * 60 + [(512, 2, 2)] * 5)"])
def test_conv_feature_layers_repeated_past_any_front_end_are_refused(spec):
    from speechft.encoders.fairseq_layout import MAX_CONV_LAYERS, parse_conv_layers

    with pytest.raises(SpeechFTError, match=f"more than {MAX_CONV_LAYERS} layers|not a list of"):
        parse_conv_layers(spec)
    assert len(parse_conv_layers("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2")) == 7


@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("input_dim", 10**12, "input_dim must be an integer from 1 to 65536"),
        ("num_states", 10**9, "num_states must be an integer from 1 to 1024"),
        ("input_dim", "768", "input_dim must be an integer"),
        ("labels", "low", "labels must be a list of 1 to"),
        ("labels", [], "labels must be a list of 1 to"),
        ("labels", [1, 2], "labels must be strings"),
    ],
)
def test_hostile_head_json_sizes_are_refused_before_allocating(tmp_path, key, value, needle):
    from speechft.heads import TaskHead

    folder = TaskHead("classification", ["low", "high"], 8, 3).save(tmp_path / "head")
    meta = json.loads((folder / "head.json").read_text())
    (folder / "head.json").write_text(json.dumps({**meta, key: value}))
    with pytest.raises(SpeechFTError) as e:
        TaskHead.load(folder)
    assert needle in str(e.value) and str(folder / "head.json") in str(e.value) and "\n" not in str(e.value)


def test_convert_refuses_an_alias_in_the_merge_config_beside_the_checkpoint(tmp_path, capsys):
    from test_convert import fairseq_cfg, fairseq_state

    from speechft.encoders import tiny_encoder

    enc = tiny_encoder("wav2vec2", seed=8)
    ckpt = {"model_cfg": {"_name": "wav2vec2", **fairseq_cfg(enc)}, "model_weight": fairseq_state(enc)}
    (tmp_path / "merged").mkdir()
    torch.save(ckpt, tmp_path / "merged" / "merged_model.pt")
    side = tmp_path / "merged" / "config.yaml"
    side.write_text("a: &a [1, 2]\nalpha: *a\nmerge_method: linear\n")
    out = tmp_path / "enc"
    rc = cli("encoder", "convert", "--from", "s3prl", tmp_path / "merged" / "merged_model.pt", "--out", out)
    refused(capsys, rc, [f"{side}: line 2 uses the YAML alias *a", "move it away"], outputs=[out])


# =========================================================================================================
# Disk full and read-only folders outside atomic_file: named as the user's --out, never a hidden temp name
# =========================================================================================================
FAST_FT = ["--steps", "2", "--quiet", "--set", "data.batch_size=4", "eval.log_every=1", "head.proj_dim=16"]


def _no_hidden_name(err: str) -> None:
    assert ".tmp" not in err and "/." not in err, err


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_checkpoint_the_disk_refuses_names_the_run_folder(tmp_path, capsys, monkeypatch, cls_task, code):
    import speechft.checkpoint as checkpoint
    from speechft.io_utils import atomic_file

    def refused_write(path, tensors, metadata=None):
        with atomic_file(path, "wb"):
            raise OSError(code, os.strerror(code))

    monkeypatch.setattr(checkpoint, "save_tensors", refused_write)  # the resumable state's tensors
    enc, out = tmp_path / "enc", tmp_path / "run"
    tiny_encoder("hubert").save(enc)
    rc = cli("finetune", "--encoder", enc, "--task", cls_task, "--out", out, *FAST_FT)
    err = refused(capsys, rc, [f"{out}: {os.strerror(code).lower()} while writing checkpoint step-0000001", "--resume"])
    _no_hidden_name(err)


def _safetensors_io_error(code: int):
    from safetensors import SafetensorError

    def save_file(tensors, filename, metadata=None):
        raise SafetensorError(f"Error while serializing: I/O error: {os.strerror(code)} (os error {code}) at path x")

    return save_file


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_an_encoder_folder_the_disk_refuses_names_the_out_folder(tmp_path, capsys, monkeypatch, code):
    import transformers.modeling_utils as modeling_utils

    monkeypatch.setattr(modeling_utils, "safe_save_file", _safetensors_io_error(code))
    out = tmp_path / "enc"
    rc = cli("encoder", "tiny", "hubert", "--out", out)
    _no_hidden_name(refused(capsys, rc, [f"{out}: {os.strerror(code).lower()} while writing it"], outputs=[out]))


def test_the_finished_encoder_of_a_run_the_disk_refuses_names_the_run_folder(tmp_path, capsys, monkeypatch, cls_task):
    import transformers.modeling_utils as modeling_utils

    enc, out = tmp_path / "enc", tmp_path / "run"
    tiny_encoder("hubert").save(enc)
    monkeypatch.setattr(modeling_utils, "safe_save_file", _safetensors_io_error(errno.ENOSPC))
    rc = cli("finetune", "--encoder", enc, "--task", cls_task, "--out", out, *FAST_FT)
    err = refused(capsys, rc, [f"{out}: no space left on device while writing the finished encoder", "--resume"])
    _no_hidden_name(err)
    monkeypatch.undo()
    assert cli("finetune", "--encoder", enc, "--task", cls_task, "--out", out, "--resume", "--quiet") == 0
    assert (out / "model.safetensors").is_file() and (out / "speechft.json").is_file()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
@pytest.mark.parametrize("command", ["merge", "tiny"])
def test_a_read_only_parent_folder_is_one_line_naming_the_out(tmp_path, capsys, pair, command):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    out = parent / "out"
    try:
        argv = (
            ["merge", "--pretrained", pair[0], "--finetuned", pair[1], "--out", out]
            if command == "merge"
            else ["encoder", "tiny", "hubert", "--out", out]
        )
        _no_hidden_name(refused(capsys, cli(*argv), [f"{out}: permission denied while writing it"], outputs=[out]))
    finally:
        parent.chmod(0o700)


def test_a_read_only_file_system_under_merge_is_one_line_naming_the_out(tmp_path, capsys, monkeypatch, pair):
    import speechft.io_utils as io_utils

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".merged.1@h.x.tmp"))

    monkeypatch.setattr(io_utils.tempfile, "mkdtemp", read_only)
    out = tmp_path / "merged"
    rc = cli("merge", "--pretrained", pair[0], "--finetuned", pair[1], "--out", out)
    _no_hidden_name(refused(capsys, rc, [f"{out}: read-only file system while writing it"], outputs=[out]))
