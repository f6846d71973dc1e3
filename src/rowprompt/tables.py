"""Reading and writing the tables rowprompt works on.

A :class:`Table` is the input exactly as read, plus one stable string key per row. The
extension decides the format (case-insensitive): ``.csv``, ``.tsv``, ``.xlsx``, ``.jsonl``,
``.parquet``; a pandas DataFrame is accepted as it is (copied).

Decisions worth knowing:

- CSV/TSV cells are read as text, untouched: ``007`` stays ``007``, ``NA`` stays ``NA``, an
  empty cell is ``""``. A row with fewer fields than the header is padded with ``""``; a row
  with more is an error. A UTF-8 byte-order mark is dropped. TSV quotes like CSV (``"``), as
  Excel writes it, so cells may hold tabs and newlines. A line that is empty or holds only
  spaces (in CSV, spaces and tabs; in TSV a tab separates cells) carries no row: in a
  one-column file, quote a cell of only spaces to keep its row.
- XLSX keeps the types Excel stores (numbers, dates, text); empty cells are missing (NaN),
  trailing empty rows and columns are dropped, formulas give their cached values.
- JSONL keeps JSON types: nested values stay nested, big integers stay exact, columns appear
  in the order keys are first seen, a key absent from a line is missing on that row, a key
  repeated within a line is refused (JSON parsers keep only its last value).
- Column names are always strings; an empty name is kept, two columns with the same name
  (two empty names included) are refused.
- Writing is atomic (a temporary file in the target directory, then ``os.replace``). XLSX
  cannot hold control characters other than tab, newline and carriage return: a cell with
  one is refused with an :class:`OutputError` naming row and column (write CSV, JSONL or
  Parquet instead) rather than silently altered. XML reads a carriage return back as a
  newline, an empty text cell comes back missing, and text starting with ``=`` is stored as
  text, not as a formula. Lists and dicts go to CSV and XLSX cells as JSON text, and to
  Parquet as JSON text too when a column mixes types Parquet cannot hold together.
"""

from __future__ import annotations

import csv
import datetime as dt
import difflib
import functools
import hashlib
import io
import json
import math
import os
import re
import signal
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, overload

import numpy as np
import pandas as pd

from rowprompt.errors import InputError, OutputError, RowpromptError, UsageError

SUPPORTED_EXTENSIONS = (".csv", ".tsv", ".xlsx", ".jsonl", ".parquet")
DATAFRAME_SOURCE = "<DataFrame>"
# OWASP: a spreadsheet runs a cell starting with these as a formula.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_PARSER_LINE = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


@dataclass(frozen=True, eq=False)
class Table:
    """An input table as read, with one stable string key per row."""

    frame: pd.DataFrame
    source: str
    keys: list[str]
    id_column: str | None
    content_hash: str

    def __len__(self) -> int:
        return len(self.keys)

    def label(self, position: int) -> str:
        """How a message names the row at ``position``: its id with ``--id-column``, else its
        number counted from 1 (the first data row is row 1; the key is 0-based)."""
        return self.keys[position] if self.id_column else str(position + 1)

    @property
    def labels(self) -> Sequence[str]:
        """Every row's :meth:`label`, made as they are read (no list of a million names)."""
        return _Labels(self)

    @functools.cached_property
    def columns(self) -> list[str]:
        """The column names, in order (one list, made once: do not change it)."""
        # Read for every row rendered; building it from pandas each time was a third of the
        # cost of rendering a row.
        return [str(c) for c in self.frame.columns]

    def records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``(key, {column: value})`` in row order; missing values are ``None``."""
        names = self.columns
        if not names:
            for key in self.keys:
                yield key, {}
            return
        columns = [column_values(self.frame.iloc[:, i]) for i in range(len(names))]
        for key, values in zip(self.keys, zip(*columns, strict=True), strict=True):
            yield key, dict(zip(names, values, strict=True))


class _Labels(Sequence[str]):
    def __init__(self, table: Table) -> None:
        self._table = table

    def __len__(self) -> int:
        return len(self._table)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        if isinstance(index, slice):
            return [self._table.label(i) for i in range(len(self))[index]]
        return self._table.label(range(len(self))[index])


def is_missing(value: Any) -> bool:
    """True for None, NaN, NaT and pd.NA: a cell with nothing in it."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float | np.floating):
        return bool(math.isnan(value))
    return isinstance(value, np.datetime64) and bool(np.isnat(value))


