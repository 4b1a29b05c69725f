"""The one TSV manifest reader: task-folder manifests and audio lists (`--audio LIST`) share its rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tone

from speechft.data.audio import write_audio
from speechft.data.manifest import AudioItem, read_audio_list, read_manifest
from speechft.errors import SpeechFTError


@pytest.fixture
def clips(tmp_path) -> Path:
    """A folder with clips/0.wav .. clips/3.wav (0.5 s each) beside which manifests are written."""
    (tmp_path / "clips").mkdir()
    for i in range(4):
        write_audio(tmp_path / "clips" / f"{i}.wav", tone(300 + 100 * i, 0.5, seed=i))
    return tmp_path


def manifest(root: Path, *lines: str, name: str = "audio.tsv") -> Path:
    path = root / name
    path.write_text("\n".join(lines) + "\n")
    return path


def one_line_error(fn, *needles):
    with pytest.raises(SpeechFTError) as e:
        fn()
    msg = str(e.value)
    assert len(msg.splitlines()) == 1, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


# ---- audio lists -------------------------------------------------------------------------------------------
def test_audio_list_with_only_a_path_column_resolves_against_its_folder(clips):
    """analyze --audio: relative paths, durations left for later (None) unless asked for."""
    path = manifest(clips, "path", *(f"clips/{i}.wav" for i in range(4)))
    items = read_audio_list(path)
    assert [i.id for i in items] == [f"clips/{i}.wav" for i in range(4)]
    assert all(isinstance(i, AudioItem) and i.duration is None for i in items)
    rid, p, d = items[2]  # analyze unpacks the items as tuples
    assert p == clips / "clips" / "2.wav" and p.is_file() and d is None
    with_durations = read_audio_list(path, durations=True)  # pretrain --audio: every clip has a duration
    assert [round(i.duration, 3) for i in with_durations] == [0.5] * 4


def test_audio_list_durations_given_and_absolute_paths(clips):
    absolute = clips / "clips" / "3.wav"
    path = manifest(clips, "path\tduration\tnote", "clips/0.wav\t0.7\tx", f"{absolute}\t1.25\ty")
    items = read_audio_list(path, durations=True)
    assert [(i.id, i.path, i.duration) for i in items] == [
        ("clips/0.wav", clips / "clips" / "0.wav", 0.7),  # the manifest's duration wins over the header's
        (str(absolute), absolute, 1.25),  # an audio list may point anywhere
    ]


@pytest.mark.parametrize(
    "lines, needles",
    [
        (["file\tduration", "x.wav\t1.0"], ["missing column(s) path", "needs a header row with a 'path' column"]),
        (["path", "missing.wav"], ["line 2: audio file 'missing.wav' not found"]),
        (["path"], ["the audio list has no examples"]),
        (["path", "clips/0.wav", "clips/0.wav"], ["line 3: path 'clips/0.wav' repeats line 2"]),
        (["path\tduration", "clips/0.wav\tsoon"], ["line 2: duration 'soon' is not a positive number"]),
        (["path\tduration", "clips/0.wav\t-1"], ["line 2: duration '-1' is not a positive number"]),
        (["path\tduration", "clips/0.wav"], ["line 2: 1 fields, header has 2"]),
        (["path\tduration", "\t1.0"], ["line 2: empty path"]),
    ],
)
def test_bad_audio_lists_are_one_line_errors(clips, lines, needles):
    path = manifest(clips, *lines)
    one_line_error(lambda: read_audio_list(path), str(path), *needles)


def test_audio_list_that_is_missing_or_not_text(clips):
    one_line_error(lambda: read_audio_list(clips / "nowhere.tsv"), "nowhere.tsv: audio list not found")
    bad = clips / "bin.tsv"
    bad.write_bytes(b"path\n\xff\xfe")
    one_line_error(lambda: read_audio_list(bad), "bin.tsv: not UTF-8 text (byte 5)")
    bad.write_bytes(b"path\nclips/0.wav\x00\n")
    one_line_error(lambda: read_audio_list(bad), "contains a NUL byte (at character 16)")
    empty = manifest(clips, "", name="empty.tsv")
    one_line_error(lambda: read_audio_list(empty), "empty.tsv: empty", "'path' column")


def test_audio_list_without_a_readable_header_duration(clips):
    (clips / "clips" / "noise.wav").write_bytes(b"RIFF not really a wav file")
    path = manifest(clips, "path", "clips/0.wav", "clips/noise.wav")
    assert len(read_audio_list(path)) == 2  # durations not asked for: the header is not read
    one_line_error(lambda: read_audio_list(path, durations=True), "line 3: no positive duration", "clips/noise.wav")


# ---- the general reader ------------------------------------------------------------------------------------
def test_errors_name_real_line_numbers_and_count_the_rest(clips):
    """Blank lines are skipped but still counted, so 'line N' is the line an editor shows."""
    path = manifest(clips, "path\tduration", "", "clips/0.wav\t0", "", "a.wav\t1", "b.wav\t1", "c.wav\t1")
    msg = one_line_error(lambda: read_manifest(path, ("path", "duration")), "(and 1 more)")
    assert msg.index("line 3: duration '0'") < msg.index("line 5: audio file 'a.wav'") < msg.index("line 6:")


def test_required_columns_outside_paths_and_the_callers_check(clips):
    path = manifest(clips, "path\tduration\tlabel", "clips/0.wav\t0.5\tyes", "clips/1.wav\t0.5\tno")
    one_line_error(
        lambda: read_manifest(path, ("path", "duration", "speaker"), hint="a task needs a speaker"),
        "missing column(s) speaker in header ['path', 'duration', 'label']; a task needs a speaker",
    )

    def only_yes(row):
        return None if row.columns["label"] == "yes" else f"label '{row.columns['label']}' is not yes"

    one_line_error(lambda: read_manifest(path, check=only_yes), "line 3: label 'no' is not yes")
    rows = read_manifest(path, ("duration", "label"))
    assert [(r.line, r.id, r.duration, r.columns["label"]) for r in rows] == [
        (2, "clips/0.wav", 0.5, "yes"),
        (3, "clips/1.wav", 0.5, "no"),
    ]
    for escaping in ("../x.wav", "/etc/hostname", "clips/../../x.wav"):
        bad = manifest(clips, "path", escaping, name="esc.tsv")
        one_line_error(lambda bad=bad: read_manifest(bad, outside="the folder (allow it)"), "points outside the folder")
    inside = manifest(clips, "path", "clips/../clips/1.wav", name="in.tsv")
    assert read_manifest(inside, outside="the folder")[0].path.is_file()  # '..' that stays inside is fine


def test_exactly_one_module_parses_tab_separated_manifests():
    """A TSV reader is a csv reader with a tab delimiter; corpora's comma-separated corpus files are not manifests."""
    package = Path(__file__).resolve().parents[1] / "speechft"
    readers = {
        p.relative_to(package).as_posix()
        for p in package.rglob("*.py")
        if 'delimiter="\\t"' in p.read_text(encoding="utf-8") or 'split("\\t")' in p.read_text(encoding="utf-8")
    }
    assert readers == {"data/manifest.py"}
