"""Typed answers through the sandbox: structured output, parsing, repair, statuses, safety."""

from __future__ import annotations

import json
from pathlib import Path

import openpyxl
import pandas as pd
import pytest
from pydantic import BaseModel

import rowprompt
from rowprompt.sandbox import Sandbox
from tests.helpers import fast_config

FRAME = pd.DataFrame({"id": ["a", "b", "c"], "text": ["first", "second", "third"]})


class Extraction(BaseModel):
    """A nested schema: one column per top-level field."""

    title: str
    score: int
    ratio: float
    flagged: bool
    details: dict[str, int]
    tags: list[str]


def run(sb: Sandbox, tmp_path: Path, **kwargs: object) -> pd.DataFrame:
    settings: dict[str, object] = {
        "prompt": "Judge: {{ text }}",
        "provider": "sandbox",
        "base_url": sb.base_url,
        "mode": "realtime",
        "home": str(tmp_path / "home"),
        "poll_interval": 0.2,
    }
    settings.update(kwargs)
    return rowprompt.run(FRAME, **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("output_type", "dtype", "check"),
    [
        ("integer", "Int64", lambda v: isinstance(v, int)),
        ("number", "float64", lambda v: isinstance(v, float)),
        ("boolean", "boolean", lambda v: isinstance(v, bool)),
        (
            "choice:positive,negative,neutral",
            "object",
            lambda v: v in {"positive", "negative", "neutral"},
        ),
    ],
)
@pytest.mark.parametrize("mode", ["realtime", "batch"])
def test_structured_scalar_answers_have_their_type(
    sandbox: Sandbox, tmp_path: Path, output_type: str, dtype: str, check: object, mode: str
) -> None:
    out = run(sandbox, tmp_path, output_type=output_type, mode=mode)
    assert str(out["response"].dtype) == dtype
    assert list(out["_status"]) == ["ok"] * 3
    assert all(check(v) for v in out["response"].tolist())  # type: ignore[operator]


@pytest.mark.parametrize("mode", ["batch", "realtime"])
@pytest.mark.parametrize("ext", [".parquet", ".xlsx", ".csv", ".tsv", ".jsonl"])
def test_a_nested_schema_flattens_to_typed_columns(
    sandbox: Sandbox, tmp_path: Path, ext: str, mode: str
) -> None:
    target = tmp_path / f"out{ext}"
    out = run(sandbox, tmp_path, schema=Extraction, output=str(target), mode=mode)
    assert list(out.columns[:2]) == ["id", "text"]
    assert list(out.columns[2:8]) == ["title", "score", "ratio", "flagged", "details", "tags"]
    assert list(out["_status"]) == ["ok"] * 3
    assert str(out["score"].dtype) == "Int64" and str(out["flagged"].dtype) == "boolean"
    assert all(isinstance(json.loads(v), dict) for v in out["details"])
    assert all(isinstance(json.loads(v), list) for v in out["tags"])
    if ext == ".parquet":
        back = pd.read_parquet(target)
        assert str(back["score"].dtype) == "Int64" and str(back["ratio"].dtype) == "float64"
        assert str(back["flagged"].dtype) == "boolean"
    if ext == ".xlsx":
        sheet = openpyxl.load_workbook(target).active
        assert sheet is not None
        header = [c.value for c in sheet[1]]
        score = sheet.cell(row=2, column=header.index("score") + 1).value
        flagged = sheet.cell(row=2, column=header.index("flagged") + 1).value
        assert isinstance(score, int) and isinstance(flagged, bool)
    if ext in (".csv", ".tsv"):
        back = pd.read_csv(target, sep="\t" if ext == ".tsv" else ",", dtype=str)
        assert all(v.lstrip("-").isdigit() for v in back["score"])
        assert set(back["flagged"]) <= {"True", "False"}
        assert all(isinstance(json.loads(v), dict) for v in back["details"])
    if ext == ".jsonl":
        rows = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
        assert all(isinstance(r["score"], int) and isinstance(r["ratio"], float) for r in rows)
        assert all(isinstance(r["flagged"], bool) for r in rows)


RULES = [
    {"pattern": "could not be used", "answer": "4"},
    {"pattern": "Judge: first", "answer": "Four"},
    {"pattern": "Judge: second", "answer": "4/5"},
    {"pattern": "Judge: third", "answer": "3 or 4"},
]


def test_instructed_answers_parse_leniently_and_bad_ones_are_repaired(tmp_path: Path) -> None:
    with Sandbox(fast_config(rules=RULES)) as sb:
        out = run(sb, tmp_path, output_type="integer", structured=False)
        assert list(out["response"]) == [4, 4, 4]
        assert list(out["_status"]) == ["ok"] * 3
        messages = [r["last_user_message"] for r in sb.requests()]
        assert sum("could not be used" in m for m in messages) == 1
        # The row that needed a repair paid for both requests.
        assert out["_prompt_tokens"].iloc[2] > out["_prompt_tokens"].iloc[0]


def test_without_repair_an_unparsable_answer_is_a_parse_error_with_its_raw_text(
    tmp_path: Path,
) -> None:
    with Sandbox(fast_config(rules=RULES)) as sb:
        out = run(sb, tmp_path, output_type="integer", structured=False, repair=0)
        assert list(out["_status"]) == ["ok", "ok", "parse_error"]
        assert out["_raw"].iloc[2] == "3 or 4"
        assert "more than one number" in out["_error"].iloc[2]
        assert pd.isna(out["response"].iloc[2])


