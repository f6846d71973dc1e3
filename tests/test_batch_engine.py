"""The batch engine at scale, through the sandbox over real HTTP with the real SDK.

Every test checks that each row ended ``done`` (with the sandbox's answer for its request) or
``failed`` with a reason, and that no row was paid twice (the sandbox's billing counters).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from rowprompt.engine.batch import CREATING, META_JOB, META_SHARD, META_TRY, BatchEngine
from rowprompt.engine.context import RunContext
from rowprompt.engine.realtime import RealtimeEngine
from rowprompt.engine.scheduler import PollSchedule, parse_token_limit, shard_summary
from rowprompt.engine.shards import ShardCaps, enqueued_tokens, enqueued_tokens_many
from rowprompt.jobs import JobSpec, RowState, ShardState, request_hash
from rowprompt.ledger import Ledger
from rowprompt.providers.openai import OpenAIProvider
from rowprompt.sandbox import FaultConfig, Sandbox
from rowprompt.sandbox.model import expected_answer
from tests.helpers import fast_config

MODEL = "gpt-4o-mini"
MAX_TOKENS = 16


def body_for(position: int) -> dict[str, Any]:
    """The request of row ``position``: prompts of varied length, a small max_tokens."""
    words = " ".join(f"w{position}x{i}" for i in range(position % 7 + 3))
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Summarise row {position}: {words}"}],
        "max_tokens": MAX_TOKENS,
    }


def new_job(ledger: Ledger, n: int, name: str = "t", max_attempts: int = 4) -> RunContext:
    """A job of ``n`` rows in the ledger, and the engines' context for it."""
    spec = JobSpec(input_hash=name, prompt="p", system=None, model=MODEL, provider="sandbox")
    job = ledger.create_job(
        spec,
        ((f"k{i}", i, request_hash(body_for(i))) for i in range(n)),
        input_path=None,
        output_path=None,
        mode="batch",
    )
    return RunContext(
        job_id=job.id,
        model=MODEL,
        build_body=body_for,
        price=lambda c, batch: 0.001,
        max_attempts=max_attempts,
        use_cache=False,
    )


def provider_for(sb: Sandbox) -> OpenAIProvider:
    return OpenAIProvider(api_key="sk-test", base_url=sb.base_url, name="sandbox")


async def drive(
    sb: Sandbox,
    ledger: Ledger,
    ctx: RunContext,
    *,
    during: Callable[[BatchEngine], Awaitable[None]] | None = None,
    **kwargs: Any,
) -> BatchEngine:
    """Run a job's batches to the end with fast polling."""
    provider = provider_for(sb)
    kwargs.setdefault("poll_interval", 0.05)
    kwargs.setdefault("max_poll_interval", 0.3)
    engine = BatchEngine(provider, ledger, ctx, **kwargs)
    try:
        if during is not None:
            await during(engine)
        else:
            await engine.run(wait=True, timeout=45)
    finally:
        await provider.aclose()
    return engine


def check_rows(ledger: Ledger, ctx: RunContext, sb: Sandbox, n: int) -> dict[str, int]:
    """Every row ended; done rows hold the sandbox's answer; nothing paid twice."""
    states: dict[str, int] = {}
    rows = list(ledger.iter_rows(ctx.job_id))
    assert len(rows) == n
    for row in rows:
        states[row.state] = states.get(row.state, 0) + 1
        assert row.state in (RowState.DONE, RowState.FAILED), row
        if row.state == RowState.DONE:
            assert row.answer == expected_answer(body_for(row.position))
        else:
            assert row.error_code and row.error_message, row
    billed = sb.batch_lines()
    twice = [cid for cid, count in billed.items() if count > 1]
    dropped = sb.stats()["faults"].get("output_missing_lines", 0)
    # Only a line the provider ran but left out of its output file is asked (and paid) again.
    assert len(twice) <= dropped
    return states


def shard_rows(ledger: Ledger, ctx: RunContext) -> list[int]:
    return [s.rows for s in ledger.shards(ctx.job_id) if s.state == ShardState.COLLECTED]


# -- planning --------------------------------------------------------------------------------
def test_token_estimate_matches_the_sandbox_queue_count() -> None:
    bodies = [body_for(i) for i in range(50)]
    bodies.append({"model": MODEL, "messages": [{"role": "user", "content": "x", "name": "a"}]})
    assert enqueued_tokens_many(bodies) == [enqueued_tokens(b) for b in bodies]
    # A request without a maximum reserves no output tokens, as the queue counts it.
    no_max = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
    assert enqueued_tokens({**no_max, "max_tokens": 10, "n": 2}) == enqueued_tokens(no_max) + 20


