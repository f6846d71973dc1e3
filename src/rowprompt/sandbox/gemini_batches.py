"""Gemini batch mode in the sandbox: the File API (resumable uploads) and batch jobs.

An upload is the resumable protocol the ``google-genai`` SDK speaks: ``POST
/upload/v1beta/files`` with ``X-Goog-Upload-Command: start`` is answered with an
``x-goog-upload-url``; the bytes then go there in chunks, the last one ``upload, finalize``.

A batch (``POST /v1beta/models/{model}:batchGenerateContent``, a file or inlined requests) is
an operation whose state moves ``BATCH_STATE_PENDING`` (``batch_validating_seconds``) →
``RUNNING`` (requests answered at ``batch_rows_per_second``, then
``batch_finalizing_seconds``) → ``SUCCEEDED``, with the results in order in a generated file
(``output.responsesFile``) or inline. A cancel ends it ``CANCELLED`` with the results so far;
the 48 h window (``2 × 86400 × time_scale``) ends it ``EXPIRED`` without results. A batch
that would take the model's enqueued tokens over ``enqueued_token_limit`` is refused at create
with a 429 ``RESOURCE_EXHAUSTED``. Each line
is checked when it runs: a bad one gets a ``google.rpc.Status`` error line. The batch faults
map as: ``fail`` → ``FAILED`` with an internal error; ``expire`` → ``EXPIRED`` once half the
requests are done; ``output_drop_rate`` → succeeded lines missing from the results.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import string
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from fastapi import FastAPI, Request
from fastapi.responses import Response

from rowprompt.tokens import count_messages

from .errors import APIError
from .gemini_face import (
    GeminiError,
    check_model,
    from_openai_error,
    json_answer,
    models_of,
    parse_request,
    quota_error,
    read_json,
    response_body,
)

if TYPE_CHECKING:
    from .model import Rule
    from .state import SandboxState

MAX_FILE_BYTES: Final = 2 * 1024**3
MAX_INLINE_BYTES: Final = 20 * 1024 * 1024
FILE_TTL_S: Final = 48 * 3600
BATCH_TYPE: Final = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
OUTPUT_TYPE: Final = (
    "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"
)
TERMINAL: Final = ("BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED",
                   "BATCH_STATE_EXPIRED")  # fmt: skip
_FINAL_NAMES = {"BATCH_STATE_SUCCEEDED": "completed", "BATCH_STATE_FAILED": "failed",
                "BATCH_STATE_CANCELLED": "cancelled", "BATCH_STATE_EXPIRED": "expired"}  # fmt: skip
_CHUNK = 500
_TICK = 0.02
_ID_CHARS = string.ascii_lowercase + string.digits


def _id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ID_CHARS) for _ in range(16))


def timestamp(moment: float) -> str:
    """A Unix time as Google writes timestamps: RFC 3339 in UTC with microseconds."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _not_found() -> GeminiError:
    return GeminiError(404, "Requested entity was not found.")


# -- files ----------------------------------------------------------------------------------
@dataclass
class GeminiFile:
    """One file of the File API."""

    id: str
    display_name: str | None
    mime_type: str
    content: bytes
    source: str = "UPLOADED"
    created: float = field(default_factory=time.time)

    def to_dict(self, base_url: str) -> dict[str, Any]:
        """The ``File`` resource."""
        data: dict[str, Any] = {
            "name": f"files/{self.id}",
            "mimeType": self.mime_type,
            "sizeBytes": str(len(self.content)),
            "createTime": timestamp(self.created),
            "updateTime": timestamp(self.created),
            "expirationTime": timestamp(self.created + FILE_TTL_S),
            "uri": f"{base_url}/v1beta/files/{self.id}",
            "state": "ACTIVE",
            "source": self.source,
        }
        if self.display_name:
            data["displayName"] = self.display_name
        if self.source == "GENERATED":
            data["downloadUri"] = f"{base_url}/download/v1beta/files/{self.id}:download?alt=media"
        return data


