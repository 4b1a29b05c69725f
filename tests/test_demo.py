"""`speechft demo`: the outcome sentences follow the numbers, and the quick demo runs end to end."""

from __future__ import annotations

import json
import os

import pytest

from speechft.demo_report import outcome


def fake_results(sid: dict, pr: dict, std: float = 0.01, scores: dict | None = None) -> dict:
    """Two tasks: synth_sid (accuracy, target) and synth_pr (per, lower is better)."""
    models = []
    for name in sid:
        models.append(
            {
                "name": name,
                "tasks": {
                    "synth_sid": {"metric": "accuracy", "test": sid[name], "test_std": std, "n": {"test": 100}},
                    "synth_pr": {"metric": "per", "test": pr[name], "test_std": std, "n": {"test": 100}},
                },
            }
        )
    return {"models": models, "superb": {"scores": scores or {}}}


def verdict(line: str) -> str:
    return line.split(" - ")[0]


def test_outcome_when_the_claims_hold():
    r = fake_results(
        sid={"pre-trained": 0.50, "Stable-FT": 0.80, "Speech-FT": 0.70, "L2-SP": 0.6},
        pr={"pre-trained": 0.20, "Stable-FT": 0.40, "Speech-FT": 0.21, "L2-SP": 0.3},
        scores={"pre-trained": 100.0, "Stable-FT": 50.0, "Speech-FT": 150.0, "L2-SP": 120.0},
    )
    lines = outcome(r, "synth_sid", "Speech-FT", "pre-trained", "Stable-FT")
    assert [verdict(x) for x in lines] == ["(1) YES", "(2) YES", "(3) YES", "(4) YES"]
    assert "50.0% -> 80.0%" in lines[0] and "50.0% -> 70.0%" in lines[1]
    assert "where Stable-FT lost synth_pr" in lines[2]
    assert "150.0 (next: 120.0)" in lines[3]


def test_outcome_says_no_where_speech_ft_loses_the_target():
    """The verdicts can fail: Speech-FT below the pre-trained encoder on its own target, and losing pr."""
    r = fake_results(
        sid={"pre-trained": 0.50, "Stable-FT": 0.80, "Speech-FT": 0.49},
        pr={"pre-trained": 0.20, "Stable-FT": 0.21, "Speech-FT": 0.35},
        scores={"pre-trained": 100.0, "Stable-FT": 120.0, "Speech-FT": 90.0},
    )
    lines = outcome(r, "synth_sid", "Speech-FT", "pre-trained", "Stable-FT")
    assert [verdict(x) for x in lines] == ["(1) YES", "(2) NO", "(3) NO", "(4) NO"]
    assert "50.0% -> 49.0%" in lines[1] and "lost synth_pr" in lines[2]
    assert "Stable-FT's (120.0)" in lines[3]


def test_outcome_when_fine_tuning_does_not_learn_the_target():
    r = fake_results(
        sid={"pre-trained": 0.50, "Stable-FT": 0.45, "Speech-FT": 0.50},
        pr={"pre-trained": 0.20, "Stable-FT": 0.20, "Speech-FT": 0.20},
    )
    lines = outcome(r, "synth_sid", "Speech-FT", "pre-trained", "Stable-FT")
    assert verdict(lines[0]) == "(1) NO" and verdict(lines[1]) == "(2) NO"
    assert verdict(lines[2]) == "(3) NOT SHOWN" and "does not show the forgetting" in lines[2]
    assert lines[3] == "(4) NO - Speech-FT has no aggregate score in this run."


def test_outcome_within_twice_the_spread_is_not_a_win():
    # std 0.02: tolerance 0.04; a 0.03 gain is not clear, a 0.05 gain is
    r = fake_results(
        sid={"pre-trained": 0.50, "Speech-FT": 0.53, "Stable-FT": 0.55},
        pr={"pre-trained": 0.20, "Speech-FT": 0.23, "Stable-FT": 0.25},
        std=0.02,
    )
    lines = outcome(r, "synth_sid", "Speech-FT", "pre-trained", "Stable-FT")
    assert verdict(lines[0]) == "(1) YES" and verdict(lines[1]) == "(2) NOT CLEARLY"
    assert verdict(lines[2]) == "(3) YES" and "4.0 points" in lines[1]  # pr: 0.23 kept, 0.25 lost


def test_each_speech_ft_row_gets_its_own_verdicts_against_the_listed_rivals():
    r = fake_results(
        sid={"pre-trained": 0.5, "Stable-FT": 0.8, "Speech-FT": 0.6, "Speech-FT (alpha=0.5, dev-picked)": 0.7},
        pr={"pre-trained": 0.2, "Stable-FT": 0.4, "Speech-FT": 0.2, "Speech-FT (alpha=0.5, dev-picked)": 0.3},
        scores={
            "pre-trained": 100.0,
            "Stable-FT": 90.0,
            "Speech-FT": 110.0,
            "Speech-FT (alpha=0.5, dev-picked)": 120.0,
        },
    )
    subjects = ["Speech-FT", "Speech-FT (alpha=0.5, dev-picked)"]
    lines = outcome(r, "synth_sid", subjects, "pre-trained", "Stable-FT", rivals=["pre-trained", "Stable-FT"])
    assert [verdict(x) for x in lines] == ["(1) YES", "(2) YES", "(3) YES", "(4) YES", "(2) YES", "(3) NO", "(4) YES"]
    assert "110.0 (next: 100.0)" in lines[3]  # the other Speech-FT row is not a rival


