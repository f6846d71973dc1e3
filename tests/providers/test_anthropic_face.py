"""The sandbox's Anthropic face, driven by the official ``anthropic`` SDK over HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from anthropic.types import Message
from anthropic.types.messages import MessageBatch

from rowprompt.sandbox import FaultConfig, Sandbox
from tests.helpers import fast_config

MODEL = "claude-haiku-4-5"


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[anthropic.Anthropic]:
    """A synchronous SDK client on the sandbox, without the SDK's retries."""
    with anthropic.Anthropic(base_url=sandbox.url, api_key="anything", max_retries=0) as c:
        yield c


def ask(client: anthropic.Anthropic, text: str = "hello", **params: Any) -> Message:
    params.setdefault("max_tokens", 50)
    return client.messages.create(
        model=MODEL, messages=[{"role": "user", "content": text}], **params
    )


def wait_ended(client: anthropic.Anthropic, batch_id: str) -> MessageBatch:
    for _ in range(200):
        batch = client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        time.sleep(0.05)
    raise AssertionError(f"batch {batch_id} did not end")


def test_a_message_has_anthropics_shape_and_headers(client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=50, system="Be brief.", messages=[{"role": "user", "content": "hi"}]
    )
    message = Message.model_validate(raw.parse().model_dump(), strict=True)
    assert message.type == "message" and message.role == "assistant"
    assert message.model == f"{MODEL}-sandbox"
    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
        assert raw.headers[f"anthropic-ratelimit-{kind}-limit"]
        assert raw.headers[f"anthropic-ratelimit-{kind}-reset"].endswith("Z")
    assert raw.headers["request-id"].startswith("req_")


def test_a_forced_tool_answers_with_its_input_schema(client: anthropic.Anthropic) -> None:
    schema = {
        "type": "object",
        "properties": {"stars": {"type": "integer", "minimum": 1, "maximum": 5}},
        "required": ["stars"],
    }
    message = ask(
        client,
        tools=[{"name": "rating", "input_schema": schema}],
        tool_choice={"type": "tool", "name": "rating"},
    )
    assert message.stop_reason == "tool_use"
    block = message.content[0]
    assert block.type == "tool_use" and block.name == "rating"
    stars: Any = block.input["stars"]
    assert 1 <= stars <= 5


def test_max_tokens_cuts_the_answer(client: anthropic.Anthropic) -> None:
    message = ask(client, max_tokens=1)
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 1


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"max_tokens": None}, 400, "max_tokens: Field required"),
        ({"response_format": {"type": "json_object"}}, 400, "Extra inputs are not permitted"),
        ({"model": "claude-nope"}, 404, "model: claude-nope"),
        ({"temperature": 1.5}, 400, "temperature"),
        ({"messages": [{"role": "system", "content": "x"}]}, 400, 'Unexpected role "system"'),
    ],
)
def test_bad_requests_get_anthropics_errors(
    client: anthropic.Anthropic, params: dict[str, Any], status: int, words: str
) -> None:
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
    }
    body.update(params)
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.post("/v1/messages", body=body, cast_to=Message)
    assert caught.value.status_code == status
    assert isinstance(caught.value.body, dict) and caught.value.body["type"] == "error"
    assert words in caught.value.body["error"]["message"]


def test_no_key_is_a_401_authentication_error(sandbox: Sandbox) -> None:
    import httpx2

    answer = httpx2.post(f"{sandbox.url}/v1/messages", json={})
    assert answer.status_code == 401
    assert answer.json()["error"]["type"] == "authentication_error"


def test_rate_limits_give_429s_with_retry_after() -> None:
    with (
        Sandbox(fast_config(rpm=2)) as sb,
        anthropic.Anthropic(base_url=sb.url, api_key="k", max_retries=0) as client,
    ):
        ask(client)
        ask(client)
        with pytest.raises(anthropic.RateLimitError) as caught:
            ask(client)
        headers = caught.value.response.headers
        assert int(headers["retry-after"]) >= 1
        assert headers["anthropic-ratelimit-requests-remaining"] == "0"
        assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        assert sb.stats()["rate_limited"] == {"requests": 1}


def test_faults_reach_the_anthropic_face(sandbox: Sandbox, client: anthropic.Anthropic) -> None:
    sandbox.set_faults(FaultConfig(error_rate=1.0, error_statuses=[503]))
    with pytest.raises(anthropic.InternalServerError) as caught:
        ask(client)
    assert caught.value.status_code == 529
    sandbox.set_faults(FaultConfig(quota_exhausted_after=0))
    with pytest.raises(anthropic.BadRequestError, match="credit balance is too low"):
        ask(client)


def _requests(n: int, **params: Any) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"job-{i}",
            "params": {
                "model": MODEL,
                "max_tokens": 20,
                "messages": [{"role": "user", "content": f"row {i}"}],
                **params,
            },
        }
        for i in range(n)
    ]


def test_a_batch_runs_to_ended_with_one_result_per_request(client: anthropic.Anthropic) -> None:
    bad = {"custom_id": "bad", "params": {"model": MODEL, "messages": []}}
    created = client.messages.batches.create(requests=[*_requests(5), bad])  # type: ignore[list-item]
    assert created.processing_status == "in_progress" and created.results_url is None
    assert created.request_counts.processing == 6
    batch = wait_ended(client, created.id)
    counts = batch.request_counts
    assert (counts.succeeded, counts.errored, counts.processing) == (5, 1, 0)
    assert batch.results_url and batch.ended_at
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert set(results) == {f"job-{i}" for i in range(5)} | {"bad"}
    assert results["bad"].type == "errored"
    assert results["job-0"].type == "succeeded"
    listed = client.messages.batches.list(limit=10)
    assert [b.id for b in listed.data] == [batch.id]


def test_batch_create_checks_custom_ids(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match="custom_id"):
        twice: Any = [*_requests(1), *_requests(1)]
        client.messages.batches.create(requests=twice)
    bad = [{**_requests(1)[0], "custom_id": "has space"}]
    with pytest.raises(anthropic.BadRequestError, match="String should match pattern"):
        client.messages.batches.create(requests=bad)  # type: ignore[arg-type]


def test_cancel_ends_the_batch_with_canceled_requests() -> None:
    with (
        Sandbox(fast_config(batch_rows_per_second=20)) as sb,
        anthropic.Anthropic(base_url=sb.url, api_key="k", max_retries=0) as client,
    ):
        created = client.messages.batches.create(requests=_requests(50))  # type: ignore[arg-type]
        assert client.messages.batches.cancel(created.id).processing_status == "canceling"
        batch = wait_ended(client, created.id)
        assert batch.cancel_initiated_at is not None
        assert batch.request_counts.canceled > 0
        assert sum(batch.request_counts.model_dump().values()) == 50


def test_an_expiring_batch_ends_with_expired_requests(
    sandbox: Sandbox, client: anthropic.Anthropic
) -> None:
    sandbox.set_faults(FaultConfig(batch_expire_nth=[1]))
    created = client.messages.batches.create(requests=_requests(10))  # type: ignore[arg-type]
    batch = wait_ended(client, created.id)
    assert (batch.request_counts.succeeded, batch.request_counts.expired) == (5, 5)
    assert sandbox.stats()["batches_by_final_state"] == {"expired": 1}
