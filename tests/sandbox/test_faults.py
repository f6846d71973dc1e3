"""Faults on demand: 5xx, 429 storms, slow answers, dropped connections, batch faults."""

from __future__ import annotations

from collections.abc import Callable

import httpx2
import pytest
from openai import (
    APIConnectionError,
    APITimeoutError,
    InternalServerError,
    RateLimitError,
)

from rowprompt.sandbox import FaultConfig, Sandbox

from .conftest import chat_line, client_for, fault_sequence, read_lines, submit, wait_batch

MakeSandbox = Callable[..., Sandbox]
MESSAGES = [{"role": "user", "content": "Label this."}]


def test_error_fraction(make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox(faults=FaultConfig(error_rate=0.5), seed=3)
    client = client_for(sb)
    outcomes = []
    for _ in range(40):
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            outcomes.append(200)
        except InternalServerError as exc:
            assert exc.status_code in (500, 503)
            assert exc.type == "server_error"
            outcomes.append(exc.status_code)
    failures = sum(1 for o in outcomes if o != 200)
    assert 8 <= failures <= 32
    assert sb.stats()["faults"]["server_error"] == failures


def test_sdk_retries_through_server_errors(make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox(faults=FaultConfig(error_rate=0.3), seed=1)
    client = client_for(sb, max_retries=6)
    for _ in range(6):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    log = sb.requests()
    assert [e["status"] for e in log].count(200) == 6
    retried = [e for e in log if e["retry_count"] != "0"]
    assert retried and all(e["status"] in (200, 500, 503) for e in retried)
    assert sb.stats()["faults"]["server_error"] == len(log) - 6


def test_dropped_connection_is_a_connection_error(make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox(faults=FaultConfig(drop_rate=1.0))
    client = client_for(sb)
    with pytest.raises(APIConnectionError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert not isinstance(info.value, APITimeoutError)
    assert sb.stats()["faults"] == {"dropped_connection": 1}
    # The server itself carries on.
    sb.set_faults(FaultConfig())
    assert client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices


def test_slow_answer_times_out(make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox(faults=FaultConfig(slow_rate=1.0, slow_seconds=2.0))
    client = client_for(sb, timeout=0.3)
    with pytest.raises(APITimeoutError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert sb.stats()["faults"] == {"slow": 1}


def test_rate_limit_storm_for_n_requests(make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox(faults=FaultConfig(rate_limit_storm_requests=2, storm_retry_after_s=0.2))
    client = client_for(sb)
    for _ in range(2):
        with pytest.raises(RateLimitError) as info:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert info.value.response.headers["retry-after-ms"] == "200"
        assert info.value.response.headers["retry-after"] == "1"
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert sb.stats()["rate_limited"] == {"storm": 2}


def test_faults_set_at_run_time_over_http(make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox()
    client = client_for(sb)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    response = httpx2.post(f"{sb.url}/sandbox/faults", json={"rate_limit_storm_seconds": 5})
    assert response.status_code == 200
    assert httpx2.get(f"{sb.url}/sandbox/faults").json()["rate_limit_storm_seconds"] == 5
    with pytest.raises(RateLimitError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    bad = httpx2.post(f"{sb.url}/sandbox/faults", json={"error_rate": 7})
    assert bad.status_code == 400
    httpx2.post(f"{sb.url}/sandbox/faults", json={})
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


def test_nth_batch_fails_validation(make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox(faults=FaultConfig(batch_fail_nth=[2]))
    client = client_for(sb)
    lines = [chat_line("a", "x")]
    first, second, third = (wait_batch(client, submit(client, lines).id) for _ in range(3))
    assert (first.status, second.status, third.status) == ("completed", "failed", "completed")
    assert second.errors is not None and second.errors.data
    assert sb.stats()["faults"] == {"batch_fail": 1}


def test_batch_expires_half_done(make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox(faults=FaultConfig(batch_expire_rate=1.0))
    client = client_for(sb)
    batch = wait_batch(client, submit(client, [chat_line(f"r{i}", "x") for i in range(10)]).id)
    assert batch.status == "expired"
    assert len(read_lines(client, batch.output_file_id)) == 5
    errors = read_lines(client, batch.error_file_id)
    assert [e["error"]["code"] for e in errors] == ["batch_expired"] * 5


def test_output_file_with_missing_lines(make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox(faults=FaultConfig(output_drop_rate=0.3))
    client = client_for(sb)
    batch = wait_batch(client, submit(client, [chat_line(f"r{i}", "x") for i in range(10)]).id)
    assert batch.status == "completed"
    assert batch.request_counts is not None and batch.request_counts.completed == 10
    assert len(read_lines(client, batch.output_file_id)) == 7
    assert batch.error_file_id is None
    assert sb.stats()["faults"] == {"output_missing_lines": 3}


def test_same_seed_same_faults(make_sandbox: MakeSandbox) -> None:
    """A fault campaign replays: the same seed gives the same faults on the same requests."""
    faults = FaultConfig(error_rate=0.3)
    first = fault_sequence(make_sandbox(seed=5, faults=faults))
    again = fault_sequence(make_sandbox(seed=5, faults=faults))
    other = fault_sequence(make_sandbox(seed=6, faults=faults))
    assert first == again
    assert 200 in first and {500, 503} & set(first)
    assert other != first
