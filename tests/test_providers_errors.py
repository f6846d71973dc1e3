"""What a provider's error answer becomes: the retry advice, the error class, the backoff."""

from __future__ import annotations

import email.utils
import random
from typing import Any

import httpx2
import pytest
from openai import AsyncOpenAI

from rowprompt.engine.realtime import BACKOFF_BASE_S, BACKOFF_CAP_S, backoff_delay
from rowprompt.errors import ConfigError, Permanent, QuotaExhausted, RateLimited, Transient
from rowprompt.providers.base import retry_after_seconds
from rowprompt.providers.openai import translate_error

NOW = 1_700_000_000.0


def test_retry_after_ms_wins_over_retry_after() -> None:
    headers = {"retry-after-ms": "1300", "retry-after": "1"}
    assert retry_after_seconds(headers) == pytest.approx(1.3)
    assert retry_after_seconds({"retry-after-ms": "250.5"}) == pytest.approx(0.2505)


def test_retry_after_in_seconds_and_as_an_http_date() -> None:
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after": "0.5"}) == 0.5
    date = email.utils.formatdate(NOW + 7, usegmt=True)  # "Tue, 14 Nov 2023 22:13:27 GMT"
    assert retry_after_seconds({"retry-after": date}, now=lambda: NOW) == pytest.approx(7)
    past = email.utils.formatdate(NOW - 30, usegmt=True)
    assert retry_after_seconds({"retry-after": past}, now=lambda: NOW) == 0.0


def test_no_usable_retry_advice_is_none() -> None:
    assert retry_after_seconds({}) is None
    assert retry_after_seconds({"retry-after": "soon"}) is None
    # A broken -ms falls back to retry-after.
    assert retry_after_seconds({"retry-after-ms": "x", "retry-after": "3"}) == 3.0


def _error(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    client = AsyncOpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1")
    request = httpx2.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    response = httpx2.Response(status, json=body, headers=headers or {}, request=request)
    return client._make_status_error_from_response(response)


def _body(message: str, type_: str = "invalid_request_error", code: str | None = None) -> Any:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


@pytest.mark.parametrize("status", [408, 409, 500, 502, 503])
def test_timeouts_conflicts_and_server_errors_are_retried(status: int) -> None:
    found = translate_error(_error(status, _body("try again", "server_error")))
    assert isinstance(found, Transient) and found.status == status
    assert found.message == "try again"


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_request_errors_fail_the_row_with_the_providers_message(status: int) -> None:
    body = _body(
        "This model's maximum context length is 128000 tokens.", code="context_length_exceeded"
    )
    found = translate_error(_error(status, body))
    assert isinstance(found, Permanent) and not isinstance(found, Transient)
    assert found.status == status and found.code == "context_length_exceeded"
    assert found.message.startswith("This model's maximum context length")


def test_a_429_is_rate_limiting_with_the_servers_advice_and_headers() -> None:
    headers = {
        "retry-after-ms": "1300",
        "retry-after": "1",
        "x-ratelimit-limit-requests": "600",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "100ms",
    }
    body = _body("Rate limit reached", "requests", "rate_limit_exceeded")
    found = translate_error(_error(429, body, headers))
    assert isinstance(found, RateLimited)
    assert found.retry_after == pytest.approx(1.3)
    limits = found.limits  # type: ignore[attr-defined]
    assert limits.limit_requests == 600 and limits.remaining_requests == 0
    assert limits.reset_requests_s == pytest.approx(0.1)


def test_insufficient_quota_stops_the_job_and_too_large_fails_the_row() -> None:
    body = _body("You exceeded your current quota", "insufficient_quota", "insufficient_quota")
    quota = translate_error(_error(429, body))
    assert isinstance(quota, QuotaExhausted) and not isinstance(quota, RateLimited)
    assert quota.code == "insufficient_quota" and "resume" in (quota.hint or "")
    old_style = translate_error(_error(429, _body("quota", "insufficient_quota", None)))
    assert isinstance(old_style, QuotaExhausted)
    body = _body("Request too large for gpt-4o ...", "tokens", "rate_limit_exceeded")
    large = translate_error(_error(429, body))
    assert isinstance(large, Permanent) and large.code == "request_too_large"


def test_credentials_refused_stop_the_job() -> None:
    found = translate_error(_error(401, _body("Incorrect API key", code="invalid_api_key")))
    assert isinstance(found, ConfigError)


@pytest.mark.parametrize("retries", [1, 2, 3, 4, 5, 6, 10])
def test_backoff_is_exponential_capped_and_jittered(retries: int) -> None:
    ceiling = min(BACKOFF_BASE_S * 2 ** (retries - 1), BACKOFF_CAP_S)
    random.seed(retries)
    delays = [backoff_delay(retries) for _ in range(200)]
    assert all(0.75 * ceiling <= d <= ceiling for d in delays), (min(delays), max(delays))
    assert max(delays) - min(delays) > 0.1 * ceiling  # jittered, not a fixed sleep


def test_backoff_takes_sane_server_advice() -> None:
    assert backoff_delay(3, retry_after=1.3) == 1.3
    assert 1.5 <= backoff_delay(3, retry_after=600) <= 2.0  # beyond 120 s: ignored
