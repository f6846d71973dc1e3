"""The ``/v1/embeddings`` shape: one body, one or many inputs, vectors back as exact text.

The engines build ``{"model", "input", "dimensions"?}``; on the wire the vectors are asked as
base64 (``encoding_format: "base64"``, as the openai SDK asks by default: a quarter of the
JSON and no float printing), and kept as that text in ``Completion.text`` (see
:mod:`rowprompt.vectors`). An answer with float lists (a server that ignores the encoding) is
encoded the same way. Usage is ``usage.prompt_tokens``; embeddings have no output tokens.

A batch of this endpoint holds at most 50,000 embedding inputs; rowprompt writes one input
per line, so the 50,000-requests cap of every batch (``BatchCaps.max_requests``) keeps it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from rowprompt import vectors
from rowprompt.jobs import Completion
from rowprompt.providers.base import EndpointShape

EMBEDDINGS_ENDPOINT: Final = "/v1/embeddings"


def to_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """The engine's embeddings body as sent: base64 vectors unless the body says otherwise."""
    request = dict(body)
    request.setdefault("encoding_format", "base64")
    return request


def to_completion(data: Mapping[str, Any]) -> Completion:
    """A ``CreateEmbeddingResponse`` as one completion holding every vector, in input order."""
    items = [item for item in data.get("data") or [] if isinstance(item, Mapping)]
    items.sort(key=lambda item: int(item.get("index") or 0))
    encoded = []
    for item in items:
        vector = item.get("embedding")
        encoded.append(vector if isinstance(vector, str) else vectors.encode(vector or []))
    usage = data.get("usage") or {}
    return Completion(
        text=vectors.join_vectors(encoded),
        finish_reason="stop",
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=0,
        model=data.get("model"),
    )


def is_answer(data: Mapping[str, Any]) -> bool:
    """An embeddings list (a batch line's body may be an error instead)."""
    return data.get("object") == "list" and isinstance(data.get("data"), list)


SHAPE: Final = EndpointShape(
    path=EMBEDDINGS_ENDPOINT,
    to_request=to_request,
    to_completion=to_completion,
    is_answer=is_answer,
)
