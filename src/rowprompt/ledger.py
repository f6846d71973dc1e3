"""The ledger: a job's whole state in SQLite, the only module that writes SQL.

Every state change is committed as it happens (WAL, so readers never block the writer and a
killed process loses nothing it committed). Migrations are numbered and append-only: a new
change of schema is a new entry at the end of ``MIGRATIONS``, never an edit of an old one.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rowprompt.errors import JobBusy, JobNotFound, UsageError
from rowprompt.jobs import (
    ACTIVE_SHARD_STATES,
    SKIPPED_CODES,
    TERMINAL_BATCH_STATUSES,
    Completion,
    JobProgress,
    JobSpec,
    JobState,
    RowOutcome,
    RowState,
    ShardState,
)

MIGRATIONS: tuple[str, ...] = (
    # 1: the starting schema.
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        input_path TEXT,
        output_path TEXT,
        mode TEXT,
        state TEXT NOT NULL,
        total_rows INTEGER NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        owner_pid INTEGER,
        owner_host TEXT,
        heartbeat_at REAL
    );
    CREATE TABLE rows (
        job_id TEXT NOT NULL,
        key TEXT NOT NULL,
        position INTEGER NOT NULL,
        request_hash TEXT NOT NULL,
        state TEXT NOT NULL,
        via TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        shard INTEGER,
        answer TEXT,
        refusal TEXT,
        finish_reason TEXT,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        cached_tokens INTEGER,
        cost_usd REAL,
        error_code TEXT,
        error_message TEXT,
        updated_at REAL NOT NULL,
        PRIMARY KEY (job_id, key)
    );
    CREATE UNIQUE INDEX rows_by_position ON rows (job_id, position);
    CREATE INDEX rows_by_state ON rows (job_id, state, position);
    CREATE TABLE shards (
        job_id TEXT NOT NULL,
        number INTEGER NOT NULL,
        state TEXT NOT NULL,
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        path TEXT,
        input_file_id TEXT,
        batch_id TEXT,
        status TEXT,
        output_file_id TEXT,
        error_file_id TEXT,
        rows INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        estimated_tokens INTEGER NOT NULL,
        count_total INTEGER,
        count_completed INTEGER,
        count_failed INTEGER,
        error TEXT,
        created_at REAL NOT NULL,
        submitted_at REAL,
        finished_at REAL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (job_id, number)
    );
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL,
        key TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        via TEXT NOT NULL,
        started_at REAL,
        finished_at REAL NOT NULL,
        status_code INTEGER,
        error_code TEXT,
        error_message TEXT,
        prompt_tokens INTEGER,
        completion_tokens INTEGER
    );
    CREATE INDEX attempts_by_job ON attempts (job_id, finished_at);
    CREATE TABLE cache (
        request_hash TEXT PRIMARY KEY,
        completion TEXT NOT NULL,
        model TEXT,
        created_at REAL NOT NULL
    );
    CREATE TABLE batch_events (
        id INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL,
        shard INTEGER NOT NULL,
        status TEXT NOT NULL,
        at REAL NOT NULL
    );
    """,
    # 2: the batch queue. How many times a shard was sent to ``batches.create`` (the try number
    # goes into the batch metadata, so a crash between create and the write is adopted, not
    # paid again), when it may be sent again after ``token_limit_exceeded``, when it was last
    # polled and last changed status (its age in `status`); the enqueued-token limit learned or
    # configured per provider and model.
    """
    ALTER TABLE shards ADD COLUMN submits INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE shards ADD COLUMN not_before REAL;
    ALTER TABLE shards ADD COLUMN polled_at REAL;
    ALTER TABLE shards ADD COLUMN status_at REAL;
    CREATE INDEX shards_by_model ON shards (provider, model, state);
    CREATE TABLE queue_limits (
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        token_limit INTEGER NOT NULL,
        source TEXT NOT NULL,
        message TEXT,
        updated_at REAL NOT NULL,
        PRIMARY KEY (provider, model)
    );
    """,
    # 3: the real-time rate limit in force over time (from flags, headers, or learned after a
    # 429), one row per change: the run report draws the limit line from it.
    """
    CREATE TABLE rate_limits (
        job_id TEXT NOT NULL,
        at REAL NOT NULL,
        rpm REAL,
        tpm REAL,
        source TEXT NOT NULL
    );
    CREATE INDEX rate_limits_by_job ON rate_limits (job_id, at);
    """,
    # 4: the job's deadline, absolute, with the words it was given in: resume, collect and a
    # rerun keep it (it is not part of the job's identity, so it cannot live in the spec).
    """
    ALTER TABLE jobs ADD COLUMN deadline_at REAL;
    ALTER TABLE jobs ADD COLUMN deadline_text TEXT;
    """,
    # 5: how the job was last run (rate limits, concurrency, attempts, budget...), as JSON:
    # resume and collect run it the same way. Not part of its identity, so not in the spec.
    """
    ALTER TABLE jobs ADD COLUMN run_settings TEXT;
    """,
)

