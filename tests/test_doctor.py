"""`speechft doctor` reports every problem at once."""

from __future__ import annotations

import numpy as np
import soundfile as sf
from safetensors.torch import load_file, save_file

from speechft.cli import main
from speechft.doctor import doctor


def errors(findings):
    return [f for f in findings if f.level == "error"]


def test_clean_folders_have_no_errors(cls_task, tiny_encoder_dir):
    assert errors(doctor(cls_task)) == []
    assert errors(doctor(tiny_encoder_dir("whisper"))) == []


def test_task_problems_in_several_files_all_reported(cls_task):
    dev, test = cls_task / "dev.tsv", cls_task / "test.tsv"
    dev.write_text(dev.read_text().replace("\tlow\t", "\tmedium\t", 1))
    first_test = test.read_text().splitlines()[1].split("\t")[0]
    sf.write(cls_task / first_test, np.full(1600, np.nan, np.float32), 16000, subtype="FLOAT")
    found = errors(doctor(cls_task))
    text = " | ".join(map(str, found))
    assert "dev.tsv" in text and "medium" in text  # manifest problem
    assert "NaN" in text  # audio problem in another split, reported too


def test_encoder_nan_and_stale_hash(tiny_encoder_dir):
    folder = tiny_encoder_dir("hubert")
    sd = load_file(str(folder / "model.safetensors"))
    keys = [k for k in sd if sd[k].is_floating_point()][:2]
    for k in keys:
        sd[k].view(-1)[0] = float("inf")
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    found = doctor(folder)
    text = " | ".join(map(str, found))
    assert all(k in text for k in keys)  # both bad tensors named, not just the first
    assert "provenance is stale" in text


def test_cli_exit_code(cls_task, tiny_encoder_dir, capsys):
    assert main(["doctor", str(cls_task), str(tiny_encoder_dir("wav2vec2"))]) == 0
    (cls_task / "train.tsv").unlink()
    assert main(["doctor", str(cls_task)]) == 1
    assert "train.tsv: missing" in capsys.readouterr().out


def test_problems_only_and_device(tiny_encoder_dir, capsys):
    import torch

    folder = str(tiny_encoder_dir("hubert"))
    assert main(["doctor", folder, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "[ok]" in out and "forward on 1 s (cpu)" in out
    assert main(["doctor", folder, "--problems-only"]) == 0
    assert "[ok]" not in capsys.readouterr().out
    if not torch.cuda.is_available():  # asking for a device this machine lacks is refused, in one line
        assert main(["doctor", folder, "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--device cuda: CUDA is not available" in err


def test_no_forward_checks_the_files_only(tiny_encoder_dir, capsys):
    folder = tiny_encoder_dir("hubert")
    sd = load_file(str(folder / "model.safetensors"))
    sd["masked_spec_embed"].view(-1)[0] = float("nan")
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    assert main(["doctor", "--no-forward", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "masked_spec_embed: 1 NaN/infinite values" in out and "forward on" not in out
