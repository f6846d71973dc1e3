"""The output table: the input, untouched, joined with the ledger's answers by row key."""

from __future__ import annotations

from typing import Any

import pandas as pd

from rowprompt.answers import AnswerSpec
from rowprompt.errors import UsageError
from rowprompt.jobs import RowState
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
        status = "skipped" if r.error_code in ("cancelled", "over_budget") else "failed"
        error = f"{r.error_code}: {r.error_message}" if r.error_message else r.error_code
        return status, {}, error, None
    if r.refusal:
        return "refused", {}, f"refusal: {r.refusal}", r.answer
    if r.finish_reason == "length":
        return "truncated", {}, "the answer was cut at the token limit (--max-tokens)", r.answer
    parsed = answer.parse(r.answer, structured=structured)
    if not parsed.ok:
        return "parse_error", {}, parsed.error, r.answer
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
    records = {r.key: r for r in ledger.iter_rows(job_id)}
    declared = answer.columns()
    learned: list[str] = []
    per_row: list[tuple[str, dict[str, Any], str | None, str | None, RowRecord | None]] = []
    for key in keys:
        record = records.get(key)
        status, values, error, raw = _row_result(record, answer, structured)
        if answer.kind == "json":
            learned.extend(k for k in values if k not in learned)
        per_row.append((status, values, error, raw, record))
    names = declared or _json_columns(learned, [str(c) for c in frame.columns])
    out = frame.copy()
    dtypes = answer.dtypes()
    for name in names:
        source = _source_key(name, learned) if answer.kind == "json" else name
        column = [row[1].get(source) for row in per_row]
        out[name] = _series(column, dtypes.get(name, "object"), out.index)
    out["_status"] = pd.Series([row[0] for row in per_row], index=out.index, dtype="object")
    out["_error"] = pd.Series([row[2] for row in per_row], index=out.index, dtype="object")
    out["_raw"] = pd.Series([row[3] for row in per_row], index=out.index, dtype="object")
    out["_prompt_tokens"] = pd.Series(
        [r[4].prompt_tokens if r[4] else None for r in per_row], index=out.index, dtype="Int64"
    )
    out["_completion_tokens"] = pd.Series(
        [r[4].completion_tokens if r[4] else None for r in per_row], index=out.index, dtype="Int64"
    )
    out["_cost_usd"] = pd.Series(
        [r[4].cost_usd if r[4] else None for r in per_row], index=out.index, dtype="float64"
    )
    out["_via"] = pd.Series(
        [r[4].via if r[4] and r[0] != "pending" else None for r in per_row],
        index=out.index,
        dtype="object",
    )
    return out, names


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
