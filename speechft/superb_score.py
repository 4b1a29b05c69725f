"""The SUPERB aggregate score: one number per model over many tasks.

    SUPERB_S = 1000/|T| * sum_t mean_{m in metrics(t)} (m - m_baseline) / (m_reference - m_baseline)

Each term is 0 at the baseline and 1 at the reference, whichever direction the metric
runs (for an error rate the reference is below the baseline, so the fraction is still
positive when the model improves), so lower-is-better metrics need no special case.

Baseline and reference values come from a YAML config (speechft/configs/*.yaml). A value
may be a number (in the config's units, percent by default) or the name of a model in the
results, e.g. `fbank`: the filterbank pseudo-encoder scored by the same protocol. Shipped:
`superb_synthetic` (the default: fbank -> ideal, every task the results hold),
`superb_speechft` (the Speech-FT paper's 4-task score; `superb_paper` is an alias) and
`superb_leaderboard` (the SUPERB leaderboard's 10 tasks).

Tasks a config lists but that no model of the results was evaluated on: the score is
taken over the tasks that were evaluated (so the models of one results file still compare
with each other) and `missing_tasks` names the others; the table and report say that the
number is not the config's full score. A model lacking a task that another model has gets
no score (it would not compare with the others) and a note.

One SUPERB_S: `speechft evaluate` records the config it scored with in results.json
(`ScoreConfig.record()`: name, path, its values and their sha256), and `speechft report`
scores with that record (`ScoreConfig.from_record`) unless it is given --score-config, so
the two print the same number even after the YAML file changed or moved.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SpeechFTError

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "superb_synthetic.yaml"
UNITS = {"percent": 100.0, "fraction": 1.0}
CONFIG_KEYS = ("name", "units", "score_tasks", "defaults", "tasks")
# Metrics SUPERB averages into one task's term together with the task's main metric (SF:
# slot-type F1 and slot-value CER), for tasks scored by a config's `defaults`.
SCORED_WITH = {"slot_type_f1": ("slot_value_cer",), "slot_value_cer": ("slot_type_f1",)}
# Other names a config is known by: superb_paper was the Speech-FT paper's config, with
# references transcribed from memory (874.4 for the paper's 870.20); superb_speechft
# reproduces the paper's numbers.
ALIASES = {"superb_paper": "superb_speechft"}


@dataclass
class ScoreConfig:
    name: str
    units: str = "percent"
    score_tasks: list[str] | None = None  # None: every task in the results that has values
    defaults: dict = field(default_factory=dict)  # metric -> {baseline, reference}
    tasks: dict = field(default_factory=dict)  # task -> {metric -> {baseline, reference}}
    path: str | None = None

    def task_metrics(self, task: str, metric: str | None) -> dict[str, dict] | None:
        """{metric: {baseline, reference}} for `task` (its own entry, else the defaults for
        its metric and the metrics SUPERB scores with it), or None when the config has no
        values for it."""
        if task in self.tasks:
            return self.tasks[task]
        if metric and metric in self.defaults:
            return {m: self.defaults[m] for m in (metric, *SCORED_WITH.get(metric, ())) if m in self.defaults}
        return None

    def values(self) -> dict:
        """What decides the scores (everything but where the config was read from)."""
        return {
            "name": self.name,
            "units": self.units,
            "score_tasks": self.score_tasks,
            "defaults": self.defaults,
            "tasks": self.tasks,
        }

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.values(), sort_keys=True).encode()).hexdigest()

    def record(self) -> dict:
        """The config as results.json stores it: enough to score again without the file."""
        return {"name": self.name, "path": self.path, "sha256": self.sha256(), "values": self.values()}

    @classmethod
    def from_record(cls, record, where: str = "results") -> ScoreConfig:
        """The config a results.json recorded (`record()`), validated like a YAML file."""
        if not isinstance(record, dict) or not isinstance(record.get("values"), dict):
            raise SpeechFTError(f"{where}: 'score_config' is not a recorded score config; pass --score-config")
        return _from_mapping(record["values"], f"{where}: score_config", record.get("path"))


def load_score_config(path: str | os.PathLike | None = None) -> ScoreConfig:
    """Load a score config; `None` gives the synthetic default. A bare name such as
    `superb_speechft` is looked up in speechft/configs/ (ALIASES too)."""
    if path is None:
        path = DEFAULT_CONFIG
    path = Path(path)
    name = ALIASES.get(path.name, path.name)
    if not path.exists() and (CONFIG_DIR / f"{name}.yaml").exists():
        path = CONFIG_DIR / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted([p.stem for p in CONFIG_DIR.glob("superb_*.yaml")] + list(ALIASES)))
        raise SpeechFTError(f"{path}: score config not found; pass a YAML file or one of: {known}")
    from .config import read_yaml_file

    raw = read_yaml_file(path)  # read as a --config is: no aliases (a few bytes can expand to gigabytes)
    return _from_mapping(raw, str(path), str(path), default_name=path.stem)


def _from_mapping(raw, where: str, path: str | None, default_name: str | None = None) -> ScoreConfig:
    """Validate a score config's keys and values (`where` names it in errors)."""
    if not isinstance(raw, dict):
        raise SpeechFTError(f"{where}: must be a mapping with keys {', '.join(CONFIG_KEYS)}")
    unknown = sorted(set(raw) - set(CONFIG_KEYS))
    if unknown:
        raise SpeechFTError(f"{where}: unknown key(s) {unknown}; valid: {', '.join(CONFIG_KEYS)}")
    units = raw.get("units", "percent")
    if units not in UNITS:
        raise SpeechFTError(f"{where}: units '{units}' must be one of {', '.join(UNITS)}")
    defaults = raw.get("defaults") or {}
    tasks = raw.get("tasks") or {}
    if not isinstance(tasks, dict):
        raise SpeechFTError(f"{where}: tasks must map task names to {{metric: {{baseline, reference}}}}")
    for section, metrics in [("defaults", defaults)] + [(f"tasks.{t}", v) for t, v in tasks.items()]:
        if not isinstance(metrics, dict):
            raise SpeechFTError(f"{where}: {section} must map metric names to {{baseline, reference}}")
        for metric, vals in metrics.items():
            if not isinstance(vals, dict) or set(vals) != {"baseline", "reference"}:
                raise SpeechFTError(f"{where}: {section}.{metric} must be {{baseline: X, reference: Y}}, got {vals!r}")
            for k in ("baseline", "reference"):
                if not isinstance(vals[k], (int, float, str)) or isinstance(vals[k], bool):
                    raise SpeechFTError(
                        f"{where}: {section}.{metric}.{k} must be a number or a model name, got {vals[k]!r}"
                    )
    score_tasks = raw.get("score_tasks")
    if score_tasks is not None and not (isinstance(score_tasks, list) and all(isinstance(t, str) for t in score_tasks)):
        raise SpeechFTError(f"{where}: score_tasks must be a list of task names or null")
    return ScoreConfig(
        name=str(raw.get("name", default_name)),
        units=units,
        score_tasks=score_tasks,
        defaults=defaults,
        tasks=tasks,
        path=path,
    )


