"""The schema instance generator: every instance validates, and the same seed repeats."""

from __future__ import annotations

import random
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rowprompt.sandbox.schemas import instance

CASES: list[dict[str, Any]] = [
    {"type": "string", "minLength": 30},
    {"type": "string", "maxLength": 2},
    {"type": "string", "format": "date-time"},
    {"type": "string", "format": "uuid"},
    {"type": "integer", "exclusiveMinimum": 5, "exclusiveMaximum": 7},
    {"type": "integer", "minimum": 10, "multipleOf": 5},
    {"type": "number", "maximum": -3},
    {"const": "fixed"},
    {"type": ["null", "boolean"]},
    {"type": "array", "items": {"enum": [1, 2, 3]}, "minItems": 3, "maxItems": 3,
     "uniqueItems": True},
    {"allOf": [{"$ref": "#/$defs/a"}, {"properties": {"b": {"type": "integer"}},
                                       "required": ["b"]}],
     "$defs": {"a": {"type": "object", "properties": {"a": {"type": "string"}},
                     "required": ["a"]}}},
    {"oneOf": [{"type": "integer"}, {"type": "string"}]},
    {"type": "object", "properties": {"tree": {"$ref": "#"}, "leaf": {"type": "string"}},
     "required": ["leaf"]},
    {"type": "object", "properties": {"x": {"$ref": "#/definitions/x"}}, "required": ["x"],
     "definitions": {"x": {"type": "array", "prefixItems": [{"type": "integer"},
                                                            {"type": "string"}]}}},
]  # fmt: skip


@pytest.mark.parametrize("schema", CASES)
def test_instances_validate(schema: dict[str, Any]) -> None:
    for seed in range(20):
        jsonschema.validate(instance(schema, random.Random(seed)), schema)
    assert instance(schema, random.Random(1)) == instance(schema, random.Random(1))


@settings(max_examples=60, deadline=None)
@given(
    low=st.integers(-1000, 1000),
    span=st.integers(0, 1000),
    min_len=st.integers(0, 40),
    extra=st.integers(0, 40),
    seed=st.integers(0, 2**32),
)
def test_bounds_are_respected(low: int, span: int, min_len: int, extra: int, seed: int) -> None:
    schema = {
        "type": "object",
        "properties": {
            "i": {"type": "integer", "minimum": low, "maximum": low + span},
            "n": {"type": "number", "minimum": low, "maximum": low + span},
            "s": {"type": "string", "minLength": min_len, "maxLength": min_len + extra},
            "a": {"type": "array", "items": {"type": "boolean"}, "minItems": min_len % 5,
                  "maxItems": min_len % 5 + extra % 3},
        },
        "required": ["i", "n", "s", "a"],
        "additionalProperties": False,
    }  # fmt: skip
    jsonschema.validate(instance(schema, random.Random(seed)), schema)
