"""The batch engine: shards to files, files to batches, batches back to rows.

Every step is recorded before the next begins (rows assigned to a shard in one transaction,
the file id as soon as the upload returns, the try number before ``create`` is called and the
batch id as soon as it returns), and each batch carries the job id, shard number and try in
its metadata, so a process killed anywhere resumes without creating a batch twice: a batch
created by a process that died before writing its id is found by its metadata and adopted.

Shards are planned by :mod:`rowprompt.engine.shards` and let into the provider's queue by
:mod:`rowprompt.engine.scheduler`, which keeps the enqueued tokens under the model's limit.
See ``docs/batch.md``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx2

from rowprompt.engine.context import RunContext
from rowprompt.engine.scheduler import PollSchedule, QueueScheduler
from rowprompt.engine.shards import ShardCaps, ShardPlanner
from rowprompt.errors import BatchUnsupported, ConfigError, Permanent, ProviderError, Transient
from rowprompt.jobs import (
    TERMINAL_BATCH_STATUSES,
    VIA_BATCH,
    Completion,
    RowOutcome,
    RowState,
    ShardState,
)
from rowprompt.ledger import Ledger, ShardRecord
from rowprompt.providers.base import BatchInfo, BatchLineResult, Provider

META_JOB = "rowprompt_job"
META_SHARD = "rowprompt_shard"
META_TRY = "rowprompt_try"
# Codes after which a batch's rows are simply asked again: the batch, not the rows, failed.
REQUEUE_BATCH_CODES = frozenset({"token_limit_exceeded"})
REQUEUE_LINE_CODES = frozenset({"batch_expired", "batch_cancelled", "missing_from_output"})
# Validation failures no new try can cure: the rows fail at once with the provider's words.
PERMANENT_BATCH_CODES = frozenset({"model_not_found"})
# Shard status while ``create`` is in the air: a batch may exist that the ledger lacks.
CREATING = "creating"
WAITING = "waiting"
# Rows written to the ledger per transaction while collecting.
_FLUSH_ROWS = 20_000
# How often the loop looks at the queue again when it waits for room and polls nothing.
_QUEUE_RECHECK_S = 5.0
DEFAULT_STRAGGLER_ROWS = 1000

Stragglers = Callable[[int], Awaitable[None]]


class BatchEngine:
    """Plans shards, lets them into the queue, polls them and collects their rows."""

    def __init__(
        self,
        provider: Provider,
        ledger: Ledger,
        ctx: RunContext,
        *,
        poll_interval: float = 5.0,
        max_poll_interval: float = 60.0,
        max_requests: int | None = None,
        max_bytes: int | None = None,
        token_limit: int | None = None,
        default_token_limits: Mapping[str, int] | None = None,
        max_shard_tokens: int | None = None,
        on_stragglers: Stragglers | None = None,
        straggler_rows: int = DEFAULT_STRAGGLER_ROWS,
        poll_concurrency: int = 8,
    ) -> None:
        """Build the engine.

        ``poll_interval`` and ``max_poll_interval`` bound the adaptive polling (equal values
        poll at a fixed interval). ``token_limit`` is the model's enqueued-token limit when
        the user knows it; ``default_token_limits`` a per-model table used when neither the
        user nor the provider said. ``on_stragglers(n)`` is awaited when only rows that a
        batch already tried are left pending, at most ``straggler_rows`` of them: the caller
        runs them in real time (the real-time engine claims pending rows) instead of waiting
        another batch cycle.
        """
        self.provider = provider
        self.ledger = ledger
        self.ctx = ctx
        self.poll_interval = poll_interval
        self.max_poll_interval = max(max_poll_interval, poll_interval)
        caps = provider.batch_caps
        self.max_requests = min(max_requests or caps.max_requests, caps.max_requests)
        self.max_bytes = min(max_bytes or caps.max_bytes, caps.max_bytes)
        self.queue = QueueScheduler(
            ledger,
            provider.name,
            ctx.model,
            token_limit=token_limit,
            default_limits=default_token_limits,
            max_shard_tokens=max_shard_tokens,
        )
        self.planner = ShardPlanner(provider, ledger, ctx)
        self.polls = PollSchedule(poll_interval, self.max_poll_interval)
        self.on_stragglers = on_stragglers
        self.straggler_rows = straggler_rows
        self._poll_slots = asyncio.Semaphore(max(1, poll_concurrency))
        self._cancelled = False
        self._prices: dict[tuple[Any, ...], float | None] = {}

    # -- planning and submitting ------------------------------------------------------------
    async def submit_pending(self, max_rows: int | None = None) -> int:
        """Send waiting shards and new ones from pending rows (at most ``max_rows``) while
        the queue has room. Returns the number of rows handed to new shards."""
        if await self.resume_unsubmitted():
            return 0  # shards already wait for room: new ones would only queue behind them
        handed = 0
        while not self._cancelled and (max_rows is None or handed < max_rows):
            caps = self._caps()
            if caps is None:
                break
            shard = self.planner.plan_one(
                caps, max_rows=None if max_rows is None else max_rows - handed
            )
            if shard is None:
                break
            handed += shard.rows
            await self._submit(shard)
        return handed

    def _caps(self) -> ShardCaps | None:
        """The caps of the next shard, or None while the queue has no room for one."""
        target = self.queue.shard_tokens()
        room = self.queue.available()
        budget = self.queue.budget()
        if room is not None and target is not None:
            ours = [s for s in self.ledger.shards(self.ctx.job_id, active_only=True)]
            # Wait for a fair share of room rather than fill the queue with slivers, unless
            # nothing of ours is in the queue (then any room at all is worth using).
            if room <= 0 or (room < target // 2 and ours):
                return None
            target = min(target, room)
        return ShardCaps(self.max_requests, self.max_bytes, target, budget)

    async def resume_unsubmitted(self) -> bool:
        """Send the shards that wait (planned, uploaded, or refused for the queue) if they fit;
        adopt a batch a dead process created but did not record.

        Returns True when some shard still waits for room in the queue.
        """
        now = time.time()
        blocked = False
        for shard in self.ledger.shards(self.ctx.job_id, active_only=True):
            if self._cancelled:
                return True
            if shard.state == ShardState.SUBMITTED:
                continue
            unsure = shard.status == CREATING or (
                shard.state == ShardState.UPLOADED and not shard.status
            )
            if unsure and await self._adopt(shard):
                continue
            budget = self.queue.budget()
            if budget is not None and shard.estimated_tokens > budget:
                # Planned before the limit was known: it can never go in; plan it again smaller.
                n = self.ledger.unassign_shard(
                    self.ctx.job_id, shard.number, error="larger than the batch queue limit"
                )
                self.ctx.say(f"shard {shard.number}: over the queue limit, {n} rows re-planned")
                continue
            if blocked or (shard.not_before and now < shard.not_before):
                blocked = True
                continue
            if not self.queue.fits(shard.estimated_tokens):
                blocked = True  # first in, first out: later shards wait behind this one
                continue
            await self._submit(shard)
        return blocked

    async def _adopt(self, shard: ShardRecord) -> bool:
        """Find the batch of this shard's last try at the provider; record it if it exists."""
        metadata = {META_JOB: self.ctx.job_id, META_SHARD: str(shard.number)}
        try:
            found = await self.provider.find_batches(metadata)
        except Transient:
            return True  # cannot tell yet: do not risk a second batch, look again later
        want = str(shard.submits)
        for info in found:
            tried = info.metadata.get(META_TRY)
            if tried == want or (tried is None and shard.submits == 0):
                self._record_created(shard, info)
                self.ctx.say(f"batch {info.id}: shard {shard.number} adopted after a restart")
                return True
        return False

    async def _submit(self, shard: ShardRecord) -> None:
        job_id, number = self.ctx.job_id, shard.number
        file_id = shard.input_file_id
        if shard.state == ShardState.PLANNED or file_id is None:
            if not shard.path or not Path(shard.path).exists():
                self._lose(shard, "the shard's input file is gone")
                return
            file_id = await self.provider.upload_batch_file(Path(shard.path))
            self.ledger.update_shard(
                job_id, number, state=ShardState.UPLOADED, input_file_id=file_id
            )
        tries = shard.submits + 1
        # Written before create: a crash or a lost answer from here on is found by this try.
        self.ledger.update_shard(job_id, number, submits=tries, status=CREATING, not_before=None)
        metadata = {META_JOB: job_id, META_SHARD: str(number), META_TRY: str(tries)}
        try:
            info = await self.provider.create_batch(file_id, metadata)
        except Transient as exc:
            self.ctx.say(f"shard {number}: create failed ({exc}); will check and retry")
            return
        self._record_created(self.ledger.shard(job_id, number) or shard, info)
        self.ctx.say(
            f"batch {info.id}: shard {number}, {shard.rows} rows,"
            f" ~{shard.estimated_tokens:,} tokens submitted"
        )

    def _record_created(self, shard: ShardRecord, info: BatchInfo) -> None:
        self.ledger.update_shard(
            self.ctx.job_id,
            shard.number,
            state=ShardState.SUBMITTED,
            batch_id=info.id,
            input_file_id=info.input_file_id or shard.input_file_id,
            status=info.status,
            submitted_at=time.time(),
            count_total=info.total,
            error=None,
        )
        self.polls.start(info.id)

    def _lose(self, shard: ShardRecord, why: str) -> None:
        keys = [k for k, _ in self.ledger.shard_rows(self.ctx.job_id, shard.number)]
        with self.ledger.transaction():
            self.ledger.release_rows(
                self.ctx.job_id,
                keys,
                max_attempts=self.ctx.max_attempts + 1,
                error_code="batch_lost",
                error_message=why,
            )
            self.ledger.update_shard(
                self.ctx.job_id,
                shard.number,
                state=ShardState.LOST,
                error=why,
                finished_at=time.time(),
            )
        self.ctx.say(f"shard {shard.number}: {why}; its {len(keys)} rows will be asked again")

    # -- polling and collecting -------------------------------------------------------------
    async def poll_once(self) -> int:
        """Look at every submitted batch once, collect the finished; returns how many of the
        job's shards are still active (in the queue, or waiting to go in)."""
        return await self._poll(force=True)

    async def _poll(self, *, force: bool) -> int:
        """Poll the due batches (all with ``force``) together, then collect those that ended."""
        shards = self.ledger.shards(self.ctx.job_id, active_only=True)
        live = [s for s in shards if s.state == ShardState.SUBMITTED and s.batch_id]
        due = [s for s in live if force or self.polls.due(s.batch_id or "")]
        infos = await asyncio.gather(*(self._look(s) for s in due))
        ended = 0
        for shard, info in zip(due, infos, strict=True):
            if info is None:
                ended += 1
                continue
            if await self._observe(shard, info):
                ended += 1
        return len(shards) - ended

    async def _look(self, shard: ShardRecord) -> BatchInfo | None:
        assert shard.batch_id is not None
        async with self._poll_slots:
            try:
                return await self.provider.get_batch(shard.batch_id)
            except Permanent as exc:
                if exc.status == 404:
                    self._lose(shard, f"the provider no longer knows batch {shard.batch_id}")
                    self.polls.forget(shard.batch_id)
                    return None
                raise

    async def _observe(self, shard: ShardRecord, info: BatchInfo) -> bool:
        """Record one poll's answer; collect a batch that ended. True when it ended."""
        if info.status != shard.status or info.completed != (shard.count_completed or 0):
            counts = f" ({info.completed + info.failed}/{info.total} done)" if info.total else ""
            if info.status != shard.status:
                self.ctx.say(f"batch {info.id}: {info.status}{counts}")
        self.ledger.update_shard(
            self.ctx.job_id,
            shard.number,
            status=info.status,
            count_total=info.total,
            count_completed=info.completed,
            count_failed=info.failed,
            output_file_id=info.output_file_id,
            error_file_id=info.error_file_id,
            polled_at=time.time(),
        )
        if info.status in TERMINAL_BATCH_STATUSES:
            self.polls.forget(info.id)
            await self.collect(shard, info)
            return True
        self.polls.observe(info.id, info.status, info.completed + info.failed, info.total)
        return False

    async def collect(self, shard: ShardRecord, info: BatchInfo) -> None:
        """Join a finished batch's lines back to their rows, streaming; rows without a line
        (missing from the output, cut mid-JSON, expired, cancelled) go back to pending for
        another try. A download that breaks off is read again, a few times, then raises
        :class:`Transient` with what was read kept."""
        job_id = self.ctx.job_id
        rows = self.ledger.shard_row_hashes(job_id, shard.number)
        by_position = {pos: key for key, pos, _ in rows}
        hashes = {key: rhash for key, _, rhash in rows}
        del rows
        if info.status == "failed":
            self._collect_failed(shard, info, list(by_position.values()))
            return
        outcomes: list[RowOutcome] = []
        cache: list[tuple[str, Completion]] = []
        attempts: list[dict[str, Any]] = []
        requeue: dict[tuple[str, str], list[str]] = {}
        now = time.time()
        requeued = 0

        def flush() -> None:
            with self.ledger.transaction():
                self.ledger.record_outcomes(job_id, outcomes)
                self.ledger.record_attempts(job_id, attempts)
                # Answers paid for go to the cache: a rerun in another mode does not pay again.
                self.ledger.cache_many(cache)
                for (code, message), keys in requeue.items():
                    self.ledger.release_rows(
                        job_id,
                        keys,
                        max_attempts=self.ctx.max_attempts,
                        error_code=code,
                        error_message=message,
                    )
            if self.ctx.budget is not None:
                # Rows back without an answer cost nothing; their next shard reserves anew.
                for keys in requeue.values():
                    for key in keys:
                        self.ctx.budget.release_row(key)
            outcomes.clear()
            attempts.clear()
            cache.clear()
            requeue.clear()

        def take(line: BatchLineResult) -> None:
            nonlocal requeued
            position = self.ctx.position_of(line.custom_id)
            key = by_position.pop(position, None) if position is not None else None
            if key is None:
                return  # not ours, a duplicate line, or one read before: never pay a row twice
            done = line.completion
            attempts.append(
                {
                    "key": key,
                    "attempt": shard.submits,
                    "via": VIA_BATCH,
                    "finished_at": now,
                    "status_code": line.status_code,
                    "error_code": line.error_code,
                    "prompt_tokens": done.prompt_tokens if done else None,
                    "completion_tokens": done.completion_tokens if done else None,
                }
            )
            if done is not None:
                cost = self._price(done)
                if self.ctx.budget is not None:
                    self.ctx.budget.settle_row(key, cost)
                outcomes.append(RowOutcome(key, RowState.DONE, VIA_BATCH, done, cost_usd=cost))
                cache.append((hashes[key], done))
            elif (line.error_code in REQUEUE_LINE_CODES) or (line.status_code or 0) >= 500:
                why = (line.error_code or "batch_error", line.error_message or "")
                requeue.setdefault(why, []).append(key)
                requeued += 1
            else:
                outcomes.append(
                    RowOutcome(
                        key,
                        RowState.FAILED,
                        VIA_BATCH,
                        error_code=line.error_code,
                        error_message=line.error_message,
                        status_code=line.status_code,
                    )
                )
            if len(attempts) >= _FLUSH_ROWS:
                flush()

        # A download that breaks off (a dropped connection, a timeout) is read again from the
        # start: the file stays at the provider, and the rows already taken are skipped, so no
        # row is paid twice. Lines cut mid-JSON parse to nothing and count as missing.
        tries, pause_s = 4, 0.5
        for attempt in range(1, tries + 1):
            try:
                async for line in self.provider.batch_results(info):
                    take(line)
                break
            except (Transient, httpx2.TransportError) as exc:
                # The SDKs raise their HTTP library's own errors once the body is streaming.
                if attempt == tries:
                    with self.ledger.transaction():
                        flush()  # keep what was read; a resume reads only the rest
                    raise Transient(
                        f"the results of batch {info.id} could not be downloaded ({exc})",
                        code="download_failed",
                    ) from None
                self.ctx.say(f"batch {info.id}: download broke off ({exc}); reading it again")
                await asyncio.sleep(pause_s * 2 ** (attempt - 1))
        missing = list(by_position.values())
        if missing:
            why = ("missing_from_output", f"batch {info.id} ({info.status}) returned no line")
            requeue[why] = missing
        with self.ledger.transaction():
            flush()
            self.ledger.update_shard(
                job_id, shard.number, state=ShardState.COLLECTED, finished_at=time.time()
            )
        if self.ctx.on_progress is not None:
            self.ctx.on_progress(self.ledger.progress(job_id))
        again = len(missing) + requeued
        note = f", {again} rows to ask again" if again else ""
        self.ctx.say(f"batch {info.id}: {info.status}, collected{note}")

    def _price(self, completion: Completion) -> float | None:
        # The price depends on the model and the token counts only; a million rows share a
        # few hundred distinct combinations, so look each up once.
        key = (
            completion.model,
            completion.prompt_tokens,
            completion.completion_tokens,
            completion.cached_tokens,
        )
        if key not in self._prices:
            self._prices[key] = self.ctx.price(completion, True)
        return self._prices[key]

    def _collect_failed(self, shard: ShardRecord, info: BatchInfo, keys: list[str]) -> None:
        job_id = self.ctx.job_id
        codes = {e.code for e in info.errors}
        detail = (
            "; ".join(
                (f"line {e.line}: " if e.line else "") + f"{e.code}: {e.message}"
                for e in info.errors[:3]
            )
            or "the batch failed validation"
        )
        if codes & REQUEUE_BATCH_CODES:
            self._wait_for_room(shard, info, detail)
            return
        code = next(iter(sorted(c for c in codes if c)), None) or "batch_failed"
        message = f"batch {info.id} failed validation: {detail}"
        with self.ledger.transaction():
            if codes & PERMANENT_BATCH_CODES:
                outcomes = [
                    RowOutcome(k, RowState.FAILED, VIA_BATCH, None, None, code, message)
                    for k in keys
                ]
                self.ledger.record_outcomes(job_id, outcomes)
                failed = len(keys)
            else:
                # Rows go again in new shards, counted against --max-attempts.
                failed = self.ledger.release_rows(
                    job_id,
                    keys,
                    max_attempts=self.ctx.max_attempts,
                    error_code=code,
                    error_message=message,
                )
            self.ledger.update_shard(
                job_id,
                shard.number,
                state=ShardState.COLLECTED,
                error=detail,
                finished_at=time.time(),
            )
        again = f"; {len(keys) - failed} rows will be asked again" if len(keys) > failed else ""
        self.ctx.say(f"batch {info.id} failed validation: {detail}{again}")

    def _wait_for_room(self, shard: ShardRecord, info: BatchInfo, detail: str) -> None:
        """``token_limit_exceeded``: never fatal. Learn the limit, keep the shard (its file is
        uploaded already) and send it again once the queue has room; its rows keep their
        attempts, as they were never run."""
        message = next((e.message for e in info.errors if e.code in REQUEUE_BATCH_CODES), detail)
        limit = self.queue.learn(message, shard_tokens=shard.estimated_tokens)
        waits = shard.submits
        backoff = min(self.max_poll_interval, self.poll_interval * 2 ** min(waits, 10))
        self.ledger.update_shard(
            self.ctx.job_id,
            shard.number,
            state=ShardState.UPLOADED,
            batch_id=None,
            status=WAITING,
            error=f"batch {info.id}: {detail}",
            not_before=time.time() + backoff,
            output_file_id=None,
            error_file_id=None,
        )
        self.ctx.say(
            f"batch {info.id}: the queue for {self.ctx.model} is full (limit {limit:,} tokens);"
            f" shard {shard.number} waits and goes again"
        )

    # -- stragglers -------------------------------------------------------------------------
    async def _hand_over_stragglers(self) -> bool:
        """Give the last rows a batch left undone to the caller's real-time hook."""
        if self.on_stragglers is None or self._cancelled:
            return False
        pending, retried = self.ledger.count_pending_retries(self.ctx.job_id)
        if not pending or retried < pending or pending > self.straggler_rows:
            return False
        self.ctx.say(f"{pending} rows left by batches go through the real-time API")
        await self.on_stragglers(pending)
        return True

    # -- the loop ---------------------------------------------------------------------------
    async def run(self, *, wait: bool = True, timeout: float | None = None) -> None:
        """Submit what the queue has room for; with ``wait``, poll, collect and submit until
        every row has ended (or ``timeout`` seconds passed)."""
        start = time.monotonic()
        await self.resume_unsubmitted()
        while True:
            await self._poll(force=not wait)
            await self._hand_over_stragglers()
            await self.submit_pending()
            if not wait or self._cancelled:
                return
            active = self.ledger.shards(self.ctx.job_id, active_only=True)
            if not active and self.ledger.count_rows(self.ctx.job_id, RowState.PENDING) == 0:
                return
            if timeout is not None and time.monotonic() - start > timeout:
                return
            self.ledger.heartbeat(self.ctx.job_id)
            await asyncio.sleep(self._sleep_s(active))

    def _sleep_s(self, active: list[ShardRecord]) -> float:
        """Until the next batch is due, or a waiting shard may go, or the queue is re-read."""
        now = time.monotonic()
        wake = now + max(self.poll_interval, _QUEUE_RECHECK_S)
        due = self.polls.next_due()
        if due is not None:
            wake = min(wake, due)
        for shard in active:
            if shard.not_before is not None:
                wake = min(wake, now + max(0.0, shard.not_before - time.time()))
        return max(0.02, wake - now)

    async def cancel(self) -> None:
        """Cancel every live batch of the job (their finished rows are kept when collected);
        shards not yet in the queue give their rows back and are retired."""
        self._cancelled = True
        for shard in self.ledger.shards(self.ctx.job_id, active_only=True):
            if shard.batch_id is None and shard.status == CREATING:
                # A batch may exist that we never recorded: find it so it is cancelled too.
                with _quiet():
                    await self._adopt(shard)
                shard = self.ledger.shard(self.ctx.job_id, shard.number) or shard
            if shard.batch_id is None:
                self.ledger.unassign_shard(
                    self.ctx.job_id, shard.number, error="cancelled before it was sent"
                )
                continue
            try:
                info = await self.provider.cancel_batch(shard.batch_id)
            except (Permanent, BatchUnsupported, ConfigError, ProviderError):
                continue
            self.ledger.update_shard(self.ctx.job_id, shard.number, status=info.status)


class _quiet:
    """Swallow provider errors: cancelling goes on whatever one call answers."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is not None and issubclass(kind, ProviderError | ConfigError)
