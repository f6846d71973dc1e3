"""Anthropic Message Batches in the sandbox: create, lifecycle worker, results.

``in_progress`` (requests answered at ``batch_rows_per_second``) → ``ended``; a cancel moves
the batch to ``canceling`` and then ``ended`` with the unprocessed requests ``canceled``; the
completion window (``86400 × time_scale``) ends the rest as ``expired``. As the reference
says, ``request_counts`` hold every request under ``processing`` until the batch ends. Each
request's ``params`` are checked only when it runs: a bad one is an ``errored`` result, not
a failed create. The sandbox's batch faults map as: ``expire`` → half the requests
``expired``; ``fail`` (Anthropic has no failed batches) → every request ``errored`` with an
``api_error``; ``output_drop_rate`` → succeeded lines missing from the results.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import string
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from .anthropic_model import (
    ANTHROPIC_MODELS,
    CUSTOM_ID,
    AnthropicError,
    message_body,
    parse_messages_request,
    rfc3339,
)
from .errors import APIError

if TYPE_CHECKING:
    from .model import Rule
    from .state import SandboxState

MAX_REQUESTS: Final = 100_000
MAX_BYTES: Final = 256 * 1024 * 1024
_CHUNK = 500
_TICK = 0.02
_ID_CHARS = string.ascii_letters + string.digits


@dataclass
class MessageBatchRecord:
    """One Message Batch and what its worker needs."""

    id: str
    requests: list[tuple[str, dict[str, Any]]]
    seq: int
    fault: str | None
    created: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    status: str = "in_progress"
    ended_at: float | None = None
    cancel_at: float | None = None
    results: list[dict[str, Any]] = field(default_factory=list)
    content: bytes = b""
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def counts(self) -> dict[str, int]:
        """``request_counts``: all ``processing`` until the batch has ended."""
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if self.status != "ended":
            counts["processing"] = len(self.requests)
            return counts
        for result in self.results:
            counts[result["result"]["type"]] += 1
        return counts

    def to_dict(self, base_url: str) -> dict[str, Any]:
        """The ``MessageBatch`` object; ``results_url`` once ended."""
        ended = self.status == "ended"
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": self.status,
            "request_counts": self.counts(),
            "ended_at": rfc3339(self.ended_at) if self.ended_at else None,
            "created_at": rfc3339(self.created),
            "expires_at": rfc3339(self.created + 86_400),
            "archived_at": None,
            "cancel_initiated_at": rfc3339(self.cancel_at) if self.cancel_at else None,
            "results_url": f"{base_url}/v1/messages/batches/{self.id}/results" if ended else None,
        }


def _check_requests(body: Any) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(body, dict) or "requests" not in body:
        raise AnthropicError(400, "requests: Field required")
    for name in body:
        if name != "requests":
            raise AnthropicError(400, f"{name}: Extra inputs are not permitted")
    items = body["requests"]
    if not isinstance(items, list):
        raise AnthropicError(400, "requests: Input should be a valid list")
    if not items:
        raise AnthropicError(400, "requests: List should have at least 1 item after validation")
    if len(items) > MAX_REQUESTS:
        raise AnthropicError(
            400,
            f"requests: List should have at most {MAX_REQUESTS} items after validation, "
            f"not {len(items)}",
        )
    seen: set[str] = set()
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise AnthropicError(400, f"requests.{i}: Input should be a valid dictionary")
        custom_id, params = item.get("custom_id"), item.get("params")
        if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
            raise AnthropicError(
                400,
                f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'",
            )
        if custom_id in seen:
            raise AnthropicError(
                400, f"Duplicate custom_id '{custom_id}': each request needs a unique custom_id."
            )
        if not isinstance(params, dict):
            raise AnthropicError(400, f"requests.{i}.params: Field required")
        if params.get("stream"):
            raise AnthropicError(400, f"requests.{i}.params.stream: streaming is not supported")
        seen.add(custom_id)
        out.append((custom_id, params))
    return out


def execute(
    requests: list[tuple[str, dict[str, Any]]],
    models: frozenset[str],
    seed: int,
    rules: tuple[Rule, ...],
) -> list[dict[str, Any]]:
    """Result lines for these requests, answered as ``/v1/messages`` would answer them."""
    lines = []
    for custom_id, params in requests:
        try:
            req = parse_messages_request(params, models)
            message = message_body(req, seed, rules)
        except APIError as exc:
            error = exc if isinstance(exc, AnthropicError) else AnthropicError(exc.status, str(exc))
            result: dict[str, Any] = {"type": "errored", "error": error.body()}
        else:
            result = {"type": "succeeded", "message": message}
        lines.append({"custom_id": custom_id, "result": result})
    return lines


class AnthropicBatches:
    """All Message Batches of one sandbox. Use it from the event loop thread only."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.batches: dict[str, MessageBatchRecord] = {}
        self._seq = 0

    def create(self, body: Any) -> MessageBatchRecord:
        """Check the requests (a 400 when bad), then start the batch's worker."""
        size = len(json.dumps(body, ensure_ascii=False).encode()) if body is not None else 0
        if size > MAX_BYTES:
            raise AnthropicError(413, f"Request exceeds the maximum size of {MAX_BYTES} bytes.")
        requests = _check_requests(body)
        self._seq += 1
        record = MessageBatchRecord(
            id="msgbatch_" + "".join(secrets.choice(_ID_CHARS) for _ in range(24)),
            requests=requests,
            seq=self._seq,
            fault=self.state.faults.batch(),
        )
        self.batches[record.id] = record
        self.state.stats.batch_created()
        record.task = asyncio.get_running_loop().create_task(self._run(record))
        return record

    def get(self, batch_id: str) -> MessageBatchRecord:
        """The batch, or a 404 ``not_found_error``."""
        found = self.batches.get(batch_id)
        if found is None:
            raise AnthropicError(404, f"No message batch found with id '{batch_id}'.")
        return found

    def cancel(self, batch_id: str) -> MessageBatchRecord:
        """Start cancelling; an ended batch is returned as it is."""
        record = self.get(batch_id)
        if record.status == "in_progress":
            record.status = "canceling"
            record.cancel_at = time.time()
            record.cancel.set()
        return record

    def delete(self, batch_id: str) -> dict[str, Any]:
        """Forget an ended batch; a batch still processing cannot be deleted."""
        record = self.get(batch_id)
        if record.status != "ended":
            raise AnthropicError(
                400, f"Batch {batch_id} cannot be deleted while it is still processing."
            )
        del self.batches[batch_id]
        return {"id": batch_id, "type": "message_batch_deleted"}

    def results(self, batch_id: str) -> bytes:
        """The results file (JSONL); a 400 before the batch has ended."""
        record = self.get(batch_id)
        if record.status != "ended":
            raise AnthropicError(
                400, f"Batch {batch_id} has not ended yet; results are not available."
            )
        return record.content

    def listing(
        self, base_url: str, limit: int, after_id: str | None, before_id: str | None
    ) -> dict[str, Any]:
        """A page of batches, newest first, with ``has_more``, ``first_id``, ``last_id``."""
        items = sorted(self.batches.values(), key=lambda b: b.seq, reverse=True)
        ids = [b.id for b in items]
        if after_id is not None:
            items = items[ids.index(after_id) + 1 :] if after_id in ids else []
        elif before_id is not None:
            items = items[: ids.index(before_id)] if before_id in ids else []
            items = items[-limit:]
        page = items[:limit]
        data = [b.to_dict(base_url) for b in page]
        return {
            "data": data,
            "has_more": len(items) > len(page),
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }

    # -- the worker -------------------------------------------------------------------------
    async def _run(self, record: MessageBatchRecord) -> None:
        cfg = self.state.config
        begin = time.monotonic()
        deadline = record.started + cfg.window_seconds
        total = len(record.requests)
        stop_at = total // 2 if record.fault == "expire" else total
        models = self.state.models | frozenset(ANTHROPIC_MODELS)
        done: list[dict[str, Any]] = []
        while len(done) < stop_at and not record.cancel.is_set():
            if time.monotonic() >= deadline:
                break
            due = int((time.monotonic() - begin) * cfg.batch_rows_per_second) - len(done)
            due = min(due, _CHUNK, stop_at - len(done))
            if due <= 0:
                with contextlib.suppress(TimeoutError):
                    wait = min(_TICK, 1.0 / cfg.batch_rows_per_second)
                    await asyncio.wait_for(record.cancel.wait(), wait)
                continue
            chunk = record.requests[len(done) : len(done) + due]
            if record.fault == "fail":
                lines = [_server_error(custom_id) for custom_id, _ in chunk]
            else:
                lines = await asyncio.to_thread(execute, chunk, models, cfg.seed, self.state.rules)
            for line in lines:
                ok = line["result"]["type"] == "succeeded"
                self.state.stats.batch_line(line["custom_id"], 200 if ok else 400)
            done.extend(lines)
        if record.fault == "fail":
            self.state.stats.count_fault("batch_fail")
        if record.cancel.is_set():
            await asyncio.sleep(cfg.batch_finalizing_seconds)
            rest = {"type": "canceled"}
            final = "cancelled"
        else:
            rest = {"type": "expired"}
            final = "expired" if len(done) < total else "completed"
            if record.fault == "expire":
                self.state.stats.count_fault("batch_expire")
        lines = done + [{"custom_id": c, "result": rest} for c, _ in record.requests[len(done) :]]
        record.results = lines
        record.content = await asyncio.to_thread(self._results_file, record)
        record.status = "ended"
        record.ended_at = time.time()
        self.state.stats.batch_final(final)

    def _results_file(self, record: MessageBatchRecord) -> bytes:
        lines = list(record.results)
        good = [i for i, line in enumerate(lines) if line["result"]["type"] == "succeeded"]
        dropped = self.state.faults.drop_output_lines(len(good))
        if dropped:
            self.state.stats.count_fault("output_missing_lines", len(dropped))
            gone = {good[i] for i in dropped}
            lines = [line for i, line in enumerate(lines) if i not in gone]
        random.Random(f"{self.state.config.seed}:anthropic:{record.seq}").shuffle(lines)
        return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()


def _server_error(custom_id: str) -> dict[str, Any]:
    error = AnthropicError(500, "Internal server error")
    return {"custom_id": custom_id, "result": {"type": "errored", "error": error.body()}}
