"""Real time for endpoints that take many inputs in one request (embeddings).

The real-time engine claims rows as usual; with ``ctx.grouping`` set, :func:`form_groups`
packs them into groups (at most ``max_inputs`` rows and ``max_tokens`` tokens each, and never
more tokens than the tokens-per-minute limit), and :func:`drive_group` sends each group as
one request: the limiter counts one request and the tokens of its inputs. The answer holds one
vector per input, split back to the rows; the group's usage is shared by the rows' own token
counts (offline, exact for OpenAI's tokenizers), summing to what the provider reported.

Each row keeps its own request hash, so the cache, resume and batch mode see single rows. A
group refused with a 4xx is asked again one row at a time, so only the bad rows fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from rowprompt import vectors
from rowprompt.engine.budget import OVER_BUDGET
from rowprompt.engine.realtime import (
    RealtimeEngine,
    _Stop,
)
from rowprompt.errors import Permanent, ProviderError, Transient
from rowprompt.jobs import VIA_CACHE, VIA_REALTIME, Completion, RowOutcome, RowState, request_hash
from rowprompt.providers.base import CompletionResult


@dataclass(frozen=True)
class Member:
    """One claimed row of a group: its request and its own token count."""

    key: str
    position: int
    attempt: int
    body: dict[str, Any]
    rhash: str
    tokens: int


def form_groups(
    engine: RealtimeEngine, claimed: Sequence[tuple[str, int, int]]
) -> list[list[Member]]:
    """Claimed rows as groups to send; rows answered by the cache end here."""
    ctx = engine.ctx
    limits = ctx.grouping
    assert limits is not None
    bodies = [ctx.build_body(position) for _, position, _ in claimed]
    hashes = [request_hash(body) for body in bodies]
    hits = engine.ledger.cached_many(hashes) if ctx.use_cache else {}
    max_tokens = limits.max_tokens
    if engine.limiter.tpm:
        # A group must fit the tokens-per-minute budget, and a quarter of it keeps it flowing.
        max_tokens = max(1, min(max_tokens, int(engine.limiter.tpm) // 4))
    groups: list[list[Member]] = []
    current: list[Member] = []
    total = 0
    for (key, position, attempt), body, rhash in zip(claimed, bodies, hashes, strict=True):
        hit = hits.get(rhash)
        if hit is not None:
            engine._end(RowOutcome(key, RowState.DONE, VIA_CACHE, hit, cost_usd=0.0))
            continue
        member = Member(key, position, attempt, body, rhash, vectors.input_tokens(body))
        if current and (len(current) >= limits.max_inputs or total + member.tokens > max_tokens):
            groups.append(current)
            current, total = [], 0
        current.append(member)
        total += member.tokens
    if current:
        groups.append(current)
    return groups


async def drive_group(engine: RealtimeEngine, members: list[Member]) -> None:
    """Send one group to its end; rows not ended go back to pending when the engine stops."""
    try:
        with contextlib.suppress(_Stop):
            await _send(engine, members)
    finally:
        if engine.ctx.budget is not None:
            for member in members:
                engine.ctx.budget.release_row(member.key)


def group_body(members: Sequence[Member]) -> dict[str, Any]:
    """The request of a group: the first row's body with every row's input, in order."""
    if len(members) == 1:
        return members[0].body
    return {**members[0].body, "input": [m.body["input"] for m in members]}


async def _send(engine: RealtimeEngine, members: list[Member], reserved: bool = False) -> None:
    if not reserved:
        members = [m for m in members if _within_budget(engine, m)]
    if not members:
        return
    tokens = sum(m.tokens for m in members)
    reason = engine.limiter.too_large(tokens)
    if reason is not None:
        if len(members) > 1:  # the limit became known after the group was formed
            await _isolate(engine, members)
            return
        engine._end(RowOutcome(members[0].key, RowState.FAILED, VIA_REALTIME,
                               error_code="request_too_large", error_message=reason))  # fmt: skip
        return
    parts: list[str] = []

    def check(result: CompletionResult) -> None:
        try:
            parts[:] = vectors.split_vectors(result.completion.text, len(members))
        except ValueError as exc:  # an answer that does not match the request
            raise Transient(str(exc), code="bad_answer") from None

    async def one_by_one(exc: Permanent, tries: int) -> bool:
        # A group refused as a whole: ask each row alone, so only a bad input fails.
        if len(members) == 1:
            return False
        await _isolate(engine, members, tries + 1)
        return True

    first = max(m.attempt for m in members)  # the group's tries count from its most-tried row
    sent = await engine.ask(
        group_body(members),
        tokens,
        0,
        keys=tuple(m.key for m in members),
        attempt=first,
        log=lambda n, started, exc: _log(engine, members, n - first, started, exc),
        fail=lambda exc: _fail(engine, members, exc),
        check=check,
        on_permanent=one_by_one,
    )
    if sent is not None:
        tries = sent.attempt - first
        _succeed(engine, members, tries, sent.ticket, sent.result, parts, sent.sent, sent.started)


async def _isolate(engine: RealtimeEngine, members: list[Member], tried: int = 0) -> None:
    """Ask each row alone, so that one bad input fails only its own row."""
    task = asyncio.current_task()
    assert task is not None

    async def alone(member: Member) -> None:
        with contextlib.suppress(_Stop):
            await _send(engine, [replace(member, attempt=member.attempt + tried)], reserved=True)

    # The group's task counts as sending while its rows are asked: a stop gives them the grace.
    engine._sending.add(task)
    try:
        await asyncio.gather(*(alone(m) for m in members))
    finally:
        engine._sending.discard(task)


def _within_budget(engine: RealtimeEngine, member: Member) -> bool:
    ctx = engine.ctx
    if ctx.reserve_budget(member.key, member.tokens, 0, False):
        return True
    assert ctx.budget is not None
    engine._end(RowOutcome(member.key, RowState.FAILED, VIA_REALTIME, error_code=OVER_BUDGET,
                           error_message=ctx.budget.over_budget_message()))  # fmt: skip
    return False


def _succeed(engine: RealtimeEngine, members: list[Member], tries: int, ticket: Any,
             result: CompletionResult, parts: list[str], sent: float,
             started: float) -> None:  # fmt: skip
    ctx = engine.ctx
    group = result.completion
    tokens = sum(m.tokens for m in members)
    engine.window.succeeded(time.monotonic() - sent, tokens)
    engine.limiter.observe(ticket, result.limits)
    shares = vectors.split_usage(group.prompt_tokens, [m.tokens for m in members])
    finished = time.time()
    for member, part, share in zip(members, parts, shares, strict=True):
        completion = Completion(
            text=part,
            finish_reason=group.finish_reason,
            prompt_tokens=share,
            completion_tokens=0,
            model=group.model,
        )
        engine._writer.attempts.append(
            {
                "key": member.key,
                "attempt": member.attempt + tries,
                "via": VIA_REALTIME,
                "started_at": started,
                "finished_at": finished,
                "status_code": result.status_code,
                "prompt_tokens": share,
                "completion_tokens": 0,
            }
        )
        cost = ctx.price(completion, False)
        if ctx.budget is not None:
            ctx.budget.settle_row(member.key, cost)
        outcome = RowOutcome(member.key, RowState.DONE, VIA_REALTIME, completion, cost_usd=cost)
        engine._end(outcome, (member.rhash, completion) if ctx.use_cache else None)


def _fail(engine: RealtimeEngine, members: list[Member], exc: ProviderError) -> None:
    for member in members:
        engine._fail(member.key, exc)


def _log(engine: RealtimeEngine, members: list[Member], tries: int, started: float,
         exc: ProviderError) -> None:  # fmt: skip
    for member in members:
        engine._log_attempt(member.key, member.attempt + tries, started, exc)
