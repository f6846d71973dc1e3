"""``POST /v1/responses``: the Responses API with chat's faults, limits, log and model.

Validation and the answer's body live in :mod:`.responses_model`; everything around them
(request id and headers, faults, rate limits and their headers, latency, the request log and
token stats) is chat's own frame, :func:`.chat.serve`.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import Response

from rowprompt.tokens import count_messages

from .chat import Exchange, _messages_sha256, serve
from .responses_model import response_object, validate_response
from .state import SandboxState


async def create_response(state: SandboxState, request: Request) -> Response:
    """Answer one ``CreateResponse`` request; every answer carries the rate-limit headers."""
    return await serve(state, request, _respond, messages_sha256=None, last_user_message=None)


async def _respond(exchange: Exchange, body: Any) -> dict[str, Any] | None:
    state, entry = exchange.state, exchange.entry
    req = validate_response(body, state.models)
    chat = req.chat
    exchange.limit_model = chat.base_model
    entry["messages_sha256"] = _messages_sha256(chat.messages)
    entry["last_user_message"] = chat.last_user_text[:500]
    prompt = count_messages(chat.messages, chat.base_model)
    entry["prompt_tokens"] = prompt
    cost = prompt + (chat.max_tokens or 0)
    if not await exchange.admit(model=chat.model, cost=cost):
        return None
    data = response_object(req, state.config.seed, state.rules, prompt)
    used = data["usage"]["output_tokens"]
    if state.config.token_accounting == "anthropic":
        refund = max(0, (chat.max_tokens or 0) - used)
        state.limiter.refund(chat.base_model, refund)
        cost -= refund
    state.stats.count_tokens(cost, prompt, used)
    return data
