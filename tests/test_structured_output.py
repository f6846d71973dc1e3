"""Structured output end to end: every output type to every file format, read back by the
tools a user would open the file with, with the declared types; strict mode for Pydantic."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openpyxl
import pandas as pd
import pyarrow.parquet as pq
import pytest
from openai import BadRequestError, OpenAI
from pydantic import BaseModel

import rowprompt
from rowprompt.answers import AnswerSpec
from rowprompt.errors import UsageError
from rowprompt.runner import RunOptions, prepare
from rowprompt.sandbox import Sandbox
from tests.helpers import RP, fast_config

FRAME = pd.DataFrame({"id": ["a", "b", "c"], "text": ["first", "second", "third"]})
CHOICES = ("positive", "negative", "neutral")
EXTS = (".csv", ".tsv", ".xlsx", ".jsonl", ".parquet")
# A free-form JSON answer with one value of each JSON type (the sandbox's own json_object
# answers hold one string only).
JSON_ANSWER = {"label": "kept", "score": 4, "ratio": 0.25, "flagged": True}


def _number(v: Any) -> bool:
    return isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool))


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# output type -> (column, parquet Arrow type, check of a Python value read back, check of
# the CSV/TSV text)
TYPES: dict[str, tuple[str, str, Any, Any]] = {
    "text": ("response", "string", lambda v: isinstance(v, str) and v, lambda t: bool(t)),
    "integer": ("response", "int64", _integer, lambda t: t.lstrip("-").isdigit()),
    "number": ("response", "double", _number, lambda t: float(t) == float(t)),
    "boolean": (
        "response",
        "bool",
        lambda v: isinstance(v, bool),
        lambda t: t in ("True", "False"),
    ),
    "choice:" + ",".join(CHOICES): (
        "response",
        "string",
        lambda v: v in CHOICES,
        lambda t: t in CHOICES,
    ),
}


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    rules = [{"pattern": "JSON", "answer": json.dumps(JSON_ANSWER)}]
    with Sandbox(fast_config(rules=rules)) as sandbox:
        yield sandbox


def run(sandbox: Sandbox, home: Path, **kwargs: Any) -> pd.DataFrame:
    settings: dict[str, Any] = {
        "prompt": "Judge: {{ text }}",
        "provider": "sandbox",
        "base_url": sandbox.base_url,
        "mode": "realtime",
        "home": str(home),
        "poll_interval": 0.1,
    }
    settings.update(kwargs)
    return rowprompt.run(FRAME, **settings)


def xlsx_column(path: Path, name: str) -> list[Any]:
    sheet = openpyxl.load_workbook(path).active
    assert sheet is not None
    header = [c.value for c in sheet[1]]
    col = header.index(name) + 1
    return [sheet.cell(row=r, column=col).value for r in range(2, sheet.max_row + 1)]


def read_back(path: Path, column: str) -> tuple[list[Any], str | None]:
    """The column's values as the file gives them back, and its Arrow type (parquet only)."""
    ext = path.suffix
    if ext == ".parquet":
        table = pq.read_table(path)
        return table.column(column).to_pylist(), str(table.schema.field(column).type)
    if ext == ".xlsx":
        return xlsx_column(path, column), None
    if ext == ".jsonl":
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line)[column] for line in lines], None
    frame = pd.read_csv(path, sep="\t" if ext == ".tsv" else ",", dtype=str)
    return list(frame[column]), None


@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize("output_type", list(TYPES))
def test_every_output_type_lands_typed_in_every_format(
    sb: Sandbox, tmp_path: Path, output_type: str, ext: str
) -> None:
    column, arrow, check_value, check_text = TYPES[output_type]
    target = tmp_path / f"out{ext}"
    out = run(sb, tmp_path / "h", output_type=output_type, output=str(target))
    assert list(out["_status"]) == ["ok"] * 3
    values, arrow_type = read_back(target, column)
    assert len(values) == 3
    if ext in (".csv", ".tsv"):
        assert all(check_text(v) for v in values), values
    else:
        assert all(check_value(v) for v in values), values
    if ext == ".parquet":
        assert arrow_type == arrow
    # The input columns come back as they went in.
    assert [str(v) for v in read_back(target, "id")[0]] == ["a", "b", "c"]