# A job whose owner has not beaten its heart for this long is taken over by the next process.
HEARTBEAT_STALE_SECONDS = 30.0


def default_home() -> Path:
    """The rowprompt home: ``ROWPROMPT_HOME`` or ``.rowprompt`` in the current directory."""
    return Path(os.environ.get("ROWPROMPT_HOME") or ".rowprompt")


@dataclass(frozen=True)
class JobRecord:
    """A job as stored."""

    id: str
    spec: JobSpec
    input_path: str | None
    output_path: str | None
    mode: str | None
    state: JobState
    total_rows: int
    created_at: float
    updated_at: float
    owner_pid: int | None
    owner_host: str | None
    heartbeat_at: float | None
    run_settings: dict[str, Any] = field(default_factory=dict)
    """How the job was last run (``--rpm``, ``--concurrency``, ``--budget``...); see
    :data:`rowprompt.runner.RUN_SETTINGS`. Empty for a job that never stored them."""


@dataclass(frozen=True)
class RowRecord:
    """A row as stored: its state and, once done, its answer and usage."""

    key: str
    position: int
    request_hash: str
    state: RowState
    via: str | None
    attempts: int
    shard: int | None
    answer: str | None
    refusal: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None
    error_code: str | None
    error_message: str | None


@dataclass(frozen=True)
class ShardRecord:
    """A batch shard as stored."""

    job_id: str
    number: int
    state: ShardState
    provider: str
    model: str
    path: str | None
    input_file_id: str | None
    batch_id: str | None
    status: str | None
    output_file_id: str | None
    error_file_id: str | None
    rows: int
    bytes: int
    estimated_tokens: int
    count_total: int | None
    count_completed: int | None
    count_failed: int | None
    error: str | None
    created_at: float
    submitted_at: float | None
    finished_at: float | None
    submits: int = 0
    """How many times the shard was sent to ``batches.create`` (its current try number)."""
    not_before: float | None = None
    """After ``token_limit_exceeded``: not sent again before this time."""
    polled_at: float | None = None
    status_at: float | None = None
    """When the batch's status last changed (the age `status` shows)."""

    @property
    def waiting(self) -> bool:
        """True for a shard that is ready to go but held back by the queue limit."""
        return self.state == ShardState.UPLOADED and self.submits > 0 and self.batch_id is None


@dataclass(frozen=True)
class QueueLimit:
    """An enqueued-token limit of one provider's model, as the ledger remembers it."""

    provider: str
    model: str
    token_limit: int
    source: str
    message: str | None
    updated_at: float


_SHARD_FIELDS = frozenset(
    {
        "state",
        "input_file_id",
        "batch_id",
        "status",
        "output_file_id",
        "error_file_id",
        "count_total",
        "count_completed",
        "count_failed",
        "error",
        "submitted_at",
        "finished_at",
        "path",
        "submits",
        "not_before",
        "polled_at",
        "estimated_tokens",
    }
)


