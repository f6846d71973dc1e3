"""Typed input columns come back with their types, end to end, in both modes.

Parquet keeps Arrow types (nullable ints, floats, timestamps, booleans, nulls), Excel keeps
numbers, dates and booleans, JSON Lines keeps numbers, booleans and nulls; the answers are the
sandbox's deterministic answer for each row.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import openpyxl
import pandas as pd
import pyarrow.parquet as pq
import pytest

import rowprompt
from rowprompt.sandbox import Sandbox
from rowprompt.sandbox.model import expected_answer

PROMPT = "Review {{ review }}, {{ stars }} stars"
N = 6


def typed() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "review": [f"review number {i}" for i in range(N)],
            "stars": pd.array([5, 4, None, 2, 1, 3], dtype="Int64"),
            "price": [9.99, 0.1, 1234567.5, -2.25, 0.0, None],
            "bought": pd.to_datetime(
                pd.Series(
                    [
                        "2024-01-02 03:04:05",
                        "2023-12-31 00:00:00",
                        None,
                        "2020-02-29 12:00:00",
                        "1999-01-01 00:00:00",
                        "2024-06-30 23:59:59",
                    ]
                )
            ),
            "verified": pd.array([True, False, None, True, True, False], dtype="boolean"),
            "code": ["007", "1.50", None, "NaN", "=1+1", "  spaced  "],
        }
    )


def expected(frame: pd.DataFrame) -> list[str | None]:
    """The sandbox's answer to each row, with the prompt as a person reads it (empty for NA)."""
    out = []
    for review, stars in zip(frame["review"], frame["stars"], strict=True):
        content = f"Review {review}, {'' if pd.isna(stars) else int(stars)} stars"
        body: dict[str, Any] = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": content}],
        }
        out.append(expected_answer(body))
    return out


def run(src: Path, out: Path, sandbox: Sandbox, tmp_path: Path, mode: str) -> pd.DataFrame:
    return rowprompt.run(
        str(src),
        prompt=PROMPT,
        provider="sandbox",
        base_url=sandbox.base_url,
        mode=mode,
        output=str(out),
        home=str(tmp_path / "home"),
        poll_interval=0.2,
    )


def check_answers(result: pd.DataFrame, frame: pd.DataFrame, mode: str) -> None:
    assert list(result["_status"]) == ["ok"] * N
    assert list(result["_via"]) == [mode] * N
    assert list(result["response"]) == expected(frame)


@pytest.mark.parametrize("mode", ["realtime", "batch"])
def test_parquet_keeps_arrow_types_and_values(sandbox: Sandbox, tmp_path: Path, mode: str) -> None:
    frame = typed()
    src, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    frame.to_parquet(src, index=False)
    result = run(src, out, sandbox, tmp_path, mode)

    given = pq.read_table(src)
    back = pq.read_table(out)
    assert back.column_names[: len(frame.columns)] == list(frame.columns)
    for name in frame.columns:
        assert back.schema.field(name).type == given.schema.field(name).type, name
        assert back.column(name).to_pylist() == given.column(name).to_pylist(), name
    check_answers(back.to_pandas(), frame, mode)
    # The DataFrame rowprompt.run returns has the same dtypes as the file read with pandas.
    pd.testing.assert_frame_equal(result[frame.columns], pd.read_parquet(src))
    check_answers(result, frame, mode)


def _cells(path: Path) -> list[list[Any]]:
    sheet = openpyxl.load_workbook(path).active
    assert sheet is not None
    return [[(type(c.value), c.value, c.data_type) for c in row] for row in sheet.iter_rows()]


@pytest.mark.parametrize("mode", ["realtime", "batch"])
def test_xlsx_keeps_numbers_dates_and_booleans(sandbox: Sandbox, tmp_path: Path, mode: str) -> None:
    frame = typed()
    src, out = tmp_path / "in.xlsx", tmp_path / "out.xlsx"
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(list(frame.columns))
    for record in frame.astype(object).where(frame.notna(), None).itertuples(index=False):
        values = [v.to_pydatetime() if isinstance(v, pd.Timestamp) else v for v in record]
        sheet.append(values)
    for cell in sheet["F"]:  # "=1+1" is text in this sheet, not a formula
        if cell.value == "=1+1":
            cell.data_type = "s"
    book.save(src)
    result = run(src, out, sandbox, tmp_path, mode)

    width = len(frame.columns)
    given = _cells(src)
    back = [row[:width] for row in _cells(out)]
    assert back == given
    kinds = {type(v) for row in back[1:] for (_, v, _) in row}
    assert {int, float, dt.datetime, bool, str, type(None)} <= kinds
    check_answers(result, frame, mode)
    written = pd.read_excel(out)
    check_answers(written, frame, mode)


@pytest.mark.parametrize("mode", ["realtime", "batch"])
def test_jsonl_keeps_numbers_booleans_and_nulls(
    sandbox: Sandbox, tmp_path: Path, mode: str
) -> None:
    frame = typed().drop(columns=["bought"])  # JSON has no date type
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    records = [
        {k: (None if pd.isna(v) else v) for k, v in r.items()}
        for r in frame.astype(object).to_dict("records")
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    result = run(src, out, sandbox, tmp_path, mode)

    back = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [{k: r[k] for k in frame.columns} for r in back] == records
    for got, want in zip(back, records, strict=True):
        for k in frame.columns:
            assert type(got[k]) is type(want[k]), (k, got[k], want[k])
    check_answers(result, frame, mode)
