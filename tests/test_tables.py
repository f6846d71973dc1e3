"""Tables: every format read and written with values unchanged, and bad input refused clearly."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import openpyxl
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rowprompt.errors import InputError, OutputError, RowpromptError, UsageError
from rowprompt.tables import (
    SUPPORTED_EXTENSIONS,
    check_output_path,
    display_text,
    format_for,
    read_table,
    write_table,
)

PROPERTY = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@contextmanager
def refused(error: type[RowpromptError], pattern: str) -> Iterator[None]:
    """Expect ``error`` whose one-line form (cause and hint) matches ``pattern``."""
    with pytest.raises(error) as caught:
        yield
    line = caught.value.one_line()
    assert re.search(pattern, line), line
    assert "\n" not in line


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def as_text(frame: pd.DataFrame) -> list[list[str]]:
    return [[display_text(v) for v in row] for row in frame.astype(object).values.tolist()]


# --- CSV and TSV --------------------------------------------------------------------------


def test_csv_values_come_back_as_written(tmp_path: Path) -> None:
    path = write(
        tmp_path / "in.csv",
        '\ufeffid,text,code,note\n007,"hi, ""you""\nthere",NA,\n8,=1+1,,null\n',
    )
    table = read_table(path)
    assert list(table.frame.columns) == ["id", "text", "code", "note"]
    assert table.frame.values.tolist() == [
        ["007", 'hi, "you"\nthere', "NA", ""],
        ["8", "=1+1", "", "null"],
    ]
    assert table.keys == ["0", "1"]
    assert table.source == str(path)
    assert table.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    assert list(table.records())[1] == (
        "1",
        {"id": "8", "text": "=1+1", "code": "", "note": "null"},
    )


def test_csv_round_trip_keeps_every_value(tmp_path: Path) -> None:
    path = write(tmp_path / "in.csv", 'a,,b\n 007 ,"x\r\ny","q"""\n1,,\n')
    table = read_table(path)
    assert list(table.frame.columns) == ["a", "", "b"]
    out = tmp_path / "out.csv"
    write_table(table.frame, out)
    again = read_table(out)
    assert again.frame.equals(table.frame)
    assert list(again.frame.columns) == ["a", "", "b"]


def test_tsv_and_short_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "in.TSV", "a\tb\n1\n2\t3,4\n")
    table = read_table(path)
    assert table.frame.values.tolist() == [["1", ""], ["2", "3,4"]]
    write_table(table.frame, tmp_path / "out.tsv")
    assert (tmp_path / "out.tsv").read_text() == "a\tb\n1\t\n2\t3,4\n"


def test_lone_carriage_return_survives_csv(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": ["x\ry", "z"], "b": ["1", "2"]})
    write_table(frame, tmp_path / "out.csv")
    assert read_table(tmp_path / "out.csv").frame.values.tolist() == [["x\ry", "1"], ["z", "2"]]


def test_large_csv_reads_quickly(tmp_path: Path) -> None:
    n = 200_000
    pd.DataFrame({"id": np.arange(n).astype(str), "t": ["a, b"] * n}).to_csv(
        tmp_path / "big.csv", index=False
    )
    table = read_table(tmp_path / "big.csv", id_column="id")
    assert len(table) == n
    assert table.keys[-1] == str(n - 1)


# --- XLSX ---------------------------------------------------------------------------------


def make_xlsx(path: Path) -> Path:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "Reviews"
    sheet.append(["id", "score", "text", "when", "flag"])
    sheet.append([1, 2.5, "007", dt.datetime(2024, 1, 2), True])
    sheet.append([2, None, "NA", dt.datetime(2024, 1, 3, 10, 30), False])
    sheet.append([None] * 5)  # a trailing blank row Excel leaves behind
    other = book.create_sheet("Other")
    other.append(["x"])
    other.append(["only"])
    book.save(path)
    return path


def test_xlsx_keeps_types_and_picks_sheets(tmp_path: Path) -> None:
    path = make_xlsx(tmp_path / "in.XLSX")
    table = read_table(path, id_column="id")
    frame = table.frame
    assert len(table) == 2
    assert table.keys == ["1", "2"]
    assert frame["id"].tolist() == [1, 2]
    assert frame["score"].iloc[0] == 2.5 and math.isnan(frame["score"].iloc[1])
    assert frame["text"].tolist() == ["007", "NA"]
    assert frame["when"].iloc[1] == pd.Timestamp(2024, 1, 3, 10, 30)
    assert frame["flag"].tolist() == [True, False]
    assert read_table(path, sheet="Other").frame.values.tolist() == [["only"]]
    with refused(InputError, r"no sheet named 'Nope'.*'Reviews', 'Other'"):
        read_table(path, sheet="Nope")


def test_xlsx_round_trip(tmp_path: Path) -> None:
    table = read_table(make_xlsx(tmp_path / "in.xlsx"))
    write_table(table.frame, tmp_path / "out.xlsx")
    again = read_table(tmp_path / "out.xlsx")
    pd.testing.assert_frame_equal(again.frame, table.frame)


def test_xlsx_writes_text_that_looks_like_a_formula_as_text(tmp_path: Path) -> None:
    frame = pd.DataFrame({"=h": ["=1+1", "== title =="]})
    write_table(frame, tmp_path / "out.xlsx")
    assert read_table(tmp_path / "out.xlsx").frame.to_dict("list") == {
        "=h": ["=1+1", "== title =="]
    }


def test_xlsx_refuses_control_characters_naming_the_cell(tmp_path: Path) -> None:
    (tmp_path / "out.xlsx").write_text("old")
    frame = pd.DataFrame({"a": ["fine", "bell\x07"]})
    with refused(OutputError, r"out\.xlsx: row 2, column 'a'.*U\+0007"):
        write_table(frame, tmp_path / "out.xlsx")
    assert (tmp_path / "out.xlsx").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.xlsx"]


def test_xlsx_duplicate_and_empty_headers(tmp_path: Path) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["a", None, "b", None])
    sheet.append([1, 2, 3, 4])
    book.save(tmp_path / "dup.xlsx")
    with refused(InputError, r"no name \(columns 2, 4\)"):
        read_table(tmp_path / "dup.xlsx")


