"""Templates: Jinja over a row, missing columns refused early, cell values never executed."""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rowprompt.errors import RowpromptError, TemplateError, UsageError
from rowprompt.templates import PromptTemplate, template_value

PROPERTY = settings(max_examples=60, deadline=None)


@contextmanager
def refused(error: type[RowpromptError], pattern: str) -> Iterator[None]:
    """Expect ``error`` whose one-line form (cause and hint) matches ``pattern``."""
    with pytest.raises(error) as caught:
        yield
    line = caught.value.one_line()
    assert re.search(pattern, line), line


def user(template: PromptTemplate, row: dict[str, Any]) -> str:
    messages = template.render(row)
    assert messages[-1]["role"] == "user"
    return messages[-1]["content"]


# --- rendering ----------------------------------------------------------------------------


def test_renders_system_then_user_messages() -> None:
    template = PromptTemplate("Rate: {{ review }}\n", system="You rate {{ row['kind'] }}.")
    assert template.render({"review": "Great!", "kind": "films"}) == [
        {"role": "system", "content": "You rate films."},
        {"role": "user", "content": "Rate: Great!\n"},
    ]
    assert PromptTemplate("{{ a }}").render({"a": "x"}) == [{"role": "user", "content": "x"}]


def test_columns_by_name_row_subscript_and_attribute() -> None:
    template = PromptTemplate('{{ title }}|{{ row["review text"] }}|{{ row.title }}|{{ row[""] }}')
    row = {"title": "T", "review text": "R", "": "E"}
    assert user(template, row) == "T|R|T|E"


def test_a_column_named_row_is_reached_through_row() -> None:
    template = PromptTemplate('{{ row["row"] }}/{{ row.other }}')
    assert user(template, {"row": "r", "other": "o"}) == "r/o"
    assert template.variables() == {"row", "other"}


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        (math.nan, ""),
        (np.float64("nan"), ""),
        (pd.NA, ""),
        (pd.NaT, ""),
        (5.0, "5"),
        (np.float64(2.0), "2"),
        (2.5, "2.5"),
        (np.int64(7), "7"),
        (-0.0, "0"),
        ("", ""),
        ("nan", "nan"),
        (["a", "é", 1], '["a", "é", 1]'),
        ({"k": [1, None]}, '{"k": [1, null]}'),
        (np.array([1, 2]), "[1, 2]"),
        (dt.date(2024, 1, 2), "2024-01-02"),
        (pd.Timestamp("2024-01-02"), "2024-01-02"),
        (dt.datetime(2024, 1, 2, 10, 30), "2024-01-02T10:30:00"),
        (True, "True"),
    ],
)
def test_cell_values_print_as_a_person_expects(value: Any, text: str) -> None:
    assert user(PromptTemplate("{{ x }}"), {"x": value}) == text


def test_filters_and_logic_see_plain_values() -> None:
    template = PromptTemplate(
        "{{ name | upper }}|{% if note %}has note{% else %}no note{% endif %}|{{ n + 1 }}"
        "|{{ tags | join(', ') }}|{{ when.year }}"
    )
    row = {
        "name": "ada",
        "note": math.nan,
        "n": 4.0,
        "tags": ["a", "b"],
        "when": dt.date(2024, 5, 1),
    }
    assert user(template, row) == "ADA|no note|5|a, b|2024"


def test_cell_content_is_never_run_as_a_template() -> None:
    hostile = "{{ 7*7 }} {% for i in range(3) %}x{% endfor %} {# c #} {{ row }}"
    assert user(PromptTemplate("<{{ v }}>"), {"v": hostile}) == f"<{hostile}>"


def test_the_sandbox_blocks_unsafe_attributes() -> None:
    with refused(TemplateError, r"rendering failed on row 4: SecurityError"):
        PromptTemplate("{{ x.__class__.__mro__[1].__subclasses__() }}").render({"x": 1}, key="4")


def test_rendering_is_fast_enough_for_a_million_rows() -> None:
    template = PromptTemplate("Sentiment of: {{ review }} ({{ row['id'] }})")
    rows = [{"id": str(i), "review": "text " * 20, "score": float(i)} for i in range(20_000)]
    outputs = [template.render(r) for r in rows]
    assert outputs[-1][0]["content"].endswith("(19999)")


