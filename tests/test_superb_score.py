"""The published SUPERB score configs against the papers' printed numbers, and scores over
fewer tasks than a config lists (hand-made results, no training)."""

from __future__ import annotations

import json

import pytest

from speechft.cli import main as cli_main
from speechft.report import results_table, write_report
from speechft.superb_score import load_score_config, superb_scores

# task -> (metric, extra metric or None); the names speechft's task folders record.
METRICS = {
    "pr": ("per", None),
    "ks": ("accuracy", None),
    "ic": ("accuracy", None),
    "sid": ("accuracy", None),
    "er": ("accuracy", None),
    "asr": ("wer", None),
    "qbe": ("mtwv", None),
    "sf": ("slot_type_f1", "slot_value_cer"),
    "asv": ("eer", None),
    "sd": ("der", None),
}


def model(name: str, **printed) -> dict:
    """A results.json model from a paper's row: percent values (MTWV as printed, a fraction);
    SF given as (F1, CER)."""
    tasks = {}
    for t, v in printed.items():
        metric, extra = METRICS[t]
        main, other = v if extra else (v, None)
        frac = main if metric == "mtwv" else main / 100
        tasks[t] = {"metric": metric, "test": frac, "test_per_seed": [frac], "dev": frac}
        if extra:
            tasks[t]["metrics"] = {extra: other / 100}
    return {"name": name, "fingerprint": name, "tasks": tasks}


HUBERT_SUPERB = dict(
    pr=5.41, ks=96.30, ic=98.34, sid=81.42, er=64.92, asr=6.42, qbe=0.0736, sf=(88.53, 25.20), asv=5.11, sd=5.88
)


def test_leaderboard_config_gives_the_superb_papers_hubert_base_941():
    cfg = load_score_config("superb_leaderboard")
    s = superb_scores([model("hubert", **HUBERT_SUPERB)], cfg)
    assert s["tasks"] == ["pr", "ks", "ic", "sid", "er", "asr", "qbe", "sf", "asv", "sd"] and not s["missing_tasks"]
    assert round(s["scores"]["hubert"], 1) == 941.0
    # QbE and ASV sit exactly at the topline; SF is the mean of its two normalised metrics.
    terms = s["per_task"]["hubert"]
    assert terms["qbe"] == pytest.approx(1.0) and terms["asv"] == pytest.approx(1.0)
    assert terms["sf"] == pytest.approx(((88.53 - 69.64) / (89.81 - 69.64) + (52.94 - 25.20) / (52.94 - 21.76)) / 2)


@pytest.mark.parametrize(
    "row, printed",
    [
        (dict(pr=5.17, sid=81.86, er=64.99, sf=(88.54, 24.70)), 870.20),  # HuBERT Base
        (dict(pr=3.94, sid=84.11, er=67.78, sf=(88.84, 23.46)), 905.79),  # HuBERT + Speech-FT
        (dict(pr=5.78, sid=75.26, er=63.45, sf=(88.12, 24.88)), 837.08),  # wav2vec 2.0
    ],
)
def test_speechft_config_reproduces_the_papers_superb_s(row, printed):
    s = superb_scores([model("m", **row)], load_score_config("superb_speechft"))
    assert s["scores"]["m"] == pytest.approx(printed, abs=0.01)


def test_superb_paper_is_the_speechft_config():
    paper, speechft = load_score_config("superb_paper"), load_score_config("superb_speechft")
    assert paper.values() == speechft.values() and paper.path == speechft.path


def test_a_config_task_nobody_evaluated_is_left_out_and_named(tmp_path):
    # pr, sid, er only (no SF folder): scored over 3 tasks, 1000/3 * the sum of their terms.
    row = dict(pr=5.17, sid=81.86, er=64.99)
    models = [model("hubert", **row), model("w2v", pr=5.78, sid=75.26, er=63.45)]
    s = superb_scores(models, load_score_config("superb_paper"))
    assert s["tasks"] == ["pr", "sid", "er"] and s["missing_tasks"] == ["sf"]
    assert s["config_tasks"] == ["pr", "sid", "er", "sf"]
    terms = [
        (82.01 - 5.17) / (82.01 - 2.423),
        (81.86 - 0.00085) / (95.114 - 0.00085),
        (64.99 - 35.39) / (70.675 - 35.39),
    ]
    assert s["scores"]["hubert"] == pytest.approx(1000 / 3 * sum(terms))
    assert "sf" in s["missing_note"] and "not its 4-task scores" in s["missing_note"]
    res = {"format": 1, "kind": "speechft-evaluation", "models": [model("hubert", **row)]}
    table = results_table([res], score_config="superb_speechft")
    assert "SUPERB_S ↑ (3 of 4 tasks)" in table
    assert table.splitlines()[-1] == f"SUPERB_S {s['missing_note']}"
    report = write_report([res], tmp_path / "rep", score_config="superb_speechft", plots=False).read_text()
    assert f"- SUPERB_S {s['missing_note']}." in report


def test_report_cli_prints_the_partial_score_and_the_missing_task(tmp_path, capsys):
    res = {"format": 1, "kind": "speechft-evaluation", "models": [model("hubert", pr=5.17, sid=81.86, er=64.99)]}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(res))
    assert cli_main(["report", str(path), "--score-config", "superb_speechft", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    expect = 1000 / 3 * ((82.01 - 5.17) / 79.587 + (81.86 - 0.00085) / (95.114 - 0.00085) + 29.6 / 35.285)
    assert f"| **{expect:.1f}** |" in out and "also scores sf, not evaluated" in out


def test_no_score_when_one_model_lacks_a_task_another_has_or_no_task_matches():
    full, short = model("full", pr=5.17, sid=81.86, er=64.99), model("short", pr=5.17, sid=81.86)
    s = superb_scores([full, short], load_score_config("superb_speechft"))
    assert s["scores"]["short"] is None and "no result on task er" in s["notes"]["short"]
    assert s["scores"]["full"] is not None and s["missing_tasks"] == ["sf"]
    res = {"format": 1, "kind": "speechft-evaluation", "models": [full, short]}
    assert "short: no SUPERB_S (no result on task er)" in results_table([res], score_config="superb_speechft")
    other = {"name": "x", "tasks": {"phones": {"metric": "per", "test": 0.1}}}
    s = superb_scores([other], load_score_config("superb_speechft"))
    assert s["scores"]["x"] is None and "task.yaml" in s["notes"]["x"] and s["missing_note"] is None


def test_synthetic_defaults_score_the_new_metrics_and_sf_on_both_of_its_metrics():
    def m(name, f1, cer, der, mtwv):
        return {
            "name": name,
            "tasks": {
                "synth_sf": {"metric": "slot_type_f1", "test": f1, "metrics": {"slot_value_cer": cer}},
                "synth_sd": {"metric": "der", "test": der},
                "synth_qbe": {"metric": "mtwv", "test": mtwv},
            },
        }

    s = superb_scores([m("fbank", 0.6, 0.5, 0.4, 0.1), m("enc", 0.8, 0.25, 0.1, 0.55)], load_score_config())
    # SF: mean of (80-60)/(100-60) = 1/2 and (25-50)/(0-50) = 1/2; SD (10-40)/(0-40) = 3/4;
    # QbE (55-10)/(100-10) = 1/2.
    assert s["per_task"]["enc"] == pytest.approx({"synth_sf": 0.5, "synth_sd": 0.75, "synth_qbe": 0.5})
    assert s["scores"]["enc"] == pytest.approx(1000 / 3 * 1.75)
