"""Repair: a row whose answer does not parse is asked again, in real time, with the reason.

The model sees its own answer and the validation error quoted, which fixes most near misses
(a number written as a word, a missing field) for the price of one short request.

A repair is a request like any other: under ``--budget`` it reserves its worst case first
and settles what it really cost, and a row whose repair does not fit stays ``parse_error``
with the reason; with a limiter (``--rpm``/``--tpm``) it waits its turn like the engine's rows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from rowprompt.answers import AnswerSpec
from rowprompt.engine.budget import REPAIR_SKIPPED
from rowprompt.engine.context import RunContext, admission_parts
from rowprompt.engine.ratelimit import Limiter, Ticket
from rowprompt.errors import ProviderError, RateLimited, Transient
from rowprompt.jobs import Completion, RowOutcome, RowState
from rowprompt.ledger import Ledger, RowRecord
from rowprompt.providers.base import Provider

REPAIR_CONCURRENCY = 8
REPAIR_TRIES = 3


def repair_message(error: str) -> str:
    """What the model is told about its unusable answer."""
    return (
        f"Your answer could not be used: {error}. Answer again, following the required format"
        " exactly and writing nothing else."
    )


def rows_to_repair(
    ledger: Ledger, job_id: str, answer: AnswerSpec, structured: bool
) -> list[tuple[RowRecord, str]]:
    """Done rows whose answer does not parse, with the reason (refused and cut rows excluded)."""
    if answer.kind == "text":
        return []
    found = []
    for row in ledger.iter_rows(job_id):
        if row.state != RowState.DONE or row.refusal or row.finish_reason == "length":
            continue
        parsed = answer.parse(row.answer, structured=structured)
        if not parsed.ok:
            found.append((row, parsed.error or "it does not parse"))
    return found


def repair_body(ctx: RunContext, row: RowRecord, error: str) -> dict[str, Any]:
    """The row's request again, with its answer and the error quoted after it."""
    body: dict[str, Any] = dict(ctx.build_body(row.position))
    body["messages"] = [
        *body["messages"],
        {"role": "assistant", "content": row.answer or ""},
        {"role": "user", "content": repair_message(error)},
    ]
    return body


async def repair_rows(
    provider: Provider,
    ledger: Ledger,
    ctx: RunContext,
    answer: AnswerSpec,
    structured: bool,
    *,
    rounds: int,
    spend_ok: Callable[[], bool] | None = None,
    limiter: Limiter | None = None,
) -> int:
    """Ask again, up to ``rounds`` times each, the rows whose answer does not parse.

    Returns how many rows now parse. Usage and cost of the repair are added to the row's.
    Under ``ctx.budget`` each repair reserves its worst case first; a row that does not fit is
    not asked and keeps its ``parse_error``, marked "repair skipped: budget".
    """
    fixed = 0
    gate = asyncio.Semaphore(REPAIR_CONCURRENCY)
    held_back: set[str] = set()
    for _ in range(max(0, rounds)):
        # A row the budget held back is not tried again in a later round: its reason is
        # recorded, and the next run with a higher --budget asks it.
        todo = [
            item
            for item in rows_to_repair(ledger, ctx.job_id, answer, structured)
            if item[0].key not in held_back
        ]
        if not todo:
            break
        if spend_ok is not None and not spend_ok():
            break
        ctx.say(f"repair: asking {len(todo)} rows again whose answers do not parse")

        async def one(row: RowRecord, error: str) -> bool | None:
            async with gate:
                return await _repair_one(
                    provider, ledger, ctx, row, error, answer, structured, limiter
                )

        results = await asyncio.gather(*(one(row, error) for row, error in todo))
        fixed += sum(1 for r in results if r)
        skipped = [row for (row, _), r in zip(todo, results, strict=True) if r is None]
        if skipped:
            held_back.update(row.key for row in skipped)
            _mark_skipped(ledger, ctx, skipped)
            ctx.say(
                f"repair: {len(skipped)} rows not asked again: it could pass the budget"
                " (they stay parse_error)"
            )
    return fixed


