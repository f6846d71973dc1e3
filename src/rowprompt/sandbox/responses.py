"""``POST /v1/responses``: the Responses API with chat's faults, limits, log and model.

Validation and the answer's body live in :mod:`.responses_model`; everything around them
(request id and headers, faults, rate limits and their headers, latency, the request log and
token stats) is chat's own code, called the same way.
"""

from __future__ import annotations

import time

from fastapi import Request
from fastapi.responses import Response

from rowprompt.tokens import count_messages

from .chat import _messages_sha256, admit, answer, error_answer, read_json, request_context
from .errors import APIError
from .responses_model import response_object, validate_response
from .state import SandboxState


async def create_response(state: SandboxState, request: Request) -> Response:
    """Answer one ``CreateResponse`` request; every answer carries the rate-limit headers."""
    started = time.perf_counter()
    headers, entry = request_context(request, messages_sha256=None, last_user_message=None)
    limit_model = state.config.models[0]
    status = 200
    try:
        body = await read_json(request, entry)
        req = validate_response(body, state.models)
        chat = req.chat
        limit_model = chat.base_model
        entry["messages_sha256"] = _messages_sha256(chat.messages)
        entry["last_user_message"] = chat.last_user_text[:500]
        prompt = count_messages(chat.messages, chat.base_model)
        entry["prompt_tokens"] = prompt
        cost = prompt + (chat.max_tokens or 0)
        sending = await admit(
            state, request, model=chat.model, limit_model=limit_model, cost=cost,
            headers=headers, entry=entry,
        )  # fmt: skip
        if not sending:
            status = 0
            return Response(b"")
        data = response_object(req, state.config.seed, state.rules, prompt)
        used = data["usage"]["output_tokens"]
        if state.config.token_accounting == "anthropic":
            refund = max(0, (chat.max_tokens or 0) - used)
            state.limiter.refund(limit_model, refund)
            cost -= refund
        state.stats.count_tokens(cost, prompt, used)
        return answer(data, headers, started)
    except APIError as exc:
        status = exc.status
        return error_answer(state, exc, headers, limit_model, started)
    finally:
        entry["status"] = status
        state.stats.log_request(entry)