@dataclass
class _Upload:
    display_name: str | None
    mime_type: str
    size: int
    data: bytearray = field(default_factory=bytearray)


class GeminiFiles:
    """Files and upload sessions of one sandbox's Gemini face."""

    def __init__(self) -> None:
        self.files: dict[str, GeminiFile] = {}
        self._uploads: dict[str, _Upload] = {}
        self._lock = threading.Lock()

    def start(self, body: Any, headers: Any) -> str:
        """Open a resumable upload; returns its upload id."""
        meta = body.get("file") if isinstance(body, dict) else None
        meta = meta if isinstance(meta, dict) else {}
        try:
            size = int(headers.get("x-goog-upload-header-content-length") or -1)
        except ValueError:
            size = -1
        if size < 0:
            raise GeminiError(400, "X-Goog-Upload-Header-Content-Length is required.")
        if size > MAX_FILE_BYTES:
            raise GeminiError(400, f"File size {size} exceeds the maximum of {MAX_FILE_BYTES}.")
        mime = (
            headers.get("x-goog-upload-header-content-type")
            or meta.get("mimeType")
            or meta.get("mime_type")
        )
        if not mime:
            raise GeminiError(400, "Unknown mime type: set the file's mimeType.")
        upload_id = secrets.token_urlsafe(24)
        display = meta.get("displayName") or meta.get("display_name")
        with self._lock:
            self._uploads[upload_id] = _Upload(display, str(mime), size)
        return upload_id

    def chunk(self, upload_id: str, command: str, offset: int, data: bytes) -> GeminiFile | None:
        """Take one chunk; the file once ``finalize`` came, else None (still ``active``)."""
        with self._lock:
            upload = self._uploads.get(upload_id)
            if upload is None:
                raise GeminiError(404, "The upload session was not found or has expired.")
            if offset != len(upload.data):
                raise GeminiError(400, f"Invalid offset {offset}: {len(upload.data)} bytes held.")
            upload.data.extend(data)
            if len(upload.data) > upload.size:
                del self._uploads[upload_id]
                raise GeminiError(400, "More bytes were sent than the upload announced.")
            if "finalize" not in command:
                return None
            del self._uploads[upload_id]
            if len(upload.data) != upload.size:
                raise GeminiError(
                    400, f"The upload announced {upload.size} bytes but sent {len(upload.data)}."
                )
            stored = GeminiFile(
                _id("file-"), upload.display_name, upload.mime_type, bytes(upload.data)
            )
            self.files[stored.id] = stored
            return stored

    def add_generated(self, display_name: str, content: bytes) -> GeminiFile:
        """A file the service wrote (a batch's results)."""
        stored = GeminiFile(_id("file-"), display_name, "application/jsonl", content, "GENERATED")
        with self._lock:
            self.files[stored.id] = stored
        return stored

    def get(self, name: str) -> GeminiFile:
        """The file by ``files/ID`` or ``ID``; a 404 when unknown."""
        with self._lock:
            found = self.files.get(name.removeprefix("files/"))
        if found is None:
            raise GeminiError(
                403, f"You do not have permission to access the File {name} or it may not exist."
            )
        return found

    def delete(self, name: str) -> None:
        """Forget a file."""
        self.get(name)
        with self._lock:
            self.files.pop(name.removeprefix("files/"), None)


