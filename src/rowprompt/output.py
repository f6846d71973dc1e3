"""The output table: the input, untouched, joined with the ledger's answers by row key."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rowprompt import tables, vectors
from rowprompt.answers import AnswerSpec
from rowprompt.engine.budget import REPAIR_SKIPPED
from rowprompt.errors import OutputError, UsageError
from rowprompt.jobs import SKIPPED_CODES, RowState
from rowprompt.ledger import Ledger, RowRecord

META_COLUMNS = (
    "_status",
    "_error",
    "_raw",
    "_prompt_tokens",
    "_completion_tokens",
    "_cost_usd",
    "_via",
)
ANSWER_COLUMNS = ("response", *META_COLUMNS)
# Cells the model wrote, besides the answer columns: neutralised in CSV and Excel.
UNTRUSTED_COLUMNS = ("response", "_raw", "_error")
STATUSES = ("ok", "failed", "parse_error", "refused", "truncated", "skipped", "pending")


def check_column_clash(columns: list[str], source: str, answer_columns: list[str]) -> None:
    """Refuse an input whose columns would collide with the columns rowprompt adds."""
    names = {str(x) for x in columns}
    clash = [c for c in (*answer_columns, *META_COLUMNS) if c in names]
    if clash:
        raise UsageError(
            f"{source}: the input already has column(s) {', '.join(clash)}, which rowprompt adds",
            hint="rename those columns in the input (or the fields of the schema)",
        )


def _row_result(
    r: RowRecord | None, answer: AnswerSpec, structured: bool
) -> tuple[str, dict[str, Any], str | None, str | None]:
    """(status, answer values, error, raw text) of one row."""
    if r is None or r.state in (RowState.PENDING, RowState.IN_FLIGHT):
        return "pending", {}, None, None
    if r.state == RowState.FAILED:
        status = "skipped" if r.error_code in SKIPPED_CODES else "failed"
        error = f"{r.error_code}: {r.error_message}" if r.error_message else r.error_code
        return status, {}, error, None
    if r.refusal:
        return "refused", {}, f"refusal: {r.refusal}", r.answer
    if r.finish_reason == "length":
        return "truncated", {}, "the answer was cut at the token limit (--max-tokens)", r.answer
    parsed = answer.parse(r.answer, structured=structured)
    if not parsed.ok:
        error = parsed.error
        if r.error_code == REPAIR_SKIPPED and r.error_message:
            error = f"{error}; {r.error_message}"
        return "parse_error", {}, error, r.answer
    return "ok", parsed.values, None, None


def build_output(
    frame: pd.DataFrame,
    keys: list[str],
    ledger: Ledger,
    job_id: str,
    answer: AnswerSpec | None = None,
    structured: bool = True,
) -> tuple[pd.DataFrame, list[str]]:
    """The input frame with the answer columns, rows in input order; and those columns' names.

    Rows the job has not finished yet (a partial collect) have ``_status`` ``pending``.
    """
    answer = answer or AnswerSpec()
    n = len(keys)
    # Column lists filled as the ledger's rows stream by (in input order), so a million rows
    # never sit in memory as records at once: only the values that go into the table.
    status: list[str] = ["pending"] * n
    values: list[dict[str, Any]] = [{}] * n
    error: list[str | None] = [None] * n
    raw: list[str | None] = [None] * n
    prompt_tokens: list[int | None] = [None] * n
    completion_tokens: list[int | None] = [None] * n
    cost: list[float | None] = [None] * n
    via: list[str | None] = [None] * n
    learned: list[str] = []
    seen_learned: set[str] = set()
    for i, record in _table_rows(ledger, job_id, keys):
        row_status, row_values, row_error, row_raw = _row_result(record, answer, structured)
        if answer.kind == "json":
            for name in row_values:
                if name not in seen_learned:
                    seen_learned.add(name)
                    learned.append(name)
        status[i], values[i], error[i], raw[i] = row_status, row_values, row_error, row_raw
        prompt_tokens[i] = record.prompt_tokens
        completion_tokens[i] = record.completion_tokens
        cost[i] = record.cost_usd
        via[i] = record.via if row_status != "pending" else None
    declared = answer.columns()
    names = declared or _json_columns(learned, [str(c) for c in frame.columns])
    out = frame.copy()
    dtypes = answer.dtypes()
    for name in names:
        source = _source_key(name, learned) if answer.kind == "json" else name
        column = [row.get(source) for row in values]
        out[name] = _series(column, dtypes.get(name, "object"), out.index)
    del values
    out["_status"] = pd.Series(status, index=out.index, dtype="object")
    out["_error"] = pd.Series(error, index=out.index, dtype="object")
    out["_raw"] = pd.Series(raw, index=out.index, dtype="object")
    out["_prompt_tokens"] = pd.Series(prompt_tokens, index=out.index, dtype="Int64")
    out["_completion_tokens"] = pd.Series(completion_tokens, index=out.index, dtype="Int64")
    out["_cost_usd"] = pd.Series(cost, index=out.index, dtype="float64")
    out["_via"] = pd.Series(via, index=out.index, dtype="object")
    return out, names


def _table_rows(ledger: Ledger, job_id: str, keys: list[str]) -> Iterator[tuple[int, RowRecord]]:
    """The job's rows as the ledger streams them, each with its index in the table."""
    n = len(keys)
    index_of: dict[str, int] | None = None
    for record in ledger.iter_rows(job_id):
        i = record.position
        if not (0 <= i < n and keys[i] == record.key):
            if index_of is None:
                index_of = {key: position for position, key in enumerate(keys)}
            found = index_of.get(record.key)
            if found is None:
                continue  # a row of the job the table no longer has (a smaller --limit)
            i = found
        yield i, record


