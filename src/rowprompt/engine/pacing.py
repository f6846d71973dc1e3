"""How many requests the real-time engine keeps live, and what it reports while it runs.

:class:`Window` sizes the concurrency: once a limit is known, Little's law (in flight = rate ×
latency) with a margin for latency spread; while none is known, a TCP-like slow start that
doubles every round trip and halves on a 429. :class:`RateMeter` measures requests and tokens
per minute over the last minute; :class:`EngineStats` is the snapshot progress displays show.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

from rowprompt.engine.ratelimit import Limiter

INITIAL_WINDOW = 4
# Before any answer, assume a one-second latency for Little's law.
LATENCY_GUESS_S = 1.0
# Little's law gives the mean; requests slower than the mean must not starve the budget.
LITTLE_MARGIN = 1.25
LITTLE_SPARE = 2
EWMA = 0.1
METER_SECONDS = 60.0


@dataclass(frozen=True)
class EngineStats:
    """One look at a running real-time engine (for progress bars and the summary)."""

    elapsed_s: float
    rows_done: int
    rows_failed: int
    rows_left: int
    requests: int
    retries: int
    rate_limited: int
    errors: int
    in_flight: int
    concurrency: int
    requests_per_min: float
    tokens_per_min: float
    rpm_limit: float | None
    tpm_limit: float | None
    limit_source: str
    paused_for_s: float
    eta_s: float | None
    stopping: bool

    @property
    def rpm_ratio(self) -> float | None:
        """Requests per minute as a fraction of the limit, when one is known."""
        return self.requests_per_min / self.rpm_limit if self.rpm_limit else None

    @property
    def tpm_ratio(self) -> float | None:
        """Tokens per minute as a fraction of the limit, when one is known."""
        return self.tokens_per_min / self.tpm_limit if self.tpm_limit else None

    def line(self) -> str:
        """A one-line summary: ``412/min of 600 RPM · 0 429s · 3 retries · ETA 2m10s``."""
        parts = [f"{self.requests_per_min:,.0f} req/min"]
        if self.rpm_limit:
            parts[-1] += f" of {self.rpm_limit:,.0f} RPM"
        tokens = f"{self.tokens_per_min:,.0f} tok/min"
        if self.tpm_limit:
            tokens += f" of {self.tpm_limit:,.0f} TPM"
        parts += [tokens, f"{self.rate_limited} 429s", f"{self.retries} retries"]
        if self.paused_for_s > 0:
            parts.append(f"paused {self.paused_for_s:.1f}s")
        if self.eta_s is not None and self.rows_left:
            minutes, seconds = divmod(int(self.eta_s), 60)
            parts.append(f"ETA {minutes}m{seconds:02d}s")
        return " · ".join(parts)


class RateMeter:
    """Requests, tokens and finished rows over the last minute."""

    def __init__(self) -> None:
        self._start = time.monotonic()
        self._sent: deque[tuple[float, int]] = deque()
        self._tokens = 0
        self._finished: deque[float] = deque()

    def _trim(self, now: float) -> None:
        cut = now - METER_SECONDS
        while self._sent and self._sent[0][0] < cut:
            self._tokens -= self._sent.popleft()[1]
        while self._finished and self._finished[0] < cut:
            self._finished.popleft()

    def sent(self, tokens: int) -> None:
        """One request left, reserving ``tokens``."""
        now = time.monotonic()
        self._sent.append((now, tokens))
        self._tokens += tokens
        if len(self._sent) % 256 == 0:
            self._trim(now)

    def finished(self) -> None:
        """One row ended."""
        self._finished.append(time.monotonic())

    def _span(self, now: float) -> float:
        return max(1e-3, min(METER_SECONDS, now - self._start))

    def requests_per_min(self) -> float:
        """Requests sent per minute, over the last minute (or since the start)."""
        now = time.monotonic()
        self._trim(now)
        return len(self._sent) * 60.0 / self._span(now)

    def tokens_per_min(self) -> float:
        """Tokens reserved per minute, as the provider counts them at admission."""
        now = time.monotonic()
        self._trim(now)
        return self._tokens * 60.0 / self._span(now)

    def rows_per_s(self) -> float:
        """Rows ended per second lately (for the ETA)."""
        now = time.monotonic()
        self._trim(now)
        return len(self._finished) / self._span(now)


class Window:
    """The number of rows the engine keeps live, never above ``cap`` (``--concurrency``)."""

    def __init__(self, cap: int, limiter: Limiter) -> None:
        self.cap = max(1, cap)
        self.limiter = limiter
        self._cwnd = float(min(self.cap, INITIAL_WINDOW))
        self._ssthresh = float(self.cap)
        self.latency_s: float | None = None
        self._latency_dev = 0.0
        self._tokens_avg: float | None = None

    @property
    def size(self) -> int:
        """How many rows may be live now."""
        if self.latency_s is None and not self.limiter.observed:
            # One request first: its answer's headers tell what is left of the budgets (the
            # key may be in use elsewhere) before anything else is spent.
            return 1
        rate = self._rate_per_s()
        if rate is None:
            return max(1, min(self.cap, int(self._cwnd)))
        latency = LATENCY_GUESS_S if self.latency_s is None else self.latency_s
        latency += 2 * self._latency_dev
        wanted = math.ceil(rate * latency * LITTLE_MARGIN) + LITTLE_SPARE
        return max(1, min(self.cap, wanted))

    def _rate_per_s(self) -> float | None:
        rates = []
        if self.limiter.rpm:
            rates.append(self.limiter.rpm / 60.0)
        if self.limiter.tpm and self._tokens_avg:
            rates.append(self.limiter.tpm / 60.0 / self._tokens_avg)
        elif self.limiter.tpm:
            rates.append(self.limiter.tpm / 60.0 / 100.0)
        return min(rates) if rates else None

    def succeeded(self, latency_s: float, tokens: int) -> None:
        """An answer came after ``latency_s``; grow the slow-start window.

        The first answer (the probe sent alone) opens the window at ``INITIAL_WINDOW``; each
        answer after it adds one (the window doubles every round trip) up to the threshold a
        429 set, then one per window (a round trip).
        """
        probe = self.latency_s is None
        if self.latency_s is None:
            self.latency_s = latency_s
        else:
            error = latency_s - self.latency_s
            self.latency_s += EWMA * error
            self._latency_dev += EWMA * (abs(error) - self._latency_dev)
        self._tokens_avg = (
            float(tokens)
            if self._tokens_avg is None
            else self._tokens_avg + EWMA * (tokens - self._tokens_avg)
        )
        if probe:
            return
        if self._cwnd < self._ssthresh:
            self._cwnd += 1.0  # one more per answer: doubles every round trip
        else:
            self._cwnd += 1.0 / self._cwnd
        self._cwnd = min(self._cwnd, float(self.cap))

    def rate_limited(self) -> None:
        """A 429: halve the slow-start window (it matters while no limit is known)."""
        self._ssthresh = max(2.0, self._cwnd / 2)
        self._cwnd = self._ssthresh
