"""Progress of a long command (train, eval, grade, export, merge, card, report): a rich bar with M/N, elapsed time
and ETA when stderr is a terminal (drawn through the command's stdout console when stdout is that terminal too);
plain lines on stderr when it is not (CI logs, pipes), at most one every SCIRL_PROGRESS_INTERVAL seconds (default
30) plus the first and the last, e.g.

    eval tiny_physics: 12/30 prompts (40%) elapsed 0:00:41 eta 0:01:01  acc 0.250

SCIRL_PROGRESS=0 turns it off; under torchrun (RANK > 0) only rank 0 shows it. Plain lines never go to stdout, so
the tables and lines a command prints there stay as they are."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Callable, Iterator, TextIO

from scirl.errors import ScirlError

ENV_ENABLE = "SCIRL_PROGRESS"
ENV_INTERVAL = "SCIRL_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0  # seconds between two plain lines


def enabled_by_env() -> bool:
    """False when SCIRL_PROGRESS is 0 / false / no / off, or in a rank other than 0 of a multi-process run."""
    value = os.environ.get(ENV_ENABLE, "1").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value not in ("", "1", "true", "yes", "on"):
        raise ScirlError(f"{ENV_ENABLE}={value!r}: use 1 (show progress) or 0 (none)")
    return os.environ.get("RANK", "0").strip() in ("", "0")


def interval_from_env() -> float:
    raw = os.environ.get(ENV_INTERVAL, "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses nan
        raise ScirlError(f"{ENV_INTERVAL}={raw!r}: must be a number of seconds >= 0 (0: a line per update)")
    return value


def check_env() -> None:
    """Refuse bad SCIRL_PROGRESS / SCIRL_PROGRESS_INTERVAL values (one line) before a command starts its work."""
    enabled_by_env()
    interval_from_env()


def clock_text(seconds: float | None) -> str:
    """0:01:01 (H:MM:SS, as rich shows it); '?' when unknown."""
    if seconds is None:
        return "?"
    s = int(max(0.0, seconds) + 0.5)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Bar:
    """The handle `progress()` yields: `advance(n)` or `update(completed)`, with an optional `info` text (the
    current metric or stage) shown after the counts. `live` is True while a rich bar is drawn on the terminal;
    `console` is then the one to print through (so the text lands above the bar)."""

    def __init__(self, total: int | None, description: str, unit: str, initial: int, info: str):
        self.total, self.description, self.unit = total, description, unit
        self.completed, self.info = initial, info
        self.live = False
        self.console = None

    def update(self, completed: int | None = None, *, info: str | None = None) -> None:
        if completed is not None:
            self.completed = completed
        if info is not None:
            self.info = info
        self._show()

    def advance(self, n: int = 1, *, info: str | None = None) -> None:
        self.update(self.completed + n, info=info)

    def _show(self) -> None:  # what each mode draws; nothing when disabled
        pass

    def _close(self, ok: bool) -> None:
        pass


class _RichBar(Bar):
    def __init__(self, console, *args):
        super().__init__(*args)
        from rich.markup import escape
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        from rich.table import Column
        from rich.text import Text

        class InfoColumn(ProgressColumn):  # last and the only one that shrinks: a narrow terminal cuts the info
            def render(self, task):
                return Text(task.fields["info"], no_wrap=True, overflow="ellipsis")

        self.progress = Progress(
            TextColumn(f"[bold]{escape(self.description)}"), BarColumn(bar_width=24), MofNCompleteColumn(),
            TextColumn(escape(self.unit)), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            InfoColumn(table_column=Column(no_wrap=False)), console=console,
            redirect_stdout=sys.stdout.isatty(),  # a piped stdout keeps its lines; a shared terminal gets them above
        )
        self.task = self.progress.add_task(self.description, total=self.total, completed=self.completed,
                                           info=self.info)
        self.progress.start()
        self.live, self.console = True, console

    def _show(self) -> None:
        self.progress.update(self.task, completed=self.completed, info=self.info)

    def _close(self, ok: bool) -> None:
        self.progress.stop()
        self.live = False


class _PlainBar(Bar):
    def __init__(self, stream: TextIO | None, interval: float, clock: Callable[[], float], *args):
        super().__init__(*args)
        self.stream, self.interval, self.clock = stream, interval, clock
        self.start = clock()
        self.initial = self.completed
        self.line(self.start)  # the first line: the command has started

    def line(self, now: float | None = None) -> str:
        """Write (and return) one plain progress line for the current state."""
        now = self.clock() if now is None else now
        self.last = now
        elapsed = now - self.start
        done = self.completed - self.initial  # a resumed run's rate counts this session's work only
        parts = [f"{self.description}: {self.completed}"]
        if self.total:
            pct = 100.0 * self.completed / self.total
            eta = (self.total - self.completed) * elapsed / done if done > 0 else None
            parts[0] += f"/{self.total} {self.unit} ({pct:.0f}%) elapsed {clock_text(elapsed)} eta {clock_text(eta)}"
        else:
            parts[0] += f" {self.unit} elapsed {clock_text(elapsed)}"
        if self.info:
            parts.append(self.info)
        text = "  ".join(parts)
        stream = self.stream or sys.stderr  # looked up now: pytest's capture replaces sys.stderr
        print(text, file=stream, flush=True)
        return text

    def _show(self) -> None:
        now = self.clock()
        finished = self.total is not None and self.completed >= self.total
        if not finished and now - self.last >= self.interval:
            self.line(now)

    def _close(self, ok: bool) -> None:
        if ok:  # the last line; a failure prints its own one-line error instead
            self.line()


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no stream, or a closed one
        return False


def _terminal_console():
    """None when stderr is no terminal (a real one: FORCE_COLOR in a CI log does not count); else rich's stderr
    console, or, when stdout is the terminal too, the command's own stdout console, so that what the command prints
    while the bar is live lands above the bar (two consoles would tear it)."""
    if not _isatty(sys.stderr):
        return None
    from rich.console import Console

    if _isatty(sys.stdout):
        from scirl.log.console import console as out

        return out
    return Console(stderr=True)


@contextlib.contextmanager
def progress(total: int | None, description: str, unit: str = "items", *, initial: int = 0, info: str = "",
             enabled: bool = True, console=None, stream: TextIO | None = None, interval: float | None = None,
             clock: Callable[[], float] = time.monotonic) -> Iterator[Bar]:
    """Show the progress of `total` units of work (None: unknown) while the block runs; yields a Bar to advance.

    A rich bar when stderr is a terminal (or on `console`, when given, if it is one), plain lines on `stream`
    (default sys.stderr) otherwise, nothing when `enabled` is False or the environment says so (module docstring).
    `interval` (default SCIRL_PROGRESS_INTERVAL) and `clock` are there for tests."""
    args = (total, description, unit, initial, info)
    if not (enabled and enabled_by_env()):
        bar: Bar = Bar(*args)
    else:
        if console is None and stream is None:
            console = _terminal_console()  # None: plain lines
        if console is not None and console.is_terminal:
            bar = _RichBar(console, *args)
        else:
            bar = _PlainBar(stream, interval_from_env() if interval is None else interval, clock, *args)
    ok = False
    try:
        yield bar
        ok = True
    finally:
        bar._close(ok)

