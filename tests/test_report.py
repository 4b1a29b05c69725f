"""Comparison reports and the SUPERB score, on hand-made results (no training)."""

from __future__ import annotations

import json

import pytest

from speechft.cli import main as cli_main
from speechft.errors import SpeechFTError
from speechft.report import merge_models, results_table, write_report
from speechft.superb_score import load_score_config, superb_scores

PNG = b"\x89PNG\r\n\x1a\n"


def task(metric: str, test: float, per_seed=None, weights=(0.2, 0.3, 0.5)) -> dict:
    per_seed = per_seed or [test]
    return {
        "metric": metric,
        "lower_is_better": metric in ("per", "cer", "wer", "eer"),
        "test": test,
        "test_std": 0.0 if len(per_seed) == 1 else 0.01,
        "test_per_seed": per_seed,
        "dev": test,
        "chosen_lr": 1e-3,
        "layer_weights": list(weights),
        "lr_search": [{"lr": 1e-3, "dev": test, "best_epoch_per_seed": [1]}],
        "cache": {"train": "hit"},
    }


def model(name: str, per: float, acc: float, fingerprint: str | None = None) -> dict:
    return {
        "name": name,
        "encoder": name,
        "fingerprint": fingerprint or name,
        "tasks": {"phones": task("per", per), "speakers": task("accuracy", acc)},
    }


def results(*models) -> dict:
    return {
        "format": 1,
        "kind": "speechft-evaluation",
        "protocol": {"lrs": [1e-3], "epochs": 1, "seeds": [0]},
        "models": list(models),
    }


