"""`speechft data ...`: make task folders."""

from __future__ import annotations

from ..cli import add_subcommands, dispatch

SUBCOMMANDS = {
    "synth": ("speechft.data.synth", "generate the synthetic mini-SUPERB benchmark (speech synthesis, offline)"),
    "prepare": ("speechft.data.prepare", "turn a real corpus (LibriSpeech, VoxCeleb1, ...) into a task folder"),
}


def add_arguments(parser):
    add_subcommands(parser, SUBCOMMANDS, "data_command")


def main(args):
    return dispatch(args, SUBCOMMANDS, "data_command")
