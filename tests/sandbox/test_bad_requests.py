"""Bad requests get OpenAI's 4xx error shapes, never a 500 or a traceback."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from openai import BadRequestError, NotFoundError, OpenAI

from rowprompt.sandbox import Sandbox

from .conftest import client_for


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