def test_refusals_and_cut_answers_have_their_own_status(tmp_path: Path) -> None:
    rules = [
        {"pattern": "Judge: first", "refusal": "I can't help with that."},
        {"pattern": "Judge: second", "answer": "a long answer that goes on and on and on and on"},
    ]
    with Sandbox(fast_config(rules=rules)) as sb:
        out = run(sb, tmp_path, max_tokens=3)
        assert list(out["_status"][:2]) == ["refused", "truncated"]
        assert "can't help" in out["_error"].iloc[0]
        assert out["_raw"].iloc[1]


PAYLOADS = ['=HYPERLINK("http://x.example","click")', "+cmd|' /C calc'!A0", "@SUM(1+1)*cmd", "-2+3"]


INPUT_FORMULA = "=1+1 (an input cell stays as given)"


@pytest.mark.parametrize("ext", [".csv", ".xlsx"])
def test_formula_payloads_from_the_model_come_out_inert(tmp_path: Path, ext: str) -> None:
    frame = pd.DataFrame({"text": [INPUT_FORMULA, "b", "c", "d"]})
    rules = [
        {"pattern": f"Judge: {t}$", "answer": p} for t, p in zip("bcd", PAYLOADS[1:], strict=True)
    ]
    rules.insert(0, {"pattern": "Judge: =", "answer": PAYLOADS[0]})
    target = tmp_path / f"out{ext}"
    with Sandbox(fast_config(rules=rules)) as sb:
        rowprompt.run(frame, prompt="Judge: {{ text }}", provider="sandbox", base_url=sb.base_url,
                      mode="realtime", output=str(target), home=str(tmp_path / "h"))  # fmt: skip
    if ext == ".csv":
        back = pd.read_csv(target, dtype=str)
        assert list(back["response"]) == [f"'{p}" for p in PAYLOADS]
        assert back["text"].iloc[0] == INPUT_FORMULA  # the input stays exactly as given
    else:
        sheet = openpyxl.load_workbook(target).active
        assert sheet is not None
        for row in sheet.iter_rows():
            for cell in row:
                assert cell.data_type != "f", cell.value
        header = [c.value for c in sheet[1]]
        col = header.index("response") + 1
        assert [sheet.cell(row=r, column=col).value for r in range(2, 6)] == [
            f"'{p}" for p in PAYLOADS
        ]
        text = sheet.cell(row=2, column=header.index("text") + 1)
        assert text.value == INPUT_FORMULA and text.data_type == "s"


class Note(BaseModel):
    title: str
    link: str


def _cells(target: Path, ext: str, column: str) -> list[object]:
    if ext == ".csv":
        return list(pd.read_csv(target, dtype=str)[column])
    sheet = openpyxl.load_workbook(target).active
    assert sheet is not None
    for row in sheet.iter_rows():
        for cell in row:
            assert cell.data_type != "f", cell.value
    header = [c.value for c in sheet[1]]
    col = header.index(column) + 1
    return [sheet.cell(row=r, column=col).value for r in range(2, sheet.max_row + 1)]


@pytest.mark.parametrize("ext", [".csv", ".xlsx"])
def test_formula_payloads_in_schema_fields_come_out_inert(tmp_path: Path, ext: str) -> None:
    answer = {"title": PAYLOADS[2], "link": PAYLOADS[0]}
    rules = [{"pattern": "Judge", "answer": json.dumps(answer)}]
    target = tmp_path / f"out{ext}"
    with Sandbox(fast_config(rules=rules)) as sb:
        out = run(sb, tmp_path, schema=Note, output=str(target))
    assert list(out["_status"]) == ["ok"] * 3
    assert out["title"].iloc[0] == PAYLOADS[2]  # the table in memory holds the answer as is
    assert _cells(target, ext, "title") == [f"'{PAYLOADS[2]}"] * 3
    assert _cells(target, ext, "link") == [f"'{PAYLOADS[0]}"] * 3


@pytest.mark.parametrize("ext", [".csv", ".xlsx"])
def test_formula_payloads_in_unparsable_raw_answers_come_out_inert(
    tmp_path: Path, ext: str
) -> None:
    rules = [{"pattern": "Judge", "answer": PAYLOADS[0]}]
    target = tmp_path / f"out{ext}"
    with Sandbox(fast_config(rules=rules)) as sb:
        out = run(sb, tmp_path, output_type="integer", structured=False, repair=0,
                  output=str(target))  # fmt: skip
    assert list(out["_status"]) == ["parse_error"] * 3
    assert _cells(target, ext, "_raw") == [f"'{PAYLOADS[0]}"] * 3


def test_raw_cells_keeps_answers_as_they_came(tmp_path: Path) -> None:
    rules = [{"pattern": "Judge", "answer": "=1+2"}]
    target = tmp_path / "out.csv"
    with Sandbox(fast_config(rules=rules)) as sb:
        run(sb, tmp_path, output=str(target), raw_cells=True)
    assert set(pd.read_csv(target, dtype=str)["response"]) == {"=1+2"}
