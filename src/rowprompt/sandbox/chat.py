"""``POST /v1/chat/completions``: validation, faults, rate limits, latency, the answer."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from rowprompt.tokens import count_messages

from .errors import APIError, server_error
from .limits import ORGANIZATION, RATE_LIMIT_URL, go_duration
from .model import completion
from .state import SandboxState
from .validation import validate_chat

_BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON. If you have trouble figuring out how to fix this, please contact "
    "us through our help center at help.openai.com.)"
)


def _messages_sha256(messages: Any) -> str:
    raw = json.dumps(messages, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def _storm_error(state: SandboxState, model: str, headers: dict[str, str]) -> APIError:
    wait = state.faults.storm_wait()
    limit = headers.get("x-ratelimit-limit-requests", "0")
    error = APIError(
        429,
        f"Rate limit reached for {model} in organization {ORGANIZATION} on requests per min "
        f"(RPM): Limit {limit}, Used {limit}, Requested 1. Please try again in "
        f"{go_duration(wait)}. {RATE_LIMIT_URL}",
        type="requests",
        code="rate_limit_exceeded",
        headers=dict(headers),
    )
    error.headers["x-ratelimit-remaining-requests"] = "0"
    error.headers["retry-after-ms"] = str(max(1, round(wait * 1000)))
    error.headers["retry-after"] = str(max(1, round(wait)))
    return error


def _quota_error(headers: dict[str, str]) -> APIError:
    # OpenAI's billing 429: no retry-after, since waiting does not help.
    return APIError(
        429,
        "You exceeded your current quota, please check your plan and billing details. For more"
        " information on this error, read the docs:"
        " https://platform.openai.com/docs/guides/error-codes/api-errors.",
        type="insufficient_quota",
        code="insufficient_quota",
        headers=dict(headers),
    )


def request_context(request: Request, **fields: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """The headers every answer carries, and the request's log entry with ``fields`` added."""
    request_id = "req_" + secrets.token_hex(16)
    headers = {
        "x-request-id": request_id,
        "openai-version": "2020-10-01",
        "openai-organization": ORGANIZATION,
    }
    entry: dict[str, Any] = {
        "time": time.time(),
        "request_id": request_id,
        "status": 0,
        "model": None,
        "prompt_tokens": None,
        **fields,
        "retry_count": request.headers.get("x-stainless-retry-count"),
        "fault": None,
    }
    return headers, entry


async def read_json(request: Request, entry: dict[str, Any]) -> Any:
    """The request's JSON body (a 400 as OpenAI words it when it is not JSON)."""
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError:
        raise APIError(400, _BAD_JSON) from None
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        entry["model"] = body["model"]
    return body


async def admit(
    state: SandboxState,
    request: Request,
    *,
    model: str,
    limit_model: str,
    cost: int,
    headers: dict[str, str],
    entry: dict[str, Any],
) -> bool:
    """Faults, rate limits and latency before an answer; False: drop the connection.

    Raises the APIError to answer instead (a 429, a 5xx).
    """
    fault = state.faults.chat()
    entry["fault"] = fault
    if fault == "quota":
        state.stats.count_fault("insufficient_quota")
        raise _quota_error(headers)
    if fault == "storm":
        state.stats.count_rate_limited("storm")
        state.stats.count_fault("rate_limit_storm")
        headers.update(state.limiter.peek(limit_model))
        raise _storm_error(state, model, headers)
    admission = state.limiter.admit(limit_model, cost)
    headers.update(admission.headers)
    if admission.error is not None:
        state.stats.count_rate_limited(admission.cause or "tokens")
        raise admission.error
    if fault == "drop":
        state.stats.count_fault("dropped_connection")
        request.scope["rowprompt"]["drop"] = True
        return False
    if fault == "error":
        state.stats.count_fault("server_error")
        raise server_error(state.faults.error_status())
    if fault == "slow":
        state.stats.count_fault("slow")
        await asyncio.sleep(state.config.faults.slow_seconds)
    delay = state.latency.seconds()
    if delay > 0:
        await asyncio.sleep(delay)
    return True


