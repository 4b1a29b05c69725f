"""`speechft data prepare`: miniature copies of the real corpus layouts (real directory
structure, real metadata formats, a few generated wav/flac/sph files) become task folders
that load, with the right labels, transcripts and splits."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechft.data import load_audio, load_task
from speechft.data.prepare import prepare_corpus
from speechft.errors import SpeechFTError

SR = 16000


def beside(tmp_path: Path, name: str) -> Path:
    """An output folder outside tmp_path, for corpora laid out at tmp_path itself: a task folder may not
    lie inside the corpus it reads (--out inside --root is refused)."""
    return tmp_path.with_name(f"{tmp_path.name}-{name}")


def wav(seconds: float, seed: int = 0, freq: float = 300.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def write(path, seconds, seed=0, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wav(seconds, seed), SR, format=fmt)
    return path


def by_name(rows):
    return {e.path.name: e for e in rows}


# ---------------------------------------------------------------------------------------
# LibriSpeech
# ---------------------------------------------------------------------------------------
LIBRI = {  # subset -> (speaker, chapter, [transcripts])
    "train-clean-100": (103, 1240, ["CHAPTER ONE MISSUS RACHEL", "THE LYNDE'S HOLLOW"]),
    "dev-clean": (84, 121123, ["GO DO YOU HEAR"]),
    "test-clean": (1089, 134686, ["HE HOPED THERE WOULD BE STEW"]),
}
LEXICON = {
    "CHAPTER": "CH AE1 P T ER0",
    "ONE": "W AH1 N",
    "MISSUS": "M IH1 S IH0 Z",
    "RACHEL": "R EY1 CH AH0 L",
    "THE": "DH AH0",
    "LYNDE'S": "L IH1 N D Z",
    "HOLLOW": "HH AA1 L OW0",
    "GO": "G OW1",
    "DO": "D UW1",
    "YOU": "Y UW1",
    "HEAR": "HH IY1 R",
    "HE": "HH IY1",
    "HOPED": "HH OW1 P T",
    "THERE": "DH EH1 R",
    "WOULD": "W UH1 D",
    "BE": "B IY1",
    "STEW": "S T UW1",
}


@pytest.fixture
def librispeech(tmp_path):
    root = tmp_path / "corpora" / "LibriSpeech"
    for k, (subset, (spk, chap, texts)) in enumerate(LIBRI.items()):
        d = root / subset / str(spk) / str(chap)
        lines = []
        for i, text in enumerate(texts):
            utt = f"{spk}-{chap}-{i:04d}"
            write(d / f"{utt}.flac", 0.5 + 0.25 * i, seed=k * 10 + i, fmt="FLAC")
            lines.append(f"{utt} {text}")
        (d / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    lex = tmp_path / "librispeech-lexicon-200k-g2p.txt"
    # tab-separated like s3prl's files; a second pronunciation of THE must be ignored
    lex.write_text("".join(f"{w}\t{p}\n" for w, p in LEXICON.items()) + "THE\tDH IY0\n")
    return root, lex


def test_librispeech_pr_with_lexicon(tmp_path, librispeech):
    root, lex = librispeech
    out = prepare_corpus("librispeech-pr", root.parent, beside(tmp_path, "pr"), lexicon=[lex])
    task = load_task(out)
    assert (task.name, task.type, task.metric, task.tokenizer) == ("pr", "ctc", "per", "space")
    train = by_name(task.splits["train"])
    assert train["103-1240-0001.flac"].target == "DH AH0 L IH1 N D Z HH AA1 L OW0"
    assert train["103-1240-0000.flac"].speaker == "103"
    assert [e.path.name for e in task.splits["test"]] == ["1089-134686-0000.flac"]
    assert set(task.labels) == {p for v in LEXICON.values() for p in v.split()} - {"DH IY0"}
    assert task.encode(task.splits["dev"][0].target)  # every phone is in the vocabulary
    # audio is referenced in place through the `audio` link, and decodes
    assert (out / "audio").is_symlink()
    assert train["103-1240-0001.flac"].duration == pytest.approx(0.75, abs=1e-3)
    assert len(load_audio(task.splits["dev"][0].path)) == int(0.5 * SR)
    assert "first pronunciation" in (out / "README.md").read_text()


def test_librispeech_pr_unknown_word(tmp_path, librispeech):
    root, lex = librispeech
    partial = tmp_path / "partial.txt"
    partial.write_text("".join(f"{w} {p}\n" for w, p in LEXICON.items() if w != "STEW"))
    with pytest.raises(SpeechFTError, match="word 'STEW' is not in the lexicon"):
        prepare_corpus("librispeech-pr", root, tmp_path / "pr", lexicon=[partial])
    assert not (tmp_path / "pr").exists()
    with pytest.raises(SpeechFTError, match="needs --lexicon"):
        prepare_corpus("librispeech-pr", root, tmp_path / "pr")
    with pytest.raises(SpeechFTError, match="test split came out empty"):
        prepare_corpus("librispeech-pr", root, tmp_path / "pr", lexicon=[partial], skip_oov=True)


def test_librispeech_pr_from_superb_csv(tmp_path, librispeech):
    root, _ = librispeech
    csv_dir = tmp_path / "superb_pr"
    csv_dir.mkdir()
    for subset, (spk, chap, texts) in LIBRI.items():
        with open(csv_dir / f"{subset}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "wav_path", "transcription"])
            for i, text in enumerate(texts):
                utt = f"{spk}-{chap}-{i:04d}"
                # absolute paths from the machine that ran s3prl
                w.writerow(
                    [
                        utt,
                        f"/mnt/other/LibriSpeech/{subset}/{spk}/{chap}/{utt}.flac",
                        " ".join(LEXICON[x] for x in text.split()),
                    ]
                )
    task = load_task(prepare_corpus("librispeech-pr", root, tmp_path / "pr", phone_csv=csv_dir))
    assert by_name(task.splits["test"])["1089-134686-0000.flac"].target.startswith("HH IY1 HH OW1 P T")


def test_librispeech_asr_characters(tmp_path, librispeech):
    root, _ = librispeech
    task = load_task(prepare_corpus("librispeech-asr", root, tmp_path / "asr"))
    assert (task.tokenizer, task.metric) == ("char", "wer")
    assert task.labels[0] == "|" and "'" in task.labels and "A" in task.labels
    ex = by_name(task.splits["train"])["103-1240-0001.flac"]
    assert ex.target == "THE LYNDE'S HOLLOW"
    assert task.decode(task.encode(ex.target)) == ex.target


def test_missing_librispeech_subset(tmp_path, librispeech):
    root, lex = librispeech
    (root / "dev-clean").rename(root / "dev-other")
    with pytest.raises(SpeechFTError, match=r"dev-clean: not found; expected the LibriSpeech subset"):
        prepare_corpus("librispeech-asr", root, tmp_path / "asr")


# ---------------------------------------------------------------------------------------
# VoxCeleb1
# ---------------------------------------------------------------------------------------
@pytest.fixture
def voxceleb(tmp_path):
    root = tmp_path / "VoxCeleb1"
    lines = []
    for s, spk in enumerate(["id10001", "id10002", "id10003"]):
        for v, video in enumerate(["1zcIwhmdeo4", "7w0IBEWc9Qw"]):
            for u in range(1, 3):
                # dev and test archives extracted side by side, as s3prl expects (root/*/wav/)
                part = "test" if spk == "id10003" else "dev"
                write(root / part / "wav" / spk / video / f"{u:05d}.wav", 0.4, seed=s * 10 + v + u)
                split = 3 if (v == 1 and u == 2) else 2 if (v == 1 and u == 1) else 1
                lines.append(f"{split} {spk}/{video}/{u:05d}.wav")
    (root / "iden_split.txt").write_text("\n".join(lines) + "\n")
    return root


def test_voxceleb1_sid(tmp_path, voxceleb):
    task = load_task(prepare_corpus("voxceleb1-sid", voxceleb, tmp_path / "sid"))
    assert task.labels == ["id10001", "id10002", "id10003"]
    assert [len(task.splits[s]) for s in ("train", "dev", "test")] == [6, 3, 3]
    test = task.splits["test"]
    assert {e.target for e in test} == set(task.labels)
    assert all(e.id.endswith("7w0IBEWc9Qw/00002.wav") for e in test)
    assert any("/test/wav/id10003/" in e.id for e in test)


def test_voxceleb1_missing_split_file_and_audio(tmp_path, voxceleb):
    (voxceleb / "iden_split.txt").rename(tmp_path / "iden_split.txt")
    with pytest.raises(SpeechFTError, match=r"iden_split.txt: not found; expected VoxCeleb1's official"):
        prepare_corpus("voxceleb1-sid", voxceleb, tmp_path / "sid")
    (voxceleb / "dev" / "wav" / "id10001" / "1zcIwhmdeo4" / "00001.wav").unlink()
    with pytest.raises(SpeechFTError, match=r"00001.wav: not found \(listed in iden_split.txt; 1 listed"):
        prepare_corpus("voxceleb1-sid", voxceleb, tmp_path / "sid", split_file=tmp_path / "iden_split.txt")


@pytest.mark.parametrize("damage, needle", [(b"\xff\xfe", "not UTF-8 text (byte 0)"), (b"\x00", "contains a NUL byte")])
def test_corpus_list_files_get_the_manifest_text_checks(tmp_path, voxceleb, damage, needle):
    split = voxceleb / "iden_split.txt"
    split.write_bytes(damage + split.read_bytes())
    with pytest.raises(SpeechFTError, match=re.escape(f"iden_split.txt: {needle}")):
        prepare_corpus("voxceleb1-sid", voxceleb, tmp_path / "sid")
    assert not (tmp_path / "sid").exists()


# ---------------------------------------------------------------------------------------
# IEMOCAP
# ---------------------------------------------------------------------------------------
@pytest.fixture
def iemocap(tmp_path):
    root = tmp_path / "IEMOCAP_full_release"
    emotions = ["neu", "exc", "ang", "sad", "fru", "hap"]
    for n in range(1, 6):
        dialog = f"Ses0{n}F_impro01"
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        for k, emo in enumerate(emotions):
            turn = f"{dialog}_{'F' if k % 2 == 0 else 'M'}{k:03d}"
            write(root / f"Session{n}" / "sentences" / "wav" / dialog / f"{turn}.wav", 0.3, seed=n * 10 + k)
            lines += [
                f"[{k * 3.1:.4f} - {k * 3.1 + 2.5:.4f}]\t{turn}\t{emo}\t[2.5000, 2.5000, 2.5000]",
                "C-E2:\tNeutral;\t()",
                "A-E3:\tval 3; act 2; dom  2;\t()",
                "",
            ]
        d = root / f"Session{n}" / "dialog" / "EmoEvaluation"
        d.mkdir(parents=True)
        (d / f"{dialog}.txt").write_text("\n".join(lines))
    return root


def test_iemocap_fold(tmp_path, iemocap):
    # the corpus may be found below --root; the task folder goes outside it (an output never lies in an input)
    task = load_task(prepare_corpus("iemocap-er", iemocap.parent, beside(tmp_path, "er"), fold=2))
    assert task.name == "er" and task.labels == ["neu", "hap", "ang", "sad"]
    assert task.spec["source"]["options"]["fold"] == 2
    test = task.splits["test"]
    assert {e.path.parts[-5] for e in test} == {"Session2"}
    assert len(test) == 5  # 'fru' is not one of the four classes
    labels = {e.path.stem.rsplit("_", 1)[1]: e for e in test}
    assert labels["M001"].target == "hap" and labels["M001"].extra["emotion"] == "exc"  # exc merged into hap
    assert labels["M001"].speaker == "Ses02M" and labels["F000"].speaker == "Ses02F"
    others = task.splits["train"] + task.splits["dev"]
    assert len(others) == 20 and "Session2" not in {e.path.parts[-5] for e in others}
    assert task.splits["dev"]  # some utterances held out for dev
    again = load_task(prepare_corpus("iemocap-er", iemocap, tmp_path / "er2", fold=2))
    assert [e.id for e in again.splits["dev"]] == [e.id for e in task.splits["dev"]]  # deterministic
    with pytest.raises(SpeechFTError, match="--fold 6"):
        prepare_corpus("iemocap-er", iemocap, tmp_path / "er3", fold=6)


# ---------------------------------------------------------------------------------------
# Speech Commands v0.01
# ---------------------------------------------------------------------------------------
@pytest.fixture
def speech_commands(tmp_path):
    root = tmp_path / "speech_commands_v0.01"
    files = []
    for w, word in enumerate(["yes", "no", "bed", "happy"]):
        for s in range(3):
            rel = f"{word}/{s:08x}_nohash_0.wav"
            write(root / rel, 1.0, seed=w * 10 + s)
            files.append(rel)
    write(root / "_background_noise_" / "white_noise.wav", 10.3, seed=99)
    (root / "validation_list.txt").write_text("yes/00000001_nohash_0.wav\nbed/00000001_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("yes/00000002_nohash_0.wav\nhappy/00000002_nohash_0.wav\n")
    (root / "LICENSE").write_text("CC-BY-4.0\n")
    return root


def test_speech_commands_lists_and_silence(tmp_path, speech_commands):
    out = prepare_corpus("speechcommands-ks", speech_commands, tmp_path / "ks")
    task = load_task(out)
    assert task.labels == [
        "yes",
        "no",
        "up",
        "down",
        "left",
        "right",
        "on",
        "off",
        "stop",
        "go",
        "_unknown_",
        "_silence_",
    ]
    dev = {e.id: e.target for e in task.splits["dev"]}
    assert dev["audio/yes/00000001_nohash_0.wav"] == "yes"
    assert dev["audio/bed/00000001_nohash_0.wav"] == "_unknown_"
    test = {e.id: e.target for e in task.splits["test"]}
    assert test["audio/happy/00000002_nohash_0.wav"] == "_unknown_"
    train = task.splits["train"]
    assert len([e for e in train if e.target != "_silence_"]) == 12 - 4
    # 10 one-second slices of the 10.3 s noise: 8 train, 1 dev, 1 test, real files in the folder
    silence = {s: [e for e in task.splits[s] if e.target == "_silence_"] for s in ("train", "dev", "test")}
    assert [len(silence[s]) for s in ("train", "dev", "test")] == [8, 1, 1]
    assert silence["test"][0].id == "silence/test/white_noise_009.wav"
    noise, _ = sf.read(str(speech_commands / "_background_noise_" / "white_noise.wav"), dtype="float32")
    np.testing.assert_allclose(load_audio(silence["test"][0].path), noise[9 * SR : 10 * SR], atol=1e-4)
    assert not (out / "silence").is_symlink()


def test_speech_commands_official_test_set(tmp_path, speech_commands):
    test_root = tmp_path / "speech_commands_test_set_v0.01"
    for c, cls in enumerate(["yes", "_unknown_", "_silence_"]):
        write(test_root / cls / f"{c:08x}_nohash_0.wav", 1.0, seed=50 + c)
    task = load_task(prepare_corpus("speechcommands-ks", speech_commands, tmp_path / "ks", test_root=test_root))
    assert sorted(e.target for e in task.splits["test"]) == ["_silence_", "_unknown_", "yes"]
    assert all(e.id.startswith("test_audio/") for e in task.splits["test"])
    # testing_list files are then unused (s3prl discards them too), and no noise slice goes to test
    ids = {e.id for s in task.splits.values() for e in s}
    assert "audio/yes/00000002_nohash_0.wav" not in ids and "audio/happy/00000002_nohash_0.wav" not in ids
    assert "audio/no/00000002_nohash_0.wav" in ids
    bad = tmp_path / "bad_test"
    write(bad / "maybe" / "x_nohash_0.wav", 1.0)
    with pytest.raises(SpeechFTError, match="'maybe' is not one of SUPERB's 12 classes"):
        prepare_corpus("speechcommands-ks", speech_commands, tmp_path / "ks2", test_root=bad)


# ---------------------------------------------------------------------------------------
# Fluent Speech Commands
# ---------------------------------------------------------------------------------------
def test_fluent_speech_commands(tmp_path):
    root = tmp_path / "fluent_speech_commands_dataset"
    intents = [
        ("activate", "lights", "kitchen", "Turn on the kitchen lights"),
        ("change language", "Chinese", "none", "Switch to Chinese"),
        ("decrease", "volume", "none", "Turn it down"),
    ]
    for split, name in (("train", "train_data.csv"), ("dev", "valid_data.csv"), ("test", "test_data.csv")):
        (root / "data").mkdir(parents=True, exist_ok=True)
        with open(root / "data" / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["", "path", "speakerId", "transcription", "action", "object", "location"])
            for i, (a, o, loc, text) in enumerate(intents):
                rel = f"wavs/speakers/2BqVo8kVB2Skwgyb/{split}-{i}-4474-11e9-a9a5.wav"
                write(root / rel, 0.6, seed=i)
                w.writerow([i, rel, "2BqVo8kVB2Skwgyb", text, a, o, loc])
    task = load_task(prepare_corpus("fluent-ic", tmp_path, beside(tmp_path, "ic")))
    assert task.labels == sorted(["activate/lights/kitchen", "change language/Chinese/none", "decrease/volume/none"])
    ex = task.splits["test"][1]
    assert ex.target == "change language/Chinese/none" and ex.extra["object"] == "Chinese"
    assert ex.extra["transcription"] == "Switch to Chinese" and ex.speaker == "2BqVo8kVB2Skwgyb"
    (root / "data" / "valid_data.csv").unlink()
    with pytest.raises(SpeechFTError, match="valid_data.csv: not found; expected Fluent Speech Commands"):
        prepare_corpus("fluent-ic", root, tmp_path / "ic2")


# ---------------------------------------------------------------------------------------
# TED-LIUM 3
# ---------------------------------------------------------------------------------------
def write_sph(path, samples: np.ndarray, sr: int = SR):
    """An uncompressed NIST SPHERE file: a 1024-byte text header, then 16-bit little-endian PCM."""
    pcm = np.clip(samples * 32767, -32768, 32767).astype("<i2")
    header = (
        f"NIST_1A\n   1024\nsample_count -i {len(pcm)}\nsample_rate -i {sr}\nchannel_count -i 1\n"
        "sample_n_bytes -i 2\nsample_byte_format -s2 01\nsample_coding -s3 pcm\nend_head\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.encode("ascii").ljust(1024, b" ") + pcm.tobytes())


@pytest.fixture
def tedlium(tmp_path):
    root = tmp_path / "TEDLIUM_release-3"
    talks = {  # dir -> talk -> [(start, end, text)]
        "data": {
            "AaronHuey_2010X": [
                (0.5, 2.0, "the first segment"),
                (2.0, 2.6, "too short"),
                (3.0, 4.5, "it 's a well-known fact"),
                (5.0, 6.5, "an <unk> word"),
                (7.0, 8.5, "ignore_time_segment_in_scoring"),
            ],
            "BillGates_2010": [(0.0, 1.5, "second talk one"), (1.5, 3.2, "second talk two")],
        },
        "legacy/dev": {"DanBarber_2010": [(0.2, 1.4, "dev words")]},
        "legacy/test": {"JaneMcGonigal_2010": [(0.1, 1.3, "test words here")]},
    }
    for d, tt in talks.items():
        for t, (talk, segs) in enumerate(tt.items()):
            length = max(e for _, e, _ in segs) + 0.5
            write_sph(root / d / "sph" / f"{talk}.sph", wav(length, seed=t, freq=200 + 100 * t))
            lines = [';; LABEL "o" "Overall" "Overall results"']
            lines += [f"{talk} 1 {talk} {s:.2f} {e:.2f} <o,f0,male> {text}" for s, e, text in segs]
            (root / d / "stm").mkdir(parents=True, exist_ok=True)
            (root / d / "stm" / f"{talk}.stm").write_text("\n".join(lines) + "\n")
    return root


def test_tedlium3_subset_rule_and_segments(tmp_path, tedlium):
    out = prepare_corpus("tedlium3-asr", tedlium.parent, beside(tmp_path, "ted"))
    task = load_task(out)
    assert (task.tokenizer, task.metric) == ("char", "wer")
    train = [e.target for e in task.splits["train"]]
    # 1-60 s, no <unk>, no ignore_time_segment; normalised like the reference code
    assert train == ["THE FIRST SEGMENT", "IT'S A WELL KNOWN FACT", "SECOND TALK ONE", "SECOND TALK TWO"]
    assert [e.target for e in task.splits["test"]] == ["TEST WORDS HERE"]
    first = task.splits["train"][0]
    assert first.id == "segments/train/AaronHuey_2010X_000000.50_000002.00.wav" and first.duration == 1.5
    talk = wav(6.5 + 0.5 + 2.0, seed=0, freq=200)  # the .sph the segment was cut from
    np.testing.assert_allclose(load_audio(first.path), talk[8000:32000], atol=2e-4)
    assert not (out / "audio").exists()  # segments live inside the folder; nothing linked
    assert "10 h" in (out / "README.md").read_text()


def test_tedlium3_hours_cap_stops_after_crossing_segment(tmp_path, tedlium):
    # 2 s cap: 1.5 s, then the 1.5 s segment that crosses the cap is kept, then stop
    task = load_task(prepare_corpus("tedlium3-asr", tedlium, tmp_path / "ted", hours=2 / 3600))
    assert [e.target for e in task.splits["train"]] == ["THE FIRST SEGMENT", "IT'S A WELL KNOWN FACT"]


def test_tedlium3_compressed_or_missing_sph(tmp_path, tedlium):
    (tedlium / "legacy" / "dev" / "sph" / "DanBarber_2010.sph").write_bytes(
        b"NIST_1A\n   1024\nsample_coding -s7 shorten\nend_head\n".ljust(1024) + b"xx"
    )
    with pytest.raises(SpeechFTError, match="DanBarber_2010.sph: cannot read this NIST SPHERE file.*sph2pipe"):
        prepare_corpus("tedlium3-asr", tedlium, tmp_path / "ted")
    (tedlium / "legacy" / "dev" / "sph" / "DanBarber_2010.sph").unlink()
    with pytest.raises(SpeechFTError, match="DanBarber_2010.sph: not found; expected the talk audio"):
        prepare_corpus("tedlium3-asr", tedlium, tmp_path / "ted")
    write_sph(tedlium / "legacy" / "dev" / "sph" / "DanBarber_2010.sph", wav(0.8))  # audio of another release
    with pytest.raises(SpeechFTError, match="runs past the end of the audio"):
        prepare_corpus("tedlium3-asr", tedlium, tmp_path / "ted")
    assert not (tmp_path / "ted").exists()


# ---------------------------------------------------------------------------------------
# AISHELL-3
# ---------------------------------------------------------------------------------------
def test_aishell3(tmp_path):
    root = tmp_path / "data_aishell3"
    content = {
        "train": [
            ("SSB00050001.wav", "广 guang3 州 zhou1 女 nv3 大 da4 学 xue2"),
            ("SSB00050002.wav", "你 ni3 好 hao3"),
            ("SSB00120001.wav", "北 bei3 京 jing1"),
        ],
        "test": [("SSB00090001.wav", "上 shang4 海 hai3")],
    }
    for part, lines in content.items():
        for k, (name, _) in enumerate(lines):
            write(root / part / "wav" / name[:7] / name, 0.5, seed=k, fmt="WAV")
        (root / part / "content.txt").write_text("".join(f"{n}\t{t}\n" for n, t in lines), encoding="utf-8")
    task = load_task(prepare_corpus("aishell3", root, tmp_path / "zh", dev_fraction=0.34))
    assert (task.type, task.metric, task.tokenizer) == ("ctc", "cer", "char")
    everything = {e.path.name: e for s in task.splits.values() for e in s}
    assert everything["SSB00050001.wav"].target == "广州女大学"
    assert everything["SSB00050001.wav"].speaker == "SSB0005"
    assert [e.target for e in task.splits["test"]] == ["上海"]
    assert len(task.splits["train"]) + len(task.splits["dev"]) == 3
    assert set("广州女大学你好北京上海") == set(task.labels)


def test_the_task_folder_never_lands_inside_the_corpus(tmp_path, iemocap):
    with pytest.raises(SpeechFTError, match="lies inside the input --root"):
        prepare_corpus("iemocap-er", iemocap, iemocap / "tasks" / "er", fold=1)
    assert not (iemocap / "tasks").exists()


def test_unknown_corpus_and_option(tmp_path):
    with pytest.raises(SpeechFTError, match="unknown corpus 'timit'"):
        prepare_corpus("timit", tmp_path, tmp_path / "o")
    with pytest.raises(SpeechFTError, match="voxceleb1-sid does not take option.*--fold"):
        prepare_corpus("voxceleb1-sid", tmp_path, tmp_path / "o", fold=2)
    with pytest.raises(SpeechFTError, match="corpus folder not found"):
        prepare_corpus("voxceleb1-sid", tmp_path / "nope", tmp_path / "o")


def test_cli_prepare(tmp_path, voxceleb, capsys):
    from speechft.cli import main

    out = tmp_path / "sid"
    assert main(["data", "prepare", "voxceleb1-sid", "--root", str(voxceleb), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    spec = load_task(out).spec
    assert spec["name"] == "sid"  # the SUPERB score config's key
    assert spec["source"]["corpus"] == "voxceleb1-sid" and json.dumps(spec["source"])
    assert (
        main(
            [
                "data",
                "prepare",
                "voxceleb1-sid",
                "--root",
                str(voxceleb),
                "--out",
                str(tmp_path / "sid2"),
                "--name",
                "vox1",
            ]
        )
        == 0
    )
    assert load_task(tmp_path / "sid2").name == "vox1"
    assert main(["data", "prepare", "voxceleb1-sid", "--root", str(voxceleb), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_prepare_takes_multi_value_flags_and_quiet(tmp_path, librispeech, capsys):
    """--lexicon FILE FILE and --sets A B C are nargs lists; --quiet parses and turns the bars off."""
    from speechft.cli import main

    root, lex = librispeech
    words = lex.read_text().splitlines()
    first, second = tmp_path / "lex1.txt", tmp_path / "lex2.txt"
    first.write_text("\n".join(words[: len(words) // 2]) + "\n")
    second.write_text("\n".join(words[len(words) // 2 :]) + "\n")  # neither file alone covers the corpus
    out = tmp_path / "pr"
    argv = ["data", "prepare", "librispeech-pr", "--root", str(root), "--out", str(out), "--quiet"]
    argv += ["--lexicon", str(first), str(second), "--sets", *LIBRI]
    assert main(argv) == 0, capsys.readouterr().err
    assert load_task(out).spec["source"]["options"]["lexicon"] == [str(first), str(second)]
    assert main(argv[:-4] + ["--sets", "train-clean-100", "dev-clean", "--overwrite"]) == 2
    assert "--sets needs three LibriSpeech subsets" in capsys.readouterr().err


def test_progress_bars_follow_the_switch():
    from speechft.data.corpora import progress_bars
    from speechft.data.corpora.common import progress_bar

    assert not progress_bar(range(3)).disable
    with progress_bars(False):
        assert progress_bar(range(3)).disable
    assert not progress_bar(range(3)).disable


# ---------------------------------------------------------------------------------------
# Audio SNIPS (SUPERB SF), laid out as s3prl's SNIPS reader expects
# ---------------------------------------------------------------------------------------
SNIPS_LINES = {  # uid -> (words, tags, intent)
    "Ivy-snips-train-0": ("wake me at seven am", "O O O timeRange timeRange", "SetAlarm"),
    "Joey-snips-train-1": ("play Beyoncé & Jay-z now !", "O artist artist artist O O", "PlayMusic"),
    "Aditi-snips-valid-0": ("weather in new york", "O O city city", "GetWeather"),
    "Brian-snips-test-0": ("rate this book five", "O O object_type rating_value", "RateBook"),
    "Brian-snips-test-1": ("hello", "O", "None"),
}


@pytest.fixture
def snips(tmp_path):
    root = tmp_path / "audio_snips"
    for k, uid in enumerate([*SNIPS_LINES, "Ivy-snips-train-9", "Brian-snips-train-2"]):
        folder = {"train": "train", "valid": "valid", "test": "test"}[uid.split("-")[2]]
        write(root / folder / f"{uid}.wav", 0.5, seed=k)
    lines = [f"{u} BOS {w} EOS\tO {t} {i}" for u, (w, t, i) in SNIPS_LINES.items()]
    (root / "all.iob.snips.txt").write_text("\n".join(lines) + "\n")
    return root


def test_audio_snips_sf(tmp_path, snips):
    task = load_task(prepare_corpus("snips-sf", snips, tmp_path / "sf"))
    assert task.name == "sf" and task.tokenizer == "slots" and task.metric == "slot_type_f1"
    targets = {s: {e.path.stem: e.target for e in task.splits[s]} for s in ("train", "dev", "test")}
    assert targets["train"] == {
        "Ivy-snips-train-0": "WAKE ME AT B-timeRange SEVEN AM E-timeRange",
        "Joey-snips-train-1": "PLAY B-artist BEYONCE AND JAY-Z E-artist NOW",  # '!' dropped, & read AND
    }  # Ivy-snips-train-9 has no transcript; Brian is a test voice: both left out
    assert targets["dev"] == {"Aditi-snips-valid-0": "WEATHER IN B-city NEW YORK E-city"}
    rated = "RATE THIS B-object_type BOOK E-object_type B-rating_value FIVE E-rating_value"
    assert targets["test"]["Brian-snips-test-0"] == rated
    assert targets["test"]["Brian-snips-test-1"] == "HELLO"
    assert {"B-city", "E-city", "B-artist", "E-artist"} <= set(task.labels) and "|" in task.labels
    assert "1 wav file(s) with no line" in (tmp_path / "sf" / "README.md").read_text()


def test_audio_snips_bad_line(tmp_path, snips):
    (snips / "all.iob.snips.txt").write_text("Ivy-snips-train-0 BOS wake me EOS\tO O SetAlarm\n")
    with pytest.raises(SpeechFTError, match=r"all.iob.snips.txt:1: expected 'ID BOS words EOS<TAB>O tags INTENT'"):
        prepare_corpus("snips-sf", snips, tmp_path / "sf")


# ---------------------------------------------------------------------------------------
# VoxCeleb1 verification (SUPERB ASV): iden_split.txt + veri_test2.txt, dev/ and test/ archives
# ---------------------------------------------------------------------------------------
@pytest.fixture
def voxceleb_asv(tmp_path):
    root = tmp_path / "VoxCeleb1"
    lines = []
    for s, spk in enumerate(["id10001", "id10002", "id10003"]):
        for u in range(1, 5):
            write(root / "dev" / "wav" / spk / "vidA" / f"{u:05d}.wav", 0.4, seed=s * 10 + u)
            lines.append(f"{2 if u >= 3 else 1} {spk}/vidA/{u:05d}.wav")
    for s, spk in enumerate(["id10270", "id10271"]):  # test speakers: in iden_split too, never trained on
        for u in range(1, 3):
            write(root / "test" / "wav" / spk / "vidT" / f"{u:05d}.wav", 0.4, seed=50 + s * 10 + u)
            lines.append(f"1 {spk}/vidT/{u:05d}.wav")
    (root / "iden_split.txt").write_text("\n".join(lines) + "\n")
    (root / "veri_test2.txt").write_text(
        "1 id10270/vidT/00001.wav id10270/vidT/00002.wav\n"
        "0 id10270/vidT/00001.wav id10271/vidT/00001.wav\n"
        "1 id10271/vidT/00002.wav id10271/vidT/00001.wav\n"
    )
    return root


def test_voxceleb1_asv(tmp_path, voxceleb_asv):
    task = load_task(prepare_corpus("voxceleb1-asv", voxceleb_asv, tmp_path / "asv"))
    assert task.type == "verification" and task.name == "asv" and task.metric == "eer"
    assert task.labels == ["id10001", "id10002", "id10003"]  # the test speakers are not trained on
    assert [len(task.splits[s]) for s in ("train", "dev", "test")] == [6, 6, 4]
    test = task.split("test")
    assert [(test[a].id, test[b].id, same) for a, b, same in task.trials["test"]] == [
        ("audio/test/wav/id10270/vidT/00001.wav", "audio/test/wav/id10270/vidT/00002.wav", True),
        ("audio/test/wav/id10270/vidT/00001.wav", "audio/test/wav/id10271/vidT/00001.wav", False),
        ("audio/test/wav/id10271/vidT/00002.wav", "audio/test/wav/id10271/vidT/00001.wav", True),
    ]
    dev = task.split("dev")  # each dev clip: one same-speaker and one different-speaker partner
    assert len(task.trials["dev"]) == 12 and sum(same for _, _, same in task.trials["dev"]) == 6
    for a, b, same in task.trials["dev"]:
        assert a != b and same == (dev[a].target == dev[b].target)


def test_voxceleb1_asv_missing_trials(tmp_path, voxceleb_asv):
    (voxceleb_asv / "veri_test2.txt").rename(tmp_path / "trials.txt")
    with pytest.raises(SpeechFTError, match=r"veri_test2.txt: not found; put VoxCeleb1's trial list"):
        prepare_corpus("voxceleb1-asv", voxceleb_asv, tmp_path / "asv")
    assert load_task(prepare_corpus("voxceleb1-asv", voxceleb_asv, tmp_path / "asv", trials=tmp_path / "trials.txt"))


# ---------------------------------------------------------------------------------------
# QUESST 2014 (SUPERB QbE): the quesst14Database layout, English entries only
# ---------------------------------------------------------------------------------------
@pytest.fixture
def quesst(tmp_path):
    root = tmp_path / "quesst14Database"
    docs = {"quesst14_00001": "nnenglish", "quesst14_00002": "nnenglish", "quesst14_00003": "czech"}
    queries = {
        "dev": {"quesst14_dev_0001": "nnenglish", "quesst14_dev_0002": "basque"},
        "eval": {"quesst14_eval_0001": "nnenglish", "quesst14_eval_0002": "nnenglish"},
    }
    for k, name in enumerate(docs):
        write(root / "Audio" / f"{name}.wav", 0.6, seed=k)
    for split, qs in queries.items():
        for k, name in enumerate(qs):
            write(root / f"{split}_queries" / f"{name}.wav", 0.3, seed=10 + k)
    scoring = root / "scoring"
    scoring.mkdir(parents=True)
    (scoring / "language_key_utterances.lst").write_text(
        "".join(f"quesst14Database/Audio/{n}.wav {lang}\n" for n, lang in docs.items())
    )
    for split, qs in queries.items():
        lst = "".join(f"quesst14Database/{split}_queries/{n}.wav {lang}\n" for n, lang in qs.items())
        (scoring / f"language_key_{split}.lst").write_text(lst)
    rttm = {
        "dev": ["quesst14_00002 1 0.10 0.30 quesst14_dev_0001", "quesst14_00003 1 0.1 0.3 quesst14_dev_0001"],
        "eval": ["quesst14_00001 1 0.20 0.25 quesst14_eval_0002"],
    }
    for split, lines in rttm.items():
        gt = scoring / f"groundtruth_quesst14_{split}"
        gt.mkdir()
        (gt / f"quesst14_{split}.rttm").write_text("".join(f"LEXEME {x} lex <NA> 1.0\n" for x in lines))
    return root


def test_quesst14_qbe(tmp_path, quesst):
    task = load_task(prepare_corpus("quesst14-qbe", quesst, tmp_path / "qbe"))
    assert task.type == "qbe" and task.name == "qbe" and task.split("train") == []
    roles = {s: sorted((Path(e.id).stem, e.target) for e in task.split(s)) for s in ("dev", "test")}
    assert roles["dev"] == [
        ("quesst14_00001", "document"),
        ("quesst14_00002", "document"),
        ("quesst14_dev_0001", "query"),
    ]
    assert [x[1] for x in roles["test"]].count("query") == 2  # basque and czech entries left out
    hits = {
        s: [(Path(task.split(s)[q].id).stem, Path(task.split(s)[d].id).stem) for q, d, o in task.trials[s] if o]
        for s in ("dev", "test")
    }
    assert hits == {
        "dev": [("quesst14_dev_0001", "quesst14_00002")],
        "test": [("quesst14_eval_0002", "quesst14_00001")],
    }
    assert len(task.trials["test"]) == 2 * 2


# ---------------------------------------------------------------------------------------
# Libri2Mix (SUPERB SD): LibriMix's wav16k/max layout, metadata CSVs, mix_both mixtures
# ---------------------------------------------------------------------------------------
@pytest.fixture
def librimix(tmp_path):
    root = tmp_path / "LibriMix"
    base = root / "Libri2Mix" / "wav16k" / "max"
    (base / "metadata").mkdir(parents=True)
    header = "mixture_ID,mixture_path,source_1_path,source_2_path,noise_path,length\n"
    for k, name in enumerate(("train-100", "dev", "test")):
        lines = []
        for j, (a, b, la, lb) in enumerate([(f"103-1240-000{k}", f"1034-121119-00{k}{k}", 0.5, 0.3)]):
            mix_id = f"{a}_{b}"
            s1, s2 = np.zeros(int(la * SR), np.float32), np.zeros(int(la * SR), np.float32)
            s1[:] = wav(la, seed=j)
            s2[: int(lb * SR)] = wav(lb, seed=j + 1)  # max mode: the shorter source padded with silence
            for folder, x in (("s1", s1), ("s2", s2), ("mix_both", s1 + s2)):
                (base / name / folder).mkdir(parents=True, exist_ok=True)
                sf.write(str(base / name / folder / f"{mix_id}.wav"), x, SR)
            lines.append(f"{mix_id},/x/{name}/mix_both/{mix_id}.wav,/x/s1.wav,/x/s2.wav,/x/n.wav,{len(s1)}\n")
        (base / "metadata" / f"mixture_{name}_mix_both.csv").write_text(header + "".join(lines))
    return root


def test_librimix_sd(tmp_path, librimix):
    task = load_task(prepare_corpus("librimix-sd", librimix, tmp_path / "sd"))
    assert task.type == "diarization" and task.name == "sd" and task.metric == "der"
    (ex,) = task.split("dev")
    assert ex.id == "audio/dev/mix_both/103-1240-0001_1034-121119-0011.wav" and ex.duration == 0.5
    assert task.segments["dev"] == [[(0.0, 0.5, "103"), (0.0, 0.3, "1034")]]
    assert (tmp_path / "sd" / "test.rttm").read_text().startswith("SPEAKER 103-1240-0002_1034-121119-0022 1 0.000")
    (librimix / "Libri2Mix" / "wav16k" / "max" / "dev" / "s2" / "103-1240-0001_1034-121119-0011.wav").unlink()
    with pytest.raises(SpeechFTError, match="s2/103-1240-0001_1034-121119-0011.wav: not found; expected source 2"):
        prepare_corpus("librimix-sd", librimix, tmp_path / "sd2")
    assert not (tmp_path / "sd2").exists()
