"""The speechft command line."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from speechft.cli import COMMANDS, available_commands, build_parser, main


def run(*args):
    return subprocess.run([sys.executable, "-m", "speechft", *args], capture_output=True, text=True)


def test_help_lists_subcommands():
    r = run("--help")
    assert r.returncode == 0
    for name in ("encoder", "data"):
        assert name in r.stdout


def test_user_error_is_one_line_and_exit_2(tmp_path):
    r = run("encoder", "info", str(tmp_path / "missing"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "encoder folder not found" in r.stderr
    assert "Traceback" not in r.stderr


def test_debug_shows_traceback(tmp_path):
    r = run("--debug", "encoder", "info", str(tmp_path / "missing"))
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_encoder_tiny_writes_a_loadable_folder(tmp_path, capsys):
    assert main(["encoder", "tiny", "wavlm", "--out", str(tmp_path / "w")]) == 0
    assert str(tmp_path / "w") in capsys.readouterr().out
    from speechft.encoders import load_encoder

    assert load_encoder(tmp_path / "w").family == "wavlm"


# ---- one grammar across commands, checked on the real parsers (every command, every subcommand) ------
COMMAND_SET = {
    "demo",
    "data",
    "encoder",
    "finetune",
    "pretrain",
    "merge",
    "sweep",
    "evaluate",
    "analyze",
    "report",
    "doctor",
}
RUN_LIKE = ("finetune", "pretrain", "evaluate", "analyze", "sweep", "merge")
RUNS_A_MODEL = ("demo", "finetune", "pretrain", "evaluate", "analyze", "sweep", "doctor")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subs[0].choices) if subs else {}


def command_parser(name: str) -> argparse.ArgumentParser:
    return _subparsers(build_parser(name))[name]


def every_parser():
    """(spelled command, parser) for every command and nested subcommand."""
    for name in COMMANDS:
        p = command_parser(name)
        nested = _subparsers(p)
        if nested:
            yield from ((f"{name} {n}", sp) for n, sp in nested.items())
        else:
            yield name, p


def options(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in p._actions for s in a.option_strings}


def test_the_command_set_is_complete():
    assert set(available_commands()) == COMMAND_SET
    assert set(_subparsers(command_parser("data"))) == {"synth", "prepare"}
    assert {"default", "tiny", "convert", "info"} <= set(_subparsers(command_parser("encoder")))


def test_a_command_whose_module_is_missing_is_an_error_not_a_silent_gap(monkeypatch, capsys):
    monkeypatch.setitem(COMMANDS, "ghost", ("speechft.ghost_command", "a command whose module is gone"))
    assert main(["--help"]) == 2
    err = capsys.readouterr().err
    assert "speechft.ghost_command" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", RUN_LIKE)
def test_run_like_commands_take_a_config_file_and_set_overrides(name):
    opts = options(command_parser(name))
    assert "--config" in opts and "--set" in opts, name
    assert opts["--set"].nargs == "+" and isinstance(opts["--set"], argparse._ExtendAction)


def test_every_multi_value_option_is_nargs_plus():
    offenders = []
    for spelled, p in every_parser():
        for a in p._actions:
            if isinstance(a, argparse._AppendAction) and not isinstance(a, argparse._ExtendAction):
                offenders.append(f"{spelled} {a.option_strings}: repeated flag")
            elif a.option_strings and a.nargs not in (None, 0, "?", "+"):
                offenders.append(f"{spelled} {a.option_strings}: nargs={a.nargs}")
            elif a.option_strings and a.type is not None and getattr(a.type, "__name__", "") in ("_floats", "_ints"):
                offenders.append(f"{spelled} {a.option_strings}: comma-separated list")
    assert not offenders, offenders


def test_quiet_always_means_no_progress_bars():
    meanings = {spelled: options(p)["--quiet"].help for spelled, p in every_parser() if "--quiet" in options(p)}
    assert meanings and set(meanings.values()) == {"no progress bars"}, meanings


@pytest.mark.parametrize("name", RUNS_A_MODEL)
def test_commands_that_run_a_model_take_a_device(name):
    assert "--device" in options(command_parser(name)), name


def test_a_device_this_machine_lacks_is_one_line(capsys):
    import torch

    from speechft.config import resolve_device

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from speechft.errors import SpeechFTError

    with pytest.raises(SpeechFTError, match="--device cuda: CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(SpeechFTError, match="not a device"):
        resolve_device("gpu-please")
    assert resolve_device(None).type == "cpu" and resolve_device("cpu").type == "cpu"
