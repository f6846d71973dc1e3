"""The real-time engine: rows sent under the limiter, every outcome in the ledger.

Each claimed row becomes one task that reserves its budget, sends, and retries by error
class (see ``docs/realtime.md``). How many rows are live at once follows Little's law from
the observed latency once a limit is known, and a TCP-like slow start while none is. A stop
(Ctrl-C) lets requests already on the wire finish for a short grace, and sends every other
claimed row back to ``pending``: the job resumes with nothing lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from rowprompt.engine.budget import OVER_BUDGET
from rowprompt.engine.context import RunContext, admission_parts
from rowprompt.engine.pacing import EngineStats, RateMeter, Window
from rowprompt.engine.ratelimit import FACE_ANTHROPIC, FACE_OPENAI, Limiter, Ticket
from rowprompt.errors import (
    Permanent,
    ProviderError,
    RateLimited,
    RowpromptError,
    Transient,
)
from rowprompt.jobs import VIA_CACHE, VIA_REALTIME, Completion, RowOutcome, RowState, request_hash
from rowprompt.ledger import Ledger
from rowprompt.providers.base import CompletionResult, LimitsObservation, Provider
from rowprompt.vectors import is_embeddings_body

__all__ = ["EngineStats", "RealtimeEngine", "backoff_delay", "limiter_parts"]

# 429s are the provider pacing us, not the row failing: they get an allowance of their own.
RATE_LIMIT_RETRIES = 20
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 8.0
# How long requests already sent may finish after a stop before they are abandoned.
STOP_GRACE_S = 10.0
CLAIM_CHUNK = 64
PROGRESS_SECONDS = 0.5


@dataclass(frozen=True)
class Sent:
    """A request answered: what :meth:`RealtimeEngine.ask` hands back."""

    result: CompletionResult
    ticket: Ticket
    attempt: int
    """The attempt number the answer came on."""
    sent: float
    """``time.monotonic()`` when it left."""
    started: float
    """``time.time()`` when it left."""


def _limits_of(exc: RateLimited) -> LimitsObservation | None:
    # Providers may attach the 429's rate-limit headers; they correct the budgets too.
    seen = getattr(exc, "limits", None)
    return seen if isinstance(seen, LimitsObservation) else None


# Output tokens a provider charges at admission for a request that sets no maximum: OpenAI
# counts the prompt and max_tokens × n, so nothing without one (the sandbox too, ``max_tokens
# or 0``), and its headers correct us if it counts more; Anthropic requires a maximum, and
# rowprompt's provider sends 4096 (``providers.anthropic.DEFAULT_MAX_TOKENS``), then refunds.
UNCAPPED_OUTPUT = {FACE_OPENAI: 0, FACE_ANTHROPIC: 4096}


def limiter_parts(body: dict[str, Any], face: str) -> tuple[int, int]:
    """(prompt, output) tokens one request reserves in the limiter, as ``face`` counts them.

    :func:`~rowprompt.engine.context.admission_parts`, except for a request without
    ``max_tokens``/``max_completion_tokens``: there the provider's own charge, not the
    spending estimate (which stays for ``--budget``).
    """
    prompt, output = admission_parts(body)
    capped = body.get("max_completion_tokens") or body.get("max_tokens")
    if not capped and not is_embeddings_body(body):
        output = UNCAPPED_OUTPUT.get(face, 0) * int(body.get("n") or 1)
    return prompt, output


def backoff_delay(retries: int, retry_after: float | None = None) -> float:
    """The openai SDK's rule: the server's advice if sane, else capped exponential with jitter."""
    if retry_after is not None and 0 < retry_after <= 120:
        return retry_after
    exponent = max(0, retries - 1)
    return min(BACKOFF_BASE_S * 2**exponent, BACKOFF_CAP_S) * (1 - 0.25 * random.random())


class _Writer:
    """Buffers outcomes and attempts, committed together once per event-loop turn.

    Every answer that arrived in one turn shares a commit (WAL, synchronous=NORMAL: no
    fsync), so a killed process re-asks only the requests that were in flight.
    """

    def __init__(self, ledger: Ledger, ctx: RunContext) -> None:
        self.ledger = ledger
        self.ctx = ctx
        self.outcomes: list[RowOutcome] = []
        self.attempts: list[dict[str, Any]] = []
        self.cache: list[tuple[str, Completion]] = []
        self._scheduled = False

    def add(self, outcome: RowOutcome, cache_item: tuple[str, Completion] | None = None) -> None:
        """One row ended; it is committed at the end of this loop turn."""
        self.outcomes.append(outcome)
        if cache_item is not None:
            self.cache.append(cache_item)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Commit what is buffered."""
        self._scheduled = False
        if self.outcomes or self.attempts:
            with self.ledger.transaction():
                if self.cache:
                    self.ledger.cache_many(self.cache)
                self.ledger.record_outcomes(self.ctx.job_id, self.outcomes)
                self.ledger.record_attempts(self.ctx.job_id, self.attempts)
        self.outcomes, self.attempts, self.cache = [], [], []


