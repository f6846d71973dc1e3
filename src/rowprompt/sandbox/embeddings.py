"""``POST /v1/embeddings``: chat's faults, rate limits, headers and log around the answer.

Validation and the vectors are in :mod:`.embeddings_model` (:func:`expected_embedding` gives
a test the vector of any text).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import Response

from .chat import Exchange, serve
from .embeddings_model import (
    check_rules,
    embedding_answer,
    expected_embedding,
    validate_embeddings,
)
from .state import SandboxState

__all__ = ["create_embeddings", "expected_embedding"]


async def create_embeddings(state: SandboxState, request: Request) -> Response:
    """Answer one embeddings request, with chat's faults, limits, headers and log."""
    return await serve(state, request, _embed, inputs=None, input_texts=None)


async def _embed(exchange: Exchange, body: Any) -> dict[str, Any] | None:
    state, entry = exchange.state, exchange.entry
    req = validate_embeddings(body, state.models)
    exchange.limit_model = req.base_model
    entry["inputs"] = len(req.texts)
    entry["input_texts"] = [text[:200] for text in req.texts]
    entry["prompt_tokens"] = req.prompt_tokens
    # OpenAI counts an embeddings request by its inputs' tokens: there is no output.
    if not await exchange.admit(model=req.model, cost=req.prompt_tokens):
        return None
    check_rules(req, state.rules)
    data = embedding_answer(req)
    state.stats.count_tokens(req.prompt_tokens, req.prompt_tokens, 0)
    return data
