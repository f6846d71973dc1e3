"""Read-only queries over the ledger: everything the report and the live view draw.

The ledger is opened with ``mode=ro`` and ``query_only``: another process may be driving the
job, and WAL lets this reader see a consistent snapshot without ever blocking that writer.
Every series is aggregated in SQL (buckets, strided samples), so a million-row job costs a
few grouped scans, never a million Python objects.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rowprompt import costs
from rowprompt.errors import JobNotFound, UsageError
from rowprompt.ledger import HEARTBEAT_STALE_SECONDS, default_home

# Buckets are picked from these widths (seconds) so a chart has at most MAX_BUCKETS points.
BUCKET_WIDTHS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)
MAX_BUCKETS = 150
LATENCY_SAMPLE = 20_000  # latencies drawn at most; a strided sample beyond that
PARSE_CHECK_LIMIT = 200_000  # answers re-parsed to count parse errors; above, not counted
TERMINAL = ("completed", "failed", "expired", "cancelled")


def ledger_path(home: str | Path | None) -> Path:
    """Where the ledger of ``home`` lives (the same rule as :class:`rowprompt.ledger.Ledger`)."""
    return (Path(home) if home is not None else default_home()) / "rowprompt.db"


@contextlib.contextmanager
def open_readonly(home: str | Path | None) -> Iterator[sqlite3.Connection]:
    """The ledger opened read-only, inside one read transaction (one consistent snapshot)."""
    path = ledger_path(home)
    if not path.is_file():
        raise UsageError(
            f"no rowprompt ledger at {path}",
            hint="pass --home DIR (or set ROWPROMPT_HOME) to the folder your jobs ran in",
        )
    # as_uri() percent-encodes the path, so a folder with spaces, '?' or '#' still opens.
    db = sqlite3.connect(
        f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0, isolation_level=None
    )
    try:
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA query_only=1")
        db.execute("BEGIN")
        yield db
    finally:
        with contextlib.suppress(sqlite3.Error):
            db.execute("COMMIT")
        db.close()


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    row = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,))
    return row.fetchone() is not None


@dataclass(frozen=True)
class JobInfo:
    """A job as the report shows it."""

    id: str
    model: str
    provider: str
    mode: str
    state: str
    input_path: str | None
    output_path: str | None
    input_hash: str
    sheet: str | None
    id_column: str | None
    limit: int | None
    prompt: str
    system: str | None
    answer_spec: str
    structured: bool
    total_rows: int
    created_at: float
    updated_at: float
    owner_pid: int | None
    heartbeat_at: float | None

    @property
    def driven(self) -> bool:
        """True while a live process drives the job (its heartbeat is recent)."""
        beat = self.heartbeat_at
        return bool(self.owner_pid and beat and time.time() - beat < HEARTBEAT_STALE_SECONDS)


@dataclass
class Counts:
    """Rows by status (the output table's ``_status``), tokens and cost."""

    total: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    by_via: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    parse_checked: bool = False
    batch_usage: tuple[int, int, float] | None = None
    """Answered batch rows with usage: (prompt tokens, completion tokens, cost paid)."""
    cache_usage: tuple[int, int] | None = None
    """Answered cached rows with usage: (prompt tokens, completion tokens)."""

    @property
    def finished(self) -> int:
        """Rows that reached an end."""
        return self.total - self.statuses.get("pending", 0) - self.statuses.get("in_flight", 0)


@dataclass(frozen=True)
class JobSummary:
    """One line of the jobs list: state and progress."""

    job: JobInfo
    counts: Counts
    state: str


def _job(row: sqlite3.Row) -> JobInfo:
    spec: dict[str, Any] = json.loads(row["spec"])
    return JobInfo(
        id=row["id"],
        model=str(spec.get("model", "?")),
        provider=str(spec.get("provider", "?")),
        mode=row["mode"] or str(spec.get("mode", "?")),
        state=row["state"],
        input_path=row["input_path"],
        output_path=row["output_path"],
        input_hash=str(spec.get("input_hash", "")),
        sheet=spec.get("sheet"),
        id_column=spec.get("id_column"),
        limit=spec.get("limit"),
        prompt=str(spec.get("prompt", "")),
        system=spec.get("system"),
        answer_spec=str(spec.get("answer_spec", "text")),
        structured="response_format" in (spec.get("params") or {}),
        total_rows=row["total_rows"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        owner_pid=row["owner_pid"],
        heartbeat_at=row["heartbeat_at"],
    )


def row_label(job: JobInfo, position: int, key: str) -> str:
    """How the CLI names a row (``Table.label``): its id with an id column, else its number
    counted from 1 (the ledger's ``position`` counts from 0)."""
    return key if job.id_column else str(position + 1)


def find_job(db: sqlite3.Connection, id_or_prefix: str) -> JobInfo:
    """The job with this id or unique prefix, or :class:`JobNotFound`."""
    rows = db.execute(
        "SELECT * FROM jobs WHERE id LIKE ? ORDER BY created_at", (f"{id_or_prefix}%",)
    ).fetchall()
    if not rows:
        raise JobNotFound(
            f"no job {id_or_prefix!r} in this ledger",
            hint="`rowprompt jobs` lists the jobs; pass --home if they live elsewhere",
        )
    if len(rows) > 1:
        raise JobNotFound(
            f"{id_or_prefix!r} matches {len(rows)} jobs", hint="give more characters of the id"
        )
    return _job(rows[0])


def job_state(job: JobInfo, c: Counts, has_open_batches: bool) -> str:
    """``done``, ``cancelled``, ``running``, ``waiting`` (on batches) or ``stopped``."""
    if job.state != "running":
        return job.state
    if c.total and c.finished >= c.total:
        return "done"
    if has_open_batches:
        return "waiting"
    return "running" if job.driven else "stopped"


def open_batches(db: sqlite3.Connection, job_id: str) -> bool:
    """True while a batch of the job is planned or at the provider."""
    row = db.execute(
        "SELECT 1 FROM shards WHERE job_id = ? AND batch_id IS NOT NULL"
        " AND state IN ('planned', 'uploaded', 'submitted') LIMIT 1",
        (job_id,),
    ).fetchone()
    return row is not None


def state_counts(db: sqlite3.Connection, job: JobInfo) -> dict[str, int]:
    """Rows by ``state``, from an index alone (no row is read)."""
    return {
        str(s): int(n)
        for s, n in db.execute(
            "SELECT state, count(*) FROM rows WHERE job_id = ? GROUP BY state", (job.id,)
        )
    }


def fingerprint(
    db: sqlite3.Connection, job: JobInfo, states: dict[str, int] | None = None
) -> tuple[Any, ...]:
    """Changes whenever anything the report draws changes: cached renders key on it.

    Polled every 2 s, so every part is an index lookup or an index-only count, never a scan
    of the job's rows: rows by state (any row that ends or goes back moves a count), the last
    attempt logged (a row answered again, by repair, logs one), batch events and shards, the
    recorded limits, and whether a live process still drives the job. ``states``: the rows by
    state, when the caller has them already.
    """
    parts: list[Any] = [job.updated_at, job.state, job.driven]
    parts.append(tuple(sorted((state_counts(db, job) if states is None else states).items())))
    for sql in (
        "SELECT max(finished_at) FROM attempts WHERE job_id = ?",
        "SELECT max(id), count(*) FROM batch_events WHERE job_id = ?",
        "SELECT max(updated_at), count(*) FROM shards WHERE job_id = ?",
    ):
        parts.append(tuple(db.execute(sql, (job.id,)).fetchone()))
    if _has_table(db, "rate_limits"):
        parts.append(
            db.execute("SELECT count(*) FROM rate_limits WHERE job_id = ?", (job.id,)).fetchone()[0]
        )
    return tuple(parts)


def price_full(job: JobInfo, prompt_tokens: int, completion_tokens: int) -> float | None:
    """What these tokens cost at the real-time price (None when the model has no price)."""
    priced_as = "openai" if job.provider == "sandbox" else job.provider
    try:
        return costs.cost_usd(job.model, prompt_tokens, completion_tokens, provider=priced_as)
    except Exception:  # an unknown provider name: no price, not a broken report
        return None


def savings(job: JobInfo, c: Counts) -> tuple[float | None, float | None]:
    """(what batch mode saved, what the cache saved) in USD, priced as ``summarize`` does."""
    batch_saved: float | None = 0.0
    cache_saved: float | None = 0.0
    if c.batch_usage is not None:
        pt, ct, paid = c.batch_usage
        full = price_full(job, pt, ct)
        batch_saved = None if full is None else full - paid
    if c.cache_usage is not None:
        cache_saved = price_full(job, *c.cache_usage)
    return batch_saved, cache_saved


def bucket_width(span_s: float) -> int:
    """The narrowest bucket width that draws ``span_s`` in at most ``MAX_BUCKETS`` points."""
    for width in BUCKET_WIDTHS:
        if span_s / width <= MAX_BUCKETS:
            return width
    return BUCKET_WIDTHS[-1]
