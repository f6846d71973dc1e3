"""Bad input: fuzzed tables and templates run, or stop in one line before sending anything."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings

from rowprompt.sandbox import Sandbox
from tests.helpers import RP
from tests.reliability.fuzz import table_case, try_case, write_case
from tests.reliability.harness import clean_env, is_clear_error


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=table_case())
def test_fuzzed_tables_run_or_stop_in_one_line(case: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = write_case(case, Path(directory))
        outcome, message = try_case(path, case["template"])
        if outcome == "error":
            assert "\n" not in message and message
            assert "Traceback" not in message


NASTY = {
    "nul and newlines in cells": ("csv", b'id,text\n1,"a\x00b"\n2,"two\nlines"\n3,"""q"""\n'),
    "not utf-8": ("csv", b"id,text\n1,caf\xe9\n"),
    "duplicated column": ("csv", b"text,text\n1,2\n"),
    "empty column name": ("tsv", b"\ttext\nx\ty\n"),
    "jsonl with a broken line": ("jsonl", b'{"text": "a"}\n{"text": \n'),
    "unicode and spaces in names": ("csv", "review text,ünï\nok,fine\n".encode()),
}


@pytest.mark.parametrize("name", list(NASTY))
def test_the_cli_runs_or_stops_in_one_line_sending_nothing(
    name: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    fmt, data = NASTY[name]
    src = tmp_path / f"in.{fmt}"
    src.write_bytes(data)
    prompt = '{{ row["review text"] }}' if "names" in name else "Summarise: {{ text }}"
    result = subprocess.run(
        [
            RP,
            "run",
            str(src),
            "--prompt",
            prompt,
            "--provider",
            "sandbox",
            "--base-url",
            sandbox.base_url,
            "--home",
            str(tmp_path / "home"),
            "--output",
            str(tmp_path / "o.csv"),
            "--mode",
            "realtime",
            "--yes",
            "--quiet",
            "--no-report",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )
    assert "Traceback" not in result.stderr
    if result.returncode == 0:
        frame = pd.read_csv(tmp_path / "o.csv", dtype=str, keep_default_na=False)
        assert set(frame["_status"]) == {"ok"}
    else:
        assert is_clear_error(result.stderr), result.stderr
        assert src.name in result.stderr
        assert len(sandbox.requests()) == 0
