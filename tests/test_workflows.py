"""The secondary workflows of `rowprompt run` as a user drives them from the shell.

`run --detach` prints the job id, `status` shows the batch, `collect --wait` writes the answers;
`cancel` stops a provider batch; an unreadable input or an input column that rowprompt would
add is one line of error that spends nothing.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner, Result
from openai import OpenAI

from rowprompt.cli import main
from rowprompt.sandbox import Sandbox
from rowprompt.sandbox.model import expected_answer
from tests.helpers import fast_config, run_cli

PROMPT = "Summarise: {{ text }}"


def table(path: Path, n: int) -> pd.DataFrame:
    frame = pd.DataFrame(
        {"id": [f"a{i}" for i in range(n)], "text": [f"row {i}" for i in range(n)]}
    )
    frame.to_csv(path, index=False)
    return frame


def expected(frame: pd.DataFrame) -> list[str | None]:
    """The sandbox's deterministic answer to each row's rendered prompt."""
    out = []
    for text in frame["text"]:
        body: dict[str, Any] = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": PROMPT.replace("{{ text }}", text)}],
        }
        out.append(expected_answer(body))
    return out


def cli(*args: str) -> Result:
    """The command in this process (fast; stdout and stderr apart)."""
    return CliRunner().invoke(main, list(args))


def assert_one_line_error(stderr: str, exit_code: int, *needles: str) -> str:
    assert exit_code != 0
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def detached_job_id(stdout: str) -> str:
    """The job id from the line `collect later with: rowprompt collect JOB --wait`."""
    found = re.search(r"rowprompt collect (\S+) --wait", stdout)
    assert found, stdout
    return found.group(1)


# --- detach, status, collect, cancel --------------------------------------------------------


def test_detach_then_status_then_collect_wait_writes_the_answers(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    frame = table(tmp_path / "in.csv", 8)
    home, out = tmp_path / "home", tmp_path / "out.csv"
    submitted = cli("run", str(tmp_path / "in.csv"), "--prompt", PROMPT,
                    "--provider", "sandbox", "--base-url", sandbox.base_url,
                    "--mode", "batch", "--detach", "--output", str(out),
                    "--home", str(home), "--yes", "--no-report")  # fmt: skip
    assert submitted.exit_code == 0, submitted.output
    job_id = detached_job_id(submitted.stdout)
    assert f"job {job_id}: submitted 8 rows in batches" in submitted.stdout
    assert not out.exists(), "a detached run writes the table only when collected"
    assert sandbox.stats()["batches_created"] == 1

    # `jobs` lists it; `status` names the provider's batch while it is out.
    listed = cli("jobs", "--home", str(home))
    assert listed.exit_code == 0 and job_id in listed.stdout
    client = OpenAI(base_url=sandbox.base_url, api_key="sk-test")
    (batch,) = list(client.batches.list())
    early = cli("status", job_id, "--home", str(home))
    assert early.exit_code == 0, early.output
    assert early.stdout.startswith(f"job {job_id}: ")
    assert "rows:   8 total" in early.stdout
    assert f"batch {batch.id}: shard " in early.stdout

    # Later, from another process that knows nothing but the job id.
    collected = run_cli("collect", job_id, "--wait", "--home", str(home))
    assert collected.returncode == 0, collected.stderr
    assert f"wrote {out}" in collected.stdout
    assert f"job {job_id}: complete" in collected.stdout

    written = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(written["id"]) == list(frame["id"])
    assert list(written["text"]) == list(frame["text"])
    assert list(written["_status"]) == ["ok"] * 8
    assert list(written["_via"]) == ["batch"] * 8
    assert list(written["response"]) == expected(frame)
    # Collecting made no second batch, and asked nothing in real time.
    assert len(list(client.batches.list())) == 1
    assert len(sandbox.requests()) == 0

    done = cli("status", job_id, "--home", str(home))
    assert done.exit_code == 0, done.output
    assert "8 answered, 0 failed" in done.stdout
    batch_line = next(line for line in done.stdout.splitlines() if batch.id in line)
    assert "completed" in batch_line and "8/8 done, 0 failed" in batch_line, batch_line


def test_cancel_stops_the_provider_batch_and_keeps_the_job(tmp_path: Path) -> None:
    frame = table(tmp_path / "in.csv", 40)
    home, out = tmp_path / "home", tmp_path / "out.csv"
    # Two rows a second: the batch is far from done when it is cancelled.
    with Sandbox(fast_config(batch_rows_per_second=2.0)) as sb:
        submitted = cli("run", str(tmp_path / "in.csv"), "--prompt", PROMPT,
                        "--provider", "sandbox", "--base-url", sb.base_url, "--mode", "batch",
                        "--detach", "--output", str(out), "--home", str(home), "--yes",
                        "--no-report")  # fmt: skip
        assert submitted.exit_code == 0, submitted.output
        job_id = detached_job_id(submitted.stdout)

        cancelled = cli("cancel", job_id, "--home", str(home))
        assert cancelled.exit_code == 0, cancelled.output
        assert f"job {job_id} cancelled" in cancelled.stderr
        assert sb.stats()["batches_by_final_state"] == {"cancelled": 1}
        client = OpenAI(base_url=sb.base_url, api_key="sk-test")
        (batch,) = list(client.batches.list())
        assert batch.status == "cancelled"

    status = cli("status", job_id, "--home", str(home))
    assert status.stdout.startswith(f"job {job_id}: cancelled"), status.stdout
    assert "cancelled" in next(line for line in status.stdout.splitlines() if batch.id in line)
    # The table holds every input row: the few answered before the cancel, the rest skipped.
    written = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(written["id"]) == list(frame["id"])
    assert set(written["_status"]) <= {"ok", "skipped"}
    skipped = (written["_status"] == "skipped").sum()
    assert skipped >= 20, written["_status"].value_counts()
    answered = written[written["_status"] == "ok"]
    assert list(answered["response"]) == [
        e for e, s in zip(expected(frame), written["_status"], strict=True) if s == "ok"
    ]


# --- bad input: unreadable file, columns rowprompt adds -------------------------------------


def _run_args(source: Path, sandbox: Sandbox, home: Path, *extra: str) -> list[str]:
    return ["run", str(source), "--provider", "sandbox", "--base-url", sandbox.base_url,
            "--home", str(home), "--yes", "--mode", "realtime", *extra]  # fmt: skip


def test_an_unreadable_file_is_one_line_and_spends_nothing(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root reads any file, so the permission error is made for this one path, in process."""
    source = tmp_path / "locked.csv"
    table(source, 3)
    real_read_bytes = Path.read_bytes
    real_open = Path.open

    def refuse(path: Path) -> None:
        if path.resolve() == source.resolve():
            raise PermissionError(13, "Permission denied", str(path))

    def read_bytes(self: Path) -> bytes:
        refuse(self)
        return real_read_bytes(self)

    def open_(self: Path, *args: Any, **kwargs: Any) -> Any:
        refuse(self)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    monkeypatch.setattr(Path, "open", open_)
    home = tmp_path / "home"
    result = cli(*_run_args(source, sandbox, home, "--prompt", PROMPT))
    assert_one_line_error(result.stderr, result.exit_code, "locked.csv", "permission denied")
    assert len(sandbox.requests()) == 0
    assert sandbox.stats()["batches_created"] == 0
    assert "no jobs yet" in cli("jobs", "--home", str(home)).stdout