def to_python(value: Any) -> Any:
    """A cell as a plain Python value: numpy scalars and arrays unwrapped, missing as None."""
    if is_missing(value):
        return None
    if isinstance(value, np.ndarray):
        return [to_python(v) for v in value.tolist()]
    if isinstance(value, np.datetime64):
        return pd.Timestamp(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [to_python(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_python(v) for k, v in value.items()}
    return value


def display_text(value: Any) -> str:
    """A cell as the text a person expects: ``""`` for missing, ``5`` for ``5.0``, ISO dates.

    Lists and dicts become JSON; a datetime at midnight without time zone shows as a date.
    """
    if isinstance(value, str):
        return value
    value = to_python(value)
    if value is None:
        return ""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 2**63 else repr(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None and value.time() == dt.time(0):
            return value.date().isoformat()
        return value.isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, default=display_text)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def closest(name: str, candidates: Sequence[str]) -> str | None:
    """The candidate the user most likely meant by ``name``, if any is close."""
    folded = {c.casefold(): c for c in candidates}
    if name.casefold() in folded:
        return folded[name.casefold()]
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    if close:
        return close[0]
    key = name.casefold()
    partial = [c for c in candidates if key and c and (key in c.casefold() or c.casefold() in key)]
    return partial[0] if len(partial) == 1 else None


def format_for(path: str | os.PathLike[str], *, output: bool = False) -> str:
    """The format a path's extension names; InputError (OutputError if ``output``) if none."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        error = OutputError if output else InputError
        shown = f"extension {suffix!r}" if suffix else "no extension"
        raise error(
            f"{os.fspath(path)}: {shown} is not a table format rowprompt knows",
            hint=f"Use one of {', '.join(SUPPORTED_EXTENSIONS)}.",
        )
    return suffix[1:]


def read_table(
    source: str | os.PathLike[str] | pd.DataFrame,
    *,
    sheet: str | None = None,
    id_column: str | None = None,
    limit: int | None = None,
) -> Table:
    """Read a table file or copy a DataFrame, check it, and key its rows.

    ``sheet`` picks an XLSX sheet (the first by default); ``id_column`` names a column of
    unique, non-empty row keys (else keys are 0-based positions); ``limit`` keeps the first
    N rows. ``content_hash`` is the sha256 of the file's bytes, whatever ``limit`` is.
    """
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, not {limit}")
    if isinstance(source, pd.DataFrame):
        name = DATAFRAME_SOURCE
        frame = source.copy(deep=True)
        frame.columns = pd.Index([str(c) for c in frame.columns])
        _check_unique_names(list(frame.columns), name)
        content_hash = _frame_hash(frame)
    else:
        path = Path(source)
        name = os.fspath(source)
        if path.is_dir():
            raise InputError(f"{name}: is a directory, not a table file", hint="Name a file in it.")
        fmt = format_for(path)
        data = _read_bytes(path, name)
        content_hash = hashlib.sha256(data).hexdigest()
        if sheet is not None and fmt != "xlsx":
            raise InputError(f"{name}: --sheet applies to .xlsx files only, this is .{fmt}")
        try:
            frame = _READERS[fmt](data, name, sheet)
        except RowpromptError:
            raise
        except Exception as exc:  # each parser has its own exceptions: one message for all
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(
                f"{name}: cannot read it as .{fmt}: {first}",
                hint=f"Check that the file really is {fmt.upper()} and not damaged.",
            ) from exc
    if len(frame) == 0:
        raise InputError(f"{name}: the table has no rows", hint="Give a table with data rows.")
    keys = _row_keys(frame, id_column, name)
    if limit is not None and limit < len(frame):
        frame = frame.iloc[:limit]
        keys = keys[:limit]
    return Table(frame, name, keys, id_column, content_hash)


def _read_bytes(path: Path, name: str) -> bytes:
    if not path.exists():
        raise InputError(f"{name}: no such file", hint="Check the path and the current directory.")
    if path.is_dir():
        raise InputError(f"{name}: is a directory, not a table file", hint="Name a file in it.")
    try:
        return path.read_bytes()
    except PermissionError as exc:
        raise InputError(
            f"{name}: permission denied", hint="Make the file readable for this user."
        ) from exc
    except OSError as exc:
        raise InputError(f"{name}: cannot read it: {exc.strerror or exc}") from exc


def _delimited_place(data: bytes, at: int, sep: str) -> str:
    """Which row and column byte ``at`` of a CSV/TSV file falls in, for messages.

    The bytes before ``at`` are valid UTF-8 (``at`` is where decoding failed), so they parse;
    a marker character stands for the bad byte, and the last record holds it.
    """
    text = data[:at].decode("utf-8", "replace").removeprefix("\ufeff") + "\x01"
    records = list(csv.reader(io.StringIO(text, newline=""), delimiter=sep))
    if not records:
        return "row 1"
    field = len(records[-1]) - 1
    if len(records) == 1:
        return f"the header, column {field + 1}"
    header = records[0]
    column = repr(header[field]) if field < len(header) else str(field + 1)
    return f"row {len(records) - 1}, column {column}"


def _jsonl_place(line: bytes) -> str:
    """Which column (top-level key) of a JSON line the end of ``line`` falls in: ``column
    'name'``, ``a column name`` inside or in place of a key, ``outside any column``."""
    depth, in_string, escaped, want_key, is_key = 0, False, False, False, False
    key: str | None = None
    current: list[str] = []
    for char in line.decode("utf-8", "replace"):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
                if is_key:
                    key = "".join(current)
            elif is_key:
                current.append(char)
            continue
        if char == '"':
            in_string, is_key, current = True, depth == 1 and want_key, []
        elif char in "{[":
            depth += 1
            want_key = char == "{" and depth == 1
        elif char in "}]":
            depth -= 1
        elif char == "," and depth == 1:
            want_key = True
        elif char == ":" and depth == 1:
            want_key = False
    if depth < 1:
        return "outside any column"
    if (is_key and in_string) or (want_key and depth == 1) or key is None:
        return "a column name"
    return f"column {key!r}"


def _not_utf8(name: str, data: bytes, exc: UnicodeDecodeError, place: str) -> str:
    line = data.count(b"\n", 0, exc.start) + 1
    where = f", {place}" if place else ""
    return f"{name}: not valid UTF-8 at byte {exc.start} (line {line}){where}"


def _read_delimited(data: bytes, name: str, sheet: str | None, *, sep: str) -> pd.DataFrame:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            _not_utf8(name, data, exc, _delimited_place(data, exc.start, sep)),
            hint="Re-save the file as UTF-8 (in Excel: 'CSV UTF-8').",
        ) from exc
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        # header=None makes the C parser check every line against the header's field count
        # (with header=0 it would turn an extra field on every line into an index).
        raw = pd.read_csv(
            io.BytesIO(data),
            sep=sep,
            header=None,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            encoding="utf-8",
            engine="c",
        )
    except pd.errors.EmptyDataError as exc:
        raise InputError(
            f"{name}: the file is empty", hint="Give a table with a header row."
        ) from exc
    except pd.errors.ParserError as exc:
        match = _PARSER_LINE.search(str(exc))
        if not match:
            raise
        want, record, got = match.groups()
        raise InputError(
            f"{name}: record {record} (row {int(record) - 1} after the header) has {got} "
            f"fields but the header has {want}",
            hint="Quote cells that contain the separator, or fix that line.",
        ) from exc
    header = ["" if pd.isna(v) else str(v) for v in raw.iloc[0].tolist()]
    _check_unique_names(header, name)
    frame = raw.iloc[1:].reset_index(drop=True)
    frame.columns = pd.Index(header)
    return frame


def _read_xlsx(data: bytes, name: str, sheet: str | None) -> pd.DataFrame:
    import openpyxl

    book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    try:
        if sheet is None:
            sheet = book.sheetnames[0]
        elif sheet not in book.sheetnames:
            raise InputError(
                f"{name}: no sheet named {sheet!r}",
                hint=f"Its sheets are: {', '.join(map(repr, book.sheetnames))}.",
            )
        rows = [list(r) for r in book[sheet].iter_rows(values_only=True)]
    finally:
        book.close()
    # Sheets often carry formatted but empty rows and columns beyond the data.
    while rows and all(v is None for v in rows[-1]):
        rows.pop()
    if not rows:
        raise InputError(f"{name}: sheet {sheet!r} is empty", hint="Give a sheet with data.")
    width = max(max((i + 1 for i, v in enumerate(r) if v is not None), default=0) for r in rows)
    rows = [(r + [None] * width)[:width] for r in rows]
    header = ["" if v is None else display_text(v) for v in rows[0]]
    _check_unique_names(header, name)
    columns = {i: [r[i] for r in rows[1:]] for i in range(width)}
    frame = pd.DataFrame(columns, index=pd.RangeIndex(len(rows) - 1))
    frame.columns = pd.Index(header)
    return frame


def _read_jsonl(data: bytes, name: str, sheet: str | None) -> pd.DataFrame:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        start = data.rfind(b"\n", 0, exc.start) + 1
        # Rows are the file's non-blank lines: count those before this one.
        row = 1 + sum(1 for line in data[:start].split(b"\n") if line.strip())
        place = f"row {row}, {_jsonl_place(data[start : exc.start])}"
        raise InputError(
            _not_utf8(name, data, exc, place),
            hint="Re-save the file as UTF-8.",
        ) from exc
    records: list[dict[str, Any]] = []
    order: dict[str, None] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(
                f"{name}: line {number} is not valid JSON: {exc.msg} (column {exc.colno})",
                hint="Each line must be one JSON object.",
            ) from exc
        if not isinstance(record, dict):
            raise InputError(
                f"{name}: line {number} is a JSON {type(record).__name__}, not an object",
                hint='Each line must be one JSON object, like {"text": "..."}.',
            )
        # Every key written ends in `"` then `:`; fewer of those than the keys kept proves no
        # key repeats, so the slower check runs only on lines with nesting or `":` in text.
        if len(_KEY_END.findall(line)) > len(record):
            repeated = _repeated_key(line)
            if repeated is not None:
                raise InputError(
                    f"{name}: line {number}, row {len(records) + 1}, column {repeated!r}:"
                    " the key is written twice",
                    hint="Give each key of a line a distinct name: JSON would keep only the"
                    " last value.",
                )
        order.update(dict.fromkeys(record))
        records.append(record)
    columns = {key: _typed_series([r.get(key) for r in records]) for key in order}
    return pd.DataFrame(columns, index=pd.RangeIndex(len(records)))


_KEY_END = re.compile(r'"\s*:')


def _repeated_key(line: str) -> str | None:
    """A top-level key written twice in this JSON object line, or None."""
    objects: list[list[tuple[str, Any]]] = []

    def keep(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        objects.append(pairs)
        return dict(pairs)

    json.loads(line, object_pairs_hook=keep)
    counts = Counter(key for key, _ in objects[-1])  # the outermost object is built last
    return next((key for key, count in counts.items() if count > 1), None)


def _typed_series(values: list[Any]) -> pd.Series:
    """A column typed only where no value can change: else Python objects, as parsed."""
    kind = pd.api.types.infer_dtype(values, skipna=True)
    has_missing = any(v is None for v in values)
    try:
        if kind == "string":
            return pd.Series(values, dtype="str")
        if kind == "floating":
            return pd.Series(values, dtype="float64")
        if kind == "integer" and not has_missing:
            return pd.Series(values, dtype="int64")
        if kind == "boolean" and not has_missing:
            return pd.Series(values, dtype="bool")
    except OverflowError:  # an integer beyond int64 stays an exact Python int
        pass
    return pd.Series(values, dtype=object)


def _read_parquet(data: bytes, name: str, sheet: str | None) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Decoded in batches, not as one whole file: decoding a row group at once takes buffers
    # of about twice the table (a 1M-row, 325 MB table peaked at 800 MB; batched, 580 MB).
    parquet = pq.ParquetFile(io.BytesIO(data))
    batches = parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS)
    table = pa.Table.from_batches(list(batches), schema=parquet.schema_arrow)
    frame = table.to_pandas(split_blocks=True, self_destruct=True)
    del table
    # Arrow's allocator keeps freed decode buffers for reuse; a table is read once.
    pa.default_memory_pool().release_unused()
    frame.columns = pd.Index([str(c) for c in frame.columns])
    _check_unique_names(list(frame.columns), name)
    return frame.reset_index(drop=True)


_PARQUET_BATCH_ROWS = 65_536

_READERS: dict[str, Callable[[bytes, str, str | None], pd.DataFrame]] = {
    "csv": partial(_read_delimited, sep=","),
    "tsv": partial(_read_delimited, sep="\t"),
    "xlsx": _read_xlsx,
    "jsonl": _read_jsonl,
    "parquet": _read_parquet,
}


def _check_unique_names(names: list[str], source: str) -> None:
    counts = Counter(names)
    repeated = [n for n, c in counts.items() if c > 1]
    if not repeated:
        return
    shown = []
    for n in repeated[:5]:
        positions = ", ".join(str(i + 1) for i, m in enumerate(names) if m == n)
        shown.append(f"{n!r} (columns {positions})" if n else f"no name (columns {positions})")
    raise InputError(
        f"{source}: repeated column names: {'; '.join(shown)}",
        hint="Give every column a distinct, non-repeated name in the header.",
    )


def _row_keys(frame: pd.DataFrame, id_column: str | None, source: str) -> list[str]:
    if id_column is None:
        return [str(i) for i in range(len(frame))]
    names = [str(c) for c in frame.columns]
    if id_column not in names:
        close = closest(id_column, names)
        hint = f"Did you mean {close!r}? " if close else ""
        raise InputError(
            f"{source}: no column {id_column!r} for --id-column",
            hint=f"{hint}Its columns are: {', '.join(map(repr, names))}.",
        )
    keys = [display_text(v) for v in column_values(frame.iloc[:, names.index(id_column)])]
    empty = [i + 1 for i, k in enumerate(keys) if k == ""]
    if empty:
        rows = ", ".join(map(str, empty[:5])) + (", ..." if len(empty) > 5 else "")
        raise InputError(
            f"{source}: id column {id_column!r} is empty on {len(empty)} row(s): {rows}",
            hint="Fill in every id, or leave out --id-column to key rows by position.",
        )
    counts = Counter(keys)
    repeated = [k for k, c in counts.items() if c > 1]
    if repeated:
        shown = ", ".join(f"{k!r} ({counts[k]}x)" for k in repeated[:5])
        more = f" and {len(repeated) - 5} more" if len(repeated) > 5 else ""
        raise InputError(
            f"{source}: id column {id_column!r} has {len(repeated)} repeated value(s): "
            f"{shown}{more}",
            hint="Ids must be unique; pick another --id-column or leave it out.",
        )
    return keys


def column_values(column: pd.Series) -> list[Any]:
    """A column as a list of plain Python values, missing ones as None (fast: no row loop)."""
    values = column.tolist()
    if column.dtype == object:
        return [to_python(v) for v in values]
    missing = column.isna().to_numpy()
    if missing.any():
        return [None if m else v for v, m in zip(values, missing, strict=True)]
    return values


_column_values = column_values  # the name runner.py used first


def _frame_hash(frame: pd.DataFrame) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([[c, str(t)] for c, t in frame.dtypes.items()]).encode())
    for _, column in frame.items():
        try:
            digest.update(pd.util.hash_pandas_object(column, index=False).to_numpy().tobytes())
        except TypeError:  # unhashable cells (lists, dicts): hash their JSON text
            text = json.dumps([to_python(v) for v in column], default=display_text)
            digest.update(text.encode())
    return digest.hexdigest()


def check_output_path(
    path: str | os.PathLike[str], *, input_path: str | os.PathLike[str] | None = None
) -> Path:
    """Check that a table can be written at ``path``; return it as a Path.

    The extension must be known, the directory must exist and be writable, the path must
    not be a directory nor the input file itself. Whether an existing output may be
    replaced is the caller's decision.
    """
    target = Path(path)
    name = os.fspath(path)
    format_for(target, output=True)
    parent = target.parent
    if not parent.is_dir():
        raise OutputError(
            f"{name}: directory {os.fspath(parent)} does not exist",
            hint="Create it first, or choose another output path.",
        )
    if target.is_dir():
        raise OutputError(f"{name}: is a directory", hint="Name a file inside it.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{name}: directory {os.fspath(parent)} is not writable")
    if input_path is not None and _same_file(target, Path(input_path)):
        raise OutputError(
            f"{name}: is the input file itself", hint="Write the results to another file."
        )
    return target


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def write_table(
    frame: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    neutralise_columns: Sequence[str] = (),
) -> None:
    """Write ``frame`` to ``path`` atomically, in the format its extension names.

    For ``.csv``, ``.tsv`` and ``.xlsx``, text cells of ``neutralise_columns`` that a
    spreadsheet would run as a formula get a leading ``'``; other columns are never changed.
    """
    target = Path(path)
    fmt = format_for(target, output=True)
    name = os.fspath(path)
    if fmt in ("csv", "tsv", "xlsx") and neutralise_columns:
        frame = frame.copy()
        for col in neutralise_columns:
            if col in frame.columns:
                frame[col] = frame[col].map(_neutralise).astype(object)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(
            f"{name}: cannot write in {os.fspath(target.parent)}: {exc.strerror or exc}",
            hint="Check that the directory exists and is writable.",
        ) from exc
    os.close(fd)
    try:
        _WRITERS[fmt](frame, tmp_name, name)
        os.chmod(tmp_name, _file_mode(target))
        _crash_point("output_before_replace")
        os.replace(tmp_name, target)
    except BaseException as exc:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"{name}: cannot write it: {exc.strerror or exc}") from exc
        raise


def _crash_point(name: str) -> None:
    """Die at once (SIGKILL) when ``ROWPROMPT_TEST_CRASH_AT`` names this point.

    The reliability tests use it to kill a run at an exact step; unset, it does nothing.
    """
    if os.environ.get("ROWPROMPT_TEST_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _neutralise(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def _file_mode(target: Path) -> int:
    try:
        return target.stat().st_mode & 0o777
    except OSError:
        return 0o666 & ~_UMASK


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which races other threads.
_UMASK = _read_umask()


def _text_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns with lists or dicts as JSON text, so CSV and XLSX cells stay readable."""
    out = frame
    for col in frame.columns:
        if frame[col].dtype == object:
            values = frame[col].map(to_python)
            if any(isinstance(v, list | dict) for v in values):
                if out is frame:
                    out = frame.copy()
                out[col] = values.map(lambda v: display_text(v) if v is not None else None)
    return out


def _write_delimited(frame: pd.DataFrame, tmp: str, name: str, *, sep: str) -> None:
    frame = _text_cells(frame)
    # The csv writer quotes a field only for characters in the line terminator: a lone "\r"
    # in a cell would be written bare and read back as a line break, so end lines with
    # "\r\n" whenever a cell holds one.
    terminator = "\r\n" if any(map(_has_cr, frame.columns)) or _cells_have_cr(frame) else "\n"
    frame.to_csv(tmp, sep=sep, index=False, encoding="utf-8", lineterminator=terminator)


def _has_cr(value: Any) -> bool:
    return isinstance(value, str) and "\r" in value


def _cells_have_cr(frame: pd.DataFrame) -> bool:
    for _, column in frame.items():
        if isinstance(column.dtype, pd.StringDtype):
            if column.str.contains("\r", regex=False, na=False).any():
                return True
        elif column.dtype == object and any(map(_has_cr, column.tolist())):
            return True
    return False


def _write_xlsx(frame: pd.DataFrame, tmp: str, name: str) -> None:
    import openpyxl
    from openpyxl.cell import WriteOnlyCell

    names = [str(c) for c in frame.columns]
    columns = [column_values(frame.iloc[:, i]) for i in range(len(names))]
    # Check before writing: a write-only workbook left half-written keeps temporary files.
    _check_xlsx_text(names, [names], name, "the header")
    for col, values in zip(names, columns, strict=True):
        _check_xlsx_text([col], [[v] for v in values], name, "row {}")
    book = openpyxl.Workbook(write_only=True)
    sheet = book.create_sheet()

    def cells(values: Sequence[Any]) -> list[Any]:
        out = []
        for value in map(_xlsx_value, values):
            if isinstance(value, str) and value.startswith("="):
                # openpyxl would store it as a formula; it is text.
                cell = WriteOnlyCell(sheet, value=value)
                cell.data_type = "s"
                value = cell
            out.append(value)
        return out

    sheet.append(cells(names))
    for row in zip(*columns, strict=True):
        sheet.append(cells(row))
    book.save(tmp)


def _check_xlsx_text(names: list[str], rows: list[list[Any]], name: str, where: str) -> None:
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    for number, row in enumerate(rows, start=1):
        for col, value in zip(names, row, strict=True):
            bad = ILLEGAL_CHARACTERS_RE.search(value) if isinstance(value, str) else None
            if bad:
                raise OutputError(
                    f"{name}: {where.format(number)}, column {col!r} holds control character "
                    f"U+{ord(bad.group()):04X}, which an .xlsx file cannot store",
                    hint="Write .csv, .jsonl or .parquet instead.",
                )


def _xlsx_value(value: Any) -> Any:
    value = to_python(value)
    if isinstance(value, list | dict):
        return display_text(value)
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.isoformat()  # Excel has no time zones: keep the instant as text
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, Decimal | bytes):
        return display_text(value)
    return value


def _write_jsonl(frame: pd.DataFrame, tmp: str, name: str) -> None:
    names = [str(c) for c in frame.columns]
    columns = [column_values(frame.iloc[:, i]) for i in range(len(names))]
    with open(tmp, "w", encoding="utf-8", newline="\n") as out:
        for values in zip(*columns, strict=True):
            record = dict(zip(names, map(_json_value, values), strict=True))
            out.write(json.dumps(record, ensure_ascii=False, default=display_text) + "\n")


def _json_value(value: Any) -> Any:
    value = to_python(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    return value


def _write_parquet(frame: pd.DataFrame, tmp: str, name: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = frame.copy()
    frame.columns = pd.Index([str(c) for c in frame.columns])
    for col in frame.columns:
        if frame[col].dtype == object:
            try:
                pa.array(frame[col], from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
                # Mixed types Parquet cannot hold in one column: keep each value as text.
                frame[col] = frame[col].map(lambda v: None if is_missing(v) else display_text(v))
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp)


_WRITERS: dict[str, Callable[[pd.DataFrame, str, str], None]] = {
    "csv": partial(_write_delimited, sep=","),
    "tsv": partial(_write_delimited, sep="\t"),
    "xlsx": _write_xlsx,
    "jsonl": _write_jsonl,
    "parquet": _write_parquet,
}
