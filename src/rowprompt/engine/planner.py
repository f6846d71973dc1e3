"""The planner: which rows go real time, which go to the Batch API, and when to switch.

Practitioners end on the same advice: small or urgent jobs in real time, large jobs with slack
through the Batch API at half price, and a mix for the rest: a quick real-time preview to check
the prompt, the bulk in batches, and a real-time fallback for what a batch has not finished
when the deadline nears. The planner makes that judgement from the estimate, the deadline, the
budget and the provider's batch history in the ledger.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import statistics
import time
from dataclasses import dataclass

from rowprompt.errors import UsageError
from rowprompt.ledger import Ledger

# Thresholds of `auto`, documented in docs/planner.md; the `[planner]` table of rowprompt.toml
# overrides them (see PlannerSettings).
SMALL_JOB_ROWS = 200
LARGE_JOB_ROWS = 1000
DEFAULT_PREVIEW_ROWS = 20
# With no history, a batch is assumed to take this long: the provider promises 24 h, most
# finish within the hour; a deadline planner must assume the slow end.
DEFAULT_BATCH_TURNAROUND_S = 24 * 3600.0
# Real-time throughput assumed when no limit is known and nothing was measured.
DEFAULT_REALTIME_ROWS_PER_MIN = 100.0
# Start the fallback early enough: the real-time estimate times this, plus a fixed margin.
FALLBACK_SAFETY = 1.5
FALLBACK_MARGIN_S = 30.0
# A batch turnaround within this fraction of the time left counts as in time: a "24h" deadline
# is parsed a moment before it is compared with the 24 h default, and must not lose to it.
TURNAROUND_TOLERANCE = 0.01
# Words that drop a deadline stored with the job.
NO_DEADLINE = frozenset({"none", "off"})

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|min|s)", re.IGNORECASE)


@dataclass(frozen=True)
class PlannerSettings:
    """The planner's thresholds: the defaults above, or the `[planner]` table of rowprompt.toml."""

    small_job_rows: int = SMALL_JOB_ROWS
    large_job_rows: int = LARGE_JOB_ROWS
    default_batch_turnaround_s: float = DEFAULT_BATCH_TURNAROUND_S
    realtime_rows_per_min: float = DEFAULT_REALTIME_ROWS_PER_MIN
    fallback_safety: float = FALLBACK_SAFETY
    fallback_margin_s: float = FALLBACK_MARGIN_S


DEFAULT_SETTINGS = PlannerSettings()


def drops_deadline(text: str) -> bool:
    """True for ``--deadline none``: forget a deadline stored with the job."""
    return text.strip().lower() in NO_DEADLINE


