"""The limiter on a fake clock: budgets, refunds per provider face, header correction, 429s."""

from __future__ import annotations

import asyncio

import pytest

from rowprompt.engine.ratelimit import (
    FACE_ANTHROPIC,
    LEARN_CUT,
    LEARN_GROWTH_PER_S,
    SAFETY,
    Bucket,
    Limiter,
)
from rowprompt.providers.base import LimitsObservation


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_refills_continuously_and_caps() -> None:
    clock = Clock()
    bucket = Bucket(600, clock, level=0.0)
    assert bucket.wait_time(1) == pytest.approx(0.1)
    clock.now += 30
    assert bucket.level == pytest.approx(300)
    clock.now += 600
    assert bucket.level == 600  # never more than a minute's worth
    bucket.take(700)
    assert bucket.level == -100  # a debt, paid back by the refill


def test_openai_face_reserves_prompt_plus_max_tokens_and_refunds_nothing() -> None:
    clock = Clock()
    limiter = Limiter(tpm=10_000, clock=clock)
    limiter.tokens.set_rate(10_000, level=10_000)
    ticket = asyncio.run(limiter.acquire(150 + 100, output_tokens=100))
    assert limiter.tokens.level == pytest.approx(9_750)
    assert limiter.settle(ticket, completion_tokens=10) == 0
    assert limiter.tokens.level == pytest.approx(9_750)


def test_anthropic_face_refunds_the_unused_output() -> None:
    clock = Clock()
    limiter = Limiter(tpm=10_000, face=FACE_ANTHROPIC, clock=clock)
    limiter.tokens.set_rate(10_000, level=10_000)
    ticket = asyncio.run(limiter.acquire(250, output_tokens=100))
    assert limiter.settle(ticket, completion_tokens=10) == 90
    assert limiter.tokens.level == pytest.approx(10_000 - 160)


def test_a_row_above_the_whole_token_budget_is_refused_with_a_reason() -> None:
    limiter = Limiter(tpm=1_000)
    assert limiter.too_large(999) is None
    reason = limiter.too_large(1_500)
    assert reason is not None and "1500" in reason and "1000" in reason
    assert Limiter().too_large(10**9) is None  # no limit known: nothing to refuse


def test_headers_set_unknown_limits_and_the_level_left() -> None:
    clock = Clock()
    limiter = Limiter(clock=clock)
    assert not limiter.known
    ticket = asyncio.run(limiter.acquire(50))
    seen = LimitsObservation(limit_requests=600, limit_tokens=100_000, remaining_requests=42,
                             remaining_tokens=5_000)  # fmt: skip
    limiter.observe(ticket, seen)
    assert limiter.rpm == 600 and limiter.tpm == 100_000
    assert limiter.requests.level == pytest.approx(42)
    assert limiter.tokens.level == pytest.approx(5_000)
    assert limiter.state().source == "headers"


def test_headers_lower_the_budget_when_another_process_spends_the_key() -> None:
    clock = Clock()
    limiter = Limiter(rpm=600, clock=clock)
    first = asyncio.run(limiter.acquire(1))
    limiter.observe(first, LimitsObservation(limit_requests=600, remaining_requests=500))
    assert limiter.requests.level == pytest.approx(500)
    # We sent 10 more; the provider then says 450 were left when it took the first of them.
    tickets = [asyncio.run(limiter.acquire(1)) for _ in range(10)]
    limiter.observe(tickets[0], LimitsObservation(limit_requests=600, remaining_requests=450))
    # Its view: 450 left at that one, less the 9 we sent after it.
    assert limiter.requests.level == pytest.approx(441)
    # A view above ours never raises our budget.
    limiter.observe(tickets[-1], LimitsObservation(limit_requests=600, remaining_requests=590))
    assert limiter.requests.level == pytest.approx(441)


def test_user_limit_below_the_providers_wins() -> None:
    limiter = Limiter(rpm=100)
    limiter.observe(None, LimitsObservation(limit_requests=600, remaining_requests=600))
    assert limiter.rpm == 100
    limiter = Limiter(rpm=1_000)
    limiter.observe(None, LimitsObservation(limit_requests=600, remaining_requests=600))
    assert limiter.rpm == 600


def test_a_429_pauses_as_long_as_asked_then_shrinks_and_recovers() -> None:
    clock = Clock()
    limiter = Limiter(rpm=600, clock=clock)
    limiter.requests.set_rate(600, level=600)
    assert limiter.rate_limited(0.25, fallback_s=5.0) == 0.25
    assert limiter.state().paused_for_s == pytest.approx(0.25)
    assert limiter.requests.rate == pytest.approx(600 * SAFETY * 0.9)
    clock.now += 0.3
    assert limiter.state().paused_for_s == 0
    clock.now += 60
    limiter.state()
    assert limiter._scale() == 1.0  # recovered within a minute
    # No retry-after: the fallback backoff is used.
    assert limiter.rate_limited(None, fallback_s=2.0) == 2.0


def test_acquire_waits_for_the_refill() -> None:
    async def scenario() -> float:
        limiter = Limiter(rpm=1200)  # 20 a second
        limiter.requests.set_rate(1200, level=1)
        await limiter.acquire(1)
        loop = asyncio.get_running_loop()
        began = loop.time()
        await limiter.acquire(1)
        return loop.time() - began

    waited = asyncio.run(scenario())
    assert 0.03 < waited < 0.3


