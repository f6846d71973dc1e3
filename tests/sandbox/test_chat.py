"""Chat completions through the official SDK: answers, structured output, limits of length."""

from __future__ import annotations

import json
from typing import Any, Literal

import jsonschema
import pytest
from openai import BadRequestError, NotFoundError, OpenAI
from openai.types.chat import ChatCompletion
from pydantic import BaseModel

from rowprompt.sandbox import SYSTEM_FINGERPRINT, Sandbox, expected_answer
from rowprompt.tokens import count_messages, count_text

from .conftest import client_for

MESSAGES = [
    {"role": "system", "content": "You label reviews."},
    {"role": "user", "content": "The kettle broke after two days."},
]


def test_answer_is_deterministic_and_matches_expected_answer(client: OpenAI) -> None:
    first = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    second = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.choices[0].message.content == expected_answer(
        {"model": "gpt-4o-mini", "messages": MESSAGES}
    )
    other = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Another row."}]
    )
    assert other.choices[0].message.content != first.choices[0].message.content
    assert first.choices[0].finish_reason == "stop"
    assert first.id.startswith("chatcmpl-")


def test_seed_changes_the_answers(make_sandbox: Any) -> None:
    seeded = client_for(make_sandbox(seed=7))
    answer = seeded.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    assert answer.choices[0].message.content == expected_answer(body, seed=7)
    assert expected_answer(body, seed=7) != expected_answer(body, seed=0)


def test_model_and_fingerprint_say_sandbox(client: OpenAI) -> None:
    answer = client.chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES)
    assert answer.model == "gpt-4.1-mini-sandbox"
    assert answer.system_fingerprint == SYSTEM_FINGERPRINT
    again = client.chat.completions.create(model="gpt-4.1-mini-sandbox", messages=MESSAGES)
    assert again.model == "gpt-4.1-mini-sandbox"


def test_usage_is_counted_with_the_tokenizer(client: OpenAI) -> None:
    answer = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    usage = answer.usage
    assert usage is not None
    assert usage.prompt_tokens == count_messages(MESSAGES, "gpt-4o")
    assert usage.completion_tokens == count_text(answer.choices[0].message.content or "", "gpt-4o")
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_cuts_the_answer(client: OpenAI, param: str) -> None:
    full = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert full.usage is not None and full.usage.completion_tokens > 2
    cut = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, **{param: 2})
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage is not None and cut.usage.completion_tokens == 2
    text = cut.choices[0].message.content or ""
    assert (full.choices[0].message.content or "").startswith(text)
    assert count_text(text) == 2


def test_n_choices(client: OpenAI) -> None:
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, n=3)
    assert [c.index for c in answer.choices] == [0, 1, 2]
    texts = [c.message.content or "" for c in answer.choices]
    assert texts[0] == expected_answer({"model": "gpt-4o-mini", "messages": MESSAGES})
    assert len(set(texts)) > 1
    assert answer.usage is not None
    assert answer.usage.completion_tokens == sum(count_text(t) for t in texts)


def test_json_object_answer(client: OpenAI) -> None:
    messages = [{"role": "user", "content": "Answer in JSON: is water wet?"}]
    answer = client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)


def test_json_object_needs_the_word_json(client: OpenAI) -> None:
    with pytest.raises(BadRequestError) as info:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, response_format={"type": "json_object"}
        )
    assert info.value.param == "messages"


SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "flagged": {"type": "boolean"},
        "title": {"type": "string", "minLength": 3, "maxLength": 12},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 4},
        "when": {"type": "string", "format": "date"},
        "address": {"$ref": "#/$defs/address"},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "parts": {"type": "array", "items": {"$ref": "#/$defs/part"}},
    },
    "required": [
        "label", "score", "confidence", "flagged", "title", "tags", "when", "address", "note",
        "parts",
    ],
    "additionalProperties": False,
    "$defs": {
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": ["string", "null"]}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "part": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "children": {
                "type": "array", "items": {"$ref": "#/$defs/part"}}},
            "required": ["name", "children"],
            "additionalProperties": False,
        },
    },
}  # fmt: skip


def test_json_schema_answer_validates(client: OpenAI) -> None:
    for i in range(5):
        answer = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"Review number {i}"}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "review", "schema": SCHEMA, "strict": True},
            },
        )
        jsonschema.validate(json.loads(answer.choices[0].message.content or ""), SCHEMA)


class Review(BaseModel):
    label: Literal["positive", "negative", "neutral"]
    score: int
    summary: str
    keywords: list[str]


def test_sdk_parse_with_a_pydantic_model(client: OpenAI) -> None:
    parsed = client.chat.completions.parse(
        model="gpt-4o-mini", messages=MESSAGES, response_format=Review
    )
    review = parsed.choices[0].message.parsed
    assert isinstance(review, Review)
    assert review.label in ("positive", "negative", "neutral")


def test_strict_schema_rules_are_enforced(client: OpenAI) -> None:
    loose = {"type": "object", "properties": {"a": {"type": "string"}}}
    with pytest.raises(BadRequestError) as info:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "loose", "schema": loose, "strict": True},
            },
        )
    assert "additionalProperties" in info.value.message
    answer = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        response_format={"type": "json_schema", "json_schema": {"name": "loose", "schema": loose}},
    )
    jsonschema.validate(json.loads(answer.choices[0].message.content or ""), loose)


def test_unknown_model_is_404_model_not_found(client: OpenAI) -> None:
    with pytest.raises(NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert info.value.code == "model_not_found"


def test_max_tokens_refused_for_gpt5(client: OpenAI) -> None:
    with pytest.raises(BadRequestError) as info:
        client.chat.completions.create(model="gpt-5-mini", messages=MESSAGES, max_tokens=5)
    assert info.value.code == "unsupported_parameter"
    assert info.value.param == "max_tokens"
    ok = client.chat.completions.create(
        model="gpt-5-mini", messages=MESSAGES, max_completion_tokens=5
    )
    assert ok.choices[0].message.content


def test_streaming_is_refused(client: OpenAI) -> None:
    with pytest.raises(BadRequestError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert info.value.param == "stream"


def test_models_list_and_retrieve(client: OpenAI, shared_sandbox: Sandbox) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == shared_sandbox.config.models
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(NotFoundError):
        client.models.retrieve("gpt-9")


def test_chat_completion_validates_strictly(client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    ChatCompletion.model_validate(json.loads(raw.text), strict=True)