def metric_values(task_result: dict) -> dict[str, float]:
    """All test metrics of one task result: `metrics` if present, plus the main one."""
    vals = dict(task_result.get("metrics") or {})
    if task_result.get("test") is not None:
        vals[task_result["metric"]] = task_result["test"]
    return vals


def _find_model(models: list[dict], name: str) -> dict | None:
    for m in models:
        if m.get("name") == name or m.get("encoder") == name:
            return m
    return None


def _scored_tasks(models: list[dict], config: ScoreConfig) -> tuple[list[str], list[str], list[str]]:
    """(tasks to score, tasks the config scores, those of them no model was evaluated on)."""
    if config.score_tasks is not None:
        evaluated = {t for m in models for t in m.get("tasks", {})}
        config_tasks = list(config.score_tasks)
        tasks = [t for t in config_tasks if t in evaluated]
        return tasks, config_tasks, [t for t in config_tasks if t not in evaluated]
    seen: dict[str, str] = {}
    for m in models:
        for t, r in m.get("tasks", {}).items():
            seen.setdefault(t, r.get("metric"))
    tasks = [t for t, metric in seen.items() if config.task_metrics(t, metric) is not None]
    return tasks, list(tasks), []


def superb_scores(models: list[dict], config: ScoreConfig | None = None) -> dict:
    """Score every model of a results list.

    Returns {"config", "tasks": [scored tasks], "scores": {model: score or None},
    "per_task": {model: {task: normalised term}}, "notes": {model: why it has no score},
    "config_tasks": [the tasks the config scores], "missing_tasks": [those of them that no
    model was evaluated on, left out of every score]}. A model missing a task that another
    model has, or a baseline that cannot be resolved, gets None and a note rather than a
    score over fewer tasks than the others (which would not be comparable).
    """
    config = config or load_score_config()
    scale = UNITS[config.units]
    tasks, config_tasks, missing = _scored_tasks(models, config)

    def resolve(value, task: str, metric: str) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        ref_model = _find_model(models, value)
        if ref_model is None:
            raise LookupError(
                f"baseline/reference '{value}' for {task}/{metric} needs the results of model "
                f"'{value}' (evaluate it too, e.g. --encoder {value})"
            )
        r = ref_model.get("tasks", {}).get(task)
        if r is None or metric not in metric_values(r):
            raise LookupError(f"model '{value}' has no {metric} result on task {task}")
        return metric_values(r)[metric] * scale

    # A task on which the baseline already reaches the reference cannot tell models apart
    # and makes the formula divide by zero: it is left out for every model, and said so.
    dropped = {}
    for t in list(tasks):
        spec = config.task_metrics(
            t, next((m["tasks"][t].get("metric") for m in models if t in m.get("tasks", {})), None)
        )
        for metric, vals in (spec or {}).items():
            try:
                base, ref = resolve(vals["baseline"], t, metric), resolve(vals["reference"], t, metric)
            except LookupError:
                continue  # reported per model below
            if base == ref:
                dropped[t] = f"baseline equals reference ({metric} {ref:g})"
                tasks.remove(t)
                break
    out = {
        "config": config.name,
        "config_path": config.path,
        "units": config.units,
        "tasks": tasks,
        "config_tasks": config_tasks,
        "missing_tasks": missing,
        "dropped_tasks": dropped,
        "scores": {},
        "per_task": {},
        "notes": {},
    }
    for m in models:
        name = m["name"]
        terms, note = {}, None
        try:
            for t in tasks:
                r = m.get("tasks", {}).get(t)
                if r is None:
                    raise LookupError(f"no result on task {t}")
                spec = config.task_metrics(t, r.get("metric"))
                if spec is None:
                    raise LookupError(f"the score config has no values for task {t}")
                have = metric_values(r)
                parts = []
                for metric, vals in spec.items():
                    if metric not in have:
                        raise LookupError(f"task {t} has no {metric} result")
                    base, ref = resolve(vals["baseline"], t, metric), resolve(vals["reference"], t, metric)
                    parts.append((have[metric] * scale - base) / (ref - base))
                terms[t] = sum(parts) / len(parts)
        except LookupError as e:
            note = str(e)
        if note or not tasks:
            out["scores"][name] = None
            out["notes"][name] = note or (
                f"none of the tasks {config.name} scores ({', '.join(missing)}) was evaluated; "
                "task folders are matched by the name in their task.yaml"
                if missing
                else "no task to score"
            )
        else:
            out["scores"][name] = 1000.0 * sum(terms.values()) / len(tasks)
        out["per_task"][name] = terms
    out["missing_note"] = missing_note(out)
    return out


def missing_note(scores: dict) -> str | None:
    """One line saying which of the config's tasks the scores leave out, or None."""
    missing = scores.get("missing_tasks") or []
    if not missing or not scores.get("tasks"):
        return None
    n = len(scores.get("config_tasks") or [])
    return (
        f"scored over {', '.join(scores['tasks'])} only: config {scores['config']} also scores "
        f"{', '.join(missing)}, not evaluated, so these are not its {n}-task scores"
    )