# -- batches --------------------------------------------------------------------------------
@dataclass
class GeminiBatch:
    """One batch operation and what its worker needs."""

    id: str
    model: str
    display_name: str
    input_config: dict[str, Any]
    source: bytes | list[tuple[str, Any]]
    seq: int
    fault: str | None
    created: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    state: str = "BATCH_STATE_PENDING"
    updated: float = field(default_factory=time.time)
    ended: float | None = None
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    enqueued: int = 0
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def to_operation(self) -> dict[str, Any]:
        """The batch as the ``Operation`` Gemini answers with."""
        stats = {
            "requestCount": str(self.total),
            "successfulRequestCount": str(self.succeeded),
            "failedRequestCount": str(self.failed),
            "pendingRequestCount": str(max(0, self.total - self.succeeded - self.failed)),
        }
        meta: dict[str, Any] = {
            "@type": BATCH_TYPE,
            "model": f"models/{self.model}",
            "displayName": self.display_name,
            "inputConfig": self.input_config,
            "createTime": timestamp(self.created),
            "updateTime": timestamp(self.updated),
            "batchStats": stats,
            "state": self.state,
            "name": f"batches/{self.id}",
        }
        if self.ended is not None:
            meta["endTime"] = timestamp(self.ended)
        op: dict[str, Any] = {"name": f"batches/{self.id}", "metadata": meta}
        if self.output is not None:
            meta["output"] = self.output
        if self.state in TERMINAL:
            op["done"] = True
            if self.error is not None:
                op["error"] = self.error
            elif self.output is not None:
                op["response"] = {"@type": OUTPUT_TYPE, **self.output}
        return op


