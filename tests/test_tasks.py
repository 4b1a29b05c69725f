"""Task folders and audio: validation errors name the file and the offending rows."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from speechft.data import load_audio, load_task
from speechft.data.audio import write_audio
from speechft.errors import SpeechFTError


def rewrite(path, old, new):
    path.write_text(path.read_text().replace(old, new))


def test_valid_folders_load(cls_task, ctc_task):
    t = load_task(cls_task)
    assert t.type == "classification" and t.labels == ["low", "high"]
    assert {len(t.split(s)) > 0 for s in ("train", "dev", "test")} == {True}
    assert t.split("train")[0].path.exists() and t.split("train")[0].speaker.startswith("spk")
    c = load_task(ctc_task)
    ex = c.split("train")[0]
    ids = c.encode(ex.target)
    assert min(ids) >= 1 and c.decode(ids) == ex.target  # 0 is reserved for the CTC blank
    assert c.num_outputs == len(c.labels) + 1


def test_char_tokenizer_round_trip(tmp_path):
    from speechft.data import write_task_folder

    write_audio(tmp_path / "a.wav", np.zeros(8000, np.float32))
    spec = {"name": "asr", "type": "ctc", "metric": "cer", "vocabulary": list("abc|"), "tokenizer": "char"}
    rows = [{"path": "../a.wav", "duration": 0.5, "transcript": "ab ca"}]
    spec["allow_outside_paths"] = True
    folder = write_task_folder(tmp_path / "t", spec, {"train": rows, "dev": rows, "test": rows})
    t = load_task(folder)
    assert t.tokens("ab ca") == ["a", "b", "|", "c", "a"]
    assert t.decode(t.encode("ab ca")) == "ab ca"


@pytest.mark.parametrize(
    "case, match",
    [
        ("no_yaml", "task.yaml: missing"),
        ("bad_type", "type 'regression' is not one of"),
        ("bad_metric", "metric 'wer' does not fit type classification"),
        ("missing_column", "missing column\\(s\\) label"),
        ("unknown_label", "line 2: label uses \\['medium'\\] not in"),
        ("missing_audio", "audio file 'audio/.*' not found"),
        ("empty_split", "the dev split has no examples"),
        ("duplicate", "repeats line 2"),
        ("escape", "points outside the task folder"),
        ("absolute", "points outside the task folder"),
        ("bad_duration", "duration 'abc' is not a positive number"),
        ("missing_split", "test.tsv: missing"),
        ("yaml_garbage", "not valid YAML"),
        ("field_count", "fields, header has"),
    ],
)
def test_broken_folder_errors(cls_task, case, match):
    y, tr = cls_task / "task.yaml", cls_task / "train.tsv"
    lines = tr.read_text().splitlines()
    if case == "no_yaml":
        y.unlink()
    elif case == "bad_type":
        rewrite(y, "type: classification", "type: regression")
    elif case == "bad_metric":
        rewrite(y, "metric: accuracy", "metric: wer")
    elif case == "missing_column":
        tr.write_text("\n".join(ln.rsplit("\t", 2)[0] if i == 0 else ln for i, ln in enumerate(lines)) + "\n")
        tr.write_text(tr.read_text().replace("path\tduration", "path\tduration\tlabelz", 1))
    elif case == "unknown_label":
        tr.write_text("\n".join([lines[0], lines[1].replace("\tlow\t", "\tmedium\t")] + lines[2:]) + "\n")
    elif case == "missing_audio":
        first = lines[1].split("\t")[0]
        (cls_task / first).unlink()
    elif case == "empty_split":
        (cls_task / "dev.tsv").write_text(lines[0] + "\n")
    elif case == "duplicate":
        tr.write_text("\n".join(lines + [lines[1]]) + "\n")
    elif case == "escape":
        tr.write_text("\n".join([lines[0], "../../etc/passwd\t1.0\tlow\tspk0"] + lines[2:]) + "\n")
    elif case == "absolute":
        tr.write_text("\n".join([lines[0], "/etc/passwd\t1.0\tlow\tspk0"] + lines[2:]) + "\n")
    elif case == "bad_duration":
        tr.write_text("\n".join([lines[0], lines[1].replace(lines[1].split("\t")[1], "abc")] + lines[2:]) + "\n")
    elif case == "missing_split":
        (cls_task / "test.tsv").unlink()
    elif case == "yaml_garbage":
        y.write_text("name: [unclosed\n")
    elif case == "field_count":
        tr.write_text("\n".join([lines[0], lines[1] + "\textra"] + lines[2:]) + "\n")
    with pytest.raises(SpeechFTError, match=match) as err:
        load_task(cls_task)
    assert "\n" not in str(err.value)
    assert str(cls_task) in str(err.value) or case == "no_yaml"


def test_error_names_first_rows_and_counts_more(cls_task):
    tr = cls_task / "train.tsv"
    lines = tr.read_text().splitlines()
    tr.write_text("\n".join([lines[0]] + [ln.replace("\tlow\t", "\tmid\t") for ln in lines[1:]]) + "\n")
    with pytest.raises(SpeechFTError, match=r"line 2: .*line 3: .*line 4: .*\(and \d+ more\)"):
        load_task(cls_task)


def test_audio_mono_downmix_and_resample(tmp_path):
    t = np.arange(8000) / 8000
    left = np.sin(2 * np.pi * 440 * t).astype(np.float32) * 0.5
    stereo = np.stack([left, -left * 0.0 + left], axis=1)
    sf.write(tmp_path / "s.wav", stereo, 8000)
    wav = load_audio(tmp_path / "s.wav")
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(len(wav) - 16000) <= 1  # 1 s at 16 kHz
    # A band-limited resampler keeps the 440 Hz tone's energy at 440 Hz.
    spec = np.abs(np.fft.rfft(wav))
    assert abs(np.argmax(spec) * 16000 / len(wav) - 440) < 3


@pytest.mark.parametrize(
    "case, match",
    [
        ("empty", "empty \\(0 samples\\)"),
        ("nan", "NaN or infinite"),
        ("corrupt", "cannot decode audio"),
        ("short", "shorter than the 25 ms minimum"),
        ("missing", "audio file not found"),
    ],
)
def test_bad_audio(tmp_path, case, match):
    p = tmp_path / "x.wav"
    if case == "empty":
        sf.write(p, np.zeros(0, np.float32), 16000)
    elif case == "nan":
        sf.write(p, np.full(1600, np.nan, np.float32), 16000, subtype="FLOAT")
    elif case == "corrupt":
        p.write_bytes(b"RIFF\x00\x00garbage" * 10)
    elif case == "short":
        sf.write(p, np.zeros(100, np.float32), 16000)
    with pytest.raises(SpeechFTError, match=match) as err:
        load_audio(p)
    assert str(p) in str(err.value)


def test_flac_and_ogg_decode(tmp_path):
    x = (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32)
    for ext in ("flac", "ogg"):
        sf.write(tmp_path / f"a.{ext}", x, 16000)
        assert len(load_audio(tmp_path / f"a.{ext}")) == 16000
