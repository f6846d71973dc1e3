"""Embedding vectors and the embeddings endpoint's limits: pure values, no I/O.

A vector travels through the engines, the ledger and the cache as text (``Completion.text``):
the base64 of its little-endian float32 values, exactly what OpenAI sends with
``encoding_format: "base64"``, so nothing is lost and nothing is re-encoded. An answer to a
request that carried several inputs holds one such string per input, in input order, joined by
newlines (base64 has none); :func:`split_vectors` cuts it back into rows.

Limits, from OpenAI's ``CreateEmbeddingRequest`` (openai-openapi f85dbe2): each input at most
8,192 tokens and never empty; at most 2,048 inputs and 300,000 tokens summed over the inputs of
one request. Batch files of ``/v1/embeddings`` hold at most 50,000 inputs (reference §3).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rowprompt import tokens

MAX_INPUT_TOKENS = 8192
MAX_REQUEST_INPUTS = 2048
MAX_REQUEST_TOKENS = 300_000
MAX_BATCH_INPUTS = 50_000
# Inputs per real-time request by default: big enough that requests are few, small enough
# that the tokens-per-minute budget flows in steady steps and a kill re-asks little.
DEFAULT_GROUP_INPUTS = 256
# Native sizes of OpenAI's embedding models; text-embedding-3 models take ``dimensions``.
NATIVE_DIMENSIONS: dict[str, int] = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
SEPARATOR = "\n"


def base_model(model: str) -> str:
    """The model's name without a ``-sandbox`` suffix or a provider prefix."""
    name = model.strip().split("/")[-1]
    return name.removesuffix("-sandbox")


def takes_dimensions(model: str) -> bool:
    """Whether ``dimensions`` may be asked (``text-embedding-3`` and later, not ada-002)."""
    return not base_model(model).startswith("text-embedding-ada")


def native_dimensions(model: str) -> int | None:
    """The model's full vector size, when known."""
    return NATIVE_DIMENSIONS.get(base_model(model))


def encode(vector: Sequence[float] | np.ndarray) -> str:
    """A vector as base64 of little-endian float32."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def decode(text: str) -> np.ndarray:
    """A base64 float32 vector back as a numpy array (float32)."""
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)


def join_vectors(encoded: Sequence[str]) -> str:
    """Several encoded vectors in one text, in order."""
    return SEPARATOR.join(encoded)


def split_vectors(text: str | None, count: int) -> list[str]:
    """The ``count`` encoded vectors of a grouped answer (ValueError for another number)."""
    parts = text.split(SEPARATOR) if text else []
    if len(parts) != count:
        raise ValueError(f"the answer carried {len(parts)} embeddings for {count} inputs")
    return parts


def split_usage(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` tokens shared in proportion to ``weights``, summing exactly to ``total``.

    The largest remainders get the leftover tokens, so a group's usage splits back into the
    rows' own counts whenever they agree with the provider's.
    """
    if not weights:
        return []
    whole = sum(weights)
    if whole <= 0:
        shares = [total // len(weights)] * len(weights)
        shares[0] += total - sum(shares)
        return shares
    exact = [total * w / whole for w in weights]
    shares = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: exact[i] - shares[i], reverse=True)
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


def input_texts(body: Mapping[str, Any]) -> list[str]:
    """The texts of an embeddings body's ``input`` (a string or a list of strings)."""
    value = body.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def input_tokens(body: Mapping[str, Any]) -> int:
    """Tokens an embeddings request counts against the limits: its inputs' tokens, no more."""
    model = str(body.get("model") or "")
    return sum(tokens.count_text(text, model) for text in input_texts(body))


def is_embeddings_body(body: Mapping[str, Any]) -> bool:
    """True for an embeddings request body (``input``, no ``messages``)."""
    return "input" in body and "messages" not in body


def blank(text: str) -> bool:
    """Text with nothing to embed: empty or only whitespace."""
    return not text.strip()


def over_limit(text: str, model: str, limit: int = MAX_INPUT_TOKENS) -> int | None:
    """The text's token count when it is over ``limit``, else None (cheap for short text)."""
    # A token is at least one byte: text of at most ``limit`` bytes cannot be over.
    if len(text) <= limit // 4 or len(text.encode("utf-8")) <= limit:
        return None
    count = tokens.count_text(text, model)
    return count if count > limit else None