# --- JSONL and Parquet --------------------------------------------------------------------


def test_jsonl_keeps_json_types(tmp_path: Path) -> None:
    lines = [
        {"id": "a", "n": 1, "big": 2**70, "tags": ["x", "y"], "when": "2024-01-02"},
        {"id": "b", "n": 2, "meta": {"k": None}, "tags": None},
    ]
    path = write(tmp_path / "in.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    table = read_table(path, id_column="id")
    assert list(table.frame.columns) == ["id", "n", "big", "tags", "when", "meta"]
    assert table.frame["n"].dtype == np.int64
    records = dict(table.records())
    assert records["a"]["big"] == 2**70
    assert records["a"]["tags"] == ["x", "y"]
    assert records["a"]["when"] == "2024-01-02"
    assert records["b"]["meta"] == {"k": None}
    assert records["b"]["big"] is None
    write_table(table.frame, tmp_path / "out.jsonl")
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert out[0] == {**lines[0], "meta": None}
    assert out[1] == {**lines[1], "big": None, "when": None}


def test_jsonl_bad_lines_are_named(tmp_path: Path) -> None:
    path = write(tmp_path / "in.jsonl", '{"a": 1}\n{"a": \n')
    with refused(InputError, r"in\.jsonl: line 2 is not valid JSON"):
        read_table(path)
    write(path, '{"a": 1}\n[1, 2]\n')
    with refused(InputError, r"line 2 is a JSON list, not an object"):
        read_table(path)


def test_parquet_round_trip_keeps_types(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "id": [1, 2],
            "x": [1.5, None],
            "s": ["007", None],
            "d": pd.to_datetime(["2024-01-01", "2024-01-02"]),
        }
    )
    write_table(frame, tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(read_table(tmp_path / "t.parquet").frame, frame)


def test_parquet_mixed_object_column_is_written_as_text(tmp_path: Path) -> None:
    frame = pd.DataFrame({"m": pd.Series([1, "a", [1]], dtype=object)})
    write_table(frame, tmp_path / "t.parquet")
    assert read_table(tmp_path / "t.parquet").frame["m"].tolist() == ["1", "a", "[1]"]


# --- DataFrames ---------------------------------------------------------------------------


def test_dataframe_is_copied_and_hashed_by_content() -> None:
    frame = pd.DataFrame({"a": [1, 2], 3: ["x", "y"]}, index=[10, 20])
    table = read_table(frame, limit=1)
    assert table.source == "<DataFrame>"
    assert list(table.frame.columns) == ["a", "3"]
    assert list(table.records()) == [("0", {"a": 1, "3": "x"})]
    assert list(frame.columns) == ["a", 3]
    table.frame.iloc[0, 0] = 99
    assert frame.iloc[0, 0] == 1
    same = read_table(frame.copy())
    assert same.content_hash == table.content_hash
    assert read_table(frame.astype({"a": float})).content_hash != table.content_hash
    assert read_table(frame.rename(columns={"a": "b"})).content_hash != table.content_hash
    nested = pd.DataFrame({"l": [[1], {"a": 2}]})
    assert read_table(nested).content_hash == read_table(nested.copy()).content_hash


def test_dataframe_missing_values_are_none() -> None:
    frame = pd.DataFrame(
        {"f": [1.0, np.nan], "s": ["a", None], "d": pd.to_datetime(["2024-01-01", None])}
    )
    (_, second) = list(read_table(frame).records())[1]
    assert second == {"f": None, "s": None, "d": None}


# --- row keys and limit -------------------------------------------------------------------


def test_id_column_keys_and_limit(tmp_path: Path) -> None:
    path = write(tmp_path / "in.csv", "id,t\nb,1\na,2\nc,3\n")
    table = read_table(path, id_column="id", limit=2)
    assert table.keys == ["b", "a"]
    assert len(table) == 2 and len(table.frame) == 2
    assert table.id_column == "id"
    assert table.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    assert read_table(path, limit=10).keys == ["0", "1", "2"]
    with refused(UsageError, "at least 1"):
        read_table(path, limit=0)


def test_id_column_errors(tmp_path: Path) -> None:
    path = write(tmp_path / "in.csv", "ident,t\n1,a\n2,b\n1,c\n3,d\n2,e\n")
    with refused(InputError, r"no column 'id'.*Did you mean 'ident'"):
        read_table(path, id_column="id")
    with refused(InputError, r"2 repeated value\(s\): '1' \(2x\), '2' \(2x\)"):
        read_table(path, id_column="ident")
    write(path, "id,t\n1,a\n,b\n")
    with refused(InputError, r"id column 'id' is empty on 1 row\(s\): 2"):
        read_table(path, id_column="id")


def test_float_ids_from_excel_read_as_integers() -> None:
    table = read_table(pd.DataFrame({"id": [5.0, 6.0]}), id_column="id")
    assert table.keys == ["5", "6"]


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "pattern"),
    [
        ("e.csv", "", r"e\.csv: the file is empty"),
        ("h.csv", "a,b\n", r"h\.csv: the table has no rows"),
        ("r.csv", 'a,b\n1,2\n"x\ny",2,3\n', r"r\.csv: record 3 \(row 2 .*3 fields.*header has 2"),
        ("d.csv", "a,b,a,b,c\n1,2,3,4,5\n", r"d\.csv: repeated column names: 'a' \(columns 1, 3\)"),
        ("n.csv", ",,x\n1,2,3\n", r"n\.csv: repeated column names: no name \(columns 1, 2\)"),
        ("j.jsonl", "\n", r"j\.jsonl: the table has no rows"),
        ("p.parquet", "not parquet", r"p\.parquet: cannot read it as \.parquet"),
        ("x.xlsx", "not a zip", r"x\.xlsx: cannot read it as \.xlsx"),
        ("t.txt", "a\n1\n", r"t\.txt: extension '\.txt'.*\.csv, \.tsv, \.xlsx"),
    ],
)
def test_bad_files_are_refused_in_one_line(
    tmp_path: Path, name: str, content: str, pattern: str
) -> None:
    path = write(tmp_path / name, content)
    with refused(InputError, "^" + re.escape(str(tmp_path) + os.sep) + pattern):
        read_table(path)


