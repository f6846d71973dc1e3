"""``POST /v1/embeddings``: chat's faults, rate limits, headers and log around the answer.

Validation and the vectors are in :mod:`.embeddings_model` (:func:`expected_embedding` gives
a test the vector of any text).
"""

from __future__ import annotations

import time

from fastapi import Request
from fastapi.responses import Response

from .chat import admit, answer, error_answer, read_json, request_context
from .embeddings_model import (
    check_rules,
    embedding_answer,
    expected_embedding,
    validate_embeddings,
)
from .errors import APIError
from .state import SandboxState

__all__ = ["create_embeddings", "expected_embedding"]


async def create_embeddings(state: SandboxState, request: Request) -> Response:
    """Answer one embeddings request, with chat's faults, limits, headers and log."""
    started = time.perf_counter()
    headers, entry = request_context(request, inputs=None, input_texts=None)
    limit_model = state.config.models[0]
    status = 200
    try:
        body = await read_json(request, entry)
        req = validate_embeddings(body, state.models)
        limit_model = req.base_model
        entry["inputs"] = len(req.texts)
        entry["input_texts"] = [text[:200] for text in req.texts]
        entry["prompt_tokens"] = req.prompt_tokens
        # OpenAI counts an embeddings request by its inputs' tokens: there is no output.
        sending = await admit(
            state, request, model=req.model, limit_model=limit_model, cost=req.prompt_tokens,
            headers=headers, entry=entry,
        )  # fmt: skip
        if not sending:
            status = 0
            return Response(b"")
        check_rules(req, state.rules)
        data = embedding_answer(req)
        state.stats.count_tokens(req.prompt_tokens, req.prompt_tokens, 0)
        return answer(data, headers, started)
    except APIError as exc:
        status = exc.status
        return error_answer(state, exc, headers, limit_model, started)
    finally:
        entry["status"] = status
        state.stats.log_request(entry)
