"""The training loop's seams: the Objective protocol both objectives implement, the Loop context, the config
module importable without the loop, and the finetune/pretrain command-line grammar (--task A B, --config/--set,
--device, --quiet)."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch
from conftest import cli

from speechft.objective import BatchStream, Loop, Objective
from speechft.pretrain import UnitObjective
from speechft.train import TaskObjective, TaskStream, load_tasks


def protocol_members(proto) -> dict:
    """{name: the function, or None for a data member} declared by a Protocol class."""
    methods = {name: v for name, v in vars(proto).items() if not name.startswith("_") and callable(v)}
    return {**{name: None for name in proto.__annotations__}, **methods}


@pytest.mark.parametrize("make", ["task", "units"])
def test_both_objectives_implement_the_protocol_with_its_signatures(cls_task, make):
    obj = TaskObjective(load_tasks([cls_task])) if make == "task" else UnitObjective(cls_task)
    assert isinstance(obj, Objective)
    for name, member in protocol_members(Objective).items():
        assert hasattr(obj, name), name
        if callable(member):
            want = list(inspect.signature(member).parameters)[1:]  # without self
            got = list(inspect.signature(getattr(obj, name)).parameters)
            assert got == want, (type(obj).__name__, name, got, want)


def test_task_stream_is_a_batch_stream(cls_task):
    from speechft.train_config import DataConfig

    stream = TaskStream(load_tasks([cls_task])[0], DataConfig(batch_size=2), 0, 0, 1, torch.device("cpu"))
    assert isinstance(stream, BatchStream)
    batch, n = next(stream)
    assert n == len(batch.targets) == 2 and stream.position == [0, 1]


def test_single_process_loop():
    loop = Loop.single()
    assert (loop.main, loop.rank, loop.world, loop.device) == (True, 0, 1, torch.device("cpu"))
    assert loop.gather([3, 1]) == [3, 1] and loop.barrier() is None
    with loop.autocast():
        assert not torch.is_autocast_enabled()


def test_configs_import_without_the_loop_accelerate_or_transformers():
    code = (
        "import sys, speechft.train_config as c; c.resolve_config(c.TrainConfig()); "
        "print([m for m in ('speechft.engine', 'speechft.train', 'accelerate', 'transformers') if m in sys.modules])"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


# ---- the command line -------------------------------------------------------------------------------------
def test_finetune_cli_takes_several_tasks_after_one_flag_on_the_device_asked_without_bars(
    tmp_path, tiny_encoder_dir, cls_task, ctc_task, capsys
):
    out = tmp_path / "run"
    argv = ["finetune", "--encoder", tiny_encoder_dir("hubert"), "--task", cls_task, ctc_task, "--out", out]
    argv += ["--steps", "2", "--set", "data.batch_size=4", "head.proj_dim=8", "head.lstm_layers=0"]
    assert cli(*argv, "--device", "cpu", "--quiet") == 0
    err = capsys.readouterr().err
    assert "finetune:" not in err and "step/s" not in err and "s/step" not in err  # no progress bar
    assert sorted(p.name for p in (out / "heads").iterdir()) == ["beeps", "tones"]
    from speechft.config import load_config
    from speechft.train import TrainConfig

    stored = load_config(TrainConfig, out / "config.yaml")
    assert (stored.data.batch_size, stored.head.proj_dim, stored.head.lstm_layers) == (4, 8, 0)


@pytest.mark.parametrize("command", ["finetune", "pretrain"])
@pytest.mark.parametrize(
    "device, needle",
    [("cuda", "--device cuda: CUDA is not available here"), ("tpu", "--device 'tpu'"), ("cuda:7", "--device cuda:7")],
)
def test_a_device_this_machine_lacks_is_a_one_line_error(
    tmp_path, tiny_encoder_dir, cls_task, capsys, command, device, needle
):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has the device")
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    data = ["--task", cls_task] if command == "finetune" else ["--audio", cls_task]
    out = tmp_path / "run"
    rc = cli(command, "--encoder", tiny_encoder_dir("hubert"), *data, "--out", out, "--steps", "2", "--device", device)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not out.exists()


def test_pretrain_cli_quiet_shows_no_bars_and_takes_set_values_in_one_flag(
    tmp_path, tiny_encoder_dir, cls_task, capsys
):
    out = tmp_path / "run"
    sets = ["units.clusters=8", "data.batch_size=12", "eval.every=2"]
    argv = ["pretrain", "--encoder", tiny_encoder_dir("hubert"), "--audio", cls_task, "--out", out, "--steps", "2"]
    assert cli(*argv, "--set", *sets, "--quiet", "--device", "cpu") == 0
    err = capsys.readouterr().err
    assert "units: k-means sample" not in err and "pretrain:" not in err
    assert "clusters: 8" in (out / "config.yaml").read_text()
