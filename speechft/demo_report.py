"""The demo's verdicts and its report: what the numbers say, in plain words, and report.md.

Kept apart from demo.py (which runs the stages) so the rules that turn results into YES / NO lines can
be read, and tested on hand-made results, without running anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from .io_utils import atomic_file, read_json


# ---- fine-tuning seeds pooled into one row ------------------------------------------------------------
def pool_seeds(results: dict, groups: dict[str, list[str]]) -> dict:
    """`results` with each group's models (one per fine-tuning seed) replaced by one model named after the
    group, at the first member's place. Per task: test = the mean over every (fine-tuning seed, probe seed)
    run, test_std = their std, so the spread the verdicts use includes fine-tuning seeds. The SUPERB scores
    are recomputed with the config the evaluation recorded (a score is linear in the metrics: the pooled
    score is the mean of the members')."""
    import numpy as np

    from .superb_score import ScoreConfig, superb_scores

    by = {m["name"]: m for m in results["models"]}
    member_of = {n: g for g, names in groups.items() for n in names}
    models = []
    for m in results["models"]:
        group = member_of.get(m["name"])
        if group is None:
            models.append(m)
        elif m["name"] == groups[group][0]:
            members = [by[n] for n in groups[group]]
            tasks = {}
            for t, first in m["tasks"].items():
                entries = [x["tasks"][t] for x in members]
                runs = [v for e in entries for v in e["test_per_seed"]]
                a = np.asarray(runs, dtype=np.float64)
                tasks[t] = {
                    **first,
                    "dev": float(np.mean([e["dev"] for e in entries])),
                    "test": float(a.mean()),
                    "test_std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
                    "test_per_seed": runs,
                    "finetune_seeds": len(entries),
                }
                if "metrics" in first:
                    tasks[t]["metrics"] = {
                        k: float(np.mean([e["metrics"][k] for e in entries])) for k in first["metrics"]
                    }
            models.append({**m, "name": group, "tasks": tasks, "members": list(groups[group])})
    pooled = {**results, "models": models}
    if results.get("score_config") is not None:
        pooled["superb"] = superb_scores(models, ScoreConfig.from_record(results["score_config"], "demo evaluation"))
    return pooled


# ---- the outcome, in words, from the numbers --------------------------------------------------------
def _metric(results: dict, model: str, task: str):
    m = next(m for m in results["models"] if m["name"] == model)
    return m["tasks"].get(task)


def spread(results: dict, task: str, names: list[str], floor: float) -> float:
    """Run-to-run spread of a task's test metric: the largest std over runs (fine-tuning seeds x probe
    seeds where pooled) among the models compared (at least `floor`, e.g. one test example's worth)."""
    stds = [(_metric(results, n, task) or {}).get("test_std") or 0.0 for n in names]
    return max([floor] + stds)


class _Judge:
    """Gains over the baseline model and the tolerance they are judged against: twice the measured spread."""

    def __init__(self, results: dict, baseline: str):
        from .metrics import LOWER_IS_BETTER

        self.results, self.baseline, self.lower = results, baseline, LOWER_IS_BETTER

    def gain(self, model: str, task: str) -> float:  # positive = better than the baseline model
        r, b = _metric(self.results, model, task), _metric(self.results, self.baseline, task)
        sign = -1.0 if r["metric"] in self.lower else 1.0
        return sign * (r["test"] - b["test"])

    def tol(self, task: str, names: list[str]) -> float:
        n_test = (_metric(self.results, self.baseline, task).get("n") or {}).get("test") or 50
        return 2.0 * spread(self.results, task, names + [self.baseline], floor=1.0 / max(n_test, 1))

    def improves(self, n: int, model: str, task: str) -> str:
        g, e = self.gain(model, task), self.tol(task, [model])
        b, s = _metric(self.results, self.baseline, task)["test"], _metric(self.results, model, task)["test"]
        pts = f"{100 * e:.1f} points"
        move = f"test {_metric(self.results, model, task)['metric']} {100 * b:.1f}% -> {100 * s:.1f}%"
        if g > e:
            return f"({n}) YES - {model} improved the target task {task}: {move} (beyond twice the spread, {pts})."
        if g > 0:
            return f"({n}) NOT CLEARLY - {model} moved the target task {task}: {move}, within twice the spread ({pts})."
        return f"({n}) NO - {model} did not improve the target task {task}: {move}."


def outcome(
    results: dict,
    target_task: str,
    subjects: list[str] | str,
    baseline: str,
    contrast: str,
    rivals: list[str] | None = None,
) -> list[str]:
    """The paper's claims as verdicts computed from `results` (never assumed), every threshold fixed here:
    (1) `contrast` (the fine-tuned model, e.g. Stable-FT) improves the target over `baseline` (the
    pre-trained encoder) by more than twice the spread; then for each subject (a Speech-FT row):
    (2) it improves the target by more than twice the spread; (3) it keeps every other task within twice
    the spread where `contrast` loses at least one beyond it; (4) it has the best aggregate score among
    itself and `rivals` (default: every other model but fbank and the other subjects)."""
    subjects = [subjects] if isinstance(subjects, str) else list(subjects)
    j = _Judge(results, baseline)
    tasks = list(results["models"][0]["tasks"])
    others = [x for x in tasks if x != target_task]
    lines = [j.improves(1, contrast, target_task)]
    scores = {n: s for n, s in (results.get("superb", {}).get("scores") or {}).items() if s is not None}
    for subject in subjects:
        lines.append(j.improves(2, subject, target_task))
        tol = {x: j.tol(x, [subject, contrast]) for x in others}
        lost = [x for x in others if j.gain(subject, x) < -tol[x]]
        contrast_lost = [x for x in others if j.gain(contrast, x) < -tol[x]]
        if lost:
            kept = [x for x in others if x not in lost]
            lines.append(
                f"(3) NO - {subject} lost {', '.join(lost)} beyond twice the spread "
                f"(kept: {', '.join(kept) or 'none'})."
            )
        elif contrast_lost:
            lines.append(
                f"(3) YES - {subject} kept every other task within twice the spread ({', '.join(others)}), where "
                f"{contrast} lost {', '.join(contrast_lost)}."
            )
        else:
            lines.append(
                f"(3) NOT SHOWN - {subject} kept every other task, but {contrast} lost none beyond the spread either: "
                "this run does not show the forgetting that Speech-FT is meant to prevent."
            )
        pool = rivals if rivals is not None else [n for n in scores if n != "fbank" and n not in subjects]
        field = {n: scores[n] for n in [subject, *pool] if n in scores}
        if subject not in field:
            lines.append(f"(4) NO - {subject} has no aggregate score in this run.")
            continue
        best = max(field, key=field.get)
        runner_up = max((v for n, v in field.items() if n != subject), default=float("nan"))
        if best == subject:
            lines.append(
                f"(4) YES - {subject} has the best aggregate score: {scores[subject]:.1f} (next: {runner_up:.1f})."
            )
        else:
            lines.append(
                f"(4) NO - the best aggregate score is {best}'s ({field[best]:.1f}); "
                f"{subject} has {scores[subject]:.1f}."
            )
    return lines


def write_demo_report(
    d, design, results: dict, analysis: dict | None, lines: list[str], tables: list[str], quick: bool
) -> Path:
    """report.md: the outcome, the results table, the figures, the analysis and the time per stage.
    `d` is the demo.Demo that ran (its out folder, plan, seed and timings), `design` the demo.Design its
    scenario built (this module imports nothing of demo.py, which imports it), `results` the pooled ones."""
    from .report import result_figures, results_table

    out = d.out
    variants, sweep_json = design.variants, design.sweep_json

    def rel(p) -> str:
        return os.path.relpath(p, out)

    seeds = [d.seed + k for k in d.plan.finetune_seeds]
    md = (
        [
            f"# speechft demo: {d.scenario} scenario, target {' + '.join(d.targets)}",
            "",
            f"Encoder: {d.encoder or 'Whisper tiny.en (real weights)'}, synthetic benchmark size "
            f"`{d.plan.bench_size}`, seed {d.seed}, "
            f"{d.plan.steps} fine-tuning steps of {d.plan.batch_size} clips, probe seeds {list(d.plan.probe_seeds)}"
            + (f", fine-tuning seeds {seeds} for {', '.join(design.groups)}." if design.groups else "."),
            "",
        ]
        + (
            [
                "> Quick plan: a tiny benchmark and a few fine-tuning steps - an integration run whose numbers are "
                "mostly noise (see the spreads). Run `speechft demo` without --quick for the experiment.",
                "",
            ]
            if quick
            else []
        )
        + ["## Outcome", ""]
        + [f"- {x}" for x in lines]
        + [f"- Note: {x}" for x in design.notes]
        + [
            "",
            "## Results (test set, frozen encoders)",
            "",
            "Mean ± std over every run: probe seeds, and fine-tuning seeds where a row pools several "
            "(`evaluation/results.json` has each seed's encoder on its own).",
            "",
            results_table([results]),
            "",
        ]
        + ([*tables, ""] if tables else [])
        + [
            "| model | what it is |",
            "|---|---|",
        ]
    )
    later = {n for names in design.groups.values() for n in names[1:]}
    md += [
        f"| {v.name} | {v.note or v.kind} (`{rel(v.path) if str(v.path).startswith(str(out)) else v.path}`) |"
        for v in variants
        if v.name not in later
    ]
    md += ["", "## Figures", ""]
    for png in result_figures(results["models"], results["superb"], out / "figures"):
        if png.name.startswith(("task_", "superb_score")):
            md.append(f"![{png.stem}]({rel(png)})")
    if analysis is not None:
        an = out / "analysis"
        md += ["", "Feature similarity to the pre-trained encoder and weight distance:", ""]
        for name in ("cka_per_layer.png", "weight_distance_vs_cka.png", "alpha_vs_cka.png"):
            if (an / name).exists():
                md.append(f"![{name[:-4]}]({rel(an / name)})")
        md += ["", "| model | mean CKA | ‖θ−θ₀‖ / ‖θ₀‖ |", "|---|---:|---:|"]
        for r in analysis["models"]:
            md.append(f"| {r['label']} | {r['cka_mean']:.3f} | {r['weight_distance']['total']['relative']:.4f} |")
    if sweep_json is not None:
        sw = read_json(sweep_json)
        md += [
            "",
            f"Alpha sweep (target {sw['task']}, dev {sw['metric']}; CKA vs pre-trained):",
            "",
            f"![sweep]({rel(sweep_json.parent / 'sweep.png')})",
            "",
            "| alpha | dev metric | mean CKA |",
            "|---:|---:|---:|",
        ]
        md += [f"| {r['alpha']:g} | {100 * r['target_metric']:.1f}% | {r['cka_mean']:.3f} |" for r in sw["results"]]
        if sw.get("pick"):
            md.append(f"\n{sw['pick']['rule']}: alpha = {sw['pick']['alpha']}")
    md += ["", "## Time per stage (s)", "", "| stage | seconds |", "|---|---:|"]
    md += [f"| {k} | {v} |" for k, v in d.timings.items()]
    path = out / "report.md"
    with atomic_file(path) as f:
        f.write("\n".join(md) + "\n")
    return path
