"""The concurrency window: a probe, then TCP-like slow start, then Little's law once a limit is
known; never above ``--concurrency``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

from rowprompt.engine.pacing import Window
from rowprompt.engine.ratelimit import Limiter


@dataclass
class FakeLimiter:
    """What the window reads of a limiter: the limits in force, and whether headers came."""

    rpm: float | None = None
    tpm: float | None = None
    observed: bool = False


def window(cap: int = 1000, **limits: float) -> tuple[Window, FakeLimiter]:
    fake = FakeLimiter(**limits)  # type: ignore[arg-type]
    return Window(cap, cast(Limiter, fake)), fake


def answers(w: Window, count: int, latency_s: float = 0.1, tokens: int = 100) -> None:
    for _ in range(count):
        w.succeeded(latency_s, tokens)


def test_one_probe_first_then_the_window_doubles_every_round_trip() -> None:
    w, _ = window()
    assert w.size == 1  # nothing known: one request, whose answer tells what is left
    answers(w, 1)
    assert w.size == 4
    answers(w, 4)  # one round trip of a window of 4
    assert w.size == 8
    answers(w, 8)
    assert w.size == 16
    answers(w, 16)
    assert w.size == 32


def test_a_429_halves_the_window_then_it_grows_by_one_per_round_trip() -> None:
    w, _ = window()
    answers(w, 1 + 4 + 8)
    assert w.size == 16
    w.rate_limited()
    assert w.size == 8
    answers(w, 8)  # a round trip at the threshold: not double...
    assert w.size == 8
    answers(w, 1)  # ... one more a window (1/8 per answer)
    assert w.size == 9
    w.rate_limited()
    w.rate_limited()
    w.rate_limited()
    assert w.size == 2  # never below two


def test_the_window_never_passes_the_concurrency_cap() -> None:
    w, _ = window(cap=6)
    assert w.size == 1
    answers(w, 1)
    assert w.size == 4
    answers(w, 200)
    assert w.size == 6
    w, fake = window(cap=5)
    fake.rpm = 60_000  # Little's law would want 1000 × 0.1 × 1.25 + 2
    answers(w, 3)
    assert w.size == 5


def test_littles_law_sizes_the_window_from_the_rate_and_latency() -> None:
    w, fake = window()
    fake.rpm, fake.observed = 600, True
    answers(w, 20, latency_s=0.4)  # steady latency: no spread
    assert w.size == math.ceil(10 * 0.4 * 1.25) + 2  # 7
    answers(w, 200, latency_s=1.2)  # slower answers need more in flight
    assert w.size >= math.ceil(10 * 1.2 * 1.25) + 2
    assert w.size <= math.ceil(10 * 2.0 * 1.25) + 2  # the spread adds, within reason


def test_the_token_limit_sizes_the_window_when_it_binds_first() -> None:
    w, fake = window()
    fake.rpm, fake.tpm, fake.observed = 10_000, 60_000, True
    answers(w, 20, latency_s=0.4, tokens=1_000)  # 60 a minute of 1,000 tokens: 1 a second
    assert w.size == math.ceil(1 * 0.4 * 1.25) + 2  # 3


def test_headers_before_any_latency_use_a_one_second_guess() -> None:
    w, fake = window()
    fake.rpm, fake.observed = 600, True
    assert w.size == math.ceil(10 * 1.0 * 1.25) + 2
