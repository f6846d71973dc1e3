"""Bad input: fuzzed tables and templates run, or stop in one line before sending anything."""

from __future__ import annotations

import io
import subprocess
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import openpyxl
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings

from rowprompt.sandbox import Sandbox
from tests.helpers import RP
from tests.reliability.fuzz import message_problems, table_case, try_case, write_case
from tests.reliability.harness import clean_env, is_clear_error


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=table_case())
def test_fuzzed_tables_run_or_stop_in_one_line(case: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = write_case(case, Path(directory))
        outcome, message = try_case(path, case)
        assert outcome != "wrong prompt", message
        if outcome == "error":
            assert message_problems(message, path, case) == "", message


def _xlsx(rows: list[list[Any]]) -> bytes:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    for line in rows:
        sheet.append(line)
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


class Nasty(NamedTuple):
    fmt: str
    data: bytes
    refused_at: tuple[int, str] | None = None  # the (row, column) a refusal must name
    prompt: str = "Summarise: {{ text }}"
    prompts: list[str] | None = None  # what a run must send, one prompt per row (the
    # sandbox logs a prompt's first 500 characters: longer cells are the fuzz's business)


NASTY = {
    "nul and newlines in cells": Nasty(
        "csv",
        b'id,text\n1,"a\x00b"\n2,"two\nlines"\n3,"""q"""\n',
        prompts=["Summarise: a\x00b", "Summarise: two\nlines", 'Summarise: "q"'],
    ),
    "not utf-8": Nasty("csv", b"id,text\n1,ok\n2,caf\xe9\n", refused_at=(2, "text")),
    "not utf-8 in jsonl": Nasty("jsonl", b'{"id": 1, "text": "caf\xe9"}\n', refused_at=(1, "text")),
    "key repeated in jsonl": Nasty(
        "jsonl", b'{"text": "a"}\n{"text": "b", "text": "c"}\n', refused_at=(2, "text")
    ),
    "duplicated column": Nasty("csv", b"text,text\n1,2\n"),
    "empty column name": Nasty("tsv", b"\ttext\nx\ty\n", prompts=["Summarise: y"]),
    "jsonl with a broken line": Nasty("jsonl", b'{"text": "a"}\n{"text": \n'),
    "unicode and spaces in names": Nasty(
        "csv",
        "review text,ünï\nok,fine\n".encode(),
        prompt='{{ row["review text"] }}',
        prompts=["ok"],
    ),
    # {{ none }} is Jinja's constant: refused, or the prompt would silently lack the cell.
    "a column named none": Nasty("csv", b"none,text\nx,y\n", prompt="Summarise: {{ none }}"),
    # XML reads a carriage return back as a newline (documented in rowprompt.tables).
    "xlsx with odd cells": Nasty(
        "xlsx",
        _xlsx([["id", "text"], [1, "cr\r\nlf"], [2, None], [3, '"q", a'], [4, "x" * 400]]),
        prompts=[
            "Summarise: cr\nlf",
            "Summarise: ",
            'Summarise: "q", a',
            "Summarise: " + "x" * 400,
        ],
    ),
    "truncated xlsx": Nasty("xlsx", _xlsx([["id", "text"], [1, "a"]])[:-40]),
}


@pytest.mark.parametrize("name", list(NASTY))
def test_the_cli_runs_or_stops_in_one_line_sending_nothing(
    name: str, sandbox: Sandbox, tmp_path: Path
) -> None:
    case = NASTY[name]
    src = tmp_path / f"in.{case.fmt}"
    src.write_bytes(case.data)
    result = subprocess.run(
        [
            RP,
            "run",
            str(src),
            "--prompt",
            case.prompt,
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
    if case.refused_at is not None:  # a bad cell is refused, pointing at it
        row, column = case.refused_at
        assert result.returncode != 0
        assert f"row {row}, column {column!r}" in result.stderr, result.stderr
    if case.prompts is not None:  # each cell reaches its prompt as it is
        assert result.returncode == 0, result.stderr
        sent = [r["last_user_message"] for r in sandbox.requests()]
        assert sorted(sent) == sorted(case.prompts)