def test_invalid_utf8_names_byte_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("a\nok\ncaf\xe9\n".encode("latin-1"))
    with refused(InputError, r"latin\.csv: not valid UTF-8 at byte 8 \(line 3\).*as UTF-8"):
        read_table(path)


def test_missing_directory_and_unreadable(tmp_path: Path) -> None:
    with refused(InputError, r"nope\.csv: no such file"):
        read_table(tmp_path / "nope.csv")
    with refused(InputError, "is a directory"):
        read_table(tmp_path)
    with refused(InputError, r"--sheet applies to \.xlsx"):
        read_table(write(tmp_path / "a.csv", "a\n1\n"), sheet="S")
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    locked = write(tmp_path / "locked.csv", "a\n1\n")
    locked.chmod(0)
    with refused(InputError, "permission denied"):
        read_table(locked)


# --- writing ------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".xlsx"])
def test_neutralise_only_named_columns(tmp_path: Path, ext: str) -> None:
    risky = ["=HYPERLINK(1)", "+1", "-2", "@x", "\tt", "\rr", "ok", "'=kept"]
    frame = pd.DataFrame({"input": risky, "response": risky})
    out = tmp_path / f"out{ext}"
    write_table(frame, out, neutralise_columns=["response", "absent"])
    back = read_table(out).frame
    assert back["input"].tolist() == [v.replace("\r", "\n") if ext == ".xlsx" else v for v in risky]
    expected = ["'" + v for v in risky[:6]] + risky[6:]
    if ext == ".xlsx":
        expected = [v.replace("\r", "\n") for v in expected]
    assert back["response"].tolist() == expected
    assert frame["response"].tolist() == risky