def _json_columns(keys: list[str], input_columns: list[str]) -> list[str]:
    """Columns for free-form JSON answers: their keys, prefixed where an input has the name."""
    taken = set(input_columns) | set(META_COLUMNS)
    return [f"response.{k}" if k in taken else k for k in keys] or ["response"]


def _source_key(name: str, learned: list[str]) -> str:
    return (
        name[len("response.") :] if name.startswith("response.") and name not in learned else name
    )


def _series(values: list[Any], dtype: str, index: pd.Index) -> pd.Series:
    try:
        return pd.Series(values, index=index, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        # A value outside the declared type (a schema that allows more than it says).
        return pd.Series(values, index=index, dtype="object")


# -- embeddings ------------------------------------------------------------------------------
EMBEDDING_COLUMN = "embedding"
# An embeddings table has no answer text to parse and no completion: no _raw, no
# _completion_tokens.
EMBEDDING_META_COLUMNS = ("_status", "_error", "_prompt_tokens", "_cost_usd", "_via")
# Formats with no list cells: the vectors go to a .npy file beside the table.
FLAT_FORMATS = (".csv", ".tsv", ".xlsx")


def build_embedding_output(
    frame: pd.DataFrame, keys: list[str], ledger: Ledger, job_id: str
) -> pd.DataFrame:
    """The input frame with ``embedding`` (float32 arrays, None where there is none) and status.

    Rows the job has not finished yet have ``_status`` ``pending``.
    """
    n = len(keys)
    vectors_out: list[np.ndarray | None] = [None] * n
    statuses: list[str] = ["pending"] * n
    errors: list[str | None] = [None] * n
    tokens: list[int | None] = [None] * n
    cost: list[float | None] = [None] * n
    via: list[str | None] = [None] * n
    for i, record in _table_rows(ledger, job_id, keys):
        status, _, error, _ = _row_result(record, AnswerSpec(), True)
        vector = None
        if status == "ok":
            try:
                vector = vectors.decode(record.answer or "")
            except ValueError:
                vector = None
            if vector is None or not len(vector):
                status, error, vector = "failed", "the answer holds no embedding vector", None
        vectors_out[i] = vector
        statuses[i] = status
        errors[i] = error
        if status != "pending":
            # Blank rows skipped before sending have no via ("").
            tokens[i], cost[i], via[i] = record.prompt_tokens, record.cost_usd, record.via or None
    out = frame.copy()
    index = out.index
    out[EMBEDDING_COLUMN] = pd.Series(vectors_out, index=index, dtype="object")
    out["_status"] = pd.Series(statuses, index=index, dtype="object")
    out["_error"] = pd.Series(errors, index=index, dtype="object")
    out["_prompt_tokens"] = pd.Series(tokens, index=index, dtype="Int64")
    out["_cost_usd"] = pd.Series(cost, index=index, dtype="float64")
    out["_via"] = pd.Series(via, index=index, dtype="object")
    return out


def embedding_matrix(column: pd.Series, dims: int | None = None) -> np.ndarray:
    """The vectors as one float32 matrix, rows × dims, NaN rows where a row has none."""
    present = [v for v in column if isinstance(v, np.ndarray)]
    width = len(present[0]) if present else (dims or 0)
    matrix = np.full((len(column), width), np.nan, dtype=np.float32)
    for i, vector in enumerate(column):
        if isinstance(vector, np.ndarray) and len(vector) == width:
            matrix[i] = vector
    return matrix


def npy_path(output: Path) -> Path:
    """Where the vectors of a CSV/TSV/Excel output go: ``out.embeddings.npy`` beside it."""
    return output.with_name(f"{output.stem}.embeddings.npy")


def write_embedding_output(frame: pd.DataFrame, output: Path, *, neutralise: bool = True) -> None:
    """Write an embeddings table; for CSV, TSV and Excel, the vectors to a ``.npy`` beside it.

    Parquet keeps ``embedding`` as a list<float32> column and JSONL as lists of numbers.
    """
    untrusted = ["_error"] if neutralise else []
    if output.suffix.lower() not in FLAT_FORMATS:
        tables.write_table(frame, output, neutralise_columns=untrusted)
        return
    target = npy_path(output)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, embedding_matrix(frame[EMBEDDING_COLUMN]))
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{target}: cannot write it: {exc.strerror or exc}") from exc
    tables.write_table(frame.drop(columns=[EMBEDDING_COLUMN]), output, neutralise_columns=untrusted)