def answer(data: Any, headers: dict[str, str], started: float) -> Response:
    """A 200 JSON answer with the request's headers."""
    headers["openai-processing-ms"] = str(round((time.perf_counter() - started) * 1000))
    return Response(
        json.dumps(data, ensure_ascii=False).encode("utf-8"),
        headers=headers,
        media_type="application/json",
    )


def error_answer(
    state: SandboxState, exc: APIError, headers: dict[str, str], limit_model: str, started: float
) -> Response:
    """An error answer that still carries the rate-limit headers."""
    if "x-ratelimit-limit-requests" not in headers:
        headers.update(state.limiter.peek(limit_model))
    merged = {**headers, **exc.headers}
    merged["openai-processing-ms"] = str(round((time.perf_counter() - started) * 1000))
    return Response(
        json.dumps(exc.body()).encode("utf-8"),
        status_code=exc.status,
        headers=merged,
        media_type="application/json",
    )


@dataclass
class Exchange:
    """One request on its way through an OpenAI-face endpoint (see :func:`serve`)."""

    state: SandboxState
    request: Request
    headers: dict[str, str]
    entry: dict[str, Any]
    limit_model: str
    """The model whose rate-limit headers an answer carries (the base model once known)."""

    async def admit(self, *, model: str, cost: int) -> bool:
        """Faults, limits and latency (see :func:`admit`); False: drop the connection."""
        return await admit(
            self.state, self.request, model=model, limit_model=self.limit_model, cost=cost,
            headers=self.headers, entry=self.entry,
        )  # fmt: skip


Handler = Callable[[Exchange, Any], Awaitable["dict[str, Any] | None"]]


async def serve(
    state: SandboxState, request: Request, handler: Handler, **log_fields: Any
) -> Response:
    """The frame every OpenAI-face endpoint answers in: the log entry and headers, the JSON
    body, errors with rate-limit headers, the request log. ``handler`` validates the body,
    admits the request and returns the answer (None: the connection is dropped)."""
    started = time.perf_counter()
    headers, entry = request_context(request, **log_fields)
    exchange = Exchange(state, request, headers, entry, state.config.models[0])
    status = 200
    try:
        data = await handler(exchange, await read_json(request, entry))
        if data is None:
            status = 0
            return Response(b"")
        return answer(data, headers, started)
    except APIError as exc:
        status = exc.status
        return error_answer(state, exc, headers, exchange.limit_model, started)
    finally:
        entry["status"] = status
        state.stats.log_request(entry)


async def chat_completion(state: SandboxState, request: Request) -> Response:
    """Answer one chat completion request; every answer carries the rate-limit headers."""
    return await serve(state, request, _chat, messages_sha256=None, last_user_message=None)


async def _chat(exchange: Exchange, body: Any) -> dict[str, Any] | None:
    state, entry = exchange.state, exchange.entry
    req = validate_chat(body, state.models)
    exchange.limit_model = req.base_model
    entry["messages_sha256"] = _messages_sha256(req.messages)
    entry["last_user_message"] = req.last_user_text[:500]
    prompt = count_messages(req.messages, req.base_model)
    entry["prompt_tokens"] = prompt
    cost = prompt + (req.max_tokens or 0) * req.n
    if not await exchange.admit(model=req.model, cost=cost):
        return None
    data = completion(req, state.config.seed, state.rules, prompt)
    used = data["usage"]["completion_tokens"]
    if state.config.token_accounting == "anthropic":
        # Anthropic counts max_tokens at admission, then the real output: refund the rest.
        refund = max(0, (req.max_tokens or 0) * req.n - used)
        state.limiter.refund(req.base_model, refund)
        cost -= refund
    state.stats.count_tokens(cost, prompt, used)
    return data