@pytest.mark.parametrize("cap", ["requests", "bytes", "tokens"])
def test_shards_are_cut_at_each_cap(tmp_path: Path, cap: str) -> None:
    n = 40
    with Sandbox(fast_config()) as sb, Ledger(tmp_path) as ledger:
        ctx = new_job(ledger, n)
        line = len(provider_for(sb).batch_line(ctx.custom_id(0), body_for(0)))
        per_row = enqueued_tokens(body_for(6))
        kwargs: dict[str, Any] = {
            "requests": {"max_requests": 9},
            "bytes": {"max_bytes": line * 6},
            "tokens": {"max_shard_tokens": per_row * 5},
        }[cap]
        asyncio.run(drive(sb, ledger, ctx, **kwargs))
        assert check_rows(ledger, ctx, sb, n) == {"done": n}
        shards = ledger.shards(ctx.job_id)
        assert sum(s.rows for s in shards) == n and len(shards) > 3
        for shard in shards:
            data = Path(shard.path or "").read_bytes()
            assert len(data) == shard.bytes and data.count(b"\n") == shard.rows
            if cap == "requests":
                assert shard.rows <= 9
            elif cap == "bytes":
                assert shard.bytes <= line * 6
            else:
                assert shard.estimated_tokens <= per_row * 5
        assert sb.stats()["batches_created"] == len(shards)


def test_a_row_no_batch_can_carry_fails_with_a_reason(tmp_path: Path) -> None:
    with Sandbox(fast_config()) as sb, Ledger(tmp_path) as ledger:
        ctx = new_job(ledger, 5)
        engine = BatchEngine(provider_for(sb), ledger, ctx)
        caps = ShardCaps(max_requests=100, max_bytes=10**6, row_token_limit=1)
        assert engine.planner.plan_one(caps) is None
        rows = list(ledger.iter_rows(ctx.job_id))
        assert {r.error_code for r in rows} == {"request_too_large"}
        assert "queue limit" in (rows[0].error_message or "")


# -- the queue -------------------------------------------------------------------------------
def _job_tokens(n: int) -> int:
    return sum(enqueued_tokens(body_for(i)) for i in range(n))


def test_the_scheduler_never_exceeds_a_known_limit(tmp_path: Path) -> None:
    n = 300
    limit = _job_tokens(n) // 6
    cfg = fast_config(enqueued_token_limit={MODEL: limit}, batch_rows_per_second=2000.0)
    with Sandbox(cfg) as sb, Ledger(tmp_path) as ledger:
        ctx = new_job(ledger, n)
        asyncio.run(drive(sb, ledger, ctx, token_limit=limit))
        stats = sb.stats()
        assert check_rows(ledger, ctx, sb, n) == {"done": n}
        assert stats["peak_enqueued_tokens"][MODEL] <= limit
        assert "failed" not in stats["batches_by_final_state"]
        assert len(ledger.shards(ctx.job_id)) >= 6
        # Every row was asked exactly once.
        assert all(r.attempts == 1 for r in ledger.iter_rows(ctx.job_id))


def test_an_unknown_limit_is_learned_and_the_job_still_ends(tmp_path: Path) -> None:
    n = 240
    limit = _job_tokens(n) // 4
    cfg = fast_config(enqueued_token_limit={MODEL: limit})
    messages: list[str] = []
    with Sandbox(cfg) as sb, Ledger(tmp_path) as ledger:
        ctx = new_job(ledger, n)
        ctx.on_message = messages.append
        asyncio.run(drive(sb, ledger, ctx))
        assert check_rows(ledger, ctx, sb, n) == {"done": n}
        learned = ledger.queue_limit("sandbox", MODEL)
        assert learned is not None and learned.token_limit == limit
        assert learned.source == "learned"
        stats = sb.stats()
        # One refusal teaches the limit; after it, nothing is refused again.
        assert stats["batches_by_final_state"].get("failed") == 1
        assert stats["peak_enqueued_tokens"][MODEL] <= limit
        assert any("queue" in m and "full" in m for m in messages)
        # The refused rows were not counted as attempts.
        assert max(r.attempts for r in ledger.iter_rows(ctx.job_id)) == 1
        # A second job in the same ledger knows the limit from the start: no refusal.
        ctx2 = new_job(ledger, n, name="second")
        asyncio.run(drive(sb, ledger, ctx2))
        assert sb.stats()["batches_by_final_state"].get("failed") == 1


