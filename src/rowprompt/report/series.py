"""The time series, timelines and tables of one job's report, read from the ledger.

Times are seconds since the job's first recorded activity (``t0``), so a chart reads as
"minutes into the run"; the report states the wall-clock start once.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field

from rowprompt.jobs import SKIPPED_CODES
from rowprompt.report.data import (
    TERMINAL,
    Counts,
    JobInfo,
    _has_table,
    bucket_width,
    job_state,
    price_full,
    row_label,
    savings,
)
from rowprompt.report.samples import SampleRow, sample_rows
from rowprompt.report.tally import (
    ERRORS,
    LIMITED,
    OK,
    RETRIES,
    TOKENS,
    AttemptTally,
    LiveTallies,
    RowTally,
    counts,
    latency_stride,
)

# Provider statuses during which a batch's tokens count against the model's queue limit.
_ENQUEUED = ("validating", "in_progress", "finalizing")


@dataclass
class Realtime:
    """Real-time requests per bucket: what was sent, what came back, and the limit."""

    bucket_s: int
    t: list[float] = field(default_factory=list)
    ok: list[int] = field(default_factory=list)
    rate_limited: list[int] = field(default_factory=list)
    errors: list[int] = field(default_factory=list)
    retries: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    limit_t: list[float] = field(default_factory=list)
    limit_rpm: list[float | None] = field(default_factory=list)
    limit_tpm: list[float | None] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Requests sent."""
        return sum(self.ok) + sum(self.rate_limited) + sum(self.errors)


@dataclass(frozen=True)
class ShardSpan:
    """One batch shard's life: its provider statuses with the time each began."""

    number: int
    batch_id: str | None
    rows: int
    estimated_tokens: int
    state: str
    status: str | None
    error: str | None
    events: list[tuple[str, float]]
    end: float | None


@dataclass
class Queue:
    """Tokens the job had enqueued at the provider over time, and the model's queue limit."""

    t: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    limit: int | None = None
    limit_source: str | None = None


@dataclass(frozen=True)
class FailureGroup:
    """Rows that ended failed (or skipped) for one reason, with a few examples."""

    status: str
    code: str
    count: int
    message: str
    examples: list[tuple[int, str, str]]
    """(position, the row as the CLI names it, message) of the first few rows."""


@dataclass
class ReportData:
    """Everything one job's report shows."""

    job: JobInfo
    state: str
    counts: Counts
    batch_saved_usd: float | None
    cache_saved_usd: float | None
    t0: float
    end: float
    generated_at: float
    realtime: Realtime | None
    latencies: list[float]
    latencies_sampled: bool
    cost_t: list[float]
    cost_actual: list[float]
    cost_full: list[float | None]
    shards: list[ShardSpan]
    queue: Queue | None
    failures: list[FailureGroup]
    retried: list[tuple[str, int]]
    sample: list[SampleRow]
    notes: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        """From the first recorded activity to the last (or to now, while it runs)."""
        return max(0.0, self.end - self.t0)


def _last_activity(db: sqlite3.Connection, job: JobInfo, t0: float) -> float:
    last = db.execute(
        "SELECT max(t) FROM (SELECT max(finished_at) AS t FROM attempts WHERE job_id = ?"
        " UNION ALL SELECT max(at) FROM batch_events WHERE job_id = ?"
        " UNION ALL SELECT max(updated_at) FROM rows WHERE job_id = ?"
        " AND state IN ('done', 'failed'))",
        (job.id, job.id, job.id),
    ).fetchone()[0]
    return max(float(last or job.updated_at), t0)


def _realtime(db: sqlite3.Connection, job: JobInfo, attempts: AttemptTally,
              width: int) -> Realtime | None:  # fmt: skip
    by_bucket = attempts.buckets(width)
    if not by_bucket:
        return None
    series = Realtime(bucket_s=width)
    empty = [0, 0, 0, 0, 0]
    for b in range(0, max(by_bucket) + 1):
        r = by_bucket.get(b, empty)
        series.t.append(b * width)
        series.ok.append(r[OK])
        series.rate_limited.append(r[LIMITED])
        series.errors.append(r[ERRORS])
        series.retries.append(r[RETRIES])
        series.tokens.append(r[TOKENS])
    _limits(db, job, attempts.t0, series)
    return series


