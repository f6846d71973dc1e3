"""What one live refresh of `rowprompt ui` costs on a big ledger.

Builds a synthetic ledger (default: one running real-time job of 1,000,000 rows with
1,000,000 logged attempts over three hours, 1% of rows rate-limited once then answered, plus
two small finished jobs), then times what the UI does every 2 s while the job runs: the job
page's refresh (``/api/jobs/JOB``: read the ledger, draw the charts, render the body) and the
jobs list (``/api/jobs``), each part on its own too. The ledger is written straight with SQL
(no provider, no engine), so building it takes seconds, not hours.

``--home DIR`` keeps the ledger there and reuses it on the next run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rowprompt.answers import AnswerSpec
from rowprompt.jobs import JobSpec
from rowprompt.ledger import Ledger
from rowprompt.report import data as rdata
from rowprompt.report import series, ui
from rowprompt.report.charts import render_all
from rowprompt.report.html import render_body
from rowprompt.report.tally import AttemptTally, RowTally, jobs

SPAN_S = 3 * 3600.0


def _spec(prompt: str, rows: int) -> JobSpec:
    return JobSpec(
        input_hash=f"bench-{rows}",
        prompt=prompt,
        system=None,
        model="gpt-4o-mini",
        provider="openai",
        answer_spec=AnswerSpec.from_options("choice:positive,negative,neutral").to_json(),
        mode="realtime",
    )


def build(home: Path, rows: int, attempts: int) -> str:
    """The synthetic ledger; returns the big job's id."""
    ledger = Ledger(home)
    try:
        big = _fill(ledger, _spec("Sentiment of: {{ review }}", rows), rows, attempts, live=True)
        for n in (1, 2):
            _fill(ledger, _spec(f"Small job {n}: {{{{ review }}}}", 500), 500, 500, live=False)
    finally:
        ledger.close()
    return big


def _fill(ledger: Ledger, spec: JobSpec, rows: int, attempts: int, *, live: bool) -> str:
    job = ledger.create_job(
        spec,
        ((str(i), i, f"h{i}") for i in range(rows)),
        input_path=None,
        output_path=None,
        mode="realtime",
    )
    retried = max(0, min(rows, attempts) // 100)  # rows rate-limited once, then answered
    answered = min(rows, attempts - retried)  # rows with an attempt, in key order
    t0 = time.time() - SPAN_S if live else job.created_at - 600
    step = (SPAN_S if live else 300) / max(1, attempts)
    now = time.time()
    with ledger.transaction() as db:
        db.executemany(
            "UPDATE rows SET state = 'done', via = 'realtime', attempts = 1, answer = ?,"
            " prompt_tokens = 120, completion_tokens = 2, cost_usd = 0.0000192, updated_at = ?"
            " WHERE job_id = ? AND key = ?",
            (("positive", t0 + i * step, job.id, str(i)) for i in range(answered)),
        )

        def logged() -> Any:
            n = 0
            for i in range(answered):
                if i < retried:
                    at = t0 + n * step
                    yield (job.id, str(i), 1, "realtime", at - 0.4, at, 429, "rate_limit",
                           "Rate limit reached.", None, None)  # fmt: skip
                    n += 1
                at = t0 + n * step
                yield (job.id, str(i), 1, "realtime", at - 0.4, at, 200, None, None, 120, 2)
                n += 1

        db.executemany(
            "INSERT INTO attempts (job_id, key, attempt, via, started_at, finished_at,"
            " status_code, error_code, error_message, prompt_tokens, completion_tokens)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            logged(),
        )
        db.executemany(
            "INSERT INTO rate_limits VALUES (?, ?, ?, ?, ?)",
            [(job.id, t0, 30000, 150_000_000, "flag"), (job.id, t0 + 900, 10000, 10_000_000,
              "header")],
        )  # fmt: skip
        if live:
            db.execute(
                "UPDATE jobs SET owner_pid = ?, owner_host = 'bench', heartbeat_at = ?,"
                " updated_at = ? WHERE id = ?",
                (os.getpid(), now, now, job.id),
            )
        else:
            db.execute("UPDATE jobs SET state = 'done' WHERE id = ?", (job.id,))
    return job.id


def timed(label: str, call: Callable[[], Any], repeat: int, between: Callable[[], Any] | None = None
          ) -> float:  # fmt: skip
    """The median of ``repeat`` calls (``between`` runs before each, untimed), printed."""
    times = []
    for _ in range(repeat):
        if between is not None:
            between()
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"  {label:<46} {median * 1000:8.0f} ms", flush=True)
    return median


