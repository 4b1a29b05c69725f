"""The demo's verdicts and its report: what the numbers say, in plain words, and report.md.

Kept apart from demo.py (which runs the stages) so the rules that turn results into YES / NO lines can
be read, and tested on hand-made results, without running anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from .io_utils import atomic_file, read_json


# ---- the outcome, in words, from the numbers --------------------------------------------------------
def _metric(results: dict, model: str, task: str):
    m = next(m for m in results["models"] if m["name"] == model)
    return m["tasks"].get(task)


def spread(results: dict, task: str, names: list[str], floor: float) -> float:
    """Run-to-run spread of a task's test metric: the largest std over probe seeds among the models
    compared (at least `floor`, e.g. one test example's worth)."""
    stds = [(_metric(results, n, task) or {}).get("test_std") or 0.0 for n in names]
    return max([floor] + stds)


def outcome(results: dict, target_task: str, subject: str, baseline: str, contrast: str | None) -> list[str]:
    """Sentences on the paper's claims, computed from `results` (never assumed)."""
    from .metrics import LOWER_IS_BETTER

    lines = []
    tasks = [t for t in results["models"][0]["tasks"]]
    meta = {t: _metric(results, subject, t) for t in tasks}

    def gain(model: str, task: str) -> float:  # positive = better than the baseline model
        r, b = _metric(results, model, task), _metric(results, baseline, task)
        sign = -1.0 if r["metric"] in LOWER_IS_BETTER else 1.0
        return sign * (r["test"] - b["test"])

    def tol(task: str, names: list[str]) -> float:
        n_test = (meta[task].get("n") or {}).get("test") or 50
        return 2.0 * spread(results, task, names, floor=1.0 / max(n_test, 1))

    t = target_task
    g, e = gain(subject, t), tol(t, [subject, baseline])
    b, s = _metric(results, baseline, t)["test"], _metric(results, subject, t)["test"]
    metric = meta[t]["metric"]
    if g > e:
        lines.append(
            f"YES - {subject} improved the target task {t}: test {metric} {100 * b:.1f}% -> {100 * s:.1f}% "
            f"(beyond twice the measured spread, {100 * e:.1f} points)."
        )
    elif g > 0:
        lines.append(
            f"NOT CLEARLY - {subject} moved the target task {t} from {100 * b:.1f}% to {100 * s:.1f}% "
            f"({metric}), within twice the measured spread ({100 * e:.1f} points)."
        )
    else:
        lines.append(
            f"NO - {subject} did not improve the target task {t}: {100 * b:.1f}% -> {100 * s:.1f}% ({metric})."
        )
    others = [x for x in tasks if x != t]
    kept, lost, contrast_lost = [], [], []
    for x in others:
        ex = tol(x, [subject, baseline] + ([contrast] if contrast else []))
        (kept if gain(subject, x) >= -ex else lost).append(x)
        if contrast and gain(contrast, x) < -ex:
            contrast_lost.append(x)
    if not lost:
        lines.append(f"YES - {subject} kept every other task within twice the measured spread ({', '.join(others)}).")
    else:
        lines.append(
            f"NO - {subject} lost {', '.join(lost)} beyond twice the measured spread "
            f"(kept: {', '.join(kept) or 'none'})."
        )
    if contrast:
        if contrast_lost:
            kept_by_subject = [x for x in contrast_lost if x in kept]
            where = f" where {subject} kept {', '.join(kept_by_subject)}" if kept_by_subject else ""
            lines.append(f"{contrast} lost {', '.join(contrast_lost)} beyond the spread{where}.")
        else:
            lines.append(
                f"{contrast} did not lose any other task beyond the spread in this run, so this run does not "
                "show the forgetting that Speech-FT is meant to prevent."
            )
    scores = {
        n: s for n, s in (results.get("superb", {}).get("scores") or {}).items() if s is not None and n != "fbank"
    }
    if subject in scores:
        best = max(scores, key=scores.get)
        if best == subject:
            lines.append(
                f"YES - {subject} has the best aggregate score: {scores[subject]:.1f} "
                f"(next: {sorted(scores.values())[-2]:.1f})."
            )
        else:
            lines.append(
                f"NO - the best aggregate score is {best}'s ({scores[best]:.1f}); {subject} has {scores[subject]:.1f}."
            )
    return lines


def write_demo_report(
    d,
    variants: list,
    results: dict,
    analysis: dict | None,
    sweep_json: Path | None,
    target: str,
    lines: list[str],
    quick: bool,
) -> Path:
    """report.md: the outcome, the results table, the figures, the analysis and the time per stage.
    `d` is the demo.Demo that ran (its out folder, plan, seed and timings), `variants` its demo.Variant
    list (this module imports nothing of demo.py, which imports it)."""
    from .report import results_table

    out = d.out

    def rel(p) -> str:
        return os.path.relpath(p, out)

    md = (
        [
            f"# speechft demo: {d.scenario} scenario, target {' + '.join(d.targets)}",
            "",
            f"Encoder: Whisper tiny.en (real weights), synthetic benchmark size `{d.plan.bench_size}`, seed {d.seed}, "
            f"{d.plan.steps} fine-tuning steps of {d.plan.batch_size} clips, probe seeds {list(d.plan.probe_seeds)}.",
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
        + [
            "",
            "## Results (test set, frozen encoders)",
            "",
            results_table([results]),
            "",
            "| model | what it is |",
            "|---|---|",
        ]
    )
    md += [
        f"| {v.name} | {v.note or v.kind} (`{rel(v.path) if str(v.path).startswith(str(out)) else v.path}`) |"
        for v in variants
    ]
    md += ["", "## Figures", ""]
    ev = out / "evaluation"
    for png in sorted(ev.glob("task_*.png")) + sorted(ev.glob("superb_score.png")):
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
