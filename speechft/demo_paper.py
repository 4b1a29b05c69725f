"""`speechft demo --scenario paper`: the Speech-FT paper's tables in miniature, in one resumable command.

    speechft demo --scenario paper                      # the full plan (budget: 60 min on 2 CPU cores)
    speechft demo --scenario paper --quick              # the same tables on the small benchmark

On the embedded default (Whisper tiny.en) and the synthetic mini-SUPERB, every model is fine-tuned with the
demo's plan (one fine-tuning seed each; `speechft demo` pools two for its target) and the whole lot is
probed in one evaluation. Tables, each with the paper's own numbers beside it for the reader (HuBERT Base
on the real SUPERB_S over PR, SID, ER and SF; ours is the synthetic SUPERB_S over the English tasks, so
compare directions, not values; "–" where the paper has no such cell in the material we have):

  Table I     pre-trained / Stable-FT / Speech-FT for each fine-tuning target (--target T1 T2 T3)
  baselines   regular FT (with and without the merge), L2-SP, LoRA, DoRA, early stop 20%, on T1
  multitask   joint fine-tuning, averaged task vectors, TIES and sequential fine-tuning on T2 + T3 (the
              paper's PR + SID), each without the merge (alpha = 1) and with Speech-FT's (alpha = 0.25)
  continued   continued pre-training on the other language's audio (pr_de): its task, the English score

Every stage is skipped when its output is complete (demo.py), so a killed run resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path

from .demo_scenarios import ALPHA, BASELINES, LANGUAGE_TASK, Design, Variant

# The paper's numbers (HuBERT Base, SUPERB_S over PR, SID, ER, SF; docs: ../speechft-method.md).
PAPER_TABLE_I = {"asr": (870.20, 870.71, 905.79), "sid": (870.20, 651.42, 881.07)}
PAPER_BASELINES = {  # fine-tuned on SID
    "pre-trained": 870.20,
    "Stable-FT": 651.42,
    "Speech-FT": 881.07,
    "L2-SP": 838.56,
    "LoRA": 785.93,
    "DoRA": 790.12,
    "early stop": 736.06,
}
PAPER_MULTITASK = {"sequential": (None, 887.5)}  # PR + SID; Stable-FT without merging: 648.96
PAPER_MULTITASK_NOTE = "paper (PR + SID): sequential Speech-FT 887.5, the best strategy; Stable-FT alone 648.96"
PAPER_CONTINUED = {"pre-trained": (870.2, 24.94), "continued PT": (789.9, None), "continued PT+merge": (866.5, 24.23)}


def run_paper(d, pretrained: Path):
    """Build every encoder of the four tables (demo.Demo `d`); returns the demo.Design to evaluate."""

    first, a, b = d.targets
    ft, mg = d.out / "finetuned", d.out / "merged"
    V = [Variant("pre-trained", pretrained, "pretrained")]
    stable, speech = {}, {}
    for t in d.targets:  # Table I
        stable[t] = d.finetune(pretrained, [t], "stable", ft / f"stable-{t}")
        V.append(Variant(f"Stable-FT ({t})", stable[t], "finetuned", f"stage 1 alone on {t}"))
        speech[t] = d.merge(pretrained, [stable[t]], mg / f"speech-ft-{t}")
        V.append(Variant(f"Speech-FT ({t})", speech[t], "merged", f"merge(pre-trained, Stable-FT on {t}, {ALPHA})"))
    for name, method, note in BASELINES:  # the baselines table, on the first target
        path = d.finetune(pretrained, [first], method, ft / f"{method}-{first}")
        V.append(Variant(f"{name} ({first})", path, "finetuned", note))
        if method == "regular":
            merged = d.merge(pretrained, [path], mg / f"regular+merge-{first}")
            V.append(Variant(f"regular+merge ({first})", merged, "merged", f"merge(pre-trained, regular FT, {ALPHA})"))
    # The multitask table: each strategy without the merge (alpha = 1) and with it (alpha = 0.25).
    pair = f"{a}+{b}"
    joint = d.finetune(pretrained, [a, b], "stable", ft / f"joint-{pair}")
    V.append(Variant(f"joint Stable-FT ({pair})", joint, "finetuned", f"one model, heads for {a} and {b}"))
    V.append(Variant(f"joint Speech-FT ({pair})", d.merge(pretrained, [joint], mg / f"joint-{pair}"), "merged"))
    for alpha, kind in ((1.0, "Stable-FT"), (ALPHA, "Speech-FT")):
        avg = d.merge(pretrained, [stable[a], stable[b]], mg / f"average-{pair}-alpha{alpha:g}", alpha=alpha)
        V.append(Variant(f"averaged {kind} ({pair})", avg, "merged", f"pre-trained + {alpha:g} * mean task vector"))
        ties = d.merge(
            pretrained, [stable[a], stable[b]], mg / f"ties-{pair}-alpha{alpha:g}", method="ties", k=20.0, alpha=alpha
        )
        V.append(Variant(f"TIES {kind} ({pair})", ties, "merged", f"trim 20%, elect signs, disjoint mean, x{alpha:g}"))
    seq_stable = d.finetune(stable[a], [b], "stable", ft / f"sequential-{b}-from-stable-{a}")
    V.append(Variant(f"sequential Stable-FT ({pair})", seq_stable, "finetuned", f"Stable-FT on {a}, then on {b}"))
    # Sequential Speech-FT: the merged model of round 1 is theta_0 of round 2.
    seq_ft = d.finetune(speech[a], [b], "stable", ft / f"sequential-{b}-from-speech-ft-{a}")
    seq = d.merge(speech[a], [seq_ft], mg / f"sequential-{pair}")
    V.append(Variant(f"sequential Speech-FT ({pair})", seq, "merged", f"Speech-FT on {a}, then on {b}"))
    cont = d.pretrain(pretrained, LANGUAGE_TASK, ft / "continued-pretraining")  # the continued pre-training table
    V.append(Variant("continued PT", cont, "finetuned", f"masked-unit prediction on the {LANGUAGE_TASK} audio"))
    V.append(Variant("continued PT+merge", d.merge(pretrained, [cont], mg / "continued+merge"), "merged"))
    return Design(
        V,
        first,
        [f"Speech-FT ({first})"],
        f"Stable-FT ({first})",
        notes=["one fine-tuning seed per model; the verdicts are about the baselines table's target"],
        rivals=["pre-trained"]
        + [f"{n} ({first})" for n in ("Stable-FT", "regular FT", "regular+merge")]
        + [f"{n} ({first})" for n, _, _ in BASELINES[1:]],
        tables=lambda results, names: paper_tables(results, names, d.targets),
        analysed=["pre-trained"] + [v.name for v in V if v.name.endswith(f"({first})")],  # the baselines table
    )


def _english_scores(results: dict, names: dict[str, str]) -> tuple[dict, dict]:
    """SUPERB_S of every model over the English tasks (all but the other language's), and each task folder's
    metric value per model; `names`: task folder -> task name in the results."""
    from .superb_score import ScoreConfig, superb_scores

    lang = names.get(LANGUAGE_TASK)
    models = [{**m, "tasks": {t: r for t, r in m["tasks"].items() if t != lang}} for m in results["models"]]
    scores = superb_scores(models, ScoreConfig.from_record(results["score_config"], "demo evaluation"))["scores"]
    return scores, {m["name"]: m["tasks"] for m in results["models"]}


def _cell(x, fmt: str = "{:.1f}") -> str:
    return "–" if x is None else fmt.format(x)


def paper_tables(results: dict, names: dict[str, str], targets: list[str]) -> list[str]:
    """The four tables as markdown lines (module docstring); `names`: task folder -> its name in results."""
    scores, tasks = _english_scores(results, names)
    first, a, b = targets
    pair = f"{a}+{b}"
    s = scores.get
    md = ["## Table I: fine-tuning targets (SUPERB_S over the English tasks)", ""]
    md += ["| fine-tuned on | pre-trained | Stable-FT | Speech-FT | paper: pre-trained | Stable-FT | Speech-FT |"]
    md += ["|---|---:|---:|---:|---:|---:|---:|"]
    for t in targets:
        paper = PAPER_TABLE_I.get(t, (None, None, None))
        ours = (s("pre-trained"), s(f"Stable-FT ({t})"), s(f"Speech-FT ({t})"))
        md.append(f"| {t} | " + " | ".join(_cell(x) for x in ours + paper) + " |")
    target_name = names[first]
    metric = tasks["pre-trained"][target_name]["metric"]
    md += ["", f"## Baselines, fine-tuned on {first} (paper: fine-tuned on SID)", ""]
    md += [f"| method | {target_name} {metric} (%) | SUPERB_S | paper SUPERB_S |", "|---|---:|---:|---:|"]
    rows = ["pre-trained", "Stable-FT", "Speech-FT", "regular FT", "regular+merge"] + [n for n, _, _ in BASELINES[1:]]
    for r in rows:
        name = r if r == "pre-trained" else f"{r} ({first})"
        value = tasks[name][target_name]
        cell = f"{100 * value['test']:.1f} ± {100 * (value.get('test_std') or 0):.1f}"
        md.append(f"| {r} | {cell} | {_cell(s(name))} | {_cell(PAPER_BASELINES.get(r))} |")
    md += ["", f"## Multi-task: {pair} (SUPERB_S; paper: PR + SID)", ""]
    md += [
        "| strategy | without merge (Stable-FT) | with merge (Speech-FT) | paper: Speech-FT |",
        "|---|---:|---:|---:|",
    ]
    for label, key in (
        ("joint", "joint"),
        ("averaged task vectors", "averaged"),
        ("TIES", "TIES"),
        ("sequential", "sequential"),
    ):
        ours = (s(f"{key} Stable-FT ({pair})"), s(f"{key} Speech-FT ({pair})"))
        md.append(
            f"| {label} | {_cell(ours[0])} | {_cell(ours[1])} | {_cell(PAPER_MULTITASK.get(key, (None, None))[1])} |"
        )
    md += ["", PAPER_MULTITASK_NOTE + "."]
    lang = names[LANGUAGE_TASK]
    lang_metric = tasks["pre-trained"][lang]["metric"]
    md += ["", f"## Continued pre-training on the {LANGUAGE_TASK} audio (paper: AISHELL-3 Mandarin)", ""]
    md += [f"| model | English SUPERB_S | {lang} {lang_metric} (%) | paper: English SUPERB_S | paper: Chinese CER |"]
    md += ["|---|---:|---:|---:|---:|"]
    for r in ("pre-trained", "continued PT", "continued PT+merge"):
        p = PAPER_CONTINUED[r]
        md.append(
            f"| {r} | {_cell(s(r))} | {100 * tasks[r][lang]['test']:.1f} | {_cell(p[0])} | {_cell(p[1], '{:.2f}')} |"
        )
    return md