class Writer:
    """Moves the running job on as its driver would: rows answered, attempts logged."""

    def __init__(self, home: Path, job_id: str, per_step: int) -> None:
        self.ledger, self.job_id, self.per_step = Ledger(home), job_id, per_step

    def step(self) -> None:
        now = time.time()
        with self.ledger.transaction() as db:
            keys = [
                r[0]
                for r in db.execute(
                    "SELECT key FROM rows WHERE job_id = ? AND state = 'pending' LIMIT ?",
                    (self.job_id, self.per_step),
                )
            ]
            db.executemany(
                "UPDATE rows SET state = 'done', via = 'realtime', attempts = 1, answer = ?,"
                " prompt_tokens = 120, completion_tokens = 2, cost_usd = 0.0000192,"
                " updated_at = ? WHERE job_id = ? AND key = ?",
                [("neutral", now, self.job_id, k) for k in keys],
            )
            db.executemany(
                "INSERT INTO attempts (job_id, key, attempt, via, started_at, finished_at,"
                " status_code, prompt_tokens, completion_tokens)"
                " VALUES (?, ?, 1, 'realtime', ?, ?, 200, 120, 2)",
                [(self.job_id, k, now - 0.4, now) for k in keys],
            )
            db.execute("UPDATE jobs SET heartbeat_at = ? WHERE id = ?", (now, self.job_id))

    def close(self) -> None:
        self.ledger.close()


def measure(home: Path, job_id: str, repeat: int) -> dict[str, float]:
    """Times of the live view's reads, first and while the job moves on."""
    figures: dict[str, float] = {}
    writer = Writer(home, job_id, per_step=200)
    ui.THROTTLE = 0.0  # every request reads: what a refresh costs, not how often it may run
    try:
        print("first read of the job (page just opened):")
        with rdata.open_readonly(home) as db:
            job = rdata.find_job(db, job_id)
            figures["fingerprint"] = timed("fingerprint", lambda: rdata.fingerprint(db, job), 1)
            attempts = AttemptTally.build(db, job)
            figures["attempts first"] = timed(
                "attempt tally, built", lambda: AttemptTally.build(db, job), 1
            )
            figures["rows first"] = timed(
                "row tally, built (live)",
                lambda: RowTally.build(db, job, attempts.t0, live=True),
                1,
            )
            data = series.load_report(db, job, check_parse=False)
        figures["render"] = timed(
            "render (charts + body)", lambda: render_body(data, render_all(data)), repeat
        )
        renders = ui._Renders()
        figures["page first"] = timed(
            "job page, first (/api/jobs/JOB)", lambda: renders.job(str(home), job_id), 1
        )
        figures["list first"] = timed(
            "jobs list, first (/api/jobs)", lambda: renders.summaries(str(home)), 1
        )
        print(f"while the job runs ({writer.per_step} rows answered between reads):")
        figures["page"] = timed(
            "job page refresh (/api/jobs/JOB)",
            lambda: renders.job(str(home), job_id),
            repeat,
            writer.step,
        )
        figures["list"] = timed(
            "jobs list refresh (/api/jobs)", lambda: renders.summaries(str(home)), repeat,
            writer.step,
        )  # fmt: skip
        figures["page unchanged"] = timed(
            "job page, ledger unchanged", lambda: renders.job(str(home), job_id), repeat
        )
        print("the report file (`rowprompt report`, read once):")
        with rdata.open_readonly(home) as db:
            job = rdata.find_job(db, job_id)
            figures["report read"] = timed(
                "load_report (no parse check)",
                lambda: series.load_report(db, job, check_parse=False),
                1,
            )
    finally:
        writer.close()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--attempts", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--home", type=Path, help="keep the ledger here (reused if present)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rowprompt-bench-report-") as scratch:
        home = args.home or Path(scratch) / "home"
        if (home / "rowprompt.db").is_file():
            with rdata.open_readonly(home) as db:
                job_id = next(j.id for j in jobs(db) if j.total_rows > 500)
            print(f"reusing the ledger at {home}")
            # The job reads as running only while its heartbeat is fresh.
            ledger = Ledger(home)
            with ledger.transaction() as db:
                db.execute("UPDATE jobs SET heartbeat_at = ? WHERE id = ?", (time.time(), job_id))
            ledger.close()
        else:
            start = time.perf_counter()
            job_id = build(home, args.rows, args.attempts)
            print(f"built {args.rows:,} rows, {args.attempts:,} attempts in"
                  f" {time.perf_counter() - start:.1f} s")  # fmt: skip
        figures = measure(home, job_id, args.repeat)
    print(
        f"\nlive refresh on {args.rows:,} rows / {args.attempts:,} attempts:"
        f" job page {figures['page']:.2f} s (first {figures['page first']:.2f} s),"
        f" jobs list {figures['list']:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
