"""SUPERB-style probing: learning, the feature cache (exactness, corruption, staleness,
eviction), results.json and the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import make_classification_task, make_ctc_task, tone

from speechft.cli import main as cli_main
from speechft.data import load_task
from speechft.data.audio import write_audio
from speechft.encoders import load_encoder, tiny_encoder
from speechft.errors import SpeechFTError
from speechft.feature_cache import MARKER, FeatureCache
from speechft.features import FbankSource, FeatureSource, extract_features, feature_fields, open_source
from speechft.heads import mean_pool
from speechft.probe import ProbeConfig, evaluate

FAST = dict(lrs=[1e-2, 1e-3], epochs=3, min_steps=0, progress=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    tiny_encoder("hubert", seed=0).save(root / "enc")
    return SimpleNamespace(
        root=root,
        enc=root / "enc",
        cls=make_classification_task(root / "cls", n_per_class=10),
        ctc=make_ctc_task(root / "ctc", n=12),
    )


def runs(results) -> dict:
    """Everything a probe run produced that must not depend on where features came from."""
    out = {}
    for m in results["models"]:
        for t, r in m["tasks"].items():
            out[(m["name"], t)] = (
                r["chosen_lr"],
                r["dev"],
                r["test"],
                r["layer_weights"],
                [(s["lr"], s["dev_per_seed"], s["test_per_seed"], s["best_epoch_per_seed"]) for s in r["lr_search"]],
            )
    return out


def statuses(results) -> dict:
    return {(m["name"], t): r["cache"] for m in results["models"] for t, r in m["tasks"].items()}


# ---- learning ------------------------------------------------------------------------
@pytest.mark.parametrize("encoder", ["tiny", "fbank"])
def test_probe_learns_a_separable_classification_task(world, encoder):
    enc = world.enc if encoder == "tiny" else "fbank"
    r = evaluate([enc], [world.cls], None, cache=False, lrs=[1e-2, 1e-3], epochs=15, min_steps=0, progress=False)
    res = r["models"][0]["tasks"]["tones"]
    assert res["test"] >= 0.9  # chance is 0.5 (two balanced classes)
    assert res["chosen_lr"] in (1e-2, 1e-3)
    weights = res["layer_weights"]
    assert len(weights) == (3 if encoder == "tiny" else 1)  # tiny hubert: 2 layers -> 3 states
    assert sum(weights) == pytest.approx(1.0)


def test_probe_learns_a_ctc_task(tmp_path, world):
    task = make_ctc_task(tmp_path / "ctc24", n=24)
    r = evaluate(
        [world.enc], [task], None, cache=False, lrs=[5e-2], epochs=30, min_steps=0, ctc_batch_size=4, progress=False
    )
    res = r["models"][0]["tasks"]["beeps"]
    # Emitting nothing scores PER 1.0; the probe must transcribe most tones correctly.
    assert res["metric"] == "per" and res["lower_is_better"]
    assert res["test"] < 0.5


def test_bilstm_ctc_head_trains_and_is_recorded(world):
    r = evaluate(
        [world.enc],
        [world.ctc],
        None,
        cache=False,
        lrs=[1e-2],
        epochs=2,
        min_steps=0,
        ctc_head="bilstm",
        lstm_layers=1,
        lstm_hidden=16,
        progress=False,
    )
    assert r["protocol"]["ctc_head"] == "bilstm"
    assert 0.0 <= r["models"][0]["tasks"]["beeps"]["test"] <= 5.0


# ---- the cache is exact --------------------------------------------------------------
def test_cached_uncached_and_recomputed_runs_give_identical_metrics(world, tmp_path, capsys):
    tasks = [world.cls, world.ctc]
    first = evaluate([world.enc], tasks, None, cache=FeatureCache(tmp_path / "cache"), **FAST)
    again = evaluate([world.enc], tasks, None, cache=FeatureCache(tmp_path / "cache"), **FAST)
    memory = evaluate([world.enc], tasks, None, cache=False, **FAST)
    # s3prl's way, from the command line (`--recompute`: no cache at all, the encoder runs every epoch)
    out = tmp_path / "recomputed"
    argv = ["evaluate", "--encoder", str(world.enc), "--task", str(world.cls), str(world.ctc), "--out", str(out)]
    argv += ["--recompute", "--quiet", "--lrs", *map(str, FAST["lrs"]), "--epochs", str(FAST["epochs"])]
    assert cli_main([*argv, "--min-steps", "0", "--cache", str(tmp_path / "unused")]) == 0
    s3prl = json.loads((out / "results.json").read_text())
    assert s3prl["protocol"]["cache"] == "recompute" and not (tmp_path / "unused").exists()

    assert all(v == {"train": "miss", "dev": "miss", "test": "miss"} for v in statuses(first).values())
    assert all(v == {"train": "hit", "dev": "hit", "test": "hit"} for v in statuses(again).values())
    assert runs(first) == runs(again) == runs(memory) == runs(s3prl)
    # The cached runs ran the encoder once per split; the s3prl-style run once per epoch
    # (train + dev) and once for test, for every LR.
    cls_first, cls_s3prl = first["models"][0]["tasks"]["tones"], s3prl["models"][0]["tasks"]["tones"]
    assert cls_first["encoder_passes"] == 3 and again["models"][0]["tasks"]["tones"]["encoder_passes"] == 0
    # s3prl's way: every epoch (train + dev) and the final test pass, per LR; plus one pass for the
    # train-split feature statistics of the standardisation.
    assert cls_s3prl["encoder_passes"] == len(FAST["lrs"]) * (2 * FAST["epochs"] + 1) + 1


def test_cached_features_equal_the_encoder_run_on_each_utterance_alone(world, tmp_path):
    """Length-bucketed batched extraction must give each utterance what it gets alone."""
    enc = load_encoder(world.enc)
    source = open_source(world.enc)
    task = load_task(world.ctc)
    cfg = ProbeConfig(extract_batch_size=4)
    pooled = extract_features(source, load_task(world.cls), "train", "pooled", cfg, progress=False)
    frames = extract_features(source, task, "dev", "frames", cfg, progress=False)
    from speechft.data.audio import load_audio

    with torch.no_grad():
        for i, ex in enumerate(load_task(world.cls).split("train")[:4]):
            wav = torch.from_numpy(load_audio(ex.path))[None]
            out = enc(wav)
            want = torch.stack([mean_pool(s, out.frame_lengths) for s in out.hidden_states], 1)[0].numpy()
            np.testing.assert_allclose(pooled.data[i].astype(np.float32), want, rtol=2e-3, atol=2e-3)
        for i, ex in enumerate(task.split("dev")):
            wav = torch.from_numpy(load_audio(ex.path))[None]
            out = enc(wav)
            want = torch.stack([s[0] for s in out.hidden_states], 1).numpy()  # (F, S, D)
            got = frames.get(i).astype(np.float32)
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)


# ---- the cache is never silently wrong -----------------------------------------------
def _entries(cache_dir):
    return {
        p.name: json.loads((p / "meta.json").read_text())
        for p in cache_dir.iterdir()
        if p.is_dir() and (p / MARKER).exists()
    }


def _entry_for(cache_dir, task_name_dir, split):
    for key, meta in _entries(cache_dir).items():
        if meta["made_for"].endswith(f"{task_name_dir}/{split}"):
            return cache_dir / key
    raise AssertionError(f"no entry for {task_name_dir}/{split}")


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "no_marker", "bad_meta"])
def test_a_damaged_cache_entry_is_detected_and_rebuilt(world, tmp_path, capsys, damage):
    cache_dir = tmp_path / "cache"
    first = evaluate([world.enc], [world.ctc], None, cache=FeatureCache(cache_dir), **FAST)
    entry = _entry_for(cache_dir, "ctc", "train")
    shard = sorted(entry.glob("frames_*.npy"))[0]
    if damage == "flip_byte":
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size, one byte changed
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-100])
    elif damage == "no_marker":
        (entry / MARKER).unlink()
    else:
        (entry / "meta.json").write_text((entry / "meta.json").read_text().replace('"items"', '"itemz"'))
    capsys.readouterr()
    second = evaluate([world.enc], [world.ctc], None, cache=FeatureCache(cache_dir), **FAST)
    assert statuses(second)[("enc", "beeps")] == {"train": "miss", "dev": "hit", "test": "hit"}
    assert "unusable" in capsys.readouterr().err
    assert runs(second) == runs(first)
    # The rebuilt entry is whole again.
    third = evaluate([world.enc], [world.ctc], None, cache=FeatureCache(cache_dir), **FAST)
    assert statuses(third)[("enc", "beeps")] == {"train": "hit", "dev": "hit", "test": "hit"}


def test_changed_weights_manifest_or_dtype_never_reuse_old_features(tmp_path):
    enc_dir = tmp_path / "enc"
    tiny_encoder("hubert", seed=0).save(enc_dir)
    task_dir = make_classification_task(tmp_path / "cls", n_per_class=4)
    cache_dir = tmp_path / "cache"
    opts = dict(lrs=[1e-2], epochs=1, min_steps=0, progress=False)

    def status(**kw):
        r = evaluate([enc_dir], [task_dir], None, cache=FeatureCache(cache_dir), **{**opts, **kw})
        return r["models"][0]["tasks"]["tones"]["cache"]

    assert set(status().values()) == {"miss"}
    assert set(status().values()) == {"hit"}
    tiny_encoder("hubert", seed=1).save(enc_dir, overwrite=True)  # same folder, new weights
    assert set(status().values()) == {"miss"}
    lines = (task_dir / "dev.tsv").read_text().splitlines()
    (task_dir / "dev.tsv").write_text("\n".join([lines[0]] + lines[1:][::-1]) + "\n")  # reorder dev only
    assert status() == {"train": "hit", "dev": "miss", "test": "hit"}
    assert set(status(dtype="float32").values()) == {"miss"}


def _replace_test_clips_keeping_size_and_mtime(task_dir) -> None:
    """What `cp -p` / `rsync -a` / tar / zip of other recordings do: new audio of the same size
    under the same names, with the old mtimes restored. Each test clip gets the other class's tone."""
    for ex in load_task(task_dir).split("test"):
        st = ex.path.stat()
        n = sf.info(str(ex.path)).frames
        freq = 200.0 if ex.target == "high" else 800.0  # conftest's tones: low=200 Hz, high=800 Hz
        write_audio(ex.path, tone(freq, n / 16000, seed=99)[:n])
        assert ex.path.stat().st_size == st.st_size
        os.utime(ex.path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_clips_replaced_with_same_size_audio_and_restored_mtimes_are_a_cache_miss(tmp_path):
    """The issue's stale-cache scenario: with content fingerprints the replaced clips are a
    miss with the new audio's metrics (those of a --no-cache run); --trust-mtime documents the
    old, fooled behaviour (a hit, the old audio's features)."""
    enc_dir = tmp_path / "enc"
    tiny_encoder("hubert", seed=0).save(enc_dir)
    task_dir = make_classification_task(tmp_path / "cls", n_per_class=8)
    cache_dir = tmp_path / "cache"
    opts = dict(lrs=[1e-2], epochs=15, min_steps=0, progress=False)

    def run(**kw):
        return evaluate([enc_dir], [task_dir], None, cache=FeatureCache(cache_dir), **opts, **kw)

    before, before_trusting = run(), run(trust_mtime=True)
    assert set(statuses(before_trusting)[("enc", "tones")].values()) == {"miss"}  # its own keys
    _replace_test_clips_keeping_size_and_mtime(task_dir)

    after = run()
    assert statuses(after)[("enc", "tones")] == {"train": "hit", "dev": "hit", "test": "miss"}
    uncached = evaluate([enc_dir], [task_dir], None, cache=False, **opts)
    assert runs(after) == runs(uncached)
    assert after["models"][0]["tasks"]["tones"]["test"] != before["models"][0]["tasks"]["tones"]["test"]
    assert after["protocol"]["trust_mtime"] is False

    trusting = run(trust_mtime=True)
    assert set(statuses(trusting)[("enc", "tones")].values()) == {"hit"}
    assert runs(trusting) == runs(before_trusting)  # the old audio's numbers: why it is opt-in
    assert trusting["protocol"]["trust_mtime"] is True


def test_each_clip_is_hashed_once_per_evaluation_and_again_in_the_next(tmp_path, monkeypatch):
    import speechft.features as features

    task_dir = make_classification_task(tmp_path / "cls", n_per_class=2)
    hashed = []
    real = features.sha256_file
    monkeypatch.setattr(features, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    opts = dict(lrs=[1e-2], epochs=1, min_steps=0, progress=False)
    clips = sum(len(load_task(task_dir).split(s)) for s in ("train", "dev", "test"))
    for _ in range(2):  # two encoders share one evaluation's fingerprints; a new evaluation hashes again
        hashed.clear()
        evaluate(["fbank", "b=fbank"], [task_dir], None, cache=FeatureCache(tmp_path / "cache"), **opts)
        wavs = [h for h in hashed if h.endswith(".wav")]
        assert len(wavs) == len(set(wavs)) == clips


def test_trust_mtime_flag_reaches_results_json(world, tmp_path, capsys):
    out = tmp_path / "ev"
    argv = ["evaluate", "--encoder", "fbank", "--task", str(world.cls), "--out", str(out), "--quiet"]
    argv += ["--cache", str(tmp_path / "cache"), "--epochs", "1", "--lrs", "1e-2", "--trust-mtime"]
    assert cli_main(argv) == 0
    capsys.readouterr()
    assert json.loads((out / "results.json").read_text())["protocol"]["trust_mtime"] is True


def test_lru_eviction_keeps_the_cache_under_its_limit(tmp_path):
    root = tmp_path / "cache"
    arr = np.zeros(2000, dtype=np.float32)  # 8 kB + header per entry
    for i, key in enumerate(["a" * 32, "b" * 32, "c" * 32]):
        with FeatureCache(root, max_bytes=10**9).write(key, {"i": i}) as w:
            w.add("x", arr)
        os.utime(root / key / MARKER, (1000 + i, 1000 + i))  # a oldest, c newest
    assert FeatureCache(root).open("a" * 32) is not None  # a is used now: the newest
    one = FeatureCache(root).size() // 3
    small = FeatureCache(root, max_bytes=int(3.5 * one))
    with small.write("d" * 32, {"i": 3}) as w:
        w.add("x", arr)
    left = {p.name[0] for p in root.iterdir() if p.is_dir()}
    assert left == {"a", "c", "d"}  # b was the least recently used
    assert small.size() <= 3.5 * one


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    with pytest.raises(RuntimeError):
        with cache.write("e" * 32, {}) as w:
            w.add("x", np.ones(10))
            raise RuntimeError("killed mid-extraction")
    assert list((tmp_path / "cache").iterdir()) == []
    assert cache.open("e" * 32) is None


def test_feature_fields_name_everything_features_depend_on(world):
    fields = feature_fields(open_source(world.enc), load_task(world.cls), "train", "pooled", ProbeConfig())
    for key in ("source", "clips", "durations", "dtype", "code", "kind", "max_seconds", "torch"):
        assert key in fields
    # The clips, not the task: no targets, no task folder, no split name (tasks over one corpus share).
    assert not {"task_root", "manifest", "split"} & set(fields)
    assert fields["source"]["weights"] != feature_fields(
        FbankSource(), load_task(world.cls), "train", "pooled", ProbeConfig()
    )["source"].get("weights")


# ---- fbank and sources ---------------------------------------------------------------
def test_fbank_pseudo_encoder_frames_and_batch_exactness():
    src = FbankSource()
    rng = np.random.default_rng(0)
    a, b = (torch.from_numpy(rng.standard_normal(n).astype(np.float32) * 0.1) for n in (8000, 5000))
    wavs = torch.zeros(2, 8000)
    wavs[0], wavs[1, :5000] = a, b
    states, frames = src(wavs, torch.tensor([8000, 5000]))
    assert len(states) == 1 and states[0].shape == (2, 50, 80)
    assert frames.tolist() == [50, 31]
    alone, _ = src(b[None], torch.tensor([5000]))
    torch.testing.assert_close(states[0][1, :31], alone[0][0], rtol=1e-4, atol=1e-4)


def test_non_finite_features_are_refused(world):
    class Broken(FeatureSource):
        name, num_states, dim, fingerprint, info = "broken", 1, 4, {"kind": "broken"}, {}

        def __call__(self, wavs, lengths):
            f = lengths // 320
            return [torch.full((len(lengths), int(f.max()), 4), float("inf"))], f

    with pytest.raises(SpeechFTError, match="NaN or infinite"):
        extract_features(Broken(), load_task(world.cls), "dev", "pooled", ProbeConfig(), progress=False)


# ---- results.json, CLI, errors -------------------------------------------------------
def test_results_json_records_the_protocol_and_every_task(world, tmp_path):
    out = tmp_path / "eval"
    evaluate(
        [world.enc, "fbank"],
        [world.cls, world.ctc],
        out,
        cache=FeatureCache(tmp_path / "c"),
        lrs=[1e-2, 1e-3],
        epochs=2,
        min_steps=0,
        seeds=[0, 1],
        progress=False,
    )
    res = json.loads((out / "results.json").read_text())
    assert res["kind"] == "speechft-evaluation" and res["protocol"]["lrs"] == [1e-2, 1e-3]
    assert [m["name"] for m in res["models"]] == ["enc", "fbank"]
    enc, fbank = res["models"]
    assert enc["family"] == "hubert" and len(enc["fingerprint"]) == 64 and fbank["family"] == "fbank"
    for m, states in ((enc, 3), (fbank, 1)):
        assert set(m["tasks"]) == {"tones", "beeps"}
        for r in m["tasks"].values():
            assert r["chosen_lr"] in (1e-2, 1e-3)
            chosen = next(s for s in r["lr_search"] if s["lr"] == r["chosen_lr"])
            assert r["dev"] == pytest.approx(np.mean(chosen["dev_per_seed"]))
            assert len(r["test_per_seed"]) == 2
            assert r["test"] == pytest.approx(np.mean(r["test_per_seed"]))
            assert r["test_std"] == pytest.approx(np.std(r["test_per_seed"], ddof=1))
            others = [s["dev"] for s in r["lr_search"]]
            assert chosen["dev"] == (min(others) if r["lower_is_better"] else max(others))
            assert len(r["layer_weights"]) == states and sum(r["layer_weights"]) == pytest.approx(1.0)
            assert r["cache"] == {"train": "miss", "dev": "miss", "test": "miss"}
            assert r["n"]["train"] > 0
    assert "superb" in res and set(res["superb"]["scores"]) == {"enc", "fbank"}
    assert (out / "report.md").exists() and (out / "task_tones.png").exists()


def test_evaluate_cli_and_report_cli(world, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = [
        "evaluate",
        "--encoder",
        f"mine={world.enc}",
        "fbank",
        "--task",
        str(world.cls),
        "--out",
        str(out),
        "--lrs",
        "1e-2",
        "--epochs",
        "2",
        "--min-steps",
        "0",
        "--cache",
        str(tmp_path / "cache"),
        "--quiet",
    ]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "| mine |" in printed and "results.json" in printed
    assert [m["name"] for m in json.loads((out / "results.json").read_text())["models"]] == ["mine", "fbank"]
    assert cli_main(argv) == 2  # refuses to overwrite results.json
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main(["report", str(out / "results.json"), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.md").exists()


def test_small_training_sets_get_enough_steps(world):
    # 20 training clips at batch 8 = 3 steps an epoch: 2 epochs asked, 10 steps required -> 4 epochs.
    r = evaluate(
        [world.enc], [world.cls], None, cache=False, lrs=[1e-2], epochs=2, min_steps=10, batch_size=8, progress=False
    )
    assert r["models"][0]["tasks"]["tones"]["lr_search"][0]["epochs"] == 4
    r = evaluate(
        [world.enc], [world.cls], None, cache=False, lrs=[1e-2], epochs=2, min_steps=0, batch_size=8, progress=False
    )
    assert r["models"][0]["tasks"]["tones"]["lr_search"][0]["epochs"] == 2


def test_bad_inputs_raise_one_line_errors(world, tmp_path):
    with pytest.raises(SpeechFTError, match="lrs"):
        evaluate([world.enc], [world.cls], None, lrs=[-1.0], progress=False)
    with pytest.raises(SpeechFTError, match="epochs"):
        evaluate([world.enc], [world.cls], None, epochs=0, progress=False)
    with pytest.raises(SpeechFTError, match="not found"):
        evaluate([tmp_path / "nope"], [world.cls], None, cache=False, progress=False)
    with pytest.raises(SpeechFTError, match="same task name"):
        evaluate([world.enc], [world.cls, world.cls], None, cache=False, progress=False)
    with pytest.raises(SpeechFTError, match="ctc_head"):
        ProbeConfig(ctc_head="transformer")
    with pytest.raises(SpeechFTError, match="unknown probe option"):
        evaluate([world.enc], [world.cls], None, learning_rate=1e-3, progress=False)


# ---- one CLI grammar, one SUPERB_S ---------------------------------------------------
def superb_column(printed: str) -> dict[str, str]:
    """model -> the SUPERB_S cell of a printed results table."""
    lines = [ln for ln in printed.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    col = next(i for i, h in enumerate(header) if h.startswith("SUPERB_S"))
    cells = ([c.strip() for c in ln.strip("|").split("|")] for ln in lines[1:])
    return {c[0]: c[col] for c in cells if not c[0].startswith("---")}


def test_evaluate_with_a_score_config_then_report_print_the_same_superb_score(world, tmp_path, capsys):
    # Not the default config: numeric baseline and reference, so fbank does not score 0.
    score = tmp_path / "my_score.yaml"
    score.write_text("name: mine\ndefaults:\n  accuracy: {baseline: 20.0, reference: 60.0}\n")
    out = tmp_path / "e"
    argv = ["evaluate", "--encoder", world.enc, "fbank", "--task", world.cls, "--out", out, "--no-cache"]
    argv += ["--lrs", "1e-2", "--epochs", "2", "--min-steps", "0", "--score-config", score, "--quiet"]
    assert cli_main([str(a) for a in argv]) == 0
    evaluated = superb_column(capsys.readouterr().out)
    assert "n/a" not in evaluated.values()
    recorded = json.loads((out / "results.json").read_text())["score_config"]
    assert recorded["name"] == "mine" and recorded["values"]["defaults"]["accuracy"]["baseline"] == 20.0
    # The file changes afterwards: the report scores with what results.json recorded.
    score.write_text("name: changed\ndefaults:\n  accuracy: {baseline: 0.0, reference: 100.0}\n")
    assert cli_main(["report", str(out / "results.json"), "--out", str(tmp_path / "r")]) == 0
    reported = superb_column(capsys.readouterr().out)
    assert reported == evaluated and set(reported) == {"enc", "fbank"}
    assert "`mine`" in (tmp_path / "r" / "report.md").read_text()
    # ...and --score-config still chooses another one.
    assert (
        cli_main(
            ["report", str(out / "results.json"), "--out", str(tmp_path / "r2"), "--score-config", "superb_synthetic"]
        )
        == 0
    )
    assert superb_column(capsys.readouterr().out) != evaluated


def test_evaluate_takes_the_paper_probe_recipe_with_flags_and_set_over_it(world, tmp_path, capsys):
    recipe = Path(__file__).resolve().parents[1] / "configs" / "paper" / "probe-superb.yaml"
    out = tmp_path / "paper"
    argv = ["evaluate", "--encoder", "fbank", "--task", world.cls, "--out", out, "--no-cache", "--quiet"]
    argv += ["--config", recipe, "--seeds", "0", "1", "--set", "epochs=1", "lrs=[0.01]", "min_steps=0"]
    assert cli_main([str(a) for a in argv]) == 0, capsys.readouterr().err
    protocol = json.loads((out / "results.json").read_text())["protocol"]
    assert protocol["seeds"] == [0, 1]  # the flag over the recipe's [0, 1, 2]
    assert (protocol["epochs"], protocol["lrs"], protocol["min_steps"]) == (1, [0.01], 0)  # --set over both
    assert (protocol["proj_dim"], protocol["ctc_head"], protocol["dtype"]) == (256, "linear", "float16")  # the recipe


def test_evaluate_lists_are_space_separated_and_bad_keys_are_one_line_errors(world, tmp_path, capsys):
    base = ["evaluate", "--encoder", "fbank", "--task", str(world.cls), "--no-cache", "--quiet"]
    assert cli_main(base + ["--out", str(tmp_path / "a"), "--seeds", "0,1"]) == 2  # no comma lists
    assert "--seeds" in capsys.readouterr().err
    assert cli_main(base + ["--out", str(tmp_path / "b"), "--set", "learning_rate=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'learning_rate'" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_evaluate_refuses_a_device_it_does_not_have(world, tmp_path, capsys):
    out = tmp_path / "e"
    argv = ["evaluate", "--encoder", str(world.enc), "--task", str(world.cls), "--out", str(out), "--device", "cuda"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "--device cuda: CUDA is not available" in err and err.strip().count("\n") == 0
    assert not out.exists()
