"""Random request bodies never get a 500: whatever a client sends, the sandbox answers 200
or OpenAI's 4xx error shape, in real time and in batch lines."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai import APIStatusError, OpenAI

from rowprompt.sandbox import Sandbox, SandboxConfig

from .conftest import FAST, client_for, read_lines, submit, wait_batch

KEYS = (
    "type", "properties", "items", "prefixItems", "$ref", "$defs", "required", "enum",
    "const", "anyOf", "oneOf", "allOf", "additionalProperties", "minItems", "maxItems",
    "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "multipleOf",
    "uniqueItems", "format", "pattern", "role", "content", "text", "image_url", "url",
    "name", "schema", "strict", "json_schema", "function", "parameters", "custom",
)  # fmt: skip
WORDS = (
    "object", "array", "string", "integer", "number", "boolean", "null", "json_schema",
    "json_object", "text", "user", "system", "assistant", "developer", "tool", "function",
    "custom", "input_text", "#", "#/$defs/a", "#/properties/a", "a", "date-time", "email",
    "data:image/png;base64,AAAA", "gpt-4o-mini",
)  # fmt: skip
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-3, max_value=20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(WORDS)
    | st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
)
keys = st.sampled_from(KEYS) | st.text(st.characters(exclude_categories=("Cs",)), max_size=8)
values = st.recursive(
    leaves,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(keys, kids, max_size=5),
    max_leaves=25,
)
small = st.integers(min_value=-2, max_value=12)
TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")
NAMES = st.sampled_from(["a", "b", "c"])


def _schema_node(kids: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Schemas that look like what people write, with a random value here and there."""
    return st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(TYPES) | st.lists(st.sampled_from(TYPES), max_size=3) | leaves,
            "properties": st.dictionaries(NAMES, kids, max_size=3),
            "required": st.lists(NAMES, max_size=3),
            "additionalProperties": st.booleans() | kids,
            "items": kids,
            "prefixItems": st.lists(kids, max_size=2),
            "anyOf": st.lists(kids, max_size=3),
            "oneOf": st.lists(kids, max_size=2),
            "allOf": st.lists(kids, max_size=2),
            "enum": st.lists(leaves, max_size=3),
            "const": leaves,
            "minItems": small | st.integers(),
            "maxItems": small | st.integers(),
            "uniqueItems": st.booleans(),
            "minLength": small,
            "maxLength": small | st.integers(),
            "minimum": small | st.floats(allow_nan=False, allow_infinity=False),
            "maximum": small | st.integers(),
            "exclusiveMinimum": small,
            "multipleOf": st.sampled_from([0, -1, 0.5, 2, 3, 1e-9]),
            "format": st.sampled_from(["date", "date-time", "email", "uuid", "uri", "odd"]),
            "pattern": st.sampled_from(["^[a-z]+$", "(", "a{2}"]),
            "$ref": st.sampled_from(["#", "#/$defs/a", "#/properties/a", "#/nope", "#x"]),
            "$defs": st.dictionaries(NAMES, kids, max_size=2),
        },
    )


schemas = st.recursive(_schema_node(st.just({"type": "string"})), _schema_node, max_leaves=12)
tools = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["function", "custom"]) | leaves},
        optional={
            "function": st.fixed_dictionaries(
                {"name": st.sampled_from(["f", "get weather"]) | leaves},
                optional={"parameters": schemas | values, "strict": st.booleans()},
            ),
            "custom": st.fixed_dictionaries({}, optional={"name": st.just("c") | leaves}),
        },
    ),
    max_size=2,
)
MODELS = st.sampled_from(["gpt-4o-mini", "gpt-4o-mini", "gpt-4.1-nano", "gpt-5-mini", "nope"])
MESSAGES = [{"role": "user", "content": "Answer in json."}]
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "developer", "tool"]) | leaves},
        optional={"content": st.text(max_size=20) | st.lists(values, max_size=2) | leaves},
    ),
    max_size=3,
)
CHAT_PARAMS: dict[str, st.SearchStrategy[Any]] = {
    "messages": messages,
    "n": small,
    "max_tokens": small | st.integers(),
    "max_completion_tokens": small | st.integers(),
    "seed": st.integers(),
    "stop": st.text(max_size=5) | st.lists(st.text(max_size=3) | leaves, max_size=6),
    "tools": tools,
    "temperature": st.floats(-1, 3),
    "response_format": st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "json_object", "json_schema", "xml"])}
    ),
    "top_p": st.floats(-1, 2),
    "metadata": values,
}
RESPONSES_PARAMS: dict[str, st.SearchStrategy[Any]] = {
    "input": st.text(max_size=10) | messages,
    "instructions": st.text(max_size=10),
    "max_output_tokens": small | st.integers(min_value=10),
    "temperature": st.floats(-1, 3),
    "tools": tools,
    "metadata": values,
    "store": st.booleans(),
}


