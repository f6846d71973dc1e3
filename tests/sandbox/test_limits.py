"""Rate limits: token buckets per model, 429 bodies and headers, the SDK honouring them."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest
from openai import OpenAI, RateLimitError

from rowprompt.sandbox import Sandbox
from rowprompt.sandbox.limits import go_duration
from rowprompt.tokens import count_messages

from .conftest import client_for

MakeSandbox = Callable[..., Sandbox]
MESSAGES = [{"role": "user", "content": "Rate this review."}]
DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.12, "120ms"), (0.0, "0ms"), (1, "1s"), (1.5, "1.5s"), (360, "6m0s"), (432, "7m12s"),
     (3600, "1h0m0s")],
)  # fmt: skip
def test_go_durations(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_headers_on_every_answer(client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    for name in ("requests", "tokens"):
        assert int(raw.headers[f"x-ratelimit-limit-{name}"]) > 0
        assert int(raw.headers[f"x-ratelimit-remaining-{name}"]) > 0
        assert DURATION.match(raw.headers[f"x-ratelimit-reset-{name}"])
    assert raw.headers["x-request-id"].startswith("req_")
    assert int(raw.headers["openai-processing-ms"]) >= 0


def test_requests_per_minute(make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox(rpm=3)
    client = client_for(sb)
    remaining = []
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
        remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
    assert remaining == [2, 1, 0]
    with pytest.raises(RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    error = info.value
    assert error.type == "requests" and error.code == "rate_limit_exceeded"
    assert error.message.endswith(
        "Visit https://platform.openai.com/account/rate-limits to learn more."
    )
    assert "on requests per min (RPM): Limit 3, Used 3, Requested 1." in error.message
    headers = error.response.headers
    assert 1 <= int(headers["retry-after"]) <= 20
    assert 0 < int(headers["retry-after-ms"]) <= 20_000
    assert headers["x-ratelimit-remaining-requests"] == "0"
    # Other models have their own buckets.
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert sb.stats()["rate_limited"] == {"requests": 1}


def test_tokens_per_minute_counts_max_tokens_times_n(make_sandbox: MakeSandbox) -> None:
    client = client_for(make_sandbox(tpm=1000))
    prompt = count_messages(MESSAGES, "gpt-4o-mini")
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=100, n=2
    )
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) in (
        1000 - prompt - 200,
        1000 - prompt - 199,  # refilled a little meanwhile
    )
    with pytest.raises(RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=300, n=3)
    assert info.value.type == "tokens"
    assert "on tokens per min (TPM): Limit 1000" in info.value.message


def test_request_too_large(make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox(tpm=50)
    client = client_for(sb)
    with pytest.raises(RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=100)
    assert "- Request too large for gpt-4o-mini in organization" in info.value.message
    assert info.value.type == "tokens"
    assert sb.stats()["rate_limited"] == {"request_too_large": 1}


def test_sdk_retries_after_retry_after_and_succeeds(make_sandbox: MakeSandbox) -> None:
    # 30 rpm refills one request every 2 s: the SDK waits retry-after-ms and gets through.
    sb = make_sandbox(rpm=30)
    hasty = client_for(sb)
    for _ in range(300):
        try:
            hasty.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        except RateLimitError:
            break
    else:
        pytest.fail("no 429 after 300 requests at 30 rpm")
    patient = client_for(sb, max_retries=3)
    begin = time.monotonic()
    answer = patient.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    waited = time.monotonic() - begin
    assert answer.choices[0].message.content
    assert 0.05 < waited < 5
    stats = sb.stats()
    assert stats["rate_limited"]["requests"] >= 2
    assert stats["requests_by_status"]["429"] >= 1
    log = sb.requests()
    assert log[-1]["status"] == 200 and log[-1]["retry_count"] == "1"
    assert log[-2]["status"] == 429 and log[-2]["retry_count"] == "0"