async def _repair_one(
    provider: Provider,
    ledger: Ledger,
    ctx: RunContext,
    row: RowRecord,
    error: str,
    answer: AnswerSpec,
    structured: bool,
    limiter: Limiter | None = None,
) -> bool | None:
    """True: the row parses now; False: it still does not; None: the budget held it back."""
    body = repair_body(ctx, row, error)
    prompt_tokens, output_tokens = admission_parts(body)
    # Its own key: the row's first answer settled its reservation long ago.
    hold = f"repair:{row.key}"
    if not ctx.reserve_budget(hold, prompt_tokens, output_tokens, False):
        return None
    try:
        sent = await _send(provider, ctx, body, prompt_tokens + output_tokens, output_tokens,
                           limiter)  # fmt: skip
    except BaseException:
        _release(ctx, hold)
        raise
    if sent is None:
        _release(ctx, hold)  # nothing was answered, so nothing was billed
        return False
    result, started = sent
    new = result.completion
    added = ctx.price(new, False)
    if ctx.budget is not None:
        ctx.budget.settle_row(hold, added)
    combined = replace(
        new,
        prompt_tokens=(row.prompt_tokens or 0) + new.prompt_tokens,
        completion_tokens=(row.completion_tokens or 0) + new.completion_tokens,
    )
    cost = None if added is None and row.cost_usd is None else (row.cost_usd or 0) + (added or 0)
    ledger.record_outcomes(
        ctx.job_id,
        [RowOutcome(row.key, RowState.DONE, row.via or "realtime", combined, cost_usd=cost)],
    )
    ledger.record_attempts(
        ctx.job_id,
        [
            {
                "key": row.key,
                "attempt": 0,
                "via": "repair",
                "started_at": started,
                "finished_at": time.time(),
                "status_code": result.status_code,
                "prompt_tokens": new.prompt_tokens,
                "completion_tokens": new.completion_tokens,
            }
        ],
    )
    return answer.parse(new.text, structured=structured).ok


def _release(ctx: RunContext, hold: str) -> None:
    if ctx.budget is not None:
        ctx.budget.release_row(hold)


async def _send(
    provider: Provider,
    ctx: RunContext,
    body: dict[str, Any],
    reserve: int,
    output_tokens: int,
    limiter: Limiter | None,
) -> tuple[Any, float] | None:
    """The provider's answer and when it was asked; None when every try failed."""
    for attempt in range(REPAIR_TRIES):
        ticket: Ticket | None = await limiter.acquire(reserve, output_tokens) if limiter else None
        started = time.time()
        try:
            result = await provider.complete(body, timeout=ctx.request_timeout)
        except RateLimited as exc:
            delay = exc.retry_after or 0.5
            if limiter is not None:
                limiter.rate_limited(exc.retry_after, delay)
            await asyncio.sleep(min(delay * (attempt + 1), 10.0))
            continue
        except Transient:
            await asyncio.sleep(min(0.5 * (attempt + 1), 10.0))
            continue
        except ProviderError:
            return None
        if limiter is not None and ticket is not None:
            limiter.observe(ticket, result.limits)
            limiter.settle(ticket, result.completion.completion_tokens)
        return result, started
    return None


def _mark_skipped(ledger: Ledger, ctx: RunContext, rows: list[RowRecord]) -> None:
    """Keep each row's answer as it was, with why it was not asked again."""
    assert ctx.budget is not None
    message = ctx.budget.repair_skipped_message()
    outcomes = [
        RowOutcome(
            row.key,
            RowState.DONE,
            row.via or "realtime",
            Completion(
                text=row.answer,
                finish_reason=row.finish_reason,
                prompt_tokens=row.prompt_tokens or 0,
                completion_tokens=row.completion_tokens or 0,
                refusal=row.refusal,
            ),
            cost_usd=row.cost_usd,
            error_code=REPAIR_SKIPPED,
            error_message=message,
        )
        for row in rows
    ]
    ledger.record_outcomes(ctx.job_id, outcomes)