def test_pool_seeds_pools_every_run_and_rescores():
    """Two fine-tuning seeds x two probe seeds: one row, the mean and std of the four runs."""
    from speechft.demo_report import pool_seeds
    from speechft.superb_score import load_score_config

    def entry(runs):
        return {"metric": "accuracy", "test": sum(runs) / 2, "test_std": 0.0, "test_per_seed": runs, "dev": 0.5}

    r = {
        "models": [
            {"name": "fbank", "tasks": {"t": entry([0.2, 0.2])}},
            {"name": "S (seed 0)", "tasks": {"t": entry([0.5, 0.7])}},
            {"name": "pre", "tasks": {"t": entry([0.4, 0.4])}},
            {"name": "S (seed 1)", "tasks": {"t": entry([0.6, 0.8])}},
        ],
        "score_config": load_score_config().record(),
    }
    p = pool_seeds(r, {"S": ["S (seed 0)", "S (seed 1)"]})
    assert [m["name"] for m in p["models"]] == ["fbank", "S", "pre"]
    t = p["models"][1]["tasks"]["t"]
    assert t["test"] == pytest.approx(0.65) and t["test_per_seed"] == [0.5, 0.7, 0.6, 0.8]
    assert t["test_std"] == pytest.approx((0.05 / 3) ** 0.5)  # sum of squared deviations 0.05, ddof 1
    assert t["finetune_seeds"] == 2
    # synthetic score: 1000 * (65 - 20) / (100 - 20), the mean of the members' 1000*(60-20)/80 and 1000*(70-20)/80
    assert p["superb"]["scores"]["S"] == pytest.approx(562.5)


def test_each_scenario_makes_and_probes_its_plans_tasks_and_its_own(tmp_path):
    """The plan's tasks, plus the targets, plus asr and pr_de in the paper scenario."""
    from speechft.demo import DEMO_TASKS, PLANS, Demo

    def names(plan, targets, scenario):
        return Demo(tmp_path, PLANS[plan], targets, scenario, seed=0).task_names()

    assert names("full", ["style"], "single") == ["pr", "ks", "sid", "lid", "style"]  # no asr, no pr_de
    assert names("full", ["style", "pr", "sid"], "paper") == list(DEMO_TASKS)  # asr and pr_de included
    assert names("full", ["pr_de"], "continued") == ["pr", "ks", "sid", "lid", "style", "pr_de"]
    assert names("quick", ["style"], "single") == ["ks", "lid", "style"]  # in DEMO_TASKS' order
    assert names("quick", ["pr", "sid"], "multitask") == ["pr", "ks", "sid", "lid", "style"]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SPEECHFT_SKIP_DEMO") == "1", reason="SPEECHFT_SKIP_DEMO=1")
def test_quick_demo_end_to_end_and_resume(tmp_path, monkeypatch, capsys):
    """The integration test: the real Whisper tiny.en, the small synthetic benchmark, every method."""
    from speechft.demo import run_demo

    monkeypatch.setenv("SPEECHFT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    summary = run_demo(out, quick=True, progress=False)
    report = (out / "report.md").read_text()
    for name in (
        "pre-trained",
        "Stable-FT",
        "Speech-FT",
        "regular FT",
        "regular+merge",
        "L2-SP",
        "LoRA",
        "DoRA",
        "early stop",
        "fbank",
    ):
        assert f"| {name} |" in report
    n_rows = 1 + sum(1 for line in summary["outcome"] if line.startswith("(2)"))
    assert len(summary["outcome"]) == 1 + 3 * (n_rows - 1) and n_rows >= 2  # (1), then (2)-(4) per Speech-FT row
    assert all(" - " in line for line in summary["outcome"])
    assert summary["machine"]["cores"] >= 1 and summary["machine"]["matmul_gflops"] > 0  # to compare runs' minutes
    assert json.loads((out / "summary.json").read_text())["machine"] == summary["machine"]
    for png in (
        "figures/task_synth_style.png",
        "analysis/cka_per_layer.png",
        "sweep/sweep.png",
        "analysis/weight_distance_vs_cka.png",
    ):
        assert (out / png).stat().st_size > 1000, png
    merged = json.loads((out / "merged" / "speech-ft" / "speechft.json").read_text())
    assert merged["merge"]["method"] == "linear" and merged["merge"]["params"]["alpha"] == 0.25
    printed = capsys.readouterr().out
    assert "| Speech-FT |" in printed and "Report:" in printed
    # A rerun resumes: nothing is trained or evaluated again.
    stamp = (out / "finetuned" / "stable" / "model.safetensors").stat().st_mtime_ns
    again = run_demo(out, quick=True, progress=False)
    assert (out / "finetuned" / "stable" / "model.safetensors").stat().st_mtime_ns == stamp
    assert not any(k.startswith(("fine-tune", "evaluate")) for k in again["timings"])
    assert again["outcome"] == summary["outcome"]


def test_a_stage_run_twice_keeps_both_timings(tmp_path):
    """summary.json's timings: a sequential round's fine-tune has the same name as the single-task one."""
    from speechft.demo import PLANS, Demo

    d = Demo(tmp_path, PLANS["quick"], ["style"], "single", seed=0, progress=False)
    for _ in range(3):
        with d.stage("fine-tune stable on sid"):
            pass
    assert list(d.timings) == ["fine-tune stable on sid", "fine-tune stable on sid (2)", "fine-tune stable on sid (3)"]
