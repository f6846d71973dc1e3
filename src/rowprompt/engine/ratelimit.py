"""Request and token budgets over a minute, refilled continuously.

OpenAI admits a request against its tokens-per-minute limit by its prompt tokens plus
``max_tokens`` × ``n``; the engine reserves exactly that. A 429 pauses every sender until the
provider's ``retry-after`` has passed, so one storm does not become many.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Bucket:
    """A budget of ``capacity`` per minute, refilled continuously; None means unlimited."""

    def __init__(self, per_minute: float | None, clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self._clock = clock
        self._level = float(per_minute or 0)
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        if self.per_minute:
            self._level = min(
                float(self.per_minute), self._level + (now - self._at) * self.per_minute / 60.0
            )
        self._at = now

    def wait_time(self, amount: float) -> float:
        """Seconds until ``amount`` fits (0 when it fits now)."""
        if not self.per_minute:
            return 0.0
        self._refill()
        # A request larger than the whole budget waits for a full bucket, never forever.
        amount = min(amount, float(self.per_minute))
        if self._level >= amount:
            return 0.0
        return (amount - self._level) * 60.0 / self.per_minute

    def take(self, amount: float) -> None:
        """Spend ``amount`` (the level may go below zero: it is paid back by the refill)."""
        if self.per_minute:
            self._refill()
            self._level -= amount

    def set_rate(self, per_minute: float | None) -> None:
        """Change the budget (for example from the provider's headers)."""
        self._refill()
        self.per_minute = per_minute
        if per_minute:
            self._level = min(self._level, float(per_minute))


class Limiter:
    """Requests and tokens per minute, plus a shared pause after a 429."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None) -> None:
        self.requests = Bucket(rpm)
        self.tokens = Bucket(tpm)
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    @property
    def tpm(self) -> float | None:
        """The tokens-per-minute budget, if any."""
        return self.tokens.per_minute

    async def acquire(self, tokens: int) -> None:
        """Wait until one request of ``tokens`` fits in both budgets, then spend them."""
        async with self._lock:
            while True:
                pause = self._paused_until - time.monotonic()
                wait = max(pause, self.requests.wait_time(1), self.tokens.wait_time(tokens))
                if wait <= 0:
                    break
                await asyncio.sleep(min(wait, 1.0))
            self.requests.take(1)
            self.tokens.take(tokens)

    def pause(self, seconds: float) -> None:
        """Hold every sender for ``seconds`` (after a 429)."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)
