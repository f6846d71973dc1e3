"""Embeddings, one vector per row: ``rowprompt.embed`` and the options of ``rowprompt embed``.

An embeddings job is a job like any other (ledger, resume, cache, costs, planner, batches):
its endpoint is ``embeddings`` and its template is the column, ``{{ row["COL"] }}``, so the
missing-column check and the row rendering are the ones ``run`` uses. See docs/embeddings.md.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pandas as pd

from rowprompt.api import Outcome, run_job
from rowprompt.errors import UsageError
from rowprompt.runner import RunOptions

Source = str | os.PathLike[str] | pd.DataFrame
DEFAULT_EMBEDDING_MODEL = "text-embedding-3-small"
# RunOptions that shape a chat request: an embeddings job has none of them.
_CHAT_ONLY = frozenset(
    {
        "prompt", "prompt_file", "system", "system_file", "output_type", "schema", "repair",
        "structured", "max_tokens", "temperature", "endpoint", "image_columns", "raw_cells",
    }
)  # fmt: skip

__all__ = ["DEFAULT_EMBEDDING_MODEL", "column_template", "embed", "embed_job", "embed_options"]


def column_template(column: str) -> str:
    """The template that renders a row as the text of ``column``: ``{{ row["COL"] }}``."""
    return "{{ row[" + json.dumps(column, ensure_ascii=False) + "] }}"


def embed_options(
    column: str,
    model: str = DEFAULT_EMBEDDING_MODEL,
    *,
    dimensions: int | None = None,
    mode: str = "auto",
    **kwargs: Any,
) -> RunOptions:
    """The run options of an embeddings job over ``column``."""
    if not isinstance(column, str) or not column:
        raise UsageError("name the column to embed", hint="pass --column COL (column='COL')")
    wrong = sorted(set(kwargs) & _CHAT_ONLY)
    if wrong:
        raise UsageError(f"embeddings take no {', '.join(wrong)}")
    known = set(RunOptions.__dataclass_fields__)
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise UsageError(f"unknown option(s): {', '.join(unknown)}")
    return RunOptions(
        prompt=column_template(column),
        model=model,
        mode=mode,
        endpoint="embeddings",
        dimensions=dimensions,
        **kwargs,
    )


def embed_job(source: Source, options: RunOptions) -> Outcome:
    """Run an embeddings job to its end (or, detached, until its batches are submitted)."""
    if options.endpoint != "embeddings":
        raise UsageError("not an embeddings job")
    return run_job(source, options)


def embed(
    source: Source,
    column: str,
    model: str = DEFAULT_EMBEDDING_MODEL,
    *,
    dimensions: int | None = None,
    mode: str = "auto",
    **kwargs: Any,
) -> pd.DataFrame:
    """One embedding vector per row of ``column``: the table with an ``embedding`` column.

    ``embedding`` holds float32 numpy arrays (None where a row failed or was skipped), beside
    ``_status``, ``_error``, ``_prompt_tokens``, ``_cost_usd`` and ``_via``. Takes the options
    of ``rowprompt embed`` as keyword arguments (``provider=``, ``output=``, ``home=``,
    ``skip_empty=``, ``budget=``, ...). Running the same call again resumes the same job.
    """
    if kwargs.get("detach"):
        raise UsageError(
            "rowprompt.embed waits for its vectors; it does not detach",
            hint="use `rowprompt embed ... --detach` and `rowprompt collect JOB` instead",
        )
    outcome = embed_job(
        source, embed_options(column, model, dimensions=dimensions, mode=mode, **kwargs)
    )
    assert outcome.frame is not None
    return outcome.frame
