"""Progress: tqdm on a terminal, whole lines (no carriage returns) in a log."""

import io

from speechft.progress import LineBar, progress_bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_log_gets_whole_lines_and_the_end_state(monkeypatch):
    monkeypatch.setenv("SPEECHFT_PROGRESS_SECONDS", "3600")  # no line between the first and the last
    log = io.StringIO()
    bar = progress_bar(total=1000, desc="probe", file=log, leave=False)
    assert isinstance(bar, LineBar)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 2, lines  # the opening state and the end state (a leave=False bar included)
    assert "0/1000" in lines[0] and "1000/1000" in lines[1]
    bar.close()  # closing twice writes nothing more
    assert log.getvalue() == text


def test_log_lines_are_rate_limited_not_per_update(monkeypatch):
    monkeypatch.setenv("SPEECHFT_PROGRESS_SECONDS", "0")
    log = io.StringIO()
    for _ in progress_bar(range(5), file=log, desc="x", miniters=1):
        pass
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and lines[-1].startswith("x: 100%") and len(lines) <= 7


def test_terminal_gets_tqdm_redraws():
    tty = Terminal()
    bar = progress_bar(total=3, file=tty, mininterval=0)
    assert not isinstance(bar, LineBar)
    bar.update(3)
    bar.close()
    assert "\r" in tty.getvalue()


def test_disabled_bar_writes_nothing():
    log = io.StringIO()
    bar = progress_bar(total=3, file=log, disable=True)
    bar.update(3)
    bar.close()
    assert log.getvalue() == ""