def row(table: str, name: str) -> list[str]:
    line = next(ln for ln in table.splitlines() if ln.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_table_bolds_the_best_value_per_column_in_the_right_direction():
    res = results(model("fbank", 0.80, 0.30), model("pretrained", 0.20, 0.70), model("merged", 0.10, 0.60))
    table = results_table([res])
    assert "phones per ↓" in table and "speakers accuracy ↑" in table
    assert row(table, "merged")[1] == "**10.00**"  # lowest PER wins
    assert row(table, "pretrained")[1] == "20.00"
    assert row(table, "pretrained")[2] == "**70.00**"  # highest accuracy wins
    assert row(table, "merged")[2] == "60.00"
    # SUPERB_S: fbank 0; pretrained 1000/2 * ((80-20)/80 + (70-30)/70) = 660.7 (the best);
    # merged 1000/2 * ((80-10)/80 + (60-30)/70) = 651.8
    assert row(table, "fbank")[3] == "0.0"
    assert row(table, "pretrained")[3] == "**660.7**"
    assert row(table, "merged")[3] == "651.8"


def test_ties_are_all_bold_and_missing_tasks_show_a_dash():
    a, b = model("a", 0.5, 0.5), model("b", 0.5, 0.4)
    c = {"name": "c", "fingerprint": "c", "tasks": {"phones": task("per", 0.9)}}
    table = results_table([results(a, b, c, model("fbank", 0.9, 0.1))])
    assert row(table, "a")[1] == row(table, "b")[1] == "**50.00**"
    assert row(table, "c")[2] == "–" and row(table, "c")[3] == "n/a"


def test_several_seeds_show_mean_and_spread():
    m = {"name": "m", "fingerprint": "m", "tasks": {"phones": task("per", 0.25, per_seed=[0.24, 0.26])}}
    assert "25.00 ± 1.00" in results_table([results(m)])


def test_superb_score_formula_with_lower_and_higher_is_better_metrics():
    models = [model("fbank", 0.80, 0.30), model("ideal", 0.0, 1.0), model("mid", 0.40, 0.65)]
    s = superb_scores(models, load_score_config())
    assert s["tasks"] == ["phones", "speakers"]
    assert s["scores"]["fbank"] == pytest.approx(0.0)
    assert s["scores"]["ideal"] == pytest.approx(1000.0)
    assert s["scores"]["mid"] == pytest.approx(500.0 * (40 / 80 + 35 / 70))
    # A model worse than the baseline scores below zero.
    worse = superb_scores(models + [model("worse", 0.9, 0.2)], load_score_config())["scores"]["worse"]
    assert worse < 0


def test_superb_score_without_a_baseline_or_with_a_missing_task_gives_no_number():
    s = superb_scores([model("a", 0.2, 0.7)], load_score_config())
    assert s["scores"]["a"] is None and "fbank" in s["notes"]["a"]
    partial = {"name": "p", "tasks": {"phones": task("per", 0.3)}}
    s = superb_scores([model("fbank", 0.8, 0.3), partial], load_score_config())
    assert s["scores"]["p"] is None and "speakers" in s["notes"]["p"]


def test_a_task_the_baseline_already_solves_is_left_out_of_the_score():
    models = [model("fbank", 0.80, 1.0), model("m", 0.40, 1.0)]
    s = superb_scores(models, load_score_config())
    assert s["tasks"] == ["phones"] and "speakers" in s["dropped_tasks"]
    assert s["scores"]["m"] == pytest.approx(500.0)


def test_bad_score_configs_are_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: {pr: {per: {baseline: 1}}}\n")
    with pytest.raises(SpeechFTError, match="baseline: X, reference: Y"):
        load_score_config(bad)
    bad.write_text("units: furlongs\n")
    with pytest.raises(SpeechFTError, match="units"):
        load_score_config(bad)
    with pytest.raises(SpeechFTError, match="not found"):
        load_score_config(tmp_path / "missing.yaml")


def test_write_report_writes_markdown_and_figures(tmp_path):
    res = results(model("fbank", 0.80, 0.30), model("pretrained", 0.20, 0.70), model("merged", 0.10, 0.60))
    path = write_report([res], tmp_path / "rep")
    text = path.read_text()
    assert "| merged | **10.00** |" in text and "SUPERB_S" in text
    for name in (
        "task_phones.png",
        "task_speakers.png",
        "superb_score.png",
        "layers_fbank.png",
        "layers_pretrained.png",
        "layers_merged.png",
    ):
        assert (tmp_path / "rep" / name).read_bytes()[:8] == PNG
        assert f"({name})" in text


def test_merging_results_files(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(results(model("fbank", 0.8, 0.3), model("m", 0.2, 0.7))))
    other = model("m", 0.1, 0.9, fingerprint="different weights")
    b.write_text(json.dumps(results(other)))
    names = [m["name"] for m in merge_models([a, b])]
    assert names == ["fbank", "m", "m (2)"]
    # The same model in two files: its tasks are merged.
    extra = {"name": "m", "fingerprint": "m", "tasks": {"emotion": task("accuracy", 0.5)}}
    merged = merge_models([a, results(extra)])
    assert set(merged[1]["tasks"]) == {"phones", "speakers", "emotion"}


def test_report_cli_and_bad_files(tmp_path, capsys):
    a = tmp_path / "a.json"
    a.write_text(json.dumps(results(model("fbank", 0.8, 0.3), model("m", 0.2, 0.7))))
    assert cli_main(["report", str(a), "--out", str(tmp_path / "rep")]) == 0
    assert "| m |" in capsys.readouterr().out
    (tmp_path / "junk.json").write_text('{"x": 1}')
    assert cli_main(["report", str(tmp_path / "junk.json"), "--out", str(tmp_path / "rep2")]) == 2
    assert "not a speechft results.json" in capsys.readouterr().err


def recorded(res: dict, config) -> dict:
    """`res` as `speechft evaluate` writes it: the score config it used, and the scores."""
    return {**res, "score_config": config.record(), "superb": superb_scores(res["models"], config)}


def test_report_scores_with_the_config_results_json_recorded(tmp_path, capsys):
    mine = tmp_path / "mine.yaml"
    values = "  per: {baseline: 50.0, reference: 0.0}\n  accuracy: {baseline: 50.0, reference: 100.0}\n"
    mine.write_text("name: mine\ndefaults:\n" + values)
    res = recorded(results(model("fbank", 0.80, 0.30), model("m", 0.20, 0.70)), load_score_config(mine))
    mine.unlink()  # the record is enough
    path = tmp_path / "results.json"
    path.write_text(json.dumps(res))
    # 500 * ((50-20)/50 + (70-50)/50) = 500; the default config (fbank baseline) would give 660.7.
    assert row(results_table([path]), "m")[3] == "**500.0**"
    assert cli_main(["report", str(path), "--out", str(tmp_path / "rep")]) == 0
    assert row(capsys.readouterr().out, "m")[3] == "**500.0**"
    assert "config `mine`" in (tmp_path / "rep" / "report.md").read_text()
    assert row(results_table([path], score_config="superb_synthetic"), "m")[3] == "**660.7**"


def test_results_files_with_different_score_configs_are_named_in_one_line(tmp_path, capsys):
    other = tmp_path / "other.yaml"
    other.write_text("name: other\ndefaults:\n  per: {baseline: 50.0, reference: 0.0}\n")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(recorded(results(model("fbank", 0.8, 0.3)), load_score_config())))
    b.write_text(json.dumps(recorded(results(model("m", 0.2, 0.7, fingerprint="x")), load_score_config(other))))
    assert cli_main(["report", str(a), str(b), "--out", str(tmp_path / "rep")]) == 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "different SUPERB score configs" in err
    assert "a.json: synthetic" in err and "b.json: other" in err and "--score-config" in err
    assert "different SUPERB score configs" in (tmp_path / "rep" / "report.md").read_text()
    # Scored with the first file's config (fbank baseline): m gets the default's 660.7.
    assert row(results_table([a, b]), "m")[3] == "**660.7**"


def test_report_imports_neither_torch_nor_transformers(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "results.json"
    path.write_text(json.dumps(results(model("fbank", 0.8, 0.3), model("m", 0.2, 0.7))))
    code = (
        "import sys; from speechft.cli import main; "
        f"rc = main(['report', {str(path)!r}, '--out', {str(tmp_path / 'rep')!r}]); "
        "assert rc == 0; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
