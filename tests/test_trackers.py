"""--log-with: Accelerate's trackers get metrics.jsonl's rows (read back from TensorBoard's own event files), a
missing package stops the run before anything is written, and --resume drops what a killed run logged past its
checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from conftest import cli, rows

import speechft.tracking as tracking
from speechft.config import load_config
from speechft.train import TrainConfig, finetune
from speechft.train_config import TRACKERS

SETS = ["eval.log_every=1", "eval.every=3", "checkpoint.every=3", "head.proj_dim=16", "data.batch_size=4"]


def scalars(out) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard shows for the run: {tag: [(step, value), ...]} (its own reader, purging included)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "trackers" / "speechft"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def f32(x) -> float:  # TensorBoard stores scalars as float32
    return float(np.float32(x))


def test_tensorboard_gets_exactly_the_rows_of_metrics_jsonl(tmp_path, tiny_encoder_dir, cls_task):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    sets = [s for x in SETS for s in ("--set", x)]
    argv = ["finetune", "--encoder", tiny_encoder_dir(), "--task", cls_task, "--out", out, "--steps", "6"]
    assert cli(*argv, *sets, "--log-with", "tensorboard", "--quiet") == 0
    got, train, dev = scalars(out), rows(out, "train"), rows(out, "dev")
    assert len(train) == 6 and len(dev) == 2
    assert got["train/loss"] == [(r["step"], f32(r["loss"])) for r in train]
    assert got["train/task_loss/tones"] == [(r["step"], f32(r["task_loss"]["tones"])) for r in train]
    assert got["train/lr_encoder"] == [(r["step"], f32(r["lr_encoder"])) for r in train]
    assert got["train/encoder_frozen"] == [(r["step"], float(r["encoder_frozen"])) for r in train]
    assert got["dev/score"] == [(r["step"], f32(r["score"])) for r in dev]
    assert got["dev/tones/accuracy"] == [(r["step"], f32(r["metrics"]["tones"]["value"])) for r in dev]
    # recorded in the run's config (config.yaml and the finished folder's provenance)
    assert yaml.safe_load((out / "config.yaml").read_text())["log_with"] == ["tensorboard"]
    assert json.loads((out / "speechft.json").read_text())["config"]["log_with"] == ["tensorboard"]
    # the hyperparameters: the resolved config, flattened
    hp = list((out / "trackers" / "speechft").glob("*/hparams.yml"))
    assert len(hp) == 1 and yaml.safe_load(hp[0].read_text())["optim.encoder_lr"] == 1e-4


@pytest.mark.parametrize(
    ("names", "needle"),
    [
        (["wandb"], "--log-with wandb: the wandb package is not installed; pip install wandb"),
        (["tensorboard", "aim"], "--log-with aim: the aim package is not installed; pip install 'aim<4'"),
        (["all"], "--log-with all: no tracker package is installed; pip install tensorboard"),
    ],
)
def test_a_missing_tracker_package_stops_the_run_before_anything_is_written(
    tmp_path, tiny_encoder_dir, cls_task, monkeypatch, capsys, names, needle
):
    monkeypatch.setattr(tracking, "installed", lambda: {"tensorboard"} if names != ["all"] else set())
    out = tmp_path / "run"
    argv = ["finetune", "--encoder", tiny_encoder_dir(), "--task", cls_task, "--out", out, "--steps", "2"]
    assert cli(*argv, "--log-with", *names) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err, err
    assert not out.exists()


def test_an_unknown_tracker_is_one_line_naming_the_choices(tmp_path, tiny_encoder_dir, cls_task, capsys):
    out = tmp_path / "run"
    argv = ["finetune", "--encoder", tiny_encoder_dir(), "--task", cls_task, "--out", out, "--steps", "2"]
    assert cli(*argv, "--log-with", "tensorbored") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'tensorbored' is not one of all, tensorboard, wandb" in err and "--log-with" in err
    assert not out.exists()


def test_resume_drops_what_a_killed_run_logged_past_its_checkpoint(tmp_path, tiny_encoder_dir, cls_task, monkeypatch):
    """Killed during step 5 (0-based) with its checkpoint at step 3: steps 4 and 5 were logged, then replayed by
    --resume. TensorBoard shows each step once, with the values metrics.jsonl keeps."""
    pytest.importorskip("tensorboard")
    import speechft.train as train

    enc, out = tiny_encoder_dir(), tmp_path / "run"
    cfg = load_config(TrainConfig, None, ["steps=8", "method=regular", "log_with=[tensorboard]", *SETS])
    real_loss, calls = train.TaskObjective.loss, []

    def crash_at_step_5(self, *a, **kw):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real_loss(self, *a, **kw)

    monkeypatch.setattr(train.TaskObjective, "loss", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        finetune(enc, [cls_task], out, config=cfg)
    assert [s for s, _ in scalars(out)["train/loss"]] == [1, 2, 3, 4, 5]
    monkeypatch.setattr(train.TaskObjective, "loss", real_loss)
    finetune(enc, [cls_task], out, resume=True)
    got, train_rows = scalars(out), rows(out, "train")
    assert got["train/loss"] == [(r["step"], f32(r["loss"])) for r in train_rows]
    assert [s for s, _ in got["train/loss"]] == list(range(1, 9))
    assert [s for s, _ in got["dev/score"]] == [3, 6, 8]


def test_resume_may_change_the_trackers_and_nothing_else(tmp_path, tiny_encoder_dir, cls_task, monkeypatch, capsys):
    """A run started with tensorboard, resumed where tensorboard is missing: refused in one line; resumed with
    `--set log_with=[]`: it continues, and config.yaml records the change. Another changed option is still named."""
    import speechft.engine as engine
    import speechft.train as train

    enc, out = tiny_encoder_dir(), tmp_path / "run"
    monkeypatch.setattr(engine, "open_tracking", lambda *a: tracking.Tracking())  # no tensorboard needed here
    monkeypatch.setattr(tracking, "installed", lambda: {"tensorboard"})
    real_loss, calls = train.TaskObjective.loss, []

    def crash_at_step_4(self, *a, **kw):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_loss(self, *a, **kw)

    monkeypatch.setattr(train.TaskObjective, "loss", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        finetune(enc, [cls_task], out, config=load_config(TrainConfig, None, ["steps=6", "log_with=[tensorboard]"]))
    monkeypatch.setattr(train.TaskObjective, "loss", real_loss)
    before = (out / "config.yaml").read_text()

    monkeypatch.setattr(tracking, "installed", lambda: set())
    resume = ["finetune", "--encoder", enc, "--task", cls_task, "--out", out, "--resume"]
    assert cli(*resume) == 2
    assert "--log-with tensorboard: the tensorboard package is not installed" in capsys.readouterr().err
    assert cli(*resume, "--set", "log_with=[]", "--steps", "7") == 2
    assert "--resume: steps is 7 here but 6" in capsys.readouterr().err
    assert (out / "config.yaml").read_text() == before and not (out / "speechft.json").exists()

    assert cli(*resume, "--set", "log_with=[]", "--quiet") == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["log_with"] == []
    assert json.loads((out / "speechft.json").read_text())["steps_run"] == 6


def test_tracker_values_and_hyperparameters_are_flat_scalars():
    train_row = {"kind": "train", "step": 3, "loss": 0.5, "task_loss": {"a": 0.25}, "encoder_frozen": True}
    want = {"train/loss": 0.5, "train/task_loss/a": 0.25, "train/encoder_frozen": 1}
    assert tracking.tracker_values(train_row) == want
    dev_row = {"kind": "dev", "step": 3, "score": 0.75, "metrics": {"a": {"metric": "per", "value": 0.25}}}
    assert tracking.tracker_values(dev_row) == {"dev/score": 0.75, "dev/a/per": 0.25}
    hp = tracking.hparams(TrainConfig(log_with=["tensorboard"]))
    assert hp["optim.lr"] == 1e-4 and hp["optim.betas"] == "[0.9, 0.999]" and hp["log_with"] == '["tensorboard"]'
    assert hp["optim.encoder_lr"] == "null"  # unresolved: run_training logs the resolved config
    assert all(isinstance(v, (bool, int, float, str)) for v in hp.values())


def test_the_tracker_names_are_accelerates():
    from accelerate.utils import LoggerType

    assert set(TRACKERS) == {t.value for t in LoggerType}


@pytest.mark.parametrize(("command", "cls"), [("finetune", "TrainConfig"), ("pretrain", "PretrainConfig")])
def test_finetune_and_pretrain_take_log_with_into_their_config(tmp_path, command, cls):
    import importlib

    from speechft.cli import build_parser
    from speechft.config import config_from_args

    module = importlib.import_module({"finetune": "speechft.train", "pretrain": "speechft.pretrain"}[command])
    data = "--task" if command == "finetune" else "--audio"
    args = build_parser(command).parse_args(
        [command, "--encoder", "e", data, "d", "--out", str(tmp_path), "--log-with", "tensorboard", "wandb"]
    )
    cfg = config_from_args(getattr(module, cls), args, module.CONFIG_FLAGS)
    assert cfg.log_with == ["tensorboard", "wandb"]
