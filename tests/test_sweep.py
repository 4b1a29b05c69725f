"""`speechft sweep`: alpha vs target metric and CKA."""

from __future__ import annotations

import json

import pytest
import torch

from speechft.data import load_task
from speechft.encoders import load_encoder, tiny_encoder
from speechft.errors import SpeechFTError
from speechft.heads import HeadConfig, TaskHead
from speechft.sweep import parse_alphas, pick_alpha, score_head, sweep


def make_finetuned(tmp_path, task_dir):
    """A stand-in for a finetune run: perturbed weights + a (random) head saved in heads/NAME."""
    pre = tiny_encoder("hubert", seed=0)
    pre_dir = pre.save(tmp_path / "pre")
    ft = tiny_encoder("hubert", seed=0)
    with torch.no_grad():
        for name, p in ft.model.named_parameters():
            if name.startswith("encoder.layers."):
                p.add_(torch.randn_like(p) * 0.2)
    ft_dir = ft.save(tmp_path / "ft")
    task = load_task(task_dir)
    torch.manual_seed(0)
    head = TaskHead.for_task(task, pre.hidden_size, pre.num_layers + 1, HeadConfig(proj_dim=8, layers="weighted"))
    head.save(ft_dir / "heads" / task.name)
    return pre_dir, ft_dir, task


def test_endpoints_match_the_two_models(tmp_path, cls_task):
    pre_dir, ft_dir, task = make_finetuned(tmp_path, cls_task)
    report = sweep(pre_dir, ft_dir, cls_task, tmp_path / "sw", alphas=[0.0, 0.5, 1.0], cka_utterances=6, progress=False)
    rows = {r["alpha"]: r for r in report["results"]}
    # alpha = 0 is the pre-trained encoder: identical features at every layer.
    assert all(abs(c - 1.0) < 1e-6 for c in rows[0.0]["cka_per_layer"])
    assert rows[1.0]["cka_mean"] < 0.999  # the perturbed model's features differ
    head = TaskHead.load(ft_dir / "heads" / task.name).eval()
    assert rows[1.0]["target_metric"] == score_head(load_encoder(ft_dir), head, task)
    assert rows[0.0]["target_metric"] == score_head(load_encoder(pre_dir), head, task)
    saved = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [r["alpha"] for r in saved["results"]] == [0.0, 0.5, 1.0]
    assert (tmp_path / "sw" / "sweep.png").stat().st_size > 1000


def test_missing_head_is_a_clear_error(tmp_path, cls_task):
    pre = tiny_encoder("hubert").save(tmp_path / "pre")
    ft = tiny_encoder("hubert", seed=1).save(tmp_path / "ft")
    with pytest.raises(SpeechFTError, match="no fine-tuned head for task 'tones'"):
        sweep(pre, ft, cls_task, tmp_path / "out", alphas=[0, 1], progress=False)
    assert not (tmp_path / "out").exists()


def test_parse_alphas():
    assert parse_alphas(["0:1:0.25"]) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_alphas(["1", "0.5", "0.5"]) == [0.5, 1.0]
    with pytest.raises(SpeechFTError, match="--alphas a b"):
        parse_alphas(["a", "b"])
    with pytest.raises(SpeechFTError, match="not commas"):  # one CLI grammar: lists are space-separated
        parse_alphas(["0,1"])


def test_pick_rule_higher_and_lower_is_better():
    acc = [
        {"alpha": a, "target_metric": m, "cka_mean": 1 - a} for a, m in [(0, 0.5), (0.25, 0.8), (0.5, 0.88), (1, 0.9)]
    ]
    assert pick_alpha(acc, "accuracy", 0.9)["alpha"] == 0.5  # gain .38 >= .9 * .4
    assert pick_alpha(acc, "accuracy", 0.5)["alpha"] == 0.25
    per = [{"alpha": a, "target_metric": m, "cka_mean": 0} for a, m in [(0, 0.5), (0.25, 0.3), (1, 0.1)]]
    assert pick_alpha(per, "per", 0.5)["alpha"] == 0.25
    worse = [{"alpha": 0, "target_metric": 0.1, "cka_mean": 1}, {"alpha": 1, "target_metric": 0.5, "cka_mean": 0}]
    assert pick_alpha(worse, "per", 0.9)["alpha"] is None


def test_sweep_cli_alphas_range_config_and_device(tmp_path, cls_task, capsys):
    from speechft.cli import main

    pre_dir, ft_dir, _ = make_finetuned(tmp_path, cls_task)
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text("alphas: [0.0, 1.0]\ncka_utterances: 4\n")
    base = ["sweep", "--pretrained", pre_dir, "--finetuned", ft_dir, "--task", cls_task, "--quiet", "--config", cfg]
    assert main([str(a) for a in base + ["--out", tmp_path / "a", "--set", "pick_gain=0.5"]]) == 0
    saved = json.loads((tmp_path / "a" / "sweep.json").read_text())
    assert [r["alpha"] for r in saved["results"]] == [0.0, 1.0] and saved["cka_utterances"] == 4
    assert "pick" in saved
    assert main([str(a) for a in base + ["--out", tmp_path / "b", "--alphas", "0:1:0.5", "--device", "cpu"]]) == 0
    assert [r["alpha"] for r in json.loads((tmp_path / "b" / "sweep.json").read_text())["results"]] == [0, 0.5, 1]
    assert main([str(a) for a in base + ["--out", tmp_path / "c", "--alphas", "0,1"]]) == 2
    assert "not commas" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([str(a) for a in base + ["--out", tmp_path / "d", "--device", "cuda"]]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()
