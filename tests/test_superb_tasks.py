"""The SUPERB task types beyond ctc and classification: slot filling (SF) and speaker verification (ASV).

Each: its task-folder rules, its metrics on hand-computed cases, and an end-to-end `speechft evaluate`
on a tiny task folder with a tiny random encoder that writes the metrics into results.json.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import cli, tone

from speechft.data import load_task
from speechft.data.audio import write_audio
from speechft.data.tasks import Vocabulary, write_task_folder
from speechft.errors import SpeechFTError
from speechft.probe_sf import plain_text, slot_type_f1, slot_value_cer, slots

FAST = ["--lrs", "1e-2", "--epochs", "2", "--min-steps", "0", "--quiet", "--no-cache"]


# ---- slot filling ----------------------------------------------------------------------------
def test_slot_parsing_and_plain_text():
    text = "wake me at B-time seven am E-time in B-city new york E-city"
    assert slots(text) == {"time": ["seven am"], "city": ["new york"]}
    assert plain_text(text) == "wake me at seven am in new york"
    assert slots("B-time seven E-city") == {}  # a slot closes with its own type
    assert slots("play B-artist abba E-artist and B-artist queen E-artist") == {"artist": ["abba", "queen"]}


def test_slot_type_f1_by_hand():
    refs = [
        "at B-time seven E-time in B-city oslo E-city",  # types {time, city}
        "B-artist abba E-artist",  # {artist}
        "hello there",  # none
        "hello there",  # none
    ]
    hyps = [
        "at B-time seven E-time B-artist x E-artist",  # {time, artist}: P = 1/2, R = 1/2 -> 0.5
        "B-artist abbey E-artist",  # same type, wrong value: 1.0
        "hello there",  # none and none: 1.0
        "B-city oslo E-city",  # a slot where there is none: 0.0
    ]
    assert slot_type_f1(refs, hyps) == pytest.approx((0.5 + 1.0 + 1.0 + 0.0) / 4)


def test_slot_value_cer_by_hand():
    refs = ["B-time seven E-time B-city oslo E-city", "B-artist abba E-artist"]
    hyps = ["B-time seven E-time", "B-artist abbey E-artist B-artist zz E-artist"]
    # time: "seven" vs "seven" 0 edits (5 chars); city: "oslo" vs "" 4 edits (4 chars);
    # artist: best of "abbey" (2 edits) and "zz" (4 edits) vs "abba" (4 chars) -> 2 edits.
    assert slot_value_cer(refs, hyps) == pytest.approx((0 + 4 + 2) / (5 + 4 + 4))
    with pytest.raises(ValueError, match="no slot value"):  # undefined (metrics_superb), never a silent 0
        slot_value_cer(["no slots here"], ["B-x y E-x"])


def test_slots_tokenizer_round_trip():
    v = Vocabulary("ctc", ["|", "a", "b", "m", "B-t", "E-t"], "slots")
    text = "ab B-t ma E-t b"
    toks = v.tokens(text)
    assert toks == ["a", "b", "|", "B-t", "|", "m", "a", "|", "E-t", "|", "b"]
    assert v.decode(v.encode(text)) == text
    # markers emitted without separators around them still read as words
    ids = [v.encode(x)[0] for x in ("a", "B-t", "m", "E-t")]
    assert v.decode(ids) == "a B-t m E-t"


TONES = {"a": 300.0, "b": 900.0, "c": 2000.0}


def make_sf_task(root, n: int = 8, seed: int = 0, **spec_over):
    """Letters as tones; the one slot type `x` holds the letters spoken between two 3.5 kHz beeps."""
    rng = np.random.default_rng(seed)
    audio = root.parent / f"{root.name}_audio"
    audio.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split in ("train", "dev", "test"):
        rows = []
        for k in range(n if split == "train" else max(2, n // 2)):
            before, value = rng.choice(list(TONES), size=2), rng.choice(list(TONES), size=2)
            beep = tone(3500.0, 0.1, seed=k)
            wav = np.concatenate(
                [tone(TONES[c], 0.2, seed=k + j) for j, c in enumerate(before)]
                + [beep]
                + [tone(TONES[c], 0.2, seed=k + 5 + j) for j, c in enumerate(value)]
                + [beep]
            )
            path = audio / f"{split}_{k}.wav"
            write_audio(path, wav)
            transcript = f"{''.join(before)} B-x {''.join(value)} E-x"
            duration = round(len(wav) / 16000, 3)
            rows.append({"path": f"audio/{path.name}", "duration": duration, "transcript": transcript})
        splits[split] = rows
    spec = {"name": "sf", "type": "ctc", "tokenizer": "slots", "vocabulary": ["|", *TONES, "B-x", "E-x"]}
    return write_task_folder(root, {**spec, **spec_over}, splits, audio_dir=audio)


def test_slot_task_folder_rules(tmp_path):
    task = load_task(make_sf_task(tmp_path / "sf"))
    assert task.metric == "slot_type_f1" and task.tokenizer == "slots"  # the default metric of a slot task
    assert "B-x" in task.tokens(task.split("train")[0].target)
    for over, needle in [
        ({"vocabulary": ["|", "a", "b", "c", "B-x"]}, "no partner"),
        ({"vocabulary": ["|", "a", "b", "c", "B-x", "E-x", "ab"]}, "slot markers B-type/E-type"),
        ({"metric": "cer"}, "is scored by slot_type_f1 or slot_value_cer"),
    ]:
        with pytest.raises(SpeechFTError, match=needle):
            load_task(make_sf_task(tmp_path / f"bad{len(str(over))}", **over))
    plain = make_sf_task(tmp_path / "plain", tokenizer="char", vocabulary=["|", "a", "b", "c", "B", "E", "-", "x"])
    (plain / "task.yaml").write_text((plain / "task.yaml").read_text() + "metric: slot_value_cer\n")
    with pytest.raises(SpeechFTError, match="needs tokenizer: slots"):
        load_task(plain)
    # a test split with no tagged slot: slot-value CER would divide by zero; one line naming the file instead
    sf = make_sf_task(tmp_path / "noslot")
    rows = (sf / "test.tsv").read_text().splitlines()
    (sf / "test.tsv").write_text("\n".join([rows[0]] + [r.split(" B-x")[0] for r in rows[1:]]) + "\n")
    with pytest.raises(SpeechFTError, match=r"noslot/test.tsv: no transcript holds a slot value"):
        load_task(sf)


def test_evaluate_scores_a_slot_task_with_both_metrics(tmp_path, tiny_encoder_dir):
    sf_dir = make_sf_task(tmp_path / "sf")
    out = tmp_path / "out"
    assert cli("evaluate", "--encoder", tiny_encoder_dir("hubert"), "--task", sf_dir, "--out", out, *FAST) == 0
    r = json.loads((out / "results.json").read_text())["models"][0]["tasks"]["sf"]
    assert r["metric"] == "slot_type_f1" and not r["lower_is_better"]
    assert set(r["metrics"]) == {"slot_type_f1", "slot_value_cer"}
    assert r["test"] == r["metrics"]["slot_type_f1"] and 0.0 <= r["test"] <= 1.0
    assert r["metrics"]["slot_value_cer"] >= 0.0 and r["chosen_lr"] == 1e-2
    assert len(r["layer_weights"]) == r["num_states"] and r["n"] == {"train": 8, "dev": 4, "test": 4}
    assert "sf" in (out / "report.md").read_text()


# ---- speaker verification -----------------------------------------------------------------------
def test_min_dcf_by_hand():
    from speechft.probe_asv import min_dcf

    scores, same = [0.9, 0.8, 0.7, 0.1], [True, False, True, False]
    # thresholds 0.1, 0.7, 0.8, 0.9, inf: (p_miss, p_fa) = (0, 1), (0, .5), (.5, .5), (.5, 0), (1, 0)
    # C_det = 0.01 p_miss + 0.99 p_fa -> minimum at t = 0.9: 0.005; normalised by 0.01 -> 0.5
    assert min_dcf(scores, same) == pytest.approx(0.5)
    assert min_dcf([0.9, 0.1], [True, False]) == 0.0


def make_asv_task(
    root, speakers=(("s1", 200), ("s2", 450), ("s3", 800), ("s4", 1300)), held=(("h1", 300), ("h2", 1000))
):
    """Speakers are tones of their own pitch; dev and test speakers never speak in train."""
    audio = root.parent / f"{root.name}_audio"
    audio.mkdir(parents=True, exist_ok=True)
    splits, files = {}, {}
    for split, voices, n in (("train", speakers, 3), ("dev", held, 2), ("test", held, 2)):
        rows = []
        for spk, f0 in voices:
            for k in range(n):
                path = audio / f"{split}_{spk}_{k}.wav"
                write_audio(path, tone(f0 * (1 + 0.03 * k), 0.5, seed=k))
                rows.append({"path": f"audio/{path.name}", "duration": 0.5, "label": spk, "speaker": spk})
        splits[split] = rows
        if split != "train":
            pairs = [(a, b) for i, a in enumerate(rows) for b in rows[i + 1 :]]
            lines = [f"{int(a['label'] == b['label'])} {a['path']} {b['path']}" for a, b in pairs]
            files[f"{split}_trials.txt"] = ("\n".join(lines) + "\n").encode()
    spec = {"name": "asv", "type": "verification"}
    return write_task_folder(root, spec, splits, files=files, audio_dir=audio)


def test_verification_task_folder_rules(tmp_path):
    task = load_task(make_asv_task(tmp_path / "asv"))
    assert task.metric == "eer" and task.labels == ["s1", "s2", "s3", "s4"]
    # 4 dev clips: 6 pairs, 2 of them same-speaker; trials index the split's clips
    assert len(task.trials["dev"]) == 6 and sum(s for _, _, s in task.trials["dev"]) == 2
    a, b, same = task.trials["test"][0]
    assert same == (task.split("test")[a].target == task.split("test")[b].target)
    folder = make_asv_task(tmp_path / "bad")
    trials = folder / "dev_trials.txt"
    for text, needle in [
        ("1 audio/x.wav audio/dev_h1_0.wav\n", "audio/x.wav is not a path of dev.tsv"),
        ("2 audio/dev_h1_0.wav audio/dev_h1_1.wav\n", "is not '1|0 PATH_A PATH_B'"),
        ("1 audio/dev_h1_0.wav audio/dev_h1_1.wav\n", "needs both same-speaker"),
    ]:
        trials.write_text(text)
        with pytest.raises(SpeechFTError, match=needle):
            load_task(folder)
    trials.unlink()
    with pytest.raises(SpeechFTError, match="dev_trials.txt: missing"):
        load_task(folder)


def test_evaluate_scores_a_verification_task_with_eer_and_min_dcf(tmp_path, tiny_encoder_dir):
    asv = make_asv_task(tmp_path / "asv")
    out = tmp_path / "out"
    assert cli("evaluate", "--encoder", tiny_encoder_dir("hubert"), "--task", asv, "--out", out, *FAST) == 0
    r = json.loads((out / "results.json").read_text())["models"][0]["tasks"]["asv"]
    assert r["type"] == "verification" and r["metric"] == "eer" and r["lower_is_better"]
    assert set(r["metrics"]) == {"eer", "min_dcf"} and r["test"] == r["metrics"]["eer"]
    assert 0.0 <= r["test"] <= 1.0 and 0.0 <= r["metrics"]["min_dcf"]
    assert r["n"] == {"train": 12, "dev": 4, "test": 4} and len(r["layer_weights"]) == r["num_states"]


# ---- query by example -----------------------------------------------------------------------------
def test_mtwv_by_hand():
    from speechft.probe_qbe import mtwv

    occurs = np.array([[True, False, False], [False, True, True]])
    # query 0: its document scores highest -> at t = 0.9 it is found with no false alarm;
    # query 1: one document (0.8) above its non-target (0.5), the other (0.1) below it.
    scores = np.array([[0.9, 0.2, 0.3], [0.5, 0.8, 0.1]])
    # t = 0.8: q0 hit (P_miss 0), q1 one of two (P_miss 0.5), no false alarm -> TWV 1 - 0.25 = 0.75
    assert mtwv(scores, occurs) == pytest.approx(0.75)
    # every target below a non-target of its query: each threshold that finds one costs a false alarm
    assert mtwv(np.array([[0.1, 0.5, 0.6], [0.9, 0.2, 0.3]]), occurs) == 0.0  # best: detect nothing


def test_dtw_finds_the_query_inside_a_document():
    import torch

    from speechft.probe_qbe import dtw_scores

    rng = np.random.default_rng(0)
    frames = torch.nn.functional.normalize(torch.tensor(rng.standard_normal((30, 8)), dtype=torch.float32), dim=1)
    query = frames[10:16]
    stretched = torch.cat([frames[:10], frames[10:16].repeat_interleave(2, 0), frames[16:]])  # slowed down
    other = torch.nn.functional.normalize(torch.tensor(rng.standard_normal((36, 8)), dtype=torch.float32), dim=1)
    docs = torch.nn.utils.rnn.pad_sequence([stretched, other, frames], batch_first=True)
    s = dtw_scores(query, docs, torch.tensor([36, 36, 30]))
    assert s[2] == pytest.approx(0.0, abs=1e-5) and s[0] == pytest.approx(0.0, abs=1e-5) and s[1] < -0.3


def make_qbe_task(root):
    """Queries are 3-tone melodies; documents contain one of them (or none) between random tones."""
    rng = np.random.default_rng(0)
    audio = root.parent / f"{root.name}_audio"
    audio.mkdir(parents=True, exist_ok=True)
    melodies = [(300, 1200, 600), (2000, 500, 900)]

    def melody(freqs, seed):
        return np.concatenate([tone(f, 0.15, seed=seed + j, noise=0.01) for j, f in enumerate(freqs)])

    splits, files = {}, {}
    for split in ("dev", "test"):
        rows, truth = [], []
        for q, m in enumerate(melodies):
            path = audio / f"{split}_q{q}.wav"
            write_audio(path, melody(m, q))
            rows.append({"path": f"audio/{path.name}", "duration": round(0.45, 3), "role": "query"})
        for d in range(4):
            fill = [tone(float(rng.uniform(3000, 4000)), 0.2, seed=d) for _ in range(2)]
            which = d % 3  # 0, 1: that melody; 2: none
            inner = melody(melodies[which], 10 + d) if which < 2 else tone(3500.0, 0.45, seed=d)
            wav = np.concatenate([fill[0], inner, fill[1]])
            path = audio / f"{split}_d{d}.wav"
            write_audio(path, wav)
            rows.append({"path": f"audio/{path.name}", "duration": round(len(wav) / 16000, 4), "role": "document"})
            if which < 2:
                truth.append(f"audio/{split}_q{which}.wav audio/{path.name}")
        splits[split] = rows
        files[f"{split}_truth.txt"] = ("\n".join(truth) + "\n").encode()
    return write_task_folder(root, {"name": "qbe", "type": "qbe"}, splits, files=files, audio_dir=audio)


def test_qbe_task_folder_rules(tmp_path):
    task = load_task(make_qbe_task(tmp_path / "qbe"))
    assert task.metric == "mtwv" and task.split("train") == [] and not (task.root / "train.tsv").exists()
    assert len(task.trials["dev"]) == 2 * 4 and sum(o for _, _, o in task.trials["dev"]) == 3
    (task.root / "dev_truth.txt").write_text("audio/dev_d0.wav audio/dev_q0.wav\n")
    with pytest.raises(SpeechFTError, match="is not 'QUERY_PATH DOCUMENT_PATH' of dev.tsv"):
        load_task(task.root)


def test_evaluate_scores_a_qbe_task_layer_by_layer(tmp_path, tiny_encoder_dir):
    qbe = make_qbe_task(tmp_path / "qbe")
    out = tmp_path / "out"
    assert cli("evaluate", "--encoder", tiny_encoder_dir("hubert"), "fbank", "--task", qbe, "--out", out, *FAST) == 0
    models = json.loads((out / "results.json").read_text())["models"]
    for r in (m["tasks"]["qbe"] for m in models):
        assert r["metric"] == "mtwv" and len(r["layer_search"]) == r["num_states"]
        best = max(r["layer_search"], key=lambda x: x["dev"])
        assert r["chosen_layer"] == best["layer"] and r["test"] == best["test"] and r["dev"] == best["dev"]
        assert r["layer_weights"][r["chosen_layer"]] == 1.0 and sum(r["layer_weights"]) == 1.0
    fbank = next(m for m in models if m["name"] == "fbank")["tasks"]["qbe"]
    assert fbank["test"] > 0.5  # filterbank frames find tone melodies


def test_evaluate_caches_a_qbe_task_which_has_no_train_split(tmp_path, tiny_encoder_dir):
    """The cache plan hashes every split's manifest; a qbe folder has no train.tsv (it was a crash)."""
    qbe = make_qbe_task(tmp_path / "qbe")
    args = ["evaluate", "--encoder", "fbank", "--task", qbe, *FAST[:-1], "--cache", tmp_path / "cache"]
    assert cli(*args, "--out", tmp_path / "a") == 0
    assert cli(*args, "--out", tmp_path / "b") == 0  # the second run reads what the first cached
    a, b = (json.loads((tmp_path / x / "results.json").read_text())["models"][0]["tasks"]["qbe"] for x in "ab")
    assert a["test"] == b["test"] and set(b["cache"].values()) == {"hit"}


