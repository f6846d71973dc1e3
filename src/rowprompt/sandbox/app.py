"""The HTTP surface: FastAPI routes for /v1 and /sandbox, wrapped in a lean ASGI layer.

The wrapper counts every answer by endpoint and status, refuses requests without an API
key as OpenAI does, and carries out dropped-connection faults (it closes the socket before
any byte of the answer is sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from . import anthropic_face, azure_face, gemini_face
from .anthropic_model import AnthropicError
from .chat import chat_completion
from .config import FaultConfig
from .embeddings import create_embeddings
from .errors import APIError, error_body, server_error
from .files import DEFAULT_BATCH_FILE_TTL, MAX_FILE_BYTES, UPLOAD_PURPOSES
from .responses import create_response
from .state import SandboxState

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_ID_PARTS = re.compile(r"/(file-[A-Za-z0-9]+|batch_[A-Za-z0-9]+|msgbatch_[A-Za-z0-9]+)")
_MODEL_PART = re.compile(r"^/v1/models/.+")
_CREATED = 1_700_000_000
_log = logging.getLogger("rowprompt.sandbox")
NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field "
    "(i.e. -u YOUR_KEY:) when using HTTP Basic auth."
)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer, serialised once without pydantic."""
    return Response(
        json.dumps(data, ensure_ascii=False).encode("utf-8"),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def error_response(exc: APIError) -> Response:
    """An OpenAI error body with the error's status and headers."""
    return json_response(exc.body(), exc.status, exc.headers)


def endpoint_name(method: str, path: str) -> str:
    """The route an answer is counted under: ids replaced by placeholders."""
    path = _ID_PARTS.sub(
        lambda m: "/{file_id}" if m.group(1).startswith("file-") else "/{batch_id}", path
    )
    if _MODEL_PART.match(path):
        path = "/v1/models/{model}"
    return f"{method} {path}"


# What a server that does not announce its limits leaves out (``rate_limit_headers=False``):
# OpenAI's and Anthropic's limit headers. retry-after stays: such servers still say when.
_LIMIT_HEADER_PREFIXES = (b"x-ratelimit-", b"anthropic-ratelimit-")


class SandboxASGI:
    """Outer ASGI layer: stats by endpoint/status, the API-key check, dropped connections,
    downloads cut short."""

    def __init__(self, app: Any, state: SandboxState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        marker: dict[str, Any] = {"drop": False, "status": 0}
        scope["rowprompt"] = marker
        keyed = path.startswith(("/v1/", "/openai/", *gemini_face.PATHS))
        if keyed and not _has_key(scope) and not gemini_face.is_upload_session(scope):
            status, body = 401, error_body(NO_KEY)
            if path.startswith("/v1/messages"):
                body = AnthropicError(401, anthropic_face.NO_KEY).body()
            elif path.startswith(gemini_face.PATHS):
                status, body = 403, gemini_face.no_key_body()
            # Counted before the answer leaves, so a client that reads the stats right after
            # its answer always finds its own request there.
            self.state.stats.count_request(endpoint_name(scope["method"], path), status)
            await _send_json(send, status, body)
            return

        hook = self.state.hook
        endpoint = endpoint_name(scope["method"], path)
        counted = path.startswith("/sandbox/")  # looking at the stats must not change them
        if hook is not None and not path.startswith("/sandbox/"):
            hook("request", endpoint)

        async def tracking_send(message: Message) -> None:
            nonlocal counted
            if message["type"] == "http.response.start":
                if hook is not None and not path.startswith("/sandbox/"):
                    hook("response", endpoint)
                if marker["drop"]:
                    if not counted:
                        counted = True
                        self.state.stats.count_request(endpoint, 0)
                    _abort(send)
                    return
                marker["status"] = message["status"]
                if not self.state.config.rate_limit_headers:
                    message["headers"] = [
                        (name, value)
                        for name, value in message.get("headers", [])
                        if not name.lower().startswith(_LIMIT_HEADER_PREFIXES)
                    ]
                if not counted:
                    counted = True
                    self.state.stats.count_request(endpoint, message["status"])
            if marker["drop"]:
                return
            if message["type"] == "http.response.body" and marker.get("cut") is not None:
                keep = marker.pop("cut")
                await send(
                    {
                        "type": "http.response.body",
                        "body": message["body"][:keep],
                        "more_body": True,
                    }
                )
                marker["drop"] = True
                _close(send)
                return
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientDisconnect:
            pass  # the client left while its body was read: nobody to answer
        except Exception as exc:
            # Starlette has answered 500 (unless the answer had begun), then re-raises so the
            # server would print a traceback: one log line instead, and the count of bugs.
            _log.error("%s failed: %s: %s", endpoint, type(exc).__name__, exc)
            self.state.stats.count_internal_error()
            if not counted and not marker["drop"]:
                counted = True
                self.state.stats.count_request(endpoint, 500)
                with contextlib.suppress(Exception):
                    await _send_json(send, 500, server_error(500).body())
        if path.startswith("/sandbox/"):
            return
        if marker["drop"]:
            # Wait for the transport to report the loss, so the server sends nothing more.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    while (await receive())["type"] != "http.disconnect":
                        pass
            if not counted:
                self.state.stats.count_request(endpoint, 0)
            return
        if not counted:  # the app ended without answering
            self.state.stats.count_request(endpoint, marker["status"])


def _has_key(scope: Scope) -> bool:
    # OpenAI sends Authorization, Anthropic x-api-key, Azure api-key (or Authorization),
    # Gemini x-goog-api-key.
    for name, value in scope["headers"]:
        if name in (b"authorization", b"x-api-key", b"api-key", b"x-goog-api-key"):
            return bool(value.strip())
    return False


def _abort(send: Send) -> None:
    """Close the client's connection with no HTTP answer at all."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:
        raise ConnectionAbortedError("dropped connection (fault injection)")
    transport.abort()


def _close(send: Send) -> None:
    """Close the client's connection once what was sent has left: a body cut short."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:
        raise ConnectionAbortedError("download cut (fault injection)")
    transport.close()


async def _send_json(send: Send, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


def _int_query(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise APIError(
            400,
            f"Invalid type for '{name}': expected an integer, but got a string instead.",
            param=name,
            code="invalid_type",
        ) from None
    if not low <= value <= high:
        raise APIError(
            400,
            f"Invalid '{name}': expected a value between {low} and {high}, but got {value}.",
            param=name,
            code="invalid_value",
        )
    return value


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw) if raw else None
    except (ValueError, RecursionError):  # RecursionError: nested past the parser's depth
        raise APIError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
            "but what was sent was not valid JSON. If you have trouble figuring out how to fix "
            "this, please contact us through our help center at help.openai.com.)",
        ) from None


def build_app(state: SandboxState) -> SandboxASGI:
    """The sandbox's ASGI application for ``state``."""
    app = FastAPI(title="rowprompt sandbox", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> Response:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = f"Invalid URL ({request.method} {request.url.path})"
        if exc.status_code == 405:
            message = f"Method not allowed: {request.method} {request.url.path}"
        return json_response(error_body(message), exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return json_response(error_body(str(first.get("msg", "Invalid request")), param=param), 400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        return error_response(server_error(500))

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await chat_completion(state, request)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        return await create_embeddings(state, request)

    @app.post("/v1/responses")
    async def responses(request: Request) -> Response:
        return await create_response(state, request)

    @app.get("/v1/models")
    async def list_models() -> Response:
        data = [_model(m) for m in state.config.models]
        return json_response({"object": "list", "data": data})

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str) -> Response:
        if model not in state.models:
            raise APIError(
                404,
                f"The model '{model}' does not exist",
                param="model",
                code="model_not_found",
            )
        return json_response(_model(model))

    @app.post("/v1/files")
    async def upload(request: Request) -> Response:
        return json_response(await _upload(state, request))

    @app.get("/v1/files")
    async def list_files(request: Request) -> Response:
        order = request.query_params.get("order", "desc")
        if order not in ("asc", "desc"):
            raise APIError(
                400,
                f"Invalid value: '{order}'. Supported values are: 'asc' and 'desc'.",
                param="order",
                code="invalid_value",
            )
        limit = _int_query(request, "limit", 10_000, 1, 10_000)
        purpose = request.query_params.get("purpose")
        after = request.query_params.get("after")
        return json_response(state.files.listing(purpose, limit, order, after))

    @app.get("/v1/files/{file_id}")
    async def get_file(file_id: str) -> Response:
        return json_response(state.files.get(file_id).to_dict())

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str, request: Request) -> Response:
        stored = state.files.get(file_id)
        content = stored.content
        keep = state.faults.cut_download(len(content)) if stored.purpose == "batch_output" else None
        if keep is not None:
            state.stats.count_fault("download_cut")
            # Lines that do not arrive whole: what a client that cannot read again would lose.
            state.stats.count_fault("download_cut_lines", content[keep:].count(b"\n"))
            if state.config.faults.download_cut_style == "short":
                content = content[:keep]
            else:
                # The whole length is announced, then SandboxASGI stops after ``keep`` bytes.
                request.scope["rowprompt"]["cut"] = keep
        return Response(content, media_type="application/octet-stream")

    @app.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str) -> Response:
        return json_response(state.files.delete(file_id))

    @app.post("/v1/batches")
    async def create_batch(request: Request) -> Response:
        body = await _json_body(request)
        return json_response(state.batches.create(body).to_dict())

    @app.get("/v1/batches")
    async def list_batches(request: Request) -> Response:
        limit = _int_query(request, "limit", 20, 1, 100)
        after = request.query_params.get("after")
        return json_response(state.batches.listing(after, limit))

    @app.get("/v1/batches/{batch_id}")
    async def get_batch(batch_id: str) -> Response:
        return json_response(state.batches.get(batch_id).to_dict())

    @app.post("/v1/batches/{batch_id}/cancel")
    async def cancel_batch(batch_id: str) -> Response:
        return json_response(state.batches.cancel(batch_id).to_dict())

    @app.get("/sandbox/stats")
    async def stats() -> Response:
        return json_response(state.stats.snapshot())

    @app.get("/sandbox/requests")
    async def requests_log() -> Response:
        return json_response(state.stats.requests())

    @app.get("/sandbox/batch-lines")
    async def batch_lines() -> Response:
        return json_response(state.stats.batch_line_counts())

    @app.post("/sandbox/reset")
    async def reset() -> Response:
        state.stats.reset()
        return json_response({"reset": True})

    @app.get("/sandbox/faults")
    async def get_faults() -> Response:
        return json_response(state.config.faults.model_dump())

    @app.post("/sandbox/faults")
    async def set_faults(request: Request) -> Response:
        body = await _json_body(request)
        try:
            faults = FaultConfig.model_validate(body or {})
        except ValueError as exc:
            raise APIError(400, f"Invalid faults: {exc}", param="faults") from None
        state.set_faults(faults)
        return json_response(faults.model_dump())

    anthropic_face.mount(app, state)
    azure_face.mount(app, state, _upload)
    gemini_face.mount(app, state)
    return SandboxASGI(app, state)


def _model(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": _CREATED, "owned_by": "rowprompt-sandbox"}


async def _upload(state: SandboxState, request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise APIError(
            400,
            "Invalid Content-Type: a file upload must be sent as multipart/form-data.",
            param="file",
        )
    try:
        form = await request.form(max_files=1, max_fields=16)
    except Exception:
        raise APIError(400, "The multipart body could not be parsed.", param="file") from None
    upload = form.get("file")
    purpose = form.get("purpose")
    if upload is None or isinstance(upload, str):
        raise APIError(
            400,
            "Missing required parameter: 'file'.",
            param="file",
            code="missing_required_parameter",
        )
    if purpose is None:
        raise APIError(
            400,
            "Missing required parameter: 'purpose'.",
            param="purpose",
            code="missing_required_parameter",
        )
    if purpose not in UPLOAD_PURPOSES:
        supported = ", ".join(f"'{p}'" for p in UPLOAD_PURPOSES[:-1])
        raise APIError(
            400,
            f"Invalid value: '{purpose}'. Supported values are: {supported}, "
            f"and '{UPLOAD_PURPOSES[-1]}'.",
            param="purpose",
            code="invalid_value",
        )
    filename = upload.filename or "upload"
    if purpose == "batch" and not filename.lower().endswith(".jsonl"):
        raise APIError(400, "Invalid file format for Batch API. Must be .jsonl", param="file")
    content = await upload.read()
    if len(content) > MAX_FILE_BYTES:
        raise APIError(
            400, f"File is too large: the maximum is {MAX_FILE_BYTES:,} bytes.", param="file"
        )
    ttl: int | None = DEFAULT_BATCH_FILE_TTL if purpose == "batch" else None
    seconds = form.get("expires_after[seconds]")
    if seconds is not None:
        try:
            ttl = int(str(seconds))
        except ValueError:
            ttl = -1
        if form.get("expires_after[anchor]") != "created_at" or not 3600 <= ttl <= 2_592_000:
            raise APIError(
                400,
                "Invalid 'expires_after': expected anchor 'created_at' and 3600 <= seconds "
                "<= 2592000.",
                param="expires_after",
                code="invalid_value",
            )
    return state.files.add(filename, str(purpose), content, ttl).to_dict()
