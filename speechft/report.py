"""Comparison reports from results.json files: `speechft report`.

One markdown table (rows = models, columns = tasks + the SUPERB score, the best value of
each column in bold, with the metric's direction taken into account), a bar chart per
task, a bar chart of the scores, and one layer-weight profile per model (which hidden
states the probes leaned on).

SUPERB_S is the one results.json holds: a results file records the score config
`speechft evaluate` used, and the report scores with that config (a single file's stored
scores are printed as they are), unless --score-config is given. Files that recorded
different configs are scored with the first one, and the report says so in one line.
When the config scores tasks that were not evaluated (superb_speechft's sf, say), the
score column's header says over how many tasks, and a line below the table which are
missing (superb_score.missing_note); models without a score get a line saying why.

Library: `write_report(results, out) -> Path` (report.md), `results_table(results) -> str`,
`report_scores(results) -> dict`.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from pathlib import Path

from .errors import SpeechFTError
from .io_utils import atomic_dir, atomic_file, check_output_location, read_json, refuse_existing_output
from .metrics import LOWER_IS_BETTER, is_better

SCORE = "SUPERB_S"
DPI = 110  # report figures are small bar charts: a little less resolution than analysis plots


def _load(results: Sequence) -> list[dict]:
    out = []
    for r in results:
        if isinstance(r, dict):
            out.append(r)
            continue
        path = Path(r)
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("models"), list):
            raise SpeechFTError(
                f"{path}: not a speechft results.json (no 'models' list); pass the file written by `speechft evaluate`"
            )
        data = dict(data, _path=str(path))
        out.append(data)
    return out


def merge_models(results: Sequence) -> list[dict]:
    """All models of several results files. A model evaluated in two files (same name, same
    weights) is merged task by task (later files win); two different models sharing a
    name are told apart by a suffix."""
    merged: dict[str, dict] = {}
    for data in _load(results):
        for m in data["models"]:
            name = m.get("name")
            if not name or not isinstance(m.get("tasks"), dict):
                raise SpeechFTError(f"{data.get('_path', 'results')}: a model entry lacks 'name' or 'tasks'")
            key, k = name, 1
            while key in merged and merged[key].get("fingerprint") != m.get("fingerprint"):
                k += 1
                key = f"{name} ({k})"
            if key in merged:
                merged[key]["tasks"].update(m["tasks"])
            else:
                merged[key] = {**m, "name": key, "tasks": dict(m["tasks"])}
    return list(merged.values())


def _task_order(models: list[dict]) -> list[str]:
    order: list[str] = []
    for m in models:
        for t in m["tasks"]:
            if t not in order:
                order.append(t)
    return order


def _task_meta(models: list[dict], task: str) -> dict:
    return next(m["tasks"][task] for m in models if task in m["tasks"])


def _fmt(r: dict) -> str:
    v = 100 * r["test"]
    std = r.get("test_std") or 0.0
    return f"{v:.2f} ± {100 * std:.2f}" if len(r.get("test_per_seed", [])) > 1 else f"{v:.2f}"


def _best(values: dict[str, float], metric: str) -> set[str]:
    best = None
    for v in values.values():
        if best is None or is_better(metric, v, best):
            best = v
    return {k for k, v in values.items() if best is not None and abs(v - best) <= 1e-12}


def report_scores(results: Sequence, score_config=None) -> dict:
    """The SUPERB scores of the merged models of `results` (superb_score.superb_scores's dict).

    With `score_config`, scored with it. Otherwise with the config the results recorded: one
    results file's stored scores as they are; several files scored again over all their
    models with the first file's recorded config (`warning` says so when the files recorded
    different configs); files from before configs were recorded, with the default config."""
    from .superb_score import ScoreConfig, load_score_config, superb_scores

    loaded = _load(results)
    models = merge_models(loaded)
    if score_config is not None:
        return superb_scores(models, load_score_config(score_config))
    recorded = [(d.get("_path", "results"), d["score_config"]) for d in loaded if d.get("score_config") is not None]
    if not recorded:
        return superb_scores(models, load_score_config())
    if len(loaded) == 1 and isinstance(loaded[0].get("superb"), dict):
        return loaded[0]["superb"]
    where, first = recorded[0]
    config = ScoreConfig.from_record(first, where)
    scores = superb_scores(models, config)
    shas = {ScoreConfig.from_record(r, w).sha256() for w, r in recorded}
    if len(shas) > 1:
        used = ", ".join(f"{Path(w).name}: {r.get('name')}" for w, r in recorded)
        scores["warning"] = (
            f"the results files were scored with different SUPERB score configs ({used}); {SCORE} here uses "
            f"'{config.name}' from {Path(where).name} for all; pass --score-config to choose one"
        )
    return scores


def results_table(results: Sequence, score_config=None, scores: dict | None = None, notes: bool = True) -> str:
    """The markdown comparison table (values in %, best per column in bold); with `notes`,
    followed by a line per thing the score leaves out (missing tasks, unscored models)."""
    from .superb_score import missing_note

    models = merge_models(results)
    if not models:
        raise SpeechFTError("the results hold no model to report")
    scores = scores or report_scores(results, score_config)
    tasks = _task_order(models)
    header = ["model"]
    for t in tasks:
        metric = _task_meta(models, t)["metric"]
        header.append(f"{t} {metric} {'↓' if metric in LOWER_IS_BETTER else '↑'}")
    n_config = len(scores.get("config_tasks") or [])
    partial = f" ({len(scores['tasks'])} of {n_config} tasks)" if scores.get("missing_tasks") else ""
    header.append(f"{SCORE} ↑{partial}")
    best = {
        t: _best({m["name"]: m["tasks"][t]["test"] for m in models if t in m["tasks"]}, _task_meta(models, t)["metric"])
        for t in tasks
    }
    have = {k: v for k, v in scores["scores"].items() if v is not None}
    best_score = _best(have, "score") if have else set()
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    for m in models:
        row = [m["name"]]
        for t in tasks:
            r = m["tasks"].get(t)
            cell = "–" if r is None else _fmt(r)
            row.append(f"**{cell}**" if r is not None and m["name"] in best[t] else cell)
        s = scores["scores"].get(m["name"])
        cell = "n/a" if s is None else f"{s:.1f}"
        row.append(f"**{cell}**" if m["name"] in best_score else cell)
        lines.append("| " + " | ".join(row) + " |")
    if notes:
        note = missing_note(scores)
        lines += [f"{SCORE} {note}"] if note else []
        lines += [f"{name}: no {SCORE} ({why})" for name, why in scores["notes"].items()]
    return "\n".join(lines)


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "x"


def result_figures(models: list[dict], scores: dict, out: Path) -> list[Path]:
    """One bar chart per task (mean ± std), the SUPERB score chart and each model's layer weights, as PNGs in out."""
    from .plots import figure, save_png

    written = []
    names = [m["name"] for m in models]
    for t in _task_order(models):
        meta = _task_meta(models, t)
        rows = [(m["name"], m["tasks"][t]) for m in models if t in m["tasks"]]
        fig = figure(max(4.0, 0.9 * len(rows) + 2), 3.4, dpi=DPI)
        ax = fig.add_subplot()
        vals = [100 * r["test"] for _, r in rows]
        errs = [100 * (r.get("test_std") or 0.0) for _, r in rows]
        best = _best({n: r["test"] for n, r in rows}, meta["metric"])
        colors = ["tab:orange" if n in best else "tab:blue" for n, _ in rows]
        ax.bar(range(len(rows)), vals, yerr=errs if any(errs) else None, color=colors, capsize=3)
        ax.set_xticks(range(len(rows)), [n for n, _ in rows], rotation=30, ha="right")
        arrow = "lower is better" if meta["metric"] in LOWER_IS_BETTER else "higher is better"
        ax.set_ylabel(f"{meta['metric']} (%)")
        ax.set_title(f"{t}: test {meta['metric']} ({arrow})")
        for i, v in enumerate(vals):
            ax.annotate(f"{v:.1f}", (i, v), ha="center", va="bottom", fontsize=8)
        written.append(save_png(fig, out / f"task_{_safe(t)}.png"))
    have = [(n, scores["scores"][n]) for n in names if scores["scores"].get(n) is not None]
    if have:
        fig = figure(max(4.0, 0.9 * len(have) + 2), 3.4, dpi=DPI)
        ax = fig.add_subplot()
        ax.bar(range(len(have)), [s for _, s in have], color="tab:green")
        ax.set_xticks(range(len(have)), [n for n, _ in have], rotation=30, ha="right")
        ax.axhline(0, color="black", lw=0.8)
        ax.set_ylabel(SCORE)
        partial = ""
        if scores.get("missing_tasks"):
            partial = f", {len(scores['tasks'])} of {len(scores['config_tasks'])} tasks"
        ax.set_title(f"{SCORE} ({scores['config']}{partial}; 0 = baseline, 1000 = reference)")
        for i, (_, s) in enumerate(have):
            ax.annotate(f"{s:.0f}", (i, s), ha="center", va="bottom", fontsize=8)
        written.append(save_png(fig, out / "superb_score.png"))
    for m in models:
        profiles = [(t, r["layer_weights"]) for t, r in m["tasks"].items() if r.get("layer_weights")]
        if not profiles:
            continue
        fig = figure(5.5, 3.4, dpi=DPI)
        ax = fig.add_subplot()
        for t, w in profiles:
            ax.plot(range(len(w)), w, marker="o", label=t)
        n = max(len(w) for _, w in profiles)
        ax.axhline(1.0 / n, color="gray", ls="--", lw=0.8, label="uniform")
        # From zero: a profile that barely left uniform should look flat, not dramatic.
        ax.set_ylim(0, max(max(max(w) for _, w in profiles) * 1.15, 2.0 / n))
        ax.set_xticks(range(n))
        ax.set_xlabel("hidden state (0 = input to the first layer)")
        ax.set_ylabel("softmax layer weight")
        ax.set_title(f"{m['name']}: learned layer weights")
        ax.legend(fontsize=8)
        written.append(save_png(fig, out / f"layers_{_safe(m['name'])}.png"))
    return written