# ---- speaker diarization --------------------------------------------------------------------------
def test_frame_labels_from_rttm_segments():
    from speechft.probe_sd import frame_labels

    # 10 frames over 1 s: frame f covers the instant (f + 0.5) / 10; speakers in sorted order (a, b)
    y = frame_labels([(0.0, 0.42, "b"), (0.3, 1.0, "a"), (0.9, 2.0, "b")], 10, 1.0, 2)
    assert y[:, 0].tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]  # a: instants 0.35 .. 0.95
    assert y[:, 1].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0, 1]  # b: 0.05 .. 0.35, then 0.95
    assert frame_labels([], 3, 1.0, 2).tolist() == [[0, 0]] * 3


def test_pit_bce_takes_the_better_permutation_per_recording():
    import torch

    from speechft.probe_sd import pit_bce

    labels = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]])  # 2 recordings, 2 frames
    logits = torch.tensor([[[-2.0, 2.0], [2.0, -2.0]], [[3.0, -1.0], [0.0, 0.0]]])
    lengths = torch.tensor([2, 1])  # the second recording's second frame is padding
    # recording 1: the swapped order fits (every logit is +-2 on the right side): softplus(-2) per entry;
    # recording 2, frame 1 only: the given order, (softplus(-3) + softplus(-1)) / 2, beats the swap
    rec1 = math.log1p(math.exp(-2))
    rec2 = (math.log1p(math.exp(-3)) + math.log1p(math.exp(-1))) / 2
    assert float(pit_bce(logits, labels, lengths)) == pytest.approx((rec1 + rec2) / 2, rel=1e-6)
    # recording 1 alone: the swapped order's loss, not the given order's softplus(2)
    assert float(pit_bce(logits[:1], labels[:1], lengths[:1])) == pytest.approx(rec1, rel=1e-6)