def test_a_file_without_read_permission_from_the_shell(sandbox: Sandbox, tmp_path: Path) -> None:
    source = tmp_path / "locked.csv"
    table(source, 3)
    source.chmod(0)
    try:
        if os.access(source, os.R_OK):
            pytest.skip("this user can still read a file with mode 000 (root)")
        home = tmp_path / "home"
        result = run_cli(*_run_args(source, sandbox, home, "--prompt", PROMPT))
        assert_one_line_error(result.stderr, result.returncode, "locked.csv", "permission denied")
        assert len(sandbox.requests()) == 0
        assert "no jobs yet" in run_cli("jobs", "--home", str(home)).stdout
    finally:
        source.chmod(0o644)


@pytest.mark.parametrize("column", ["response", "_status", "_cost_usd"])
def test_an_input_column_rowprompt_adds_is_refused(
    sandbox: Sandbox, tmp_path: Path, column: str
) -> None:
    source = tmp_path / "in.csv"
    pd.DataFrame({"text": ["a", "b"], column: ["x", "y"]}).to_csv(source, index=False)
    home = tmp_path / "home"
    result = cli(*_run_args(source, sandbox, home, "--prompt", PROMPT))
    line = assert_one_line_error(result.stderr, result.exit_code, "in.csv", column)
    assert "rename" in line
    assert len(sandbox.requests()) == 0
    assert "no jobs yet" in cli("jobs", "--home", str(home)).stdout


def test_an_input_column_named_like_a_schema_field_is_refused(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    pd.DataFrame({"text": ["a", "b"], "sentiment": ["old", "old"]}).to_csv(source, index=False)
    schema = tmp_path / "schema.json"
    schema.write_text(
        json.dumps(
            {
                "type": "object",
                "properties": {
                    "sentiment": {"type": "string", "enum": ["positive", "negative"]},
                    "score": {"type": "integer"},
                },
                "required": ["sentiment", "score"],
                "additionalProperties": False,
            }
        ),
        encoding="utf-8",
    )
    home = tmp_path / "home"
    result = cli(*_run_args(source, sandbox, home, "--prompt", PROMPT, "--schema", str(schema)))
    line = assert_one_line_error(result.stderr, result.exit_code, "in.csv", "sentiment")
    assert "score" not in line, "only the clashing field is named"
    assert len(sandbox.requests()) == 0
    assert "no jobs yet" in cli("jobs", "--home", str(home)).stdout