def _limits(db: sqlite3.Connection, job: JobInfo, t0: float, series: Realtime) -> None:
    # Recorded since migration 3; a ledger made before it has no history to draw.
    if not _has_table(db, "rate_limits"):
        return
    try:
        rows = db.execute(
            "SELECT at, rpm, tpm FROM rate_limits WHERE job_id = ? ORDER BY at", (job.id,)
        ).fetchall()
    except sqlite3.Error:
        return
    for r in rows:
        series.limit_t.append(max(0.0, float(r["at"]) - t0))
        series.limit_rpm.append(r["rpm"])
        series.limit_tpm.append(r["tpm"])


def _cost(
    job: JobInfo, rows: RowTally, width: int
) -> tuple[list[float], list[float], list[float | None]]:
    t: list[float] = [0.0]
    actual: list[float] = [0.0]
    full: list[float | None] = [0.0]
    for b, (cost, pt, ct) in sorted(rows.cost_buckets(width).items()):
        price = price_full(job, int(pt), int(ct))
        last_full = full[-1]
        t.append((b + 1) * width)
        actual.append(actual[-1] + cost)
        full.append(None if price is None or last_full is None else last_full + price)
    return t, actual, full


def _shards(db: sqlite3.Connection, job: JobInfo) -> list[ShardSpan]:
    events: dict[int, list[tuple[str, float]]] = {}
    for r in db.execute(
        "SELECT shard, status, at FROM batch_events WHERE job_id = ? ORDER BY id", (job.id,)
    ):
        events.setdefault(int(r["shard"]), []).append((str(r["status"]), float(r["at"])))
    return [
        ShardSpan(
            number=r["number"],
            batch_id=r["batch_id"],
            rows=r["rows"],
            estimated_tokens=r["estimated_tokens"],
            state=r["state"],
            status=r["status"],
            error=r["error"],
            events=events.get(int(r["number"]), []),
            end=r["finished_at"],
        )
        for r in db.execute("SELECT * FROM shards WHERE job_id = ? ORDER BY number", (job.id,))
    ]


def _rejected(events: list[tuple[str, float]]) -> bool:
    """A batch that failed validation never held a place in the queue."""
    statuses = [st for st, _ in events]
    return "failed" in statuses and "in_progress" not in statuses


def _queue(db: sqlite3.Connection, job: JobInfo, shards: list[ShardSpan], t0: float) -> Queue:
    """A shard counts against the queue from when the provider has it until a final status."""
    steps: list[tuple[float, int]] = []
    for s in shards:
        start = next((at for st, at in s.events if st in _ENQUEUED), None)
        if start is None or _rejected(s.events):
            continue
        stop = next((at for st, at in s.events if st in (*TERMINAL, "lost")), None)
        stop = stop if stop is not None else s.end
        steps.append((start - t0, s.estimated_tokens))
        if stop is not None:
            steps.append((stop - t0, -s.estimated_tokens))
    queue = Queue()
    level = 0
    for at, delta in sorted(steps):
        level += delta
        queue.t.append(at)
        queue.tokens.append(level)
    if shards and _has_table(db, "queue_limits"):
        r = db.execute(
            "SELECT token_limit, source FROM queue_limits WHERE model = ?"
            " ORDER BY provider = ? DESC LIMIT 1",
            (job.model, job.provider),
        ).fetchone()
        if r is not None:
            queue.limit, queue.limit_source = int(r[0]), str(r[1])
    return queue


