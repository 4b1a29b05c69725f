"""Crash safety: SIGKILL at random points of merge, data synth, evaluate and finetune.

Each command runs in a forked child of the test process (everything is imported already,
so a run takes a fraction of a second instead of the seconds a fresh interpreter needs)
and the child is killed with SIGKILL, the one signal no cleanup handler sees, at:

  - a random moment: the k-th Python/C function call of the run, k drawn uniformly from the
    calls an undisturbed run makes (sys.setprofile counts them), or
  - a commit point: just before or just after the j-th os.replace, the renames that make
    outputs appear (j drawn from the renames an undisturbed run makes).

After every kill the final output name is checked (absent, or complete and identical to
an undisturbed run: never corrupt), then the same command is rerun (with --resume for
finetune, --overwrite where an output may already exist) and its result must equal the
undisturbed run's, with no temp left beside the output.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import leftovers, make_classification_task
from safetensors.torch import load_file

from speechft.cli import main

KILLED = -signal.SIGKILL


def run_forked(argv: list, kill: tuple | None = None, count: bool = False) -> tuple[int, dict]:
    """Run `speechft argv` in a forked child. kill=("call", k) or ("replace", j, "before"|"after").
    Returns (exit code, or -9 when killed; with `count`, {"calls", "replaces"} the child made)."""
    argv = [str(a) for a in argv]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 70
        try:
            os.close(r)
            counts = {"calls": 0, "replaces": 0}

            def die():
                os.kill(os.getpid(), signal.SIGKILL)

            def profile(frame, event, arg):
                counts["calls"] += 1
                if kill and kill[0] == "call" and counts["calls"] == kill[1]:
                    die()

            real_replace = os.replace

            def replace(src, dst, **kw):
                counts["replaces"] += 1
                hit = kill and kill[0] == "replace" and counts["replaces"] == kill[1]
                if hit and kill[2] == "before":
                    die()
                real_replace(src, dst, **kw)
                if hit and kill[2] == "after":
                    die()

            os.replace = replace
            if count or (kill and kill[0] == "call"):  # counting calls slows the child: only when needed
                threading.setprofile(profile)
                sys.setprofile(profile)
            try:
                code = main(argv)
            finally:
                sys.setprofile(None)
                threading.setprofile(None)
            os.write(w, json.dumps(counts).encode())
        finally:
            os._exit(code if isinstance(code, int) else 71)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(r, "rb") as f:
        raw = f.read()
    return os.waitstatus_to_exitcode(status), (json.loads(raw) if raw else {})


def kill_points(counts: dict, seeds: list[int]) -> list[tuple]:
    """One kill per seed: even seeds at a random call, odd seeds at a random commit point."""
    points = []
    for s in seeds:
        rng = np.random.default_rng(s)
        if s % 2 == 0 or counts["replaces"] == 0:
            # (not the very last calls: a run's count varies a little, and the kill must land inside it)
            points.append(("call", int(rng.integers(1, int(0.98 * counts["calls"])))))
        else:
            points.append(
                ("replace", int(rng.integers(1, counts["replaces"] + 1)), "before" if rng.random() < 0.5 else "after")
            )
    return points


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (following links) by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")


# ---- merge ----------------------------------------------------------------------------------------------------
def test_merge_survives_sigkill(tmp_path, tiny_encoder_dir):
    pre, ft = tiny_encoder_dir("hubert", 0), tiny_encoder_dir("hubert", 1)

    def args(out):
        return [
            "merge",
            "--pretrained",
            pre,
            "--finetuned",
            ft,
            "--alpha",
            "0.3",
            "--out",
            out,
            "--overwrite",
        ]

    rc, counts = run_forked(args(tmp_path / "reference"), count=True)
    assert rc == 0 and counts["replaces"] > 0
    want = (tmp_path / "reference" / "model.safetensors").read_bytes()
    for i, kill in enumerate(kill_points(counts, [0, 1, 2, 3, 5, 7])):
        out = tmp_path / f"m{i}"
        if i % 2:  # half the time the killed run was replacing an older output (--overwrite)
            assert run_forked(["merge", "--pretrained", pre, "--finetuned", ft, "--alpha", "0.9", "--out", out])[0] == 0
        old = (out / "model.safetensors").read_bytes() if out.exists() else None
        rc, _ = run_forked(args(out), kill)
        assert rc == KILLED, (kill, rc)
        if out.exists():  # never half-written: the old output or the new one, complete
            assert (out / "model.safetensors").read_bytes() in (old, want), kill
            assert (out / "speechft.json").exists()
        assert run_forked(args(out))[0] == 0
        assert (out / "model.safetensors").read_bytes() == want, kill
        assert leftovers(out) == [], (kill, leftovers(out))


# ---- data synth ---------------------------------------------------------------------------------------------
def test_data_synth_survives_sigkill(tmp_path):
    pytest.importorskip("espeakng_loader")

    def args(out, cache):
        return [
            "data",
            "synth",
            "--size",
            "small",
            "--tasks",
            "ks",
            "--engines",
            "espeak-ng",
            "--out",
            out,
            "--cache-dir",
            cache,
            "--overwrite",
        ]

    rc, counts = run_forked(args(tmp_path / "reference", tmp_path / "cache_ref"), count=True)
    assert rc == 0
    want = tree(tmp_path / "reference")
    assert any(k.endswith(".wav") for k in want) and "ks/train.tsv" in want
    for i, kill in enumerate(kill_points(counts, [0, 1, 2])):
        out, cache = tmp_path / f"s{i}", tmp_path / f"cache{i}"  # a fresh clip cache: the kill lands in synthesis
        rc, _ = run_forked(args(out, cache), kill)
        assert rc == KILLED, (kill, rc)
        if out.exists():
            assert tree(out) == want, kill
        # Every clip the cache shows (its sidecar is written last) is complete.
        for meta in cache.rglob("*.json"):
            import soundfile as sf

            info = json.loads(meta.read_text())
            assert sf.info(str(meta.with_suffix(".wav"))).frames == info["samples"], meta
        assert run_forked(args(out, cache))[0] == 0
        assert tree(out) == want, kill
        assert leftovers(out) == [], (kill, leftovers(out))


# ---- evaluate (feature cache writes) ------------------------------------------------------------------------
def probe_results(out: Path) -> dict:
    r = json.loads((out / "results.json").read_text())
    keep = ("dev", "test", "test_per_seed", "chosen_lr", "layer_weights")
    return {m["name"]: {t: {k: v[k] for k in keep} for t, v in m["tasks"].items()} for m in r["models"]}


def test_evaluate_survives_sigkill(tmp_path, tiny_encoder_dir):
    from speechft.feature_cache import FeatureCache

    task = make_classification_task(tmp_path / "task", n_per_class=4)
    enc = tiny_encoder_dir("hubert")

    def args(out, cache):
        return [
            "evaluate",
            "--encoder",
            enc,
            "--task",
            task,
            "--out",
            out,
            "--cache",
            cache,
            "--epochs",
            "2",
            "--lrs",
            "1e-2",
            "--min-steps",
            "0",
            "--quiet",
            "--overwrite",
        ]

    rc, counts = run_forked(args(tmp_path / "reference", tmp_path / "cache_ref"), count=True)
    assert rc == 0
    want = probe_results(tmp_path / "reference")
    for i, kill in enumerate(kill_points(counts, [0, 1, 2])):
        out, cache = tmp_path / f"e{i}", tmp_path / f"cache{i}"
        rc, _ = run_forked(args(out, cache), kill)
        assert rc == KILLED, (kill, rc)
        if (out / "results.json").exists():
            assert probe_results(out) == want, kill
        if cache.exists():  # every entry under its final name verifies (marker, checksums)
            fc = FeatureCache(cache)
            for entry in cache.iterdir():
                if not entry.name.startswith("."):
                    assert fc._check(entry) is None, (kill, entry, fc._check(entry))
        assert run_forked(args(out, cache))[0] == 0
        assert probe_results(out) == want, kill
        assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == [], kill  # no dead writer's temp


# ---- finetune (resumable checkpoints) -----------------------------------------------------------------------
@pytest.mark.slow
def test_finetune_survives_sigkill_and_resumes_to_the_same_weights(tmp_path, tiny_encoder_dir):
    task = make_classification_task(tmp_path / "task", n_per_class=4)
    enc = tiny_encoder_dir("hubert")

    def args(out):
        return [
            "finetune",
            "--encoder",
            enc,
            "--task",
            task,
            "--out",
            out,
            "--steps",
            "6",
            "--set",
            "data.batch_size=4",
            "--set",
            "head.proj_dim=8",
            "--set",
            "eval.every=2",
            "--set",
            "deterministic=true",
        ]

    rc, counts = run_forked(args(tmp_path / "reference"), count=True)
    assert rc == 0
    want = load_file(str(tmp_path / "reference" / "model.safetensors"))
    want_head = load_file(str(tmp_path / "reference" / "heads" / "tones" / "head.safetensors"))

    def same(out: Path) -> bool:
        got = load_file(str(out / "model.safetensors"))
        head = load_file(str(out / "heads" / "tones" / "head.safetensors"))
        return (
            got.keys() == want.keys()
            and all(torch.equal(got[k], want[k]) for k in want)
            and all(torch.equal(head[k], want_head[k]) for k in want_head)
        )

    # The seeds' points, plus one late in the run (after its last checkpoint, while the result is written).
    for i, kill in enumerate(kill_points(counts, [0, 1, 2, 3]) + [("call", int(0.97 * counts["calls"]))]):
        out = tmp_path / f"f{i}"
        rc, _ = run_forked(args(out), kill)
        assert rc == KILLED, (kill, rc)
        if (out / "speechft.json").exists():  # marked finished only when the weights are final
            assert same(out), kill
        resume = ["--resume"] if (out / "config.yaml").exists() else ["--overwrite"] if out.exists() else []
        rc, _ = run_forked(args(out) + resume)
        assert rc == 0, (kill, resume)
        assert same(out), kill
        assert leftovers(out) == [] and not (out / ".encoder.tmp").exists(), kill


def test_finetune_killed_while_setting_up_its_folder_restarts(tmp_path, tiny_encoder_dir):
    """run.json is written before config.yaml (which marks a run resumable): killed between the two, the
    folder is not resumable but --overwrite restarts it; killed after both, --resume continues."""
    task = make_classification_task(tmp_path / "task", n_per_class=4)
    enc = tiny_encoder_dir("hubert")

    def args(out):
        return [
            "finetune",
            "--encoder",
            enc,
            "--task",
            task,
            "--out",
            out,
            "--steps",
            "2",
            "--set",
            "data.batch_size=4",
            "--set",
            "head.proj_dim=8",
        ]

    rc, _ = run_forked(args(tmp_path / "a"), ("replace", 1, "after"))  # the first rename is run.json's
    assert rc == KILLED and (tmp_path / "a" / "run.json").exists() and not (tmp_path / "a" / "config.yaml").exists()
    assert run_forked(args(tmp_path / "a") + ["--overwrite"])[0] == 0
    assert (tmp_path / "a" / "speechft.json").exists()
    rc, _ = run_forked(args(tmp_path / "b"), ("replace", 2, "after"))  # then config.yaml's
    assert rc == KILLED and (tmp_path / "b" / "config.yaml").exists()
    assert run_forked(args(tmp_path / "b") + ["--resume"])[0] == 0
    assert (tmp_path / "b" / "speechft.json").exists()


# ---- what a rerun cleans up ---------------------------------------------------------------------------------
def test_atomic_dir_removes_only_temps_of_dead_writers_on_this_host(tmp_path):
    from speechft.io_utils import _host, atomic_dir

    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)  # a writer that has died
    out = tmp_path / "out"
    dead = tmp_path / f".out.{pid}@{_host()}.abcd1234.tmp"
    live = tmp_path / f".out.{os.getppid()}@{_host()}.abcd1234.tmp"  # pytest's parent: alive
    remote = tmp_path / f".out.{pid}@some-other-node.abcd1234.tmp"  # shared storage: not ours to judge
    other = tmp_path / f".outer.{pid}@{_host()}.abcd1234.tmp"  # another output's temp
    for d in (dead, live, remote, other):
        d.mkdir()
    (tmp_path / ".out.old").mkdir()  # the old output a writer killed between its two renames left behind
    with atomic_dir(out) as t:
        (t / "x").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (out, live, remote, other))