def make_sd_task(root, n=(6, 3, 3)):
    """Recordings of two tone 'speakers' overlapping at a random offset; RTTM from the known boundaries."""
    rng = np.random.default_rng(0)
    audio = root.parent / f"{root.name}_audio"
    audio.mkdir(parents=True, exist_ok=True)
    splits, files = {}, {}
    for split, count in zip(("train", "dev", "test"), n):
        rows, lines = [], []
        for k in range(count):
            a, b = tone(300, 0.6, seed=k), tone(1500, 0.6, seed=k + 50)
            offset = int(rng.integers(2, 5)) * 1600  # 0.2 .. 0.4 s
            wav = np.zeros(offset + len(b), dtype=np.float32)
            wav[: len(a)] += a
            wav[offset:] += b
            name = f"{split}_{k}"
            write_audio(audio / f"{name}.wav", wav)
            rows.append({"path": f"audio/{name}.wav", "duration": round(len(wav) / 16000, 3)})
            lines += [f"SPEAKER {name} 1 0.000 0.600 <NA> <NA> low <NA> <NA>"]
            lines += [f"SPEAKER {name} 1 {offset / 16000:.3f} 0.600 <NA> <NA> high <NA> <NA>"]
        splits[split] = rows
        files[f"{split}.rttm"] = ("\n".join(lines) + "\n").encode()
    return write_task_folder(root, {"name": "sd", "type": "diarization"}, splits, files=files, audio_dir=audio)


