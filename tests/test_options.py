"""Every option validated: each option of each command and subcommand that takes a value is given a nonsense
value (for its type: 0, -1, nan, inf, 1e30, 'foo', an empty string, a missing path) on top of otherwise valid
arguments, and must be refused the way every user error is (issue 18): exit status 2, one stderr line
`speechft...: error: ...` naming the option (its flag or the config key it sets; for a path, the path itself),
never `unexpected <Type>`, and nothing written at --out.

The options are found by walking the real parsers (speechft.cli.build_parser and the nested `data` / `encoder`
subcommands), so an option added later is covered without touching this file; a nonsense value that is really
fine for one option is allowed explicitly in ALLOWED, with the reason. Each case must be refused before the
command's heavy work: a case still running after CASE_SECONDS is stopped and fails.
"""

from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path

import pytest
import torch
from conftest import cli, leftovers, make_classification_task

from speechft.cli import COMMANDS, build_parser
from speechft.encoders import tiny_encoder

CASE_SECONDS = 20  # a refusal takes well under a second; a case this slow has started the real work
MISSING = "<missing path>"  # replaced by a path that does not exist
FAST = ["data.batch_size=4", "eval.log_every=1", "head.proj_dim=16"]

NONSENSE = {
    int: ["-1", "0", "foo"],
    float: ["nan", "inf", "-1", "0", "1e30", "foo"],
    str: ["", MISSING],
}
# Option-specific nonsense beyond its type's.
EXTRA = {
    "--device": ["foo", "cuda:99"] + ([] if torch.cuda.is_available() else ["cuda"]),
    "--split": ["foo"],
    "--alpha": ["nan", "inf", "1e30", "foo"],
    "--alphas": ["nan", "inf", "0:1:0", "foo"],
    "--set": ["foo", "no_such_key=1"],
    "--param": ["foo", "alpha=foo"],
    "--max-shard-size": ["0", "foo"],
    "--method": ["foo"],
    "--target": ["foo"],
    "--tasks": ["foo"],
    "--engines": ["foo"],
    "--lrs": ["1e30"],
}
# (command, option) -> nonsense values that are legitimately fine there, and why.
ALLOWED = {
    # --out is created: a path that does not exist yet is the normal case.
    **{
        (c, "--out"): {MISSING}
        for c in (
            "demo",
            "data synth",
            "data prepare",
            "encoder default",
            "encoder tiny",
            "encoder convert",
            "encoder export-whisper",
            "finetune",
            "pretrain",
            "merge",
            "sweep",
            "evaluate",
            "analyze",
            "report",
        )
    },  # fmt: skip
    ("demo", "--seed"): {"0"},  # seeds: any non-negative integer
    ("data synth", "--seed"): {"0"},
    ("encoder tiny", "--seed"): {"0"},
    ("sweep", "--seed"): {"0"},
    ("analyze", "--seed"): {"0"},
    ("data synth", "--cache-dir"): {MISSING},  # created on first use
    ("evaluate", "--cache"): {MISSING},  # created on first use
    ("evaluate", "--min-steps"): {"0"},  # 0 = the epochs alone decide
    ("evaluate", "--cache-max-gb"): {"1e30"},  # no practical limit
    ("evaluate", "--max-seconds"): {"1e30"},  # no cropping
    ("data prepare", "--hours"): {"0", "1e30"},  # 0 = all (documented); more than the corpus = all
    ("data prepare", "--min-seconds"): {"0"},  # keep every segment
    ("data prepare", "--max-seconds"): {"1e30"},  # no upper limit
    ("report", "--title"): {MISSING},  # free text (an empty one is refused: it is an unset shell variable)
    ("analyze", "--labels"): {MISSING},  # free text (a label per model)
    ("merge", "--exclude"): {MISSING},  # a regular expression that matches nothing excludes nothing
    ("evaluate", "--seeds"): {"0"},
    # Extrapolation is allowed (with a warning) and checked by a forward pass: a fine-tune that barely moved
    # stays finite at any alpha (test_bad_inputs has the alpha whose forward pass is not finite).
    ("merge", "--alpha"): {"1e30"},
    # doctor reports every problem of every path (a missing one included) on stdout and exits 1: its contract.
    ("doctor", "paths"): {MISSING},
}


