"""The speechft command line."""

from __future__ import annotations

import subprocess
import sys

from speechft.cli import main


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
