"""Libri2Mix speaker diarization (SUPERB SD), laid out as LibriMix's generator writes it.

    ROOT/Libri2Mix/wav16k/max/{train-100,dev,test}/mix_both/MIXTURE_ID.wav
    ROOT/Libri2Mix/wav16k/max/{split}/s1/MIXTURE_ID.wav, s2/MIXTURE_ID.wav    the two sources, as mixed
    ROOT/Libri2Mix/wav16k/max/metadata/mixture_{split}_mix_both.csv
        columns mixture_ID, mixture_path, source_1_path, source_2_path, noise_path, length

(github.com/JorisCos/LibriMix: generate_librimix.sh, scripts/create_librimix_from_metadata.py; ROOT may
also be the Libri2Mix folder itself.) SUPERB's SD uses Libri2Mix 16 kHz, mode `max`, train-100 / dev /
test (s3prl downstream/diarization, whose data preparation writes Kaldi-style segments and an RTTM per
split). A mixture ID is the two LibriSpeech utterance IDs joined by `_`; the speaker of source k is the
first `-` field of its utterance ID. In mode max both sources start at the mixture's start and the
shorter is padded with silence, so each speaker's reference segment runs from 0 to the end of their
source's speech (the source trimmed of trailing near-silence). Deviation: s3prl's RTTM comes from
LibriSpeech word alignments, splitting a source at its internal pauses; here each source is one segment.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ...errors import SpeechFTError
from ..audio import SAMPLE_RATE, load_audio
from ..manifest import read_text_file
from .common import Prepared, need_path

SPLITS = {"train": "train-100", "dev": "dev", "test": "test"}
SILENCE = 1e-3  # |amplitude| below this counts as the source's padding


def speech_end(wav: np.ndarray) -> float:
    """Seconds up to the last sample above SILENCE (0 for a silent source)."""
    loud = np.flatnonzero(np.abs(wav) > SILENCE)
    return 0.0 if loud.size == 0 else (int(loud[-1]) + 1) / SAMPLE_RATE


def _base(root: Path) -> Path:
    for base in (root / "Libri2Mix" / "wav16k" / "max", root / "wav16k" / "max", root):
        if (base / "metadata").is_dir():
            return base
    raise SpeechFTError(f"{root}: no Libri2Mix/wav16k/max/metadata inside; pass --root the LibriMix output folder")


def _mixtures(base: Path, name: str) -> list[dict]:
    csv_path = need_path(base / "metadata" / f"mixture_{name}_mix_both.csv", f"Libri2Mix's {name} metadata")
    rows = list(csv.DictReader(io.StringIO(read_text_file(csv_path))))
    missing = [c for c in ("mixture_ID", "length") if rows and c not in rows[0]]
    if missing or not rows:
        raise SpeechFTError(f"{csv_path}: needs a header with mixture_ID and length and at least one mixture")
    return rows


def librimix(root: Path, stage: Path) -> Prepared:
    base = _base(root)
    splits, notes = {}, []
    for split, name in SPLITS.items():
        rows, lines = [], []
        for m in _mixtures(base, name):
            mix_id = m["mixture_ID"]
            rel = Path(name) / "mix_both" / f"{mix_id}.wav"
            need_path(base / rel, f"the mixture listed in metadata/mixture_{name}_mix_both.csv")
            rows.append({"path": f"audio/{rel.as_posix()}", "duration": round(int(m["length"]) / SAMPLE_RATE, 4)})
            utts = mix_id.split("_")
            if len(utts) != 2:
                raise SpeechFTError(f"{base / 'metadata'}: mixture_ID {mix_id} is not two utterance IDs joined by _")
            for k, utt in enumerate(utts, 1):
                src = need_path(base / name / f"s{k}" / f"{mix_id}.wav", f"source {k} of mixture {mix_id}")
                end = speech_end(load_audio(src))
                if end > 0:
                    lines.append(f"SPEAKER {mix_id} 1 0.000 {end:.3f} <NA> <NA> {utt.split('-')[0]} <NA> <NA>")
        splits[split] = rows
        (stage / f"{split}.rttm").write_text("\n".join(lines) + "\n")
    notes.append(
        "Libri2Mix wav16k/max mix_both as SUPERB SD (s3prl downstream/diarization): train-100 / dev / test; "
        "reference RTTM from the source files (one segment per speaker: 0 to the source's last non-silent "
        "sample), not s3prl's word-alignment RTTM; metric DER (frame-level, collar 0, overlap scored)."
    )
    spec = {"name": "sd", "type": "diarization", "metric": "der", "speakers": 2}
    return Prepared(spec, splits, {"audio": base}, notes)
