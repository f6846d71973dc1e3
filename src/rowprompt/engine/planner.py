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

# Thresholds of `auto`, documented in docs/planner.md; rowprompt.toml may override them.
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

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|min|s)", re.IGNORECASE)


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

    def predicted_s(self) -> float:
        """A turnaround to plan with: the slow end of history, or the conservative default."""
        if self.p90_s is None:
            return DEFAULT_BATCH_TURNAROUND_S
        return self.p90_s


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


def realtime_rows_per_min(rpm: int | None, tpm: int | None, tokens_per_row: float) -> float:
    """Rows a minute the real-time engine can do at the known limits (a default when none)."""
    bounds = []
    if rpm:
        bounds.append(float(rpm))
    if tpm and tokens_per_row > 0:
        bounds.append(tpm / tokens_per_row)
    return min(bounds) if bounds else DEFAULT_REALTIME_ROWS_PER_MIN


@dataclass(frozen=True)
class Plan:
    """The mode a job runs in, and the one-line reason said before it starts."""

    mode: str
    reason: str
    preview_rows: int = 0


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
) -> Plan:
    """Pick the mode (``auto``) or honour the user's, with the reason in one line."""
    now = time.time() if now is None else now
    slack = None if deadline is None else deadline - now
    batch_s = history.predicted_s()
    basis = (
        f"batches here took up to {_human(batch_s)}"
        if history.samples
        else f"no batch history, so a batch may take {_human(batch_s)}"
    )
    if requested != "auto":
        preview_rows = min(preview, rows) if requested == "hybrid" else 0
        return Plan(requested, f"{requested}: as asked", preview_rows)
    if rows == 0:
        return Plan("realtime", "realtime: nothing to send")
    prices_known = cost_realtime is not None and cost_batch is not None
    if budget is not None and prices_known and cost_realtime > budget >= cost_batch:  # type: ignore[operator]
        return Plan("batch", f"batch: only the batch price fits the ${budget:,.2f} budget")
    if slack is not None and slack < batch_s:
        if realtime_minutes * 60 <= slack:
            return Plan(
                "realtime",
                f"realtime: the deadline is in {_human(slack)} and {basis};"
                f" real time needs about {_human(realtime_minutes * 60)}",
            )
        return Plan(
            "hybrid",
            f"hybrid: the deadline is in {_human(slack)}, real time alone needs about"
            f" {_human(realtime_minutes * 60)}: batches with a real-time fallback",
            min(preview, rows),
        )
    if rows <= SMALL_JOB_ROWS:
        return Plan("realtime", f"realtime: a small job ({rows:,} rows <= {SMALL_JOB_ROWS})")
    if rows >= LARGE_JOB_ROWS:
        why = "no deadline" if slack is None else f"the deadline leaves {_human(slack)}"
        return Plan("batch", f"batch: {rows:,} rows and {why}: half the price")
    return Plan(
        "hybrid",
        f"hybrid: {rows:,} rows: a real-time preview of {min(preview, rows)}, the rest in batches",
        min(preview, rows),
    )


def must_fall_back(
    *,
    now: float,
    deadline: float,
    rows_left: int,
    rows_per_min: float,
    batch_started: float | None,
    history: BatchHistory,
) -> bool:
    """True when the rows still in batches must go real time to finish by the deadline."""
    if rows_left <= 0:
        return False
    needed = rows_left / max(rows_per_min, 1e-9) * 60.0 * FALLBACK_SAFETY + FALLBACK_MARGIN_S
    if deadline - now <= needed:
        return True
    if batch_started is None:
        return False
    predicted_end = batch_started + history.predicted_s()
    return predicted_end > deadline - needed


def _human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
