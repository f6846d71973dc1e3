"""Bad-input fuzzing: tables and templates that must run or stop cleanly, sending nothing."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import openpyxl
from hypothesis import strategies as st
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

from rowprompt.errors import RowpromptError
from rowprompt.runner import RunOptions, prepare

# Column names: empty, spaces, unicode, look-alikes of the added columns, duplicates (drawn).
NAMES = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "id",
            "text",
            "review text",
            "ünïcødé",
            "名前",
            "a.b",
            "1x",
            "response",
            "_status",
            "row",
            "loop",
            "x" * 300,
        ]
    ),
    st.text(min_size=0, max_size=12),
)
CELLS = st.one_of(
    st.sampled_from(
        [
            "",
            "\x00",
            "a\x00b",
            "line\nbreak",
            "cr\r\nlf",
            '"quoted"',
            "'",
            ",",
            "\t",
            "=1+1",
            "{{ text }}",
            "{% raw %}",
            "\ufeff",
            "\u2028",
            "NaN",
            "null",
            "x" * 70_000,
        ]
    ),
    st.text(max_size=40),
)
TEMPLATES = st.sampled_from(
    [
        "Summarise: {{ COL }}",
        "Summarise: {{ row[KEY] }}",
        "{{ COL | upper }} and {{ row[KEY] }}",
        "{{ missing_column }}",
        "{{ row['missing column'] }}",
        "{{ ",
        "{% if COL %}yes{% endif",
        "{{ COL.__class__.__mro__ }}",
        "{{ range(10**9) | list }}",
        "",
        "plain text, no placeholder",
    ]
)
FORMATS = ("csv", "tsv", "jsonl", "xlsx")


@st.composite
def table_case(draw: st.DrawFn) -> dict[str, Any]:
    """A format, column names, rows of cells, a template and corruption to apply."""
    ncols = draw(st.integers(min_value=1, max_value=4))
    names = draw(st.lists(NAMES, min_size=ncols, max_size=ncols))
    nrows = draw(st.integers(min_value=0, max_value=4))
    rows = [draw(st.lists(CELLS, min_size=ncols, max_size=ncols)) for _ in range(nrows)]
    column = draw(st.sampled_from(names))
    template = draw(TEMPLATES).replace("COL", column if column.isidentifier() else "text")
    template = template.replace("KEY", json.dumps(column))
    return {
        "fmt": draw(st.sampled_from(FORMATS)),
        "names": names,
        "rows": rows,
        "template": template,
        "bad_bytes": draw(st.sampled_from([None, b"\xff", b"\xc3", b"\x80\x80"])),
        "truncate": draw(st.booleans()) and draw(st.integers(min_value=1, max_value=60)),
    }


def write_case(case: dict[str, Any], directory: Path) -> Path:
    """Write the drawn table as its format, corrupted as drawn."""
    fmt, names, rows = case["fmt"], case["names"], case["rows"]
    path = directory / f"input.{fmt}"
    if fmt == "xlsx":
        book = openpyxl.Workbook()
        sheet = book.active
        assert sheet is not None
        for line in [names, *rows]:
            # openpyxl itself refuses control characters: those cells go in without them.
            sheet.append([ILLEGAL_CHARACTERS_RE.sub("", c) for c in line])
        buffer = io.BytesIO()
        book.save(buffer)
        data = buffer.getvalue()
    elif fmt == "jsonl":
        # Written by hand so that duplicated names stay duplicated keys.
        lines = [
            "{"
            + ", ".join(
                f"{json.dumps(k)}: {json.dumps(v)}" for k, v in zip(names, row, strict=True)
            )
            + "}"
            for row in rows
        ]
        data = "\n".join(lines).encode()
    else:
        text = io.StringIO()
        writer = csv.writer(text, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
        writer.writerow(names)
        writer.writerows(rows)
        data = text.getvalue().encode()
    if case["bad_bytes"] and fmt != "xlsx" and data:
        data = data[: len(data) // 2] + case["bad_bytes"] + data[len(data) // 2 :]
    if case["truncate"] and fmt == "xlsx":
        data = data[: -case["truncate"]]
    path.write_bytes(data)
    return path


def try_case(path: Path, template: str) -> tuple[str, str]:
    """Prepare the job and render every row, in process: ("ok", "") or ("error", one line).

    Anything but a RowpromptError escaping is the bug this campaign hunts: it raises.
    """
    options = RunOptions(
        prompt=template,
        provider="sandbox",
        base_url="http://127.0.0.1:9/v1",
        output=str(path.with_name("out.csv")),
        force=True,
    )
    try:
        prepared = prepare(str(path), options)
        for position in range(len(prepared.table)):
            prepared.build_body(position)
    except RowpromptError as exc:
        return "error", exc.one_line()
    return "ok", ""
