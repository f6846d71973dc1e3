"""Repair: a row whose answer does not parse is asked again, in real time, with the reason.

The model sees its own answer and the validation error quoted, which fixes most near misses
(a number written as a word, a missing field) for the price of one short request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from rowprompt.answers import AnswerSpec
from rowprompt.engine.context import RunContext
from rowprompt.errors import ProviderError, RateLimited, Transient
from rowprompt.jobs import RowOutcome, RowState
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


async def repair_rows(
    provider: Provider,
    ledger: Ledger,
    ctx: RunContext,
    answer: AnswerSpec,
    structured: bool,
    *,
    rounds: int,
    spend_ok: Callable[[], bool] | None = None,
) -> int:
    """Ask again, up to ``rounds`` times each, the rows whose answer does not parse.

    Returns how many rows now parse. Usage and cost of the repair are added to the row's.
    """
    fixed = 0
    gate = asyncio.Semaphore(REPAIR_CONCURRENCY)
    for _ in range(max(0, rounds)):
        todo = rows_to_repair(ledger, ctx.job_id, answer, structured)
        if not todo:
            break
        if spend_ok is not None and not spend_ok():
            break
        ctx.say(f"repair: asking {len(todo)} rows again whose answers do not parse")

        async def one(row: RowRecord, error: str) -> bool:
            async with gate:
                return await _repair_one(provider, ledger, ctx, row, error, answer, structured)

        results = await asyncio.gather(*(one(row, error) for row, error in todo))
        fixed += sum(results)
    return fixed


async def _repair_one(
    provider: Provider,
    ledger: Ledger,
    ctx: RunContext,
    row: RowRecord,
    error: str,
    answer: AnswerSpec,
    structured: bool,
) -> bool:
    body: dict[str, Any] = dict(ctx.build_body(row.position))
    body["messages"] = [
        *body["messages"],
        {"role": "assistant", "content": row.answer or ""},
        {"role": "user", "content": repair_message(error)},
    ]
    started = time.time()
    for attempt in range(REPAIR_TRIES):
        try:
            result = await provider.complete(body, timeout=ctx.request_timeout)
            break
        except (RateLimited, Transient) as exc:
            delay = exc.retry_after if isinstance(exc, RateLimited) and exc.retry_after else 0.5
            await asyncio.sleep(min(delay * (attempt + 1), 10.0))
        except ProviderError:
            return False
    else:
        return False
    new = result.completion
    combined = replace(
        new,
        prompt_tokens=(row.prompt_tokens or 0) + new.prompt_tokens,
        completion_tokens=(row.completion_tokens or 0) + new.completion_tokens,
    )
    added = ctx.price(new, False)
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
