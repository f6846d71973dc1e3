"""Disk trouble: unwritable output, a full disk, a ledger locked at the start or mid-job. A
clear error, then resume."""

from __future__ import annotations

import contextlib
import errno
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rowprompt import ledger as ledger_module
from rowprompt import tables
from rowprompt.cli import main
from rowprompt.sandbox import Sandbox
from tests.helpers import RP, fast_config
from tests.reliability.harness import (
    check_output,
    clean_env,
    expected_answers,
    is_clear_error,
    job_args,
    make_table,
)


@contextlib.contextmanager
def tmpfs(path: Path, *options: str) -> Iterator[Path]:
    """A tiny tmpfs at ``path`` (root only); skips the test where mounting is not allowed."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RP, *args], capture_output=True, text=True, timeout=120, env=clean_env(), check=False
    )


def test_output_under_a_file_stops_before_sending(sandbox: Sandbox, tmp_path: Path) -> None:
    src = make_table(tmp_path / "in.csv", 5)
    (tmp_path / "afile").write_text("x")
    result = _run(
        job_args(src, tmp_path / "h", tmp_path / "afile" / "out.csv", sandbox.base_url, "realtime")
    )
    assert is_clear_error(result.stderr) and "afile" in result.stderr, result.stderr
    assert sandbox.requests() == []


def test_read_only_output_directory_stops_before_sending(sandbox: Sandbox, tmp_path: Path) -> None:
    src = make_table(tmp_path / "in.csv", 5)
    with tmpfs(tmp_path / "ro", "ro", "size=64k") as ro:
        result = _run(job_args(src, tmp_path / "h", ro / "out.csv", sandbox.base_url, "batch"))
    assert is_clear_error(result.stderr) and "not writable" in result.stderr, result.stderr
    assert sandbox.requests() == [] and sandbox.stats()["batches_created"] == 0


def test_disk_full_on_output_is_clear_and_the_job_resumes(sandbox: Sandbox, tmp_path: Path) -> None:
    n = 400  # about 40 kB of output: more than the 16 kB disk
    src, home = make_table(tmp_path / "in.csv", n), tmp_path / "h"
    with tmpfs(tmp_path / "full", "size=16k") as full:
        result = _run(job_args(src, home, full / "out.csv", sandbox.base_url, "batch"))
        assert result.returncode != 0
        assert is_clear_error(result.stderr) and "out.csv" in result.stderr, result.stderr
        assert not (full / "out.csv").exists()  # nothing half-written
        assert list(full.iterdir()) == []  # and no temporary file left behind
    paid = sandbox.stats()["batch_lines_billed"]
    job = subprocess.run([RP, "jobs", "--home", str(home)], capture_output=True, text=True)
    job_id = job.stdout.splitlines()[1].split()[0]
    again = _run(["collect", job_id, "--home", str(home), "--output", str(tmp_path / "o.csv")])
    assert again.returncode == 0, again.stderr
    got = check_output(tmp_path / "o.csv", n, expected_answers(n))
    assert (got.lost, got.duplicated, got.wrong, got.not_ok) == (0, 0, 0, 0)
    assert sandbox.stats()["batch_lines_billed"] == paid  # nothing asked again


def test_disk_full_simulated_in_process(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same without mount: a writer that fails with ENOSPC halfway through."""
    src, home, out = make_table(tmp_path / "in.csv", 10), tmp_path / "h", tmp_path / "out.csv"
    real = tables._WRITERS["csv"]

    def full(frame: Any, tmp: str, name: str) -> None:
        Path(tmp).write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setitem(tables._WRITERS, "csv", full)
    args = job_args(src, home, out, sandbox.base_url, "realtime")
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert result.output.strip().startswith("Error: ") and "No space left" in result.output
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []
    monkeypatch.setitem(tables._WRITERS, "csv", real)
    asked = len(sandbox.requests())
    assert CliRunner().invoke(main, args).exit_code == 0
    assert check_output(out, 10, expected_answers(10)).not_ok == 0
    assert len(sandbox.requests()) == asked


def test_a_locked_ledger_is_a_clear_error_and_resumes(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, home, out = make_table(tmp_path / "in.csv", 10), tmp_path / "h", tmp_path / "out.csv"
    args = job_args(src, home, out, sandbox.base_url, "realtime")
    assert CliRunner().invoke(main, [*args[:-2], "--limit", "3"]).exit_code == 0  # a ledger
    real_connect = sqlite3.connect

    def quick(*a: Any, **k: Any) -> sqlite3.Connection:
        k["timeout"] = 0.3  # the real 30 s wait, shortened
        return real_connect(*a, **k)

    monkeypatch.setattr(ledger_module.sqlite3, "connect", quick)
    holder = real_connect(home / "rowprompt.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = CliRunner().invoke(main, args)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1, result.output
    assert "locked" in lines[0] and "unexpected" not in lines[0], lines[0]
    assert len(sandbox.requests()) == 3
    assert CliRunner().invoke(main, args).exit_code == 0
    assert check_output(out, 10, expected_answers(10)).not_ok == 0


def test_a_ledger_locked_mid_job_is_a_clear_error_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n, concurrency = 40, 4
    src, home, out = make_table(tmp_path / "in.csv", n), tmp_path / "h", tmp_path / "out.csv"
    real_connect = sqlite3.connect

    def quick(*a: Any, **k: Any) -> sqlite3.Connection:
        k["timeout"] = 0.3  # the real 30 s wait, shortened
        return real_connect(*a, **k)

    monkeypatch.setattr(ledger_module.sqlite3, "connect", quick)
    holder: list[sqlite3.Connection] = []

    def lock_after_some_answers(event: str, endpoint: str) -> None:
        # Another program takes the ledger while rows are in flight and answers arrive.
        answer = event == "response" and endpoint.endswith("/chat/completions")
        if answer and not holder and len(sb.requests()) >= 10:
            db = real_connect(home / "rowprompt.db", isolation_level=None, check_same_thread=False)
            db.execute("BEGIN EXCLUSIVE")
            holder.append(db)

    with Sandbox(fast_config(latency_ms=30.0)) as sb:
        args = job_args(src, home, out, sb.base_url, "realtime", concurrency)
        sb.on_request(lock_after_some_answers)
        try:
            result = CliRunner().invoke(main, args)
        finally:
            sb.on_request(None)
            for db in holder:
                db.execute("ROLLBACK")
                db.close()
        assert holder, "the ledger was never locked: the job ended first"
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code != 0 and len(lines) == 1, result.output
        assert "locked" in lines[0] and "unexpected" not in lines[0], lines[0]
        asked = len(sb.requests())
        assert asked < n
        again = CliRunner().invoke(main, args)
        assert again.exit_code == 0, again.output
        final = check_output(out, n, expected_answers(n))
        assert (final.lost, final.duplicated, final.wrong, final.not_ok) == (0, 0, 0, 0)
        paid = Counter(r["last_user_message"] for r in sb.requests() if r["status"] == 200)
        assert len(paid) == n
        # Asked again: at most the rows in flight when the lock came, the answers the
        # stopped job could not record.
        assert sum(c - 1 for c in paid.values()) <= concurrency, paid.most_common(8)
