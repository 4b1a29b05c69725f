"""Progress bars: tqdm on a terminal, a line every so often everywhere else.

A tqdm bar redraws itself with carriage returns; written to a log file (`make demo > log`,
a SLURM job's output) that is thousands of redraws. When the stream is not a terminal, the
bar here prints one plain line per `SPEECHFT_PROGRESS_SECONDS` (default 30) and a last line
when it closes, so a log reads top to bottom. Every speechft bar comes from `progress_bar`.
"""

from __future__ import annotations

import os
import sys

from tqdm.std import tqdm as _std_tqdm

LINE_SECONDS = 30.0  # default seconds between two progress lines when not on a terminal


def line_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("SPEECHFT_PROGRESS_SECONDS", LINE_SECONDS)))
    except ValueError:
        return LINE_SECONDS


class LineBar(_std_tqdm):
    """tqdm that writes whole lines (no carriage returns), at most one per `mininterval` seconds."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("mininterval", line_seconds())
        kwargs["dynamic_ncols"] = False
        kwargs.setdefault("ncols", 100)
        kwargs.setdefault("ascii", True)
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):
        if self.disable:
            return True
        # tqdm's close() clears a leave=False bar with an empty message; a log keeps its last state instead.
        line = self.__str__() if not msg else msg
        self.fp.write(line.rstrip() + "\n")
        self.fp.flush()
        return True

    def close(self):
        # A log keeps the end state of every bar (even one a terminal would clear), as one last line.
        if getattr(self, "disable", True):
            return
        self._ema_dt = lambda: None  # the overall rate, as tqdm's own final display
        self.display()
        self.disable = True
        self._decr_instances(self)


def is_terminal(stream=None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable=None, **kwargs):
    """A tqdm bar (same arguments) that becomes line-based when its stream is not a terminal."""
    stream = kwargs.get("file") or sys.stderr
    if is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, **kwargs)
    return LineBar(iterable, **kwargs)


def write_above(message: str, file=None) -> None:
    """A line of its own, above any bar being drawn (tqdm.write)."""
    _std_tqdm.write(message, file=file or sys.stderr)
