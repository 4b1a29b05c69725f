"""A task's probes over several processes (probe_workers.py) give what one process gives, and a worker's
failure is one line; tasks over the same audio share one extraction (the cache is keyed by the clips)."""

from __future__ import annotations

import csv
import os
import shutil

import pytest
from conftest import make_classification_task, make_ctc_task

from speechft.encoders import tiny_encoder
from speechft.errors import SpeechFTError
from speechft.feature_cache import FeatureCache
from speechft.probe import evaluate
from speechft.probe_workers import MAX_DEFAULT_WORKERS, in_workers, resolve_workers

GRID = dict(lrs=[1e-2, 1e-3], seeds=[0, 1, 2], epochs=3, min_steps=0, progress=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("workers")
    tiny_encoder("hubert", seed=0).save(root / "enc")
    return root, make_classification_task(root / "cls", n_per_class=8), make_ctc_task(root / "ctc", n=10)


def everything(results) -> dict:
    """Every number a task's entry holds that the probes produced."""
    return {
        t: (r["chosen_lr"], r["dev"], r["test"], r["layer_weights_per_seed"], r["lr_search"])
        for t, r in results["models"][0]["tasks"].items()
    }


def test_probes_in_three_processes_give_exactly_what_one_gives(world, tmp_path):
    root, cls, ctc = world
    cache = FeatureCache(tmp_path / "cache")
    one = evaluate([root / "enc"], [cls, ctc], None, cache=cache, probe_workers=1, **GRID)
    three = evaluate([root / "enc"], [cls, ctc], None, cache=cache, probe_workers=3, **GRID)
    assert one["protocol"]["probe_workers"] == 1 and three["protocol"]["probe_workers"] == 3
    assert everything(three) == everything(one)  # 6 pairs a task: 2 in each process, dealt k mod 3
    # Without a cache the children inherit the features held in memory: the same numbers again.
    assert everything(evaluate([root / "enc"], [cls, ctc], None, cache=False, probe_workers=2, **GRID)) == (
        everything(one)
    )


def test_a_worker_error_is_raised_as_one_line_in_the_parent():
    def fine(pairs):
        return [{"pair": p, "pid": os.getpid()} for p in pairs]

    def train(pairs):
        if 3 in pairs:
            raise ValueError("pair 3 is bad")
        return fine(pairs)

    got = in_workers(fine, [0, 1, 2, 3], 2)
    assert [g["pair"] for g in got] == [0, 1, 2, 3]  # in the order of the pairs
    assert got[0]["pid"] == got[2]["pid"] == os.getpid() != got[1]["pid"] == got[3]["pid"]
    with pytest.raises(SpeechFTError, match=r"^in a probe worker process: ValueError: pair 3 is bad$"):
        in_workers(train, [0, 1, 2, 3], 2)  # pair 3 goes to the child (3 mod 2 = 1)


def test_a_worker_that_dies_is_named_not_waited_for():
    def train(pairs):
        if 1 in pairs:
            os._exit(7)  # a child killed (by the OOM killer, say) before it sends anything
        return [{"pair": p} for p in pairs]

    with pytest.raises(SpeechFTError, match=r"died \(exit code 7\).*--probe-workers 1"):
        in_workers(train, [0, 1], 2)


def test_how_many_workers():
    assert resolve_workers(3, "cpu") == 3
    assert 1 <= resolve_workers(None, "cpu") <= MAX_DEFAULT_WORKERS
    assert resolve_workers(4, "cuda") == 1  # a GPU trains its probes itself; fork and CUDA do not mix
    assert resolve_workers(4, "cpu", world=2) == 1  # accelerate's processes already share the cores
    for bad in (0, -1, 1.5, True):
        with pytest.raises(SpeechFTError, match="--probe-workers"):
            resolve_workers(bad, "cpu")


def _relabel(task_dir, new_dir, name: str):
    """A copy of a CTC task, its clips copied too (the same bytes in other files), with other transcripts
    (reversed): pr beside asr."""
    shutil.copytree(task_dir, new_dir)
    spec = (new_dir / "task.yaml").read_text()
    (new_dir / "task.yaml").write_text(spec.replace("name: beeps", f"name: {name}"))
    for split in ("train", "dev", "test"):
        path = new_dir / f"{split}.tsv"
        rows = list(csv.DictReader(path.open(), delimiter="\t"))
        for r in rows:
            r["transcript"] = " ".join(reversed(r["transcript"].split()))
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
    return new_dir


def test_tasks_over_the_same_clips_share_one_extraction(world, tmp_path):
    root, _, ctc = world
    rev = _relabel(ctc, tmp_path / "rev", "reversed")
    cache_dir = tmp_path / "cache"
    r = evaluate([root / "enc"], [ctc, rev], None, cache=FeatureCache(cache_dir), **GRID)["models"][0]["tasks"]
    assert r["beeps"]["encoder_passes"] == 3 and r["reversed"]["encoder_passes"] == 0
    assert r["reversed"]["cache"] == {"train": "hit", "dev": "hit", "test": "hit"}
    assert len([p for p in cache_dir.iterdir() if p.is_dir()]) == 3  # one entry per split, not two
    assert r["reversed"]["lr_search"] != r["beeps"]["lr_search"]  # the probes did learn other targets
    # One clip of the copy changed (its bytes, not its name): that split alone is extracted again.
    clip = sorted((rev / "audio").glob("dev_*.wav"))[0]
    data = bytearray(clip.read_bytes())
    data[-2] ^= 0x01  # the last sample, one bit
    clip.write_bytes(bytes(data))
    r = evaluate([root / "enc"], [rev], None, cache=FeatureCache(cache_dir), **GRID)["models"][0]["tasks"]
    assert r["reversed"]["cache"] == {"train": "hit", "dev": "miss", "test": "hit"}
