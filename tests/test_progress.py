"""What a person sees while a job runs: a rich bar at a terminal, plain lines elsewhere.

Both show rows done and failed, tokens, cost so far and the time left; batch status messages
appear as their own lines. A fake clock makes the time left exact.
"""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from rowprompt.jobs import JobProgress
from rowprompt.progress import PLAIN_INTERVAL_S, ProgressView

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def counts(done: int, failed: int = 0, total: int = 10) -> JobProgress:
    finished = done + failed
    return JobProgress(
        total=total,
        pending=total - finished,
        done=done,
        failed=failed,
        prompt_tokens=100 * finished,
        completion_tokens=5 * finished,
        cost_usd=0.0125 * finished,
    )


def test_a_terminal_gets_a_bar_with_counts_tokens_cost_and_time_left() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, color_system=None)
    clock = Clock()
    with ProgressView(console=console, clock=clock) as view:
        assert view.live
        view.update(counts(1))
        view.message("batch batch_abc: in_progress (1/10 done)")
        clock.now += 10.0
        view.update(counts(2, failed=1))
    shown = ANSI.sub("", out.getvalue())
    # The message is a line of its own, not part of the bar.
    assert "batch batch_abc: in_progress (1/10 done)\n" in shown
    final = [line for line in shown.splitlines() if line.startswith("rows")][-1]
    assert "3/10" in final
    assert "2 ok, 1 failed" in final
    assert "315 tokens" in final
    assert "$0.0375" in final
    # Two rows in 10 s, seven left: 35 s to go, after 10 s elapsed.
    assert "0:00:10" in final and "0:00:35" in final, final


def test_plain_lines_off_a_terminal_with_eta_and_messages() -> None:
    out = io.StringIO()
    clock = Clock()
    with ProgressView(out, clock=clock) as view:
        assert not view.live
        view.update(counts(1))
        clock.now += 1.0
        view.update(counts(2))  # within the interval: no line
        view.message("batch batch_abc: validating")
        clock.now += PLAIN_INTERVAL_S + 4.0  # 10 s after the first count
        view.update(counts(3))
        clock.now += 1.0
        view.update(counts(10))
    lines = out.getvalue().splitlines()
    assert lines == [
        "progress: 1/10 rows, 1 ok, 0 failed, 0 in flight, 105 tokens, $0.0125",
        "batch batch_abc: validating",
        # Two rows in 10 s since the first count, seven left: ETA 35 s.
        "progress: 3/10 rows, 3 ok, 0 failed, 0 in flight, 315 tokens, $0.0375, ETA 35s",
        # The last count is always shown when the view closes; nothing left, no ETA.
        "progress: 10/10 rows, 10 ok, 0 failed, 0 in flight, 1,050 tokens, $0.1250",
    ]


@pytest.mark.parametrize(
    ("total", "eta"),
    [(13, "ETA 17s"), (70, "ETA 1m52s"), (100_000, "ETA 46h17m")],
)
def test_plain_eta_reads_seconds_minutes_and_hours(total: int, eta: str) -> None:
    out = io.StringIO()
    clock = Clock()
    with ProgressView(out, clock=clock) as view:
        view.update(counts(0, total=total))
        clock.now += 5.0
        view.update(counts(3, total=total))  # 3 rows in 5 s: 0.6 rows a second
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # the closing line would say the same again: not printed
    assert lines[0].endswith(", $0.0000"), "no ETA before a row has finished"
    assert lines[1].endswith(f", {eta}"), lines[1]
    assert view.eta_s(counts(3, total=total)) == pytest.approx((total - 3) / 0.6)


def test_plain_lines_close_with_the_last_count_once() -> None:
    out = io.StringIO()
    clock = Clock()
    with ProgressView(out, clock=clock) as view:
        view.update(counts(0, total=10))
        clock.now += 1.0
        view.update(counts(4, total=10))  # within the interval: not printed yet
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "progress: 0/10 rows",
        "progress: 4/10 rows",  # said when the view closes, since it moved
    ]


def test_quiet_shows_nothing() -> None:
    out = io.StringIO()
    with ProgressView(out, quiet=True) as view:
        view.update(counts(5))
        view.message("batch batch_abc: completed")
    assert out.getvalue() == ""
