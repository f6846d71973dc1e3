"""The sandbox's Anthropic face: ``/v1/messages`` and the Message Batches API.

It shares the sandbox's model, rules, rate-limit buckets, faults and stats with the OpenAI
face, and speaks Anthropic's wire format: ``x-api-key`` auth, ``anthropic-ratelimit-*``
headers with RFC 3339 reset times, ``retry-after`` on 429s, ``request-id``, and error bodies
``{"type": "error", "error": {"type", "message"}}``. See docs/providers.md.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from rowprompt.tokens import count_messages

from .anthropic_batches import AnthropicBatches
from .anthropic_model import (
    ANTHROPIC_MODELS,
    CREDIT_TOO_LOW,
    AnthropicError,
    from_openai_error,
    message_body,
    parse_messages_request,
    rfc3339,
)
from .errors import APIError
from .state import SandboxState

NO_KEY = "x-api-key header is required"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def _seconds(go: str) -> float:
    """A Go-style duration (the OpenAI face's reset headers) in seconds."""
    return sum(float(n) * _UNIT[u] for n, u in _DURATION.findall(go))


def ratelimit_headers(openai_headers: dict[str, str]) -> dict[str, str]:
    """The shared buckets' ``x-ratelimit-*`` headers as ``anthropic-ratelimit-*`` headers."""
    out: dict[str, str] = {}
    now = time.time()
    for kind in ("requests", "tokens"):
        limit = openai_headers.get(f"x-ratelimit-limit-{kind}")
        if limit is None:
            continue
        remaining = openai_headers.get(f"x-ratelimit-remaining-{kind}", limit)
        reset = rfc3339(now + _seconds(openai_headers.get(f"x-ratelimit-reset-{kind}", "0s")))
        names = [kind] if kind == "requests" else ["tokens", "input-tokens", "output-tokens"]
        for name in names:
            out[f"anthropic-ratelimit-{name}-limit"] = limit
            out[f"anthropic-ratelimit-{name}-remaining"] = remaining
            out[f"anthropic-ratelimit-{name}-reset"] = reset
    if "retry-after" in openai_headers:
        out["retry-after"] = openai_headers["retry-after"]
    return out


def _rate_limit_error(exc: APIError, cause: str | None) -> AnthropicError:
    if cause == "request_too_large":
        message = (
            "Number of request tokens has exceeded your per-minute rate limit; see the response "
            "headers for current usage. Please reduce the prompt length or the maximum tokens "
            "requested, or try again later."
        )
    elif cause == "tokens":
        message = (
            "This request would exceed the rate limit for your organization (org-sandbox) of "
            f"{exc.headers.get('x-ratelimit-limit-tokens', '?')} tokens per minute. For details,"
            " refer to: https://docs.claude.com/en/api/rate-limits."
        )
    else:
        message = (
            "This request would exceed the rate limit for your organization (org-sandbox) of "
            f"{exc.headers.get('x-ratelimit-limit-requests', '?')} requests per minute. For "
            "details, refer to: https://docs.claude.com/en/api/rate-limits."
        )
    return AnthropicError(429, message, headers=ratelimit_headers(exc.headers))


async def create_message(state: SandboxState, request: Request) -> Response:
    """Answer one ``POST /v1/messages``; every answer carries the rate-limit headers."""
    started = time.perf_counter()
    entry: dict[str, Any] = {
        "time": time.time(),
        "request_id": None,
        "status": 0,
        "model": None,
        "prompt_tokens": None,
        "messages_sha256": None,
        "last_user_message": None,
        "retry_count": request.headers.get("x-stainless-retry-count"),
        "fault": None,
        "face": "anthropic",
    }
    limit_model = state.config.models[0]
    openai_headers: dict[str, str] = {}
    status = 200
    try:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            raise AnthropicError(400, "There was an issue with your request body.") from None
        if isinstance(body, dict) and isinstance(body.get("model"), str):
            entry["model"] = body["model"]
        req = parse_messages_request(body, state.models | set(ANTHROPIC_MODELS))
        limit_model = req.base_model
        entry["last_user_message"] = req.last_user_text[:500]
        prompt = count_messages(req.messages, req.base_model)
        entry["prompt_tokens"] = prompt
        cost = prompt + (req.max_tokens or 0)
        fault = state.faults.chat()
        entry["fault"] = fault
        if fault == "quota":
            state.stats.count_fault("insufficient_quota")
            raise AnthropicError(400, CREDIT_TOO_LOW)
        if fault == "storm":
            state.stats.count_rate_limited("storm")
            state.stats.count_fault("rate_limit_storm")
            wait = state.faults.storm_wait()
            openai_headers = state.limiter.peek(limit_model)
            openai_headers["x-ratelimit-remaining-requests"] = "0"
            openai_headers["retry-after"] = str(max(1, round(wait)))
            raise _rate_limit_error(APIError(429, "", headers=openai_headers), "requests")
        admission = state.limiter.admit(limit_model, cost)
        openai_headers = admission.headers
        if admission.error is not None:
            state.stats.count_rate_limited(admission.cause or "tokens")
            raise _rate_limit_error(admission.error, admission.cause)
        if fault == "drop":
            state.stats.count_fault("dropped_connection")
            request.scope["rowprompt"]["drop"] = True
            status = 0
            return Response(b"")
        if fault == "error":
            state.stats.count_fault("server_error")
            raise from_openai_error(APIError(state.faults.error_status(), "", type="server_error"))
        if fault == "slow":
            state.stats.count_fault("slow")
            await asyncio.sleep(state.config.faults.slow_seconds)
        delay = state.latency.seconds()
        if delay > 0:
            await asyncio.sleep(delay)
        answer = message_body(req, state.config.seed, state.rules, prompt)
        used = answer["usage"]["output_tokens"]
        # Anthropic estimates output tokens from max_tokens at admission, then settles on the
        # real output when the answer is done: give the unused part back.
        refund = max(0, (req.max_tokens or 0) - used)
        state.limiter.refund(limit_model, refund)
        state.stats.count_tokens(cost - refund, prompt, used)
        headers = ratelimit_headers(state.limiter.peek(limit_model))
        headers["request-id"] = entry["request_id"] = "req_" + answer["id"][4:]
        headers["anthropic-organization-id"] = "org-sandbox"
        headers["x-rowprompt-processing-ms"] = str(round((time.perf_counter() - started) * 1000))
        return Response(
            json.dumps(answer, ensure_ascii=False).encode("utf-8"),
            headers=headers,
            media_type="application/json",
        )
    except APIError as exc:
        error = from_openai_error(exc)
        status = error.status
        entry["request_id"] = error.request_id
        headers = ratelimit_headers(openai_headers or state.limiter.peek(limit_model))
        headers.update(error.headers)
        headers["request-id"] = error.request_id
        return Response(
            json.dumps(error.body()).encode("utf-8"),
            status_code=error.status,
            headers=headers,
            media_type="application/json",
        )
    finally:
        entry["status"] = status
        state.stats.log_request(entry)


async def _json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        raise AnthropicError(400, "There was an issue with your request body.") from None


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "20")
    try:
        value = int(raw)
    except ValueError:
        raise AnthropicError(400, "limit: Input should be a valid integer") from None
    if not 1 <= value <= 1000:
        raise AnthropicError(400, "limit: Input should be between 1 and 1000")
    return value


