"""Configs: YAML + --set overrides, typed, unknown keys rejected."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from speechft.config import apply_overrides, load_config, save_config
from speechft.errors import SpeechFTError


@dataclass
class Optim:
    lr: float = 1e-4
    clip: float = 1.0


@dataclass
class Cfg:
    steps: int = 100
    method: str = "stable"
    tasks: list[str] = field(default_factory=list)
    verbose: bool = False
    optim: Optim = field(default_factory=Optim)


def test_defaults_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("steps: 50\noptim:\n  lr: 2.0e-4\n")
    cfg = load_config(Cfg, p, ["optim.clip=0.5", "tasks=pr,sid", "verbose=true"])
    assert cfg.steps == 50 and cfg.optim.lr == 2e-4 and cfg.optim.clip == 0.5
    assert cfg.tasks == ["pr", "sid"] and cfg.verbose is True
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(Cfg, tmp_path / "resolved.yaml") == cfg


def test_yaml_11_exponent_strings_are_numbers(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 1e-4\n")  # PyYAML reads this as a string
    assert load_config(Cfg, p).optim.lr == 1e-4


@pytest.mark.parametrize(
    "override, match",
    [
        ("stepz=3", "unknown key 'stepz' in config; valid keys: steps, method, tasks, verbose, optim"),
        ("optim.beta=3", "unknown key 'beta' in optim; valid keys: lr, clip"),
        ("steps=abc", "steps: expected an integer, got 'abc'"),
        ("optim.lr=fast", "optim.lr: expected a number"),
        ("verbose=maybe", "verbose: expected true or false"),
        ("steps", "expected key=value"),
        ("steps.x=1", "'steps' is a value, not a section"),
    ],
)
def test_bad_overrides(override, match):
    with pytest.raises(SpeechFTError, match=match):
        apply_overrides(Cfg(), [override])


def test_unknown_key_in_file_names_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lrr: 1\n")
    with pytest.raises(SpeechFTError, match=r"c.yaml: optim: unknown key 'lrr'"):
        load_config(Cfg, p)


# ---- the shared command-line grammar: --config <- the command's own flags <- --set ---------------------
def parse(argv, **flag_defaults):
    import argparse

    from speechft.config import add_config_options

    p = argparse.ArgumentParser()
    add_config_options(p, Cfg, "optim.lr=5e-5")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    return p.parse_args(argv)


def test_config_flags_and_set_apply_in_that_order(tmp_path):
    from speechft.config import config_from_args

    p = tmp_path / "c.yaml"
    p.write_text("steps: 50\nmethod: regular\noptim:\n  lr: 2.0e-4\n")
    flags = {"steps": "steps", "lr": "optim.lr"}
    args = parse(["--config", str(p), "--steps", "7", "--set", "steps=9", "verbose=true", "--set", "optim.clip=0.5"])
    cfg = config_from_args(Cfg, args, flags)
    # the file sets method and lr; --steps overrides the file; --set (given twice, two items once) wins over --steps
    assert (cfg.method, cfg.optim.lr, cfg.steps, cfg.verbose, cfg.optim.clip) == ("regular", 2e-4, 9, True, 0.5)
    cfg = config_from_args(Cfg, parse(["--config", str(p), "--lr", "3e-4"]), flags)
    assert (cfg.steps, cfg.optim.lr) == (50, 3e-4)  # a flag left out keeps the file's value
    assert config_from_args(Cfg, parse([]), flags) == Cfg()


def test_a_bad_flag_value_names_the_flag():
    from speechft.config import config_from_args

    @dataclass
    class Narrow:
        method: str = "a"
        steps: int = 1

    import argparse

    args = argparse.Namespace(config=None, set=[], steps=None, method=["not", "a", "string"])
    with pytest.raises(SpeechFTError, match="--method"):
        config_from_args(Narrow, args, {"method": "method"})
    with pytest.raises(SpeechFTError, match="unknown key 'nope'"):
        config_from_args(Cfg, parse(["--set", "nope=1"]), {})


@pytest.mark.parametrize(
    "text, line",
    [
        ("base: &b 1\nsteps: *b\n", 2),  # a plain alias
        ("optim: &o {lr: 0.1}\ntasks: &t [a, *t]\n", 2),  # a list that contains itself
        ("_o: &o {lr: 0.1}\noptim:\n  <<: *o\n", 3),  # a merge key is an alias too
    ],
)
def test_a_config_file_with_a_yaml_alias_is_refused_naming_file_and_line(tmp_path, text, line):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(SpeechFTError, match=rf"^{p}: line {line} uses the YAML alias \*\w; aliases are refused"):
        load_config(Cfg, p)


def test_a_plain_anchor_without_an_alias_still_loads(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("steps: &s 7\noptim: &o {lr: 0.5}\n")
    cfg = load_config(Cfg, p)
    assert cfg.steps == 7 and cfg.optim.lr == 0.5


def test_set_refuses_an_alias_but_keeps_star_patterns_as_strings():
    with pytest.raises(SpeechFTError, match=r"^--set tasks: line 1 uses the YAML alias \*a; aliases are refused"):
        apply_overrides(Cfg(), ["tasks=[&a [x], *a]"])
    # `*conv*` names no anchor: not YAML, so it is the plain string it always was
    assert apply_overrides(Cfg(), ["method=*conv*"]).method == "*conv*"


def test_an_integer_too_long_to_convert_is_a_one_line_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("steps: " + "9" * 5000 + "\n")
    with pytest.raises(SpeechFTError, match=rf"^{p}: not valid YAML \(.*4300 digits"):
        load_config(Cfg, p)
    with pytest.raises(SpeechFTError, match="steps: expected an integer"):
        apply_overrides(Cfg(), ["steps=" + "9" * 5000])