def test_diarization_task_folder_rules(tmp_path):
    task = load_task(make_sd_task(tmp_path / "sd"))
    assert task.metric == "der" and task.labels == ["speaker1", "speaker2"]
    assert task.segments["dev"][0][0] == (0.0, 0.6, "low") and len(task.segments["test"]) == 3
    folder = make_sd_task(tmp_path / "bad")
    rttm = folder / "dev.rttm"
    for text, needle in [
        ("SPEAKER dev_9 1 0.0 0.5 <NA> <NA> low <NA> <NA>\n", "recording dev_9 is not a file of dev.tsv"),
        ("SPEAKER dev_0 1 0.0 -1 <NA> <NA> low <NA> <NA>\n", "is not 'SPEAKER REC 1 START DUR"),
        ("SPEAKER dev_0 1 5.0 0.5 <NA> <NA> low <NA> <NA>\n", "after the recording ends"),
        ("".join(f"SPEAKER dev_0 1 0.0 0.1 <NA> <NA> s{i} <NA> <NA>\n" for i in range(3)), "has 3 speakers"),
        ("", "lists no segment"),
    ]:
        rttm.write_text(text)
        with pytest.raises(SpeechFTError, match=needle):
            load_task(folder)
    rttm.unlink()
    with pytest.raises(SpeechFTError, match="dev.rttm: missing"):
        load_task(folder)


