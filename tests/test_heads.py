"""Task heads: the one tokeniser (data.tasks.Vocabulary, shared by Task and TaskHead) and the one CTC fit check
(heads.ctc_misfits, shared by finetune's refusal and doctor's report)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_ctc_task, tone

from speechft.data import load_task, write_task_folder
from speechft.data.audio import write_audio
from speechft.data.tasks import Vocabulary
from speechft.encoders import load_encoder
from speechft.errors import SpeechFTError
from speechft.heads import TaskHead, ctc_misfits, manifest_frames
from speechft.objective import Loop
from speechft.train import TaskObjective, TrainConfig, resolve_config


# ---- one tokeniser ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("tokenizer", ["space", "char"])
def test_head_tokenises_and_decodes_exactly_as_its_task(tmp_path, tokenizer):
    vocab = ["a", "b", "c"] + (["|"] if tokenizer == "char" else [])
    text = "a b c a" if tokenizer == "space" else "ab ca"
    wav = tmp_path / "x.wav"
    write_audio(wav, tone(300, 0.3))
    rows = [{"path": str(wav), "duration": 0.3, "transcript": text}]
    spec = {"name": "t", "type": "ctc", "metric": "per", "vocabulary": vocab, "tokenizer": tokenizer}
    spec["allow_outside_paths"] = True
    task = load_task(write_task_folder(tmp_path / "task", spec, {s: rows for s in ("train", "dev", "test")}))
    head = TaskHead.for_task(task, 8, 3)
    assert head.encode(text) == task.encode(text) == Vocabulary("ctc", vocab, tokenizer).encode(text)
    ids = task.encode(text)
    assert head.vocabulary.decode(ids) == task.decode(ids) == text
    # greedy decoding of a one-hot path spelling `ids` gives the transcript back, also from a saved head
    path = torch.full((1, 2 * len(ids), len(vocab) + 1), -30.0)
    for t, i in enumerate(ids):
        path[0, 2 * t, i] = 0.0  # token, then a blank: repeats stay separate
        path[0, 2 * t + 1, 0] = 0.0
    frames = torch.tensor([path.shape[1]])
    loaded = TaskHead.load(head.save(tmp_path / "head"))
    assert head.predict(path, frames) == loaded.predict(path, frames) == [text]
    meta = json.loads((tmp_path / "head" / "head.json").read_text())
    assert (meta["labels"], meta["tokenizer"]) == (vocab, tokenizer)  # head.json keeps its keys


def test_classification_vocabulary_is_the_label_index(cls_task):
    task = load_task(cls_task)
    head = TaskHead.for_task(task, 8, 3)
    for i, label in enumerate(task.labels):
        assert task.encode(label) == head.encode(label) == i
    logits = torch.eye(len(task.labels))
    assert head.predict(logits, torch.ones(len(task.labels))) == task.labels


# ---- one CTC fit check -------------------------------------------------------------------------------------
def boundary_task(root, encoder, below: bool):
    """A ctc task whose one clip sits at a frame boundary of `encoder`: its manifest duration is 0.4 samples
    short of the boundary (`below`=False: rounds up onto it, so the clip gets k frames and fits a k-token
    transcript) or 0.6 samples short (rounds down: k - 1 frames, one too few). int() would have truncated both."""
    n = next(n for n in range(401, 20000) if encoder.frame_lengths(torch.tensor([n, n - 1])).diff().item() == -1)
    k = int(encoder.frame_lengths(torch.tensor([n]))[0])
    duration = (n - (0.6 if below else 0.4)) / 16000
    wav = root.parent / f"{root.name}.wav"
    write_audio(wav, np.asarray(tone(300, n / 16000), dtype=np.float32))
    transcript = " ".join("ab"[i % 2] for i in range(k))  # k tokens, no repeats: needs exactly k frames
    rows = [{"path": str(wav), "duration": duration, "transcript": transcript}]
    spec = {"name": "edge", "type": "ctc", "metric": "per", "vocabulary": ["a", "b"], "tokenizer": "space"}
    spec["allow_outside_paths"] = True
    return write_task_folder(root, spec, {s: rows for s in ("train", "dev", "test")}), k


@pytest.mark.parametrize("below", [False, True])
def test_finetune_and_doctor_give_the_same_verdict_at_the_frame_boundary(tmp_path, tiny_encoder_dir, below):
    from speechft.doctor import check_ctc_frames

    enc_dir = tiny_encoder_dir("hubert")
    encoder = load_encoder(enc_dir)
    folder, k = boundary_task(tmp_path / "edge", encoder, below)
    task = load_task(folder)
    ex = task.split("train")[0]
    assert manifest_frames(encoder, [ex.duration]) == [k - 1 if below else k]
    misfits = ctc_misfits(encoder, task.split("train"), task.vocabulary)
    doctor_errors = [f for f in check_ctc_frames(enc_dir, folder) if f.level == "error"]
    objective = TaskObjective([task])
    cfg = resolve_config(TrainConfig())
    if below:
        assert [(m[1], m[2]) for m in misfits] == [(k - 1, k)]
        assert len(doctor_errors) == 3  # the one clip, in each split
        with pytest.raises(SpeechFTError, match=f"{k - 1} frames, needs {k} for CTC"):
            objective.build_heads(encoder, cfg, tmp_path / "run", Loop.single(), progress=False)
    else:
        assert misfits == [] and doctor_errors == []
        heads = objective.build_heads(encoder, cfg, tmp_path / "run", Loop.single(), progress=False)
        assert list(heads) == ["edge"]


def test_ctc_misfits_on_an_ordinary_task_is_empty(tmp_path, tiny_encoder_dir):
    task = load_task(make_ctc_task(tmp_path / "ctc"))
    assert ctc_misfits(load_encoder(tiny_encoder_dir("hubert")), task.split("train"), task.vocabulary) == []
