"""The `speechft` command: one thin subcommand per library module.

Each subcommand lives in the module that implements it, as two functions:
`add_arguments(parser)` and `main(args) -> int | None`. Only the chosen subcommand's
module is imported, so `speechft --help` is fast.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from .errors import SpeechFTError

# name -> (module implementing it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("speechft.demo", "the paper's main result in miniature, on the embedded default (Whisper tiny.en)"),
    "data": ("speechft.data.cli", "make task folders: `synth` (synthetic mini-SUPERB), `prepare` (real corpora)"),
    "encoder": ("speechft.encoders.cli", "encoder folders: `default`, `tiny`, `convert`, `info`, `export-whisper`"),
    "finetune": (
        "speechft.train",
        "fine-tune an encoder on task(s): stable | regular | l2sp | lora | dora | early-stop",
    ),
    "pretrain": ("speechft.pretrain", "continued pre-training (HuBERT-style masked-unit prediction) on new audio"),
    "merge": ("speechft.merge", "merge fine-tuned encoders into their pre-trained one (Speech-FT, TIES, DARE, ...)"),
    "sweep": ("speechft.sweep", "sweep the merge coefficient alpha: target metric and feature similarity"),
    "evaluate": ("speechft.probe", "SUPERB-style probing of frozen encoders on many tasks"),
    "analyze": ("speechft.analysis", "feature similarity (CKA) and weight distance to the pre-trained encoder"),
    "report": ("speechft.report", "tables and figures from results.json files"),
    "doctor": ("speechft.doctor", "check an encoder or task folder and report every problem at once"),
}


def module_exists(module: str) -> bool:
    """Whether a speechft module's file exists, without importing its package (find_spec would
    import speechft.encoders and so transformers just to print --help)."""
    from pathlib import Path

    parts = module.split(".")[1:]
    base = Path(__file__).parent.joinpath(*parts)
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its usage errors as one line (the CLI's contract for every error);
    `--help` still prints the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")

    def parse_known_args(self, args=None, namespace=None):
        parsed, rest = super().parse_known_args(args, namespace)
        # An empty value is never meant: it is an unset shell variable (`--out $OUT`), and as a path it would
        # silently mean the current folder.
        for a in self._actions:
            value = getattr(parsed, a.dest, None) if a.option_strings or a.nargs != 0 else None
            if a.type is None and a.nargs != 0 and (value == "" or (isinstance(value, list) and "" in value)):
                self.error(f"argument {'/'.join(a.option_strings) or a.metavar or a.dest}: an empty value")
        return parsed, rest


def available_commands() -> dict[str, tuple[str, str]]:
    """Every command; a command whose module is missing is a broken install, never silently dropped."""
    missing = [f"{n} ({v[0]})" for n, v in COMMANDS.items() if not module_exists(v[0])]
    if missing:
        raise SpeechFTError(f"this speechft install lacks the module of {', '.join(missing)}; reinstall speechft")
    return dict(COMMANDS)


# ---- argparse types: a bad value is a usage error naming the option -----------------------------------
def non_negative_int(text: str) -> int:
    """A seed or a count that may be 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative; give an integer >= 0")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give an integer >= 1")
    return value


def finite_float(text: str) -> float:
    import math

    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number > 0")
    return value


for _f, _name in ((non_negative_int, "integer"), (positive_int, "integer"), (finite_float, "number"),
                  (positive_float, "number")):  # fmt: skip
    _f.__name__ = _name  # argparse's "invalid integer value: 'x'" for text that is not a number at all


# ---- options every command spells the same way -------------------------------------------------------
def add_quiet_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", default=None, metavar="DEVICE", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)"
    )


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    from . import __version__

    parser = ArgumentParser(
        prog="speechft",
        description="Speech-FT: fine-tune speech encoders, merge them back with their pre-trained "
        "weights, and prove cross-task generalisation, SUPERB-style.",
    )
    parser.add_argument("--version", action="version", version=f"speechft {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in available_commands().items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def add_subcommands(
    parser: argparse.ArgumentParser, table: dict[str, tuple[str, str]], dest: str, chosen: str | None = None
) -> None:
    """Nested commands (`speechft data synth`, ...) use the same protocol one level down:
    `table` maps a name to (module, help); the module has add_arguments/main."""
    sub = parser.add_subparsers(dest=dest, metavar="SUBCOMMAND", required=True)
    for name, (module, help_) in table.items():
        if not module_exists(module):
            raise SpeechFTError(f"this speechft install lacks {module} (`{dest} {name}`); reinstall speechft")
        p = sub.add_parser(name, help=help_, description=help_)
        importlib.import_module(module).add_arguments(p)


def dispatch(args, table: dict[str, tuple[str, str]], dest: str) -> int | None:
    return importlib.import_module(table[getattr(args, dest)][0]).main(args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    debug = "--debug" in argv or os.environ.get("SPEECHFT_DEBUG") == "1"
    try:
        parser = build_parser(command if command in COMMANDS else None)
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return 0
        module = importlib.import_module(COMMANDS[args.command][0])
        rc = module.main(args)
        return int(rc or 0)
    except SystemExit as e:  # argparse: --help, --version, usage errors (already printed)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except SpeechFTError as e:
        if debug:
            raise
        _close_progress_bars()
        print(f"speechft: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if debug:
            raise
        if e.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return _unexpected(e)
        # A full disk outside speechft's atomic writers (which name their file themselves).
        _close_progress_bars()
        where = f" while writing {e.filename}" if e.filename else ""
        print(
            f"speechft: error: {os.strerror(e.errno).lower()}{where}; free some space or write to another folder, "
            "then rerun",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("speechft: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # an unexpected failure: one line, the traceback with --debug
        if debug:
            raise
        return _unexpected(e)


def _close_progress_bars() -> None:
    """A command that fails mid-way leaves its tqdm bar open, without a final newline; close it so
    the error starts on a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ()) or ()):
        try:
            bar.close()
        except Exception:
            pass


def _unexpected(e: BaseException) -> int:
    _close_progress_bars()
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    print(
        f"speechft: error: unexpected {type(e).__name__}: {msg} (rerun with --debug for the traceback)", file=sys.stderr
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
