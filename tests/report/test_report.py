"""The report: numbers that match the ledger, one self-contained file, graceful degradation."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from rowprompt.ledger import Ledger
from rowprompt.report import build_report, write_report
from rowprompt.report.commands import report_command
from rowprompt.report.data import find_job, open_readonly
from rowprompt.report.html import money
from rowprompt.report.series import load_report
from tests.report.conftest import Jobs


def _files(home: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in home.glob("rowprompt.db*")}


def _retries_by_window(home: Path, job_id: str) -> int:
    """Retries as first defined: every real-time attempt of a row after its first."""
    db = sqlite3.connect(home / "rowprompt.db")
    try:
        return int(
            db.execute(
                "SELECT count(*) FROM (SELECT row_number() OVER (PARTITION BY key ORDER BY id)"
                " AS nth FROM attempts WHERE job_id = ? AND via = 'realtime') WHERE nth > 1",
                (job_id,),
            ).fetchone()[0]
        )
    finally:
        db.close()


def test_realtime_numbers_match_the_ledger(jobs: Jobs) -> None:
    with open_readonly(jobs.home) as db:
        data = load_report(db, find_job(db, jobs.realtime))
    ledger = Ledger(jobs.home)
    try:
        attempts = ledger.count_attempts(jobs.realtime)
        progress = ledger.progress(jobs.realtime)
        first, last = ledger._db.execute(
            "SELECT min(started_at), max(finished_at) FROM attempts WHERE job_id = ?",
            (jobs.realtime,),
        ).fetchone()
    finally:
        ledger.close()
    assert data.state == "done"
    assert data.counts.total == 60 and data.counts.statuses == {"ok": 60}
    assert data.counts.parse_checked
    assert data.counts.cost_usd == pytest.approx(progress.cost_usd)
    assert (data.counts.prompt_tokens, data.counts.completion_tokens) == (
        progress.prompt_tokens,
        progress.completion_tokens,
    )
    # From the first request sent to the last answer written.
    assert data.t0 == pytest.approx(first) and last <= data.end <= last + 1
    rt = data.realtime
    assert rt is not None and rt.total == attempts
    assert sum(rt.rate_limited) >= 3  # the storm's 429s are marked
    assert sum(rt.retries) >= sum(rt.rate_limited)
    assert sum(rt.retries) == _retries_by_window(jobs.home, jobs.realtime)
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
    # The second and eighth rows ("Terrible ..."), numbered from 1 as the CLI numbers them.
    assert [(pos, label) for pos, label, _ in group.examples] == [(1, "2"), (7, "8")]
    html = build_report(jobs.failing, str(jobs.home))
    assert "row 2<br>row 8" in html
    # A DataFrame job: no input file, so the sample says so instead of inventing inputs.
    assert data.sample and all(not r.inputs for r in data.sample)


def test_rows_are_named_as_the_cli_names_them(jobs: Jobs, home_copy: Path) -> None:
    """Counted from 1 (the ledger counts from 0); by their id when the job has an id column."""
    with open_readonly(jobs.home) as db:
        data = load_report(db, find_job(db, jobs.realtime))
    first = data.sample[0]
    assert (first.position, first.label) == (0, "1")  # the sample always holds row 1
    html = build_report(jobs.realtime, str(jobs.home))
    assert '<td class="num">1</td>' in html and '<td class="num">0</td>' not in html
    # The same failing job, as if run with --id-column: its rows are keyed by their ids.
    db = sqlite3.connect(home_copy / "rowprompt.db")
    with db:
        (spec,) = db.execute("SELECT spec FROM jobs WHERE id = ?", (jobs.failing,)).fetchone()
        db.execute(
            "UPDATE jobs SET spec = ? WHERE id = ?",
            (json.dumps({**json.loads(spec), "id_column": "sku"}), jobs.failing),
        )
        db.execute(
            "UPDATE rows SET key = 'SKU-' || (position * 3) WHERE job_id = ?", (jobs.failing,)
        )
    db.close()
    with open_readonly(home_copy) as ro:
        data = load_report(ro, find_job(ro, jobs.failing))
    assert [label for _, label, _ in data.failures[0].examples] == ["SKU-3", "SKU-21"]
    assert "row SKU-3<br>row SKU-21" in build_report(jobs.failing, str(home_copy))


def test_what_the_cache_saved(jobs: Jobs) -> None:
    """The same job in another mode: every row from the cache, nothing paid, the saving
    priced as the real-time answers it reused were."""
    with open_readonly(jobs.home) as db:
        cached = load_report(db, find_job(db, jobs.cached))
        first = load_report(db, find_job(db, jobs.realtime))
    assert cached.counts.by_via == {"cache": 60} and cached.counts.cost_usd == 0
    assert cached.realtime is None  # no request was sent
    assert cached.cache_saved_usd is not None and cached.cache_saved_usd > 0
    assert cached.cache_saved_usd == pytest.approx(first.counts.cost_usd)
    assert cached.batch_saved_usd == 0 and first.cache_saved_usd == 0
    html = build_report(jobs.cached, str(jobs.home))
    saved = money(cached.cache_saved_usd)
    assert f'<div class="k">Saved</div><div class="v">{saved}</div>' in html
    assert f"batch $0.0000, cache {saved}" in html


def test_report_is_one_self_contained_file(jobs: Jobs) -> None:
    before = _files(jobs.home)
    path = write_report(jobs.realtime, str(jobs.home))
    assert path == jobs.home / "reports" / f"{jobs.realtime}.html"
    # It holds inputs and answers: the owner's alone, as the ledger is.
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    html = path.read_text(encoding="utf-8")
    assert _files(jobs.home) == before  # read-only: the ledger is untouched
    assert len(html) < 400_000
    assert html.count('<svg class="chart"') == 3  # requests, latency, cost
    # The request chart marks the 429s and retries, and draws the limit the sandbox sent.
    with open_readonly(jobs.home) as db:
        rt = load_report(db, find_job(db, jobs.realtime)).realtime
    assert rt is not None and rt.limit_rpm and rt.limit_rpm[0] == 1200
    chart = html[html.index('data-chart="realtime"') :].split("</svg>")[0]
    for label in ("answered (200)", "429", f"retries ({sum(rt.retries):,})", "limit (rpm)"):
        assert f">{label}<" in chart or f"<!-- {label} -->" in chart, label
    # The provider's 10,000,000 tokens a minute would flatten the token bars: said, not drawn.
    assert "limit (tpm) 10,000,000, off the scale" in chart
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
