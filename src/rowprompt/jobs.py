"""Jobs, rows and their states: pure values, no I/O.

A row's life::

    pending ──claim──► in_flight(via, attempt n) ──► done
       ▲                     │
       └──── retryable ◄─────┴──► failed (permanent error, or attempts exhausted)

A batch shard's life::

    planned ──► uploaded(file_id) ──► submitted(batch_id) ──► collected
                                              └──► lost (the provider no longer knows it)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class RowState(StrEnum):
    """Where a row is in its life."""

    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    DONE = "done"
    FAILED = "failed"


class JobState(StrEnum):
    """Where a job is: ``running`` while any row is pending or in flight."""

    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"


class ShardState(StrEnum):
    """Where a batch shard is."""

    PLANNED = "planned"
    UPLOADED = "uploaded"
    SUBMITTED = "submitted"
    COLLECTED = "collected"
    LOST = "lost"


ACTIVE_SHARD_STATES = (ShardState.PLANNED, ShardState.UPLOADED, ShardState.SUBMITTED)
# Provider batch statuses after which nothing more will change.
TERMINAL_BATCH_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})

EMPTY_INPUT = "empty_input"
"""The error code of an embeddings row with no text, skipped with ``--skip-empty``."""
# Rows that ended without an answer on purpose (cancelled, held back by --budget, nothing to
# send): the output calls them ``skipped``, not ``failed``.
SKIPPED_CODES = ("cancelled", "over_budget", EMPTY_INPUT)

VIA_REALTIME = "realtime"
VIA_BATCH = "batch"
VIA_CACHE = "cache"


@dataclass(frozen=True)
class JobSpec:
    """Everything that decides what a job asks; its hash is the job's identity.

    Output paths and throttles are not part of the identity: changing them and running again
    continues the same job. The mode is: a job run again in another mode is a new job, whose
    rows already answered come from the cache (``_via`` ``cache``) instead of being paid again.
    """

    input_hash: str
    prompt: str
    system: str | None
    model: str
    provider: str
    base_url: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    answer_spec: str = "text"
    mode: str = "auto"
    id_column: str | None = None
    sheet: str | None = None
    limit: int | None = None
    # Added after the first release: left out of the hash while at their defaults, so a job
    # made before they existed keeps its identity.
    endpoint: str = "chat"  # chat | responses | embeddings
    image_columns: tuple[str, ...] = ()

    def job_id(self) -> str:
        """A short, stable hash of the spec: the same command again finds the same job."""
        fields = asdict(self)
        for name, default in _LATER_FIELDS.items():
            if fields[name] == default:
                del fields[name]
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def to_json(self) -> str:
        """The spec as JSON, for the ledger."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        """The spec back from the ledger."""
        data = json.loads(text)
        if "image_columns" in data:
            data["image_columns"] = tuple(data["image_columns"])
        return cls(**data)


_LATER_FIELDS: dict[str, Any] = {"endpoint": "chat", "image_columns": ()}


def request_hash(body: dict[str, Any], endpoint: str = "chat") -> str:
    """The hash of the exact request sent: the cache key.

    Chat and the Responses API take the same body here (the provider translates it on the
    way out) but are different requests, answered and priced apart: the endpoint is part of
    the key, except for chat (so caches written before endpoints existed still match) and
    embeddings (whose bodies differ from chat's anyway).
    """
    if endpoint not in ("chat", "embeddings"):
        body = {"__endpoint": endpoint, **body}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Completion:
    """What one request answered, in the provider-neutral shape the engines use."""

    text: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    refusal: str | None = None
    model: str | None = None

    def to_json(self) -> str:
        """Serialised for the cache."""
        # By hand: dataclasses.asdict deep-copies every field, the main cost of reconciling
        # a million batch lines.
        return json.dumps(
            {
                "text": self.text,
                "finish_reason": self.finish_reason,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "cached_tokens": self.cached_tokens,
                "refusal": self.refusal,
                "model": self.model,
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str) -> Completion:
        """Back from the cache."""
        return cls(**json.loads(text))


@dataclass(frozen=True)
class RowOutcome:
    """How a row ended, as written to the ledger."""

    key: str
    state: RowState
    via: str
    completion: Completion | None = None
    cost_usd: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    status_code: int | None = None


@dataclass
class JobProgress:
    """Counts of a job's rows by state, with tokens and cost so far."""

    total: int = 0
    pending: int = 0
    in_flight: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    """Of ``failed``, the rows ended on purpose (see ``SKIPPED_CODES``)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def finished(self) -> int:
        """Rows that reached an end state."""
        return self.done + self.failed

    @property
    def complete(self) -> bool:
        """True when no row is pending or in flight."""
        return self.total > 0 and self.finished >= self.total
