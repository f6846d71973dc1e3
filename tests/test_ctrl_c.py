"""Ctrl-C on a real ``rowprompt run``: one stops cleanly with the resume command, two exit at
once; either way the ledger holds no row in flight and ``rowprompt resume`` finishes the job."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pandas as pd
from openai import OpenAI

from rowprompt.ledger import Ledger
from rowprompt.sandbox import Sandbox
from tests.helpers import RP, fast_config, run_cli

PROMPT = "Summarise: {{ text }}"


def _table(path: Path, n: int) -> Path:
    ids, texts = [f"a{i}" for i in range(n)], [f"row {i}" for i in range(n)]
    pd.DataFrame({"id": ids, "text": texts}).to_csv(path, index=False)
    return path


def _states(home: Path) -> dict[str, int]:
    db_path = home / "rowprompt.db"
    if not db_path.exists():
        return {}
    try:
        db = sqlite3.connect(db_path, timeout=5)
        try:
            found = db.execute("SELECT state, count(*) FROM rows GROUP BY state").fetchall()
        finally:
            db.close()
    except sqlite3.OperationalError:
        return {}
    return {state: count for state, count in found}


def _wait_for(home: Path, state: str, count: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while _states(home).get(state, 0) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _start(sb: Sandbox, tmp_path: Path, n: int) -> tuple[subprocess.Popen[str], Path, list[str]]:
    home = tmp_path / "home"
    args = ["run", str(_table(tmp_path / "in.csv", n)), "--prompt", PROMPT, "--provider",
            "sandbox", "--base-url", sb.base_url, "--mode", "realtime", "--home", str(home),
            "--output", str(tmp_path / "out.csv"), "--concurrency", "4", "--yes"]  # fmt: skip
    proc = subprocess.Popen([RP, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    return proc, home, args


def test_one_ctrl_c_stops_cleanly_then_resume_finishes(tmp_path: Path) -> None:
    n = 80
    with Sandbox(fast_config(latency_ms=100)) as sb:
        proc, home, _ = _start(sb, tmp_path, n)
        _wait_for(home, "done", 8, proc)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=15)
        assert proc.returncode == 130, output  # stopped, not complete (cli: sys.exit(130))
        assert "Traceback" not in output
        found = re.search(r"rowprompt resume (\S+)", output)
        assert found is not None, output
        job_id = found.group(1).strip("`")
        states = _states(home)
        # Requests on the wire were let finish and recorded; nothing is left in flight.
        assert states.get("in_flight", 0) == 0 and states.get("failed", 0) == 0
        assert 8 <= states["done"] < n and states["done"] + states["pending"] == n
        answered = [e["last_user_message"] for e in sb.requests() if e["status"] == 200]
        assert len(answered) == states["done"]  # every answer paid for is kept

        began = time.time()
        resumed = run_cli("resume", job_id, "--home", str(home), "--quiet", timeout=60)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert _states(home) == {"done": n}
        answered = [e["last_user_message"] for e in sb.requests() if e["status"] == 200]
        assert sorted(answered) == sorted(f"Summarise: row {i}" for i in range(n))  # once each
        assert list(pd.read_csv(tmp_path / "out.csv", dtype=str)["_status"]) == ["ok"] * n
        # The resume ran at the run's --concurrency 4, not the default.
        sent = sorted(e["time"] for e in sb.requests() if e["time"] >= began)
        assert max(_most_within(sent, 0.09), default=0) <= 4


def _most_within(times: list[float], span: float) -> list[int]:
    """For each request, how many left within ``span`` s from it (answers take 0.1 s)."""
    return [sum(1 for u in times[i:] if u - t < span) for i, t in enumerate(times)]


def test_two_ctrl_c_exit_at_once_with_a_consistent_ledger(tmp_path: Path) -> None:
    n = 40
    # Answers take 3 s: a graceful stop would wait for them; a second Ctrl-C must not.
    with Sandbox(fast_config(latency_ms=3000)) as sb:
        proc, home, _ = _start(sb, tmp_path, n)
        _wait_for(home, "in_flight", 1, proc)  # the engine runs, its handler is in place
        time.sleep(0.3)  # the first request is on the wire, its answer 3 s away
        proc.send_signal(signal.SIGINT)
        time.sleep(0.1)
        began = time.monotonic()
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=15)
        took = time.monotonic() - began
        assert proc.returncode == 130, output
        assert took < 2.0, (took, output)  # not the 3 s the requests on the wire would take
        assert "Traceback" not in output and "rowprompt resume" in output
        states = _states(home)
        assert states.get("in_flight", 0) == 0 and states.get("failed", 0) == 0
        assert states.get("done", 0) + states.get("pending", 0) == n


def test_resume_runs_the_job_as_it_last_ran(tmp_path: Path) -> None:
    from rowprompt.runner import RunOptions, options_for_job

    ledger = Ledger(tmp_path)
    job = ledger.create_job(_spec(), [("k0", 0, "h0")], input_path=None, output_path=None,
                            mode="realtime")  # fmt: skip
    settings = {"rpm": 300, "tpm": None, "concurrency": 4, "max_attempts": 3}
    ledger.set_job_run_settings(job.id, settings)
    options = options_for_job(ledger.get_job(job.id), RunOptions())
    kept = (options.rpm, options.tpm, options.concurrency, options.max_attempts)
    assert kept == (300, None, 4, 3)
    # A flag given to this command wins over the stored one.
    options = options_for_job(ledger.get_job(job.id), RunOptions(concurrency=9))
    assert options.concurrency == 9 and options.rpm == 300


# Prices that make a handful of tokens cost cents (batch: half), so a budget bites at 12 rows;
# answers longer than --max-tokens, so each one costs its whole reservation.
DEAR = '[prices."gpt-4o-mini"]\ninput = 1000.0\noutput = 2000.0\n'
LONG = [{"pattern": ".", "answer": " ".join(["word"] * 200)}]


def _dear(tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "rowprompt.toml"
    config.write_text(DEAR, encoding="utf-8")
    return {"ROWPROMPT_CONFIG": str(config)}


def _realtime_spend(sb: Sandbox) -> float:
    tokens = sb.stats()["tokens_per_second"]
    prompt = sum(s["prompt_tokens"] for s in tokens)
    completion = sum(s["completion_tokens"] for s in tokens)
    return (prompt * 1000.0 + completion * 2000.0) / 1e6


def test_a_stopped_run_resumes_under_its_budget_and_limits(tmp_path: Path) -> None:
    """`run --budget --rpm --concurrency`, Ctrl-C, then `resume JOB` with no flags: the budget
    still holds and the job keeps its --rpm and --concurrency."""
    env, home, budget, n = _dear(tmp_path), tmp_path / "home", 0.5, 30
    with Sandbox(fast_config(latency_ms=100, rules=LONG)) as sb:
        args = ["run", str(_table(tmp_path / "in.csv", n)), "--prompt", PROMPT, "--provider",
                "sandbox", "--base-url", sb.base_url, "--mode", "realtime", "--home", str(home),
                "--output", str(tmp_path / "out.csv"), "--max-tokens", "20", "--budget",
                str(budget), "--rpm", "6000", "--concurrency", "2", "--yes",
                "--no-report"]  # fmt: skip
        proc = subprocess.Popen([RP, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env={**os.environ, **env})  # fmt: skip
        _wait_for(home, "done", 2, proc)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=15)
        assert proc.returncode == 130, output
        found = re.search(r"rowprompt resume (\S+)", output)
        assert found is not None, output
        job_id = found.group(1).strip("`")
        assert _states(home).get("pending", 0) > n // 2  # most of the job is left to resume

        resumed = run_cli("resume", job_id, "--home", str(home), "--quiet", env=env)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        spent = _realtime_spend(sb)
        status = run_cli("status", job_id, "--home", str(home))
    assert 0 < spent <= budget  # the sandbox's own bill
    frame = pd.read_csv(tmp_path / "out.csv")
    assert 0 < (frame["_status"] == "truncated").sum() < n
    assert (frame["_status"] == "skipped").sum() > 0
    # The resume ran with, and stored again, the settings the run was given.
    settings = Ledger(home).get_job(job_id).run_settings
    assert (settings["rpm"], settings["concurrency"], settings["budget"]) == (6000, 2, budget)
    assert settings["max_attempts"] == 6 and settings["no_cache"] is False
    line = next(x for x in status.stdout.splitlines() if x.strip().startswith("runs:"))
    assert "--rpm 6000" in line and "--concurrency 2" in line and f"--budget {budget}" in line


def test_a_detached_run_resumes_under_its_budget(tmp_path: Path) -> None:
    """`run --budget --detach` leaves a batch in flight; `resume JOB` asks again the rows the
    budget held back only with what that batch may still cost held."""
    env, home, budget, n = _dear(tmp_path), tmp_path / "home", 0.15, 12
    # The first batch is still validating when `resume` starts: its rows are paid for later.
    with Sandbox(fast_config(batch_validating_seconds=3.0, rules=LONG)) as sb:
        args = ["run", str(_table(tmp_path / "in.csv", n)), "--prompt", PROMPT, "--provider",
                "sandbox", "--base-url", sb.base_url, "--mode", "batch", "--home", str(home),
                "--output", str(tmp_path / "out.csv"), "--max-tokens", "20", "--budget",
                str(budget), "--poll-interval", "0.1", "--detach", "--yes",
                "--no-report"]  # fmt: skip
        first = run_cli(*args, env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        found = re.search(r"rowprompt collect (\S+) --wait", first.stdout)
        assert found is not None, first.stdout
        job_id = found.group(1)
        assert sb.stats()["batches_created"] == 1

        resumed = run_cli("resume", job_id, "--home", str(home), "--quiet", env=env)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        usage = [b.usage for b in OpenAI(base_url=sb.base_url, api_key="sk-test").batches.list()]
    # The sandbox's own bill, at these prices (batch: half), stays under the budget.
    spent = sum(u.input_tokens * 500.0 + u.output_tokens * 1000.0 for u in usage if u) / 1e6
    assert 0 < spent <= budget
    frame = pd.read_csv(tmp_path / "out.csv")
    assert 0 < (frame["_status"] == "truncated").sum() < n
    assert (frame["_status"] == "skipped").sum() > 0
    assert Ledger(home).get_job(job_id).run_settings["poll_interval"] == 0.1


def _spec() -> Any:
    from rowprompt.jobs import JobSpec

    return JobSpec(input_hash="t", prompt="{{ x }}", system=None, model="gpt-4o-mini",
                   provider="sandbox", params={}, mode="realtime")  # fmt: skip