# --- variables and column checks ----------------------------------------------------------


def test_variables_found_statically() -> None:
    template = PromptTemplate(
        "{{ a }} {{ row['b c'] }} {{ row.d }} {{ row.get('opt') }} {{ row.items() | list }}"
        "{% for i in range(2) %}{{ i }}{{ loop.index }}{% endfor %}{% set local = 1 %}{{ local }}"
        "{{ e | default('x') }}",
        system="{{ f }}",
    )
    assert template.variables() == {"a", "b c", "d", "e", "f"}


def test_row_set_locally_is_not_the_row() -> None:
    template = PromptTemplate("{% for row in items %}{{ row.name }}{% endfor %}")
    assert template.variables() == {"items"}


def test_check_columns_accepts_a_matching_table() -> None:
    PromptTemplate("{{ a }}{{ row['b c'] }}").check_columns(["a", "b c", "z"], source="in.csv")


def test_missing_column_is_named_with_the_columns_and_a_suggestion() -> None:
    template = PromptTemplate("Rate {{ reviw }}")
    with refused(
        TemplateError,
        r"^--prompt: the template names column 'reviw', which reviews\.csv lacks\. "
        r"Did you mean 'review' \(\{\{ review \}\}\)\? The columns are: 'id', 'review'\.$",
    ):
        template.check_columns(["id", "review"], source="reviews.csv")


def test_missing_column_suggests_the_row_form_for_non_identifiers() -> None:
    template = PromptTemplate("{{ review_text }}", system="{{ tone }}")
    with refused(TemplateError, r"Did you mean 'review text' \(\{\{ row\['review text'\] \}\}\)"):
        template.check_columns(["review text", "tone"], source="in.xlsx")
    with refused(TemplateError, r"^--system: the template names column 'tone'"):
        template.check_columns(["review_text"], source="in.xlsx")


def test_missing_column_at_render_names_row_and_column() -> None:
    template = PromptTemplate("{{ row[which] }}")
    template.check_columns(["which", "a"], source="t.csv")  # dynamic: invisible statically
    assert user(template, {"which": "a", "a": "ok"}) == "ok"
    with refused(TemplateError, r"row k7 has no column 'b'.*The columns are: 'which', 'a'"):
        template.render({"which": "b", "a": "ok"}, key="k7")
    with refused(TemplateError, r"row 3 has no column 'missing'"):
        PromptTemplate("{{ missing }}").render({"a": 1}, key="3")


def test_syntax_errors_name_the_line() -> None:
    with refused(TemplateError, r"^--prompt: template syntax error on line 2: "):
        PromptTemplate("fine\n{% if %}")
    with refused(TemplateError, r"^--system: template syntax error on line 1"):
        PromptTemplate("ok", system="{{ x ")
    with refused(TemplateError, r"the prompt is empty"):
        PromptTemplate("  \n")


# --- options and files --------------------------------------------------------------------


def test_from_options_takes_exactly_one_prompt(tmp_path: Path) -> None:
    with refused(UsageError, r"--prompt TEXT or --prompt-file FILE"):
        PromptTemplate.from_options()
    with refused(UsageError, r"were both given"):
        PromptTemplate.from_options(prompt="a", prompt_file=tmp_path / "p.txt")
    with refused(UsageError, r"--system and --system-file were both given"):
        PromptTemplate.from_options(prompt="a", system="s", system_file="s.txt")
    assert PromptTemplate.from_options(prompt="a", system="") == PromptTemplate("a")


