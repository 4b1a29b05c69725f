"""The run folder of a training run: what is in it, in which order it is written, and the checks of --resume.

While running: run.json (the encoder's and the data's hashes), config.yaml (the resolved config; it marks the
folder as resumable, so it is written last), metrics.jsonl (one JSON row per log line / dev evaluation),
checkpoints/ (speechft.checkpoint) and, with --log-with, trackers/ (speechft.tracking: appended in place like
metrics.jsonl, closed before the result is written). When finished, `write_result` makes the folder an encoder folder:
model.safetensors + config.json + speechft.json (written last: it marks a finished run), heads/, curves.png,
adapter/ (lora/dora only).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from .config import load_config, save_config, to_dict
from .errors import SpeechFTError
from .io_utils import atomic_dir, atomic_file, read_json, sha256_file, write_json
from .provenance import PROVENANCE_FILE, inherited, lineage_entry
from .safetensors_io import WEIGHTS_FILE, save_tensors
from .train_config import TrainConfig

RUN_INFO_FILE = "run.json"
CONFIG_FILE = "config.yaml"
# Config keys a --resume may change: where the metrics go, not what is computed (config.yaml is then updated).
RESUME_MAY_CHANGE = ("log_with",)


def open_run_folder(
    out: Path,
    cfg: TrainConfig | None,
    run_info: dict,
    resume: bool,
    overwrite: bool,
    main: bool,
    barrier: Callable[[], None],
    objective,
):
    """Create the run folder (or check the one being resumed). Returns (config to use, latest checkpoint
    folder or None); (None, None) when resuming a run that has already finished. `objective`
    (speechft.objective.Objective) supplies the config class, its resolver and the name of the data option."""
    if resume:
        return check_resumable(out, cfg, run_info, main, objective)
    cfg = cfg or objective.resolve(objective.config_class())
    if out.exists():
        if not overwrite:
            raise SpeechFTError(
                f"{out}: output folder already exists; choose another --out, or pass --resume to "
                "continue that run or --overwrite to replace it"
            )
        marks = (CONFIG_FILE, RUN_INFO_FILE, PROVENANCE_FILE)
        if any(out.iterdir()) and not any((out / f).exists() for f in marks):
            raise SpeechFTError(f"{out}: exists and is not a speechft run folder; refusing to --overwrite it")
    barrier()  # every process has looked before the main one sets aside or creates
    if main:
        if out.exists():
            set_aside(out)
        out.mkdir(parents=True)
        # run.json first: config.yaml is what marks a run as resumable, so it must come last.
        write_json(out / RUN_INFO_FILE, run_info)
        save_config(cfg, out / CONFIG_FILE)
    barrier()
    return cfg, None


def replaced_name(out: Path) -> Path:
    return out.parent / f".{out.name}.replaced"


def set_aside(out: Path) -> None:
    """--overwrite: move the old output beside `out` (`replacement` removes it once the new run has
    finished, or puts it back if the new run fails). A set-aside folder left by an interrupted replacement
    is the last finished output and stays; the unfinished run in `out` is what goes."""
    old = replaced_name(out)
    if old.exists() and not (out / PROVENANCE_FILE).exists():
        shutil.rmtree(out)
        return
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)


@contextlib.contextmanager
def replacement(out: Path, main: bool, active: bool) -> Iterator[None]:
    """The old output of an --overwrite is replaced only once the new run has finished: then its set-aside
    copy goes; if the run fails, the new folder goes and the old one comes back. An interrupt (Ctrl-C,
    SIGKILL) keeps both: the new run can be continued with --resume, the old one is still beside it."""
    old = replaced_name(out)
    try:
        yield
    except Exception:
        if main and active and old.exists() and not (out / PROVENANCE_FILE).exists():
            shutil.rmtree(out, ignore_errors=True)
            os.replace(old, out)
        raise
    if main and active and old.exists():
        shutil.rmtree(old)


def stored_config(cls, out: Path):
    """The config.yaml of a run folder being resumed (None when there is none): the base that --resume's
    options are applied to."""
    path = Path(out) / CONFIG_FILE
    return load_config(cls, path) if path.is_file() else None


def task_manifests(info: dict) -> dict:
    return {k: (v["train_sha256"], v["dev_sha256"]) for k, v in info["tasks"].items()}


def check_resumable(out: Path, cfg: TrainConfig | None, run_info: dict, main: bool, objective):
    """--resume: the stored config (the given one must equal it), the same encoder and data."""
    from .checkpoint import latest_checkpoint

    if (out / PROVENANCE_FILE).exists():
        if main:
            print(f"{out}: already finished; nothing to resume")
        return None, None
    if not (out / CONFIG_FILE).exists():
        raise SpeechFTError(f"{out}: no run to resume here (no config.yaml); start it without --resume")
    stored = objective.resolve(load_config(objective.config_class, out / CONFIG_FILE))
    if cfg is not None:
        allowed = {**to_dict(stored), **{k: getattr(cfg, k) for k in RESUME_MAY_CHANGE}}
        if to_dict(cfg) != allowed:
            key, was, now = first_difference(allowed, to_dict(cfg))
            raise SpeechFTError(
                f"--resume: {key} is {now!r} here but {was!r} in {out / 'config.yaml'}; resume with "
                "the same options (or none) or start a new run"
            )
        if to_dict(cfg) != to_dict(stored):  # e.g. another --log-with: the config records what is in effect
            stored = cfg
            if main:
                save_config(stored, out / CONFIG_FILE)
    started = read_json(out / RUN_INFO_FILE)
    if started["encoder_sha256"] != run_info["encoder_sha256"]:
        raise SpeechFTError(
            f"--resume: the encoder weights differ from those {out} was started with "
            f"({started['encoder']}); pass the same --encoder"
        )
    if task_manifests(started) != task_manifests(run_info):
        raise SpeechFTError(
            f"--resume: the task manifests differ from those {out} was started with "
            f"({', '.join(v['path'] for v in started['tasks'].values())}); pass the same "
            f"{objective.data_option}"
        )
    return stored, latest_checkpoint(out / "checkpoints")


def weights_sha256(encoder_dir: Path) -> dict[str, str]:
    files = sorted(encoder_dir.glob("*.safetensors")) if encoder_dir.is_dir() else []
    if not files:
        raise SpeechFTError(
            f"{encoder_dir}: no model.safetensors; pass an encoder folder (see `speechft encoder default|tiny|convert`)"
        )
    return {f.name: sha256_file(f) for f in files}


def write_best(folder: Path, tensors: dict) -> None:
    from .checkpoint import refused_run_write

    with refused_run_write(folder.parent.parent, f"checkpoint {folder.name}"):
        with atomic_dir(folder, overwrite=True) as tmp:
            save_tensors(tmp / WEIGHTS_FILE, tensors)


def clean_stale(root: Path, keep_step: str | None, keep_best: str | None) -> None:
    """Remove best-* folders other than the current one and, on resume, step folders newer than the one
    resumed from (left by a run killed between writing a folder and pointing latest.json at it)."""
    if not root.exists():
        return
    for p in root.iterdir():
        if p.name.startswith("best-") and p.name != keep_best:
            shutil.rmtree(p, ignore_errors=True)
        elif keep_step and p.name.startswith("step-") and p.name > keep_step:
            shutil.rmtree(p, ignore_errors=True)


def append_metrics(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


def truncate_metrics(path: Path, step: int) -> list[dict]:
    """Keep the metrics rows up to `step` (a killed run may have logged beyond its last checkpoint)."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut off by the kill
            if row.get("step", 0) <= step:
                rows.append(row)
    with atomic_file(path) as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return rows