def _parse_lines(content: bytes) -> list[tuple[str, Any]]:
    """The ``(key, request)`` pairs of an input file; a 400 naming the first bad line."""
    pairs = []
    for number, raw in enumerate(content.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            raise GeminiError(400, f"Invalid JSON in line {number} of the input file.") from None
        if not isinstance(line, dict) or not isinstance(line.get("request"), dict):
            raise GeminiError(400, f"Line {number} of the input file has no 'request' object.")
        pairs.append((str(line.get("key") or number), line["request"]))
    if not pairs:
        raise GeminiError(400, "The input file holds no requests.")
    return pairs


def estimate_tokens(
    source: bytes | list[tuple[str, Any]], model: str, models: Collection[str]
) -> int:
    """Enqueued tokens of a batch: each request's prompt estimate and output allowance."""
    try:
        pairs = _parse_lines(source) if isinstance(source, bytes) else source
    except GeminiError:
        return 0  # the worker fails the batch for its bad line
    total = 0
    for _, request in pairs:
        try:
            req = parse_request(request, model, models)
        except APIError:
            continue
        total += count_messages(req.messages, req.base_model) + (req.max_tokens or 0)
    return total


def execute(
    pairs: Sequence[tuple[str, Any]],
    model: str,
    models: Collection[str],
    seed: int,
    rules: Sequence[Rule],
) -> list[tuple[str, dict[str, Any] | None, dict[str, Any] | None]]:
    """``(key, response, error)`` for each request, answered as generateContent would."""
    out: list[tuple[str, dict[str, Any] | None, dict[str, Any] | None]] = []
    for key, request in pairs:
        try:
            req = parse_request(request, model, models)
            out.append((key, response_body(req, seed, rules), None))
        except APIError as exc:
            out.append((key, None, from_openai_error(exc, model).rpc_status()))
    return out


class GeminiBatches:
    """All Gemini batches of one sandbox. Use it from the event loop thread only."""

    def __init__(self, state: SandboxState, files: GeminiFiles) -> None:
        self.state = state
        self.files = files
        self.batches: dict[str, GeminiBatch] = {}
        self.enqueued: dict[str, int] = {}
        self._seq = 0

    async def create(self, model: str, body: Any) -> GeminiBatch:
        """Check the create request and the queue (an error when refused), start the worker.

        With an enqueued-token limit for the model, a batch that would go over it is refused
        at once with a 429 ``RESOURCE_EXHAUSTED`` (no batch is created).
        """
        base = check_model(model, models_of(self.state), "batchGenerateContent")
        batch = body.get("batch") if isinstance(body, dict) else None
        if not isinstance(batch, dict):
            raise GeminiError(400, "* BatchGenerateContentRequest.batch: batch is required.")
        config = batch.get("inputConfig") or batch.get("input_config")
        if not isinstance(config, dict):
            raise GeminiError(400, "* batch.input_config: input_config is required.")
        source: bytes | list[tuple[str, Any]]
        name = config.get("fileName") or config.get("file_name")
        if name is not None:
            source = self.files.get(str(name)).content
        else:
            holder = config.get("requests") or {}
            items = holder.get("requests") if isinstance(holder, dict) else None
            if not isinstance(items, list) or not items:
                raise GeminiError(400, "* batch.input_config: a file_name or requests is required.")
            if len(json.dumps(items).encode()) > MAX_INLINE_BYTES:
                raise GeminiError(
                    400, f"Request payload size exceeds the limit: {MAX_INLINE_BYTES} bytes."
                )
            source = [
                (str((item.get("metadata") or {}).get("key") or i), item.get("request"))
                for i, item in enumerate(items, 1)
                if isinstance(item, dict)
            ]
        tokens = 0
        limit = self.state.config.token_limit_for(base)
        if limit is not None:
            models = models_of(self.state)
            tokens = await asyncio.to_thread(estimate_tokens, source, base, models)
            if self.enqueued.get(base, 0) + tokens > limit:
                raise quota_error(base, "BatchEnqueuedTokensPerModelPerProject", None)
        self._seq += 1
        record = GeminiBatch(
            id=_id("batch_"),
            model=base,
            display_name=str(batch.get("displayName") or batch.get("display_name") or ""),
            input_config=config,
            source=source,
            seq=self._seq,
            fault=self.state.faults.batch(),
            enqueued=tokens,
        )
        self.batches[record.id] = record
        self._enqueue(base, tokens)
        self.state.stats.batch_created()
        record.task = asyncio.get_running_loop().create_task(self._run(record))
        return record

    def _enqueue(self, model: str, tokens: int) -> None:
        if tokens:
            self.enqueued[model] = self.enqueued.get(model, 0) + tokens
            self.state.stats.set_enqueued(model, self.enqueued[model])

    def get(self, name: str) -> GeminiBatch:
        """The batch by ``batches/ID`` or ``ID``; a 404 when unknown."""
        found = self.batches.get(name.removeprefix("batches/"))
        if found is None:
            raise _not_found()
        return found

    def cancel(self, name: str) -> None:
        """Ask the worker to stop; a batch that has ended stays as it is."""
        record = self.get(name)
        if record.state not in TERMINAL:
            record.cancel.set()

    def delete(self, name: str) -> None:
        """Forget a batch (cancelling it first if it still runs)."""
        record = self.get(name)
        record.cancel.set()
        self.batches.pop(record.id, None)

    def listing(self, page_size: int, token: str | None) -> dict[str, Any]:
        """A page of batches, newest first; ``nextPageToken`` while more remain."""
        items = sorted(self.batches.values(), key=lambda b: b.seq, reverse=True)
        if token:
            ids = [b.id for b in items]
            if token not in ids:
                raise GeminiError(400, "Invalid page token.")
            items = items[ids.index(token) + 1 :]
        page = items[:page_size]
        data: dict[str, Any] = {"operations": [b.to_operation() for b in page]}
        if len(items) > len(page):
            data["nextPageToken"] = page[-1].id
        return data

    # -- the worker -------------------------------------------------------------------------
    def _move(self, record: GeminiBatch, state: str) -> None:
        record.state = state
        record.updated = time.time()
        if state in TERMINAL:
            record.ended = record.updated
            self.state.stats.batch_final(_FINAL_NAMES[state])

    async def _pause(self, record: GeminiBatch, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking on cancel; True when cancelled."""
        if seconds > 0 and not record.cancel.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(record.cancel.wait(), seconds)
        return record.cancel.is_set()

    async def _run(self, record: GeminiBatch) -> None:
        try:
            await self._lifecycle(record)
        finally:
            self._enqueue(record.model, -record.enqueued)
            record.enqueued = 0

    async def _lifecycle(self, record: GeminiBatch) -> None:
        cfg = self.state.config
        if await self._pause(record, cfg.batch_validating_seconds):
            self._move(record, "BATCH_STATE_CANCELLED")
            return
        try:
            if isinstance(record.source, bytes):
                pairs = await asyncio.to_thread(_parse_lines, record.source)
            else:
                pairs = record.source
        except GeminiError as exc:
            record.error = exc.rpc_status()
            self._move(record, "BATCH_STATE_FAILED")
            return
        if record.fault == "fail":
            self.state.stats.count_fault("batch_fail")
            record.error = GeminiError(500, "Batch failed due to an internal error.").rpc_status()
            self._move(record, "BATCH_STATE_FAILED")
            return
        record.total = len(pairs)
        self._move(record, "BATCH_STATE_RUNNING")
        done = await self._process(record, pairs)
        if record.cancel.is_set():
            await asyncio.sleep(cfg.batch_finalizing_seconds)
            if done:
                await self._write(record, done)
            self._move(record, "BATCH_STATE_CANCELLED")
        elif len(done) < len(pairs):
            if record.fault == "expire":
                self.state.stats.count_fault("batch_expire")
            self._move(record, "BATCH_STATE_EXPIRED")  # expired batches return no results
        elif await self._pause(record, cfg.batch_finalizing_seconds):
            await self._write(record, done)
            self._move(record, "BATCH_STATE_CANCELLED")
        else:
            await self._write(record, done)
            self._move(record, "BATCH_STATE_SUCCEEDED")

    async def _process(
        self, record: GeminiBatch, pairs: list[tuple[str, Any]]
    ) -> list[tuple[str, dict[str, Any] | None, dict[str, Any] | None]]:
        cfg = self.state.config
        deadline = record.started + 2 * cfg.window_seconds  # Gemini's window is 48 h
        stop_at = len(pairs) // 2 if record.fault == "expire" else len(pairs)
        models = models_of(self.state)
        begin = time.monotonic()
        done: list[tuple[str, dict[str, Any] | None, dict[str, Any] | None]] = []
        while len(done) < stop_at and not record.cancel.is_set():
            if time.monotonic() >= deadline:
                break
            due = int((time.monotonic() - begin) * cfg.batch_rows_per_second) - len(done)
            due = min(due, _CHUNK, stop_at - len(done))
            if due <= 0:
                await self._pause(record, min(_TICK, 1.0 / cfg.batch_rows_per_second))
                continue
            chunk = pairs[len(done) : len(done) + due]
            lines = await asyncio.to_thread(
                execute, chunk, record.model, models, cfg.seed, self.state.rules
            )
            for key, response, error in lines:
                status = 200 if response is not None else 400
                if error is not None and error.get("code") in (4, 13, 14):
                    status = 500  # a server-side failure of the line
                self.state.stats.batch_line(key, status)
                if response is not None:
                    record.succeeded += 1
                else:
                    record.failed += 1
            record.updated = time.time()
            done.extend(lines)
        return done

    async def _write(
        self,
        record: GeminiBatch,
        done: list[tuple[str, dict[str, Any] | None, dict[str, Any] | None]],
    ) -> None:
        """The results, in input order; succeeded lines dropped where the fault says so."""
        good = [i for i, (_, response, _) in enumerate(done) if response is not None]
        dropped = self.state.faults.drop_output_lines(len(good))
        if dropped:
            self.state.stats.count_fault("output_missing_lines", len(dropped))
            gone = {good[i] for i in dropped}
            done = [line for i, line in enumerate(done) if i not in gone]
        if isinstance(record.source, list):
            inline = [
                {"response": r, "metadata": {"key": k}} if r is not None
                else {"error": e, "metadata": {"key": k}}
                for k, r, e in done
            ]  # fmt: skip
            record.output = {"inlinedResponses": {"inlinedResponses": inline}}
            return
        content = await asyncio.to_thread(_results_file, done)
        stored = self.files.add_generated(f"batch-{record.id}", content)
        record.output = {"responsesFile": f"files/{stored.id}"}


def _results_file(done: list[tuple[str, dict[str, Any] | None, dict[str, Any] | None]]) -> bytes:
    lines = (
        {"key": k, "response": r} if r is not None else {"key": k, "error": e} for k, r, e in done
    )
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()


# -- routes ---------------------------------------------------------------------------------
def mount_batches(app: FastAPI, state: SandboxState) -> GeminiBatches:
    """Add the File API and batch routes to ``app``; returns the face's batch store."""
    files = GeminiFiles()
    batches = GeminiBatches(state, files)

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    @app.post("/upload/v1beta/files")
    async def upload(request: Request) -> Response:
        command = request.headers.get("x-goog-upload-command", "").lower()
        final = {"x-goog-upload-status": "final"}
        try:
            if command == "start":
                upload_id = files.start(await read_json(request), request.headers)
                url = f"{base(request)}/upload/v1beta/files?upload_id={upload_id}"
                url += "&upload_protocol=resumable"
                headers = {"x-goog-upload-url": url, "x-goog-upload-status": "active"}
                return Response(b"", headers=headers)
            upload_id = request.query_params.get("upload_id", "")
            offset = int(request.headers.get("x-goog-upload-offset") or 0)
            stored = files.chunk(upload_id, command, offset, await request.body())
        except GeminiError as exc:
            # Every answer says the upload's status, or the SDK sends the chunk again.
            return json_answer(exc.body(), exc.status, final)
        except ValueError:
            error = GeminiError(400, "X-Goog-Upload-Offset must be a number.")
            return json_answer(error.body(), 400, final)
        if stored is None:
            return Response(b"", headers={"x-goog-upload-status": "active"})
        return json_answer({"file": stored.to_dict(base(request))}, headers=final)

    async def download(name: str, request: Request) -> Response:
        stored = files.get(name)
        if stored.source != "GENERATED":
            raise GeminiError(400, "Only generated files can be downloaded.")
        return Response(stored.content, media_type="application/octet-stream")

    app.get("/v1beta/files/{name}:download")(download)
    app.get("/download/v1beta/files/{name}:download")(download)

    @app.get("/v1beta/files/{name}")
    async def get_file(name: str, request: Request) -> Response:
        return json_answer(files.get(name).to_dict(base(request)))

    @app.delete("/v1beta/files/{name}")
    async def delete_file(name: str) -> Response:
        files.delete(name)
        return json_answer({})

    @app.post("/v1beta/models/{model}:batchGenerateContent")
    async def create_batch(model: str, request: Request) -> Response:
        record = await batches.create(model, await read_json(request))
        return json_answer(record.to_operation())

    @app.get("/v1beta/batches")
    async def list_batches(request: Request) -> Response:
        try:
            size = int(request.query_params.get("pageSize") or 50)
        except ValueError:
            raise GeminiError(400, "Invalid value for pageSize.") from None
        size = min(max(size, 1), 1000)  # a page size above the maximum is cut to it
        return json_answer(batches.listing(size, request.query_params.get("pageToken")))

    @app.post("/v1beta/batches/{batch_id}:cancel")
    async def cancel_batch(batch_id: str) -> Response:
        batches.cancel(batch_id)
        return json_answer({})

    @app.get("/v1beta/batches/{batch_id}")
    async def get_batch(batch_id: str) -> Response:
        return json_answer(batches.get(batch_id).to_operation())

    @app.delete("/v1beta/batches/{batch_id}")
    async def delete_batch(batch_id: str) -> Response:
        batches.delete(batch_id)
        return json_answer({})

    return batches
