"""`accelerate launch --num_processes 2 -m speechft evaluate`: the same results as one process, each cache entry
written once (and byte-identical to one process's), and the collectives that carry one process's failure to all."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import make_classification_task, make_ctc_task

from speechft.errors import SpeechFTError
from speechft.eval_dist import Ranks, divide
from speechft.feature_cache import FeatureCache
from speechft.probe import evaluate

SETS = ["extract_batch_size=3", "proj_dim=16", "eval_batch_size=5"]
FAST = dict(lrs=[1e-2, 1e-3], epochs=2, min_steps=0, seeds=[0, 1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probe_outcome(results) -> dict:
    """What must not depend on the number of processes: every probe's metrics, the chosen LRs, layer weights."""
    return {
        (m["name"], t): (
            r["chosen_lr"],
            r["dev"],
            r["test"],
            r["layer_weights"],
            r["layer_weights_per_seed"],
            [(s["lr"], s["dev_per_seed"], s["test_per_seed"], s["best_epoch_per_seed"]) for s in r["lr_search"]],
        )
        for m in results["models"]
        for t, r in m["tasks"].items()
    }


def entries(root) -> dict:
    """key -> {file: sha256} of every finished entry; and the names of anything else in the folder."""
    cache = FeatureCache(root)
    return {p.name: json.loads((p / "meta.json").read_text())["files"] for p, _, _ in cache.entries()}


@pytest.mark.slow
def test_two_processes_give_one_process_results_and_write_each_entry_once(tmp_path):
    from speechft.encoders import tiny_encoder

    enc = tmp_path / "enc"
    tiny_encoder("hubert", seed=0).save(enc)
    cls = make_classification_task(tmp_path / "cls", n_per_class=5)  # 10 train clips: 4 extraction batches of 3
    ctc = make_ctc_task(tmp_path / "ctc", n=7)
    two_cache, two_out = tmp_path / "cache2", tmp_path / "two"
    argv = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        "-m",
        "speechft",
        "evaluate",
        "--encoder",
        str(enc),
        "fbank",
        "--task",
        str(cls),
        str(ctc),
        "--out",
        str(two_out),
        "--cache",
        str(two_cache),
        "--lrs",
        *map(str, FAST["lrs"]),
        "--epochs",
        str(FAST["epochs"]),
        "--min-steps",
        "0",
        "--seeds",
        *map(str, FAST["seeds"]),
        "--quiet",
        "--set",
        *SETS,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("wrote ") == 1  # the main process reports; the other stays quiet
    two = json.loads((two_out / "results.json").read_text())
    assert two["protocol"]["processes"] == 2

    one_cache = tmp_path / "cache1"
    sets = dict(s.split("=") for s in SETS)
    one = evaluate(
        [enc, "fbank"],
        [cls, ctc],
        tmp_path / "one",
        cache=FeatureCache(one_cache),
        progress=False,
        **FAST,
        **{k: int(v) for k, v in sets.items()},
    )
    assert one["protocol"]["processes"] == 1
    assert probe_outcome(two) == probe_outcome(one)
    # Every probe of the grid (2 encoders x 2 tasks x 2 LRs x 2 seeds) ran once, in one of the two processes.
    assert all(len(s["dev_per_seed"]) == 2 for m in two["models"] for r in m["tasks"].values() for s in r["lr_search"])

    # Each entry is in the cache once: 2 encoders x 2 tasks x 3 splits, with the same keys and the same bytes as
    # one process's (so a later single-process run hits them), and no parts or markers left beside them.
    e2, e1 = entries(two_cache), entries(one_cache)
    assert len(e2) == 12 and e2 == e1
    assert sorted(p.name for p in two_cache.iterdir()) == sorted(e2)
    assert all(
        r["cache"] == {"train": "miss", "dev": "miss", "test": "miss"}
        for m in two["models"]
        for r in m["tasks"].values()
    )
    again = evaluate([enc, "fbank"], [cls, ctc], None, cache=FeatureCache(two_cache), progress=False, **FAST, **{
        k: int(v) for k, v in sets.items()
    })  # fmt: skip
    assert all(
        r["cache"] == {"train": "hit", "dev": "hit", "test": "hit"} for r in again["models"][0]["tasks"].values()
    )
    assert probe_outcome(again) == probe_outcome(one)


class FakeRanks(Ranks):
    """Ranks of an N-process world inside one process, for the collectives' logic (gather = what each rank
    would contribute, faked by calling `others`)."""

    def __init__(self, rank, world, others):
        super().__init__(
            rank, world, "cpu", gather=lambda mine: [mine[0] if r == rank else others(r) for r in range(world)]
        )


def test_the_grid_is_divided_round_robin_and_gathered_in_job_order():
    ran = []

    def run(job):
        ran.append(job)
        return job * 10

    ranks = FakeRanks(1, 3, others=lambda r: ({j: j * 10 for j in range(r, 7, 3)}, None))
    assert divide(ranks, list(range(7)), run) == [0, 10, 20, 30, 40, 50, 60]
    assert ran == [1, 4]  # this process's share only


def test_a_failure_in_one_process_is_raised_in_every_process():
    ranks = FakeRanks(0, 2, others=lambda r: (None, "bad.wav: cannot read this clip"))
    with pytest.raises(SpeechFTError, match="process 1: bad.wav: cannot read this clip"):
        ranks.agree(lambda: 1)
    ok = FakeRanks(0, 2, others=lambda r: (None, None))
    with pytest.raises(ZeroDivisionError):  # the failing process re-raises its own exception
        ok.agree(lambda: 1 / 0)


def test_no_cache_is_refused_across_processes(tmp_path, monkeypatch):
    import speechft.probe as probe

    enc = tmp_path / "enc"
    from speechft.encoders import tiny_encoder

    tiny_encoder("hubert", seed=0).save(enc)
    cls = make_classification_task(tmp_path / "cls", n_per_class=2)
    monkeypatch.setattr(probe.Ranks, "start", classmethod(lambda cls_, d: FakeRanks(0, 2, lambda r: (None, None))))
    with pytest.raises(SpeechFTError, match="--no-cache under accelerate launch"):
        evaluate([enc], [cls], None, cache=False, progress=False, **FAST)
