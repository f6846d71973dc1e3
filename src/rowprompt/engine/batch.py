"""The batch engine: shards to files, files to batches, batches back to rows.

Every step is recorded before the next begins (rows assigned to a shard in one transaction,
the file id as soon as the upload returns, the batch id as soon as create returns), and each
batch carries the job id and shard number in its metadata, so a process killed anywhere
resumes without creating a batch twice.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rowprompt.engine.context import RunContext, admission_tokens
from rowprompt.errors import BatchUnsupported, ConfigError, Permanent, ProviderError
from rowprompt.jobs import (
    TERMINAL_BATCH_STATUSES,
    VIA_BATCH,
    VIA_CACHE,
    RowOutcome,
    RowState,
    ShardState,
    request_hash,
)
from rowprompt.ledger import Ledger, ShardRecord
from rowprompt.providers.base import BatchInfo, Provider

META_JOB = "rowprompt_job"
META_SHARD = "rowprompt_shard"
# Codes after which a batch's rows are simply asked again: the batch, not the rows, failed.
REQUEUE_BATCH_CODES = frozenset({"token_limit_exceeded"})
REQUEUE_LINE_CODES = frozenset({"batch_expired", "batch_cancelled", "missing_from_output"})


class BatchEngine:
    """Plans shards, submits them, polls them and collects their results into the ledger."""

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
    ) -> None:
        self.provider = provider
        self.ledger = ledger
        self.ctx = ctx
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        caps = provider.batch_caps
        self.max_requests = min(max_requests or caps.max_requests, caps.max_requests)
        self.max_bytes = min(max_bytes or caps.max_bytes, caps.max_bytes)

    # -- planning and submitting ------------------------------------------------------------
    async def submit_pending(self, max_rows: int | None = None) -> int:
        """Put pending rows (at most ``max_rows``) into new shards and submit them.

        Returns the number of rows handed to batches.
        """
        await self.resume_unsubmitted()
        handed = 0
        for shard in self._plan(max_rows):
            handed += shard.rows
            await self._submit(shard)
        return handed

    def _plan(self, max_rows: int | None) -> Iterator[ShardRecord]:
        """Write shard files for the pending rows, assign the rows, yield each shard."""
        job_id = self.ctx.job_id
        pending = self.ledger.pending_rows(job_id, max_rows)
        cached: list[RowOutcome] = []
        lines: list[bytes] = []
        keys: list[str] = []
        size = tokens_total = 0

        def cut() -> ShardRecord:
            number = self.ledger.next_shard_number(job_id)
            path = self.ledger.batch_dir / f"{job_id}-{number}.jsonl"
            tmp = path.with_suffix(".jsonl.tmp")
            with tmp.open("wb") as handle:
                handle.writelines(lines)
            os.replace(tmp, path)
            self.ledger.create_shard(
                job_id,
                number,
                provider=self.provider.name,
                model=self.ctx.model,
                path=str(path),
                keys=keys,
                nbytes=size,
                estimated_tokens=tokens_total,
            )
            return next(s for s in self.ledger.shards(job_id) if s.number == number)

        for key, position in pending:
            body = self.ctx.build_body(position)
            if self.ctx.use_cache:
                hit = self.ledger.cached(request_hash(body))
                if hit is not None:
                    cached.append(RowOutcome(key, RowState.DONE, VIA_CACHE, hit, cost_usd=0.0))
                    continue
            line = self.provider.batch_line(self.ctx.custom_id(position), body)
            if keys and (len(keys) >= self.max_requests or size + len(line) > self.max_bytes):
                yield cut()
                lines, keys, size, tokens_total = [], [], 0, 0
            lines.append(line)
            keys.append(key)
            size += len(line)
            tokens_total += admission_tokens(body)
        if cached:
            self.ledger.record_outcomes(job_id, cached)
        if keys:
            yield cut()

    async def resume_unsubmitted(self) -> None:
        """Finish shards a dead process planned or uploaded but did not see created."""
        for shard in self.ledger.shards(self.ctx.job_id, active_only=True):
            if shard.state in (ShardState.PLANNED, ShardState.UPLOADED):
                await self._submit(shard)

    async def _submit(self, shard: ShardRecord) -> None:
        job_id, number = self.ctx.job_id, shard.number
        metadata = {META_JOB: job_id, META_SHARD: str(number)}
        if shard.batch_id is None and shard.state != ShardState.PLANNED:
            adopted = await self.provider.find_batches(metadata)
            if adopted:
                self._record_created(shard, adopted[0])
                return
        file_id = shard.input_file_id
        if shard.state == ShardState.PLANNED or file_id is None:
            if not shard.path or not Path(shard.path).exists():
                self._lose(shard, "the shard's input file is gone")
                return
            file_id = await self.provider.upload_batch_file(Path(shard.path))
            self.ledger.update_shard(
                job_id, number, state=ShardState.UPLOADED, input_file_id=file_id
            )
        info = await self.provider.create_batch(file_id, metadata)
        self._record_created(shard, info)
        self.ctx.say(f"batch {info.id}: shard {number}, {shard.rows} rows submitted")

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
        )

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
        """Look at every submitted shard once, collect the finished; returns how many remain."""
        remaining = 0
        for shard in self.ledger.shards(self.ctx.job_id, active_only=True):
            if shard.state != ShardState.SUBMITTED or shard.batch_id is None:
                remaining += 1
                continue
            try:
                info = await self.provider.get_batch(shard.batch_id)
            except Permanent as exc:
                if exc.status == 404:
                    self._lose(shard, f"the provider no longer knows batch {shard.batch_id}")
                    continue
                raise
            if info.status != shard.status:
                counts = f" ({info.completed}/{info.total} done)" if info.total else ""
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
            )
            if info.status in TERMINAL_BATCH_STATUSES:
                await self.collect(shard, info)
            else:
                remaining += 1
        return remaining

    async def collect(self, shard: ShardRecord, info: BatchInfo) -> None:
        """Join a finished batch's lines back to their rows; rows without a line are re-asked."""
        job_id = self.ctx.job_id
        waiting = dict(self.ledger.shard_rows(job_id, shard.number))
        by_position = {pos: key for key, pos in waiting.items()}
        if info.status == "failed":
            self._collect_failed(shard, info, list(waiting))
            return
        outcomes: list[RowOutcome] = []
        requeue: list[tuple[str, str, str]] = []
        attempts: list[dict[str, Any]] = []
        now = time.time()
        async for line in self.provider.batch_results(info):
            position = self.ctx.position_of(line.custom_id)
            key = by_position.pop(position, None) if position is not None else None
            if key is None:
                continue  # not ours, or a duplicate line: never pay a row twice
            attempts.append(
                {
                    "key": key,
                    "attempt": 0,
                    "via": VIA_BATCH,
                    "finished_at": now,
                    "status_code": line.status_code,
                    "error_code": line.error_code,
                    "prompt_tokens": line.completion.prompt_tokens if line.completion else None,
                    "completion_tokens": (
                        line.completion.completion_tokens if line.completion else None
                    ),
                }
            )
            if line.completion is not None:
                outcomes.append(
                    RowOutcome(
                        key,
                        RowState.DONE,
                        VIA_BATCH,
                        line.completion,
                        cost_usd=self.ctx.price(line.completion, True),
                    )
                )
            elif (line.error_code in REQUEUE_LINE_CODES) or (line.status_code or 0) >= 500:
                requeue.append((key, line.error_code or "batch_error", line.error_message or ""))
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
            if len(outcomes) >= 1000:
                self.ledger.record_outcomes(job_id, outcomes)
                outcomes = []
        missing = list(by_position.values())
        with self.ledger.transaction():
            self.ledger.record_outcomes(job_id, outcomes)
            self.ledger.record_attempts(job_id, attempts)
            for key, code, message in requeue:
                self.ledger.release_rows(
                    job_id,
                    [key],
                    max_attempts=self.ctx.max_attempts,
                    error_code=code,
                    error_message=message,
                )
            if missing:
                self.ledger.release_rows(
                    job_id,
                    missing,
                    max_attempts=self.ctx.max_attempts,
                    error_code="missing_from_output",
                    error_message=f"batch {info.id} ({info.status}) returned no line for the row",
                )
            self.ledger.update_shard(
                job_id, shard.number, state=ShardState.COLLECTED, finished_at=time.time()
            )
        if self.ctx.on_progress is not None:
            self.ctx.on_progress(self.ledger.progress(job_id))
        note = f", {len(missing) + len(requeue)} rows to ask again" if missing or requeue else ""
        self.ctx.say(f"batch {info.id}: {info.status}, collected{note}")

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
        with self.ledger.transaction():
            if codes & REQUEUE_BATCH_CODES:
                # The queue was full, not the rows wrong: they wait and go again, not counted.
                self.ledger.release_rows(
                    job_id,
                    keys,
                    max_attempts=10**9,
                    error_code="token_limit_exceeded",
                    error_message=detail,
                )
            else:
                self.ledger.record_outcomes(
                    job_id,
                    [
                        RowOutcome(
                            k,
                            RowState.FAILED,
                            VIA_BATCH,
                            error_code=next(iter(codes), None) or "batch_failed",
                            error_message=f"batch {info.id} failed: {detail}",
                        )
                        for k in keys
                    ],
                )
            self.ledger.update_shard(
                job_id,
                shard.number,
                state=ShardState.COLLECTED,
                error=detail,
                finished_at=time.time(),
            )
        self.ctx.say(f"batch {info.id}: failed ({detail})")

    # -- the loop ---------------------------------------------------------------------------
    async def run(self, *, wait: bool = True, timeout: float | None = None) -> None:
        """Submit what is pending; with ``wait``, poll until every row has ended."""
        start = time.monotonic()
        interval = self.poll_interval
        while True:
            await self.submit_pending()
            remaining = await self.poll_once()
            if not wait:
                return
            if remaining == 0 and self.ledger.count_rows(self.ctx.job_id, RowState.PENDING) == 0:
                return
            if timeout is not None and time.monotonic() - start > timeout:
                return
            self.ledger.heartbeat(self.ctx.job_id)
            await asyncio.sleep(interval)
            interval = min(interval * 1.5, self.max_poll_interval)

    async def cancel(self) -> None:
        """Ask the provider to cancel every submitted batch of the job."""
        for shard in self.ledger.shards(self.ctx.job_id, active_only=True):
            if shard.batch_id:
                try:
                    info = await self.provider.cancel_batch(shard.batch_id)
                except (Permanent, BatchUnsupported, ConfigError):
                    continue
                except ProviderError:
                    continue
                self.ledger.update_shard(self.ctx.job_id, shard.number, status=info.status)