class _Stop(Exception):
    """The row's task ends without an outcome: the row goes back to pending."""


class RealtimeEngine:
    """Sends rows one request each, under the limiter, at most ``concurrency`` at a time."""

    def __init__(
        self,
        provider: Provider,
        ledger: Ledger,
        ctx: RunContext,
        *,
        limiter: Limiter | None = None,
        concurrency: int = 16,
        on_stats: Callable[[EngineStats], None] | None = None,
        stop_grace_s: float = STOP_GRACE_S,
    ) -> None:
        self.provider = provider
        self.ledger = ledger
        self.ctx = ctx
        self.limiter = limiter or Limiter()
        self.concurrency = max(1, concurrency)
        self.on_stats = on_stats
        self.stop_grace_s = stop_grace_s
        self.window = Window(self.concurrency, self.limiter)
        self.meter = RateMeter()
        self._writer = _Writer(ledger, ctx)
        self._fatal: RowpromptError | None = None
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._sending: set[asyncio.Task[None]] = set()
        # Rows claimed in this run whose request has not yet gone out: a stop gives them back
        # without counting the claim as an attempt.
        self._unsent: set[str] = set()
        self._wake = asyncio.Event()
        # Tasks holding one of the window's slots: waiting for budget, or on the wire.
        self._out: set[asyncio.Task[None]] = set()
        self._slot = asyncio.Event()  # set when a slot frees
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = time.monotonic()
        self._rows_todo = 0
        self.counts = {"ok": 0, "failed": 0, "requests": 0, "retries": 0, "429": 0, "errors": 0}

    # -- control ----------------------------------------------------------------------------
    def request_stop(self, *, immediate: bool = False) -> None:
        """Stop dispatching; requests on the wire get a grace, ``immediate`` abandons them.

        Safe to call from a signal handler or another thread. Abandoned and undispatched
        rows go back to ``pending``; nothing is lost either way.
        """
        loop = self._loop
        if loop is None:
            self._stopping = True
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._stop_now(immediate)
        else:
            loop.call_soon_threadsafe(self._stop_now, immediate)

    def _stop_now(self, immediate: bool) -> None:
        self._stopping = True
        for task in list(self._tasks):
            # Rows waiting for budget, a slot or a backoff hold nothing: they go back at once.
            if immediate or task not in self._sending:
                task.cancel()
        self._wake.set()
        self._slot.set()

    @property
    def stopping(self) -> bool:
        """True once a stop was asked (or a fatal error stopped the job)."""
        return self._stopping

    def stats(self) -> EngineStats:
        """Where the run stands: rates against the limits, 429s, retries, ETA."""
        state = self.limiter.state()
        elapsed = time.monotonic() - self._started
        finished = self.counts["ok"] + self.counts["failed"]
        left = max(0, self._rows_todo - finished)
        rate = self.meter.rows_per_s()
        return EngineStats(
            elapsed_s=elapsed,
            rows_done=self.counts["ok"],
            rows_failed=self.counts["failed"],
            rows_left=left,
            requests=self.counts["requests"],
            retries=self.counts["retries"],
            rate_limited=self.counts["429"],
            errors=self.counts["errors"],
            in_flight=len(self._sending),
            concurrency=self.window.size,
            requests_per_min=self.meter.requests_per_min(),
            tokens_per_min=self.meter.tokens_per_min(),
            rpm_limit=state.rpm,
            tpm_limit=state.tpm,
            limit_source=state.source,
            paused_for_s=state.paused_for_s,
            eta_s=left / rate if rate > 0 else None,
            stopping=self._stopping,
        )

    # -- the run ----------------------------------------------------------------------------
    async def run(self, max_rows: int | None = None) -> None:
        """Drive pending rows (at most ``max_rows``) until none is left, a stop or a fatal error."""
        self._loop = asyncio.get_running_loop()
        self._started = time.monotonic()
        job_id = self.ctx.job_id
        self.ledger.requeue_in_flight(job_id, VIA_REALTIME)
        todo = self.ledger.count_rows(job_id, RowState.PENDING)
        self._rows_todo = todo if max_rows is None else min(todo, max_rows)
        ticker = asyncio.create_task(self._tick())
        buffer: list[Any] = []  # claimed rows, or groups of them (embeddings)
        claimed = 0
        try:
            while not self._stopping:
                while len(self._tasks) >= self.window.size and not self._stopping:
                    self._wake.clear()
                    await self._wake.wait()
                if self._stopping:
                    break
                if not buffer:
                    want = min(CLAIM_CHUNK, max(1, self.window.size))
                    if self.ctx.grouping is not None:
                        want = self.ctx.grouping.max_inputs  # one request's worth of rows
                    if max_rows is not None:
                        want = min(want, max_rows - claimed)
                    if want <= 0:
                        break
                    rows = self.ledger.claim_pending(job_id, VIA_REALTIME, want)
                    if not rows:
                        break
                    claimed += len(rows)
                    self._unsent.update(row[0] for row in rows)
                    buffer = (self._groups(rows) if self.ctx.grouping else rows)[::-1]
                    if not buffer:
                        continue  # every row was answered from the cache
                task = asyncio.create_task(self._start(buffer.pop()))
                self._tasks.add(task)
                task.add_done_callback(self._task_done)
            await self._drain()
        finally:
            # Reached also when run() itself is cancelled: abandon whatever is left.
            for task in self._tasks:
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            ticker.cancel()
            self._writer.flush()
            # Rows claimed but not ended (never sent, abandoned, or stopped by a fatal error)
            # go back to pending for the next run; those never sent with their attempt undone.
            if self._unsent:
                self.ledger.unclaim(job_id, sorted(self._unsent))
            self.ledger.requeue_in_flight(job_id, VIA_REALTIME)
            self._report()
        if self._stopping and self._fatal is None:
            stats = self.stats()
            self.ctx.say(
                f"stopped: {stats.rows_done} rows answered in this run, the rest left pending;"
                f" `rowprompt resume {job_id}` continues where it stopped"
            )
        if self._fatal is not None:
            raise self._fatal

    async def _drain(self) -> None:
        # Wait for the rows still live; a stop asked meanwhile still gets only the grace.
        while self._tasks and not self._stopping:
            self._wake.clear()
            await self._wake.wait()
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=self.stop_grace_s)
            for task in late:
                task.cancel()

    def _release(self, task: asyncio.Task[None]) -> None:
        """The task's request is over (answered, failed, abandoned): its slot frees."""
        self._sending.discard(task)
        self._out.discard(task)
        self._slot.set()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._release(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # A bug, not a provider answer: stop the job rather than lose the row silently.
            self._fatal = self._fatal or RowpromptError(f"internal error in the engine: {exc!r}")
            self._stop_now(immediate=False)
        self._wake.set()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_SECONDS)
            self._report()

    def _report(self) -> None:
        if self.on_stats is not None:
            self.on_stats(self.stats())
        if self.ctx.on_progress is not None:
            self.ctx.on_progress(self.ledger.progress(self.ctx.job_id))

    # -- one row (or one group of rows) ----------------------------------------------------
    def _groups(self, rows: list[tuple[str, int, int]]) -> list[Any]:
        from rowprompt.engine.groups import form_groups  # groups builds on this module

        return form_groups(self, rows)

    def _start(self, item: Any) -> Coroutine[Any, Any, None]:
        if self.ctx.grouping is not None:
            from rowprompt.engine.groups import drive_group

            return drive_group(self, item)
        key, position, attempt = item
        return self._row(key, position, attempt)

    async def _row(self, key: str, position: int, attempt: int) -> None:
        try:
            with contextlib.suppress(_Stop):
                await self._drive_row(key, position, attempt)
        finally:
            if self.ctx.budget is not None:
                self.ctx.budget.release_row(key)  # a no-op once the answer settled it

    async def _drive_row(self, key: str, position: int, attempt: int) -> None:
        ctx = self.ctx
        body = ctx.build_body(position)
        rhash = request_hash(body, ctx.endpoint)
        if ctx.use_cache:
            cached = self.ledger.cached(rhash)
            if cached is not None:
                self._end(RowOutcome(key, RowState.DONE, VIA_CACHE, cached, cost_usd=0.0))
                return
        prompt_tokens, output_tokens = limiter_parts(body, self.limiter.face)
        reserve = prompt_tokens + output_tokens
        reason = self.limiter.too_large(reserve)
        if reason is not None:
            self._end(RowOutcome(key, RowState.FAILED, VIA_REALTIME,
                                 error_code="request_too_large", error_message=reason))  # fmt: skip
            return
        if not ctx.reserve_budget(key, prompt_tokens, output_tokens, False):
            assert ctx.budget is not None
            self._end(RowOutcome(key, RowState.FAILED, VIA_REALTIME, error_code=OVER_BUDGET,
                                 error_message=ctx.budget.over_budget_message()))  # fmt: skip
            return
        sent = await self.ask(
            body,
            reserve,
            output_tokens,
            keys=(key,),
            attempt=attempt,
            log=lambda n, started, exc: self._log_attempt(key, n, started, exc),
            fail=lambda exc: self._fail(key, exc),
        )
        if sent is not None:
            self._succeed(key, sent.attempt, rhash, sent.ticket, sent.result, sent.sent,
                          sent.started)  # fmt: skip

    async def ask(
        self,
        body: dict[str, Any],
        reserve: int,
        output_tokens: int,
        *,
        keys: tuple[str, ...],
        attempt: int,
        log: Callable[[int, float, ProviderError], None],
        fail: Callable[[ProviderError], None],
        check: Callable[[Any], None] | None = None,
        on_permanent: Callable[[Permanent, int], Coroutine[Any, Any, bool]] | None = None,
    ) -> Sent | None:
        """Send one request for the rows ``keys`` until it is answered, or its rows end.

        The one retry loop of real time: waits for the limiter, sends, and handles each kind
        of error (429: every sender pauses, not counted as a try; transient: back off, counted
        against ``--max-attempts`` from ``attempt``; permanent: ``on_permanent``, else the
        rows fail; anything else stops the job). ``check`` may refuse an answer by raising
        :class:`Transient`. None: the rows ended (``fail`` was called) or were handed on.
        """
        ctx = self.ctx
        task = asyncio.current_task()
        assert task is not None
        tries = 0  # failed attempts that count against --max-attempts
        limited = 0
        while True:
            # The window caps the requests waiting for budget or on the wire, not only the rows
            # live: after a 429 halved it, the rows held by the pause must not all leave when
            # it ends (and all but one meet a 429 again).
            while len(self._out) >= self.window.size and not self._stopping:
                self._slot.clear()
                await self._slot.wait()
            if self._stopping:
                raise _Stop
            self._out.add(task)
            ticket = await self.limiter.acquire(reserve, output_tokens)
            if self._stopping:
                raise _Stop
            self._sending.add(task)
            self._unsent.difference_update(keys)
            self.counts["requests"] += 1
            self.meter.sent(reserve)
            if tries or limited:
                self.counts["retries"] += 1
            sent = time.monotonic()
            started = time.time()
            try:
                result = await self.provider.complete(body, timeout=ctx.request_timeout)
                if check is not None:
                    check(result)
            except RateLimited as exc:
                limited += 1
                self.counts["429"] += 1
                log(attempt + tries, started, exc)
                seen = _limits_of(exc)
                self.limiter.observe(ticket, seen, answered=False)
                pause = self.limiter.rate_limited(exc.retry_after, backoff_delay(limited), seen)
                self.window.rate_limited()
                if limited > RATE_LIMIT_RETRIES:
                    fail(exc)
                    return None
                if limited == 1 or limited % 5 == 0:
                    ctx.say(f"429 rate limited: every sender waits {pause:.2f} s")
                continue
            except Transient as exc:
                tries += 1
                self.counts["errors"] += 1
                log(attempt + tries - 1, started, exc)
                if attempt + tries > ctx.max_attempts:
                    fail(exc)
                    return None
                self._release(task)
                await asyncio.sleep(backoff_delay(tries))
                continue
            except Permanent as exc:
                log(attempt + tries, started, exc)
                # This request is over: its slot frees now, before on_permanent asks the rows
                # of a refused group alone (they wait for slots, and would wait for this one).
                self._release(task)
                if on_permanent is None or not await on_permanent(exc, tries):
                    fail(exc)
                return None
            except RowpromptError as exc:
                # Quota, credentials, an unknown model: no other row will pass either. The
                # job stops, this row and every other not ended go back to pending.
                if isinstance(exc, ProviderError):
                    log(attempt + tries, started, exc)
                self._fatal = self._fatal or exc
                self._stop_now(immediate=False)
                raise _Stop from None
            finally:
                self._release(task)
            return Sent(result, ticket, attempt + tries, sent, started)

    def _succeed(self, key: str, attempt: int, rhash: str, ticket: Ticket, result: Any,
                 sent: float, started: float) -> None:  # fmt: skip
        completion: Completion = result.completion
        self.window.succeeded(time.monotonic() - sent, ticket.tokens)
        self.limiter.observe(ticket, result.limits)
        self.limiter.settle(ticket, completion.completion_tokens)
        self._writer.attempts.append(
            {
                "key": key,
                "attempt": attempt,
                "via": VIA_REALTIME,
                "started_at": started,
                "finished_at": time.time(),
                "status_code": result.status_code,
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
            }
        )
        cost = self.ctx.price(completion, False)
        if self.ctx.budget is not None:
            self.ctx.budget.settle_row(key, cost)
        outcome = RowOutcome(key, RowState.DONE, VIA_REALTIME, completion, cost_usd=cost)
        self._end(outcome, (rhash, completion) if self.ctx.use_cache else None)

    def _end(self, outcome: RowOutcome, cache_item: tuple[str, Completion] | None = None) -> None:
        self.counts["ok" if outcome.state == RowState.DONE else "failed"] += 1
        self.meter.finished()
        self._writer.add(outcome, cache_item)

    def _fail(self, key: str, exc: ProviderError) -> None:
        self._end(
            RowOutcome(
                key,
                RowState.FAILED,
                VIA_REALTIME,
                error_code=exc.code or type(exc).__name__.lower(),
                error_message=exc.message,
                status_code=exc.status,
            )
        )

    def _log_attempt(self, key: str, attempt: int, started: float, exc: ProviderError) -> None:
        self._writer.attempts.append(
            {
                "key": key,
                "attempt": attempt,
                "via": VIA_REALTIME,
                "started_at": started,
                "finished_at": time.time(),
                "status_code": exc.status,
                "error_code": exc.code,
                "error_message": exc.message[:500],
            }
        )
