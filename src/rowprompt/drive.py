"""Driving one job: the plan, then the engines, the preview, the deadline fallback.

The planner decides; this module carries the decision out with the two engines sharing the
job through the ledger (a row is owned by exactly one engine at a time: a batch shard's rows
are ``in_flight`` with their shard, real-time rows are claimed one by one).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from rowprompt import costs
from rowprompt.config import load_settings
from rowprompt.engine.batch import BatchEngine
from rowprompt.engine.context import RunContext, admission_parts
from rowprompt.engine.pacing import EngineStats
from rowprompt.engine.planner import (
    Plan,
    batch_history,
    choose_mode,
    must_fall_back,
    realtime_rows_per_min,
)
from rowprompt.engine.ratelimit import Limiter
from rowprompt.engine.realtime import RealtimeEngine
from rowprompt.engine.scheduler import OPENAI_TIER1_TOKEN_LIMITS
from rowprompt.jobs import RowState
from rowprompt.ledger import JobRecord
from rowprompt.providers import OpenedProvider

if TYPE_CHECKING:
    from rowprompt.runner import Runner

DEFAULT_CONCURRENCY = 32
# Rows whose prompts are counted to size the plan: enough for a stable mean, cheap on 1M rows.
PLAN_SAMPLE_ROWS = 200
# How long a deadline fallback waits for cancelled batches to hand back their finished rows.
CANCEL_COLLECT_S = 120.0


def plan_job(runner: Runner, rows_left: int) -> Plan:
    """The plan for the rows left, from a sampled estimate, the deadline, budget and history."""
    p, options = runner.prepared, runner.options
    sample = min(len(p.table), PLAN_SAMPLE_ROWS)
    per_row_prompt = per_row_cap = 0.0
    if sample:
        for position in range(sample):
            prompt, cap = admission_parts(p.build_body(position))
            per_row_prompt += prompt / sample
            per_row_cap += cap / sample
    provider = "openai" if p.spec.provider == "sandbox" else p.spec.provider
    prompt_total = round(per_row_prompt * rows_left)
    cap_total = round(per_row_cap * rows_left)
    cost_rt = costs.cost_usd(p.spec.model, prompt_total, cap_total, provider=provider)
    cost_b = costs.cost_usd(p.spec.model, prompt_total, cap_total, batch=True, provider=provider)
    speed = realtime_rows_per_min(options.rpm, options.tpm, per_row_prompt + per_row_cap)
    return choose_mode(
        requested=options.mode,
        rows=rows_left,
        realtime_minutes=rows_left / speed,
        cost_realtime=cost_rt,
        cost_batch=cost_b,
        deadline=runner.deadline_at,
        budget=options.budget,
        history=batch_history(runner.ledger, p.spec.provider, p.spec.model),
        preview=options.preview,
    )


def realtime_engine(runner: Runner, opened: OpenedProvider, ctx: RunContext) -> RealtimeEngine:
    """A real-time engine at the user's limits and concurrency, stoppable by Ctrl-C."""
    face = "anthropic" if runner.prepared.spec.provider == "anthropic" else "openai"
    return RealtimeEngine(
        opened.provider,
        runner.ledger,
        ctx,
        limiter=Limiter(runner.options.rpm, runner.options.tpm, face=face),
        concurrency=runner.options.concurrency or DEFAULT_CONCURRENCY,
        on_stats=_stats_recorder(runner, ctx.job_id),
    )


def _stats_recorder(runner: Runner, job_id: str) -> Callable[[EngineStats], None]:
    """Pass engine figures on, and log each change of the limit in force for the report."""
    last: list[tuple[float | None, float | None]] = []
    forward = runner.options.on_stats

    def record(stats: EngineStats) -> None:
        limits = (stats.rpm_limit, stats.tpm_limit)
        if (not last or last[0] != limits) and (limits[0] or limits[1]):
            runner.ledger.record_rate_limit(job_id, limits[0], limits[1], stats.limit_source)
            last[:] = [limits]
        if forward is not None:
            forward(stats)

    return record


async def run_realtime(
    runner: Runner, opened: OpenedProvider, ctx: RunContext, max_rows: int | None = None
) -> None:
    """Run the real-time engine; the first Ctrl-C stops it gracefully, a second at once."""
    engine = realtime_engine(runner, opened, ctx)
    loop = asyncio.get_running_loop()
    presses = 0

    def on_interrupt() -> None:
        nonlocal presses
        presses += 1
        engine.request_stop(immediate=presses > 1)

    installed = False
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, on_interrupt)
            installed = True
    try:
        await engine.run(max_rows=max_rows)
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGINT)
    if engine.stopping:
        runner.stopped = True


