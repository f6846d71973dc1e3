"""Bad requests get OpenAI's 4xx error shapes, never a 500 or a traceback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from openai import BadRequestError, InternalServerError, NotFoundError, OpenAI

from rowprompt.sandbox import Sandbox

from .conftest import client_for

MakeSandbox = Callable[..., Sandbox]


X: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}


def _assert_error_shape(body: Any) -> dict[str, Any]:
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return error


def test_malformed_json_is_400(shared_sandbox: Sandbox) -> None:
    response = httpx2.post(
        f"{shared_sandbox.base_url}/chat/completions",
        content=b'{"model": "gpt-4o-mini", "messages": [',
        headers={"authorization": "Bearer sk-test", "content-type": "application/json"},
    )
    assert response.status_code == 400
    error = _assert_error_shape(response.json())
    assert error["type"] == "invalid_request_error"
    assert "parse the JSON body" in error["message"]
    assert response.headers["x-ratelimit-limit-requests"]
    assert response.headers["x-request-id"].startswith("req_")


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "gpt-4o-mini"}, "messages", "missing_required_parameter"),
        ({"model": "gpt-4o-mini", "messages": "hi"}, "messages", "invalid_type"),
        ({"model": "gpt-4o-mini", "messages": []}, "messages", "empty_array"),
        ({"model": "gpt-4o-mini", "messages": [{"content": "x"}]}, "messages[0].role",
         "missing_required_parameter"),
        ({"model": "gpt-4o-mini", "messages": [{"role": "bot", "content": "x"}]},
         "messages[0].role", "invalid_value"),
        ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": 5}]},
         "messages[0].content", "invalid_type"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model", None),
        ({"model": 3, "messages": [{"role": "user", "content": "x"}]}, "model", "invalid_type"),
        ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "n": "2"},
         "n", "invalid_type"),
        ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}],
          "max_tokens": 0}, "max_tokens", "integer_below_min_value"),
        ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}],
          "temperature": 3}, "temperature", "decimal_out_of_range"),
        ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}],
          "bogus": 1}, "bogus", None),
        ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}],
          "response_format": {"type": "xml"}}, "response_format.type", "invalid_value"),
        ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}],
          "response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
         "response_format.json_schema.name", "missing_required_parameter"),
        ({**X, "seed": "a"}, "seed", "invalid_type"),
        ({**X, "seed": 1.5}, "seed", "invalid_type"),
        ({**X, "stop": 5}, "stop", "invalid_type"),
        ({**X, "stop": ["a", "b", "c", "d", "e"]}, "stop", "array_above_max_length"),
        ({**X, "stop": []}, "stop", "empty_array"),
        ({**X, "stop": ["a", 1]}, "stop[1]", "invalid_type"),
        ({**X, "tools": {"type": "function"}}, "tools", "invalid_type"),
        ({**X, "tools": [{"type": "function"}]}, "tools[0].function", "missing_required_parameter"),
        ({**X, "tools": [{"type": "function", "function": {"description": "d"}}]},
         "tools[0].function.name", "missing_required_parameter"),
        ({**X, "tools": [{"type": "function", "function": {"name": "has space"}}]},
         "tools[0].function.name", "invalid_value"),
        ({**X, "tools": [{"type": "retrieval"}]}, "tools[0].type", "invalid_value"),
        ({**X, "tools": [{"type": "custom", "custom": {}}]}, "tools[0].custom.name",
         "missing_required_parameter"),
        ({**X, "tools": [{"type": "function", "function": {"name": "f", "parameters":
          {"type": "object", "properties": {"a": {"$ref": "#/$defs/gone"}}}}}]},
         "tools[0].function.parameters", "invalid_function_parameters"),
        ({**X, "tools": [{"type": "function", "function": {"name": "f", "strict": True,
          "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}}}]},
         "tools[0].function.parameters", "invalid_function_parameters"),
        ({**X, "max_tokens": 10**15}, "max_tokens", None),
        ({**X, "max_completion_tokens": 16_385}, "max_completion_tokens", None),
        ({**X, "model": "gpt-4.1-mini", "max_completion_tokens": 32_769},
         "max_completion_tokens", None),
    ],
)  # fmt: skip
def test_invalid_bodies_are_400_with_param(
    shared_sandbox: Sandbox, body: dict[str, Any], param: str, code: str | None
) -> None:
    client = client_for(shared_sandbox)
    with pytest.raises(BadRequestError) as info:
        client.post("/chat/completions", body=body, cast_to=object)
    assert info.value.status_code == 400
    # The SDK keeps the inner "error" object as .body.
    error = _assert_error_shape({"error": info.value.body})
    assert error["param"] == param
    assert error["code"] == code


def test_body_that_is_not_an_object(shared_sandbox: Sandbox) -> None:
    response = httpx2.post(
        f"{shared_sandbox.base_url}/chat/completions",
        content=b"[1, 2]",
        headers={"authorization": "Bearer sk-test", "content-type": "application/json"},
    )
    assert response.status_code == 400
    _assert_error_shape(response.json())


def test_missing_api_key_is_401(shared_sandbox: Sandbox) -> None:
    response = httpx2.get(f"{shared_sandbox.base_url}/models")
    assert response.status_code == 401
    _assert_error_shape(response.json())
    response = httpx2.get(
        f"{shared_sandbox.base_url}/models", headers={"authorization": "Bearer sk-test"}
    )
    assert response.status_code == 200


def test_unknown_url_is_404_invalid_url(client: OpenAI) -> None:
    with pytest.raises(NotFoundError) as info:
        client.post("/nothing/here", body={}, cast_to=object)
    assert "Invalid URL" in info.value.message


def test_bad_query_parameters(client: OpenAI) -> None:
    with pytest.raises(BadRequestError) as info:
        client.batches.list(limit=1000)
    assert info.value.param == "limit"
    with pytest.raises(BadRequestError) as info:
        client.files.list(order="sideways")  # type: ignore[arg-type]
    assert info.value.param == "order"


def test_max_tokens_over_the_model_cap_in_openai_words(client: OpenAI) -> None:
    with pytest.raises(BadRequestError) as info:
        client.chat.completions.create(**X, max_tokens=16_385)
    assert _assert_error_shape({"error": info.value.body})["message"] == (
        "max_tokens is too large: 16385. This model supports at most 16384 completion tokens, "
        "whereas you provided 16385."
    )
    at_cap = client.chat.completions.create(**X, max_tokens=16_384)
    assert at_cap.choices[0].finish_reason == "stop"
    assert client.chat.completions.create(
        **{**X, "model": "gpt-5-mini"}, max_completion_tokens=128_000
    ).choices


def test_valid_seed_stop_and_tools_are_accepted(client: OpenAI) -> None:
    tools: Any = [
        {"type": "function", "function": {"name": "get_weather", "strict": True, "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}},
            "required": ["city"], "additionalProperties": False}}},
        {"type": "custom", "custom": {"name": "free form"}},
    ]  # fmt: skip
    answer = client.chat.completions.create(**X, seed=-(2**63), stop=["\n", "END"], tools=tools)
    assert answer.choices[0].message.content
    assert client.chat.completions.create(**X, stop="END").choices


GOOD_OBJECT = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
               "additionalProperties": False}  # fmt: skip


@pytest.mark.parametrize(
    ("schema", "strict", "context"),
    [
        ({**GOOD_OBJECT, "properties": {"a": {"$ref": "#/nope"}}}, True,
         "In context=('properties', 'a'), reference to component '#/nope' which was not found"),
        ({**GOOD_OBJECT, "properties": {"a": {"$ref": "#/$defs/b"}}, "$defs": {}}, True,
         "In context=('properties', 'a'), reference to component '#/$defs/b'"),
        ({"type": "object", "properties": {"a": {"$ref": "https://example.com/s.json"}}}, False,
         "In context=('properties', 'a'), reference to component 'https://example.com/s.json'"),
        ({"type": "wat"}, False, "In context=('type',), "),
        ({"type": "object", "properties": {"a": 5}}, False, "In context=('properties', 'a'), "),
        ({"type": "object", "required": "a"}, False, "In context=('required',), "),
        ({"type": "array", "minItems": 5, "maxItems": 2}, False,
         "In context=(), 'minItems' (5) is greater than 'maxItems' (2)"),
        ({"type": "string", "minLength": 10, "maxLength": 2}, False,
         "In context=(), 'minLength' (10) is greater than 'maxLength' (2)"),
        ({**GOOD_OBJECT, "properties": {"a": {"type": "integer", "minimum": 10, "maximum": 1}}},
         True, "In context=('properties', 'a'), 'minimum' (10) is greater than 'maximum' (1)"),
        ({"type": "number", "exclusiveMinimum": 1, "maximum": 1}, False,
         "In context=(), 'exclusiveMinimum' (1) is not below 'maximum' (1)"),
        ({"enum": []}, False, "In context=(), 'enum' must have at least one value."),
        ({"type": "string", "pattern": "(unclosed"}, False, "In context=('pattern',), "),
        ({"type": "array", "minItems": 1000, "items": {"type": "array", "minItems": 1000}},
         False, "In context=('items',), 'minItems' asks for 1,000,000 items"),
        ({"type": "string", "minLength": 10**12}, False, "In context=(), 'minLength' asks for"),
        ({"$schema": 5, "type": "object"}, False, "In context=(), '$schema' must be a string."),
        ({"type": "array", "items": {"type": "string"}}, True,
         "schema must be a JSON Schema of 'type: \"object\"', got 'type: \"array\"'."),
    ],
)  # fmt: skip
def test_invalid_json_schemas_are_400_invalid_json_schema(
    shared_sandbox: Sandbox,
    capfd: pytest.CaptureFixture[str],
    schema: dict[str, Any],
    strict: bool,
    context: str,
) -> None:
    client = client_for(shared_sandbox)
    response_format: Any = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": strict},
    }
    with pytest.raises(BadRequestError) as info:
        client.chat.completions.create(**X, response_format=response_format)
    error = _assert_error_shape({"error": info.value.body})
    assert error["code"] == "invalid_json_schema"
    assert error["param"] == "response_format"
    assert error["message"].startswith(f"Invalid schema for response_format 'answer': {context}")
    # A bad request is the caller's mistake: the server prints nothing about it.
    printed = capfd.readouterr().err
    assert "Traceback" not in printed and "Exception in ASGI" not in printed


def test_a_bad_schema_in_the_responses_api(client: OpenAI) -> None:
    text: Any = {"format": {"type": "json_schema", "name": "answer", "strict": False,
                            "schema": {"type": "array", "minItems": 3, "maxItems": 1}}}  # fmt: skip
    with pytest.raises(BadRequestError) as info:
        client.responses.create(model="gpt-4o-mini", input="x", text=text)
    assert info.value.code == "invalid_json_schema"
    assert info.value.param == "text.format.schema"
    with pytest.raises(BadRequestError) as info:
        client.responses.create(model="gpt-4o-mini", input="x", max_output_tokens=20_000)
    assert info.value.param == "max_output_tokens"
    message = _assert_error_shape({"error": info.value.body})["message"]
    assert message.startswith("max_output_tokens is too large: 20000.")


def test_a_sandbox_bug_is_one_log_line_and_a_500(
    make_sandbox: MakeSandbox,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The safety net under every route: a bug (simulated) answers OpenAI's 500 body, logs
    one line without a traceback, is counted, and the server carries on."""
    sb = make_sandbox()
    client = client_for(sb)

    def broken(*args: Any) -> Any:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(sb.state.files, "listing", broken)
    with pytest.raises(InternalServerError) as info:
        client.files.list()
    assert info.value.status_code == 500
    assert info.value.type == "server_error"
    assert client.models.list().data  # still serving
    assert sb.stats()["internal_errors"] == 1
    assert sb.stats()["requests_by_status"]["500"] == 1
    logged = [r for r in caplog.records if r.name == "rowprompt.sandbox"]
    assert [r.getMessage() for r in logged] == ["GET /v1/files failed: RuntimeError: simulated bug"]
    printed = capfd.readouterr().err
    assert "Traceback" not in printed and "Exception in ASGI" not in printed
