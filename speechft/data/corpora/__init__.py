"""Readers for the real corpora behind the paper's tasks (used by `speechft data prepare`).

Each reader takes the corpus root and a staging folder and returns a `Prepared`: the
task.yaml spec, the rows of train/dev/test, and where the audio lives. Two ways of
holding audio, chosen per corpus:

- in place: the corpus folder is linked as `audio` inside the task folder (an absolute
  symlink) and manifests say `audio/<path inside the corpus>`. Nothing is copied; moving
  the corpus breaks the link (re-run prepare). Used for LibriSpeech, VoxCeleb1, IEMOCAP,
  Speech Commands, Fluent Speech Commands and AISHELL-3, whose files are already one
  utterance each.
- generated: audio that does not exist as files is written as 16-bit wav into the task
  folder itself: TED-LIUM 3 segments (cut from the talk-long .sph files by the .stm
  times) and the Speech Commands `_silence_` class (1-s slices of `_background_noise_`).

Task names are the keys of SUPERB score configs (speechft/configs/superb_paper.yaml: pr, asr,
sid, er, ks, ic, sf, asv, qbe), so `speechft evaluate` scores the folders without renaming; the corpus
and options are recorded under `source` in task.yaml.

Every problem with the corpus is one `SpeechFTError` naming the file that was expected.
The splits and label rules follow s3prl's SUPERB recipes and the Speech-FT reference code;
where a reader deviates (stated in each reader and in the folder's README.md) it is to
be deterministic across machines.

Layout: `transcribed` (LibriSpeech, TED-LIUM 3, AISHELL-3), `labelled` (VoxCeleb1, IEMOCAP,
Speech Commands, Fluent Speech Commands), `slu` (Audio SNIPS), `verification` (VoxCeleb1
trials), `qbe` (QUESST 2014) and `diarization` (Libri2Mix) hold the readers, `common` what they share;
this module is the registry `speechft data prepare` chooses from.
"""

from __future__ import annotations

from collections.abc import Callable

from ...errors import SpeechFTError
from .common import Prepared, progress_bars
from .diarization import librimix
from .labelled import fluent, iemocap, speech_commands, voxceleb1
from .qbe import quesst14
from .slu import audio_snips
from .transcribed import aishell3, librispeech, tedlium3
from .verification import voxceleb1_verification

__all__ = ["CORPORA", "Prepared", "corpus_reader", "progress_bars"]


# name -> (reader, options it accepts, one-line description)
CORPORA: dict[str, tuple[Callable[..., Prepared], tuple[str, ...], str]] = {
    "librispeech-pr": (
        lambda root, stage, **kw: librispeech(root, stage, "pr", **kw),
        ("lexicon", "phone_csv", "sets", "skip_oov"),
        "LibriSpeech phoneme recognition (SUPERB PR)",
    ),
    "librispeech-asr": (
        lambda root, stage, **kw: librispeech(root, stage, "asr", **kw),
        ("sets",),
        "LibriSpeech character ASR",
    ),
    "voxceleb1-sid": (voxceleb1, ("split_file",), "VoxCeleb1 speaker identification (SUPERB SID)"),
    "iemocap-er": (iemocap, ("fold", "dev_fraction"), "IEMOCAP 4-class emotion recognition (SUPERB ER)"),
    "speechcommands-ks": (speech_commands, ("test_root",), "Speech Commands v0.01 keyword spotting (SUPERB KS)"),
    "fluent-ic": (fluent, (), "Fluent Speech Commands intent classification (SUPERB IC)"),
    "tedlium3-asr": (tedlium3, ("hours", "min_seconds", "max_seconds"), "TED-LIUM 3 ASR, the paper's 10 h subset"),
    "voxceleb1-asv": (
        voxceleb1_verification,
        ("split_file", "trials"),
        "VoxCeleb1 speaker verification, veri_test2 trials (SUPERB ASV)",
    ),
    "quesst14-qbe": (quesst14, (), "QUESST 2014 English query by example (SUPERB QbE)"),
    "librimix-sd": (librimix, (), "Libri2Mix 16 kHz max speaker diarization (SUPERB SD)"),
    "snips-sf": (audio_snips, (), "Audio SNIPS slot filling (SUPERB SF)"),
    "aishell3": (aishell3, ("dev_fraction",), "AISHELL-3 Mandarin: pre-training audio + character transcripts"),
}


def corpus_reader(name: str):
    if name not in CORPORA:
        raise SpeechFTError(f"unknown corpus '{name}'; choose one of {', '.join(CORPORA)}")
    return CORPORA[name]