def test_neutralise_is_ignored_by_other_formats(tmp_path: Path) -> None:
    frame = pd.DataFrame({"response": ["=1"]})
    write_table(frame, tmp_path / "o.jsonl", neutralise_columns=["response"])
    assert json.loads((tmp_path / "o.jsonl").read_text()) == {"response": "=1"}


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    out.write_text("previous")

    class Unwritable:
        def __repr__(self) -> str:
            raise RuntimeError("boom")

    frame = pd.DataFrame({"a": pd.Series([Unwritable()], dtype=object)})
    with pytest.raises(RuntimeError):
        write_table(frame, out)
    assert out.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]


def test_write_replaces_atomically_with_normal_permissions(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    write_table(pd.DataFrame({"a": ["1"]}), out)
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()
    out.chmod(0o640)
    write_table(pd.DataFrame({"a": ["2"]}), out)
    assert out.read_text() == "a\n2\n"
    assert out.stat().st_mode & 0o777 == 0o640


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_write_into_a_missing_directory(tmp_path: Path) -> None:
    with refused(OutputError, r"missing/out\.csv: cannot write in .*missing"):
        write_table(pd.DataFrame({"a": ["1"]}), tmp_path / "missing" / "out.csv")
    with refused(OutputError, r"out\.xls: extension '\.xls'"):
        write_table(pd.DataFrame({"a": ["1"]}), tmp_path / "out.xls")


def test_dataframe_problems() -> None:
    with refused(InputError, r"<DataFrame>: repeated column names: 'a' \(columns 1, 2\)"):
        read_table(pd.DataFrame([[1, 2]], columns=["a", "a"]))
    with refused(InputError, r"<DataFrame>: the table has no rows"):
        read_table(pd.DataFrame({"a": []}))


def test_check_output_path(tmp_path: Path) -> None:
    good = tmp_path / "out.xlsx"
    assert check_output_path(good) == good
    with refused(OutputError, r"directory .*missing does not exist"):
        check_output_path(tmp_path / "missing" / "out.csv")
    with refused(OutputError, r"extension '\.txt'"):
        check_output_path(tmp_path / "out.txt")
    (tmp_path / "dir.csv").mkdir()
    with refused(OutputError, "is a directory"):
        check_output_path(tmp_path / "dir.csv")
    source = write(tmp_path / "in.csv", "a\n1\n")
    with refused(OutputError, "is the input file itself"):
        check_output_path(tmp_path / "." / "in.csv", input_path=source)


def test_format_for() -> None:
    assert [format_for(f"x{e.upper()}") for e in SUPPORTED_EXTENSIONS] == [
        "csv",
        "tsv",
        "xlsx",
        "jsonl",
        "parquet",
    ]
    with refused(InputError, "no extension"):
        format_for("data")
    with pytest.raises(OutputError):
        format_for("data.xls", output=True)


# --- properties ---------------------------------------------------------------------------


def names_of(text: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    return st.lists(text, min_size=1, max_size=4, unique=True)


ANY_TEXT = st.text(max_size=20)


@st.composite
def text_frames(draw: Any, cell: st.SearchStrategy[str] = ANY_TEXT) -> pd.DataFrame:
    columns = draw(names_of(cell))
    rows = draw(st.integers(min_value=1, max_value=5))
    data = {c: draw(st.lists(cell, min_size=rows, max_size=rows)) for c in columns}
    return pd.DataFrame(data, dtype=object)


@PROPERTY
@given(frame=text_frames())
@pytest.mark.parametrize("ext", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_text_round_trips(tmp_path: Path, ext: str, frame: pd.DataFrame) -> None:
    path = tmp_path / f"t{ext}"
    write_table(frame, path)
    back = read_table(path).frame
    assert list(back.columns) == list(frame.columns)
    assert as_text(back) == as_text(frame)


# XLSX holds no control characters but tab and newline, and XML reads "\r" back as "\n".
xlsx_text = st.text(
    st.characters(blacklist_categories=("Cs",)).filter(lambda c: c in "\t\n" or ord(c) >= 32),
    max_size=20,
)


@PROPERTY
@given(frame=text_frames(xlsx_text))
def test_xlsx_text_round_trips(tmp_path: Path, frame: pd.DataFrame) -> None:
    # A row id keeps rows non-blank: a wholly blank row at the end is dropped on reading.
    frame.insert(0, " row id", [f"r{i}" for i in range(len(frame))], allow_duplicates=True)
    assume(list(frame.columns).count(" row id") == 1)
    last = frame.columns[-1]
    assume(last != "" or any(frame[last]))  # an unnamed, empty last column is dropped too
    path = tmp_path / "t.xlsx"
    write_table(frame, path)
    back = read_table(path).frame
    assert list(back.columns) == list(frame.columns)
    assert as_text(back) == as_text(frame)  # an empty cell comes back missing: both ""