class Overran(BaseException):
    """Raised by the alarm: not an Exception, so the CLI's catch-all cannot turn it into a one-line error."""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """What the valid baselines read, made once: an encoder, a task, a fine-tuned run, a results.json, a
    sweep.json, an s3prl checkpoint and an (empty) corpus folder."""
    root = tmp_path_factory.mktemp("inputs")
    enc = tiny_encoder("hubert", seed=0).save(root / "enc")
    task = make_classification_task(root / "task", n_per_class=3)
    assert cli("finetune", "--encoder", enc, "--task", task, "--out", root / "ft", "--steps", "2", "--quiet",
               "--set", *FAST) == 0  # fmt: skip
    from test_convert import fairseq_cfg, fairseq_state
    from test_report import model, results

    (root / "results.json").write_text(json.dumps(results(model("fbank", 0.8, 0.3), model("m", 0.2, 0.7))))
    row = {"alpha": 0.0, "target_metric": 0.5, "cka_mean": 1.0, "cka_per_layer": [1.0, 1.0, 1.0]}
    (root / "sweep.json").write_text(json.dumps({"results": [row, {**row, "alpha": 1.0}]}))
    w2v = tiny_encoder("wav2vec2", seed=8)
    torch.save({"model_cfg": {"_name": "wav2vec2", **fairseq_cfg(w2v)}, "model_weight": fairseq_state(w2v)},
               root / "ckpt.pt")  # fmt: skip
    (root / "corpus").mkdir()
    from test_export_whisper import tiny_full, tiny_whisper_encoder

    whisper, full = tiny_whisper_encoder(root / "whisper"), tiny_full(root / "whisper_full")
    return {"enc": enc, "task": task, "ft": root / "ft", "results": root / "results.json",
            "sweep": root / "sweep.json", "ckpt": root / "ckpt.pt", "corpus": root / "corpus",
            "whisper": whisper, "whisper_full": full}  # fmt: skip


def baseline(command: str, i: dict[str, Path], out: Path, option: str) -> dict[str, list]:
    """Valid arguments of `command` (flag or positional dest -> values); `option` is the one under test (the
    `data prepare` corpus is one that takes it)."""
    enc, task, ft = i["enc"], i["task"], i["ft"]
    quick = {"--quiet": []}
    table = {
        "demo": {"--quick": [], "--out": [out], **quick},
        "data synth": {"--out": [out], "--size": ["small"], "--tasks": ["ks"], **quick},
        "data prepare": {"corpus": [prepare_corpus_for(option)], "--root": [i["corpus"]], "--out": [out], **quick},
        "encoder default": {"--out": [out]},
        "encoder tiny": {"family": ["hubert"], "--out": [out]},
        "encoder convert": {"--from": ["s3prl"], "checkpoint": [i["ckpt"]], "--out": [out]},
        "encoder info": {"encoder": [enc]},
        "encoder export-whisper": {"encoder": [i["whisper"]], "--decoder-from": [i["whisper_full"]], "--out": [out]},
        "finetune": {"--encoder": [enc], "--task": [task], "--out": [out], "--steps": ["2"], "--set": FAST, **quick},
        "pretrain": {"--encoder": [enc], "--audio": [task], "--out": [out], "--steps": ["2"], **quick},
        "merge": {"--pretrained": [enc], "--finetuned": [ft], "--out": [out], **quick},
        "sweep": {"--pretrained": [enc], "--finetuned": [ft], "--task": [task], "--alphas": ["0", "1"],
                  "--out": [out], **quick},
        "evaluate": {"--encoder": [enc], "--task": [task], "--out": [out], "--epochs": ["1"], "--lrs": ["1e-3"],
                     "--no-cache": [], **quick},
        "analyze": {"--pretrained": [enc], "--models": [ft], "--task": [task], "--out": [out], **quick},
        "report": {"results": [i["results"]], "--out": [out]},
        "doctor": {"paths": [enc]},
    }  # fmt: skip
    if command not in table:
        pytest.fail(f"`speechft {command}` has no valid baseline here: add one to test_options.baseline()")
    return table[command]