def parse_deadline(text: str, now: float | None = None) -> float:
    """A deadline as a Unix time, from a duration (``2h``, ``90m``, ``1h30m``) or an ISO time."""
    now = time.time() if now is None else now
    cleaned = text.strip()
    parts = _DURATION.findall(cleaned)
    if parts and _DURATION.sub("", cleaned).strip() == "":
        scale = {"d": 86400.0, "h": 3600.0, "m": 60.0, "min": 60.0, "s": 1.0}
        seconds = sum(float(n) * scale[u.lower()] for n, u in parts)
        if seconds <= 0:
            raise UsageError(f"--deadline {text!r} is not in the future")
        return now + seconds
    try:
        when = dt.datetime.fromisoformat(cleaned)
    except ValueError:
        raise UsageError(
            f"--deadline {text!r} is neither a duration nor an ISO time",
            hint="write it as 2h, 90m, 1h30m or 2026-12-01T18:00",
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()
    stamp = when.timestamp()
    if stamp <= now:
        raise UsageError(f"--deadline {text!r} has already passed")
    return stamp


@dataclass(frozen=True)
class BatchHistory:
    """How long this provider's batches took, from the ledger."""

    samples: int
    p50_s: float | None
    p90_s: float | None

    def predicted_s(self, settings: PlannerSettings = DEFAULT_SETTINGS) -> float:
        """A turnaround to plan with: the slow end of history, or the conservative default."""
        if self.p90_s is None:
            return settings.default_batch_turnaround_s
        return self.p90_s

    def describe(self, settings: PlannerSettings = DEFAULT_SETTINGS) -> str:
        """The turnaround in words, as `rowprompt estimate` shows it."""
        if self.p50_s is None or self.p90_s is None:
            return (
                "within 24 h (often under 1 h); no batch history here, so deadlines are"
                f" planned with {human_duration(settings.default_batch_turnaround_s)}"
            )
        batches = "1 batch" if self.samples == 1 else f"{self.samples} batches"
        return (
            f"about {human_duration(self.p50_s)}, up to {human_duration(self.p90_s)}"
            f" (p50/p90 of {batches} of this model here)"
        )


def batch_history(ledger: Ledger, provider: str, model: str) -> BatchHistory:
    """Turnaround of the collected batches of ``provider`` and ``model`` in this ledger."""
    durations = []
    for job in ledger.list_jobs():
        for shard in ledger.shards(job.id):
            if shard.provider != provider or shard.model != model:
                continue
            if shard.status != "completed" or not shard.submitted_at or not shard.finished_at:
                continue
            durations.append(max(0.0, shard.finished_at - shard.submitted_at))
    if not durations:
        return BatchHistory(0, None, None)
    durations.sort()
    p90 = durations[min(len(durations) - 1, math.ceil(0.9 * len(durations)) - 1)]
    return BatchHistory(len(durations), statistics.median(durations), p90)


def realtime_rows_per_min(
    rpm: float | None,
    tpm: float | None,
    tokens_per_row: float,
    settings: PlannerSettings = DEFAULT_SETTINGS,
) -> float:
    """Rows a minute the real-time engine can do at the known limits (a default when none)."""
    bounds = []
    if rpm:
        bounds.append(float(rpm))
    if tpm and tokens_per_row > 0:
        bounds.append(tpm / tokens_per_row)
    return min(bounds) if bounds else settings.realtime_rows_per_min


def batch_in_time(turnaround_s: float, time_left_s: float) -> bool:
    """True when a batch of this turnaround is expected back within the time left."""
    return turnaround_s <= time_left_s + TURNAROUND_TOLERANCE * turnaround_s


def fallback_capacity(
    time_left_s: float, rows_per_min: float, settings: PlannerSettings = DEFAULT_SETTINGS
) -> int:
    """Rows real time can finish in the time left, with the fallback's safety and margin."""
    usable_min = (time_left_s - settings.fallback_margin_s) / 60
    if usable_min <= 0:
        return 0
    return int(rows_per_min * usable_min / settings.fallback_safety)


def fallback_wait_s(
    *,
    now: float,
    deadline: float,
    rows_left: int,
    rows_per_min: float,
    settings: PlannerSettings = DEFAULT_SETTINGS,
) -> float:
    """Seconds until the last safe moment to send ``rows_left`` real time (0: it has come)."""
    needed = rows_left / max(rows_per_min, 1e-9) * 60 * settings.fallback_safety
    return max(0.0, deadline - now - needed - settings.fallback_margin_s)


@dataclass(frozen=True)
class Plan:
    """The mode a job runs in, the one-line reason said before it starts, and a warning when
    the deadline cannot be met."""

    mode: str
    reason: str
    preview_rows: int = 0
    warning: str | None = None


def deadline_warning(
    *,
    mode: str,
    rows: int,
    time_left_s: float,
    rows_per_min: float,
    batch_s: float,
    limits_known: bool = True,
    settings: PlannerSettings = DEFAULT_SETTINGS,
) -> str | None:
    """What to say up front when the deadline cannot be met by the routes ``mode`` may use."""
    if rows <= 0:
        return None
    needed = rows / max(time_left_s / 60, 1e-9)
    if needed <= rows_per_min:
        return None
    allowed = (
        f"the rate limit allows {rows_per_min:,.0f}"
        if limits_known
        else f"with no --rpm or --tpm, real time is assumed to do {rows_per_min:,.0f}"
    )
    head = f"the deadline cannot be met: it needs {needed:,.0f} rows/min, {allowed}"
    if mode == "realtime":
        return f"{head}; the job will finish late"
    if batch_in_time(batch_s, time_left_s):
        return None
    movable = min(rows, fallback_capacity(time_left_s, rows_per_min, settings))
    return (
        f"{head}, and a batch may take {human_duration(batch_s)}: real time takes the"
        f" {movable:,} rows it can finish by then, the rest stay in batches and may finish late"
    )


def choose_mode(
    *,
    requested: str,
    rows: int,
    realtime_minutes: float,
    cost_realtime: float | None,
    cost_batch: float | None,
    deadline: float | None,
    budget: float | None,
    history: BatchHistory,
    preview: int = DEFAULT_PREVIEW_ROWS,
    now: float | None = None,
    settings: PlannerSettings = DEFAULT_SETTINGS,
    limits_known: bool = True,
) -> Plan:
    """Pick the mode (``auto``) or honour the user's, with the reason in one line."""
    now = time.time() if now is None else now
    s = settings
    slack = None if deadline is None else deadline - now
    batch_s = history.predicted_s(s)
    realtime_s = realtime_minutes * 60
    basis = (
        f"batches here took up to {human_duration(batch_s)}"
        if history.samples
        else f"with no batch history a batch may take {human_duration(batch_s)}"
    )
    warning = None
    if slack is not None:
        speed = rows / realtime_minutes if realtime_minutes > 0 else math.inf
        warning = deadline_warning(
            mode="realtime" if requested == "realtime" else "batch",
            rows=rows,
            time_left_s=slack,
            rows_per_min=speed,
            batch_s=batch_s,
            limits_known=limits_known,
            settings=s,
        )
    if requested != "auto":
        preview_rows = min(preview, rows) if requested == "hybrid" else 0
        return Plan(requested, f"{requested}: as asked", preview_rows, warning)
    if rows == 0:
        return Plan("realtime", "realtime: nothing to send")
    prices_known = cost_realtime is not None and cost_batch is not None
    if budget is not None and prices_known and cost_realtime > budget >= cost_batch:  # type: ignore[operator]
        return Plan(
            "batch", f"batch: only the batch price fits the ${budget:,.2f} budget", 0, warning
        )
    preview_rows = min(preview, rows)
    takeover = ""
    if slack is not None:
        if realtime_s > slack:
            if batch_in_time(batch_s, slack):
                return Plan(
                    "batch",
                    f"batch: the deadline is in {human_duration(slack)} and {basis};"
                    f" real time alone needs about {human_duration(realtime_s)}",
                )
            return Plan(
                "hybrid",
                f"hybrid: the deadline is in {human_duration(slack)}, real time alone needs about"
                f" {human_duration(realtime_s)} and {basis}: real time for the rows it can finish,"
                " batches for the rest",
                preview_rows,
                warning,
            )
        fallback_s = realtime_s * s.fallback_safety + s.fallback_margin_s
        if slack < fallback_s:
            return Plan(
                "realtime",
                f"realtime: the deadline is in {human_duration(slack)} and real time needs about"
                f" {human_duration(realtime_s)}: no time to try batches first",
            )
        # Enough slack for real time to finish whatever batches leave: they get their chance
        # at half the price, and the fallback keeps the deadline.
        takeover = (
            f"; real time takes over what batches have not finished"
            f" {human_duration(fallback_s)} before the deadline"
        )
    if rows <= s.small_job_rows:
        return Plan("realtime", f"realtime: a small job ({rows:,} rows <= {s.small_job_rows:,})")
    if rows >= s.large_job_rows:
        why = "no deadline" if slack is None else f"the deadline leaves {human_duration(slack)}"
        return Plan("batch", f"batch: {rows:,} rows and {why}: half the price{takeover}")
    return Plan(
        "hybrid",
        f"hybrid: {rows:,} rows: a real-time preview of {preview_rows}, the rest in batches"
        f"{takeover}",
        preview_rows,
    )


def must_fall_back(
    *,
    now: float,
    deadline: float,
    rows_left: int,
    rows_per_min: float,
    batch_started: float | None,
    history: BatchHistory,
    settings: PlannerSettings = DEFAULT_SETTINGS,
) -> int:
    """How many of the rows still in batches must go real time now to meet the deadline.

    0 while real time could still take them all later (the batches keep their chance at half
    the price until the last safe moment), all of them at that moment, and, once real time
    can no longer finish them all, the rows it can finish, unless the batches are expected
    back in time (then they are trusted until they are late).
    """
    if rows_left <= 0:
        return 0
    speed = max(rows_per_min, 1e-9)
    capacity = fallback_capacity(deadline - now, speed, settings)
    if capacity > rows_left:
        return 0
    usable_min = (deadline - now - settings.fallback_margin_s) / 60
    if usable_min <= 0:
        return 0
    if rows_left <= speed * usable_min:
        # Past the last safe moment by less than the safety factor (polls are discrete):
        # real time at full speed still finishes them all.
        return rows_left
    turnaround = history.predicted_s(settings)
    predicted_end = (now if batch_started is None else batch_started) + turnaround
    if now < predicted_end and batch_in_time(predicted_end - now, deadline - now):
        return 0
    return capacity


def human_duration(seconds: float) -> str:
    """A duration in words: seconds, minutes or hours."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
