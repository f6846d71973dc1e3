"""The planner's judgement, as pure functions: modes, deadlines, and when to fall back."""

from __future__ import annotations

import datetime as dt

import pytest

from rowprompt.engine.planner import (
    DEFAULT_BATCH_TURNAROUND_S,
    BatchHistory,
    choose_mode,
    must_fall_back,
    parse_deadline,
    realtime_rows_per_min,
)
from rowprompt.errors import UsageError

NOW = 1_800_000_000.0
NONE = BatchHistory(0, None, None)
FAST = BatchHistory(5, 60.0, 120.0)


@pytest.mark.parametrize(
    ("text", "seconds"), [("2h", 7200), ("90m", 5400), ("1h30m", 5400), ("45s", 45), ("1d", 86400)]
)
def test_deadlines_as_durations(text: str, seconds: int) -> None:
    assert parse_deadline(text, now=NOW) == NOW + seconds


def test_deadlines_as_iso_times() -> None:
    when = dt.datetime.fromtimestamp(NOW + 3600, tz=dt.UTC)
    assert parse_deadline(when.isoformat(), now=NOW) == pytest.approx(NOW + 3600)
    with pytest.raises(UsageError):
        parse_deadline(dt.datetime.fromtimestamp(NOW - 5, tz=dt.UTC).isoformat(), now=NOW)
    with pytest.raises(UsageError):
        parse_deadline("soon", now=NOW)


def plan(rows: int, **kw: object) -> str:
    settings: dict[str, object] = {
        "requested": "auto",
        "rows": rows,
        "realtime_minutes": rows / 500,
        "cost_realtime": rows * 0.001,
        "cost_batch": rows * 0.0005,
        "deadline": None,
        "budget": None,
        "history": NONE,
        "now": NOW,
    }
    settings.update(kw)
    return choose_mode(**settings).mode  # type: ignore[arg-type]


def test_auto_small_jobs_go_real_time_large_jobs_with_slack_go_batch() -> None:
    assert plan(100) == "realtime"
    assert plan(1_000_000) == "batch"
    assert plan(500) == "hybrid"


def test_auto_urgent_jobs_go_real_time_when_the_limit_allows() -> None:
    # One hour to go, no batch history (assume 24 h): real time if it fits.
    assert plan(10_000, deadline=NOW + 3600, realtime_minutes=20) == "realtime"
    assert plan(10_000, deadline=NOW + 3600, realtime_minutes=200) == "hybrid"
    # With history showing batches take two minutes, the same deadline leaves slack.
    assert plan(10_000, deadline=NOW + 3600, history=FAST) == "batch"


def test_auto_respects_the_budget() -> None:
    assert plan(100, budget=0.07) == "batch"


def test_the_users_mode_wins() -> None:
    assert plan(1_000_000, requested="realtime") == "realtime"


def test_fallback_timing() -> None:
    common = {"rows_per_min": 600.0, "history": NONE, "batch_started": NOW}
    # 100 rows take 10 s at 600/min: with an hour left, no fallback... unless the batch
    # cannot be expected back in time (no history: 24 h).
    assert must_fall_back(now=NOW, deadline=NOW + 3600, rows_left=100, **common)  # type: ignore[arg-type]
    fast = {**common, "history": FAST}
    assert not must_fall_back(now=NOW, deadline=NOW + 3600, rows_left=100, **fast)  # type: ignore[arg-type]
    # Close to the deadline, fall back whatever the history says.
    assert must_fall_back(now=NOW, deadline=NOW + 40, rows_left=100, **fast)  # type: ignore[arg-type]
    assert not must_fall_back(now=NOW, deadline=NOW + 40, rows_left=0, **fast)  # type: ignore[arg-type]
    assert DEFAULT_BATCH_TURNAROUND_S == 86400


def test_realtime_throughput_from_the_limits() -> None:
    assert realtime_rows_per_min(600, None, 100) == 600
    assert realtime_rows_per_min(600, 30_000, 100) == 300
    assert realtime_rows_per_min(None, None, 100) > 0
