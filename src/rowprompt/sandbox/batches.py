"""The Batch API: batch records, their lifecycle worker, enqueued-token accounting.

Each batch runs as one asyncio task on the server's loop; the heavy parts (validating the
input file, answering a chunk of lines, writing result files) run in worker threads so the
event loop keeps serving chat requests while a 200 MB file is processed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .batch_lines import (
    HANDLERS,
    LineResult,
    batch_error,
    execute,
    expired_record,
    parse_input,
    to_jsonl,
)
from .errors import APIError, not_found
from .files import DEFAULT_BATCH_FILE_TTL, make_id
from .model import sandbox_model_name
from .validation import resolve_model

if TYPE_CHECKING:
    from .state import SandboxState

ENDPOINTS = (
    "/v1/responses", "/v1/chat/completions", "/v1/embeddings", "/v1/completions",
    "/v1/moderations", "/v1/images/generations", "/v1/images/edits", "/v1/videos",
)  # fmt: skip
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
TERMINAL = ("completed", "failed", "expired", "cancelled")
_CHUNK = 500
_TICK = 0.02
_log = logging.getLogger("rowprompt.sandbox")


@dataclass
class BatchRecord:
    """One batch: the fields of its ``Batch`` object plus what the worker needs."""

    id: str
    endpoint: str
    input_file_id: str
    metadata: dict[str, str] | None
    output_ttl: int | None
    seq: int
    fault: str | None
    created_at: int = field(default_factory=lambda: int(time.time()))
    started: float = field(default_factory=time.monotonic)
    status: str = "validating"
    model: str | None = None
    base_model: str | None = None
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    stamps: dict[str, int] = field(default_factory=dict)
    total: int = 0
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    enqueued: int = 0
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``Batch`` object."""
        stamp = self.stamps.get
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": None if self.errors is None else {"object": "list", "data": self.errors},
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": stamp("in_progress"),
            "expires_at": self.created_at + 86_400,
            "finalizing_at": stamp("finalizing"),
            "completed_at": stamp("completed"),
            "failed_at": stamp("failed"),
            "expired_at": stamp("expired"),
            "cancelling_at": stamp("cancelling"),
            "cancelled_at": stamp("cancelled"),
            "request_counts": {
                "total": self.total,
                "completed": self.completed,
                "failed": self.failed,
            },
            "metadata": self.metadata,
            "usage": {
                "input_tokens": self.input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": self.output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.input_tokens + self.output_tokens,
            },
        }


def _check_metadata(metadata: Any) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise APIError(400, "Invalid type for 'metadata': expected an object.", param="metadata")
    if len(metadata) > 16:
        raise APIError(
            400,
            f"Invalid 'metadata': too many properties. Expected an object with at most 16 "
            f"properties, but got an object with {len(metadata)} properties instead.",
            param="metadata",
            code="object_above_max_properties",
        )
    for key, value in metadata.items():
        if len(key) > 64:
            raise APIError(
                400,
                f"Invalid 'metadata': key '{key[:20]}...' is too long. Keys may be at most "
                "64 characters.",
                param="metadata",
                code="invalid_value",
            )
        if not isinstance(value, str):
            raise APIError(
                400,
                f"Invalid type for 'metadata.{key}': expected a string.",
                param=f"metadata.{key}",
                code="invalid_type",
            )
        if len(value) > 512:
            raise APIError(
                400,
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum "
                f"length 512, but got a string with length {len(value)} instead.",
                param=f"metadata.{key}",
                code="string_above_max_length",
            )
    return metadata


def _output_ttl(value: Any) -> int | None:
    if value is None:
        return None
    seconds = value.get("seconds") if isinstance(value, dict) else None
    if (
        not isinstance(value, dict)
        or value.get("anchor") != "created_at"
        or not isinstance(seconds, int)
        or not 3600 <= seconds <= 2_592_000
    ):
        raise APIError(
            400,
            "Invalid 'output_expires_after': expected {anchor: 'created_at', seconds} with "
            "3600 <= seconds <= 2592000.",
            param="output_expires_after",
            code="invalid_value",
        )
    return seconds