def test_other_jobs_batches_count_against_the_limit(tmp_path: Path) -> None:
    n = 120
    limit = _job_tokens(n) // 3
    cfg = fast_config(enqueued_token_limit={MODEL: limit}, batch_rows_per_second=400.0)
    with Sandbox(cfg) as sb, Ledger(tmp_path) as ledger:
        a, b = new_job(ledger, n, "a"), new_job(ledger, n, "b")

        async def both() -> None:
            await asyncio.gather(
                drive(sb, ledger, a, token_limit=limit), drive(sb, ledger, b, token_limit=limit)
            )

        asyncio.run(both())
        check_rows(ledger, a, sb, n)
        check_rows(ledger, b, sb, n)
        stats = sb.stats()
        assert stats["peak_enqueued_tokens"][MODEL] <= limit
        assert "failed" not in stats["batches_by_final_state"]


# -- recovery --------------------------------------------------------------------------------
def test_an_expired_batch_keeps_its_partial_results(tmp_path: Path) -> None:
    n = 60
    with Sandbox(fast_config()) as sb, Ledger(tmp_path) as ledger:
        sb.set_faults(FaultConfig(batch_expire_nth=[1]))
        ctx = new_job(ledger, n)
        asyncio.run(drive(sb, ledger, ctx))
        assert check_rows(ledger, ctx, sb, n) == {"done": n}
        assert sb.stats()["batches_by_final_state"].get("expired") == 1
        first, *rest = ledger.shards(ctx.job_id)
        assert first.status == "expired" and rest
        # Only the rows the expired batch did not run went again.
        assert sum(s.rows for s in rest) == n - n // 2
        assert sum(count for count in sb.batch_lines().values()) == n


def test_rows_missing_from_the_output_are_asked_again(tmp_path: Path) -> None:
    n = 50
    with Sandbox(fast_config()) as sb, Ledger(tmp_path) as ledger:
        sb.set_faults(FaultConfig(output_drop_rate=0.2))
        ctx = new_job(ledger, n)

        async def drop_once(engine: BatchEngine) -> None:
            # The sandbox drops at least one line of every batch: drop from the first only.
            await engine.run(wait=False)
            while await engine.poll_once():
                await asyncio.sleep(0.05)
            assert ledger.count_rows(ctx.job_id, RowState.PENDING) == 10
            sb.set_faults(FaultConfig())
            await engine.run(wait=True, timeout=30)

        asyncio.run(drive(sb, ledger, ctx, during=drop_once))
        assert check_rows(ledger, ctx, sb, n) == {"done": n}
        assert sb.stats()["faults"]["output_missing_lines"] == 10
        assert sb.stats()["batch_custom_ids_billed_twice"] == 10
        assert len(ledger.shards(ctx.job_id)) >= 2


def test_stragglers_go_to_the_realtime_engine(tmp_path: Path) -> None:
    n = 50
    handed: list[int] = []
    with Sandbox(fast_config()) as sb, Ledger(tmp_path) as ledger:
        sb.set_faults(FaultConfig(output_drop_rate=0.1))
        ctx = new_job(ledger, n)
        provider = provider_for(sb)

        async def realtime(count: int) -> None:
            handed.append(count)
            await RealtimeEngine(provider, ledger, ctx, concurrency=4).run()

        asyncio.run(drive(sb, ledger, ctx, on_stragglers=realtime))
        assert check_rows(ledger, ctx, sb, n) == {"done": n}
        assert handed == [5]
        vias = [r.via for r in ledger.iter_rows(ctx.job_id)]
        assert vias.count("realtime") == 5 and len(ledger.shards(ctx.job_id)) == 1


def test_a_batch_that_fails_validation_is_reported_and_retried(tmp_path: Path) -> None:
    n = 30
    messages: list[str] = []
    with Sandbox(fast_config()) as sb, Ledger(tmp_path) as ledger:
        sb.set_faults(FaultConfig(batch_fail_nth=[1]))
        ctx = new_job(ledger, n)
        ctx.on_message = messages.append
        asyncio.run(drive(sb, ledger, ctx))
        assert check_rows(ledger, ctx, sb, n) == {"done": n}
        failed = [m for m in messages if "failed validation" in m]
        assert failed and "line 1: invalid_json_line" in failed[0]


def test_a_batch_that_always_fails_validation_fails_its_rows_with_the_reason(
    tmp_path: Path,
) -> None:
    n = 20
    with Sandbox(fast_config()) as sb, Ledger(tmp_path) as ledger:
        sb.set_faults(FaultConfig(batch_fail_rate=1.0))
        ctx = new_job(ledger, n, max_attempts=2)
        asyncio.run(drive(sb, ledger, ctx))
        assert check_rows(ledger, ctx, sb, n) == {"failed": n}
        row = next(ledger.iter_rows(ctx.job_id))
        assert row.error_code == "invalid_json_line"
        assert "line 1: invalid_json_line: This line is not parseable" in (row.error_message or "")
        assert sb.stats()["batches_created"] == 2


