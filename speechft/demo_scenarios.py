"""The demo's scenarios: which encoders each one builds, and how their results are read (a Design).

Each `run_*(d, pretrained)` takes the running demo.Demo (its stages: finetune, merge, sweep, pretrain -
each skipped when its output is complete) and returns the Design that demo.run_demo evaluates, pools,
judges (demo_report.outcome) and reports. The paper scenario is in demo_paper.py.

    single     Stable-FT (one run per fine-tuning seed), Speech-FT at alpha = 0.25 and at the alpha the
               dev sweep picks, regular FT with and without the merge, L2-SP, LoRA, DoRA, early stop
    multitask  two targets: joint fine-tuning then merge, averaged task vectors, TIES, sequential Speech-FT
    continued  continued pre-training on another language's audio, then merge
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .io_utils import read_json

ALPHA = 0.25  # the paper's interpolation weight: 25% fine-tuned, 75% pre-trained
LANGUAGE_TASK = "pr_de"  # the other language: continued pre-training uses its training audio
# The paper's baselines besides Stable-FT: (row name, `speechft finetune --method`, what it is).
BASELINES = (
    ("regular FT", "regular", "no frozen phase"),
    ("L2-SP", "l2sp", "penalty on the distance to the pre-trained weights"),
    ("LoRA", "lora", "adapters folded into the weights"),
    ("DoRA", "dora", "weight-decomposed adapters folded into the weights"),
    ("early stop", "early-stop", "checkpoint at 20% of the steps"),
)


@dataclass
class Variant:
    """One encoder in the comparison."""

    name: str
    path: Path
    kind: str  # "pretrained" | "finetuned" | "merged"
    note: str = ""


@dataclass
class Design:
    """What a scenario built: the encoders to evaluate, and how their results are read."""

    variants: list[Variant]
    target: str  # the task folder the verdicts are about
    subjects: list[str]  # the merged rows judged by verdicts (2)-(4)
    contrast: str  # the fine-tuned row whose gain (1) and forgetting (3) they are compared with
    groups: dict[str, list[str]] = field(default_factory=dict)  # a pooled row -> its variants, one per seed
    sweep_json: Path | None = None
    notes: list[str] = field(default_factory=list)
    rivals: list[str] | None = None  # verdict (4)'s field besides the subject (None: every other row)
    tables: Callable[[dict, dict], list[str]] | None = None  # (results, task folder -> name) -> markdown lines
    # the rows the CKA analysis compares with the pre-trained encoder: those whose theta_0 it is (None: all)
    analysed: list[str] | None = None


def seed_path(d, path: Path, k: int) -> Path:
    """The folder of fine-tuning seed offset k: the first seed keeps `path` (older demo folders resume)."""
    return path if k == d.plan.finetune_seeds[0] else path.with_name(f"{path.name}-seed{d.seed + k}")


def run_single(d, pretrained: Path) -> Design:
    (target,) = d.targets
    ft, mg = d.out / "finetuned", d.out / "merged"
    stable = [
        Variant(
            f"Stable-FT (seed {d.seed + k})",
            d.finetune(pretrained, [target], "stable", seed_path(d, ft / "stable", k), seed=d.seed + k),
            "finetuned",
            "stage 1 alone",
        )
        for k in d.plan.finetune_seeds
    ]
    groups = {"Stable-FT": [v.name for v in stable]}
    # alpha: the paper's 0.25, and the one `speechft sweep` picks on dev (speechft's addition; its rule is
    # in sweep.json). The sweep runs on the first seed's Stable-FT; both alphas merge every seed.
    sweep_json = d.sweep(pretrained, stable[0].path, target)
    pick = read_json(sweep_json).get("pick") or {}
    alphas = [ALPHA] + ([pick["alpha"]] if pick.get("alpha") not in (None, ALPHA) else [])
    notes = [f"alpha sweep on dev ({pick.get('rule', '')}): alpha = {pick.get('alpha')} {pick.get('reason', '')}"]
    merged = []
    for a in alphas:
        row = "Speech-FT" if a == ALPHA else f"Speech-FT (alpha={a:g}, dev-picked)"
        folder = mg / ("speech-ft" if a == ALPHA else f"speech-ft-alpha{a:g}")
        vs = [
            Variant(
                f"{row} (seed {d.seed + k})",
                d.merge(pretrained, [v.path], seed_path(d, folder, k), alpha=a),
                "merged",
                f"merge(pre-trained, Stable-FT, alpha={a:g})",
            )
            for v, k in zip(stable, d.plan.finetune_seeds)
        ]
        groups[row] = [v.name for v in vs]
        merged += vs
    others = [Variant(n, d.finetune(pretrained, [target], m, ft / m), "finetuned", note) for n, m, note in BASELINES]
    reg_merge = d.merge(pretrained, [others[0].path], mg / "regular+merge")
    others.insert(1, Variant("regular+merge", reg_merge, "merged", f"merge(pre-trained, regular FT, alpha={ALPHA})"))
    variants = [Variant("pre-trained", pretrained, "pretrained")] + stable + merged + others
    return Design(variants, target, [r for r in groups if r != "Stable-FT"], "Stable-FT", groups, sweep_json, notes)


def run_multitask(d, pretrained: Path) -> Design:
    a, b = d.targets
    ft, mg = d.out / "finetuned", d.out / "merged"
    joint = d.finetune(pretrained, [a, b], "stable", ft / f"joint-{a}+{b}")
    ft_a = d.finetune(pretrained, [a], "stable", ft / f"stable-{a}")
    ft_b = d.finetune(pretrained, [b], "stable", ft / f"stable-{b}")
    joint_m = d.merge(pretrained, [joint], mg / "joint+merge")
    avg = d.merge(pretrained, [ft_a, ft_b], mg / "task-vector average")
    ties = d.merge(pretrained, [ft_a, ft_b], mg / "TIES", method="ties", k=20.0, alpha=2 * ALPHA)
    # Sequential Speech-FT: the merged model of round 1 is theta_0 of round 2.
    round1 = d.merge(pretrained, [ft_a], mg / f"sequential-round1-{a}")
    ft_b2 = d.finetune(round1, [b], "stable", ft / f"stable-{b}-from-round1")
    seq = d.merge(round1, [ft_b2], mg / "sequential")
    variants = [
        Variant("pre-trained", pretrained, "pretrained"),
        Variant("joint Stable-FT", joint, "finetuned", f"one model, heads for {a} and {b}"),
        Variant("joint+merge", joint_m, "merged", f"merge(pre-trained, joint, alpha={ALPHA})"),
        Variant("task-vector avg", avg, "merged", f"pre-trained + {ALPHA} * mean of the two task vectors"),
        Variant("TIES", ties, "merged", "trim 20%, elect signs, disjoint mean"),
        Variant("sequential Speech-FT", seq, "merged", f"Speech-FT on {a}, then on {b}"),
    ]
    return Design(
        variants,
        a,
        ["sequential Speech-FT"],
        "joint Stable-FT",
        notes=["one fine-tuning seed per model"],
        analysed=[v.name for v in variants if v.name != "sequential Speech-FT"],  # its theta_0 is round 1's model
    )


def run_continued(d, pretrained: Path) -> Design:
    (language_task,) = d.targets
    ft, mg = d.out / "finetuned", d.out / "merged"
    cont = d.pretrain(pretrained, language_task, ft / "continued-pretraining")
    merged = d.merge(pretrained, [cont], mg / "continued+merge")
    variants = [
        Variant("pre-trained", pretrained, "pretrained"),
        Variant("continued PT", cont, "finetuned", "masked-unit prediction on the new audio"),
        Variant("continued PT+merge", merged, "merged", f"merge(pre-trained, continued PT, alpha={ALPHA})"),
    ]
    return Design(variants, language_task, ["continued PT+merge"], "continued PT", notes=["one pre-training seed"])
