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
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rowprompt import costs
from rowprompt.config import load_settings
from rowprompt.engine.batch import CREATING, BatchEngine
from rowprompt.engine.context import RunContext, admission_parts
from rowprompt.engine.pacing import EngineStats
from rowprompt.engine.planner import (
    Plan,
    PlannerSettings,
    batch_history,
    choose_mode,
    fallback_wait_s,
    human_duration,
    must_fall_back,
    realtime_rows_per_min,
)
from rowprompt.engine.ratelimit import Limiter
from rowprompt.engine.realtime import RealtimeEngine
from rowprompt.engine.scheduler import OPENAI_TIER1_TOKEN_LIMITS
from rowprompt.errors import BatchUnsupported, ConfigError, Permanent, ProviderError
from rowprompt.jobs import RowState, ShardState
from rowprompt.ledger import JobRecord, ShardRecord
from rowprompt.providers import OpenedProvider

if TYPE_CHECKING:
    from rowprompt.runner import Runner

DEFAULT_CONCURRENCY = 32
# Rows whose prompts are counted to size the plan: enough for a stable mean, cheap on 1M rows.
PLAN_SAMPLE_ROWS = 200
# How long cancelled batches may take to hand their rows back before the user is told that the
# deadline fallback is waiting for them (it keeps waiting: the rows are still the batches').
CANCEL_COLLECT_S = 120.0
# A deadline watch never sleeps less than this between polls.
MIN_WATCH_SLEEP_S = 0.2


@dataclass(frozen=True)
class Sizing:
    """A job's tokens per row (sampled) and the real-time speed the planner counts on."""

    prompt_per_row: float
    cap_per_row: float
    rows_per_min: float
    limits_known: bool


def known_limits(runner: Runner) -> tuple[float | None, float | None]:
    """(rpm, tpm): the user's flags, else what the real-time engine learned from the provider."""
    learned_rpm, learned_tpm = runner.learned_limits
    return runner.options.rpm or learned_rpm, runner.options.tpm or learned_tpm


def job_sizing(runner: Runner, settings: PlannerSettings | None = None) -> Sizing:
    """Tokens per row from a sample of the rows, and the real-time rows a minute they allow."""
    p = runner.prepared
    sample = min(len(p.table), PLAN_SAMPLE_ROWS)
    prompt = cap = 0.0
    for position in range(sample):
        part_prompt, part_cap = admission_parts(p.build_body(position))
        prompt += part_prompt / sample
        cap += part_cap / sample
    return sizing_at_limits(runner, prompt, cap, settings)


def sizing_at_limits(
    runner: Runner, prompt: float, cap: float, settings: PlannerSettings | None = None
) -> Sizing:
    """The same token counts at the limits known now (they may have been learned since)."""
    settings = settings or load_settings().planner
    rpm, tpm = known_limits(runner)
    speed = realtime_rows_per_min(rpm, tpm, prompt + cap, settings)
    return Sizing(prompt, cap, speed, bool(rpm or (tpm and prompt + cap > 0)))