def test_evaluate_scores_a_diarization_task_with_der(tmp_path, tiny_encoder_dir):
    sd = make_sd_task(tmp_path / "sd")
    out = tmp_path / "out"
    assert cli("evaluate", "--encoder", tiny_encoder_dir("hubert"), "--task", sd, "--out", out, *FAST) == 0
    r = json.loads((out / "results.json").read_text())["models"][0]["tasks"]["sd"]
    assert r["type"] == "diarization" and r["metric"] == "der" and r["lower_is_better"]
    assert r["metrics"] == {"der": r["test"]} and 0.0 <= r["test"] <= 2.0
    assert r["n"] == {"train": 6, "dev": 3, "test": 3} and len(r["layer_weights"]) == r["num_states"]


# ---- the paper's SUPERB_S end to end ----------------------------------------------------------------
def test_evaluate_with_superb_speechft_prints_the_paper_comparable_score(tmp_path, tiny_encoder_dir, capsys):
    """Task folders named pr, sid, er and sf, scored with superb_speechft: the printed and recorded score is
    1000/4 * sum over tasks of the mean over its metrics of (100 m - baseline) / (reference - baseline)."""
    from conftest import make_classification_task, make_ctc_task

    tasks = [
        make_ctc_task(tmp_path / "pr", name="pr"),
        make_classification_task(tmp_path / "sid", name="sid"),
        make_classification_task(tmp_path / "er", name="er", seed=1),
        make_sf_task(tmp_path / "sf"),
    ]
    out = tmp_path / "out"
    argv = ["evaluate", "--encoder", tiny_encoder_dir("hubert"), "--task", *tasks, "--out", out, *FAST]
    assert cli(*argv, "--score-config", "superb_speechft") == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    t = results["models"][0]["tasks"]
    points = {  # the config's FBANK baselines and references (speechft/configs/superb_speechft.yaml)
        ("pr", "per"): (82.01, 2.423),
        ("sid", "accuracy"): (0.00085, 95.114),
        ("er", "accuracy"): (35.39, 70.675),
        ("sf", "slot_type_f1"): (69.64, 92.400),
        ("sf", "slot_value_cer"): (52.94, 17.692),
    }

    def value(task, metric):
        return t[task]["metrics"][metric] if "metrics" in t[task] else t[task]["test"]

    per_task = {}
    for (task, metric), (base, ref) in points.items():
        per_task.setdefault(task, []).append((100 * value(task, metric) - base) / (ref - base))
    expected = 1000 / 4 * sum(sum(v) / len(v) for v in per_task.values())
    name = results["models"][0]["name"]
    assert results["superb"]["scores"][name] == pytest.approx(expected, abs=1e-6)
    assert not results["superb"].get("missing_tasks")
    assert f"{expected:.1f}" in printed or f"{expected:.2f}" in printed, printed
