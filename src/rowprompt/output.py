"""The output table: the input, untouched, joined with the ledger's answers by row key."""

from __future__ import annotations

import pandas as pd

from rowprompt.errors import UsageError
from rowprompt.jobs import RowState
from rowprompt.ledger import Ledger

ANSWER_COLUMNS = (
    "response",
    "_status",
    "_error",
    "_raw",
    "_prompt_tokens",
    "_completion_tokens",
    "_cost_usd",
    "_via",
)
# Answer cells the model wrote: neutralised in CSV and Excel (the model's text is untrusted).
UNTRUSTED_COLUMNS = ("response", "_raw", "_error")


def check_column_clash(columns: list[str], source: str) -> None:
    """Refuse an input whose columns would collide with the answer columns."""
    clash = [c for c in ANSWER_COLUMNS if c in {str(x) for x in columns}]
    if clash:
        raise UsageError(
            f"{source}: the input already has column(s) {', '.join(clash)}, which rowprompt adds",
            hint="rename those columns in the input",
        )


def _status(state: RowState, error_code: str | None) -> str:
    if state == RowState.DONE:
        return "ok"
    if state == RowState.FAILED:
        return "skipped" if error_code in ("cancelled", "over_budget") else "failed"
    return "pending"


def build_output(frame: pd.DataFrame, keys: list[str], ledger: Ledger, job_id: str) -> pd.DataFrame:
    """The input frame with the answer columns, rows in input order.

    Rows the job has not finished yet (a partial collect) have ``_status`` ``pending``.
    """
    records = {r.key: r for r in ledger.iter_rows(job_id)}
    response: list[object] = []
    status: list[str] = []
    error: list[object] = []
    raw: list[object] = []
    prompt_tokens: list[object] = []
    completion_tokens: list[object] = []
    cost: list[object] = []
    via: list[object] = []
    for key in keys:
        r = records.get(key)
        if r is None:
            response.append(None)
            status.append("pending")
            error.append(None)
            raw.append(None)
            prompt_tokens.append(None)
            completion_tokens.append(None)
            cost.append(None)
            via.append(None)
            continue
        st = _status(r.state, r.error_code)
        text = r.answer
        err: str | None = None
        if st != "ok" and r.error_code:
            err = f"{r.error_code}: {r.error_message}" if r.error_message else r.error_code
        elif st == "ok" and r.refusal:
            st, err, text = "failed", f"refusal: {r.refusal}", None
        response.append(text if st == "ok" else None)
        status.append(st)
        error.append(err)
        raw.append(None)
        prompt_tokens.append(r.prompt_tokens)
        completion_tokens.append(r.completion_tokens)
        cost.append(r.cost_usd)
        via.append(r.via if st == "ok" else (r.via if r.via else None))
    out = frame.copy()
    out["response"] = pd.Series(response, index=out.index, dtype="object")
    out["_status"] = pd.Series(status, index=out.index, dtype="object")
    out["_error"] = pd.Series(error, index=out.index, dtype="object")
    out["_raw"] = pd.Series(raw, index=out.index, dtype="object")
    out["_prompt_tokens"] = pd.Series(prompt_tokens, index=out.index, dtype="Int64")
    out["_completion_tokens"] = pd.Series(completion_tokens, index=out.index, dtype="Int64")
    out["_cost_usd"] = pd.Series(cost, index=out.index, dtype="float64")
    out["_via"] = pd.Series(via, index=out.index, dtype="object")
    return out
