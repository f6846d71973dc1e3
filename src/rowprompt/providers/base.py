"""The provider seam: what every API shape offers the engines.

Engines speak rows and requests; a provider speaks SDK calls. Requests travel in the OpenAI
chat-completions body shape (``model``, ``messages``, parameters), the lingua franca of the
seam; a provider for another API shape translates it. Providers raise only errors from
:mod:`rowprompt.errors`, never an SDK's.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rowprompt.jobs import Completion


@dataclass(frozen=True)
class LimitsObservation:
    """What a response's rate-limit headers said (None where a header was absent)."""

    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None


def retry_after_seconds(
    headers: Mapping[str, str], *, now: Callable[[], float] = time.time
) -> float | None:
    """The provider's advice on when to retry, in seconds, or None when it gave none.

    ``retry-after-ms`` (milliseconds, OpenAI's) wins over ``retry-after``, which is either
    seconds or an HTTP date (RFC 9110); a date in the past means "now" (0). The same reading
    as the openai SDK's.
    """
    value = headers.get("retry-after-ms")
    if value:
        try:
            ms = float(value)
        except ValueError:
            ms = math.nan
        if math.isfinite(ms):
            return max(0.0, ms / 1000.0)
    value = (headers.get("retry-after") or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000": an HTTP date is GMT, as the SDK reads it too
            when = when.replace(tzinfo=datetime.UTC)
        return max(0.0, when.timestamp() - now())
    return max(0.0, seconds) if math.isfinite(seconds) else None


@dataclass(frozen=True)
class CompletionResult:
    """A real-time answer with what its headers said about the limits."""

    completion: Completion
    limits: LimitsObservation | None = None
    status_code: int = 200


@dataclass(frozen=True)
class BatchCaps:
    """The limits of one batch file for this provider."""

    max_requests: int = 50_000
    # OpenAI documents "200 MB"; decimal is the smaller reading, so no shard can exceed it.
    max_bytes: int = 200 * 1000 * 1000


@dataclass(frozen=True)
class BatchError:
    """A batch-level error (a validation failure), as the provider reported it."""

    code: str | None
    message: str
    line: int | None = None


@dataclass(frozen=True)
class BatchInfo:
    """A batch as the provider sees it, in OpenAI's status vocabulary."""

    id: str
    status: str
    total: int = 0
    completed: int = 0
    failed: int = 0
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: tuple[BatchError, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    created_at: float | None = None


@dataclass(frozen=True)
class BatchLineResult:
    """One line of a batch's results: a completion, or why there is none."""

    custom_id: str
    completion: Completion | None
    status_code: int | None = None
    error_code: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class EndpointShape:
    """How one OpenAI-shaped endpoint is asked and answered.

    The engines build every request in the chat-completions shape (or, for embeddings, as
    ``{model, input, ...}``); a shape turns that into the endpoint's own body, and the
    endpoint's answer into a :class:`Completion`. The same two functions serve real time and
    batch lines, so both modes ask and read exactly alike.
    """

    path: str
    """The endpoint's path: a batch line's ``url`` and the batch's ``endpoint``."""
    to_request: Callable[[Mapping[str, Any]], dict[str, Any]]
    to_completion: Callable[[Mapping[str, Any]], Completion]
    is_answer: Callable[[Mapping[str, Any]], bool]
    """Whether a 200 body is an answer (a batch line's body may be an error instead)."""


class Provider(Protocol):
    """One API shape (OpenAI-compatible first); see the module docstring."""

    name: str
    batch_caps: BatchCaps

    async def complete(self, body: Mapping[str, Any], *, timeout: float) -> CompletionResult:
        """Send one real-time request."""
        ...

    def batch_line(self, custom_id: str, body: Mapping[str, Any]) -> bytes:
        """One request as a line of this provider's batch input file (newline included)."""
        ...

    async def upload_batch_file(self, path: Path) -> str:
        """Upload a batch input file; returns its file id."""
        ...

    async def create_batch(self, input_file_id: str, metadata: Mapping[str, str]) -> BatchInfo:
        """Create a batch over an uploaded file."""
        ...

    async def get_batch(self, batch_id: str) -> BatchInfo:
        """The batch as it stands now."""
        ...

    async def cancel_batch(self, batch_id: str) -> BatchInfo:
        """Ask the provider to cancel a batch."""
        ...

    async def find_batches(self, metadata: Mapping[str, str]) -> list[BatchInfo]:
        """Batches whose metadata holds all these pairs (to adopt one after a crash)."""
        ...

    def batch_results(self, info: BatchInfo) -> AsyncIterator[BatchLineResult]:
        """Stream the output and error files' lines."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