def _failures(db: sqlite3.Connection, job: JobInfo) -> list[FailureGroup]:
    groups = db.execute(
        "SELECT coalesce(error_code, 'unknown') AS code, count(*) AS n,"
        " max(coalesce(error_message, '')) AS msg FROM rows"
        " WHERE job_id = ? AND state = 'failed' GROUP BY code ORDER BY n DESC LIMIT 20",
        (job.id,),
    ).fetchall()
    result = []
    for g in groups:
        examples = [
            (int(r[0]), row_label(job, int(r[0]), str(r[1])), str(r[2] or ""))
            for r in db.execute(
                "SELECT position, key, error_message FROM rows WHERE job_id = ?"
                " AND state = 'failed' AND coalesce(error_code, 'unknown') = ?"
                " ORDER BY position LIMIT 3",
                (job.id, g["code"]),
            )
        ]
        status = "skipped" if g["code"] in SKIPPED_CODES else "failed"
        result.append(FailureGroup(status, g["code"], int(g["n"]), str(g["msg"]), examples))
    return result


def _retried(attempts: AttemptTally) -> list[tuple[str, int]]:
    """Failed attempts by kind (429, 5xx, ...), including those a retry then fixed."""
    kinds = sorted(attempts.failed_kinds.items(), key=lambda kv: -kv[1])[:20]
    return [(f"{status or 'no answer'} {code or ''}".strip(), n) for (status, code), n in kinds]


def load_report(
    db: sqlite3.Connection,
    job: JobInfo,
    *,
    check_parse: bool = True,
    read_inputs: bool = True,
    keep: LiveTallies | None = None,
    states: dict[str, int] | None = None,
) -> ReportData:
    """Read one job's report from an open read-only ledger.

    ``check_parse`` re-parses every answer to count parse errors, ``read_inputs`` reads the
    input file for the sample; the live view skips the first while a job runs, to stay cheap.
    ``keep`` holds what the last read of this job left: the live view passes the same one
    at every refresh, so only what changed since is read (see :mod:`rowprompt.report.tally`).
    ``states``: the job's rows by state, when the caller has just read them (in this snapshot).
    """
    if keep is None:
        attempts = AttemptTally.build(db, job)
        rows = RowTally.build(db, job, attempts.t0, live=False, states=states)
    else:
        attempts = keep.attempts.refresh(db, job) if keep.attempts else AttemptTally.build(db, job)
        t0 = attempts.t0
        rows = (
            keep.rows.refresh(db, job, t0, states)
            if keep.rows
            else RowTally.build(db, job, t0, live=True, states=states)
        )
        keep.attempts, keep.rows = attempts, rows
    c = counts(db, job, check_parse=check_parse, tally=rows)
    has_batches = db.execute(
        "SELECT 1 FROM shards WHERE job_id = ? AND state IN ('planned','uploaded','submitted')",
        (job.id,),
    ).fetchone()
    state = job_state(job, c, has_batches is not None)
    t0 = attempts.t0
    end = max(time.time(), t0) if state in ("running", "waiting") else _last_activity(db, job, t0)
    width = bucket_width(end - t0)
    batch_saved, cache_saved = savings(job, c)
    cost_t, cost_actual, cost_full = _cost(job, rows, width)
    shards = _shards(db, job)
    notes: list[str] = []
    realtime = _realtime(db, job, attempts, width)
    if realtime is not None and not realtime.limit_t:
        notes.append(
            "The rate limit in force is not recorded in this ledger, so the request chart"
            " shows what was sent without the limit line."
        )
    return ReportData(
        job=job,
        state=state,
        counts=c,
        batch_saved_usd=batch_saved,
        cache_saved_usd=cache_saved,
        t0=t0,
        end=end,
        generated_at=time.time(),
        realtime=realtime,
        latencies=[max(0.0, v) for _, v in attempts.latencies],
        latencies_sampled=latency_stride(attempts.answered) > 1,
        cost_t=cost_t,
        cost_actual=cost_actual,
        cost_full=cost_full,
        shards=shards,
        queue=_queue(db, job, shards, t0) if shards else None,
        failures=_failures(db, job),
        retried=_retried(attempts),
        sample=sample_rows(db, job, read_inputs=read_inputs),
        notes=notes,
    )