@pytest.mark.parametrize("ext", EXTS)
def test_free_form_json_answers_become_typed_columns(sb: Sandbox, tmp_path: Path, ext: str) -> None:
    target = tmp_path / f"out{ext}"
    out = run(sb, tmp_path / "h", output_type="json", output=str(target), prompt="JSON {{ text }}")
    assert list(out["_status"]) == ["ok"] * 3
    assert list(out.columns[2:6]) == list(JSON_ANSWER)
    for name, expected in JSON_ANSWER.items():
        values, arrow_type = read_back(target, name)
        if ext in (".csv", ".tsv"):
            assert values == [str(expected)] * 3
        else:
            assert values == [expected] * 3
            assert all(type(v) is type(expected) for v in values), (name, values)
        if ext == ".parquet":
            assert (
                arrow_type
                == {str: "string", int: "int64", float: "double", bool: "bool"}[type(expected)]
            )


@pytest.mark.parametrize("output_type", ["integer", "number", "boolean"])
@pytest.mark.parametrize("ext", [".parquet", ".xlsx", ".tsv"])
def test_batch_answers_land_typed_too(
    sb: Sandbox, tmp_path: Path, output_type: str, ext: str
) -> None:
    column, arrow, check_value, check_text = TYPES[output_type]
    target = tmp_path / f"out{ext}"
    out = run(sb, tmp_path / "h", output_type=output_type, output=str(target), mode="batch")
    assert list(out["_status"]) == ["ok"] * 3 and set(out["_via"]) == {"batch"}
    values, arrow_type = read_back(target, column)
    check = check_text if ext == ".tsv" else check_value
    assert all(check(v) for v in values), values
    if ext == ".parquet":
        assert arrow_type == arrow


# -- strict mode ------------------------------------------------------------------------------
class Author(BaseModel):
    name: str


class Review(BaseModel):
    score: int
    note: str | None = None
    author: Author
    tags: list[str] = []


def test_a_pydantic_schema_goes_strict_and_the_sandbox_holds_the_answers_to_it(
    sb: Sandbox, tmp_path: Path
) -> None:
    options = RunOptions(
        prompt="Judge: {{ text }}",
        provider="sandbox",
        base_url=sb.base_url,
        schema=Review,
        home=str(tmp_path / "h"),
    )
    sent = prepare(FRAME, options).spec.params["response_format"]["json_schema"]
    assert sent["strict"] is True
    client = OpenAI(base_url=sb.base_url, api_key="sk-test")
    messages = [{"role": "user", "content": "Judge: first"}]
    # The sandbox enforces strict mode as OpenAI does: the model's own schema is refused...
    raw = {"name": "Review", "schema": Review.model_json_schema(), "strict": True}
    with pytest.raises(BadRequestError, match="additionalProperties"):
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=messages,  # type: ignore[arg-type]
            response_format={"type": "json_schema", "json_schema": raw},  # type: ignore[typeddict-item]
        )
    # ...and what rowprompt sends is accepted, and every answer validates as a Review.
    out = run(sb, tmp_path / "h", schema=Review)
    assert list(out["_status"]) == ["ok"] * 3
    assert list(out.columns[2:6]) == ["score", "note", "author", "tags"]
    for row in out.itertuples():
        Review.model_validate(
            {
                "score": row.score,
                "note": row.note,
                "author": json.loads(str(row.author)),
                "tags": json.loads(str(row.tags)),
            }
        )


MODELS_PY = """
from pydantic import BaseModel


class Verdict(BaseModel):
    score: int
    summary: str
"""


def test_schema_module_model_is_found_in_the_current_folder(sb: Sandbox, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "models.py").write_text(MODELS_PY, encoding="utf-8")
    FRAME.to_csv(work / "in.csv", index=False)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    # The user's folder is not on the path by any other way.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p) != work
    )
    result = subprocess.run(
        [RP, "run", "in.csv", "--prompt", "Judge: {{ text }}", "--provider", "sandbox",
         "--base-url", sb.base_url, "--mode", "realtime", "--schema", "models:Verdict",
         "--output", "out.parquet", "--home", str(tmp_path / "h"), "--no-report"],
        cwd=work, capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    back = pq.read_table(work / "out.parquet")
    assert str(back.schema.field("score").type) == "int64"
    assert back.column("_status").to_pylist() == ["ok"] * 3


def test_schema_module_model_that_is_missing_says_where_it_looked() -> None:
    with pytest.raises(UsageError) as caught:
        AnswerSpec.from_options(None, "no_such_module_here:Model")
    assert "no_such_module_here" in caught.value.one_line()
    assert "current folder" in caught.value.one_line()
