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


def test_outcome_when_the_claims_hold():
    r = fake_results(
        sid={"pre-trained": 0.50, "Stable-FT": 0.80, "Speech-FT": 0.70},
        pr={"pre-trained": 0.20, "Stable-FT": 0.40, "Speech-FT": 0.21},
        scores={"pre-trained": 100.0, "Stable-FT": 50.0, "Speech-FT": 150.0},
    )
    lines = outcome(r, "synth_sid", "Speech-FT", "pre-trained", "Stable-FT")
    assert lines[0].startswith("YES") and "50.0% -> 70.0%" in lines[0]
    assert lines[1].startswith("YES") and "synth_pr" in lines[1]
    assert "Stable-FT lost synth_pr" in lines[2]
    assert lines[3].startswith("YES") and "150.0" in lines[3]


def test_outcome_says_no_where_the_numbers_say_no():
    r = fake_results(
        sid={"pre-trained": 0.50, "Stable-FT": 0.80, "Speech-FT": 0.49},
        pr={"pre-trained": 0.20, "Stable-FT": 0.21, "Speech-FT": 0.35},
        scores={"pre-trained": 100.0, "Stable-FT": 120.0, "Speech-FT": 90.0},
    )
    lines = outcome(r, "synth_sid", "Speech-FT", "pre-trained", "Stable-FT")
    assert lines[0].startswith("NO")
    assert lines[1].startswith("NO") and "lost synth_pr" in lines[1]
    assert "does not show the forgetting" in lines[2]
    assert lines[3].startswith("NO") and "Stable-FT" in lines[3]


def test_outcome_within_spread_is_not_a_win():
    r = fake_results(
        sid={"pre-trained": 0.50, "Speech-FT": 0.52, "Stable-FT": 0.6},
        pr={"pre-trained": 0.20, "Speech-FT": 0.20, "Stable-FT": 0.2},
        std=0.02,
    )
    assert outcome(r, "synth_sid", "Speech-FT", "pre-trained", None)[0].startswith("NOT CLEARLY")


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
        "early stop",
        "fbank",
    ):
        assert f"| {name} |" in report
    assert len(summary["outcome"]) == 4
    assert all(line.split(" - ")[0] in ("YES", "NO", "NOT CLEARLY") for line in summary["outcome"][:2])
    for png in (
        "evaluation/task_synth_sid.png",
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