# -- durability and cancel -------------------------------------------------------------------
def test_a_batch_created_before_a_crash_is_adopted_not_paid_again(tmp_path: Path) -> None:
    n = 25
    with Sandbox(fast_config()) as sb, Ledger(tmp_path) as ledger:
        ctx = new_job(ledger, n)

        async def crash_after_create(engine: BatchEngine) -> None:
            # What _submit does, up to the moment create returns; then the process "dies".
            caps = ShardCaps(engine.max_requests, engine.max_bytes)
            shard = engine.planner.plan_one(caps)
            assert shard is not None and shard.path
            file_id = await engine.provider.upload_batch_file(Path(shard.path))
            ledger.update_shard(
                ctx.job_id,
                shard.number,
                state=ShardState.UPLOADED,
                input_file_id=file_id,
                submits=1,
                status=CREATING,
            )
            meta = {META_JOB: ctx.job_id, META_SHARD: str(shard.number), META_TRY: "1"}
            await engine.provider.create_batch(file_id, meta)

        asyncio.run(drive(sb, ledger, ctx, during=crash_after_create))
        assert ledger.shards(ctx.job_id)[0].batch_id is None
        messages: list[str] = []
        ctx.on_message = messages.append
        asyncio.run(drive(sb, ledger, ctx))  # the resume
        assert check_rows(ledger, ctx, sb, n) == {"done": n}
        assert sb.stats()["batches_created"] == 1
        assert sb.stats()["batch_custom_ids_billed_twice"] == 0
        assert any("adopted" in m for m in messages)


def test_cancel_keeps_what_finished(tmp_path: Path) -> None:
    n = 200
    with Sandbox(fast_config(batch_rows_per_second=100.0)) as sb, Ledger(tmp_path) as ledger:
        ctx = new_job(ledger, n)

        async def cancel_midway(engine: BatchEngine) -> None:
            await engine.run(wait=False)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                await engine.poll_once()
                shard = ledger.shards(ctx.job_id)[0]
                if (shard.count_completed or 0) >= 20:
                    break
                await asyncio.sleep(0.05)
            await engine.cancel()
            while await engine.poll_once():
                await asyncio.sleep(0.05)

        asyncio.run(drive(sb, ledger, ctx, during=cancel_midway, max_requests=150))
        ledger.cancel_rows(ctx.job_id)  # what `rowprompt cancel` does next
        states = check_rows(ledger, ctx, sb, n)
        assert 20 <= states["done"] < n
        assert states["done"] == len(sb.batch_lines())
        # Both shards were in the queue: both batches were cancelled and collected.
        assert sb.stats()["batches_by_final_state"] == {"cancelled": 2}
        assert [s.state for s in ledger.shards(ctx.job_id)] == ["collected", "collected"]
        cancelled = [r for r in ledger.iter_rows(ctx.job_id) if r.state == RowState.FAILED]
        assert {r.error_code for r in cancelled} == {"cancelled"}


# -- polling and status ----------------------------------------------------------------------
def test_polling_follows_progress() -> None:
    polls = PollSchedule(1.0, 600.0)
    polls.start("b", now=0.0)
    # A fast batch: half done in 2 s, polled again within a second or two.
    assert polls.observe("b", "in_progress", 500, 1000, now=2.0) <= 2.0
    assert polls.observe("b", "finalizing", 1000, 1000, now=3.0) == 1.0
    # A 24-hour batch whose counts move slowly costs a few hundred polls, not thousands.
    polls.start("slow", now=0.0)
    t, count, done = 0.0, 0, 0
    while t < 86_400:
        done = min(50_000, int(t / 86_400 * 50_000))
        t += polls.observe("slow", "in_progress", done, 50_000, now=t)
        count += 1
    assert count < 400
    # No news at all: back off to the cap.
    polls.start("stuck", now=0.0)
    gaps = [polls.observe("stuck", "validating", 0, 0, now=float(i)) for i in range(15)]
    assert gaps[-1] == 600.0


def test_token_limit_message_parsing() -> None:
    message = (
        "Enqueued token limit reached for gpt-4o-mini in organization org-x. Limit: 2,000,000"
        " enqueued tokens. Please try again once some in_progress batches have been completed."
    )
    assert parse_token_limit(message) == 2_000_000
    assert parse_token_limit("Limit: 90000 enqueued tokens.") == 90_000
    assert parse_token_limit("queue full") is None


def test_status_line_shows_state_counts_age_and_tokens(tmp_path: Path) -> None:
    with Sandbox(fast_config()) as sb, Ledger(tmp_path) as ledger:
        ctx = new_job(ledger, 10)
        asyncio.run(drive(sb, ledger, ctx))
        line = shard_summary(ledger.shards(ctx.job_id)[0])
        assert "completed, 10/10 done, 0 failed" in line and "tokens" in line and "took" in line
