"""The ledger keeps a job's state so that any process can die anywhere and resume."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rowprompt.errors import JobBusy, JobNotFound
from rowprompt.jobs import Completion, JobSpec, RowOutcome, RowState, ShardState
from rowprompt.ledger import MIGRATIONS, Ledger


def spec(**changes: object) -> JobSpec:
    base: dict[str, object] = {
        "input_hash": "abc",
        "prompt": "Hi {{ x }}",
        "system": None,
        "model": "gpt-4o-mini",
        "provider": "sandbox",
    }
    base.update(changes)
    return JobSpec(**base)  # type: ignore[arg-type]


def make_job(ledger: Ledger, n: int = 5, **changes: object) -> str:
    job = ledger.create_job(
        spec(**changes),
        ((f"k{i}", i, f"h{i}") for i in range(n)),
        input_path=None,
        output_path=None,
        mode="realtime",
    )
    return job.id


def test_a_job_created_by_another_process_meanwhile_is_found_not_created_twice(
    tmp_path: Path,
) -> None:
    # Two processes looked, found no job, and both create it: the second gets the first's.
    with Ledger(tmp_path) as first, Ledger(tmp_path) as second:
        made = make_job(first, n=5)
        asked: list[int] = []

        def rows() -> Iterator[tuple[str, int, str]]:
            for i in range(5):
                asked.append(i)
                yield (f"k{i}", i, f"other{i}")

        again = second.create_job(spec(), rows(), input_path=None, output_path=None,
                                  mode="batch")  # fmt: skip
        assert again.id == made and again.total_rows == 5
        assert asked == []  # its rows were never rendered
        assert second.count_rows(made, RowState.PENDING) == 5


def test_job_identity_follows_what_is_asked_not_how() -> None:
    assert spec().job_id() == spec().job_id()
    assert spec(prompt="Other {{ x }}").job_id() != spec().job_id()
    assert spec(model="gpt-4o").job_id() != spec().job_id()
    assert spec(params={"temperature": 0.5}).job_id() != spec().job_id()


def test_migrations_are_applied_once_and_recorded(tmp_path: Path) -> None:
    Ledger(tmp_path).close()
    Ledger(tmp_path).close()
    db = sqlite3.connect(tmp_path / "rowprompt.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_row_lives_pending_in_flight_done(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    job = make_job(ledger)
    claimed = ledger.claim_pending(job, "realtime", 2)
    assert [(k, a) for k, _, a in claimed] == [("k0", 1), ("k1", 1)]
    done = Completion("yes", "stop", 10, 2)
    ledger.record_outcomes(job, [RowOutcome("k0", RowState.DONE, "realtime", done, cost_usd=0.1)])
    p = ledger.progress(job)
    assert (p.done, p.in_flight, p.pending, p.total) == (1, 1, 3, 5)
    assert p.prompt_tokens == 10 and p.cost_usd == pytest.approx(0.1)
    # A dead process's in-flight real-time rows go back to pending.
    assert ledger.requeue_in_flight(job, "realtime") == 1
    assert ledger.count_rows(job, RowState.PENDING) == 4


def test_release_counts_attempts_and_fails_exhausted_rows(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    job = make_job(ledger, 1)
    for attempt in range(1, 4):
        ledger.claim_pending(job, "realtime", 1)
        failed = ledger.release_rows(
            job, ["k0"], max_attempts=3, error_code="server_error", error_message="boom"
        )
        assert failed == (1 if attempt == 3 else 0)
    row = next(ledger.iter_rows(job))
    assert row.state == RowState.FAILED and row.attempts == 3 and row.error_code == "server_error"


def test_a_shard_takes_its_rows_in_one_transaction(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    job = make_job(ledger, 4)
    ledger.create_shard(
        job, 0, provider="sandbox", model="m", path="x.jsonl", keys=["k0", "k2"], nbytes=10,
        estimated_tokens=99,
    )  # fmt: skip
    assert ledger.shard_rows(job, 0) == [("k0", 0), ("k2", 2)]
    assert [k for k, _ in ledger.pending_rows(job)] == ["k1", "k3"]
    ledger.update_shard(job, 0, state=ShardState.SUBMITTED, batch_id="batch_1", status="validating")
    ledger.update_shard(job, 0, status="in_progress")
    ledger.update_shard(job, 0, status="in_progress")
    (shard,) = ledger.shards(job, active_only=True)
    assert shard.batch_id == "batch_1" and shard.estimated_tokens == 99
    events = ledger._db.execute("SELECT status FROM batch_events ORDER BY id").fetchall()
    assert [e[0] for e in events] == ["planned", "validating", "in_progress"]
    # Batch rows are not real-time rows: a restart leaves them with their shard.
    assert ledger.requeue_in_flight(job, "batch") == 0


def test_cache_is_shared_across_jobs(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.cache_many([("h1", Completion("cached", "stop", 3, 1, model="m"))])
    assert Ledger(tmp_path).cached("h1") == Completion("cached", "stop", 3, 1, model="m")
    assert ledger.cached("nope") is None


def test_job_lookup_by_prefix(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    job = make_job(ledger)
    assert ledger.get_job(job[:5]).id == job
    with pytest.raises(JobNotFound):
        ledger.get_job("zzzz")


def test_a_live_owner_keeps_the_job_a_dead_one_does_not(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    job = make_job(ledger)
    code = (
        "import sys, time; from rowprompt.ledger import Ledger;"
        f"l = Ledger({str(tmp_path)!r}); l.acquire({job!r}); print('ok', flush=True);"
        "time.sleep(30)"
    )
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "ok"
        with pytest.raises(JobBusy):
            ledger.acquire(job)
    finally:
        other.kill()
        other.wait()
    deadline = time.monotonic() + 5
    while True:
        try:
            ledger.acquire(job)
            break
        except JobBusy:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    row = ledger._db.execute("SELECT owner_pid FROM jobs WHERE id = ?", (job,)).fetchone()
    assert row[0] == os.getpid()
