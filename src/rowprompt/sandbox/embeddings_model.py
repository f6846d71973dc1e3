"""The sandbox's embeddings "model": validation, deterministic unit vectors, batch lines.

A text's vector depends on the model and the text alone (SHA-256 of both seeds a SHAKE-256
stream of values in [-1, 1), normalised to length 1), so a test recomputes the vector of any
row with :func:`expected_embedding`. ``dimensions`` keeps the first N values of the model's
full vector and normalises again, as OpenAI's text-embedding-3 models shorten theirs.

Errors are OpenAI's where observed: an empty input gets ``'$.input' is invalid`` (param and
code null, openai-python#576); an input over 8,192 tokens the context-length message
(pingcap/autoflow#265); a chat model ``You are not allowed to generate embeddings from this
model`` with 403 (infiniflow/ragflow#1835); ada-002 with ``dimensions`` ``This model does not
support specifying dimensions.``. Usage is counted offline with tiktoken, exactly.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rowprompt import tokens, vectors

from .errors import APIError, missing, wrong_type
from .model import Rule, sandbox_model_name
from .validation import _int_param, check_body_and_model, check_params_and_model

ENDPOINT = "/v1/embeddings"
KNOWN_PARAMS = frozenset({"input", "model", "encoding_format", "dimensions", "user"})
_INVALID_INPUT = (
    "'$.input' is invalid. Please check the API reference: "
    "https://platform.openai.com/docs/api-reference."
)


def expected_embedding(
    text: str, dimensions: int | None = None, model: str = "text-embedding-3-small"
) -> np.ndarray:
    """The unit vector (float32) the sandbox gives ``text`` under ``model``."""
    base = vectors.base_model(model)
    full = vectors.native_dimensions(base) or 1536
    seed = hashlib.sha256(f"{base}\0{text}".encode()).digest()
    raw = np.frombuffer(hashlib.shake_256(seed).digest(4 * full), dtype="<u4")
    values = raw.astype(np.float64) / 2.0**31 - 1.0
    if dimensions is not None:
        values = values[:dimensions]
    return (values / np.linalg.norm(values)).astype(np.float32)


@dataclass(frozen=True)
class EmbeddingRequest:
    """An embeddings request that passed validation."""

    model: str
    base_model: str
    texts: list[str]
    dimensions: int | None
    encoding_format: str
    prompt_tokens: int


def _inputs(value: Any, model: str) -> list[str]:
    """The texts of ``input``: a string, strings, token ids or lists of token ids."""
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        items = [value]
    elif isinstance(value, list):
        items = value
    else:
        raise wrong_type("input", "one of a string or array", value)
    if not items or len(items) > vectors.MAX_REQUEST_INPUTS:
        raise APIError(400, _INVALID_INPUT)
    enc = tokens.encoding(tokens.encoding_name_for_model(model))
    texts = []
    for item in items:
        if isinstance(item, str) and item:
            texts.append(item)
        elif (
            isinstance(item, list)
            and item
            and all(isinstance(t, int) and not isinstance(t, bool) for t in item)
        ):
            try:
                texts.append(enc.decode(item))
            except (KeyError, ValueError, OverflowError):
                raise APIError(400, _INVALID_INPUT) from None
        else:
            raise APIError(400, _INVALID_INPUT)
    return texts


def validate_embeddings(body: Any, models: Collection[str]) -> EmbeddingRequest:
    """Check an embeddings body the way OpenAI does; raise :class:`APIError` if it fails."""
    model = check_body_and_model(body)
    if "input" not in body:
        raise missing("input")
    base = check_params_and_model(body, KNOWN_PARAMS, model, models)
    native = vectors.native_dimensions(base)
    if native is None:
        raise APIError(403, "You are not allowed to generate embeddings from this model")
    fmt = body.get("encoding_format", "float")
    if fmt is None:
        fmt = "float"
    if fmt not in ("float", "base64"):
        raise APIError(
            400,
            f"Invalid value: '{fmt}'. Supported values are: 'float' and 'base64'.",
            param="encoding_format",
            code="invalid_value",
        )
    dimensions = _int_param(body, "dimensions", 1, native)
    if dimensions is not None and not vectors.takes_dimensions(base):
        raise APIError(400, "This model does not support specifying dimensions.")
    texts = _inputs(body["input"], base)
    counts = [tokens.count_text(text, base) for text in texts]
    longest = max(counts)
    if longest > vectors.MAX_INPUT_TOKENS:
        raise APIError(
            400,
            f"This model's maximum context length is {vectors.MAX_INPUT_TOKENS} tokens, however"
            f" you requested {longest} tokens ({longest} in your prompt; 0 for the completion)."
            " Please reduce your prompt; or completion length.",
        )
    total = sum(counts)
    if total > vectors.MAX_REQUEST_TOKENS:
        raise APIError(
            400,
            f"Requested {total} tokens, max {vectors.MAX_REQUEST_TOKENS} tokens per request",
            type="max_tokens_per_request",
            code="max_tokens_per_request",
        )
    return EmbeddingRequest(model, base, texts, dimensions, fmt, total)


def check_rules(req: EmbeddingRequest, rules: Sequence[Rule]) -> None:
    """Raise the scripted error of the first ``status`` rule an input matches, if any.

    Rules that script an answer or a refusal are for chat; an embedding has neither.
    """
    for text in req.texts:
        for rule in rules:
            match = rule.pattern.search(text) if rule.status is not None else None
            if match is not None and rule.status is not None:
                message = rule.message or "Scripted error from the rowprompt sandbox rule table."
                kind = "server_error" if rule.status >= 500 else "invalid_request_error"
                raise APIError(rule.status, rule.expand(message, match), type=kind, code=rule.code)


def embedding_answer(req: EmbeddingRequest) -> dict[str, Any]:
    """The ``CreateEmbeddingResponse`` body for ``req``."""
    data = []
    for index, text in enumerate(req.texts):
        vector = expected_embedding(text, req.dimensions, req.base_model)
        value: Any = (
            base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
            if req.encoding_format == "base64"
            else vector.tolist()
        )
        data.append({"object": "embedding", "index": index, "embedding": value})
    return {
        "object": "list",
        "data": data,
        "model": sandbox_model_name(req.base_model),
        "usage": {"prompt_tokens": req.prompt_tokens, "total_tokens": req.prompt_tokens},
    }


# -- batch lines ------------------------------------------------------------------------------
def embeddings_line(
    body: Any, models: Collection[str], seed: int, rules: Sequence[Rule]
) -> tuple[dict[str, Any], int, int]:
    """One ``/v1/embeddings`` batch line: (answer body, input tokens, 0)."""
    req = validate_embeddings(body, models)
    check_rules(req, rules)
    return embedding_answer(req), req.prompt_tokens, 0


def line_tokens(body: dict[str, Any], model: str) -> int:
    """Enqueued tokens of one embeddings line: its inputs' tokens."""
    return sum(tokens.count_text(text, model) for text in _texts_of(body.get("input")))


def line_inputs(body: dict[str, Any]) -> int:
    """How many embedding inputs one line carries (the per-batch limit counts these)."""
    value = body.get("input")
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return len(value)
    return 1


def _texts_of(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []
