"""Answers as data: the parsers are lenient where one reading exists, honest elsewhere."""

from __future__ import annotations

import json
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rowprompt.answers import (
    AnswerSpec,
    ParseFailure,
    is_strict_compatible,
    parse_boolean,
    parse_choice,
    parse_integer,
    parse_json_object,
    parse_number,
)
from rowprompt.errors import UsageError

CHOICES = ("positive", "negative", "neutral")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4", 4),
        ("4/5", 4),
        (" Four ", 4),
        ("Rating: 4.", 4),
        ("4.0", 4),
        ("**4**", 4),
        ("-2", -2),
        ("−2", -2),  # U+2212, the typographic minus sign: not 2
        ("－3", -3),  # U+FF0D, a full-width hyphen-minus
        ("10/10", 10),
        ("gpt-4 says 5", 5),  # the 4 belongs to a name
        ("x=5", 5),
    ],
)
def test_integers_with_one_reading(text: str, value: int) -> None:
    assert parse_integer(text) == value


@pytest.mark.parametrize(
    "text",
    ["3 or 4", "", "many", "4.5", "between 2 and 3", "3–4", "1/2", "3/4", "6/5", "−2 or 2",
     # Digits glued to a word are part of a name, not a number: no reading at all.
     "A0", "B12", "gpt-4", "+cmd|' /C calc'!A0"],
)  # fmt: skip
def test_integers_without_one_reading_are_errors(text: str) -> None:
    with pytest.raises(ParseFailure):
        parse_integer(text)


@pytest.mark.parametrize(
    ("text", "value"), [("3.5", 3.5), ("1,234.5", 1234.5), ("about 12 units", 12.0), ("7/10", 7)]
)
def test_numbers(text: str, value: float) -> None:
    assert parse_number(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Yes", True),
        ("no.", False),
        ("TRUE", True),
        ("0", False),
        ("Yes, it is", True),
        ("No, not at all.", False),
        ("Yes - the review says so", True),
        ("**No**", False),
    ],
)
def test_booleans(text: str, value: bool) -> None:
    assert parse_boolean(text) is value


@pytest.mark.parametrize(
    "text",
    [
        "no idea",
        "No, yes",
        "Yes and no",
        "yes?",
        "Yes? It depends.",
        "Yes, it is not",
        "Yes, it isn't",
        "maybe",
        "not sure",
        "true or false",
    ],
)
def test_booleans_without_one_reading_are_errors(text: str) -> None:
    with pytest.raises(ParseFailure):
        parse_boolean(text)


_POLES = st.sampled_from(["yes", "no", "true", "false", "Yes", "NO", "True", "False"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=12) | _POLES, min_size=1, max_size=6), st.text(max_size=3))
def test_an_answer_with_both_yes_and_no_is_never_read_as_either(
    parts: list[str], separator: str
) -> None:
    text = separator.join(parts)
    words = set(re.findall(r"[a-z]+", text.lower()))
    if words & {"yes", "true"} and words & {"no", "false"}:
        with pytest.raises(ParseFailure):
            parse_boolean(text)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_a_question_is_never_a_boolean(text: str) -> None:
    with pytest.raises(ParseFailure):
        parse_boolean(text + "?")


@settings(max_examples=100, deadline=None)
@given(st.booleans(), st.sampled_from([str, lambda b: "yes" if b else "no", lambda b: f"{b}."]))
def test_booleans_round_trip(value: bool, write: object) -> None:
    assert parse_boolean(write(value)) is value  # type: ignore[operator]
    spec = AnswerSpec("boolean")
    assert spec.parse(json.dumps({"answer": value}), structured=True).values == {"response": value}


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=10**9), st.sampled_from(["−", "－", "﹣", "-"]))
def test_any_minus_sign_makes_a_negative_number(value: int, minus: str) -> None:
    assert parse_integer(f"{minus}{value}") == -value


@pytest.mark.parametrize(
    ("text", "value"), [("Positive", "positive"), ("NEG", "negative"), ("neutral.", "neutral")]
)
def test_choices_case_insensitive_and_by_unique_prefix(text: str, value: str) -> None:
    assert parse_choice(text, CHOICES) == value


@pytest.mark.parametrize("text", ["ne", "mixed", ""])
def test_ambiguous_or_unknown_choices_are_errors(text: str) -> None:
    with pytest.raises(ParseFailure):
        parse_choice(text, CHOICES)


