"""The batch queue: how many tokens may be enqueued, and when to look at each batch again.

``QueueScheduler`` keeps the estimated tokens of every unfinished batch for a provider's model
(this job's and any other job's in the same ledger) under the model's enqueued-token limit.
The limit comes from, in order: the user (``--batch-token-limit``), lowered by anything the
provider taught us; what the provider taught us (the number in a ``token_limit_exceeded``
message, remembered in the ledger); a per-model default table; or nothing (no limit known:
everything may go, and the first ``token_limit_exceeded`` teaches the limit).

``PollSchedule`` spaces the polls of each batch by its observed progress: a batch that moves
is looked at again about when it should be half-way to done (never sooner than the floor),
a batch that does not move is looked at half as often each time (never later than the cap).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from rowprompt.ledger import Ledger, ShardRecord

# OpenAI's published tier-1 examples (reference §3). Opt-in: pass it as
# ``default_token_limits`` for the real OpenAI API only; higher tiers allow far more, and
# a learned or explicit limit always wins over this table.
OPENAI_TIER1_TOKEN_LIMITS: Mapping[str, int] = {
    "gpt-4o-mini": 2_000_000,
    "gpt-4o": 90_000,
}
# Our estimate and the provider's differ a little (it estimates from characters): keep 5%.
DEFAULT_HEADROOM = 0.95
# A shard is at most a tenth of the room, so nine or so are enqueued together and the queue
# stays near full while the oldest finish and the next go in.
DEFAULT_SHARD_FRACTION = 0.1
# With no number in the message, assume the limit is this fraction of what was enqueued.
_UNNUMBERED_SHRINK = 0.9
_LIMIT_NUMBER = re.compile(r"limit:\s*([\d][\d,_.\s]*)\s*enqueued\s+tokens", re.IGNORECASE)
LEARNED = "learned"


def parse_token_limit(message: str) -> int | None:
    """The limit in ``... Limit: 2,000,000 enqueued tokens ...``, or None."""
    found = _LIMIT_NUMBER.search(message or "")
    if not found:
        return None
    digits = re.sub(r"[^\d]", "", found.group(1))
    return int(digits) if digits else None


class QueueScheduler:
    """Room in one provider model's batch queue, shared by every job of a ledger."""

    def __init__(
        self,
        ledger: Ledger,
        provider: str,
        model: str,
        *,
        token_limit: int | None = None,
        default_limits: Mapping[str, int] | None = None,
        headroom: float = DEFAULT_HEADROOM,
        shard_fraction: float = DEFAULT_SHARD_FRACTION,
        max_shard_tokens: int | None = None,
    ) -> None:
        self.ledger = ledger
        self.provider = provider
        self.model = model
        self.explicit = token_limit
        self.default = (default_limits or {}).get(model)
        self.headroom = headroom
        self.shard_fraction = shard_fraction
        self.max_shard_tokens = max_shard_tokens

    def limit(self) -> int | None:
        """The model's enqueued-token limit as we know it now (None: unknown, unlimited)."""
        stored = self.ledger.queue_limit(self.provider, self.model)
        learned = stored.token_limit if stored is not None else None
        if self.explicit is not None:
            return min(self.explicit, learned) if learned is not None else self.explicit
        if learned is not None:
            return learned
        return self.default

    def budget(self) -> int | None:
        """The tokens we allow ourselves to enqueue: the limit less the headroom."""
        limit = self.limit()
        return None if limit is None else max(1, int(limit * self.headroom))

    def in_use(self) -> int:
        """Estimated tokens of every unfinished batch for this model, all jobs."""
        return self.ledger.queue_in_use(self.provider, self.model)

    def available(self) -> int | None:
        """Tokens that may still be enqueued now (None: no limit known)."""
        budget = self.budget()
        return None if budget is None else budget - self.in_use()

    def fits(self, tokens: int) -> bool:
        """Whether a batch of ``tokens`` may be created now."""
        room = self.available()
        return room is None or tokens <= room

    def shard_tokens(self) -> int | None:
        """The token target of a new shard (None: only the request and byte caps apply)."""
        budget = self.budget()
        target = None if budget is None else max(1, int(budget * self.shard_fraction))
        if self.max_shard_tokens is not None:
            target = min(target or self.max_shard_tokens, self.max_shard_tokens)
        return target

    def learn(self, message: str, *, shard_tokens: int) -> int:
        """Record the limit a ``token_limit_exceeded`` message implies; returns the new limit.

        The number in the message is taken as it is. Without one, the limit must be below what
        was enqueued when the batch was refused, so we assume a little less than that.
        """
        said = parse_token_limit(message)
        current = self.limit()
        if said is None:
            implied = int((self.in_use() + shard_tokens) * _UNNUMBERED_SHRINK)
            said = max(1, min(implied, current if current is not None else implied))
        self.ledger.set_queue_limit(
            self.provider, self.model, said, source=LEARNED, message=message[:500]
        )
        return self.limit() or said