class BatchManager:
    """All batches of one sandbox. Use it from the event loop thread only."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.batches: dict[str, BatchRecord] = {}
        self._seq = 0
        self.enqueued: dict[str, int] = {}

    def create(self, body: Any) -> BatchRecord:
        """Check the create parameters (400 when bad), then start the batch's worker."""
        if not isinstance(body, dict):
            raise APIError(400, "Invalid type for the request body: expected an object.")
        for key in ("input_file_id", "endpoint", "completion_window"):
            if key not in body or body[key] is None:
                raise APIError(
                    400,
                    f"Missing required parameter: '{key}'.",
                    param=key,
                    code="missing_required_parameter",
                )
        endpoint = body["endpoint"]
        if endpoint not in ENDPOINTS:
            supported = ", ".join(f"'{e}'" for e in ENDPOINTS)
            raise APIError(
                400,
                f"Invalid value: '{endpoint}'. Supported values are: {supported}.",
                param="endpoint",
                code="invalid_value",
            )
        if endpoint not in HANDLERS:
            raise APIError(
                400,
                f"The rowprompt sandbox serves batches for {', '.join(HANDLERS)} only, "
                f"not {endpoint}.",
                param="endpoint",
                code="invalid_value",
            )
        if body["completion_window"] != "24h":
            raise APIError(
                400,
                f"Invalid value: '{body['completion_window']}'. Supported values are: '24h'.",
                param="completion_window",
                code="invalid_value",
            )
        metadata = _check_metadata(body.get("metadata"))
        ttl = _output_ttl(body.get("output_expires_after"))
        file_id = body["input_file_id"]
        stored = self.state.files.find(file_id) if isinstance(file_id, str) else None
        if stored is None:
            raise APIError(
                400,
                f"Invalid 'input_file_id': '{file_id}'. No such File object.",
                param="input_file_id",
                code="invalid_value",
            )
        if stored.purpose != "batch":
            raise APIError(
                400,
                f"Invalid 'input_file_id': file {file_id} has purpose '{stored.purpose}'; "
                "a batch input file must be uploaded with purpose 'batch'.",
                param="input_file_id",
                code="invalid_value",
            )
        self._seq += 1
        record = BatchRecord(
            id=make_id("batch_", 24),
            endpoint=endpoint,
            input_file_id=file_id,
            metadata=metadata,
            output_ttl=ttl,
            seq=self._seq,
            fault=self.state.faults.batch(),
        )
        self.batches[record.id] = record
        self.state.stats.batch_created()
        record.task = asyncio.get_running_loop().create_task(self._run(record, stored.content))
        return record

    def get(self, batch_id: str) -> BatchRecord:
        """The batch, or a 404."""
        found = self.batches.get(batch_id)
        if found is None:
            raise not_found("Batch", batch_id, param="batch_id")
        return found

    def cancel(self, batch_id: str) -> BatchRecord:
        """Move the batch to ``cancelling``; the worker ends it as ``cancelled``."""
        record = self.get(batch_id)
        if record.status in TERMINAL:
            raise APIError(
                400,
                f"Cannot cancel a batch with status '{record.status}'.",
                param="batch_id",
            )
        if record.status != "cancelling":
            self._move(record, "cancelling")
            record.cancel.set()
        return record

    def listing(self, after: str | None, limit: int) -> dict[str, Any]:
        """The ``ListBatchesResponse`` body, newest first."""
        items = sorted(self.batches.values(), key=lambda b: b.seq, reverse=True)
        if after:
            ids = [b.id for b in items]
            if after not in ids:
                raise not_found("Batch", after, param="after")
            items = items[ids.index(after) + 1 :]
        page = items[:limit]
        data = [b.to_dict() for b in page]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(items) > len(page),
        }

    def _move(self, record: BatchRecord, status: str) -> None:
        record.status = status
        record.stamps[status] = int(time.time())
        if status in TERMINAL:
            self.state.stats.batch_final(status)

    def _enqueue(self, model: str, tokens: int) -> None:
        self.enqueued[model] = self.enqueued.get(model, 0) + tokens
        self.state.stats.set_enqueued(model, self.enqueued[model])

    async def _pause(self, record: BatchRecord, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking early on cancel or expiry; True when cancelled."""
        deadline = record.started + self.state.config.window_seconds
        wait = min(seconds, max(0.0, deadline - time.monotonic()))
        if wait > 0 and not record.cancel.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(record.cancel.wait(), wait)
        return record.cancel.is_set()

    def _window_closed(self, record: BatchRecord) -> bool:
        return time.monotonic() >= record.started + self.state.config.window_seconds

    async def _run(self, record: BatchRecord, content: bytes) -> None:
        try:
            await self._lifecycle(record, content)
        except Exception as exc:
            # A sandbox bug: the batch fails and says why, rather than staying active forever.
            _log.error("batch %s failed: %s: %s", record.id, type(exc).__name__, exc)
            self.state.stats.count_internal_error()
            if record.status not in TERMINAL:
                record.errors = [
                    batch_error(
                        "server_error",
                        "The batch could not be processed: the rowprompt sandbox hit an "
                        f"internal error ({type(exc).__name__}).",
                    )
                ]
                self._move(record, "failed")
        finally:
            if record.enqueued and record.base_model is not None:
                self._enqueue(record.base_model, -record.enqueued)
                record.enqueued = 0

    async def _lifecycle(self, record: BatchRecord, content: bytes) -> None:
        state = self.state
        cfg = state.config
        if await self._pause(record, cfg.batch_validating_seconds):
            await self._finish_cancel(record, content, [])
            return
        parsed = await asyncio.to_thread(
            parse_input,
            content,
            record.endpoint,
            cfg.max_batch_requests,
            cfg.max_batch_bytes,
            state.models,
        )
        if record.cancel.is_set():
            await self._finish_cancel(record, content, [])
            return
        if self._window_closed(record):
            self._move(record, "expired")
            return
        errors = parsed.errors
        base = resolve_model(parsed.model or "", state.models)
        if not errors and base is None:
            errors = [
                batch_error(
                    "model_not_found",
                    f"The model `{parsed.model}` does not exist or you do not have access to it.",
                    param="body.model",
                )
            ]
        if not errors and record.fault == "fail":
            state.stats.count_fault("batch_fail")
            errors = [
                batch_error(
                    "invalid_json_line", "This line is not parseable as valid JSON.", line=1
                )
            ]
        if not errors and base is not None:
            limit = cfg.token_limit_for(base)
            if limit is not None and self.enqueued.get(base, 0) + parsed.tokens > limit:
                errors = [
                    batch_error(
                        "token_limit_exceeded",
                        f"Enqueued token limit reached for {parsed.model} in organization "
                        f"org-sandbox. Limit: {limit:,} enqueued tokens. Please try again once "
                        "some in_progress batches have been completed.",
                    )
                ]
        if errors or base is None:
            record.errors = errors
            self._move(record, "failed")
            return
        record.model = sandbox_model_name(base)
        record.base_model = base
        record.enqueued = parsed.tokens
        self._enqueue(base, parsed.tokens)
        record.total = len(parsed.spans)
        self._move(record, "in_progress")
        results = await self._process(record, content, parsed.spans)
        if record.cancel.is_set():
            await self._finish_cancel(record, content, results)
            return
        if len(results) < len(parsed.spans):
            done = {r.custom_id for r in results}
            missing = [cid for cid, _, _ in parsed.spans if cid not in done]
            if record.fault == "expire":
                state.stats.count_fault("batch_expire")
            await self._write_files(record, results, [expired_record(c) for c in missing])
            self._move(record, "expired")
            return
        self._move(record, "finalizing")
        if await self._pause(record, cfg.batch_finalizing_seconds):
            await self._finish_cancel(record, content, results)
            return
        await self._write_files(record, results, [])
        self._move(record, "completed")

    async def _process(
        self, record: BatchRecord, content: bytes, spans: list[tuple[str, int, int]]
    ) -> list[LineResult]:
        """Answer lines at ``batch_rows_per_second`` until done, cancelled or expired."""
        state = self.state
        cfg = state.config
        results: list[LineResult] = []
        begin = time.monotonic()
        stop_at = len(spans) // 2 if record.fault == "expire" else len(spans)
        while len(results) < stop_at:
            if record.cancel.is_set() or self._window_closed(record):
                break
            due = int((time.monotonic() - begin) * cfg.batch_rows_per_second) - len(results)
            due = min(due, _CHUNK, stop_at - len(results))
            if due <= 0:
                await self._pause(record, min(_TICK, 1.0 / cfg.batch_rows_per_second))
                continue
            chunk = spans[len(results) : len(results) + due]
            done = await asyncio.to_thread(
                execute, content, chunk, state.models, cfg.seed, state.rules, record.endpoint
            )
            for result in done:
                state.stats.batch_line(result.custom_id, result.status_code)
                if result.status_code == 200:
                    record.completed += 1
                else:
                    record.failed += 1
                record.input_tokens += result.prompt_tokens
                record.output_tokens += result.completion_tokens
            results.extend(done)
        return results

    async def _finish_cancel(
        self, record: BatchRecord, content: bytes, results: list[LineResult]
    ) -> None:
        if record.status != "cancelling":
            self._move(record, "cancelling")
        await asyncio.sleep(self.state.config.batch_finalizing_seconds)
        if results:
            await self._write_files(record, results, [])
        self._move(record, "cancelled")

    async def _write_files(
        self, record: BatchRecord, results: list[LineResult], extra_errors: list[dict[str, Any]]
    ) -> None:
        """Output and error files, lines shuffled; missing or truncated lines where the
        faults say so."""
        state = self.state
        rng = random.Random(f"{state.config.seed}:{record.seq}")
        good = [r.record for r in results if r.status_code == 200]
        bad = [r.record for r in results if r.status_code != 200] + extra_errors
        dropped = state.faults.drop_output_lines(len(good))
        if dropped:
            state.stats.count_fault("output_missing_lines", len(dropped))
            good = [line for i, line in enumerate(good) if i not in dropped]
        rng.shuffle(good)
        rng.shuffle(bad)
        cut = state.faults.truncate_output_lines(len(good))
        if cut:
            state.stats.count_fault("output_truncated_lines", len(cut))
        ttl = record.output_ttl or DEFAULT_BATCH_FILE_TTL
        if good or (results and record.completed):
            data = await asyncio.to_thread(to_jsonl, good, cut)
            stored = state.files.add(f"{record.id}_output.jsonl", "batch_output", data, ttl)
            record.output_file_id = stored.id
        if bad:
            data = await asyncio.to_thread(to_jsonl, bad)
            stored = state.files.add(f"{record.id}_error.jsonl", "batch_output", data, ttl)
            record.error_file_id = stored.id
