"""Request and token budgets over a minute, refilled continuously, held just under the limit.

Where the limits come from, in order: the user's ``--rpm``/``--tpm``; the provider's
``x-ratelimit-*`` headers, read from every answer (they lower our local budgets when another
process spends the same key); and, while nothing is known, a slow start in the engine. When
a server that announces nothing answers 429, the limiter measures the rate it admits while
it refuses the excess, paces at that rate, and probes slowly upward (see :meth:`Limiter.observe`).

How tokens count depends on the provider's face: OpenAI admits a request by its prompt tokens
plus ``max_tokens`` × ``n`` and refunds nothing; Anthropic counts ``max_tokens`` at the start
and then the real output, so there the unused part comes back when the answer arrives.

A 429 pauses every sender for as long as the provider asks, and shrinks the budgets a little;
they grow back over the following half minute.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from rowprompt.providers.base import LimitsObservation

FACE_OPENAI = "openai"
FACE_ANTHROPIC = "anthropic"
FACES = (FACE_OPENAI, FACE_ANTHROPIC)
# We aim a hair under the limit: the provider's clock and ours differ by the network delay,
# and a request that overtakes another on the way would otherwise meet an empty bucket.
SAFETY = 0.995
# After a 429 the budget shrinks by this factor (down to FLOOR), then recovers linearly.
SHRINK = 0.9
FLOOR = 0.5
RECOVER_PER_S = 0.005
# Until the provider has told us its state, a known budget may be spent this many seconds'
# worth at once: the key may already be in use elsewhere, so we do not assume a full bucket.
PROBE_SECONDS = 2.0
# Sleep in slices so that a pause, a new limit or a stop is seen promptly.
MAX_SLEEP_S = 0.25
# Learning a requests limit nobody announces. After a 429, answers to requests sent after it
# are timed: while the server keeps refusing the excess, they arrive at exactly its rate.
LEARN_ANSWERS = 8  # answers timed before the rate is set
LEARN_MAX_S = 15.0  # ... or this long, with at least two answers
# A learned limit is probed upward (1% a second, up to 1.5 times what was measured) and cut by
# 10% at each 429 storm: the provider may admit more than we saw, or less than before.
LEARN_GROWTH_PER_S = 0.01
LEARN_MAX_GROWTH = 1.5
LEARN_CUT = 0.9


class Bucket:
    """A budget of ``per_minute`` units, refilled continuously; None means unlimited."""

    def __init__(
        self,
        per_minute: float | None,
        clock: Callable[[], float] = time.monotonic,
        *,
        level: float | None = None,
    ) -> None:
        self.per_minute = per_minute
        self.scale = 1.0
        self._clock = clock
        self._level = float(per_minute or 0) if level is None else level
        self._at = clock()
        self.taken = 0.0  # everything ever spent: tickets remember it to read headers against

    @property
    def rate(self) -> float:
        """Units per minute after the safety margin and any 429 shrink."""
        return float(self.per_minute or 0) * self.scale

    def _refill(self) -> None:
        now = self._clock()
        if self.per_minute:
            self._level = min(
                float(self.per_minute), self._level + (now - self._at) * self.rate / 60
            )
        self._at = now

    @property
    def level(self) -> float:
        """Units available now (negative while a debt is being paid back)."""
        self._refill()
        return self._level

    def wait_time(self, amount: float) -> float:
        """Seconds until ``amount`` fits (0 when it fits now)."""
        if not self.per_minute:
            return 0.0
        self._refill()
        # A request larger than the whole budget waits for a full bucket, never forever.
        amount = min(amount, float(self.per_minute))
        if self._level >= amount:
            return 0.0
        return (amount - self._level) * 60.0 / max(self.rate, 1e-9)

    def take(self, amount: float) -> None:
        """Spend ``amount`` (the level may go below zero: the refill pays it back)."""
        self.taken += amount
        if self.per_minute:
            self._refill()
            self._level -= amount

    def give_back(self, amount: float) -> None:
        """Return ``amount`` unused units (a provider that refunds)."""
        if self.per_minute and amount > 0:
            self._refill()
            self._level = min(float(self.per_minute), self._level + amount)

    def lower_to(self, level: float) -> None:
        """Never hold more than ``level`` (what the provider says is left)."""
        self._refill()
        self._level = min(self._level, level)

    def set_rate(self, per_minute: float | None, *, level: float | None = None) -> None:
        """Change the budget (from the provider's headers); ``level`` sets what is left."""
        self._refill()
        self.per_minute = per_minute
        if level is not None:
            self._level = level
        if per_minute:
            self._level = min(self._level, float(per_minute))


@dataclass
class Ticket:
    """One admitted request: what it reserved, and the budgets' state when it left."""

    tokens: int
    output_tokens: int
    sent_at: float
    requests_taken: float
    tokens_taken: float


@dataclass(frozen=True)
class LimitState:
    """The limits in force, for progress displays and the engine's concurrency."""

    rpm: float | None
    tpm: float | None
    source: str  # "user", "headers", "user+headers" or "unknown"
    scale: float
    paused_for_s: float


class Limiter:
    """Requests and tokens per minute, corrected by headers, plus a shared pause after a 429.

    ``Limiter(rpm, tpm)`` takes the user's limits (None: learn them from the provider);
    ``face`` is the provider's way of counting tokens (``openai``: no refund; ``anthropic``:
    the unused part of ``max_tokens`` comes back with :meth:`settle`).
    """

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        face: str = FACE_OPENAI,
        safety: float = SAFETY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if face not in FACES:
            raise ValueError(f"unknown provider face {face!r}")
        self.face = face
        self.safety = safety
        self._clock = clock
        self.user_rpm = rpm
        self.user_tpm = tpm
        # Until the provider speaks, the user's budgets hold a few seconds' worth, not a minute.
        self.requests = Bucket(rpm, clock, level=_probe(rpm))
        self.tokens = Bucket(tpm, clock, level=_probe(tpm))
        self.header_rpm: int | None = None
        self.header_tpm: int | None = None
        self.observed = False
        # A requests limit learned from 429s (no flags, no headers): measured, then probed.
        self.learned_rpm: float | None = None
        self._measured_rpm = 0.0
        self._learned_at = 0.0
        self._learn_from: float | None = None  # the 429 that started the measurement
        self._learn_answers: list[float] = []
        self._learn_refusals = 0  # 429s since the first timed answer: still refusing?
        self._paused_until = 0.0
        self._shrink = 1.0
        self._shrunk_at = 0.0
        self._lock = asyncio.Lock()
        self._apply_scale()

    # -- what is known ----------------------------------------------------------------------
    @property
    def rpm(self) -> float | None:
        """The requests-per-minute limit in force (the provider's, or the user's if lower)."""
        return self.requests.per_minute

    @property
    def tpm(self) -> float | None:
        """The tokens-per-minute limit in force, if any."""
        return self.tokens.per_minute

    @property
    def known(self) -> bool:
        """True once a request or token limit is known, from the user or the provider."""
        return self.rpm is not None or self.tpm is not None

    def state(self) -> LimitState:
        """The limits in force now."""
        self._apply_scale()
        sources = [s for s, on in (("user", self.user_rpm or self.user_tpm),
                                   ("headers", self.observed),
                                   ("learned", self.learned_rpm)) if on]  # fmt: skip
        return LimitState(
            rpm=self.rpm,
            tpm=self.tpm,
            source="+".join(sources) or "unknown",
            scale=self._scale(),
            paused_for_s=max(0.0, self._paused_until - self._clock()),
        )

    def too_large(self, tokens: int) -> str | None:
        """Why a request of ``tokens`` can never pass, or None when it can."""
        if self.tpm is not None and tokens > self.tpm:
            return (
                f"the request needs {tokens} tokens (prompt + max_tokens), more than the whole"
                f" tokens-per-minute limit ({int(self.tpm)}): shorten the row or lower"
                " --max-tokens"
            )
        return None

    # -- spending ---------------------------------------------------------------------------
    def _wait(self, tokens: int) -> float:
        self._apply_scale()
        now = self._clock()
        pause = self._paused_until - now
        return max(pause, self.requests.wait_time(1), self.tokens.wait_time(tokens))

    async def acquire(self, tokens: int, output_tokens: int = 0) -> Ticket:
        """Wait until one request of ``tokens`` fits in both budgets, then spend them.

        ``tokens`` is the whole reservation (prompt + ``max_tokens`` × ``n``), of which
        ``output_tokens`` is the output part a refunding provider may give back.
        """
        # The fast path takes no lock: nobody queues and it fits (the common case unlimited).
        if not self._lock.locked() and self._wait(tokens) <= 0:
            return self._take(tokens, output_tokens)
        async with self._lock:  # FIFO: the first to wait is the first served
            while (wait := self._wait(tokens)) > 0:
                await asyncio.sleep(min(wait, MAX_SLEEP_S))
            return self._take(tokens, output_tokens)

    def _take(self, tokens: int, output_tokens: int) -> Ticket:
        self.requests.take(1)
        self.tokens.take(tokens)
        return Ticket(tokens, output_tokens, self._clock(), self.requests.taken, self.tokens.taken)

    def settle(self, ticket: Ticket, completion_tokens: int | None) -> int:
        """The answer came: where the provider refunds unused output tokens, so do we.

        Returns the tokens given back (always 0 on the OpenAI face).
        """
        if self.face != FACE_ANTHROPIC or completion_tokens is None:
            return 0
        unused = max(0, ticket.output_tokens - completion_tokens)
        self.tokens.give_back(unused)
        return unused

    # -- what the provider says --------------------------------------------------------------
    def observe(
        self, ticket: Ticket | None, seen: LimitsObservation | None, *, answered: bool = True
    ) -> None:
        """Correct the budgets from one answer's ``x-ratelimit-*`` headers.

        ``answered``: the request was admitted (a 200, not a 429); while a limit is being
        learned from 429s, its arrival is timed.
        """
        if answered and ticket is not None:
            self._time_answer(ticket)
        if seen is None:
            return
        first = not self.observed
        self.observed = True
        if seen.limit_requests or seen.limit_tokens:
            self._stop_learning()  # the provider says its limits: nothing to guess
        for bucket, limit, remaining, reset, user, taken_then in (
            (self.requests, seen.limit_requests, seen.remaining_requests, seen.reset_requests_s,
             self.user_rpm, ticket.requests_taken if ticket else None),
            (self.tokens, seen.limit_tokens, seen.remaining_tokens, seen.reset_tokens_s,
             self.user_tpm, ticket.tokens_taken if ticket else None),
        ):  # fmt: skip
            if limit is not None and limit > 0:
                # The provider's limit wins over ours, unless the user asked for less.
                wanted = float(limit) if user is None else min(float(user), float(limit))
                if bucket.per_minute != wanted:
                    bucket.set_rate(wanted)
            if remaining is None and reset is not None and limit:
                # No count left, but the time to a full bucket: refilled at limit/60 a second,
                # the bucket lacks reset × limit/60 of its limit.
                remaining = max(0, round(limit - reset * limit / 60.0))
            if remaining is None or taken_then is None or not bucket.per_minute:
                continue
            # What the provider had left when it admitted this request, less what we have
            # spent since, plus its refill since: its view of our budget now.
            elapsed = max(0.0, self._clock() - ticket.sent_at) if ticket else 0.0
            since = bucket.taken - taken_then
            view = remaining - since + elapsed * float(bucket.per_minute) / 60.0
            if first:
                bucket.set_rate(bucket.per_minute, level=view)
            else:
                bucket.lower_to(view)
        self.header_rpm = seen.limit_requests
        self.header_tpm = seen.limit_tokens
        self._apply_scale()

    def rate_limited(
        self,
        retry_after: float | None,
        fallback_s: float,
        seen: LimitsObservation | None = None,
    ) -> float:
        """A 429: pause everyone as long as asked, shrink the budget; returns the pause (s).

        The wait asked is ``retry_after`` (``retry-after-ms``/``retry-after``); without it,
        the ``x-ratelimit-reset-*`` of the bucket the 429's headers (``seen``) say is empty;
        without either, ``fallback_s`` (the engine's backoff).
        """
        wait = retry_after if retry_after is not None and retry_after > 0 else None
        if wait is None and seen is not None:
            wait = reset_wait(seen)
        if wait is None:
            wait = fallback_s
        now = self._clock()
        self._paused_until = max(self._paused_until, now + wait)
        self._learn_from_429(now)
        # Shrink once per storm, not once per request of it: the answers of one burst arrive
        # together, and halving ten times over would starve the job for minutes.
        if now - self._shrunk_at > 1.0:
            if self.learned_rpm is not None:
                # A learned limit is cut instead: it was a guess, and this 429 says too high.
                self.learned_rpm = max(1.0, self._learned_now(now) * LEARN_CUT)
                self._measured_rpm = min(self._measured_rpm, self.learned_rpm)
                self._learned_at = now
            elif self.known:  # with nothing known there is no budget to shrink yet
                self._shrink = max(FLOOR, self._scale() * SHRINK)
            self._shrunk_at = now
            self.requests.lower_to(0.0)
            self.tokens.lower_to(0.0)
        self._apply_scale()
        return wait

    # -- learning a limit nobody announces ---------------------------------------------------
    def _learning(self) -> bool:
        """True while no requests limit is known from the user or the provider."""
        return self.user_rpm is None and not (self.header_rpm or self.header_tpm)

    def _learn_from_429(self, now: float) -> None:
        if not self._learning() or self.learned_rpm is not None:
            return
        if self._learn_from is None:
            self._learn_from = now
            self._learn_answers = []
            self._learn_refusals = 0
        elif self._learn_answers:
            self._learn_refusals += 1

    def _time_answer(self, ticket: Ticket) -> None:
        start = self._learn_from
        if start is None or self.learned_rpm is not None or ticket.sent_at < start:
            return  # not measuring, or a request sent before the 429 (it met a fuller bucket)
        now = self._clock()
        answers = self._learn_answers
        answers.append(now)
        span = answers[-1] - answers[0]
        if len(answers) < LEARN_ANSWERS and not (len(answers) >= 2 and span >= LEARN_MAX_S):
            return
        if self._learn_refusals == 0 or span <= 0:
            # Nothing was refused while we timed: the pace was ours, not the provider's (the
            # 429 was a passing storm). Nothing learned; the next 429 starts again.
            self._learn_from = None
            return
        self._measured_rpm = (len(answers) - 1) * 60.0 / span
        self.learned_rpm = self._measured_rpm
        self._learned_at = now
        self._learn_from = None
        self.requests.set_rate(self.learned_rpm, level=0.0)

    def _learned_now(self, now: float) -> float:
        assert self.learned_rpm is not None
        grown = self.learned_rpm * (1.0 + LEARN_GROWTH_PER_S * max(0.0, now - self._learned_at))
        return min(grown, max(self.learned_rpm, self._measured_rpm * LEARN_MAX_GROWTH))

    def _stop_learning(self) -> None:
        if self.learned_rpm is not None and self.user_rpm is None:
            self.requests.set_rate(None)
        self.learned_rpm = None
        self._learn_from = None

    def pause(self, seconds: float) -> None:
        """Hold every sender for ``seconds``."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def _scale(self) -> float:
        recovered = self._shrink + (self._clock() - self._shrunk_at) * RECOVER_PER_S
        return min(1.0, recovered)

    def _apply_scale(self) -> None:
        scale = self.safety * self._scale()
        self.requests.scale = scale
        self.tokens.scale = scale
        if self.learned_rpm is not None:
            rate = self._learned_now(self._clock())
            if rate != self.requests.per_minute:
                self.requests.set_rate(rate)


def reset_wait(seen: LimitsObservation) -> float | None:
    """How long a 429's ``x-ratelimit-reset-*`` headers say to wait, or None.

    Only a bucket the headers show empty (``remaining`` 0) counts. Its reset is the time to a
    *full* bucket; one request needs only one unit's refill, 60/limit seconds, when the limit
    is known (a request of many tokens then waits on our own token bucket, emptied by the 429,
    which refills at the provider's rate).
    """
    waits = []
    for limit, remaining, reset in (
        (seen.limit_requests, seen.remaining_requests, seen.reset_requests_s),
        (seen.limit_tokens, seen.remaining_tokens, seen.reset_tokens_s),
    ):
        if reset is not None and reset > 0 and remaining is not None and remaining <= 0:
            waits.append(min(reset, 60.0 / limit) if limit else reset)
    return max(waits) if waits else None


def _probe(per_minute: float | None) -> float | None:
    if not per_minute:
        return None
    return min(float(per_minute), max(1.0, per_minute * PROBE_SECONDS / 60.0))
