"""The real-time engine: concurrent requests under the limiter, every result in the ledger."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from rowprompt.engine.context import RunContext, admission_tokens
from rowprompt.engine.ratelimit import Limiter
from rowprompt.errors import Permanent, ProviderError, RateLimited, RowpromptError, Transient
from rowprompt.jobs import VIA_CACHE, VIA_REALTIME, Completion, RowOutcome, RowState, request_hash
from rowprompt.ledger import Ledger
from rowprompt.providers.base import Provider

# 429s are the provider pacing us, not the row failing: they get a larger allowance.
RATE_LIMIT_RETRIES = 20
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 8.0
# Commit every outcome as it comes: in WAL mode with synchronous=NORMAL a commit does not
# fsync, so this costs tens of microseconds, and a killed process re-asks only the requests
# that were in flight, never an answer it had already received.
FLUSH_EVERY = 1
FLUSH_SECONDS = 0.05
PROGRESS_SECONDS = 0.5


def backoff_delay(retries: int, retry_after: float | None = None) -> float:
    """The openai SDK's rule: the server's advice if sane, else capped exponential with jitter."""
    if retry_after is not None and 0 < retry_after <= 120:
        return retry_after
    return min(BACKOFF_BASE_S * 2**retries, BACKOFF_CAP_S) * (1 - 0.25 * random.random())


class _Writer:
    """Buffers outcomes and attempts and commits them in small batches."""

    def __init__(self, ledger: Ledger, ctx: RunContext) -> None:
        self.ledger = ledger
        self.ctx = ctx
        self.outcomes: list[RowOutcome] = []
        self.attempts: list[dict[str, Any]] = []
        self.cache: list[tuple[str, Completion]] = []
        self._last = time.monotonic()
        self._last_progress = 0.0

    def add(self, outcome: RowOutcome, cache_item: tuple[str, Completion] | None = None) -> None:
        self.outcomes.append(outcome)
        if cache_item is not None:
            self.cache.append(cache_item)
        if len(self.outcomes) >= FLUSH_EVERY or time.monotonic() - self._last > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.outcomes or self.attempts:
            with self.ledger.transaction():
                if self.cache:
                    self.ledger.cache_many(self.cache)
                self.ledger.record_outcomes(self.ctx.job_id, self.outcomes)
                self.ledger.record_attempts(self.ctx.job_id, self.attempts)
        self.outcomes, self.attempts, self.cache = [], [], []
        self._last = time.monotonic()
        # Counting the job's rows scans them: at most a few times a second, not per row.
        if self.ctx.on_progress is not None and self._last - self._last_progress > PROGRESS_SECONDS:
            self._last_progress = self._last
            self.ctx.on_progress(self.ledger.progress(self.ctx.job_id))

    def final_progress(self) -> None:
        """Report the counts once more at the end."""
        if self.ctx.on_progress is not None:
            self.ctx.on_progress(self.ledger.progress(self.ctx.job_id))


class RealtimeEngine:
    """Sends rows one request each, ``concurrency`` at a time, under the limiter."""

    def __init__(
        self,
        provider: Provider,
        ledger: Ledger,
        ctx: RunContext,
        *,
        limiter: Limiter | None = None,
        concurrency: int = 16,
    ) -> None:
        self.provider = provider
        self.ledger = ledger
        self.ctx = ctx
        self.limiter = limiter or Limiter()
        self.concurrency = max(1, concurrency)
        self._writer = _Writer(ledger, ctx)
        self._fatal: RowpromptError | None = None

    async def run(self, max_rows: int | None = None) -> None:
        """Drive pending rows (at most ``max_rows``) until none is left or a fatal error."""
        self.ledger.requeue_in_flight(self.ctx.job_id, VIA_REALTIME)
        queue: asyncio.Queue[tuple[str, int, int] | None] = asyncio.Queue(self.concurrency * 2)
        workers = [asyncio.create_task(self._worker(queue)) for _ in range(self.concurrency)]
        claimed = 0
        try:
            while self._fatal is None and (max_rows is None or claimed < max_rows):
                want = self.concurrency * 2
                if max_rows is not None:
                    want = min(want, max_rows - claimed)
                rows = self.ledger.claim_pending(self.ctx.job_id, VIA_REALTIME, want)
                if not rows:
                    break
                claimed += len(rows)
                for row in rows:
                    await queue.put(row)
                    if self._fatal is not None:
                        break
        finally:
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers, return_exceptions=True)
            self._writer.flush()
            self._writer.final_progress()
            if self._fatal is not None:
                # Rows this run claimed but never sent go back for the next run.
                self.ledger.requeue_in_flight(self.ctx.job_id, VIA_REALTIME)
        if self._fatal is not None:
            raise self._fatal

    async def _worker(self, queue: asyncio.Queue[tuple[str, int, int] | None]) -> None:
        while True:
            item = await queue.get()
            if item is None:
                return
            if self._fatal is not None:
                continue
            key, position, attempt = item
            try:
                await self._drive_row(key, position, attempt)
            except RowpromptError as exc:
                self._fatal = self._fatal or exc

    async def _drive_row(self, key: str, position: int, attempt: int) -> None:
        ctx = self.ctx
        body = ctx.build_body(position)
        rhash = request_hash(body)
        if ctx.use_cache:
            cached = self.ledger.cached(rhash)
            if cached is not None:
                self._writer.add(RowOutcome(key, RowState.DONE, VIA_CACHE, cached, cost_usd=0.0))
                return
        cost_tokens = admission_tokens(body)
        if self.limiter.tpm is not None and cost_tokens > self.limiter.tpm:
            self._writer.add(
                RowOutcome(
                    key,
                    RowState.FAILED,
                    VIA_REALTIME,
                    error_code="request_too_large",
                    error_message=f"the request needs {cost_tokens} tokens, more than the whole"
                    f" tokens-per-minute budget ({int(self.limiter.tpm)})",
                )
            )
            return
        tries = 0
        rate_limited = 0
        while True:
            await self.limiter.acquire(cost_tokens)
            started = time.time()
            try:
                result = await self.provider.complete(body, timeout=ctx.request_timeout)
            except RateLimited as exc:
                rate_limited += 1
                self._log_attempt(key, attempt, started, exc)
                delay = backoff_delay(rate_limited, exc.retry_after)
                self.limiter.pause(delay)
                if rate_limited > RATE_LIMIT_RETRIES:
                    self._fail(key, exc)
                    return
                continue
            except Transient as exc:
                tries += 1
                self._log_attempt(key, attempt, started, exc)
                if attempt + tries > ctx.max_attempts:
                    self._fail(key, exc)
                    return
                await asyncio.sleep(backoff_delay(tries))
                continue
            except Permanent as exc:
                self._log_attempt(key, attempt, started, exc)
                self._fail(key, exc)
                return
            except ProviderError as exc:
                # QuotaExhausted and its kind stop the job: no other row will pass either.
                self._log_attempt(key, attempt, started, exc)
                raise
            completion = result.completion
            self._writer.attempts.append(
                {
                    "key": key,
                    "attempt": attempt + tries,
                    "via": VIA_REALTIME,
                    "started_at": started,
                    "finished_at": time.time(),
                    "status_code": result.status_code,
                    "prompt_tokens": completion.prompt_tokens,
                    "completion_tokens": completion.completion_tokens,
                }
            )
            outcome = RowOutcome(
                key,
                RowState.DONE,
                VIA_REALTIME,
                completion,
                cost_usd=ctx.price(completion, False),
            )
            self._writer.add(outcome, (rhash, completion) if ctx.use_cache else None)
            return

    def _fail(self, key: str, exc: ProviderError) -> None:
        self._writer.add(
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
