"""The planner's judgement: modes, deadlines, when to fall back, and its [planner] settings."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

import rowprompt
from rowprompt.config import load_settings
from rowprompt.engine.planner import (
    DEFAULT_BATCH_TURNAROUND_S,
    BatchHistory,
    Plan,
    PlannerSettings,
    choose_mode,
    fallback_wait_s,
    must_fall_back,
    parse_deadline,
    realtime_rows_per_min,
)
from rowprompt.errors import ConfigError, UsageError
from tests.helpers import run_cli

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


def decide(rows: int, **kw: object) -> Plan:
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
    return choose_mode(**settings)  # type: ignore[arg-type]


def plan(rows: int, **kw: object) -> str:
    return decide(rows, **kw).mode


def test_auto_small_jobs_go_real_time_large_jobs_with_slack_go_batch() -> None:
    assert plan(100) == "realtime"
    assert plan(1_000_000) == "batch"
    assert plan(500) == "hybrid"
    assert decide(100).reason == "realtime: a small job (100 rows <= 200)"


def test_auto_tries_batches_first_when_the_fallback_can_still_keep_the_deadline() -> None:
    # 20 min of real time, an hour to go, no history: batches get their chance at half the
    # price, real time takes over what is left 30.5 min (20 x 1.5 + 30 s) before the deadline.
    chosen = decide(10_000, deadline=NOW + 3600, realtime_minutes=20)
    assert chosen.mode == "batch" and chosen.warning is None
    assert "real time takes over what batches have not finished 30 min before" in chosen.reason
    # Half an hour to go: no room to try batches first, real time at once.
    urgent = decide(10_000, deadline=NOW + 1800, realtime_minutes=20)
    assert urgent.mode == "realtime" and "no time to try batches first" in urgent.reason
    # With history showing batches take two minutes, real time alone too slow: batch.
    assert plan(10_000, deadline=NOW + 3600, realtime_minutes=200, history=FAST) == "batch"


def test_a_24h_deadline_is_not_lost_to_the_24h_default_by_a_moment() -> None:
    # `--deadline 24h` is parsed a few ms before the planner compares it with 24 h.
    almost = NOW + 86400 - 0.005
    assert plan(10_000, deadline=almost, realtime_minutes=17) == "batch"
    # A million rows: real time needs 27.8 h, the batch window is the provider's 24 h promise.
    million = decide(1_000_000, deadline=almost, realtime_minutes=1667)
    assert million.mode == "batch" and million.warning is None
    # An hour less than the promise: no route can be counted on.
    assert plan(1_000_000, deadline=NOW + 23 * 3600, realtime_minutes=1667) == "hybrid"


def test_a_deadline_neither_route_can_meet_is_said_up_front_with_the_rates() -> None:
    # 1M rows in an hour at 600 rows/min, no history (a batch may take 24 h).
    chosen = decide(1_000_000, deadline=NOW + 3600, realtime_minutes=1_000_000 / 600)
    assert chosen.mode == "hybrid"
    assert chosen.warning is not None
    assert "needs 16,667 rows/min, the rate limit allows 600" in chosen.warning
    # Real time takes what it can finish with the fallback's safety: 600 x 59.5 min / 1.5.
    assert "real time takes the 23,800 rows it can finish by then" in chosen.warning
    # The same job with the user's mode gets the same warning; without limits, it says so.
    batch = decide(1_000_000, requested="batch", deadline=NOW + 3600, realtime_minutes=10_000)
    assert batch.mode == "batch" and batch.warning and "needs 16,667 rows/min" in batch.warning
    guessed = decide(1_000_000, deadline=NOW + 3600, realtime_minutes=10_000, limits_known=False)
    assert guessed.warning and "with no --rpm or --tpm, real time is assumed to do 100" in (
        guessed.warning
    )
    # A deadline the batches are expected to meet (fast history) warns of nothing.
    assert (
        decide(1_000_000, deadline=NOW + 3600, realtime_minutes=1667, history=FAST).warning is None
    )


def test_real_time_mode_warns_with_the_rows_per_minute_needed() -> None:
    slow = decide(200, requested="realtime", deadline=NOW + 60, realtime_minutes=200 / 60)
    assert slow.mode == "realtime"
    assert slow.warning == (
        "the deadline cannot be met: it needs 200 rows/min, the rate limit allows 60;"
        " the job will finish late"
    )
    assert decide(200, requested="realtime", deadline=NOW + 600, realtime_minutes=2).warning is None


def test_auto_respects_the_budget() -> None:
    assert plan(100, budget=0.07) == "batch"


def test_the_users_mode_wins() -> None:
    assert plan(1_000_000, requested="realtime") == "realtime"


def fall(
    rows: int,
    *,
    left: float,
    history: BatchHistory = NONE,
    since_start: float = 0.0,
    speed: float = 600.0,
    settings: PlannerSettings | None = None,
) -> int:
    """Rows to move with ``left`` seconds to the deadline, batches started ``since_start`` ago."""
    now = NOW + since_start
    return must_fall_back(
        now=now,
        deadline=now + left,
        rows_left=rows,
        rows_per_min=speed,
        batch_started=NOW,
        history=history,
        settings=settings or PlannerSettings(),
    )


def test_the_fallback_waits_for_the_last_safe_moment() -> None:
    # 100 rows take 10 s at 600/min: with an hour left the batches keep their chance, even
    # with no history (a batch may take 24 h): real time can take them all later.
    assert fall(100, left=3600, history=NONE) == 0
    assert fall(100, left=3600, history=FAST) == 0
    assert fallback_wait_s(
        now=NOW, deadline=NOW + 3600, rows_left=100, rows_per_min=600
    ) == pytest.approx(3600 - 45)
    # The last safe moment: 10 s x 1.5 + 30 s before the deadline. Then every row goes.
    assert fall(100, left=46, since_start=3554, history=FAST) == 0
    assert fall(100, left=44, since_start=3556, history=FAST) == 100
    assert fall(100, left=44, since_start=3556, history=NONE) == 100
    assert fall(0, left=40, history=FAST) == 0
    # Past the deadline (or inside its margin) nothing moves: real time cannot make it either.
    assert fall(100, left=-10) == 0
    assert fall(100, left=20) == 0
    assert DEFAULT_BATCH_TURNAROUND_S == 86400


def test_the_fallback_moves_only_the_rows_real_time_can_finish() -> None:
    # A million rows, an hour, 600 rows/min, no history: real time cannot finish them all,
    # nor can the batches be expected back; it takes what it can finish, no more.
    moved = fall(1_000_000, left=3600)
    assert 0 < moved <= 36_000
    assert moved == 23_800  # 600 rows/min x (3600 - 30 s) / 1.5
    # Batches expected back in time (half an hour here) are trusted until they are late.
    half_hour = BatchHistory(4, 1200.0, 1800.0)
    assert fall(1_000_000, left=3540, since_start=60, history=half_hour) == 0
    late = fall(1_000_000, left=1700, since_start=1900, history=half_hour)
    assert late == int(600 * (1700 - 30) / 60 / 1.5)


def test_the_fallback_thresholds_are_settings() -> None:
    bold = PlannerSettings(fallback_safety=1.0, fallback_margin_s=0.0)
    assert fall(1_000_000, left=3600, settings=bold) == 36_000
    quick = PlannerSettings(default_batch_turnaround_s=600.0)
    assert plan(10_000, deadline=NOW + 3600, realtime_minutes=200, settings=quick) == "batch"
    small = PlannerSettings(small_job_rows=1000, large_job_rows=5000)
    assert decide(800, settings=small).reason == "realtime: a small job (800 rows <= 1,000)"
    assert plan(3000, settings=small) == "hybrid"
    assert realtime_rows_per_min(None, None, 10, PlannerSettings(realtime_rows_per_min=42)) == 42


def test_realtime_throughput_from_the_limits() -> None:
    assert realtime_rows_per_min(600, None, 100) == 600
    assert realtime_rows_per_min(600, 30_000, 100) == 300
    assert realtime_rows_per_min(None, 30_000, 100) == 300
    assert realtime_rows_per_min(None, None, 100) > 0


# -- [planner] in rowprompt.toml -------------------------------------------------------------
def write_config(path: Path, text: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    path.write_text(text, encoding="utf-8")
    monkeypatch.setenv("ROWPROMPT_CONFIG", str(path))
    return path


def test_planner_settings_from_rowprompt_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(
        tmp_path / "rowprompt.toml",
        "[planner]\nsmall_job_rows = 1000\nlarge_job_rows = 20000\n"
        "default_batch_turnaround_s = 3600\nrealtime_rows_per_min = 250\n"
        "fallback_safety = 2\nfallback_margin_s = 5\n",
        monkeypatch,
    )
    assert load_settings().planner == PlannerSettings(
        small_job_rows=1000, large_job_rows=20_000, default_batch_turnaround_s=3600.0,
        realtime_rows_per_min=250.0, fallback_safety=2.0, fallback_margin_s=5.0,
    )  # fmt: skip


def test_a_small_job_threshold_from_the_config_changes_the_advice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = pd.DataFrame({"text": [f"row {i}" for i in range(500)]})
    options = {"prompt": "Say {{ text }}", "provider": "sandbox", "home": str(tmp_path / "h")}
    assert rowprompt.estimate(frame, **options).advice.startswith("hybrid: 500 rows")
    write_config(tmp_path / "rowprompt.toml", "[planner]\nsmall_job_rows = 1000\n", monkeypatch)
    advice = rowprompt.estimate(frame, **options).advice
    assert advice.startswith("realtime: a small job (500 rows <= 1,000)"), advice


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("small_job_rows = -1", "[planner] small_job_rows must be an integer >= 0, not -1"),
        ("large_job_rows = 2.5", "[planner] large_job_rows must be an integer >= 1, not 2.5"),
        ("fallback_safety = 0.5", "[planner] fallback_safety must be a number >= 1, not 0.5"),
        ('fallback_margin_s = "30s"', "[planner] fallback_margin_s must be a number >= 0"),
        ("realtime_rows_per_min = 0", "[planner] realtime_rows_per_min must be a number > 0"),
        ("default_batch_turnaround_s = nan", "default_batch_turnaround_s must be a number > 0"),
        ("small_job_rows = true", "[planner] small_job_rows must be an integer >= 0, not True"),
        ("smal_job_rows = 10", "unknown [planner] setting(s) smal_job_rows"),
    ],
)
def test_bad_planner_settings_are_one_line_errors(
    text: str, needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path / "rowprompt.toml", f"[planner]\n{text}\n", monkeypatch)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = caught.value.one_line()
    assert "\n" not in message and str(path) in message and needle in message, message


def test_a_bad_planner_setting_stops_the_cli_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "in.csv"
    pd.DataFrame({"text": ["a", "b"]}).to_csv(src, index=False)
    config = tmp_path / "rowprompt.toml"
    config.write_text("[planner]\nfallback_safety = 0.5\n", encoding="utf-8")
    result = run_cli(
        "estimate", str(src), "--prompt", "Say {{ text }}", "--provider", "sandbox",
        "--home", str(tmp_path / "h"), env={"ROWPROMPT_CONFIG": str(config)},
    )  # fmt: skip
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "fallback_safety must be a number >= 1" in lines[0], result.stderr
