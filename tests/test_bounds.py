"""Tiny inputs must not exhaust the machine: bounded time and memory before a one-line refusal.

A 381-byte task.yaml of nested YAML aliases ("billion laughs") once drove a process past 6 GB, and a
341-byte --config with the same trick ran for ~30 CPU-minutes. Each bomb is loaded here in a fresh
process that reports its own peak-memory growth (ru_maxrss) and wall time around the one call, so the
numbers are the loader's and not the test runner's. The bounds (1 s, 100 MB) are the issue's; the
refusals take about a millisecond and a few hundred KB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from speechft.errors import SpeechFTError
from speechft.sweep import MAX_ALPHAS, parse_alphas

SECONDS = 1.0
MEGABYTES = 100


def alias_bomb(levels: int = 9, width: int = 9) -> list[str]:
    """Lines `l0: &l0 [lol, ...]`, `l1: &l1 [*l0, ...]`, ...: the last one expands to width**levels leaves."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return lines


def flow_bomb(levels: int = 9, width: int = 9) -> str:
    """The same in one flow sequence (a --set value): [&l0 [lol, ...], &l1 [*l0, ...], ...]."""
    parts = [f"&l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        parts.append(f"&l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "[" + ", ".join(parts) + "]"


CHILD = """
import json, resource, sys, time
from pathlib import Path
from speechft.config import apply_overrides, load_config, load_yaml
from speechft.data.tasks import load_spec
from speechft.errors import SpeechFTError
from speechft.train_config import TrainConfig

kind, arg = sys.argv[1], sys.argv[2]
load_yaml("warm: [1, 2]", "warm-up")  # the parser's own first-use allocations are not the bomb's
calls = {
    "task": lambda: load_spec(Path(arg)),
    "config": lambda: load_config(TrainConfig, arg),
    "set": lambda: apply_overrides(TrainConfig(), ["optim.betas=" + Path(arg).read_text()]),
}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    calls[kind]()
    message = None
except SpeechFTError as e:
    message = str(e)
seconds = time.perf_counter() - start
grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # Linux: KiB
print(json.dumps({"message": message, "seconds": seconds, "grown_mb": grown_mb}))
"""


def measure(kind: str, arg: Path) -> dict:
    # The timeout only keeps a regression from hanging the suite (the old code ran for half an hour).
    try:
        r = subprocess.run([sys.executable, "-c", CHILD, kind, str(arg)], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"loading the {kind} alias bomb did not finish in 60 s")
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def write_bomb(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    """(the argument the child loads, the file named in the refusal)."""
    if kind == "task":
        folder = tmp_path / "task"
        folder.mkdir()
        path = folder / "task.yaml"
        path.write_text("\n".join(["name: lol", "type: classification", *alias_bomb(), "labels: *l8"]) + "\n")
        return folder, path
    if kind == "config":
        path = tmp_path / "recipe.yaml"
        path.write_text("\n".join(["optim:", *("  " + line for line in alias_bomb()), "  betas: *l8"]) + "\n")
        return path, path
    path = tmp_path / "value.txt"
    path.write_text(flow_bomb())
    return path, Path("--set optim.betas")


@pytest.mark.parametrize("kind", ["task", "config", "set"])
def test_an_alias_bomb_is_refused_within_bounded_time_and_memory(tmp_path, kind):
    arg, named = write_bomb(tmp_path, kind)
    assert len(arg.read_text() if arg.is_file() else (arg / "task.yaml").read_text()) < 600  # a tiny file
    got = measure(kind, arg)
    assert got["message"] is not None, "the alias bomb was accepted"
    assert str(named) in got["message"] and "alias" in got["message"], got["message"]
    assert "\n" not in got["message"]
    assert got["seconds"] < SECONDS, got
    assert got["grown_mb"] < MEGABYTES, got


def test_a_huge_alpha_range_is_refused_before_it_is_built():
    with pytest.raises(SpeechFTError, match=rf"1e\+12 points, more than the limit of {MAX_ALPHAS}"):
        parse_alphas("0:1:1e-12")
    with pytest.raises(SpeechFTError, match="give numbers like"):
        parse_alphas("0:inf:0.1")  # an infinite count is no count (it was an OverflowError)
    assert len(parse_alphas("0:1:0.001")) == MAX_ALPHAS  # the limit itself is allowed
    assert parse_alphas("0:1:0.25") == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_a_score_config_with_an_alias_is_refused(tmp_path):
    from speechft.superb_score import load_score_config

    p = tmp_path / "score.yaml"
    p.write_text("name: &n bomb\nother: *n\n")
    with pytest.raises(SpeechFTError, match=rf"^{p}: line 2 uses the YAML alias \*n; aliases are refused"):
        load_score_config(p)


@pytest.mark.parametrize("key, value", [("proj_dim", 10**12), ("lstm_hidden", 10**9), ("lstm_layers", 10**6)])
def test_a_head_size_past_its_limit_is_refused_before_allocating(tmp_path, key, value):
    import json

    from speechft.config import apply_overrides
    from speechft.heads import HeadConfig, TaskHead
    from speechft.train_config import TrainConfig

    with pytest.raises(SpeechFTError, match=rf"{key} must be an integer from \d+ to \d+, got {value}"):
        apply_overrides(TrainConfig(), [f"head.{key}={value}"])
    folder = tmp_path / "head"  # a hostile head.json: a few bytes asking for terabytes
    folder.mkdir()
    config = {**HeadConfig().__dict__, key: value}
    meta = {"task_type": "classification", "labels": ["a", "b"], "input_dim": 8, "num_states": 2, "config": config}
    (folder / "head.json").write_text(json.dumps(meta))
    with pytest.raises(SpeechFTError, match=rf"{folder}: not a valid speechft head folder \({key} must be"):
        TaskHead.load(folder)
