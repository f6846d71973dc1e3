"""The literal-text-and-references fast path renders exactly what Jinja renders."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rowprompt.errors import TemplateError
from rowprompt.templates import PromptTemplate

scalars = st.one_of(
    st.none(),
    st.text(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.binary(max_size=8),
    st.dates(),
    st.datetimes(),
    st.times(),
    st.just(math.nan),
    st.just(pd.NA),
    st.just(pd.NaT),
    st.just(np.float64(5.0)),
    st.just(np.int64(7)),
    st.just(np.datetime64("NaT")),
    st.just(np.array([1, 2])),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)

FAST = [
    ("Rate {{ review }}!", None),
    ('{{ a }}{{ row["b c"] }} and {{row["a"]}}\n', "sys {{ b }}"),
    ("{{- a -}}  {{ a }}\n\n", None),
    ("only text", "{{ row['row'] }}"),
]


def _jinja(template: PromptTemplate, row: dict[str, Any]) -> list[dict[str, str]]:
    return template._render_jinja(row)


@pytest.mark.parametrize(("prompt", "system"), FAST)
def test_these_templates_take_the_fast_path(prompt: str, system: str | None) -> None:
    assert PromptTemplate(prompt, system)._fast is not None


@pytest.mark.parametrize(
    "prompt",
    [
        "{{ a | upper }}",
        "{% if a %}x{% endif %}",
        "{{ row.a }}",
        "{{ row }}",
        "{{ 'lit' }}",
        "{{ true }}",
        "{{ a ~ b }}",
        "{% set a = 1 %}{{ a }}",
        "{{ row[a] }}",
    ],
)
def test_anything_more_takes_jinja(prompt: str) -> None:
    assert PromptTemplate(prompt)._fast is None


@settings(max_examples=300, deadline=None)
@given(a=values, b=values, extra=values)
def test_fast_path_renders_what_jinja_renders(a: Any, b: Any, extra: Any) -> None:
    row = {"a": a, "b": b, "b c": extra, "row": b, "review": a}
    for prompt, system in FAST:
        template = PromptTemplate(prompt, system)
        try:
            expected = _jinja(template, row)
        except TemplateError as exc:
            with pytest.raises(TemplateError) as got:
                template.render(row)
            assert str(got.value) == str(exc)
        else:
            assert template.render(row) == expected


def test_a_missing_column_still_names_it() -> None:
    template = PromptTemplate('{{ a }} {{ row["b c"] }}')
    with pytest.raises(TemplateError, match="row k1 has no column 'b c'"):
        template.render({"a": 1}, key="k1")


def test_a_column_named_like_a_global_is_the_column() -> None:
    template = PromptTemplate("{{ range }} {{ a }}")
    row = {"range": 5.0, "a": dt.date(2024, 1, 2)}
    assert template._fast is not None
    assert (
        template.render(row)
        == _jinja(template, row)
        == [{"role": "user", "content": "5 2024-01-02"}]
    )
