"""Bad-input fuzzing: tables and templates that must run or stop cleanly, sending nothing."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import openpyxl
from hypothesis import strategies as st
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

from rowprompt.errors import RowpromptError
from rowprompt.runner import RunOptions, prepare
from rowprompt.templates import PromptTemplate

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
            "none",
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
# Two good templates drawn for each broken one: a broken template stops its case before the
# table matters, so drawing them uniformly would leave few tables that get to run.
GOOD_TEMPLATES = st.sampled_from(
    [
        "Summarise: {{ COL }}",
        "Summarise: {{ row[KEY] }}",
        "{{ COL | upper }} and {{ row[KEY] }}",
        "plain text, no placeholder",
    ]
)
BROKEN_TEMPLATES = st.sampled_from(
    [
        "{{ missing_column }}",
        "{{ row['missing column'] }}",
        "{{ ",
        "{% if COL %}yes{% endif",
        "{{ COL.__class__.__mro__ }}",
        "{{ range(10**9) | list }}",
        "",
    ]
)
# (st.one_of would not do: it draws its branches neither evenly nor twice the same one.)
TEMPLATES = st.sampled_from([GOOD_TEMPLATES, GOOD_TEMPLATES, BROKEN_TEMPLATES]).flatmap(
    lambda templates: templates
)
# Invalid UTF-8 spliced into one CSV/TSV/JSONL file of four; one XLSX file of four truncated.
BAD_BYTES = st.sampled_from([None] * 9 + [b"\xff", b"\xc3", b"\x80\x80"])
FORMATS = ("csv", "tsv", "jsonl", "xlsx")


@st.composite
def table_case(draw: st.DrawFn) -> dict[str, Any]:
    """A format, column names, rows of cells, a template and corruption to apply."""
    ncols = draw(st.integers(min_value=1, max_value=4))
    # Distinct names half the time: a repeated name stops the case before its cells count.
    unique = draw(st.booleans())
    names = draw(st.lists(NAMES, min_size=ncols, max_size=ncols, unique=unique))
    nrows = draw(st.sampled_from([1, 2, 3, 4, 0]))
    rows = [draw(st.lists(CELLS, min_size=ncols, max_size=ncols)) for _ in range(nrows)]
    column = draw(st.sampled_from(names))
    kind = draw(TEMPLATES)
    # A name that is not an identifier is reached as row["name"], as users must write it.
    key = json.dumps(column)
    template = kind.replace("COL", column if column.isidentifier() else f"row[{key}]")
    template = template.replace("KEY", key)
    return {
        "fmt": draw(st.sampled_from(FORMATS)),
        "names": names,
        "rows": rows,
        "template": template,
        "kind": kind,
        "column": column,
        "bad_bytes": draw(BAD_BYTES),
        "truncate": draw(st.booleans())
        and draw(st.booleans())
        and draw(st.integers(min_value=1, max_value=60)),
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
        for row_cells in sheet.iter_rows():
            for cell in row_cells:
                if isinstance(cell.value, str) and cell.value.startswith("="):
                    cell.data_type = "s"  # text that looks like a formula, as typed in Excel
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
        # CRLF line ends: the csv module quotes a cell holding any character of the line end,
        # so a lone "\r" in a cell is quoted, not written bare (a bare CR ends a record).
        sep = "," if fmt == "csv" else "\t"
        writer = csv.writer(text, delimiter=sep, lineterminator="\r\n")
        writer.writerow(names)
        writer.writerows(rows)
        data = text.getvalue().encode()
    if case["bad_bytes"] and fmt != "xlsx" and data:
        data = data[: len(data) // 2] + case["bad_bytes"] + data[len(data) // 2 :]
    if case["truncate"] and fmt == "xlsx":
        data = data[: -case["truncate"]]
    path.write_bytes(data)
    return path


def stored_cell(fmt: str, cell: str) -> str:
    """A cell as the table file gives it back: XLSX cannot hold control characters (the
    writer leaves them out) nor more than Excel's 32,767 characters a cell (openpyxl cuts
    the rest), and XML reads a carriage return back as a newline (documented in
    rowprompt.tables)."""
    if fmt != "xlsx":
        return cell
    cell = ILLEGAL_CHARACTERS_RE.sub("", cell)[:32_767]
    return cell.replace("\r\n", "\n").replace("\r", "\n")


def _blank_line(fmt: str, cells: list[str]) -> bool:
    """Whether the CSV/TSV line written for these cells holds only spaces (and, in CSV, tabs;
    in TSV a tab separates cells): such a line carries no row (documented in
    rowprompt.tables)."""
    text = io.StringIO()
    sep = "," if fmt == "csv" else "\t"
    csv.writer(text, delimiter=sep, lineterminator="").writerow(cells)
    return not text.getvalue().strip(" \t" if fmt == "csv" else " ")


def expected_prompts(case: dict[str, Any]) -> list[str] | None:
    """Each row's prompt when the template prints one cell as it is (or no cell); None
    when the template does more than that, or when the header line itself is blank."""
    kind, column, names, fmt = case["kind"], case["column"], case["names"], case["fmt"]
    rows = [[stored_cell(fmt, cell) for cell in row] for row in case["rows"]]
    if fmt == "xlsx":  # a sheet's trailing empty rows are dropped (documented)
        while rows and not any(rows[-1]):
            rows.pop()
    if fmt in ("csv", "tsv"):
        if _blank_line(fmt, names):
            return None  # the first data line becomes the header
        rows = [row for row in rows if not _blank_line(fmt, row)]
    if kind == "plain text, no placeholder":
        return [kind] * len(rows)
    # ``{{ row }}`` is the whole row (documented), even with a column named "row".
    if kind == "Summarise: {{ row[KEY] }}" or (
        kind == "Summarise: {{ COL }}" and not (column.isidentifier() and column == "row")
    ):
        at = names.index(column)
        return ["Summarise: " + row[at] for row in rows]
    return None


def try_case(path: Path, case: dict[str, Any]) -> tuple[str, str]:
    """Prepare the job and render every row, in process: ("ok", ""), ("error", one line),
    or ("wrong prompt", what differs) when a prompt is not the cell it prints.

    Anything but a RowpromptError escaping is the bug this campaign hunts: it raises.
    """
    options = RunOptions(
        prompt=case["template"],
        provider="sandbox",
        base_url="http://127.0.0.1:9/v1",
        output=str(path.with_name("out.csv")),
        force=True,
    )
    try:
        prepared = prepare(str(path), options)
        prompts = [
            prepared.build_body(position)["messages"][-1]["content"]
            for position in range(len(prepared.table))
        ]
    except RowpromptError as exc:
        return "error", exc.one_line()
    want = expected_prompts(case)
    if want is not None and len(prompts) != len(want):
        return "wrong prompt", f"{len(prompts)} rows read for {len(want)} written"
    if want is not None and prompts != want:
        wrong = next(i for i, (a, b) in enumerate(zip(prompts, want, strict=True)) if a != b)
        return "wrong prompt", f"row {wrong + 1}: {prompts[wrong]!r:.80} for {want[wrong]!r:.80}"
    return "ok", ""


# A message that names a row is about a cell, and must name its column too; except these,
# about a whole record.
_WHOLE_RECORD = ("fields but the header has",)


def message_problems(message: str, path: Path, case: dict[str, Any]) -> str:
    """What a bad-input error fails to say ("" when it is clear): one line, naming the file
    (or ``--prompt`` for the template alone), and for a row, the row's column."""
    if not message or "\n" in message or "Traceback" in message:
        return "not one line"
    if path.name not in message and "--prompt" not in message:
        return "names neither the file nor --prompt"
    if re.search(r"\brow \d+", message):
        if path.name not in message:
            return "names a row but not the file"
        try:
            template_reads_columns = bool(PromptTemplate(case["template"]).variables())
        except RowpromptError:
            template_reads_columns = True
        about_a_cell = not any(w in message for w in _WHOLE_RECORD) and (
            "template failed" not in message or template_reads_columns
        )
        if about_a_cell and "column" not in message:
            return "names a row but not the column"
    return ""