def prepare_corpus_for(option: str) -> str:
    from speechft.data.corpora import CORPORA, corpus_reader

    key = option.lstrip("-").replace("-", "_")
    return next((n for n in CORPORA if key in corpus_reader(n)[1]), "fluent-ic")


def parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """(command words, parser) of every command and nested subcommand."""
    found = []

    def walk(p, words):
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found.append((" ".join(words), p))
        for a in subs:
            for name, sp in a.choices.items():
                walk(sp, [*words, name])

    for command in COMMANDS:
        top = build_parser(command)
        sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
        walk(sub.choices[command], [command])
    return found


def takes_value(a: argparse.Action) -> bool:
    return a.nargs != 0 and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))


def flag(a: argparse.Action) -> str:
    return max(a.option_strings, key=len) if a.option_strings else a.dest


def nonsense(a: argparse.Action) -> list[str]:
    if a.choices is not None:
        return ["foo"]
    # speechft.cli's argparse types (positive_int, finite_float, ...) are named "integer" / "number".
    kind = {int: int, float: float}.get(a.type) or {"integer": int, "number": float}.get(
        getattr(a.type, "__name__", ""), str
    )
    return list(dict.fromkeys([*NONSENSE[kind], *EXTRA.get(flag(a), [])]))


def cases() -> list:
    out = []
    for command, p in parsers():
        for a in p._actions:
            if takes_value(a):
                for value in nonsense(a):
                    if value not in ALLOWED.get((command, flag(a)), set()):
                        out.append(pytest.param(command, flag(a), value, id=f"{command} {flag(a)} {value!r}"))
    return out


def argv_of(command: str, p: argparse.ArgumentParser, args: dict[str, list]) -> list[str]:
    """Command words, then the positionals in the parser's order, then the flags."""
    positionals = [a.dest for a in p._actions if not a.option_strings and a.dest in args]
    flags = [k for k in args if k.startswith("-")]
    return [*command.split(), *(v for d in positionals for v in args[d]), *(t for k in flags for t in [k, *args[k]])]


def exclusive_with(p: argparse.ArgumentParser, option: str) -> set[str]:
    out = set()
    for g in p._mutually_exclusive_groups:
        names = {flag(a) for a in g._group_actions}
        if option in names:
            out |= names - {option}
    return out


@pytest.mark.parametrize("command, option, value", cases())
def test_every_option_refuses_nonsense(tmp_path, capsys, inputs, command, option, value):
    p = dict(parsers())[command]
    action = next(a for a in p._actions if flag(a) == option)
    out = tmp_path / "out"
    args = {k: v for k, v in baseline(command, inputs, out, option).items() if k not in exclusive_with(p, option)}
    given = str(tmp_path / "no-such" / "thing") if value == MISSING else value
    args[option] = [given]
    argv = argv_of(command, p, args)
    capsys.readouterr()

    def overran(*_):
        raise Overran(f"speechft {' '.join(argv)} ran for {CASE_SECONDS} s: the nonsense was accepted")

    old = signal.signal(signal.SIGALRM, overran)
    signal.alarm(CASE_SECONDS)
    try:
        rc = cli(*argv)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, f"rc {rc} for {argv}: {err or '(no error)'}"
    assert len(lines) == 1, err
    assert lines[0].startswith("speechft") and "error:" in lines[0] and "unexpected" not in lines[0], err
    names = {option, option.lstrip("-"), action.dest, option.lstrip("-").replace("-", "_"), str(action.metavar)}
    names |= {given} if given.strip() else set()
    names |= set(config_keys(command, action.dest))
    assert any(n in lines[0] for n in names), f"{err!r} names none of {sorted(names)}"
    if option != "--out":
        assert not out.exists() and leftovers(out) == [], f"{argv} wrote {out}"


def config_keys(command: str, dest: str) -> list[str]:
    """The config keys a flag sets (its command module's table of flags), for messages that name the key."""
    import importlib

    from speechft.cli import COMMANDS

    module = importlib.import_module(COMMANDS[command.split()[0]][0])
    keys = []
    for table in ("FLAGS", "CONFIG_FLAGS", "_FLAGS"):
        key = getattr(module, table, {}).get(dest)
        if key:
            keys += [key, key.split(".")[-1]]
    return keys