@dataclass
class _Seen:
    at: float
    status: str
    done: int
    interval: float
    due: float


class PollSchedule:
    """When each batch is next due for a look, from how fast it has been moving."""

    def __init__(self, floor_s: float, cap_s: float) -> None:
        self.floor = max(0.01, floor_s)
        self.cap = max(self.floor, cap_s)
        self._seen: dict[str, _Seen] = {}

    def start(self, batch_id: str, now: float | None = None) -> None:
        """A batch was just created: look again after the floor."""
        now = time.monotonic() if now is None else now
        self._seen[batch_id] = _Seen(now, "validating", 0, self.floor, now + self.floor)

    def due(self, batch_id: str, now: float | None = None) -> bool:
        """Whether the batch should be polled now (unknown batches are due)."""
        seen = self._seen.get(batch_id)
        return seen is None or (time.monotonic() if now is None else now) >= seen.due

    def next_due(self) -> float | None:
        """The monotonic time the earliest batch is due, or None with no batch."""
        return min((s.due for s in self._seen.values()), default=None)

    def forget(self, batch_id: str) -> None:
        """The batch ended: stop scheduling it."""
        self._seen.pop(batch_id, None)

    def observe(
        self, batch_id: str, status: str, done: int, total: int, now: float | None = None
    ) -> float:
        """Record what a poll saw; returns the seconds until the next poll of this batch."""
        now = time.monotonic() if now is None else now
        prev = self._seen.get(batch_id)
        if prev is None:
            interval = self.floor
        elif status in ("finalizing", "cancelling"):
            interval = self.floor  # results are moments away
        elif done > prev.done and now > prev.at and total > done:
            rate = (done - prev.done) / (now - prev.at)
            interval = (total - done) / rate / 2  # half-way to the expected end
        elif status != prev.status or done > prev.done:
            interval = self.floor
        else:
            interval = prev.interval * 2  # no news: back off
        interval = min(self.cap, max(self.floor, interval))
        self._seen[batch_id] = _Seen(now, status, done, interval, now + interval)
        return interval


def shard_summary(shard: ShardRecord, now: float | None = None) -> str:
    """One line for ``rowprompt status``: batch, state, counts, age, estimated tokens."""
    now = time.time() if now is None else now
    state = str(shard.status or shard.state)
    if shard.waiting:
        state = "waiting for room in the batch queue"
    counts = ""
    if shard.count_total:
        done, failed = shard.count_completed or 0, shard.count_failed or 0
        counts = f", {done}/{shard.count_total} done, {failed} failed"
    since = shard.submitted_at or shard.created_at
    age = _age(now - since) if since else "?"
    end = shard.finished_at
    took = f", took {_age(end - since)}" if end and since else f", age {age}"
    error = f" — {shard.error}" if shard.error else ""
    return (
        f"batch {shard.batch_id or '(not created)'}: shard {shard.number}, {shard.rows} rows,"
        f" ~{shard.estimated_tokens:,} tokens, {state}{counts}{took}{error}"
    )


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