def mount(app: FastAPI, state: SandboxState) -> AnthropicBatches:
    """Add the Anthropic routes to ``app``; returns the face's batch store."""
    batches = AnthropicBatches(state)

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    @app.post("/v1/messages")
    async def messages(request: Request) -> Response:
        return await create_message(state, request)

    @app.post("/v1/messages/batches")
    async def create_batch(request: Request) -> Response:
        record = batches.create(await _json(request))
        return _ok(record.to_dict(base(request)))

    @app.get("/v1/messages/batches")
    async def list_batches(request: Request) -> Response:
        query = request.query_params
        return _ok(
            batches.listing(
                base(request), _limit(request), query.get("after_id"), query.get("before_id")
            )
        )

    @app.get("/v1/messages/batches/{batch_id}")
    async def get_batch(batch_id: str, request: Request) -> Response:
        return _ok(batches.get(batch_id).to_dict(base(request)))

    @app.post("/v1/messages/batches/{batch_id}/cancel")
    async def cancel_batch(batch_id: str, request: Request) -> Response:
        return _ok(batches.cancel(batch_id).to_dict(base(request)))

    @app.delete("/v1/messages/batches/{batch_id}")
    async def delete_batch(batch_id: str) -> Response:
        return _ok(batches.delete(batch_id))

    @app.get("/v1/messages/batches/{batch_id}/results")
    async def results(batch_id: str) -> Response:
        return Response(batches.results(batch_id), media_type="application/binary")

    return batches


def _ok(data: Any) -> Response:
    return Response(
        json.dumps(data, ensure_ascii=False).encode("utf-8"), media_type="application/json"
    )