class Ledger:
    """One SQLite database holding every job of a home folder."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home = Path(home) if home is not None else default_home()
        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"cannot create the rowprompt home {self.home}: {exc.strerror}",
                hint="pass --home DIR or set ROWPROMPT_HOME to a writable folder",
            ) from exc
        self.path = self.home / "rowprompt.db"
        # Prompts and answers are the user's data: the database is the owner's alone (SQLite
        # gives its -wal and -shm files the same mode).
        if not self.path.exists():
            with contextlib.suppress(OSError):
                os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        with contextlib.suppress(OSError):
            os.chmod(self.path, 0o600)
        self._db = sqlite3.connect(
            self.path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a killed process; only a power cut can lose the last commits.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    # -- plumbing ---------------------------------------------------------------------------
    def _migrate(self) -> None:
        with self.transaction():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS, start=1):
                if number > version:
                    for statement in script.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version={number}")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One immediate transaction; nested calls join the outer one."""
        if self._db.in_transaction:
            yield self._db
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def batch_dir(self) -> Path:
        """Where batch input files are written before upload."""
        path = self.home / "batches"
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- jobs -------------------------------------------------------------------------------
    def find_job(self, job_id: str) -> JobRecord | None:
        """The job with exactly this id, or None."""
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def get_job(self, id_or_prefix: str) -> JobRecord:
        """The job with this id or unique id prefix, or :class:`JobNotFound`."""
        rows = self._db.execute(
            "SELECT * FROM jobs WHERE id LIKE ? ORDER BY created_at", (f"{id_or_prefix}%",)
        ).fetchall()
        if not rows:
            raise JobNotFound(
                f"no job {id_or_prefix!r} in {self.path}",
                hint="`rowprompt jobs` lists the jobs; pass --home if they live elsewhere",
            )
        if len(rows) > 1:
            raise JobNotFound(
                f"{id_or_prefix!r} matches {len(rows)} jobs",
                hint="give more characters of the job id",
            )
        return _job(rows[0])

    def list_jobs(self) -> list[JobRecord]:
        """Every job, newest first."""
        rows = self._db.execute("SELECT * FROM jobs ORDER BY created_at DESC").fetchall()
        return [_job(r) for r in rows]

    def create_job(
        self,
        spec: JobSpec,
        rows: Iterable[tuple[str, int, str]],
        *,
        input_path: str | None,
        output_path: str | None,
        mode: str | None,
    ) -> JobRecord:
        """Insert a job and all its rows (key, position, request hash) in one transaction.

        A job that exists already (another process created it since the caller looked) is
        returned as it is: the same spec is the same job, and ``rows`` are left unread.
        """
        job_id = spec.job_id()
        now = time.time()
        with self.transaction() as db:
            # The write lock is held from here: of two processes creating the same job, the
            # second finds the first's.
            if db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is not None:
                return self.get_job(job_id)
            db.execute(
                "INSERT INTO jobs (id, spec, input_path, output_path, mode, state, total_rows,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?)",
                (job_id, spec.to_json(), input_path, output_path, mode, JobState.RUNNING, now, now),
            )
            db.executemany(
                "INSERT INTO rows (job_id, key, position, request_hash, state, updated_at)"
                " VALUES (?, ?, ?, ?, 'pending', ?)",
                ((job_id, key, pos, rhash, now) for key, pos, rhash in rows),
            )
            total = db.execute("SELECT count(*) FROM rows WHERE job_id = ?", (job_id,)).fetchone()
            db.execute("UPDATE jobs SET total_rows = ? WHERE id = ?", (total[0], job_id))
        return self.get_job(job_id)

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Set some of a job's fields (state, output_path, mode, input_path)."""
        allowed = {"state", "output_path", "mode", "input_path"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"not job fields: {sorted(unknown)}")
        if not fields:
            return
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self.transaction() as db:
            db.execute(
                f"UPDATE jobs SET {assignments}, updated_at = ? WHERE id = ?",
                (*fields.values(), time.time(), job_id),
            )

    def job_deadline(self, job_id: str) -> tuple[float | None, str | None]:
        """The job's stored deadline (a Unix time) and the words it was given in, or Nones."""
        row = self._db.execute(
            "SELECT deadline_at, deadline_text FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        return (row[0], row[1]) if row else (None, None)

    def set_job_deadline(self, job_id: str, at: float | None, text: str | None) -> None:
        """Store the job's deadline (None: it has none)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET deadline_at = ?, deadline_text = ?, updated_at = ? WHERE id = ?",
                (at, text, time.time(), job_id),
            )

    def set_job_run_settings(self, job_id: str, settings: dict[str, Any]) -> None:
        """Store how the job is run (JSON-able values only; never a secret)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET run_settings = ?, updated_at = ? WHERE id = ?",
                (json.dumps(settings, sort_keys=True), time.time(), job_id),
            )

    def acquire(self, job_id: str) -> None:
        """Make this process the job's driver, or raise :class:`JobBusy` if another live one is."""
        me, host, now = os.getpid(), socket.gethostname(), time.time()
        with self.transaction() as db:
            row = db.execute(
                "SELECT owner_pid, owner_host, heartbeat_at FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None:
                raise JobNotFound(f"no job {job_id!r}")
            pid, owner_host, beat = row["owner_pid"], row["owner_host"], row["heartbeat_at"]
            if pid and pid != me and beat and now - beat < HEARTBEAT_STALE_SECONDS:
                alive = owner_host != host or _pid_alive(pid)
                if alive:
                    raise JobBusy(
                        f"job {job_id} is running in another process (pid {pid} on {owner_host})",
                        hint="wait for it, or `rowprompt status JOB` to watch it",
                    )
            db.execute(
                "UPDATE jobs SET owner_pid = ?, owner_host = ?, heartbeat_at = ? WHERE id = ?",
                (me, host, now, job_id),
            )

    def heartbeat(self, job_id: str) -> None:
        """Say this process still drives the job."""
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET heartbeat_at = ? WHERE id = ? AND owner_pid = ?",
                (time.time(), job_id, os.getpid()),
            )

    def release(self, job_id: str) -> None:
        """Let another process drive the job."""
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET owner_pid = NULL, heartbeat_at = NULL"
                " WHERE id = ? AND owner_pid = ?",
                (job_id, os.getpid()),
            )

    def progress(self, job_id: str) -> JobProgress:
        """Rows by state, tokens and cost so far."""
        progress = JobProgress()
        for row in self._db.execute(
            "SELECT state, count(*) AS n, coalesce(sum(prompt_tokens), 0) AS pt,"
            " coalesce(sum(completion_tokens), 0) AS ct, coalesce(sum(cost_usd), 0) AS cost"
            " FROM rows WHERE job_id = ? GROUP BY state",
            (job_id,),
        ):
            setattr(progress, row["state"], row["n"])
            progress.total += row["n"]
            progress.prompt_tokens += row["pt"]
            progress.completion_tokens += row["ct"]
            progress.cost_usd += row["cost"]
        if progress.failed:
            marks = ",".join("?" * len(SKIPPED_CODES))
            progress.skipped = self._db.execute(
                "SELECT count(*) FROM rows WHERE job_id = ? AND state = 'failed'"
                f" AND error_code IN ({marks})",
                (job_id, *SKIPPED_CODES),
            ).fetchone()[0]
        return progress

    # -- rows -------------------------------------------------------------------------------
    def requeue_in_flight(self, job_id: str, via: str) -> int:
        """Send rows left in flight by a dead process back to pending; returns how many."""
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE rows SET state = 'pending', updated_at = ?"
                " WHERE job_id = ? AND state = 'in_flight' AND via = ? AND shard IS NULL",
                (time.time(), job_id, via),
            )
            return cur.rowcount

    def requeue_failed(self, job_id: str, error_code: str) -> int:
        """Send rows that failed with ``error_code`` back to pending (e.g. over a budget that
        has since been raised); their attempt count starts again. Returns how many."""
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE rows SET state = 'pending', attempts = 0, error_code = NULL,"
                " error_message = NULL, updated_at = ?"
                " WHERE job_id = ? AND state = 'failed' AND error_code = ?",
                (time.time(), job_id, error_code),
            )
            return cur.rowcount

    def record_rate_limit(
        self, job_id: str, rpm: float | None, tpm: float | None, source: str
    ) -> None:
        """The real-time limit in force changed (for the run report)."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO rate_limits (job_id, at, rpm, tpm, source) VALUES (?, ?, ?, ?, ?)",
                (job_id, time.time(), rpm, tpm, source),
            )

    def claim_pending(self, job_id: str, via: str, limit: int) -> list[tuple[str, int, int]]:
        """Mark up to ``limit`` pending rows in flight; returns (key, position, attempt)."""
        now = time.time()
        with self.transaction() as db:
            rows = db.execute(
                "SELECT key, position, attempts FROM rows WHERE job_id = ? AND state = 'pending'"
                " ORDER BY position LIMIT ?",
                (job_id, limit),
            ).fetchall()
            db.executemany(
                "UPDATE rows SET state = 'in_flight', via = ?, attempts = attempts + 1,"
                " shard = NULL, updated_at = ? WHERE job_id = ? AND key = ?",
                ((via, now, job_id, r["key"]) for r in rows),
            )
        return [(r["key"], r["position"], r["attempts"] + 1) for r in rows]

    def unclaim(self, job_id: str, keys: Sequence[str]) -> None:
        """Give rows claimed but never sent back to pending, their claim not counted as an
        attempt (a stop must not use up a row's tries)."""
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                "UPDATE rows SET state = 'pending', via = NULL, updated_at = ?,"
                " attempts = max(attempts - 1, 0) WHERE job_id = ? AND key = ?"
                " AND state = 'in_flight'",
                ((now, job_id, key) for key in keys),
            )

    def pending_rows(self, job_id: str, limit: int | None = None) -> list[tuple[str, int]]:
        """Pending rows (key, position) in input order."""
        sql = (
            "SELECT key, position FROM rows WHERE job_id = ? AND state = 'pending'"
            " ORDER BY position"
        )
        params: tuple[Any, ...] = (job_id,)
        if limit is not None:
            sql += " LIMIT ?"
            params += (limit,)
        return [(r["key"], r["position"]) for r in self._db.execute(sql, params)]

    def count_rows(self, job_id: str, state: RowState) -> int:
        """How many of the job's rows are in ``state``."""
        row = self._db.execute(
            "SELECT count(*) FROM rows WHERE job_id = ? AND state = ?", (job_id, state)
        ).fetchone()
        return int(row[0])

    def record_outcomes(self, job_id: str, outcomes: Sequence[RowOutcome]) -> None:
        """Write rows that ended (done or failed) with their answers, usage and errors."""
        now = time.time()
        # In key order: the rows' B-tree is then walked forward once instead of
        # jumped about (batch output lines come in no particular order).
        params: list[tuple[Any, ...]] = sorted(
            ((*_outcome_params(o, now), job_id, o.key) for o in outcomes), key=_last
        )
        with self.transaction() as db:
            db.executemany(
                "UPDATE rows SET state = ?, via = ?, answer = ?, refusal = ?, finish_reason = ?,"
                " prompt_tokens = ?, completion_tokens = ?, cached_tokens = ?, cost_usd = ?,"
                " error_code = ?, error_message = ?, updated_at = ? WHERE job_id = ? AND key = ?",
                params,
            )

    def release_rows(
        self,
        job_id: str,
        keys: Sequence[str],
        *,
        max_attempts: int,
        error_code: str | None,
        error_message: str | None,
    ) -> int:
        """Send rows back to pending to be tried again, or fail those out of attempts.

        Returns how many rows failed for good.
        """
        now = time.time()
        failed = 0
        keys = list(keys)
        with self.transaction() as db:
            for start in range(0, len(keys), 500):
                part = keys[start : start + 500]
                marks = ",".join("?" * len(part))
                row = db.execute(
                    f"SELECT count(*) FROM rows WHERE job_id = ? AND key IN ({marks})"
                    " AND attempts >= ?",
                    (job_id, *part, max_attempts),
                ).fetchone()
                failed += int(row[0])
            db.executemany(
                "UPDATE rows SET state = CASE WHEN attempts >= ? THEN 'failed' ELSE 'pending' END,"
                " shard = NULL, error_code = ?, error_message = ?, updated_at = ?"
                " WHERE job_id = ? AND key = ?",
                ((max_attempts, error_code, error_message, now, job_id, k) for k in keys),
            )
        return failed

    def iter_rows(self, job_id: str, chunk: int = 5000) -> Iterator[RowRecord]:
        """Every row of the job in input order, read in chunks."""
        last = -1
        while True:
            rows = self._db.execute(
                "SELECT * FROM rows WHERE job_id = ? AND position > ? ORDER BY position LIMIT ?",
                (job_id, last, chunk),
            ).fetchall()
            if not rows:
                return
            for row in rows:
                yield _row(row)
            last = rows[-1]["position"]

    def keys_by_position(self, job_id: str, positions: Sequence[int]) -> dict[int, str]:
        """Row keys for these positions."""
        result: dict[int, str] = {}
        for start in range(0, len(positions), 500):
            part = list(positions[start : start + 500])
            marks = ",".join("?" * len(part))
            for row in self._db.execute(
                f"SELECT position, key FROM rows WHERE job_id = ? AND position IN ({marks})",
                (job_id, *part),
            ):
                result[row["position"]] = row["key"]
        return result

    def shard_rows(self, job_id: str, number: int) -> list[tuple[str, int]]:
        """Rows (key, position) assigned to a shard and still in flight with it."""
        return [
            (r["key"], r["position"])
            for r in self._db.execute(
                "SELECT key, position FROM rows WHERE job_id = ? AND shard = ?"
                " AND state = 'in_flight' ORDER BY position",
                (job_id, number),
            )
        ]

    def shard_row_hashes(self, job_id: str, number: int) -> list[tuple[str, int, str]]:
        """Rows (key, position, request hash) assigned to a shard and still in flight with it."""
        return [
            (r[0], r[1], r[2])
            for r in self._db.execute(
                "SELECT key, position, request_hash FROM rows WHERE job_id = ? AND shard = ?"
                " AND state = 'in_flight' ORDER BY position",
                (job_id, number),
            )
        ]

    def cancel_rows(self, job_id: str) -> int:
        """Mark every row not yet ended as failed with ``cancelled``; returns how many."""
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE rows SET state = 'failed', error_code = 'cancelled',"
                " error_message = 'the job was cancelled', shard = NULL, updated_at = ?"
                " WHERE job_id = ? AND state IN ('pending', 'in_flight')",
                (time.time(), job_id),
            )
            return cur.rowcount

    # -- attempts ---------------------------------------------------------------------------
    def record_attempts(self, job_id: str, attempts: Iterable[dict[str, Any]]) -> None:
        """Log request attempts (what the run report draws from)."""
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO attempts (job_id, key, attempt, via, started_at, finished_at,"
                " status_code, error_code, error_message, prompt_tokens, completion_tokens)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                ((job_id, *_attempt_values(a)) for a in attempts),
            )

    def count_attempts(self, job_id: str) -> int:
        """Request attempts logged for the job."""
        row = self._db.execute(
            "SELECT count(*) FROM attempts WHERE job_id = ?", (job_id,)
        ).fetchone()
        return int(row[0])

    # -- shards -----------------------------------------------------------------------------
    def next_shard_number(self, job_id: str) -> int:
        """The number the next shard of this job gets."""
        row = self._db.execute(
            "SELECT coalesce(max(number), -1) + 1 FROM shards WHERE job_id = ?", (job_id,)
        ).fetchone()
        return int(row[0])

    def create_shard(
        self,
        job_id: str,
        number: int,
        *,
        provider: str,
        model: str,
        path: str,
        keys: Sequence[str],
        nbytes: int,
        estimated_tokens: int,
    ) -> None:
        """Record a planned shard and hand its rows to it, in one transaction."""
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO shards (job_id, number, state, provider, model, path, rows, bytes,"
                " estimated_tokens, created_at, updated_at)"
                " VALUES (?, ?, 'planned', ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    number,
                    provider,
                    model,
                    path,
                    len(keys),
                    nbytes,
                    estimated_tokens,
                    now,
                    now,
                ),
            )
            db.executemany(
                "UPDATE rows SET state = 'in_flight', via = 'batch', shard = ?,"
                " attempts = attempts + 1, updated_at = ? WHERE job_id = ? AND key = ?"
                " AND state = 'pending'",
                ((number, now, job_id, key) for key in keys),
            )
            self._event(db, job_id, number, ShardState.PLANNED, now)

    def update_shard(self, job_id: str, number: int, **fields: Any) -> None:
        """Set some of a shard's fields; a status change is logged as a batch event."""
        unknown = set(fields) - _SHARD_FIELDS
        if unknown:
            raise ValueError(f"not shard fields: {sorted(unknown)}")
        if not fields:
            return
        now = time.time()
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self.transaction() as db:
            before = db.execute(
                "SELECT status FROM shards WHERE job_id = ? AND number = ?", (job_id, number)
            ).fetchone()
            db.execute(
                f"UPDATE shards SET {assignments}, updated_at = ? WHERE job_id = ? AND number = ?",
                (*fields.values(), now, job_id, number),
            )
            status = fields.get("status")
            if status and (before is None or before["status"] != status):
                self._event(db, job_id, number, status, now)
                db.execute(
                    "UPDATE shards SET status_at = ? WHERE job_id = ? AND number = ?",
                    (now, job_id, number),
                )

    def shards(self, job_id: str, *, active_only: bool = False) -> list[ShardRecord]:
        """The job's shards in order; only those not yet collected with ``active_only``."""
        sql = "SELECT * FROM shards WHERE job_id = ?"
        if active_only:
            sql += " AND state IN ({})".format(
                ",".join(f"'{s.value}'" for s in ACTIVE_SHARD_STATES)
            )
        return [_shard(r) for r in self._db.execute(sql + " ORDER BY number", (job_id,))]

    def shard(self, job_id: str, number: int) -> ShardRecord | None:
        """One shard, or None."""
        row = self._db.execute(
            "SELECT * FROM shards WHERE job_id = ? AND number = ?", (job_id, number)
        ).fetchone()
        return _shard(row) if row else None

    def unassign_shard(self, job_id: str, number: int, *, error: str) -> int:
        """Give a never-run shard's rows back to pending, uncounted, and retire the shard.

        Used when a shard can no longer be sent as planned (larger than a newly learned queue
        limit, or the job was cancelled before it went out). Returns how many rows went back.
        """
        now = time.time()
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE rows SET state = 'pending', shard = NULL, attempts = max(attempts - 1, 0),"
                " updated_at = ? WHERE job_id = ? AND shard = ? AND state = 'in_flight'",
                (now, job_id, number),
            )
            db.execute(
                "UPDATE shards SET state = 'lost', error = ?, finished_at = ?, updated_at = ?"
                " WHERE job_id = ? AND number = ?",
                (error, now, now, job_id, number),
            )
            self._event(db, job_id, number, ShardState.LOST, now)
            return cur.rowcount

    def iter_pending(self, job_id: str, chunk: int = 2000) -> Iterator[list[tuple[str, int, str]]]:
        """Pending rows (key, position, request hash) in input order, a chunk at a time.

        Read by position ranges, so a million pending rows are never in memory at once, and
        rows the caller assigns meanwhile are simply not seen again.
        """
        last = -1
        while True:
            rows = self._db.execute(
                "SELECT key, position, request_hash FROM rows WHERE job_id = ?"
                " AND state = 'pending' AND position > ? ORDER BY position LIMIT ?",
                (job_id, last, chunk),
            ).fetchall()
            if not rows:
                return
            yield [(r[0], r[1], r[2]) for r in rows]
            last = rows[-1][1]

    def count_pending_retries(self, job_id: str) -> tuple[int, int]:
        """(pending rows, of which already tried at least once): the stragglers."""
        row = self._db.execute(
            "SELECT count(*), coalesce(sum(attempts > 0), 0) FROM rows"
            " WHERE job_id = ? AND state = 'pending'",
            (job_id,),
        ).fetchone()
        return int(row[0]), int(row[1])

    # -- the batch queue ------------------------------------------------------------------
    def queue_in_use(self, provider: str, model: str, *, window_s: float = 25 * 3600) -> int:
        """Estimated tokens of every job's batches still enqueued at ``provider`` for ``model``.

        A shard counts from submission until the provider reports a final status. Shards
        submitted longer than ``window_s`` ago are left out: their 24-hour window has closed,
        so the provider no longer counts them even if no process ever collected them.
        """
        terminal = ",".join(f"'{s}'" for s in TERMINAL_BATCH_STATUSES)
        row = self._db.execute(
            "SELECT coalesce(sum(estimated_tokens), 0) FROM shards WHERE provider = ?"
            " AND model = ? AND state = 'submitted'"
            f" AND (status IS NULL OR status NOT IN ({terminal}))"
            " AND coalesce(submitted_at, created_at) > ?",
            (provider, model, time.time() - window_s),
        ).fetchone()
        return int(row[0])

    def queue_limit(self, provider: str, model: str) -> QueueLimit | None:
        """The enqueued-token limit remembered for this provider's model, if any."""
        row = self._db.execute(
            "SELECT * FROM queue_limits WHERE provider = ? AND model = ?", (provider, model)
        ).fetchone()
        if row is None:
            return None
        return QueueLimit(
            provider=row["provider"],
            model=row["model"],
            token_limit=row["token_limit"],
            source=row["source"],
            message=row["message"],
            updated_at=row["updated_at"],
        )

    def set_queue_limit(
        self, provider: str, model: str, token_limit: int, *, source: str, message: str | None
    ) -> None:
        """Remember a model's enqueued-token limit (``learned`` from an error, or configured)."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO queue_limits"
                " (provider, model, token_limit, source, message, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (provider, model, int(token_limit), source, message, time.time()),
            )

    def _event(
        self, db: sqlite3.Connection, job_id: str, number: int, status: str, at: float
    ) -> None:
        db.execute(
            "INSERT INTO batch_events (job_id, shard, status, at) VALUES (?, ?, ?, ?)",
            (job_id, number, str(status), at),
        )

    # -- cache ------------------------------------------------------------------------------
    def cached(self, request_hash: str) -> Completion | None:
        """The completion cached for this exact request, if any."""
        row = self._db.execute(
            "SELECT completion FROM cache WHERE request_hash = ?", (request_hash,)
        ).fetchone()
        return Completion.from_json(row[0]) if row else None

    def cached_many(self, hashes: Sequence[str]) -> dict[str, Completion]:
        """The cached completions among these request hashes (looked up 500 at a time)."""
        found: dict[str, Completion] = {}
        if self._cache_empty():
            return found
        for start in range(0, len(hashes), 500):
            part = list(hashes[start : start + 500])
            marks = ",".join("?" * len(part))
            for row in self._db.execute(
                f"SELECT request_hash, completion FROM cache WHERE request_hash IN ({marks})",
                part,
            ):
                found[row[0]] = Completion.from_json(row[1])
        return found

    def _cache_empty(self) -> bool:
        return self._db.execute("SELECT 1 FROM cache LIMIT 1").fetchone() is None

    def cache_many(self, items: Iterable[tuple[str, Completion]]) -> None:
        """Remember completions by request hash."""
        now = time.time()
        # In hash order, for the same reason as record_outcomes: fewer pages touched.
        params: list[tuple[Any, ...]] = sorted(
            ((h, c.to_json(), c.model, now) for h, c in items), key=_first
        )
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO cache (request_hash, completion, model, created_at)"
                " VALUES (?, ?, ?, ?)",
                params,
            )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _first(item: tuple[Any, ...]) -> Any:
    return item[0]


def _last(item: tuple[Any, ...]) -> Any:
    return item[-1]


def _outcome_params(o: RowOutcome, now: float) -> tuple[Any, ...]:
    c = o.completion
    return (
        o.state,
        o.via,
        c.text if c else None,
        c.refusal if c else None,
        c.finish_reason if c else None,
        c.prompt_tokens if c else None,
        c.completion_tokens if c else None,
        c.cached_tokens if c else None,
        o.cost_usd,
        o.error_code,
        o.error_message,
        now,
    )


_ATTEMPT_FIELDS = (
    "key",
    "attempt",
    "via",
    "started_at",
    "finished_at",
    "status_code",
    "error_code",
    "error_message",
    "prompt_tokens",
    "completion_tokens",
)
_ROW_STATES = {state.value: state for state in RowState}


def _attempt_values(a: dict[str, Any]) -> tuple[Any, ...]:
    get = a.get
    return tuple(get(k) for k in _ATTEMPT_FIELDS)


def _job(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        id=row["id"],
        spec=JobSpec.from_json(row["spec"]),
        input_path=row["input_path"],
        output_path=row["output_path"],
        mode=row["mode"],
        state=JobState(row["state"]),
        total_rows=row["total_rows"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        owner_pid=row["owner_pid"],
        owner_host=row["owner_host"],
        heartbeat_at=row["heartbeat_at"],
        run_settings=_run_settings(row["run_settings"]),
    )


def _run_settings(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        loaded = json.loads(text)
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _row(row: sqlite3.Row) -> RowRecord:
    return RowRecord(
        key=row["key"],
        position=row["position"],
        request_hash=row["request_hash"],
        state=_ROW_STATES[row["state"]],
        via=row["via"],
        attempts=row["attempts"],
        shard=row["shard"],
        answer=row["answer"],
        refusal=row["refusal"],
        finish_reason=row["finish_reason"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        cost_usd=row["cost_usd"],
        error_code=row["error_code"],
        error_message=row["error_message"],
    )


def _shard(row: sqlite3.Row) -> ShardRecord:
    return ShardRecord(
        job_id=row["job_id"],
        number=row["number"],
        state=ShardState(row["state"]),
        provider=row["provider"],
        model=row["model"],
        path=row["path"],
        input_file_id=row["input_file_id"],
        batch_id=row["batch_id"],
        status=row["status"],
        output_file_id=row["output_file_id"],
        error_file_id=row["error_file_id"],
        rows=row["rows"],
        bytes=row["bytes"],
        estimated_tokens=row["estimated_tokens"],
        count_total=row["count_total"],
        count_completed=row["count_completed"],
        count_failed=row["count_failed"],
        error=row["error"],
        created_at=row["created_at"],
        submitted_at=row["submitted_at"],
        finished_at=row["finished_at"],
        submits=row["submits"],
        not_before=row["not_before"],
        polled_at=row["polled_at"],
        status_at=row["status_at"],
    )
