"""Progress for people: a rich bar on a terminal, plain lines every few seconds elsewhere."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from rowprompt.jobs import JobProgress

PLAIN_INTERVAL_S = 5.0


class ProgressView:
    """Shows rows done/failed, tokens, cost so far and ETA, and one-line messages."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        quiet: bool = False,
        console: Console | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console or Console(file=stream or sys.stderr, highlight=False)
        self.stream = stream or self.console.file
        self.quiet = quiet
        self.live = self.console.is_terminal and not quiet
        self._clock = clock
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last_plain = -math.inf
        self._last: JobProgress | None = None
        self._first: tuple[float, int] | None = None
        self._stats_line = ""
        self._printed: list[str] = []

    def __enter__(self) -> ProgressView:
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]rows"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
                get_time=self._clock,
            )
            self._progress.start()
            self._task = self._progress.add_task("rows", total=None, detail="")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
        elif self._last is not None and not self.quiet:
            self._plain(self._last)

    def update(self, progress: JobProgress) -> None:
        """A new count of the job's rows."""
        self._last = progress
        if self._first is None:
            self._first = (self._clock(), progress.finished)
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task,
                total=progress.total,
                completed=progress.finished,
                detail=_detail(progress),
            )
        elif not self.quiet and self._clock() - self._last_plain >= PLAIN_INTERVAL_S:
            self._plain(progress)

    def eta_s(self, progress: JobProgress) -> float | None:
        """Seconds left at the pace rows have finished since the first count; None before
        any row finished here, or when none is left."""
        if self._first is None:
            return None
        started, finished_then = self._first
        elapsed = self._clock() - started
        finished = progress.finished - finished_then
        left = progress.total - progress.finished
        if left <= 0 or finished <= 0 or elapsed <= 0:
            return None
        return left * elapsed / finished

    def _plain(self, progress: JobProgress) -> None:
        self._last_plain = self._clock()
        eta = self.eta_s(progress)
        lines = [f"rate: {self._stats_line}"] if self._stats_line else []
        lines.append(
            f"progress: {progress.finished}/{progress.total} rows, {_detail(progress)}"
            + (f", ETA {_duration(eta)}" if eta is not None else "")
        )
        if lines == self._printed:
            return  # the closing lines, when nothing moved since the last ones
        self._printed = lines
        print("\n".join(lines), file=self.stream, flush=True)

    def stats(self, stats: Any) -> None:
        """Real-time engine figures: rates against the limits, 429s, retries, ETA."""
        line = stats.line() if hasattr(stats, "line") else str(stats)
        self._stats_line = line
        if self._progress is not None and self._task is not None and self._last is not None:
            self._progress.update(self._task, detail=f"{_detail(self._last)} · {line}")

    def message(self, text: str) -> None:
        """A one-line message above the bar."""
        if self.quiet:
            return
        if self._progress is not None:
            self._progress.console.print(text, markup=False)
        else:
            print(text, file=self.stream, flush=True)


def _detail(p: JobProgress) -> str:
    return (
        f"{p.done} ok, {p.failed} failed, {p.in_flight} in flight, "
        f"{p.prompt_tokens + p.completion_tokens:,} tokens, ${p.cost_usd:.4f}"
    )


def _duration(seconds: float) -> str:
    """``45s``, ``2m05s``, ``3h07m``: short enough for a progress line."""
    whole = math.ceil(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
