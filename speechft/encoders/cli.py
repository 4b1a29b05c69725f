"""`speechft encoder ...`: make, convert and inspect encoder folders."""

from __future__ import annotations

from ..cli import add_subcommands, dispatch

SUBCOMMANDS = {
    "default": ("speechft.encoders.default", "write the embedded default encoder (real Whisper tiny.en) to --out"),
    "tiny": ("speechft.encoders.tiny_cli", "write a small random-weight encoder of a family (tests, examples)"),
    "convert": ("speechft.encoders.convert", "convert an s3prl/fairseq checkpoint into an encoder folder"),
    "info": ("speechft.encoders.info_cli", "print an encoder folder's family, size and provenance"),
    "export-whisper": (
        "speechft.encoders.export_whisper",
        "a Whisper encoder folder + a Whisper model's decoder -> a WhisperForConditionalGeneration folder",
    ),
}


def add_arguments(parser):
    add_subcommands(parser, SUBCOMMANDS, "encoder_command")


def main(args):
    return dispatch(args, SUBCOMMANDS, "encoder_command")