def write_result(
    out: Path,
    encoder,
    heads,
    lora,
    cfg: TrainConfig,
    best: dict,
    steps: dict,
    run_info: dict,
    log_rows: list[dict],
    timing: dict,
    objective,
) -> None:
    """Turn the run folder into an encoder folder. speechft.json is written last: it marks a finished run.
    `steps`: {"T": the schedule's, "R": made, "frozen": of the frozen phase}. The objective
    (speechft.objective.Objective) saves what it keeps of its heads and adds its provenance."""
    from .plots import plot_training_curves

    if lora is not None:
        # Keep the adapters themselves (small) for provenance, then fold them into the base weights.
        adapter = out / "adapter"
        adapter.mkdir(exist_ok=True)
        save_tensors(
            adapter / "adapter.safetensors", {n: p for n, p in encoder.model.named_parameters() if "lora_" in n}
        )
        write_json(adapter / "adapter.json", {**to_dict(cfg.lora), "use_dora": cfg.method == "dora"})
        lora.merge_and_unload()
    objective.save_heads(out, heads)
    plot_training_curves(out / "curves.png", log_rows, steps["frozen"], best["step"], cfg.method)
    parent = lineage_entry(
        "pretrained", run_info["encoder"], encoder.family, encoder.provenance, run_info["encoder_sha256"]
    )
    encoder.provenance = inherited(encoder.provenance)
    provenance = {
        "source": "speechft finetune",
        "method": cfg.method,
        "steps": steps["T"],
        "steps_run": steps["R"],
        "frozen_steps": steps["frozen"],
        "best_step": best["step"],
        "dev_score": best["score"],
        "dev_metrics": best["metrics"],
        "parents": [parent],
        "timing": {"train_seconds": round(timing["train_seconds"], 3), "utterances": timing["utterances"]},
        "config": to_dict(cfg),
        **objective.provenance(heads),
    }
    from .checkpoint import refused_run_write

    tmp = out / ".encoder.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with refused_run_write(out, "the finished encoder"):
        encoder.save(tmp, provenance=provenance, overwrite=True)
    for f in sorted(tmp.iterdir(), key=lambda p: p.name == PROVENANCE_FILE):
        os.replace(f, out / f.name)
    tmp.rmdir()


def first_difference(a: dict, b: dict, prefix: str = "") -> tuple | None:
    """(dotted key, value in a, value in b) of the first differing config value, or None."""
    for k in sorted(set(a) | set(b)):
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            d = first_difference(a[k], b[k], f"{prefix}{k}.")
            if d:
                return d
        elif a.get(k) != b.get(k):
            return f"{prefix}{k}", a.get(k), b.get(k)
    return None
