"""``POST /v1/responses`` through the official SDK's ``client.responses``: answers, checks, faults.

The sandbox answers a Responses request exactly as it answers the equivalent chat request, so
:func:`expected_answer` over the chat body tells every answer in advance.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import openai
import pytest
from openai.types.responses import Response

from rowprompt.sandbox import FaultConfig, Sandbox, SandboxConfig
from rowprompt.sandbox.model import expected_answer

from .conftest import FAST, client_for, read_lines, to_jsonl, wait_batch
from .test_openapi import make_checker

LONG = " ".join(f"word{i}" for i in range(60))
RULES = [
    {"pattern": "^refuse", "refusal": "I can't help with that."},
    {"pattern": "^long", "answer": LONG},
    {"pattern": "^fail", "status": 400, "message": "Scripted bad request."},
]
SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer"}, "label": {"type": "string"}},
    "required": ["score", "label"],
    "additionalProperties": False,
}
JSON_SCHEMA: Any = {"type": "json_schema", "name": "verdict", "schema": SCHEMA, "strict": True}


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    """A sandbox with a refusal, a long answer and a scripted error."""
    with Sandbox(SandboxConfig(**FAST, rules=RULES)) as sandbox:  # type: ignore[arg-type]
        yield sandbox


@pytest.fixture(scope="module")
def check() -> Callable[[str, Any], None]:
    """The OpenAPI checker of test_openapi."""
    return make_checker()


def _json(raw: Any) -> Any:
    return json.loads(raw.text)


def test_the_sdk_reads_the_same_answer_chat_gives(sb: Sandbox) -> None:
    client = client_for(sb)
    answer = client.responses.create(model="gpt-4o-mini", input="Rate the film Alien")
    chat = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Rate the film Alien"}],
    }
    assert answer.status == "completed"
    assert answer.output_text == expected_answer(chat)
    assert answer.model.startswith("gpt-4o-mini")
    usage = client.chat.completions.create(**chat).usage  # type: ignore[call-overload]
    assert answer.usage is not None and usage is not None
    assert answer.usage.input_tokens == usage.prompt_tokens
    assert answer.usage.output_tokens == usage.completion_tokens
    assert answer.usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_instructions_and_content_parts_are_the_chat_messages(sb: Sandbox) -> None:
    client = client_for(sb)
    answer = client.responses.create(
        model="gpt-4o-mini",
        instructions="Be brief.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "hello"}]}],
    )
    chat = {"model": "gpt-4o-mini", "messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "hello"}]}]}  # fmt: skip
    assert answer.output_text == expected_answer(chat)
    assert answer.instructions == "Be brief."


def test_text_format_json_schema_and_json_object_are_obeyed(sb: Sandbox) -> None:
    client = client_for(sb)
    shaped = client.responses.create(
        model="gpt-4o-mini", input="judge this", text={"format": JSON_SCHEMA}
    )
    verdict = json.loads(shaped.output_text)
    assert set(verdict) == {"score", "label"} and isinstance(verdict["score"], int)
    assert shaped.text is not None and shaped.text.format is not None
    assert shaped.text.format.type == "json_schema"
    loose = client.responses.create(
        model="gpt-4o-mini", input="answer in json", text={"format": {"type": "json_object"}}
    )
    assert isinstance(json.loads(loose.output_text), dict)


def test_max_output_tokens_cuts_the_answer_and_says_so(sb: Sandbox) -> None:
    cut = client_for(sb).responses.create(
        model="gpt-4o-mini", input="long please", max_output_tokens=16
    )
    assert cut.status == "incomplete"
    assert cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    assert cut.usage is not None and cut.usage.output_tokens == 16
    assert LONG.startswith(cut.output_text) and cut.output_text != LONG


def test_a_refusal_is_a_refusal_part(sb: Sandbox) -> None:
    answer = client_for(sb).responses.create(model="gpt-4o-mini", input="refuse this")
    message = answer.output[0]
    assert message.type == "message"
    assert [part.type for part in message.content] == ["refusal"]
    assert answer.output_text == ""


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"input": "x"}, 400, "model", "missing_required_parameter"),
        ({"model": "gpt-4o-mini"}, 400, "input", "missing_required_parameter"),
        ({"model": "nope", "input": "x"}, 404, None, "model_not_found"),
        ({"model": "gpt-4o-mini", "input": "x", "messages": []}, 400, "messages",
         "unknown_parameter"),
        ({"model": "gpt-4o-mini", "input": 5}, 400, "input", "invalid_type"),
        ({"model": "gpt-4o-mini", "input": []}, 400, "input", "empty_array"),
        ({"model": "gpt-4o-mini", "input": [{"role": "bot", "content": "x"}]}, 400,
         "input[0].role", "invalid_value"),
        ({"model": "gpt-4o-mini", "input": [{"role": "user"}]}, 400, "input[0].content",
         "missing_required_parameter"),
        ({"model": "gpt-4o-mini", "input": [{"role": "user", "content": [{"type": "text",
          "text": "x"}]}]}, 400, "input[0].content[0].type", "invalid_value"),
        ({"model": "gpt-4o-mini", "input": "x", "max_output_tokens": 15}, 400,
         "max_output_tokens", "integer_below_min_value"),
        ({"model": "gpt-4o-mini", "input": "x", "max_output_tokens": "9"}, 400,
         "max_output_tokens", "invalid_type"),
        ({"model": "gpt-4o-mini", "input": "x", "temperature": 3}, 400, "temperature",
         "decimal_out_of_range"),
        ({"model": "gpt-4o-mini", "input": "x", "text": {"format": {"type": "yaml"}}}, 400,
         "text.format.type", "invalid_value"),
        ({"model": "gpt-4o-mini", "input": "x", "text": {"format": {"type": "json_schema",
          "schema": SCHEMA}}}, 400, "text.format.name", "missing_required_parameter"),
        ({"model": "gpt-4o-mini", "input": "x", "text": {"format": {**JSON_SCHEMA,
          "name": "no spaces"}}}, 400, "text.format.name", "invalid_value"),
        ({"model": "gpt-4o-mini", "input": "x", "text": {"format": {**JSON_SCHEMA,
          "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}}}, 400,
         "text.format.schema", "invalid_json_schema"),
        ({"model": "gpt-4o-mini", "input": "x", "text": {"format": {"type": "json_object"}}},
         400, "input", None),
        ({"model": "gpt-4o-mini", "input": "x", "previous_response_id": "resp_1"}, 400,
         "previous_response_id", "unsupported_parameter"),
        ({"model": "gpt-4o-mini", "input": "fail now"}, 400, None, None),
    ],
)  # fmt: skip
def test_bad_requests_name_the_responses_parameter(
    sb: Sandbox, body: dict[str, Any], status: int, param: str | None, code: str | None
) -> None:
    answer = httpx2.post(
        f"{sb.base_url}/responses", json=body, headers={"authorization": "Bearer sk-test"}
    )
    assert answer.status_code == status
    error = answer.json()["error"]
    assert (error["param"], error["code"]) == (param, code), error
    assert error["message"] and "messages" not in error["message"].replace("'messages'", "")
    assert "x-ratelimit-limit-requests" in answer.headers


def test_server_errors_drops_and_429s_come_as_for_chat(make_sandbox: Any) -> None:
    box = make_sandbox(rpm=2, faults=FaultConfig(error_rate=1.0, error_statuses=[503]))
    client = client_for(box)
    with pytest.raises(openai.InternalServerError) as failed:
        client.responses.create(model="gpt-4o-mini", input="x")
    assert failed.value.status_code == 503
    box.set_faults(FaultConfig(drop_rate=1.0))
    with pytest.raises(openai.APIConnectionError):
        client.responses.create(model="gpt-4o-mini", input="x")
    box.set_faults(FaultConfig())
    with pytest.raises(openai.RateLimitError) as limited:
        client.responses.create(model="gpt-4o-mini", input="x")
    headers = limited.value.response.headers
    assert headers["x-ratelimit-remaining-requests"] == "0" and "retry-after" in headers
    stats = box.stats()
    assert stats["requests_by_endpoint"]["POST /v1/responses"] == 3
    assert stats["faults"].get("server_error") == 1
    assert stats["faults"].get("dropped_connection") == 1


def test_storms_and_quota_answer_429s(make_sandbox: Any) -> None:
    box = make_sandbox(faults=FaultConfig(rate_limit_storm_requests=1, quota_exhausted_after=2))
    client = client_for(box)
    with pytest.raises(openai.RateLimitError) as storm:
        client.responses.create(model="gpt-4o-mini", input="x")
    assert storm.value.code == "rate_limit_exceeded"
    assert client.responses.create(model="gpt-4o-mini", input="x").status == "completed"
    with pytest.raises(openai.RateLimitError) as quota:
        client.responses.create(model="gpt-4o-mini", input="x")
    assert quota.value.code == "insufficient_quota"


def test_answers_carry_limits_headers_and_enter_the_log(make_sandbox: Any) -> None:
    box = make_sandbox(rpm=100, tpm=100_000)
    raw = client_for(box).responses.with_raw_response.create(
        model="gpt-4o-mini", input="log me", max_output_tokens=20
    )
    assert raw.headers["x-ratelimit-limit-requests"] == "100"
    assert raw.headers["x-ratelimit-remaining-requests"] == "99"
    assert raw.headers["x-request-id"].startswith("req_")
    logged = box.requests()[-1]
    assert (logged["status"], logged["model"], logged["last_user_message"]) == (
        200, "gpt-4o-mini", "log me")  # fmt: skip
    usage = raw.parse().usage
    assert usage is not None and logged["prompt_tokens"] == usage.input_tokens
    [second] = box.stats()["tokens_per_second"]
    assert (second["prompt_tokens"], second["tokens"]) == (
        usage.input_tokens,
        usage.input_tokens + 20,
    )


def _responses_batch(client: openai.OpenAI, lines: list[Any]) -> Any:
    uploaded = client.files.create(file=("in.jsonl", to_jsonl(lines)), purpose="batch")
    return client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/responses", completion_window="24h"
    )


def _line(custom_id: str, prompt: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/responses",
            "body": {"model": "gpt-4o-mini", "input": prompt, **body}}  # fmt: skip


def test_a_responses_batch_answers_each_line_with_a_response(
    sb: Sandbox, check: Callable[[str, Any], None]
) -> None:
    client = client_for(sb)
    lines = [
        _line("a", "first"),
        _line("b", "long one", max_output_tokens=16),
        _line("c", "fail here"),
        _line("d", "judge", text={"format": JSON_SCHEMA}),
    ]
    batch = wait_batch(client, _responses_batch(client, lines).id)
    assert batch.status == "completed" and batch.endpoint == "/v1/responses"
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 1)
    results = {r["custom_id"]: r for r in read_lines(client, batch.output_file_id)}
    results.update({r["custom_id"]: r for r in read_lines(client, batch.error_file_id)})
    for record in results.values():
        check("manual:BatchRequestOutput", record)
    first = Response.model_validate(results["a"]["response"]["body"])
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "first"}]}
    assert first.output_text == expected_answer(chat)
    cut = results["b"]["response"]["body"]
    assert (cut["status"], cut["incomplete_details"]) == (
        "incomplete",
        {"reason": "max_output_tokens"},
    )
    assert results["c"]["response"]["status_code"] == 400
    check("ErrorResponse", results["c"]["response"]["body"])
    shaped = Response.model_validate(results["d"]["response"]["body"])
    assert set(json.loads(shaped.output_text)) == {"score", "label"}


def test_a_batch_line_for_another_endpoint_fails_the_batch(sb: Sandbox) -> None:
    client = client_for(sb)
    wrong = {**_line("a", "x"), "url": "/v1/chat/completions"}
    batch = wait_batch(client, _responses_batch(client, [wrong]).id)
    assert batch.status == "failed"
    assert batch.errors is not None and batch.errors.data
    assert batch.errors.data[0].code == "url_mismatch"


def test_response_bodies_match_the_openapi_description_and_the_sdk(
    sb: Sandbox, check: Callable[[str, Any], None]
) -> None:
    client = client_for(sb)
    bodies: list[dict[str, Any]] = [
        {"input": "hi"},
        {"input": "long text", "max_output_tokens": 16},
        {"input": "refuse it"},
        {"input": "judge", "text": {"format": JSON_SCHEMA}},
        {"input": "json please", "text": {"format": {"type": "json_object"}},
         "instructions": "Be terse.", "store": False, "temperature": 0.2, "top_p": 0.5,
         "metadata": {"k": "v"}},
        {"input": [{"role": "system", "content": "s"},
                   {"role": "user", "content": [{"type": "input_text", "text": "u"}]},
                   {"role": "assistant", "content": [{"type": "output_text", "text": "a"}]},
                   {"type": "message", "role": "user", "content": "again"}]},
    ]  # fmt: skip
    for body in bodies:
        data = _json(client.responses.with_raw_response.create(model="gpt-4o-mini", **body))
        check("Response", data)
        Response.model_validate(data, strict=True)
    headers = {"authorization": "Bearer sk-test"}
    bad = httpx2.post(f"{sb.base_url}/responses", json={"input": "x"}, headers=headers)
    check("ErrorResponse", bad.json())