def write_report(
    results: Sequence,
    out: str | os.PathLike,
    score_config=None,
    title: str = "Evaluation report",
    plots: bool = True,
    scores: dict | None = None,
) -> Path:
    """Write out/report.md (+ PNG figures) from results dicts or results.json paths; `scores`
    (report_scores's dict) when the caller has them already."""
    from .superb_score import missing_note

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = merge_models(results)
    if not models:
        raise SpeechFTError("the results hold no model to report")
    scores = scores or report_scores(results, score_config)
    table = results_table(results, scores=scores, notes=False)
    loaded = _load(results)
    lines = [
        f"# {title}",
        "",
        "Test metrics in % (mean ± standard deviation over seeds where several ran); the best value of each "
        "column in **bold** (↓ lower is better, ↑ higher is better). Encoders frozen, probes on a learnable "
        "weighted sum of all hidden states, learning rate chosen on dev.",
        "",
        table,
        "",
    ]
    cfg_name = scores["config"]
    lines.append(
        f"{SCORE} = 1000/|T| · Σ_t mean_m (m − baseline)/(reference − baseline), config `{cfg_name}` "
        f"({scores.get('config_path')}); tasks scored: {', '.join(scores['tasks']) or 'none'}."
    )
    if scores.get("warning"):
        lines.append(f"- Warning: {scores['warning']}")
    if missing_note(scores):
        lines.append(f"- {SCORE} {missing_note(scores)}.")
    for t, why in (scores.get("dropped_tasks") or {}).items():
        lines.append(f"- task {t} is not scored: {why}, so it cannot tell models apart")
    for name, note in scores["notes"].items():
        lines.append(f"- {name}: no score ({note})")
    lines += [
        "",
        "## Details",
        "",
        "| model | task | dev | test | chosen LR | epochs | best epoch per seed | features |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for m in models:
        for t, r in m["tasks"].items():
            chosen = next((s for s in r.get("lr_search", []) if s["lr"] == r.get("chosen_lr")), {})
            best_epochs = chosen.get("best_epoch_per_seed", "")
            cache = ", ".join(f"{k}: {v}" for k, v in (r.get("cache") or {}).items())
            lines.append(
                f"| {m['name']} | {t} | {100 * r['dev']:.2f} | {_fmt(r)} | {r.get('chosen_lr', '')} | "
                f"{chosen.get('epochs', '')} | {best_epochs} | {cache} |"
            )
    protocols = [d.get("protocol") for d in loaded if d.get("protocol")]
    if protocols:
        p = protocols[0]
        lines += [
            "",
            f"Protocol: LRs {p.get('lrs')}, {p.get('epochs')} epochs (more where needed to reach "
            f"{p.get('min_steps', 0)} optimizer steps), seeds {p.get('seeds')}, ctc head {p.get('ctc_head')}, "
            f"features {p.get('dtype')}.",
        ]
        if any(q != p for q in protocols[1:]):
            lines.append("Warning: the results files were produced with different protocols; compare with care.")
    if plots:
        figures = result_figures(models, scores, out)
        lines += ["", "## Figures", ""] + [f"![{f.stem}]({f.name})" for f in figures]
    path = out / "report.md"
    with atomic_file(path) as f:
        f.write("\n".join(lines) + "\n")
    return path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", metavar="RESULTS.json", help="results.json file(s) from `speechft evaluate`")
    p.add_argument("--out", required=True, help="output folder for report.md and the PNG figures")
    p.add_argument(
        "--score-config",
        "--baseline-config",
        dest="score_config",
        default=None,
        help="SUPERB score config (YAML, or a name in speechft/configs); default: the one each results.json "
        "recorded (superb_synthetic for files that recorded none)",
    )
    p.add_argument("--title", default="Evaluation report")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out folder (once the new one is complete)"
    )


def main(args) -> int:
    import sys

    check_output_location(args.out, {"RESULTS.json": args.results})
    refuse_existing_output(args.out, args.overwrite)
    scores = report_scores(args.results, args.score_config)
    if scores.get("warning"):
        print(f"speechft: warning: {scores['warning']}", file=sys.stderr)
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:  # report.md and figures appear together
        write_report(args.results, tmp, title=args.title, scores=scores)
    print(results_table(args.results, scores=scores))
    out = Path(args.out)
    print(f"wrote {out / 'report.md'} and its figures in {out}")
    return 0
