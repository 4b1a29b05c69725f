"""Experiment tracking through Accelerate's trackers (`--log-with tensorboard wandb ...`), beside metrics.jsonl.

metrics.jsonl stays the run's own record (curves.png, --resume and the tests read it); the trackers get the same
rows as they are written: `train/loss`, `train/task_loss/<task>`, `train/lr_encoder`, ... and `dev/score`,
`dev/<task>/<metric>`, at the row's step, with the resolved config as hyperparameters. Only the main process
logs. Trackers that keep files locally keep them in the run folder, under OUT/trackers/ (TensorBoard's event
files in OUT/trackers/speechft/, wandb's and dvclive's folders, aim's repository, mlflow's artifacts); they are
written in place while the run goes, like metrics.jsonl, and closed before speechft.json marks the run
finished, so a finished folder holds complete logs. Where a tracker stores runs elsewhere (its server, or
MLFLOW_TRACKING_URI), its own settings apply. On --resume TensorBoard drops what a killed run logged after its
last checkpoint (purge_step), as metrics.jsonl is cut back; the other trackers start a new run of the same name.

A tracker whose package is missing stops the run before anything is written, with the `pip install` that fixes it.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import SpeechFTError
from .train_config import TRACKERS, TrainConfig

TRACKERS_DIR = "trackers"  # OUT/trackers/
PROJECT = "speechft"  # the project / experiment name the trackers file the run under; the run is named after OUT
# What to pip install for a tracker, where it differs from the tracker's name (accelerate supports aim < 4).
PIP_NAME = {"aim": "'aim<4'"}


def add_tracking_option(p) -> None:
    """`--log-with NAME [NAME ...]` for finetune and pretrain (the config key log_with)."""
    p.add_argument(
        "--log-with",
        nargs="+",
        action="extend",
        metavar="TRACKER",
        help=f"also log metrics to these trackers, via accelerate: {', '.join(TRACKERS)} "
        "(files under OUT/trackers/; default: the config's log_with, none)",
    )


def installed() -> set[str]:
    """The trackers whose packages this environment has (accelerate's own check)."""
    from accelerate.tracking import get_available_trackers

    return {str(getattr(t, "value", t)) for t in get_available_trackers()}


def check_trackers(names: list[str]) -> list[str]:
    """The trackers `names` asks for ("all": every one installed), or a one-line error naming the missing
    package and the pip install that adds it. Called before anything of the run is written."""
    if not names:
        return []
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    have = installed()
    wanted = [n for n in names if n != "all"]
    if "all" in names:
        if not have:
            raise SpeechFTError("--log-with all: no tracker package is installed; pip install tensorboard (or wandb)")
        wanted += sorted(have - set(wanted))
    for name in wanted:
        if name not in LOGGER_TYPE_TO_CLASS:
            import accelerate

            raise SpeechFTError(
                f"--log-with {name}: accelerate {accelerate.__version__} has no such tracker; upgrade accelerate "
                f"(pip install -U accelerate) or choose another"
            )
        if name not in have:
            raise SpeechFTError(
                f"--log-with {name}: the {name} package is not installed; pip install {PIP_NAME.get(name, name)} "
                "(or leave it out of --log-with / log_with)"
            )
    return wanted


class Tracking:
    """The run's trackers, held by an accelerate Accelerator on the main process; a no-op elsewhere and
    without --log-with."""

    def __init__(self, accelerator=None):
        self.accelerator = accelerator

    def log(self, row: dict) -> None:
        if self.accelerator is not None:
            self.accelerator.log(tracker_values(row), step=row["step"])

    def close(self) -> None:
        """Accelerator.end_training without its last act: it would tear down the process group, which the
        loop still needs (its final barrier) and a library caller may too."""
        if self.accelerator is not None:
            for tracker in self.accelerator.trackers:
                tracker.finish()
            self.accelerator = None


def open_tracking(out: Path, cfg: TrainConfig, main: bool, cpu: bool, resumed_at: int | None) -> Tracking:
    """Start the trackers of cfg.log_with in OUT/trackers/ (main process only). `resumed_at`: the step a
    --resume continues from (None for a new run); `cpu` as the process state was made (accelerate checks)."""
    if not cfg.log_with or not main:
        return Tracking()
    from accelerate import Accelerator

    root = out / TRACKERS_DIR
    root.mkdir(exist_ok=True)
    accelerator = Accelerator(cpu=cpu, log_with=check_trackers(cfg.log_with), project_dir=root)
    kwargs = {
        "wandb": {"dir": str(root), "name": out.name},
        "mlflow": {"logging_dir": str(root / "mlflow"), "run_name": out.name},
        "dvclive": {"dir": str(root / "dvclive")},
    }
    if resumed_at is not None:  # events a killed run wrote after step `resumed_at` are dropped, as in metrics.jsonl
        kwargs["tensorboard"] = {"purge_step": resumed_at + 1}
    accelerator.init_trackers(PROJECT, config=hparams(cfg), init_kwargs=kwargs)
    names = ", ".join(t.name for t in accelerator.trackers)
    print(f"logging to {names} (local files in {root})")
    return Tracking(accelerator)


def hparams(cfg: TrainConfig) -> dict:
    """The config flattened to dotted keys with scalar values: what every tracker accepts as hyperparameters
    (TensorBoard's refuses lists and nested mappings); lists and nulls as JSON text."""
    from .config import to_dict

    flat = {}

    def walk(prefix: str, node: dict) -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}.", v)
            else:
                flat[prefix + k] = v if isinstance(v, (bool, int, float, str)) else json.dumps(v)

    walk("", to_dict(cfg))
    return flat


def tracker_values(row: dict) -> dict[str, float]:
    """A metrics.jsonl row as tracker scalars: {"train/loss": ..., "train/task_loss/<task>": ...} or
    {"dev/score": ..., "dev/<task>/<metric>": ...}."""
    kind = row["kind"]
    if kind == "dev":
        values = {f"dev/{task}/{m['metric']}": float(m["value"]) for task, m in row["metrics"].items()}
        return {"dev/score": float(row["score"]), **values}
    values = {}
    for key, v in row.items():
        if key in ("kind", "step"):
            continue
        if isinstance(v, dict):
            values.update({f"{kind}/{key}/{name}": float(x) for name, x in v.items()})
        elif isinstance(v, (bool, int, float)):
            values[f"{kind}/{key}"] = float(v)
    return values
