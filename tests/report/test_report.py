"""The report: numbers that match the ledger, one self-contained file, graceful degradation."""

from __future__ import annotations

import hashlib
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from rowprompt.ledger import Ledger
from rowprompt.report import build_report, write_report
from rowprompt.report.commands import report_command
from rowprompt.report.data import find_job, open_readonly
from rowprompt.report.series import load_report
from tests.report.conftest import Jobs


def _files(home: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in home.glob("rowprompt.db*")}


def test_realtime_numbers_match_the_ledger(jobs: Jobs) -> None:
    with open_readonly(jobs.home) as db:
        data = load_report(db, find_job(db, jobs.realtime))
    ledger = Ledger(jobs.home)
    try:
        attempts = ledger.count_attempts(jobs.realtime)
        progress = ledger.progress(jobs.realtime)
    finally:
        ledger.close()
    assert data.state == "done"
    assert data.counts.total == 60 and data.counts.statuses == {"ok": 60}
    assert data.counts.parse_checked
    assert data.counts.cost_usd == pytest.approx(progress.cost_usd)
    rt = data.realtime
    assert rt is not None and rt.total == attempts
    assert sum(rt.rate_limited) >= 3  # the storm's 429s are marked
    assert sum(rt.retries) >= sum(rt.rate_limited)
    assert len(data.latencies) == 60
    assert data.cost_actual[-1] == pytest.approx(progress.cost_usd)
    assert not data.shards and data.queue is None
    # The limit in force is recorded as the engine learns it: no "not recorded" note.
    assert not any("rate limit in force is not recorded" in n for n in data.notes)
    # The input file is still there: the sample shows its columns beside the parsed answer.
    assert data.sample and all(r.inputs.get("review") for r in data.sample)
    assert {r.answer for r in data.sample} <= {"positive", "negative", "neutral"}


def test_batch_timeline_queue_and_savings(jobs: Jobs) -> None:
    with open_readonly(jobs.home) as db:
        data = load_report(db, find_job(db, jobs.batch))
    assert data.realtime is None and data.counts.by_via == {"batch": 60}
    assert len(data.shards) > 1  # split to fit the 500-token queue
    statuses = {s for shard in data.shards for s, _ in shard.events}
    assert {"validating", "completed"} <= statuses
    assert data.queue is not None and data.queue.limit == 500
    assert data.queue.limit_source == "learned"
    assert data.batch_saved_usd is not None and data.batch_saved_usd > 0


def test_failures_are_grouped_with_examples(jobs: Jobs) -> None:
    with open_readonly(jobs.home) as db:
        data = load_report(db, find_job(db, jobs.failing))
    assert data.counts.statuses["failed"] == 2 and data.counts.statuses["refused"] == 2
    (group,) = data.failures
    assert group.count == 2 and "Scripted bad request" in group.message
    assert [pos for pos, _, _ in group.examples] == [1, 7]
    # A DataFrame job: no input file, so the sample says so instead of inventing inputs.
    assert data.sample and all(not r.inputs for r in data.sample)


def test_report_is_one_self_contained_file(jobs: Jobs) -> None:
    before = _files(jobs.home)
    path = write_report(jobs.realtime, str(jobs.home))
    assert path == jobs.home / "reports" / f"{jobs.realtime}.html"
    html = path.read_text(encoding="utf-8")
    assert _files(jobs.home) == before  # read-only: the ledger is untouched
    assert len(html) < 400_000
    assert html.count('<svg class="chart"') == 3  # requests, latency, cost
    assert "<script" not in html and "@import" not in html and '<link rel="stylesheet"' not in html
    # No URL leaves the file, except XML namespace names, which browsers never fetch.
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", html)) - {
        "http://www.w3.org/2000/svg",
        "http://www.w3.org/1999/xlink",
        "http://purl.org/dc/elements/1.1/",
        "http://creativecommons.org/ns#",
        "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    }
    assert not {u for u in urls if "sandbox" not in u and "127.0.0.1" not in u}, urls
    assert "Sentiment of: {{ review }}" in html
    assert "Great product" in html  # the sample's inputs


def test_batch_report_draws_timeline_and_queue(jobs: Jobs, tmp_path: Path) -> None:
    out = write_report(jobs.batch, str(jobs.home), str(tmp_path / "b.html"))
    html = out.read_text(encoding="utf-8")
    for name in ("batches", "queue", "cost"):
        assert f'data-chart="{name}"' in html
    assert "queue limit 500" in html


def test_report_command(jobs: Jobs, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    result = CliRunner().invoke(
        report_command, [jobs.failing[:6], "--home", str(jobs.home), "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote {out}"
    assert "invalid_request" in out.read_text(encoding="utf-8")
    missing = CliRunner().invoke(report_command, ["nope", "--home", str(jobs.home)])
    assert missing.exit_code != 0 and missing.output.startswith("Error: no job 'nope'")
    nowhere = CliRunner().invoke(report_command, ["x", "--home", str(tmp_path / "empty")])
    assert nowhere.exit_code != 0 and "no rowprompt ledger" in nowhere.output


def test_report_reads_while_another_process_writes(home_copy: Path, jobs: Jobs) -> None:
    writer = sqlite3.connect(home_copy / "rowprompt.db", isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE rows SET cost_usd = 99 WHERE job_id = ?", (jobs.realtime,))
        html = build_report(jobs.realtime, str(home_copy))  # the writer's lock does not block
        assert "$5,940" not in html  # uncommitted changes are not seen
        writer.execute("ROLLBACK")
    finally:
        writer.close()


def test_degrades_without_newer_tables_and_draws_a_recorded_limit(
    home_copy: Path, jobs: Jobs
) -> None:
    db = sqlite3.connect(home_copy / "rowprompt.db")
    with db:
        db.execute("DROP TABLE queue_limits")  # a ledger from before migration 2
        db.execute("DELETE FROM rate_limits")
        start = db.execute("SELECT min(started_at) FROM attempts").fetchone()[0]
        db.execute(
            "INSERT INTO rate_limits VALUES (?, ?, 3000, 400000, 'header')", (jobs.realtime, start)
        )
    db.close()
    batch = build_report(jobs.batch, str(home_copy))
    assert 'data-chart="queue"' in batch and "queue limit 500" not in batch
    realtime = build_report(jobs.realtime, str(home_copy))
    assert "limit (rpm)" in realtime and "not recorded" not in realtime
    # A ledger from before migration 3 has no limit history: the report says so.
    db = sqlite3.connect(home_copy / "rowprompt.db")
    with db:
        db.execute("DROP TABLE rate_limits")
    db.close()
    older = build_report(jobs.realtime, str(home_copy))
    assert "not recorded" in older


def test_missing_input_file_still_reports(jobs: Jobs, tmp_path: Path) -> None:
    home = tmp_path / "home"
    shutil.copytree(jobs.home, home)
    db = sqlite3.connect(home / "rowprompt.db")
    with db:
        db.execute(
            "UPDATE jobs SET input_path = ? WHERE id = ?",
            (str(tmp_path / "gone.csv"), jobs.realtime),
        )
    db.close()
    with open_readonly(home) as ro:
        data = load_report(ro, find_job(ro, jobs.realtime))
    assert data.sample and not any(r.inputs for r in data.sample)
