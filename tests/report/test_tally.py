"""What the live view keeps between refreshes adds up to what one full read finds."""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import astuple, replace
from pathlib import Path

import pytest

from rowprompt.report import tally
from rowprompt.report.data import Counts, find_job, open_readonly
from rowprompt.report.series import load_report
from rowprompt.report.tally import AttemptTally, LiveTallies, RowTally
from tests.report.conftest import Jobs


def _copy(jobs: Jobs, target: Path) -> Path:
    shutil.copytree(jobs.home, target)
    return target


def _same_attempts(a: AttemptTally, b: AttemptTally) -> None:
    assert (a.t0, a.first, a.upto, a.answered) == (b.t0, b.first, b.upto, b.answered)
    assert a.seconds == b.seconds
    assert a.failed_keys == b.failed_keys
    assert [i for i, _ in a.latencies] == [i for i, _ in b.latencies]
    assert [v for _, v in a.latencies] == pytest.approx([v for _, v in b.latencies])
    assert a.failed_kinds == b.failed_kinds


def _flat(buckets: dict[int, list[float]]) -> dict[tuple[int, int], float]:
    return {(b, i): v for b, values in buckets.items() for i, v in enumerate(values)}


def _same_counts(a: Counts, b: Counts) -> None:
    """Equal, money up to the order it was added in."""
    assert a.cost_usd == pytest.approx(b.cost_usd, rel=1e-9)
    assert (a.batch_usage or (0, 0, 0.0))[2] == pytest.approx((b.batch_usage or (0, 0, 0.0))[2])
    ignore = {"cost_usd": 0.0, "batch_usage": None}
    assert replace(a, **ignore) == replace(b, **ignore)  # type: ignore[arg-type]


def test_attempts_read_in_two_steps_equal_one_read(jobs: Jobs, tmp_path: Path) -> None:
    for job_id in (jobs.failing, jobs.realtime):
        home = _copy(jobs, tmp_path / job_id)
        db = sqlite3.connect(home / "rowprompt.db", isolation_level=None)
        # Split just after the first failed attempt: its retry comes in the second read, which
        # must know the row failed before.
        (middle,) = db.execute(
            "SELECT coalesce(min(CASE WHEN status_code != 200 THEN id END), max(id) / 2)"
            " FROM attempts WHERE job_id = ?",
            (job_id,),
        ).fetchone()
        later = db.execute("SELECT * FROM attempts WHERE id > ?", (middle,)).fetchall()
        db.execute("DELETE FROM attempts WHERE id > ?", (middle,))
        with open_readonly(home) as ro:
            kept = AttemptTally.build(ro, find_job(ro, job_id))
        # The rest arrives, as it would while the job runs.
        marks = ",".join("?" * len(later[0]))
        db.executemany(f"INSERT INTO attempts VALUES ({marks})", later)
        db.close()
        with open_readonly(home) as ro:
            job = find_job(ro, job_id)
            refreshed = kept.refresh(ro, job)
            whole = AttemptTally.build(ro, job)
        assert refreshed is kept  # read in steps, not again from the start
        _same_attempts(refreshed, whole)
    assert sum(v[tally.RETRIES] for v in whole.seconds.values()) > 0  # the real-time job's


def test_rows_summed_in_two_parts_equal_one_sum(
    jobs: Jobs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows that ended before the cut-off are summed once and checked; a settled row that
    changes (repaired, or sent back to pending by a rerun) makes the whole job read again."""
    home = _copy(jobs, tmp_path / "home")
    with open_readonly(home) as ro:
        job = find_job(ro, jobs.failing)
        t0 = AttemptTally.build(ro, job).t0
    # The job's twelve rows ended a second apart (they ended within one on this fast machine);
    # a row written again later is stamped t0 + 100 (the job itself may have ended just now).
    db = sqlite3.connect(home / "rowprompt.db")
    with db:
        db.execute("UPDATE rows SET updated_at = ? + position WHERE job_id = ?", (t0, job.id))
    middle = t0 + 6
    monkeypatch.setattr(tally, "_cut", lambda _: middle)
    with open_readonly(home) as ro:
        whole = RowTally.build(ro, job, t0, live=False)
        parted = RowTally.build(ro, job, t0, live=True)
        assert 0 < parted.settled.ended < whole.settled.ended  # both parts hold rows
        _same_counts(parted.counts(ro, job), whole.counts(ro, job))
        for width in (1, 2, 5):
            assert _flat(parted.cost_buckets(width)) == pytest.approx(
                _flat(whole.cost_buckets(width))
            )
        # Later: the cut-off moves up (one extra read), the sums stay the same.
        monkeypatch.setattr(tally, "_cut", lambda _: middle + 3600)
        assert parted.refresh(ro, job, t0) is parted and parted.cut == middle + 3600
        _same_counts(parted.counts(ro, job), whole.counts(ro, job))
        assert _flat(parted.cost_buckets(1)) == pytest.approx(_flat(whole.cost_buckets(1)))
    # A settled row is answered again (as a repair does): read again, sums right.
    monkeypatch.setattr(tally, "_cut", lambda _: middle)
    with open_readonly(home) as ro:
        parted = RowTally.build(ro, job, t0, live=True)
        before = parted.counts(ro, job).cost_usd
    with db:
        db.execute(
            "UPDATE rows SET cost_usd = cost_usd + 1, prompt_tokens = prompt_tokens + 7,"
            " updated_at = ? WHERE job_id = ? AND position = 0 AND state = 'done'",
            (t0 + 100, job.id),
        )
    with open_readonly(home) as ro:
        again = parted.refresh(ro, job, t0)
        assert again is not parted
        whole = RowTally.build(ro, job, t0, live=False)
        _same_counts(again.counts(ro, job), whole.counts(ro, job))
        assert again.counts(ro, job).cost_usd == pytest.approx(before + 1)
    # A failed row sent back to pending (as a rerun with a higher budget does).
    with open_readonly(home) as ro:
        parted = RowTally.build(ro, job, t0, live=True)
    with db:
        db.execute(
            "UPDATE rows SET state = 'pending', error_code = NULL, updated_at = ?"
            " WHERE job_id = ? AND state = 'failed'",
            (t0 + 100, job.id),
        )
    db.close()
    with open_readonly(home) as ro:
        again = parted.refresh(ro, job, t0)
        c = again.counts(ro, job)
        _same_counts(c, RowTally.build(ro, job, t0, live=False).counts(ro, job))
        assert c.statuses.get("pending") == 2 and "failed" not in c.statuses


def test_the_live_view_reads_what_the_report_reads(jobs: Jobs) -> None:
    with open_readonly(jobs.home) as db:
        for job_id in (jobs.realtime, jobs.batch, jobs.failing, jobs.cached):
            job = find_job(db, job_id)
            once = load_report(db, job)
            keep = LiveTallies()
            load_report(db, job, keep=keep)
            live = load_report(db, job, keep=keep)  # the second read: only what changed
            _same_counts(live.counts, once.counts)
            assert (live.batch_saved_usd, live.cache_saved_usd) == (
                once.batch_saved_usd,
                once.cache_saved_usd,
            )
            assert (live.realtime and astuple(live.realtime)) == (
                once.realtime and astuple(once.realtime)
            )
            assert live.latencies == pytest.approx(once.latencies)
            assert live.cost_t == once.cost_t
            assert live.cost_actual == pytest.approx(once.cost_actual)
            assert set(live.retried) == set(once.retried)
            assert live.failures == once.failures and live.sample == once.sample
