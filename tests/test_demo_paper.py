"""`speechft demo --scenario paper`: every table is built from the numbers, and a killed run resumes.

The quick form here runs on a tiny random HuBERT (`--encoder`) and a cut-down plan over four synthetic
tasks, so the whole scenario (12 trainings, one evaluation of 23 encoders and fbank) takes seconds per stage; the
real-encoder path is the same code (test_demo.py runs it on the single scenario).
"""

from __future__ import annotations

import dataclasses
import json

import pytest

import speechft.demo as demo_mod
from speechft.demo import PLANS, run_demo
from speechft.errors import SpeechFTError

TINY = dataclasses.replace(
    PLANS["quick"],
    steps=10,  # early stop keeps 2 of them, one past the frozen phase
    eval_every=5,
    probe_epochs=1,
    probe_min_steps=0,
    probe_seeds=(0,),
    probe_lrs=(1e-2,),
    alphas=(0.0, 0.25, 1.0),
    analysis_utterances=8,
    pretrain_steps=4,
    finetune_seeds=(0,),
)
TASKS = ("pr", "ks", "sid", "pr_de")


@pytest.fixture
def tiny_paper(monkeypatch, tmp_path, tiny_encoder_dir):
    monkeypatch.setenv("SPEECHFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(PLANS, "quick", TINY)
    monkeypatch.setattr(demo_mod, "DEMO_TASKS", TASKS)
    encoder = str(tiny_encoder_dir("hubert"))

    def run(out, **kw):
        return run_demo(
            out, quick=True, scenario="paper", target=["ks", "pr", "sid"], encoder=encoder, progress=False, **kw
        )

    return run


class Killed(Exception):
    pass


def kill_at(monkeypatch, n: int):
    """Make the n-th stage that starts from now on raise, as a kill at that point would stop the run."""
    real = demo_mod.Demo.stage
    count = {"n": 0}

    def stage(self, name):
        count["n"] += 1
        if count["n"] == n:
            raise Killed(name)
        return real(self, name)

    monkeypatch.setattr(demo_mod.Demo, "stage", stage)
    return real


def stamps(out):
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("model.safetensors")}


@pytest.mark.slow
def test_paper_scenario_tables_and_resume_after_kills(tiny_paper, monkeypatch, tmp_path, capsys):
    out = tmp_path / "paper"
    killed = []
    for n in (3, 9, 10):  # a fine-tune of Table I, one of the baselines table's, and the one after it
        real = kill_at(monkeypatch, n)
        with pytest.raises(Killed) as e:
            tiny_paper(out)
        killed.append(str(e.value))
        monkeypatch.setattr(demo_mod.Demo, "stage", real)
        before = stamps(out)
        assert before, "the first stages wrote their models"
    assert len(set(killed)) == 3  # three different stages were interrupted
    summary = tiny_paper(out)
    after = stamps(out)
    assert all(after[k] == v for k, v in before.items())  # what was finished was reused, not redone
    # Finished: a rerun does nothing again.
    again = tiny_paper(out)
    assert not any(k.startswith(("fine-tune", "evaluate", "continued")) for k in again["timings"])
    assert again["outcome"] == summary["outcome"]

    report = (out / "report.md").read_text()
    for heading in ("## Table I", "## Baselines, fine-tuned on ks", "## Multi-task: pr+sid", "## Continued"):
        assert heading in report
    results = json.loads((out / "results.json").read_text())
    names = [m["name"] for m in results["models"]]
    for n in (
        "Stable-FT (pr)",
        "Speech-FT (sid)",
        "DoRA (ks)",
        "early stop (ks)",
        "TIES Speech-FT (pr+sid)",
        "averaged Stable-FT (pr+sid)",
        "sequential Speech-FT (pr+sid)",
        "continued PT+merge",
    ):
        assert n in names, n
    # The tables' numbers are the results': Table I's ks row is the pre-trained / Stable-FT / Speech-FT scores
    # over the English tasks (pr_de left out), recomputed here from the results' own per-task terms.
    from speechft.superb_score import ScoreConfig, superb_scores

    english = [{**m, "tasks": {t: r for t, r in m["tasks"].items() if t != "synth_pr_de"}} for m in results["models"]]
    scores = superb_scores(english, ScoreConfig.from_record(results["score_config"]))["scores"]
    row = next(line for line in report.splitlines() if line.startswith("| ks |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:4] == [f"{scores[n]:.1f}" for n in ("pre-trained", "Stable-FT (ks)", "Speech-FT (ks)")]
    assert cells[4:] == ["–"] * 3  # the paper has no ks row
    sid = next(line for line in report.splitlines() if line.startswith("| sid |"))
    assert sid.rstrip(" |").endswith("870.2 | 651.4 | 881.1")  # the paper's SID row beside ours
    merged = json.loads((out / "merged" / "sequential-pr+sid" / "speechft.json").read_text())
    assert merged["merge"]["params"]["alpha"] == 0.25
    assert "Table I" in capsys.readouterr().out


def test_paper_scenario_needs_three_targets_outside_the_language_task(tiny_paper, tmp_path):
    with pytest.raises(SpeechFTError, match="takes 3 different targets"):
        run_demo(tmp_path / "x", quick=True, scenario="paper", target=["ks", "pr"], progress=False)