def test_from_options_reads_files(tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes("\ufeffSummarise: {{ text }}\n".encode())
    system = tmp_path / "system.txt"
    system.write_text("Be brief.", encoding="utf-8")
    template = PromptTemplate.from_options(prompt_file=prompt, system_file=str(system))
    assert template == PromptTemplate("Summarise: {{ text }}\n", system="Be brief.")
    with refused(TemplateError, rf"^{re.escape(str(prompt))}: the template names column 'text'"):
        template.check_columns(["body"], source="in.csv")


def test_template_file_errors(tmp_path: Path) -> None:
    with refused(TemplateError, r"nope\.txt: no such template file"):
        PromptTemplate.from_options(prompt_file=tmp_path / "nope.txt")
    with refused(TemplateError, r"is a directory"):
        PromptTemplate.from_options(prompt_file=tmp_path)
    bad = tmp_path / "latin.txt"
    bad.write_bytes("ok\ncaf\xe9".encode("latin-1"))
    with refused(TemplateError, r"latin\.txt: not valid UTF-8 at byte 6 \(line 2\).*UTF-8"):
        PromptTemplate.from_options(prompt="x", system_file=bad)
    broken = tmp_path / "broken.txt"
    broken.write_text("line one\n{{ oops", encoding="utf-8")
    with refused(TemplateError, rf"^{re.escape(str(broken))}: template syntax error on line 2"):
        PromptTemplate.from_options(prompt_file=broken)


def test_fingerprint_is_stable_and_covers_both_templates() -> None:
    base = PromptTemplate("a {{ x }}", system="s")
    assert base.fingerprint() == PromptTemplate("a {{ x }}", "s", "file.txt").fingerprint()
    assert len(base.fingerprint()) == 64
    others = {
        PromptTemplate("a {{ x }}").fingerprint(),
        PromptTemplate("a {{ x }}", system="t").fingerprint(),
        PromptTemplate("a {{ y }}", system="s").fingerprint(),
    }
    assert base.fingerprint() not in others and len(others) == 3


def test_template_value() -> None:
    assert template_value(np.float64(3.0)) == 3 and type(template_value(3.0)) is int
    assert template_value(float("inf")) == float("inf")
    assert template_value(math.nan) == ""


# --- properties ---------------------------------------------------------------------------

column_names = st.lists(st.text(max_size=10), min_size=1, max_size=5, unique=True)
hostile_text = st.one_of(
    st.text(),
    st.sampled_from(["{{ 1+1 }}", "{% raw %}", "{#", "{{", "}}", "%}", "\x00", "nan", "None"]),
    st.text(alphabet="{}%#\n\x00 ab", max_size=30),
    st.text(min_size=5_000, max_size=20_000),
)
cell_values = st.one_of(
    hostile_text,
    st.none(),
    st.just(math.nan),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=False),
)


def reference(name: str) -> str:
    """How a template names a column: by name where Jinja allows, else through ``row``."""
    return f"{{{{ row[{name!r}] }}}}"


@PROPERTY
@given(data=st.data(), names=column_names)
def test_rendering_shows_cells_verbatim_and_never_executes_them(
    data: st.DataObject, names: list[str]
) -> None:
    row = {n: data.draw(cell_values) for n in names}
    template = PromptTemplate("".join(f"<{reference(n)}>" for n in names))
    template.check_columns(names, source="t")
    first = user(template, row)
    assert first == user(template, row)
    expected = []
    for n in names:
        value = row[n]
        if isinstance(value, str):
            expected.append(value)
        elif value is None or (isinstance(value, float) and math.isnan(value)):
            expected.append("")
        elif isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
            expected.append(str(int(value)))
        else:
            expected.append(str(value))
    assert first == "".join(f"<{e}>" for e in expected)


@PROPERTY
@given(
    names=column_names,
    pieces=st.lists(st.text(alphabet=st.characters(blacklist_characters="{}%#"), max_size=8)),
)
def test_variables_are_the_columns_a_template_names(names: list[str], pieces: list[str]) -> None:
    parts = []
    for i, name in enumerate(names):
        plain = name.isidentifier() and name.isascii() and name not in _RESERVED
        parts.append(pieces[i] if i < len(pieces) else " ")
        parts.append(f"{{{{ {name} }}}}" if plain else reference(name))
    template = PromptTemplate("x" + "".join(parts))
    assert template.variables() == set(names)


# Words Jinja reads as literals, operators or its own globals rather than as a variable.
_RESERVED = frozenset(
    {
        *("true", "false", "none", "True", "False", "None"),
        *("and", "or", "not", "in", "is", "if", "else"),
        *("row", "range", "dict", "lipsum", "cycler", "joiner", "namespace"),
    }
)
