"""What an embeddings job adds to ``prepare`` and the ``Runner`` (see docs/embeddings.md).

Its request body, its parameters, the checks of its texts before anything is written or sent,
the rows ``--skip-empty`` skips, and how many rows one real-time request carries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rowprompt import vectors
from rowprompt.engine.context import GroupLimits
from rowprompt.errors import ConfigError, InputError, UsageError
from rowprompt.jobs import EMPTY_INPUT, JobSpec, RowOutcome, RowState

if TYPE_CHECKING:
    from rowprompt.runner import Prepared, RunOptions


def embedding_body(spec: JobSpec, text: str) -> dict[str, Any]:
    """An embeddings body for one row's text under the job's parameters (``dimensions``)."""
    body: dict[str, Any] = {"model": spec.model, "input": text}
    body.update(spec.params)
    return body


def embedding_params(options: RunOptions) -> dict[str, Any]:
    """The job's parameters (``dimensions``), after refusing what cannot work."""
    if options.provider not in ("openai", "sandbox"):
        # Anthropic has no embeddings endpoint; Azure's batches take only /chat/completions in
        # its provider, and other faces have no embeddings shape yet.
        raise ConfigError(
            f"rowprompt sends embeddings jobs only to OpenAI's API, not to {options.provider}",
            hint="use --provider openai (any OpenAI-compatible server with --base-url)",
        )
    size = options.inputs_per_request
    if size is not None and not 1 <= size <= vectors.MAX_REQUEST_INPUTS:
        raise UsageError(f"--inputs-per-request must be between 1 and {vectors.MAX_REQUEST_INPUTS}")
    if options.dimensions is None:
        return {}
    if options.dimensions < 1:
        raise UsageError("--dimensions must be at least 1")
    if not vectors.takes_dimensions(options.model):
        raise UsageError(
            f"{options.model} makes vectors of one fixed size; it takes no --dimensions",
            hint="drop --dimensions, or use text-embedding-3-small or -large",
        )
    native = vectors.native_dimensions(options.model)
    if native is not None and options.dimensions > native:
        raise UsageError(
            f"{options.model} makes vectors of at most {native} dimensions,"
            f" not {options.dimensions}"
        )
    return {"dimensions": options.dimensions}


def check_embedding_inputs(p: Prepared) -> tuple[int, ...]:
    """Refuse blank rows (unless skipped) and over-long ones before anything is written."""
    column = ", ".join(repr(c) for c in sorted(p.template.variables())) or "the template"
    labels, source, model = p.table.labels, p.table.source, p.spec.model
    blank: list[int] = []
    long: list[tuple[int, int]] = []
    for position in range(len(p.table)):
        text = p.embed_text(position)
        if vectors.blank(text):
            blank.append(position)
        elif (count := vectors.over_limit(text, model)) is not None:
            long.append((position, count))
    if long:
        position, count = long[0]
        more = f" (and {len(long) - 1} more rows)" if len(long) > 1 else ""
        raise InputError(
            f"{source}: row {labels[position]}, column {column}: the text has {count:,} tokens,"
            f" more than an embedding input may have ({vectors.MAX_INPUT_TOKENS:,}){more}",
            hint="shorten or split those texts",
        )
    if blank and not p.options.skip_empty:
        named = ", ".join(labels[i] for i in blank[:10]) + (", ..." if len(blank) > 10 else "")
        raise InputError(
            f"{source}: {len(blank)} row(s) have no text to embed in column {column}: rows {named}",
            hint="fill or drop those rows, or pass --skip-empty to skip them",
        )
    return tuple(blank)


def skipped_outcomes(p: Prepared) -> list[RowOutcome]:
    """The rows ``--skip-empty`` skips, as ended (``_status`` ``skipped``)."""
    return [
        RowOutcome(
            p.table.keys[position],
            RowState.FAILED,
            "",
            error_code=EMPTY_INPUT,
            error_message="no text to embed (skipped with --skip-empty)",
        )
        for position in p.skipped
    ]


def embedding_grouping(p: Prepared) -> GroupLimits | None:
    """How many rows one real-time request carries: several for embeddings, else None."""
    if p.spec.endpoint != "embeddings":
        return None
    size = p.options.inputs_per_request or vectors.DEFAULT_GROUP_INPUTS
    return GroupLimits(max_inputs=size, max_tokens=vectors.MAX_REQUEST_TOKENS)
