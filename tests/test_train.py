"""The fine-tuning engine: methods, schedule, outputs, resume, several processes.

Tiny random encoders and tiny synthetic tasks (conftest.py); every run is a handful of steps.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import cli, rows, weights
from safetensors.torch import load_file

from speechft.config import load_config
from speechft.data import load_task
from speechft.errors import SpeechFTError
from speechft.heads import TaskHead
from speechft.schedule import fraction_steps, lr_multiplier
from speechft.train import TaskObjective, TrainConfig, dev_score, finetune, load_tasks, micro_batches, resolve_config

FAST = ["data.batch_size=4", "eval.log_every=1", "head.proj_dim=16", "head.lstm_layers=0"]


def config(steps=10, *sets) -> TrainConfig:
    return load_config(TrainConfig, None, [f"steps={steps}", *FAST, *sets])


def encoder_part(ckpt_dir) -> dict[str, torch.Tensor]:
    """Encoder tensors of a resumable checkpoint (keys as in model.safetensors)."""
    t = load_file(str(Path(ckpt_dir) / "model.safetensors"))
    return {k[len("encoder.") :]: v for k, v in t.items() if k.startswith("encoder.")}


def distance(a: dict, b: dict) -> float:
    return math.sqrt(sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a))


def is_frontend(name: str) -> bool:
    return name.startswith("feature_extractor.")


# ---- pure functions --------------------------------------------------------------------------------------
def test_lr_schedule_values_at_0_10_50_100_percent():
    T = 1000
    assert lr_multiplier(0, T) == 0.0
    assert lr_multiplier(50, T) == pytest.approx(0.5)  # half-way through the warm-up
    assert lr_multiplier(100, T) == 1.0  # 10%: warm-up done
    assert lr_multiplier(300, T) == 1.0  # held
    assert lr_multiplier(499, T) == 1.0
    assert lr_multiplier(500, T) == 1.0  # 50%: decay starts here
    assert lr_multiplier(750, T) == pytest.approx(0.5)
    assert lr_multiplier(1000, T) == 0.0  # 100%
    assert lr_multiplier(999, T) == pytest.approx(0.002)
    # other shapes from the config
    assert lr_multiplier(0, T, warmup=0.0) == 1.0
    assert lr_multiplier(250, T, warmup=0.0, hold_until=0.0) == pytest.approx(0.75)


def test_fraction_steps_rounds_up_and_ignores_float_noise():
    assert fraction_steps(0.1, 20) == 2
    assert fraction_steps(0.2, 30) == 6  # 0.2 * 30 = 6.000000000000001
    assert fraction_steps(0.1, 5) == 1  # a frozen phase is at least one step when asked for
    assert fraction_steps(0.0, 100) == 0


def test_micro_batch_plans():
    assert micro_batches(0, ["a", "b"], "interleave", 2) == ["a", "a"]
    assert micro_batches(1, ["a", "b"], "interleave", 2) == ["b", "b"]
    assert micro_batches(7, ["a", "b"], "mixed", 2) == ["a", "b", "a", "b"]
    assert micro_batches(3, ["a"], "mixed", 3) == ["a", "a", "a"]


def test_dev_score_normalises_error_rates_and_accuracies():
    m = {"sid": {"metric": "accuracy", "value": 0.8}, "pr": {"metric": "per", "value": 0.3}}
    assert dev_score(m) == pytest.approx((0.8 + 0.7) / 2)
    # one task: the score orders checkpoints like the metric itself
    assert dev_score({"pr": {"metric": "per", "value": 0.2}}) > dev_score({"pr": {"metric": "per", "value": 0.3}})


def test_resolved_config_fills_method_defaults():
    assert resolve_config(TrainConfig(method="stable")).frozen_fraction == 0.1
    assert resolve_config(TrainConfig(method="regular")).frozen_fraction == 0.0
    c = resolve_config(config(50, "optim.lr=3e-5"))
    assert (c.optim.encoder_lr, c.optim.head_lr) == (3e-5, 3e-5)
    assert c.eval.every == 5 and c.checkpoint.every == 5


# ---- methods -----------------------------------------------------------------------------------------
def test_stable_frozen_phase_is_exact_then_the_encoder_trains(tmp_path, tiny_encoder_dir, cls_task):
    enc = tiny_encoder_dir("hubert")
    out = finetune(
        enc,
        [cls_task],
        tmp_path / "run",
        method="stable",
        config=config(20, "checkpoint.every=1", "checkpoint.keep_last=100", "checkpoint.keep_at_end=true"),
    )
    before = weights(enc)
    ck = out / "checkpoints"
    frozen = encoder_part(ck / "step-0000002")  # 10% of 20 steps
    assert frozen and all(torch.equal(frozen[k], before[k]) for k in frozen), "encoder moved in the frozen phase"
    head0, head2 = (load_file(str(ck / f"step-000000{s}" / "model.safetensors")) for s in (1, 2))
    assert any(not torch.equal(head0[k], head2[k]) for k in head0 if k.startswith("head.")), "head did not train"
    after = encoder_part(ck / "step-0000003")
    moved = [k for k in after if not torch.equal(after[k], before[k])]
    assert len(moved) == len(after), f"not all trainable encoder tensors moved after the boundary: {len(moved)}"
    final = weights(out)
    for k, v in before.items():
        if is_frontend(k) or k == "masked_spec_embed":
            assert torch.equal(final[k], v), f"{k} changed"
    log = rows(out, "train")
    assert [r["encoder_frozen"] for r in log[:3]] == [True, True, False]
    prov = json.loads((out / "speechft.json").read_text())
    assert prov["frozen_steps"] == 2 and prov["method"] == "stable"


class RecordingObjective(TaskObjective):
    """Fine-tuning's objective, noting at each step how the loop runs the encoder: its `training` flag, whether
    its features carry gradients, and whether two encodings of the same batch differ (dropout)."""

    def __init__(self, tasks):
        super().__init__(tasks)
        self.seen = []

    def build_heads(self, encoder, cfg, out, loop, progress):
        self.encoder = encoder
        return super().build_heads(encoder, cfg, out, loop, progress)

    def loss(self, encode, head, name, batch):
        a, b = (encode(batch.wavs, batch.lengths).hidden_states[-1] for _ in range(2))
        self.seen.append((self.encoder.training, a.requires_grad, not torch.equal(a, b)))
        return super().loss(encode, head, name, batch)


def test_frozen_phase_runs_the_encoder_in_training_mode_without_gradients(tmp_path, tiny_encoder_dir, cls_task):
    """As s3prl runs a trainable upstream: training mode (dropout on) from the first step; the frozen phase only
    withholds gradients (the weights staying bit-identical is pinned above)."""
    from speechft.engine import run_training

    objective = RecordingObjective(load_tasks([cls_task]))
    cfg = config(4, "frozen_fraction=0.5", "eval.every=100")
    run_training(tiny_encoder_dir("hubert"), tmp_path / "run", objective, cfg, progress=False)
    # (training mode, features with gradients, dropout changed the features): 2 frozen steps, then 2 trained
    assert objective.seen == [(True, False, True)] * 2 + [(True, True, True)] * 2


@pytest.mark.parametrize("family", ["wav2vec2", "whisper"])
def test_regular_trains_everything_but_the_front_end(tmp_path, tiny_encoder_dir, cls_task, family):
    from speechft.encoders import family_class, load_encoder

    enc = tiny_encoder_dir(family)
    out = finetune(enc, [cls_task], tmp_path / "run", method="regular", config=config(6, "eval.every=6"))
    before, after = weights(enc), weights(out)
    assert set(before) == set(after)
    cls = family_class(family)
    for k in before:
        if cls.is_frontend(k) or cls.is_pretraining_only(k) or cls.is_fixed(k):
            assert torch.equal(before[k], after[k]), f"front end/pre-training/fixed parameter {k} changed"
        else:
            assert not torch.equal(before[k], after[k]), f"{k} did not train"
    assert not (out / "checkpoints").exists()  # removed after a successful run by default
    for f in ("config.json", "speechft.json", "metrics.jsonl", "config.yaml", "curves.png", "run.json"):
        assert (out / f).exists(), f
    assert load_encoder(out).family == family
    head = TaskHead.load(out / "heads" / "tones")
    assert head.labels == ["low", "high"]


def test_l2sp_stays_closer_to_the_pretrained_weights_than_regular(tmp_path, tiny_encoder_dir, cls_task):
    enc = tiny_encoder_dir("hubert")
    cfg = config(8, "eval.every=8", "optim.lr=1e-3")
    reg = finetune(enc, [cls_task], tmp_path / "regular", method="regular", config=cfg)
    l2 = finetune(
        enc,
        [cls_task],
        tmp_path / "l2sp",
        method="l2sp",
        config=config(8, "eval.every=8", "optim.lr=1e-3", "l2sp_lambda=1000"),
    )
    theta0 = {k: v for k, v in weights(enc).items() if not is_frontend(k)}
    d_reg = distance(theta0, {k: weights(reg)[k] for k in theta0})
    d_l2 = distance(theta0, {k: weights(l2)[k] for k in theta0})
    assert 0 < d_l2 < 0.5 * d_reg, (d_l2, d_reg)
    assert "l2sp_distance" in rows(l2, "train")[-1]


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_lora_output_is_a_plain_encoder_matching_the_adapted_model(tmp_path, tiny_encoder_dir, cls_task, method):
    from peft import LoraConfig
    from peft.tuners.lora import LoraModel

    from speechft.encoders import load_encoder

    enc = tiny_encoder_dir("hubert")
    out = finetune(enc, [cls_task], tmp_path / "run", method=method, config=config(6, "eval.every=6", "optim.lr=1e-2"))
    before, after = weights(enc), weights(out)
    assert set(after) == set(before), "adapter tensors leaked into the encoder folder"
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all("attention" in k or "feed_forward" in k for k in changed), changed
    assert not any(is_frontend(k) for k in changed)

    merged = load_encoder(out)  # loads as an ordinary encoder
    adapted = load_encoder(enc)
    spec = json.loads((out / "adapter" / "adapter.json").read_text())
    LoraModel(
        adapted.model,
        LoraConfig(r=spec["rank"], lora_alpha=spec["alpha"], target_modules=spec["targets"], use_dora=spec["use_dora"]),
        "default",
    )
    missing, unexpected = adapted.model.load_state_dict(
        load_file(str(out / "adapter" / "adapter.safetensors")), strict=False
    )
    assert not unexpected and not [k for k in missing if "lora_" in k]
    adapted.eval()
    wavs = torch.randn(2, 16000) * 0.1
    lengths = torch.tensor([16000, 11000])
    with torch.no_grad():
        a, b = adapted(wavs, lengths), merged(wavs, lengths)
        base = load_encoder(enc)(wavs, lengths)
    for x, y in zip(a.hidden_states, b.hidden_states):
        torch.testing.assert_close(x, y, atol=2e-5, rtol=1e-4)
    assert not torch.allclose(base.hidden_states[-1], b.hidden_states[-1], atol=1e-4)


def test_early_stop_returns_the_checkpoint_at_20_percent(tmp_path, tiny_encoder_dir, cls_task):
    enc = tiny_encoder_dir("hubert")
    full = finetune(
        enc,
        [cls_task],
        tmp_path / "stable",
        method="stable",
        config=config(
            20, "checkpoint.every=4", "checkpoint.keep_last=10", "checkpoint.keep_at_end=true", "eval.every=4"
        ),
    )
    early = finetune(enc, [cls_task], tmp_path / "early", method="early-stop", config=config(20, "eval.every=100"))
    at4 = encoder_part(full / "checkpoints" / "step-0000004")
    got = weights(early)
    assert all(torch.equal(got[k], v) for k, v in at4.items())
    later = encoder_part(full / "checkpoints" / "step-0000016")
    assert not any(torch.equal(later[k], v) for k, v in at4.items())  # the full run went on changing it
    prov = json.loads((early / "speechft.json").read_text())
    assert (prov["best_step"], prov["steps_run"], prov["steps"]) == (4, 4, 20)
    # the schedule is the full run's: LR at step 3 (of 20) equals the stable run's
    assert rows(early, "train")[-1]["lr_encoder"] == rows(full, "train")[3]["lr_encoder"]


def test_best_on_dev_checkpoint_is_the_result(tmp_path, tiny_encoder_dir, cls_task):
    enc = tiny_encoder_dir("hubert")
    # A high LR makes the dev accuracy of this tiny task jump around, so the best step is not the last.
    out = finetune(
        enc,
        [cls_task],
        tmp_path / "run",
        method="regular",
        config=config(
            12,
            "optim.lr=3e-2",
            "eval.every=1",
            "checkpoint.every=1",
            "checkpoint.keep_last=100",
            "checkpoint.keep_at_end=true",
            "seed=1",
        ),
    )
    dev = rows(out, "dev")
    scores = [r["score"] for r in dev]
    expected = dev[scores.index(max(scores))]["step"]  # the earliest of equal best scores
    prov = json.loads((out / "speechft.json").read_text())
    assert prov["best_step"] == expected and prov["dev_score"] == max(scores)
    assert expected < 12, f"precondition: this scenario should peak before the end (scores {scores})"
    best = load_file(str(out / "checkpoints" / f"step-{expected:07d}" / "model.safetensors"))
    got = weights(out)
    assert all(torch.equal(got[k[len("encoder.") :]], v) for k, v in best.items() if k.startswith("encoder."))
    head = load_file(str(out / "heads" / "tones" / "head.safetensors"))
    assert all(torch.equal(head[k[len("head.tones.") :]], v) for k, v in best.items() if k.startswith("head.tones."))


def test_multitask_one_head_per_task_and_mean_normalised_dev_score(tmp_path, tiny_encoder_dir, cls_task, ctc_task):
    enc = tiny_encoder_dir("hubert")
    out = finetune(
        enc,
        [cls_task, ctc_task],
        tmp_path / "run",
        method="regular",
        config=config(
            4, "data.multitask=mixed", "eval.every=4", "optim.grad_accum=2", "head.layers=weighted", "precision=bf16"
        ),
    )
    assert TaskHead.load(out / "heads" / "tones").task_type == "classification"
    assert TaskHead.load(out / "heads" / "beeps").task_type == "ctc"
    prov = json.loads((out / "speechft.json").read_text())
    m = prov["dev_metrics"]
    assert prov["dev_score"] == pytest.approx((m["tones"]["value"] + 1 - m["beeps"]["value"]) / 2, abs=1e-6)
    first = rows(out, "train")[0]
    assert set(first["task_loss"]) == {"tones", "beeps"}  # mixed: both tasks in every step
    assert first["utterances"] == 2 * 2 * 4  # 2 tasks x 2 accumulated micro-batches x batch 4
    layer_weights = TaskHead.load(out / "heads" / "tones").select.layer_weights()  # head.layers=weighted
    assert len(layer_weights) == 3 and abs(sum(layer_weights) - 1) < 1e-6


# ---- errors and run-folder rules -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--method", "sgd"], "unknown; choose one of stable"),
        (["--steps", "0"], "steps=0"),
        (["--set", "optim.encoder_lr=-1"], "optim.encoder_lr=-1.0"),
        (["--set", "optim.lr=nan"], "optim.lr=nan"),
        (["--set", "optim.lr=5"], "optim.lr=5.0"),
        (["--set", "optim.learning_rate=1e-4"], "unknown key 'learning_rate'"),
        (["--set", "frozen_fraction=1.0"], "frozen_fraction=1.0"),
    ],
)
def test_bad_options_give_one_line_errors(tmp_path, tiny_encoder_dir, cls_task, capsys, extra, needle):
    rc = cli("finetune", "--encoder", tiny_encoder_dir("hubert"), "--task", cls_task, "--out", tmp_path / "o", *extra)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "o").exists()


def test_cli_yaml_recipe_with_set_overrides_is_stored_resolved(tmp_path, tiny_encoder_dir, cls_task, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "method: l2sp\nsteps: 4\nl2sp_lambda: 0.5\noptim:\n  lr: 5.0e-5\n  head_lr: 1e-3\n"
        "data:\n  batch_size: 4\nhead:\n  proj_dim: 16\n  layers: weighted\n"
    )
    out = tmp_path / "run"
    rc = cli(
        "finetune",
        "--encoder",
        tiny_encoder_dir("hubert"),
        "--task",
        cls_task,
        "--out",
        out,
        "--config",
        recipe,
        "--set",
        "optim.clip=0.5",
        "--steps",
        "3",
    )
    assert rc == 0
    assert f"to {out}" in capsys.readouterr().out  # says where it wrote
    stored = load_config(TrainConfig, out / "config.yaml")
    assert (stored.method, stored.steps, stored.l2sp_lambda) == ("l2sp", 3, 0.5)
    assert (stored.optim.lr, stored.optim.encoder_lr, stored.optim.head_lr, stored.optim.clip) == (
        5e-5,
        5e-5,
        1e-3,
        0.5,
    )
    assert stored.head.layers == "weighted" and stored.frozen_fraction == 0.0
    prov = json.loads((out / "speechft.json").read_text())
    assert prov["config"]["optim"]["head_lr"] == 1e-3 and prov["method"] == "l2sp"
    last = rows(out, "train")[-1]  # separate LRs, one schedule
    assert last["lr_heads"] / last["lr_encoder"] == pytest.approx(20.0)


def test_run_folder_rules(tmp_path, tiny_encoder_dir, cls_task, capsys):
    enc = tiny_encoder_dir("hubert")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(SpeechFTError, match="already exists"):
        finetune(enc, [cls_task], tmp_path / "taken", config=config(2))
    with pytest.raises(SpeechFTError, match="not a speechft run folder"):
        finetune(enc, [cls_task], tmp_path / "taken", config=config(2), overwrite=True)
    with pytest.raises(SpeechFTError, match="no run to resume"):
        finetune(enc, [cls_task], tmp_path / "taken", resume=True)
    out = finetune(enc, [cls_task], tmp_path / "run", config=config(2, "optim.encoder_lr=5e-3"))
    assert "looks like a probing LR" in capsys.readouterr().err
    finetune(enc, [cls_task], out, config=config(2), overwrite=True)  # a finished run may be replaced
    assert finetune(enc, [cls_task], out, resume=True) == out  # already finished: nothing to do

    (out / "speechft.json").unlink()  # as if it had been interrupted
    with pytest.raises(SpeechFTError, match="steps is 3 here but 2 in"):
        finetune(enc, [cls_task], out, config=config(3), resume=True)
    other = tmp_path / "other_task"
    from conftest import make_classification_task

    make_classification_task(other, seed=5)
    with pytest.raises(SpeechFTError, match="task manifests differ"):
        finetune(enc, [other], out, resume=True)


# ---- kill and resume -----------------------------------------------------------------------------------
RESUME_SETS = [
    "data.batch_size=4",
    "eval.log_every=5",
    "eval.every=10",
    "checkpoint.every=5",
    "deterministic=true",
    "head.proj_dim=16",
]


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_encoder_dir, cls_task):
    enc = tiny_encoder_dir("hubert")
    steps = 40
    ref = finetune(
        enc,
        [cls_task],
        tmp_path / "ref",
        method="stable",
        config=load_config(TrainConfig, None, [f"steps={steps}", *RESUME_SETS]),
    )

    run = tmp_path / "killed"
    argv = [
        sys.executable,
        "-m",
        "speechft",
        "finetune",
        "--encoder",
        str(enc),
        "--task",
        str(cls_task),
        "--method",
        "stable",
        "--out",
        str(run),
        "--steps",
        str(steps),
    ]
    for s in RESUME_SETS:
        argv += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "latest.json").exists():
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "speechft.json").exists(), "the run finished before it could be killed"
    killed_at = json.loads((run / "checkpoints" / "latest.json").read_text())["step"]
    assert killed_at < steps

    # --resume alone: the stored config.yaml is the one that counts
    resume = [*argv[:3], "finetune", "--encoder", str(enc), "--task", str(cls_task), "--out", str(run), "--resume"]
    res = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resuming {run} from step" in res.stdout
    a, b = weights(ref), weights(run)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    ha, hb = (load_file(str(d / "heads" / "tones" / "head.safetensors")) for d in (ref, run))
    assert all(torch.equal(ha[k], hb[k]) for k in ha)
    la, lb = rows(ref, "train"), rows(run, "train")
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]  # the log was cut back to the checkpoint and replayed


# ---- training crops (data.crop) ------------------------------------------------------------------------
def test_training_crops_differ_between_epochs_and_replay_after_a_crash(
    tmp_path, tiny_encoder_dir, cls_task, monkeypatch
):
    """Clips of 0.5-1.0 s, data.max_seconds=0.4: every training clip is cropped at a random start, drawn anew
    each epoch (s3prl's SID dataset), and a run resumed after dying mid-epoch is fed exactly the crops the
    uninterrupted run was; dev clips are scored whole."""
    import numpy as np

    import speechft.data.dataset as dataset
    import speechft.train as train
    from speechft.data.audio import load_audio

    seen = []
    real_getitem = dataset.SplitDataset.__getitem__

    def spy(self, i):
        item = real_getitem(self, i)
        seen.append((self.split, self.epoch, i, item[0]))
        return item

    monkeypatch.setattr(dataset.SplitDataset, "__getitem__", spy)
    enc = tiny_encoder_dir("hubert")
    sets = ["data.max_seconds=0.4", "eval.every=4", "checkpoint.every=3", "deterministic=true"]
    ref = finetune(enc, [cls_task], tmp_path / "ref", method="regular", config=config(8, *sets))
    ref_seen, seen[:] = list(seen), []
    train_items = [(e, i, w) for split, e, i, w in ref_seen if split == "train"]
    assert len(train_items) == 8 * 4 and {e for e, _, _ in train_items} == {0, 1, 2}  # 12 clips, batches of 4
    examples = load_task(cls_task).split("train")

    def start(i, wav):  # where the crop sits in its clip, found by search (not by the dataset's own rule)
        full = load_audio(examples[i].path)
        found = [s for s in np.flatnonzero(full == wav[0]) if np.array_equal(full[s : s + len(wav)], wav)]
        assert len(wav) == int(0.4 * 16000) and len(found) == 1
        return int(found[0])

    starts = {(e, i): start(i, w) for e, i, w in train_items}
    assert all(starts[0, i] != starts[1, i] for i in range(len(examples))), "a clip got the same crop twice"
    assert any(s > 0 for s in starts.values()), "every crop starts at 0: not random"
    dev = load_task(cls_task).split("dev")
    dev_items = [(i, w) for split, _, i, w in ref_seen if split == "dev"]
    assert dev_items and all(np.array_equal(w, load_audio(dev[i].path)) for i, w in dev_items)

    real_loss, calls = train.TaskObjective.loss, []

    def crash_at_step_5(self, *a, **kw):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt  # as if killed during step 5 (0-based), mid-epoch 1; step 3 is checkpointed
        return real_loss(self, *a, **kw)

    monkeypatch.setattr(train.TaskObjective, "loss", crash_at_step_5)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        finetune(enc, [cls_task], run, method="regular", config=config(8, *sets))
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 3
    monkeypatch.setattr(train.TaskObjective, "loss", real_loss)
    seen[:] = []
    finetune(enc, [cls_task], run, resume=True)
    replayed = [(e, i, w) for split, e, i, w in seen if split == "train"]
    expected = train_items[3 * 4 :]  # steps 3..7 of the uninterrupted run
    assert [(e, i) for e, i, _ in replayed] == [(e, i) for e, i, _ in expected]
    assert all(np.array_equal(a, b) for (_, _, a), (_, _, b) in zip(replayed, expected)), "other crops on resume"
    a, b = weights(ref), weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"


# ---- two processes -------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, cls_task, ctc_task):
    """`accelerate launch` with 2 CPU processes (gloo), global batch 4 = 2 per process, against 1 process with
    batch 4: the same losses to rtol 1e-4 and weights to atol 1e-5 (only float summation order differs; dropout
    is off so both see the same computation; measured: losses equal to the 6 logged decimals, weights within
    1e-8). Two tasks interleaved, so every step leaves one head unused. The stable method's frozen phase works
    under DDP: the encoder is bit-identical after it and has moved at the end."""
    from speechft.encoders import tiny_encoder

    enc = tmp_path / "enc"
    tiny_encoder(
        "hubert", seed=0, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0
    ).save(enc)
    sets = [
        "data.batch_size=4",
        "eval.log_every=1",
        "eval.every=6",
        "checkpoint.every=1",
        "checkpoint.keep_last=10",
        "checkpoint.keep_at_end=true",
        "head.dropout=0.0",
        "head.proj_dim=16",
        "head.lstm_layers=1",
        "head.lstm_hidden=16",
        "frozen_fraction=0.3",
    ]
    one = finetune(
        enc,
        [cls_task, ctc_task],
        tmp_path / "one",
        method="stable",
        config=load_config(TrainConfig, None, ["steps=6", *sets]),
    )
    two = tmp_path / "two"
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
        "finetune",
        "--encoder",
        str(enc),
        "--task",
        str(cls_task),
        str(ctc_task),
        "--method",
        "stable",
        "--out",
        str(two),
        "--steps",
        "6",
        "--device",
        "cpu",  # under accelerate launch the launcher assigns the devices, and says so
        "--set",
        *sets,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "unused" not in res.stderr.lower()
    assert res.stderr.count("--device cpu is ignored under accelerate launch") == 1  # the main process says it
    assert [r["task_loss"].keys() for r in rows(two, "train")][:2] == [{"tones"}, {"beeps"}]  # interleaved

    l1, l2 = [r["loss"] for r in rows(one, "train")], [r["loss"] for r in rows(two, "train")]
    assert len(l1) == len(l2) == 6
    assert l1 == pytest.approx(l2, rel=1e-4)
    w1, w2 = weights(one), weights(two)
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=1e-4)
    before = weights(enc)
    frozen = encoder_part(two / "checkpoints" / "step-0000002")  # 30% of 6 steps
    assert all(torch.equal(frozen[k], before[k]) for k in frozen)
    last = encoder_part(two / "checkpoints" / "step-0000005")
    assert all(not torch.equal(last[k], before[k]) for k in last), "the encoder did not train after the boundary"


# ---- resuming on another number of processes -------------------------------------------------------------
def test_a_stream_position_means_the_same_on_any_number_of_processes(tmp_path):
    """9 clips in batches of 4: every epoch has one 1-clip batch, which 2 processes skip (each needs an item)
    and 1 process takes. A position written by 2 processes and read by 1 (and back) continues the epoch at the
    batch it stopped at: nothing repeated, nothing the new number of processes can use left out."""
    from conftest import make_classification_task

    from speechft.train import DataConfig, TaskStream

    task = load_task(make_classification_task(tmp_path / "t", n_per_class=3, classes=("a", "b", "c")))

    def stream(rank, world, seed):
        return TaskStream(task, DataConfig(batch_size=4), seed, rank, world, torch.device("cpu"))

    # a seed whose epoch 1 starts with its 1-clip batch: a position counted after skipping would be off by one
    seed = next(s for s in range(100) if len(stream(0, 1, s).sampler.batches(1)[0]) == 1)
    plan = stream(0, 1, seed).sampler.batches
    assert [len(b) for b in plan(0)].count(1) == 1 and len(plan(1)[0]) == 1

    two = [stream(r, 2, seed) for r in (0, 1)]
    for want in [b for b in plan(0) + plan(1) if len(b) > 1][:3]:  # 3 steps on 2 processes
        got = [next(s)[0].indices for s in two]
        assert sorted(got[0] + got[1]) == sorted(want)
    assert two[0].position == two[1].position == [1, 2]  # epoch 1, after its (skipped) batch 0 and batch 1

    one = stream(0, 1, seed)
    one.seek(*two[0].position)
    for want in plan(1)[2:] + plan(2):  # 1 process: the rest of epoch 1, then all of epoch 2 (its 1-clip batch too)
        assert sorted(next(one)[0].indices) == sorted(want)

    back = [stream(r, 2, seed) for r in (0, 1)]  # and back: 1 process stopped just before the 1-clip batch
    for s in back:
        s.seek(1, 0)
    got = [next(s)[0].indices for s in back]
    assert sorted(got[0] + got[1]) == sorted(plan(1)[1]) and back[0].position == [1, 2]


def test_resuming_on_more_processes_than_the_batch_is_refused_in_one_line(
    tmp_path, tiny_encoder_dir, cls_task, monkeypatch
):
    import speechft.engine as engine
    import speechft.train as train

    enc, run = tiny_encoder_dir("hubert"), tmp_path / "run"
    real_loss, calls = train.TaskObjective.loss, []

    def crash_at_step_3(self, *a, **kw):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_loss(self, *a, **kw)

    monkeypatch.setattr(train.TaskObjective, "loss", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        finetune(enc, [cls_task], run, config=config(6, "data.batch_size=4", "checkpoint.every=2"))
    monkeypatch.setattr(train.TaskObjective, "loss", real_loss)

    class EightProcesses:  # rank 0 of 8, as accelerate's PartialState would say; the check comes before any collective
        num_processes, process_index, is_main_process = 8, 0, True

        def wait_for_everyone(self):
            pass

    monkeypatch.setattr(engine, "start_processes", lambda name: (EightProcesses(), torch.device("cpu")))
    with pytest.raises(SpeechFTError) as e:
        finetune(enc, [cls_task], run, resume=True)
    assert str(e.value) == (
        "data.batch_size=4 is smaller than the 8 processes; it is the global batch, split across them: "
        "run on at most 4 processes"
    )
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 2  # the run is still resumable


@pytest.mark.slow
def test_two_processes_resumed_on_one_keep_the_effective_batch(tmp_path, cls_task, capsys):
    """A 2-process run (accelerate launch, gloo, global batch 4 = 2 per process, --log-with tensorboard),
    taken as killed after its step-3 checkpoint and resumed on 1 process (4 per process): the same global
    batches in the same order, the same effective batch, the same 6 steps, so the same losses to rtol 1e-4 and
    weights to atol 1e-5 as the 2-process run (dropout off; float summation order differs)."""
    import importlib.util
    import shutil

    from speechft.encoders import tiny_encoder

    enc = tmp_path / "enc"
    tiny_encoder(
        "hubert", seed=0, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0
    ).save(enc)
    sets = ["data.batch_size=4", "eval.log_every=1", "eval.every=3", "checkpoint.every=1", "checkpoint.keep_last=10"]
    sets += ["checkpoint.keep_at_end=true", "head.dropout=0.0", "head.proj_dim=16"]
    trackers = ["--log-with", "tensorboard"] if importlib.util.find_spec("tensorboard") else []
    two = tmp_path / "two"
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    argv += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    argv += ["--main_process_port", str(free_port()), "-m", "speechft", "finetune", "--encoder", str(enc)]
    argv += ["--task", str(cls_task), "--method", "regular", "--out", str(two), "--steps", "6", *trackers]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([*argv, "--set", *sets], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    if trackers:  # only the main process logs: one event file
        assert len(list((two / "trackers" / "speechft").glob("events.out.tfevents.*"))) == 1

    killed = tmp_path / "killed"  # the run folder as a kill right after the step-3 checkpoint leaves it
    killed.mkdir()
    for name in ("run.json", "config.yaml", "metrics.jsonl"):
        shutil.copy(two / name, killed / name)
    for step in (1, 2, 3):
        shutil.copytree(two / "checkpoints" / f"step-{step:07d}", killed / "checkpoints" / f"step-{step:07d}")
    (killed / "checkpoints" / "latest.json").write_text(json.dumps({"step": 3, "dir": "step-0000003"}))
    state = json.loads((killed / "checkpoints" / "step-0000003" / "state.json").read_text())
    assert len(state["rng"]) == 2 and state["best"]["dir"] == "best-0000003"  # by 2 processes, after a dev eval
    shutil.copytree(two / "checkpoints" / "best-0000003", killed / "checkpoints" / "best-0000003")

    capsys.readouterr()
    finetune(enc, [cls_task], killed, resume=True, progress=False)
    err = capsys.readouterr().err
    assert (
        "resuming a 2-process run on 1 process: the effective batch is unchanged (data.batch_size=4 is the global "
        "batch, now up to 4 per process instead of 2; x optim.grad_accum=1: 4 utterances per update)" in err
    )
    l2, l1 = [r["loss"] for r in rows(two, "train")], [r["loss"] for r in rows(killed, "train")]
    assert len(l1) == len(l2) == 6 and l1[:3] == l2[:3]
    assert l1[3:] == pytest.approx(l2[3:], rel=1e-4)
    assert json.loads((killed / "speechft.json").read_text())["steps_run"] == 6
    w2, w1 = weights(two), weights(killed)
    for k in w2:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=1e-4)
