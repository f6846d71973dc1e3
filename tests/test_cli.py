"""The command line: bad input stops before anything is spent; a killed job resumes."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from openai import OpenAI

from rowprompt.cli import main
from rowprompt.sandbox import Sandbox
from rowprompt.sandbox.model import expected_answer
from tests.helpers import RP, fast_config, run_cli

PROMPT = "Summarise: {{ text }}"


def table(path: Path, n: int = 5) -> Path:
    pd.DataFrame(
        {"id": [f"a{i}" for i in range(n)], "text": [f"row {i}" for i in range(n)]}
    ).to_csv(path, index=False)
    return path


def sandbox_answer(content: str) -> str | None:
    """What the sandbox answers a plain chat request whose one user message is ``content``."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
    return expected_answer(body)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


def chat_requests(sandbox: Sandbox) -> int:
    return len(sandbox.requests())


def test_every_command_has_help() -> None:
    # The installed command once (it starts), then every command's help in this process.
    assert run_cli("--help").returncode == 0
    commands = ("run", "estimate", "jobs", "status", "collect", "resume", "cancel", "sandbox",
                "embed", "report", "ui")  # fmt: skip
    for command in commands:
        result = CliRunner().invoke(main, [command, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, command


BAD_INPUTS = {
    "missing file": (lambda d: str(d / "nope.csv"), [], ["nope.csv"]),
    "unknown extension": (lambda d: str(_write(d / "in.txt", "a,b\n1,2\n")), [], ["in.txt"]),
    "empty table": (lambda d: str(_write(d / "in.csv", "id,text\n")), [], ["in.csv"]),
    "missing column": (
        lambda d: str(table(d / "in.csv")),
        ["--prompt", "Hi {{ txt }}"],
        ["txt", "text"],
    ),
    "duplicate ids": (
        lambda d: str(_write(d / "in.csv", "id,text\na,1\nb,2\na,3\n")),
        ["--id-column", "id"],
        ["id", "a"],
    ),
    "output directory missing": (
        lambda d: str(table(d / "in.csv")),
        ["--output", "/nonexistent-dir/out.csv"],
        ["/nonexistent-dir"],
    ),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_spends_nothing(
    case: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    make, extra, needles = BAD_INPUTS[case]
    source = make(tmp_path)
    args = ["run", source, "--provider", "sandbox", "--base-url", sandbox.base_url]
    args += ["--home", str(tmp_path / "home"), "--yes"]
    if "--prompt" not in extra:
        args += ["--prompt", PROMPT]
    result = run_cli(*args, *extra)
    assert_one_line_error(result, *needles)
    assert chat_requests(sandbox) == 0
    jobs = run_cli("jobs", "--home", str(tmp_path / "home"))
    assert "no jobs yet" in jobs.stdout


def test_a_file_that_is_not_its_format(tmp_path: Path, sandbox: Sandbox) -> None:
    src = _write(tmp_path / "in.xlsx", "this is not a spreadsheet")
    result = run_cli("run", str(src), "--prompt", PROMPT, "--provider", "sandbox",
                     "--base-url", sandbox.base_url, "--home", str(tmp_path / "h"))  # fmt: skip
    assert_one_line_error(result, "in.xlsx")
    assert chat_requests(sandbox) == 0


def test_a_directory_is_not_a_table(tmp_path: Path, sandbox: Sandbox) -> None:
    (tmp_path / "dir.csv").mkdir()
    result = run_cli("run", str(tmp_path / "dir.csv"), "--prompt", PROMPT, "--provider", "sandbox",
                     "--base-url", sandbox.base_url, "--home", str(tmp_path / "h"))  # fmt: skip
    assert_one_line_error(result, "dir.csv")
    assert chat_requests(sandbox) == 0


def test_missing_openai_key_says_how_to_set_it(tmp_path: Path) -> None:
    src = table(tmp_path / "in.csv")
    result = run_cli("run", str(src), "--prompt", PROMPT, "--provider", "openai",
                     "--home", str(tmp_path / "home"))  # fmt: skip
    assert_one_line_error(result, "OPENAI_API_KEY", "--provider sandbox")
    assert "no jobs yet" in run_cli("jobs", "--home", str(tmp_path / "home")).stdout


def test_unknown_model_is_refused_before_any_row_is_sent(tmp_path: Path, sandbox: Sandbox) -> None:
    src = table(tmp_path / "in.csv")
    result = run_cli("run", str(src), "--prompt", PROMPT, "--provider", "sandbox", "--model",
                     "gpt-nonexistent", "--base-url", sandbox.base_url, "--home",
                     str(tmp_path / "home"))  # fmt: skip
    assert_one_line_error(result, "gpt-nonexistent")
    assert chat_requests(sandbox) == 0


def test_existing_output_is_not_clobbered(tmp_path: Path, sandbox: Sandbox) -> None:
    src = table(tmp_path / "in.csv")
    out = _write(tmp_path / "out.csv", "precious\n")
    base = ["run", str(src), "--prompt", PROMPT, "--provider", "sandbox", "--base-url",
            sandbox.base_url, "--home", str(tmp_path / "home"), "--output", str(out),
            "--mode", "realtime"]  # fmt: skip
    assert_one_line_error(run_cli(*base), "out.csv", "--force")
    assert out.read_text() == "precious\n"
    assert run_cli(*base, "--force").returncode == 0
    # Once this job's own, running again rewrites it without --force.
    assert run_cli(*base).returncode == 0
    assert len(pd.read_csv(out)) == 5


def test_in_process_sandbox_runs_both_modes(tmp_path: Path) -> None:
    src = table(tmp_path / "in.csv", 4)
    for mode in ("realtime", "batch"):
        out = tmp_path / f"out-{mode}.csv"
        result = run_cli("run", str(src), "--prompt", PROMPT, "--provider", "sandbox", "--mode",
                         mode, "--output", str(out), "--home", str(tmp_path / "home"),
                         "--no-cache")  # fmt: skip
        assert result.returncode == 0, result.stderr
        frame = pd.read_csv(out, dtype=str)
        assert list(frame["_status"]) == ["ok"] * 4 and set(frame["_via"]) == {mode}
        assert f"wrote {out}" in result.stdout


def _wait_for(predicate: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _ledger_value(home: Path, sql: str) -> int:
    db_path = home / "rowprompt.db"
    if not db_path.exists():
        return 0
    try:
        db = sqlite3.connect(db_path, timeout=5)
        try:
            row = db.execute(sql).fetchone()
        finally:
            db.close()
    except sqlite3.OperationalError:
        return 0
    return int(row[0] or 0) if row else 0


@pytest.mark.parametrize("how", ["collect", "rerun"])
def test_a_batch_job_killed_after_submission_creates_no_new_batch(tmp_path: Path, how: str) -> None:
    src = table(tmp_path / "in.csv", 30)
    home = tmp_path / "home"
    out = tmp_path / "out.csv"
    with Sandbox(fast_config(batch_rows_per_second=15.0)) as sb:
        args = ["run", str(src), "--prompt", PROMPT, "--provider", "sandbox", "--base-url",
                sb.base_url, "--mode", "batch", "--home", str(home), "--output", str(out),
                "--poll-interval", "0.2"]  # fmt: skip
        proc = subprocess.Popen([RP, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for(
                lambda: _ledger_value(
                    home, "SELECT count(*) FROM shards WHERE batch_id IS NOT NULL"
                )
            )
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        job = subprocess.run([RP, "jobs", "--home", str(home)], capture_output=True, text=True)
        job_id = job.stdout.splitlines()[1].split()[0]
        if how == "collect":
            result = run_cli("collect", job_id, "--wait", "--home", str(home))
        else:
            result = run_cli(*args)
        assert result.returncode == 0, result.stderr
        client = OpenAI(base_url=sb.base_url, api_key="sk-test")
        assert len(list(client.batches.list())) == 1
        frame = pd.read_csv(out, dtype=str)
        assert list(frame["id"]) == [f"a{i}" for i in range(30)]
        assert list(frame["_status"]) == ["ok"] * 30
        # Each answer is the sandbox's answer to that row's own prompt: joined to the right row.
        assert list(frame["response"]) == [sandbox_answer(f"Summarise: row {i}") for i in range(30)]


def test_a_realtime_job_killed_halfway_asks_no_finished_row_again(tmp_path: Path) -> None:
    n, concurrency = 80, 4
    src = table(tmp_path / "in.csv", n)
    home = tmp_path / "home"
    out = tmp_path / "out.csv"
    with Sandbox(fast_config(latency_ms=40.0)) as sb:
        args = ["run", str(src), "--prompt", PROMPT, "--provider", "sandbox", "--base-url",
                sb.base_url, "--mode", "realtime", "--home", str(home), "--output", str(out),
                "--concurrency", str(concurrency)]  # fmt: skip
        proc = subprocess.Popen([RP, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for(
                lambda: (
                    _ledger_value(home, "SELECT count(*) FROM rows WHERE state = 'done'") >= n // 2
                )
            )
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        done_at_kill = _ledger_value(home, "SELECT count(*) FROM rows WHERE state = 'done'")
        assert done_at_kill < n
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr
        asked: dict[str, int] = {}
        for request in sb.requests():
            asked[request["last_user_message"]] = asked.get(request["last_user_message"], 0) + 1
        assert len(asked) == n
        twice = [m for m, count in asked.items() if count > 1]
        # Only requests in flight at the kill may be asked twice.
        assert len(twice) <= concurrency
        frame = pd.read_csv(out, dtype=str)
        assert list(frame["_status"]) == ["ok"] * n