def batch_engine(runner: Runner, opened: OpenedProvider, ctx: RunContext) -> BatchEngine:
    """A batch engine with the job's queue limit, polling and straggler fallback."""
    options, spec = runner.options, runner.prepared.spec
    if options.poll_interval is not None:
        floor = cap = options.poll_interval
    elif opened.in_process:
        floor, cap = 0.2, 2.0
    else:
        floor, cap = 1.0, 600.0
    real_openai = spec.provider == "openai" and not spec.base_url
    defaults = dict(OPENAI_TIER1_TOKEN_LIMITS) if real_openai else {}
    defaults.update(load_settings().batch_token_limits)
    fallback = options.fallback or ("realtime" if options.mode == "hybrid" else "none")

    async def stragglers(count: int) -> None:
        await run_realtime(runner, opened, ctx)

    return BatchEngine(
        opened.provider,
        runner.ledger,
        ctx,
        poll_interval=floor,
        max_poll_interval=cap,
        token_limit=options.batch_token_limit,
        default_token_limits=defaults or None,
        on_stragglers=stragglers if fallback == "realtime" else None,
    )


async def drive_job(runner: Runner, job: JobRecord, opened: OpenedProvider) -> None:
    """Run the job to its end (or, detached, until its batches are submitted)."""
    ctx = runner.context()
    ledger, options = runner.ledger, runner.options
    batch = batch_engine(runner, opened, ctx)
    # Batches a previous run submitted are followed to the end whatever the mode now.
    if ledger.shards(job.id, active_only=True):
        await batch.resume_unsubmitted()
    rows_left = ledger.count_rows(job.id, RowState.PENDING)
    plan = plan_job(runner, rows_left)
    ctx.say(f"job {job.id}: {job.total_rows:,} rows, {rows_left:,} to send; {plan.reason}")
    if plan.mode == "realtime" and runner.deadline_at is not None:
        _warn_if_too_slow(runner, rows_left, ctx)
    if plan.mode == "realtime":
        await run_realtime(runner, opened, ctx)
        if runner.stopped:
            return
        if ledger.shards(job.id, active_only=True) and not options.detach:
            await _batch_phase(runner, batch, opened, ctx)
        return
    if plan.mode == "hybrid" and plan.preview_rows:
        await run_realtime(runner, opened, ctx, max_rows=plan.preview_rows)
        if runner.stopped:
            return
        if runner.prepared.output is not None and options.write_output:
            runner.write_output()
            ctx.say(
                f"preview: {plan.preview_rows} rows answered, written to {runner.prepared.output}"
            )
    if options.detach:
        await batch.run(wait=False)
        return
    await _batch_phase(runner, batch, opened, ctx)


def _warn_if_too_slow(runner: Runner, rows: int, ctx: RunContext) -> None:
    assert runner.deadline_at is not None
    minutes_left = (runner.deadline_at - time.time()) / 60
    needed = rows / max(minutes_left, 1e-9)
    speed = realtime_rows_per_min(runner.options.rpm, runner.options.tpm, 0)
    if runner.options.rpm and needed > speed:
        ctx.say(
            f"warning: the deadline needs {needed:,.0f} rows/min, the rate limit allows"
            f" {speed:,.0f}: the job will finish late"
        )


async def _batch_phase(
    runner: Runner, batch: BatchEngine, opened: OpenedProvider, ctx: RunContext
) -> None:
    """Submit and poll until done; with a deadline, hand the rest to real time in time."""
    ledger, job_id = runner.ledger, ctx.job_id
    deadline = runner.deadline_at
    if deadline is None:
        await batch.run(wait=True)
        return
    history = batch_history(ledger, runner.prepared.spec.provider, runner.prepared.spec.model)
    speed = realtime_rows_per_min(runner.options.rpm, runner.options.tpm, 0)
    interval = batch.poll_interval
    while True:
        await batch.submit_pending()
        remaining = await batch.poll_once()
        pending = ledger.count_rows(job_id, RowState.PENDING)
        if remaining == 0 and pending == 0:
            return
        rows_left = ledger.count_rows(job_id, RowState.IN_FLIGHT) + pending
        started = (
            min((s.submitted_at or time.time()) for s in ledger.shards(job_id, active_only=True))
            if remaining
            else None
        )
        if must_fall_back(
            now=time.time(),
            deadline=deadline,
            rows_left=rows_left,
            rows_per_min=speed,
            batch_started=started,
            history=history,
        ):
            ctx.say(
                f"deadline: {rows_left:,} rows cannot wait for the batches; real time takes them"
            )
            await _cancel_and_collect(batch, ledger, job_id)
            await run_realtime(runner, opened, ctx)
            return
        ledger.heartbeat(job_id)
        await asyncio.sleep(interval)
        interval = min(interval * 1.5, batch.max_poll_interval)


async def _cancel_and_collect(batch: BatchEngine, ledger: object, job_id: str) -> None:
    """Cancel the job's batches, keep what they finished, and free their other rows."""
    await batch.cancel()
    stop = time.monotonic() + CANCEL_COLLECT_S
    while await batch.poll_once() and time.monotonic() < stop:
        await asyncio.sleep(0.5)