def plan_job(runner: Runner, rows_left: int) -> Plan:
    """The plan for the rows left, from a sampled estimate, the deadline, budget and history."""
    p, options = runner.prepared, runner.options
    settings = load_settings().planner
    size = job_sizing(runner, settings)
    provider = "openai" if p.spec.provider == "sandbox" else p.spec.provider
    prompt_total = round(size.prompt_per_row * rows_left)
    cap_total = round(size.cap_per_row * rows_left)
    cost_rt = costs.cost_usd(p.spec.model, prompt_total, cap_total, provider=provider)
    cost_b = costs.cost_usd(p.spec.model, prompt_total, cap_total, batch=True, provider=provider)
    return choose_mode(
        requested=options.mode,
        rows=rows_left,
        realtime_minutes=rows_left / size.rows_per_min,
        cost_realtime=cost_rt,
        cost_batch=cost_b,
        deadline=runner.deadline_at,
        budget=options.budget,
        history=batch_history(runner.ledger, p.spec.provider, p.spec.model),
        preview=options.preview,
        settings=settings,
        limits_known=size.limits_known,
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
            # The deadline fallback sizes itself by these when the user gave no limit.
            runner.learned_limits = limits
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
    for note in runner.deadline_notes:
        ctx.say(note)
    if plan.warning:
        ctx.say(f"warning: {plan.warning}")
    if options.detach and runner.deadline_at is not None and plan.mode != "realtime":
        ctx.say(
            f"note: detached, nothing watches the deadline once this process exits;"
            f" `rowprompt collect {job.id} --wait` or `rowprompt resume {job.id}` does"
        )
    if plan.mode == "realtime":
        await run_realtime(runner, opened, ctx)
        if runner.stopped:
            return
        if ledger.shards(job.id, active_only=True) and not options.detach:
            await follow_batches(runner, batch, opened, ctx)
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
    await follow_batches(runner, batch, opened, ctx, warned=plan.warning is not None)


async def follow_batches(
    runner: Runner,
    batch: BatchEngine,
    opened: OpenedProvider,
    ctx: RunContext,
    *,
    warned: bool = False,
) -> None:
    """Submit and poll until every row has ended; with a deadline, move to real time in time
    what the batches cannot finish. ``warned``: the deadline's warning was said already."""
    if runner.deadline_at is None:
        await batch.run(wait=True)
        return
    await DeadlineWatch(runner, batch, opened, ctx, warned=warned).run()


class DeadlineWatch:
    """Batches under a deadline, with the real-time engine taking over what they cannot finish.

    Both engines work on the job at once: a row is owned by one of them at a time through the
    ledger (batch rows are ``in_flight`` with their shard, real-time rows are claimed one by
    one, and each engine only takes ``pending`` rows). At every poll the planner says how many
    rows must move (:func:`must_fall_back`): none while real time could still take them all
    later; all of them at the last safe moment (the batches are cancelled, their finished rows
    kept, the rest come back and go real time); or, when neither route can make it, only the
    rows real time can finish in time, the rest left in their batches.
    """

    def __init__(
        self,
        runner: Runner,
        batch: BatchEngine,
        opened: OpenedProvider,
        ctx: RunContext,
        *,
        warned: bool = False,
    ) -> None:
        assert runner.deadline_at is not None
        self.runner, self.batch, self.opened, self.ctx = runner, batch, opened, ctx
        self.ledger, self.job_id = runner.ledger, ctx.job_id
        self.deadline = runner.deadline_at
        spec = runner.prepared.spec
        self.settings = load_settings().planner
        self.history = batch_history(self.ledger, spec.provider, spec.model)
        self.size = job_sizing(runner, self.settings)
        self.realtime: asyncio.Task[None] | None = None
        self.all_moved = False
        self.cancelled_at: float | None = None
        self.told_waiting = False
        self.warned = warned
        self.moves = 0

    def speed(self) -> float:
        """Real-time rows a minute at the limits known now."""
        size = sizing_at_limits(
            self.runner, self.size.prompt_per_row, self.size.cap_per_row, self.settings
        )
        return size.rows_per_min

    async def run(self) -> None:
        """Until every row has ended (or a Ctrl-C stopped the real-time engine)."""
        interval = self.batch.poll_interval
        try:
            while True:
                if self.realtime is not None and self.realtime.done():
                    task, self.realtime = self.realtime, None
                    task.result()  # a fatal error of the engine ends the job here
                    if self.runner.stopped:
                        return
                if self.realtime is None:
                    await self.decide()
                remaining = await self.batch.poll_once()
                pending = self.ledger.count_rows(self.job_id, RowState.PENDING)
                if remaining == 0 and pending == 0 and self.realtime is None:
                    return
                self.ledger.heartbeat(self.job_id)
                if self.all_moved:
                    if pending and self.realtime is None:
                        continue  # rows came back from cancelled batches: real time, now
                    if remaining:
                        self.tell_waiting()
                    # Cancelled batches hand their rows back in seconds: poll them closely.
                    interval = self.batch.poll_interval
                await self.sleep(interval)
                interval = min(interval * 1.5, self.batch.max_poll_interval)
        finally:
            if self.realtime is not None and not self.realtime.done():
                self.realtime.cancel()
                await asyncio.gather(self.realtime, return_exceptions=True)

    async def decide(self) -> None:
        """Move rows to real time as the deadline requires; else feed the batches."""
        ledger, job_id = self.ledger, self.job_id
        pending = ledger.count_rows(job_id, RowState.PENDING)
        if self.all_moved:
            if pending:
                self.start_realtime(None)
            return
        rows_left = pending + ledger.count_rows(job_id, RowState.IN_FLIGHT)
        active = ledger.shards(job_id, active_only=True)
        now = time.time()
        submitted = [s.submitted_at for s in active if s.submitted_at]
        move = must_fall_back(
            now=now,
            deadline=self.deadline,
            rows_left=rows_left,
            rows_per_min=self.speed(),
            batch_started=min(submitted) if submitted else None,
            history=self.history,
            settings=self.settings,
        )
        if move == 0:
            await self.batch.submit_pending()
            return
        if move >= rows_left:
            self.all_moved = True
            self.ctx.say(
                f"deadline: {rows_left:,} rows cannot wait for the batches any longer;"
                " real time takes them"
            )
            await self.batch.cancel()
            self.cancelled_at = time.monotonic()
            if pending:
                self.start_realtime(None)
            return
        await self.move_some(move, pending, active)

    async def move_some(self, move: int, pending: int, active: list[ShardRecord]) -> None:
        """Neither route can finish every row in time: real time takes ``move`` rows (pending
        ones first, then those of whole batches cancelled for them), batches keep the rest."""
        # Rows of batches already being cancelled come back pending: they count as moved.
        coming = sum(s.rows for s in active if s.status == "cancelling")
        freed = 0
        if pending + coming < move:
            freed = await self.cancel_some(move - pending - coming, active)
        if freed:
            self.ctx.say(f"deadline: batches holding {freed:,} rows cancelled for real time")
        takes = min(move, pending)
        if not takes:
            return
        spare = pending - move
        if spare > 0:
            await self.batch.submit_pending(max_rows=spare)
        if self.moves == 0 and not self.warned:
            self.ctx.say(
                f"deadline: the batches are late (planned with {human_duration(self.turnaround())})"
                f" and real time cannot finish every row: it takes the {takes:,} rows it can"
                " finish by then, the rest stay in batches"
            )
        else:
            more = " more" if self.moves else ""
            self.ctx.say(
                f"deadline: real time takes{more} {takes:,} rows, what it can finish by then;"
                " the rest stay in batches"
            )
        self.moves += 1
        self.start_realtime(takes)

    def turnaround(self) -> float:
        """The batch turnaround the planner counts on."""
        return self.history.predicted_s(self.settings)

    async def cancel_some(self, wanted: int, active: list[ShardRecord]) -> int:
        """Cancel the newest batches whose rows real time can take; returns their rows.

        A batch is only cancelled when real time takes at least half of its rows: cancelling a
        large batch for a few rows would send the rest back to the end of the queue.
        """
        freed = 0
        for shard in sorted(active, key=lambda s: s.number, reverse=True):
            if freed >= wanted:
                break
            if shard.status in (CREATING, "cancelling") or shard.rows > 2 * (wanted - freed):
                continue
            if shard.batch_id is None:
                freed += self.ledger.unassign_shard(
                    self.job_id, shard.number, error="moved to real time for the deadline"
                )
                continue
            if shard.state != ShardState.SUBMITTED:
                continue
            try:
                info = await self.batch.provider.cancel_batch(shard.batch_id)
            except (Permanent, BatchUnsupported, ConfigError, ProviderError):
                continue
            self.ledger.update_shard(self.job_id, shard.number, status=info.status)
            freed += shard.rows
        return freed

    def start_realtime(self, max_rows: int | None) -> None:
        """Run the real-time engine beside the batches (at most ``max_rows`` rows)."""
        self.realtime = asyncio.create_task(
            run_realtime(self.runner, self.opened, self.ctx, max_rows=max_rows)
        )

    def tell_waiting(self) -> None:
        """Say once that cancelled batches are slow to hand their rows back."""
        assert self.cancelled_at is not None
        if self.told_waiting or time.monotonic() - self.cancelled_at < CANCEL_COLLECT_S:
            return
        self.told_waiting = True
        active = self.ledger.shards(self.job_id, active_only=True)
        held = sum(len(self.ledger.shard_rows(self.job_id, s.number)) for s in active)
        names = ", ".join(s.batch_id or f"shard {s.number}" for s in active[:3])
        self.ctx.say(
            f"deadline: {held:,} rows are still held by batches being cancelled ({names});"
            " waiting for them to come back, then real time takes them"
        )

    async def sleep(self, interval: float) -> None:
        """Until the next poll, the last safe moment for the fallback, or the end of the
        real-time engine's share, whichever comes first."""
        wait = interval
        if not self.all_moved:
            now = time.time()
            rows_left = self.ledger.count_rows(
                self.job_id, RowState.PENDING
            ) + self.ledger.count_rows(self.job_id, RowState.IN_FLIGHT)
            until = fallback_wait_s(
                now=now,
                deadline=self.deadline,
                rows_left=rows_left,
                rows_per_min=self.speed(),
                settings=self.settings,
            )
            if until > 0:
                wait = min(wait, until)
            # A batch later than the planner expected is noticed when it becomes late.
            submitted = [
                sh.submitted_at
                for sh in self.ledger.shards(self.job_id, active_only=True)
                if sh.submitted_at
            ]
            late_in = min(submitted, default=now) + self.turnaround() - now
            if late_in > 0:
                wait = min(wait, late_in)
        wait = max(wait, MIN_WATCH_SLEEP_S)
        if self.realtime is not None:
            await asyncio.wait({self.realtime}, timeout=wait)
        else:
            await asyncio.sleep(wait)