# -- reset headers ------------------------------------------------------------------------------
def test_a_429_without_retry_after_waits_for_the_empty_buckets_reset() -> None:
    limiter = Limiter(clock=Clock())
    empty = LimitsObservation(limit_requests=600, remaining_requests=0, reset_requests_s=30.0)
    # One request's refill (60 s / 600), not the time to a full bucket, not the backoff.
    assert limiter.rate_limited(None, fallback_s=5.0, seen=empty) == pytest.approx(0.1)
    unknown = LimitsObservation(remaining_requests=0, reset_requests_s=0.7)
    assert limiter.rate_limited(None, fallback_s=5.0, seen=unknown) == pytest.approx(0.7)
    # A bucket not empty (or no reset) says nothing: the backoff is used; retry-after wins.
    left = LimitsObservation(limit_requests=600, remaining_requests=3, reset_requests_s=30.0)
    assert limiter.rate_limited(None, fallback_s=5.0, seen=left) == 5.0
    assert limiter.rate_limited(1.3, fallback_s=5.0, seen=empty) == 1.3


def test_a_reset_without_remaining_tells_the_level_left() -> None:
    clock = Clock()
    limiter = Limiter(clock=clock)
    ticket = asyncio.run(limiter.acquire(1))
    # Refilled at 600 a minute, 30 s from full: 300 left.
    limiter.observe(ticket, LimitsObservation(limit_requests=600, reset_requests_s=30.0))
    assert limiter.requests.level == pytest.approx(300)


# -- a limit nobody announces -------------------------------------------------------------------
def _measure(limiter: Limiter, clock: Clock, interval: float, answers: int) -> None:
    """Answers every ``interval`` s, each followed by a 429 (the server refuses the excess)."""
    for _ in range(answers):
        clock.now += interval
        ticket = asyncio.run(limiter.acquire(1))
        limiter.observe(ticket, None)
        if limiter.learned_rpm is None:
            limiter.rate_limited(0.001, fallback_s=1.0)
            clock.now += 0.001


def test_a_limit_nobody_announces_is_measured_from_429s() -> None:
    clock = Clock()
    limiter = Limiter(clock=clock)
    limiter.rate_limited(0.05, fallback_s=1.0)  # the first 429: measuring starts
    assert limiter.learned_rpm is None and limiter.rpm is None
    _measure(limiter, clock, 0.1, 8)  # the server admits one every 0.1 s: 600 a minute
    assert limiter.learned_rpm == pytest.approx(600, rel=0.03)
    assert limiter.rpm == pytest.approx(600, rel=0.03)
    assert limiter.state().source == "learned"
    # Paced from an empty bucket at that rate: the next request waits one interval.
    assert limiter.requests.level <= 1.0


def test_nothing_is_learned_from_a_passing_storm() -> None:
    clock = Clock()
    limiter = Limiter(clock=clock)
    limiter.rate_limited(0.05, fallback_s=1.0)
    for _ in range(8):  # answers keep coming, none refused: the pace was ours
        clock.now += 0.1
        ticket = asyncio.run(limiter.acquire(1))
        limiter.observe(ticket, None)
    assert limiter.learned_rpm is None and limiter.rpm is None
    assert limiter.state().source == "unknown"


def test_a_learned_limit_is_probed_upward_and_cut_by_a_429() -> None:
    clock = Clock()
    limiter = Limiter(clock=clock)
    limiter.rate_limited(0.05, fallback_s=1.0)
    _measure(limiter, clock, 0.1, 8)
    measured = limiter.learned_rpm
    assert measured is not None
    clock.now += 10
    grown = limiter.state().rpm
    assert grown == pytest.approx(measured * (1 + 10 * LEARN_GROWTH_PER_S))
    assert grown is not None and grown > measured
    clock.now += 2
    limiter.rate_limited(0.1, fallback_s=1.0)
    cut = limiter.rpm
    assert cut == pytest.approx(measured * (1 + 12 * LEARN_GROWTH_PER_S) * LEARN_CUT)
    clock.now += 3600
    # Never above 1.5 × the measure (the cut one, when a 429 said it was too high).
    assert limiter.state().rpm == pytest.approx(min(measured, cut) * 1.5)


def test_announced_limits_replace_a_learned_one() -> None:
    clock = Clock()
    limiter = Limiter(clock=clock)
    limiter.rate_limited(0.05, fallback_s=1.0)
    _measure(limiter, clock, 0.1, 8)
    clock.now += 1  # the learned bucket starts empty
    ticket = asyncio.run(limiter.acquire(1))
    limiter.observe(ticket, LimitsObservation(limit_requests=900, remaining_requests=899))
    assert limiter.learned_rpm is None and limiter.rpm == 900
    assert limiter.state().source == "headers"
    # A known limit is never learned over: a 429 shrinks it instead.
    limiter.rate_limited(0.05, fallback_s=1.0)
    _measure(limiter, clock, 0.1, 8)
    assert limiter.learned_rpm is None and limiter.rpm == 900
