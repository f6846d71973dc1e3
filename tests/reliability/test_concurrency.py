"""Two rowprompt processes on one ledger: no corruption, no double submission, one model's
batch queue shared."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

from rowprompt.sandbox import Sandbox
from tests.helpers import RP, fast_config
from tests.reliability.harness import (
    check_output,
    clean_env,
    expected_answers,
    is_clear_error,
    job_args,
    make_table,
    paid_per_row,
)


def _both(args_a: list[str], args_b: list[str]) -> tuple[subprocess.CompletedProcess[str], ...]:
    procs = [
        subprocess.Popen(
            [RP, *a], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env()
        )
        for a in (args_a, args_b)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return tuple(results)


def _integrity(home: Path) -> str:
    db = sqlite3.connect(home / "rowprompt.db")
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


def test_two_processes_on_the_same_job(tmp_path: Path) -> None:
    n = 30
    src, home, out = make_table(tmp_path / "in.csv", n), tmp_path / "home", tmp_path / "out.csv"
    with Sandbox(fast_config(latency_ms=40.0, batch_rows_per_second=60.0)) as sb:
        args = job_args(src, home, out, sb.base_url, "hybrid")
        first, second = _both(args, args)
        codes = sorted([first.returncode, second.returncode])
        for result in (first, second):
            if result.returncode != 0:
                # The loser says the job runs elsewhere (JobBusy, exit 3), in one line.
                assert result.returncode == 3 and is_clear_error(result.stderr), result.stderr
                assert "another process" in result.stderr
        assert codes[0] == 0
        if codes[1] != 0:  # the job was left half done by nobody: run it to the end
            assert subprocess.run([RP, *args], env=clean_env(), check=False).returncode == 0
        final = check_output(out, n, expected_answers(n))
        assert (final.lost, final.duplicated, final.wrong, final.not_ok) == (0, 0, 0, 0)
        realtime, batch = paid_per_row(sb, n)
        assert [r for r in range(n) if realtime[r] + batch[r] != 1] == []
        assert sb.stats()["batch_custom_ids_billed_twice"] == 0
    assert _integrity(home) == "ok"


def test_two_jobs_on_the_same_model_share_the_ledger(tmp_path: Path) -> None:
    n = 30
    src, home = make_table(tmp_path / "in.csv", n), tmp_path / "home"
    with Sandbox(fast_config(latency_ms=20.0, batch_rows_per_second=60.0)) as sb:
        a = job_args(src, home, tmp_path / "a.csv", sb.base_url, "batch")
        b = job_args(src, home, tmp_path / "b.csv", sb.base_url, "realtime")
        b[b.index("--prompt") + 1] = "Summarise: {{ text }}!"  # another job, same input
        first, second = _both(a, b)
        assert first.returncode == 0, first.stderr
        assert second.returncode == 0, second.stderr
        assert check_output(tmp_path / "a.csv", n, expected_answers(n)).not_ok == 0
        got = check_output(tmp_path / "b.csv", n)
        assert (got.lost, got.duplicated, got.not_ok) == (0, 0, 0)
        assert sb.stats()["batch_custom_ids_billed_twice"] == 0
        assert sb.stats()["batches_created"] == 1
        assert len(sb.requests()) == n  # the realtime job's rows, each once
    assert _integrity(home) == "ok"


def test_two_batch_jobs_share_one_model_queue(tmp_path: Path) -> None:
    # Each job alone fits the model's enqueued-token limit, both together do not: the
    # ledger's shared queue accounting must keep their batches under it together, or the
    # provider refuses them (token_limit_exceeded) and rows go round again.
    n, limit = 24, 480
    src, home = make_table(tmp_path / "in.csv", n), tmp_path / "home"
    config = fast_config(batch_rows_per_second=300.0, enqueued_token_limit=limit)
    with Sandbox(config) as sb:
        a = job_args(src, home, tmp_path / "a.csv", sb.base_url, "batch")
        b = job_args(src, home, tmp_path / "b.csv", sb.base_url, "batch")
        b[b.index("--prompt") + 1] = "Summarise: {{ text }}!"  # another job, same model
        limit_args = ["--batch-token-limit", str(limit)]
        first, second = _both([*a, *limit_args], [*b, *limit_args])
        assert first.returncode == 0, first.stderr
        assert second.returncode == 0, second.stderr
        assert check_output(tmp_path / "a.csv", n, expected_answers(n)).not_ok == 0
        got = check_output(tmp_path / "b.csv", n)
        assert (got.lost, got.duplicated, got.not_ok) == (0, 0, 0)
        stats = sb.stats()
        assert stats["batches_by_final_state"].get("failed", 0) == 0  # no token_limit_exceeded
        assert max(stats["peak_enqueued_tokens"].values()) <= limit
        assert stats["batch_lines_billed"] == 2 * n  # every line once
        assert stats["batch_custom_ids_billed_twice"] == 0
    assert _integrity(home) == "ok"