def test_json_in_a_code_fence() -> None:
    assert parse_json_object('```json\n{"a": 1}\n```') == {"a": 1}
    with pytest.raises(ParseFailure):
        parse_json_object("[1, 2]")


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_no_text_crashes_any_parser(text: str) -> None:
    for spec in (
        AnswerSpec(),
        AnswerSpec("integer"),
        AnswerSpec("number"),
        AnswerSpec("boolean"),
        AnswerSpec("choice", CHOICES),
        AnswerSpec("json"),
        AnswerSpec("schema", schema={"type": "object", "properties": {"a": {"type": "integer"}}}),
    ):
        for structured in (True, False):
            parsed = spec.parse(text, structured=structured)
            assert parsed.ok or parsed.error


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_integers_round_trip(value: int) -> None:
    assert parse_integer(str(value)) == value
    assert AnswerSpec("integer").parse(json.dumps({"answer": value}), structured=True).values == {
        "response": value
    }


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e9))
def test_numbers_round_trip(value: float) -> None:
    assert math.isclose(parse_number(repr(value)), value, rel_tol=1e-12, abs_tol=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(CHOICES), st.sampled_from([str.upper, str.lower, str.title]))
def test_choices_round_trip(choice: str, case: object) -> None:
    assert parse_choice(case(choice), CHOICES) == choice  # type: ignore[operator]


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=10),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=5), inner, max_size=3)
            ),
            max_leaves=10,
        ),
        max_size=5,
    )
)
def test_json_objects_round_trip_and_flatten(value: dict[str, object]) -> None:
    parsed = AnswerSpec("json").parse(json.dumps(value), structured=True)
    assert parsed.ok
    for key, item in value.items():
        expected = json.dumps(item, ensure_ascii=False) if isinstance(item, dict | list) else item
        assert parsed.values[key] == expected


def test_specs_from_options_and_back() -> None:
    for option in ("text", "integer", "number", "boolean", "json", "choice:a,b,c"):
        spec = AnswerSpec.from_options(option)
        assert AnswerSpec.from_json(spec.to_json()) == spec
    with pytest.raises(UsageError):
        AnswerSpec.from_options("choice:a")
    with pytest.raises(UsageError):
        AnswerSpec.from_options("float")


def test_schemas_from_files_and_pydantic(tmp_path: object) -> None:
    from pathlib import Path

    from pydantic import BaseModel

    class Review(BaseModel):
        score: int
        tags: list[str]

    spec = AnswerSpec.from_options("text", Review)
    assert spec.kind == "schema" and spec.columns() == ["score", "tags"]
    assert spec.dtypes() == {"score": "Int64", "tags": "object"}
    folder = Path(str(tmp_path))
    good = folder / "s.json"
    good.write_text(json.dumps({"type": "object", "properties": {"x": {"type": "string"}}}))
    assert AnswerSpec.from_options(None, str(good)).columns() == ["x"]
    bad = folder / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        AnswerSpec.from_options(None, str(bad))
    weird = folder / "weird.json"
    weird.write_text(json.dumps({"type": "object", "properties": {"x": {"type": 5}}}))
    with pytest.raises(UsageError, match="does not parse as JSON Schema"):
        AnswerSpec.from_options(None, str(weird))


def test_a_pydantic_schema_is_sent_in_strict_form() -> None:
    from pydantic import BaseModel

    class Author(BaseModel):
        name: str

    class Review(BaseModel):
        score: int
        note: str | None = None
        author: Author
        tags: list[str] = []

    spec = AnswerSpec.from_options(None, Review)
    fmt = spec.response_format()
    assert fmt is not None
    sent = fmt["json_schema"]
    assert sent["strict"] is True
    assert is_strict_compatible(sent["schema"])
    assert sent["schema"]["required"] == ["score", "note", "author", "tags"]
    # The columns and the check stay the user's own: an answer without the optional field
    # still parses when it comes from a model without structured output.
    assert spec.columns() == ["score", "note", "author", "tags"]
    assert spec.parse('{"score": 4, "author": {"name": "A"}}', structured=False).ok
    # The job is rebuilt from the ledger exactly (resume, collect).
    assert AnswerSpec.from_json(spec.to_json()) == spec


def test_a_schema_that_cannot_be_strict_is_sent_as_it_is() -> None:
    from pydantic import BaseModel, ConfigDict

    class Counts(BaseModel):
        by_word: dict[str, int]  # additionalProperties: a schema, which strict mode forbids

    class Loose(BaseModel):
        model_config = ConfigDict(extra="allow")
        a: int

    for model in (Counts, Loose):
        fmt = AnswerSpec.from_options(None, model).response_format()
        assert fmt is not None and fmt["json_schema"]["strict"] is False
        assert fmt["json_schema"]["schema"] == model.model_json_schema()
    # A JSON Schema file is the user's own text: never rewritten.
    open_schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = AnswerSpec.from_options(None, open_schema).response_format()
    assert fmt is not None and fmt["json_schema"] == {
        "name": "answer",
        "schema": open_schema,
        "strict": False,
    }


def test_strict_mode_only_for_closed_schemas() -> None:
    closed = {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    assert is_strict_compatible(closed)
    assert not is_strict_compatible({"type": "object", "properties": {"a": {"type": "integer"}}})