def _plausible(draw: st.DrawFn, params: dict[str, st.SearchStrategy[Any]]) -> dict[str, Any]:
    """A few parameters, each mostly a plausible value, sometimes any JSON value."""
    chosen = draw(st.lists(st.sampled_from(sorted(params)), max_size=4, unique=True))
    return {key: _mostly(draw, params[key]) for key in chosen}


def _mostly(draw: st.DrawFn, plausible: st.SearchStrategy[Any]) -> Any:
    """A plausible value four times in five, else any JSON value."""
    return draw(values if draw(st.integers(0, 4)) == 4 else plausible)


@st.composite
def chat_bodies(draw: st.DrawFn, model: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model or _mostly(draw, MODELS),
        "messages": MESSAGES,
        **_plausible(draw, CHAT_PARAMS),
    }
    if draw(st.booleans()):
        spec = {"name": "answer", "schema": draw(schemas), "strict": draw(st.booleans())}
        body["response_format"] = {"type": "json_schema", "json_schema": spec}
    return body


@st.composite
def responses_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "input": "Answer in json.",
        **_plausible(draw, RESPONSES_PARAMS),
    }
    if draw(st.booleans()):
        fmt = {"type": "json_schema", "name": "answer", "schema": draw(schemas),
               "strict": draw(st.booleans())}  # fmt: skip
        body["text"] = {"format": fmt}
    return body


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(SandboxConfig(**FAST)) as sb:  # type: ignore[arg-type]
        yield sb


@pytest.fixture(scope="module")
def client(sandbox: Sandbox) -> OpenAI:
    return client_for(sandbox)


def _status(client: OpenAI, path: str, body: dict[str, Any]) -> int:
    try:
        client.post(path, body=body, cast_to=object)
    except APIStatusError as exc:
        error = exc.body
        assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}
        return exc.status_code
    return 200


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(body=chat_bodies())
def test_random_chat_bodies_never_get_a_500(client: OpenAI, body: dict[str, Any]) -> None:
    status = _status(client, "/chat/completions", body)
    assert status == 200 or 400 <= status < 500, body


@FUZZ
@given(body=responses_bodies())
def test_random_responses_bodies_never_get_a_500(client: OpenAI, body: dict[str, Any]) -> None:
    status = _status(client, "/responses", body)
    assert status == 200 or 400 <= status < 500, body


@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
@given(bodies=st.lists(chat_bodies(model="gpt-4o-mini"), min_size=10, max_size=10))
def test_random_batch_lines_never_get_a_500(client: OpenAI, bodies: list[dict[str, Any]]) -> None:
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        for i, body in enumerate(bodies)
    ]
    batch = wait_batch(client, submit(client, lines).id)
    assert batch.status == "completed", batch.errors
    assert batch.request_counts is not None and batch.request_counts.total == 10
    errors = read_lines(client, batch.error_file_id)
    assert all(400 <= line["response"]["status_code"] < 500 for line in errors)


def test_no_request_of_the_fuzz_was_a_500(sandbox: Sandbox) -> None:
    """Runs after the fuzz tests of this module (same sandbox): the server's own count."""
    stats = sandbox.stats()
    assert stats["requests_total"] > 200
    assert "500" not in stats["requests_by_status"]
    assert stats["internal_errors"] == 0
    assert "500" not in stats["batch_lines_by_status"]
