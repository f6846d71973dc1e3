"""Answers as data: what to ask for (structured output or an instruction) and how to read it.

Parsing is lenient but honest: ``"4"``, ``"4/5"`` and ``" Four "`` read as 4 because there is
one reasonable reading; ``"3 or 4"`` does not, and comes back as a parse error with the raw
text kept, never as a guess.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from rowprompt.errors import UsageError

KINDS = ("text", "integer", "number", "boolean", "choice", "json", "schema")
ANSWER_FIELD = "answer"

_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "none": 0,
}  # fmt: skip
_TRUE = {"true", "yes", "y", "1", "t", "positive", "correct", "affirmative"}
_FALSE = {"false", "no", "n", "0", "f", "negative", "incorrect"}
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")
_FRACTION = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$")
# "4/5" is a score out of 5; "1/2" or "3/4" reads as well as a fraction, so below this
# denominator there is no one reading.
_SCALE_MIN = 5
# Models (and the documents they quote) write minus signs that are not ASCII: "−2" is -2,
# not 2. En dashes too, so "3–4" reads as the range it is (two numbers), not as 3 and 4.
_MINUS = str.maketrans({"\u2212": "-", "\u2012": "-", "\u2013": "-", "\ufe63": "-", "\uff0d": "-"})
_WORD = re.compile(r"[a-z]+")
_YES_WORDS = frozenset({"yes", "true"})
_NO_WORDS = frozenset({"no", "false"})
# A leading yes/no counts only when set off from what follows ("Yes, it is"); "no idea" and
# "yes and no" are not answers.
_LEADING_VERDICT = re.compile(r"^(yes|no|true|false)\s*(?:[,.;:!)\]\n]|-\s|–|—)")
_NEGATION = re.compile(r"\b(?:not|no|false|never)\b|n[’']t\b")
_FENCE = re.compile(r"^\s*```(?:json|JSON)?\s*\n?(.*?)\n?```\s*$", re.DOTALL)
_EDGE_PUNCT = " \t\r\n.,;:!?\"'`*_()[]{}<>"
_PYTYPES = {"integer": "Int64", "number": "float64", "boolean": "boolean"}


class ParseFailure(ValueError):
    """An answer that does not read as the requested type; the message says why."""


@dataclass(frozen=True)
class Parsed:
    """One answer read: column values when ``ok``, else the reason."""

    ok: bool
    values: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class AnswerSpec:
    """What kind of answer a job wants."""

    kind: str = "text"
    choices: tuple[str, ...] = ()
    schema: dict[str, Any] | None = None
    schema_name: str = "answer"
    strict: bool = False
    """Ask in OpenAI's strict mode with the schema rewritten to strict form where it can be
    (Pydantic models: they ignore unknown fields anyway, so closing them loses nothing)."""

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def from_options(cls, output_type: str | None = "text", schema: Any = None) -> AnswerSpec:
        """From ``--output-type`` and ``--schema`` (a file, ``module:Model``, a class or a dict)."""
        if schema is not None:
            if output_type not in (None, "text", "json", "schema"):
                raise UsageError(
                    f"--schema and --output-type {output_type} do not go together",
                    hint="give one of them",
                )
            loaded, name, from_model = _load_schema(schema)
            return cls(kind="schema", schema=loaded, schema_name=name, strict=from_model)
        text = (output_type or "text").strip()
        if text.lower().startswith("choice:"):
            options = tuple(o.strip() for o in text.split(":", 1)[1].split(",") if o.strip())
            if len(options) < 2:
                raise UsageError(
                    f"--output-type {text!r} names fewer than two choices",
                    hint="write it as choice:positive,negative,neutral",
                )
            if len({o.lower() for o in options}) != len(options):
                raise UsageError(f"--output-type {text!r} repeats a choice")
            return cls(kind="choice", choices=options)
        kind = text.lower()
        if kind not in ("text", "integer", "number", "boolean", "json"):
            raise UsageError(
                f"unknown --output-type {text!r}",
                hint="use text, integer, number, boolean, choice:A,B,... or json",
            )
        return cls(kind=kind)

    def to_json(self) -> str:
        """The whole spec as JSON, for the ledger (a job is rebuilt from it)."""
        if self.kind in ("text", "integer", "number", "boolean", "json"):
            return self.kind
        data: dict[str, Any] = {
            "kind": self.kind,
            "choices": list(self.choices),
            "schema": self.schema,
            "schema_name": self.schema_name,
        }
        if self.strict:
            # Only when set, so the stored spec (and the identity) of older jobs is unchanged.
            data["strict"] = True
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AnswerSpec:
        """The spec back from :meth:`to_json`."""
        if not text.startswith("{"):
            return cls(kind=text)
        data = json.loads(text)
        return cls(
            kind=data["kind"],
            choices=tuple(data.get("choices") or ()),
            schema=data.get("schema"),
            schema_name=data.get("schema_name") or "answer",
            strict=bool(data.get("strict")),
        )

    def fingerprint(self) -> str:
        """A stable name for the spec, part of the job's identity."""
        if self.kind == "choice":
            return "choice:" + ",".join(self.choices)
        if self.kind == "schema":
            digest = hashlib.sha256(json.dumps(self.schema, sort_keys=True).encode()).hexdigest()[
                :12
            ]
            return f"schema:{self.schema_name}:{digest}"
        return self.kind

    # -- asking -----------------------------------------------------------------------------
    def _wrapped_schema(self) -> dict[str, Any] | None:
        inner: dict[str, Any]
        if self.kind == "integer":
            inner = {"type": "integer"}
        elif self.kind == "number":
            inner = {"type": "number"}
        elif self.kind == "boolean":
            inner = {"type": "boolean"}
        elif self.kind == "choice":
            inner = {"type": "string", "enum": list(self.choices)}
        else:
            return None
        return {
            "type": "object",
            "properties": {ANSWER_FIELD: inner},
            "required": [ANSWER_FIELD],
            "additionalProperties": False,
        }

    def response_format(self) -> dict[str, Any] | None:
        """The ``response_format`` for a model with structured outputs; None for plain text."""
        if self.kind == "text":
            return None
        if self.kind == "json":
            return {"type": "json_object"}
        schema = self.schema if self.kind == "schema" else self._wrapped_schema()
        assert schema is not None
        if self.strict:
            # Strict answers always validate against the original (the rewrite only adds
            # constraints), so parsing keeps the user's schema.
            schema = to_strict_schema(schema) or schema
        return {
            "type": "json_schema",
            "json_schema": {
                "name": _schema_name(self.schema_name),
                "schema": schema,
                "strict": is_strict_compatible(schema),
            },
        }

    def instruction(self) -> str | None:
        """What to tell a model that has no structured outputs (added to the system prompt)."""
        if self.kind == "integer":
            return "Answer with a single whole number and nothing else."
        if self.kind == "number":
            return "Answer with a single number and nothing else."
        if self.kind == "boolean":
            return "Answer with yes or no and nothing else."
        if self.kind == "choice":
            return "Answer with exactly one of: " + ", ".join(self.choices) + ". Nothing else."
        if self.kind == "json":
            return "Answer with one JSON object and nothing else."
        if self.kind == "schema":
            return (
                "Answer with one JSON object that validates against this JSON Schema, and"
                " nothing else:\n" + json.dumps(self.schema, ensure_ascii=False)
            )
        return None

    # -- reading ----------------------------------------------------------------------------
    def columns(self) -> list[str]:
        """The answer columns this spec declares (``json`` learns its columns from answers)."""
        if self.kind == "schema" and self.schema is not None:
            props = self.schema.get("properties")
            if isinstance(props, dict) and props:
                return [str(k) for k in props]
        return ["response"] if self.kind != "json" else []

    def dtypes(self) -> dict[str, str]:
        """pandas dtypes of the declared columns (object where the type is not simple)."""
        if self.kind in ("integer", "number", "boolean"):
            return {"response": _PYTYPES[self.kind]}
        if self.kind == "schema" and self.schema is not None:
            props = self.schema.get("properties") or {}
            return {str(k): _dtype_of(v) for k, v in props.items()}
        return {}

    def parse(self, text: str | None, *, structured: bool) -> Parsed:
        """Read one answer; never raises."""
        if text is None:
            return Parsed(False, error="the model gave no text")
        try:
            return Parsed(True, self._read(text, structured))
        except ParseFailure as exc:
            return Parsed(False, error=str(exc))

    def _read(self, text: str, structured: bool) -> dict[str, Any]:
        if self.kind == "text":
            return {"response": text}
        if self.kind in ("json", "schema"):
            value = parse_json_object(text)
            if self.kind == "schema" and self.schema is not None:
                validate(value, self.schema)
            return flatten(value, self.columns() if self.kind == "schema" else None)
        raw: Any = text
        if structured:
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:
                obj = None
            if isinstance(obj, dict) and ANSWER_FIELD in obj:
                raw = obj[ANSWER_FIELD]
        if self.kind == "integer":
            return {"response": parse_integer(raw)}
        if self.kind == "number":
            return {"response": parse_number(raw)}
        if self.kind == "boolean":
            return {"response": parse_boolean(raw)}
        return {"response": parse_choice(raw, self.choices)}


# -- the parsers ----------------------------------------------------------------------------
def _clean(text: str) -> str:
    return text.strip().strip(_EDGE_PUNCT).strip()


def parse_number(value: Any) -> float:
    """A number from an answer: ``"3.5"``, ``"1,234"``, ``"4/5"`` (the 4), ``"Four"``."""
    if isinstance(value, bool):
        raise ParseFailure(f"expected a number, got {value!r}")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ParseFailure(f"expected a finite number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ParseFailure(f"expected a number, got {type(value).__name__}")
    text = _clean(value.translate(_MINUS))
    if not text:
        raise ParseFailure("expected a number, got an empty answer")
    if text.lower() in _NUMBER_WORDS:
        return float(_NUMBER_WORDS[text.lower()])
    fraction = _FRACTION.match(text)
    if fraction:
        score, scale = float(fraction.group(1)), float(fraction.group(2))
        if scale >= _SCALE_MIN and 0 <= score <= scale:
            return score
        raise ParseFailure(f"{_quote(value)} could be a fraction or a score: give one number")
    found = {
        m.group(0).replace(",", "")
        for m in _NUMBER.finditer(text)
        if not _glued_to_a_word(text, m.start())
    }
    numbers = {float(n) for n in found}
    if len(numbers) == 1:
        number = numbers.pop()
        if math.isfinite(number):
            return number
    if not numbers:
        raise ParseFailure(f"no number in the answer {_quote(value)}")
    raise ParseFailure(f"more than one number in the answer {_quote(value)}")


def _glued_to_a_word(text: str, start: int) -> bool:
    # Digits that continue a word are part of a name, not a number the answer gives: "A0",
    # "B12", "gpt-4" (whose hyphen is no minus sign).
    return start > 0 and (text[start - 1].isalpha() or text[start - 1] == "_")


def parse_integer(value: Any) -> int:
    """A whole number from an answer; ``4.0`` is 4, ``4.5`` is an error."""
    number = parse_number(value)
    if not number.is_integer():
        raise ParseFailure(f"expected a whole number, got {number:g}")
    return int(number)


def parse_boolean(value: Any) -> bool:
    """Yes/no, true/false, 1/0 (case and edge punctuation ignored).

    A longer answer counts when it opens with yes or no set off by punctuation ("Yes, it
    is") and says nothing the other way after it. Questions ("yes?") and answers with both
    words ("yes and no", "No, yes") are errors, not a guess.
    """
    if isinstance(value, bool):
        return value
    raw = str(value)
    if "?" in raw or "？" in raw:
        raise ParseFailure(f"expected yes or no, got a question: {_quote(raw)}")
    text = _clean(raw).lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    words = set(_WORD.findall(text))
    if words & _YES_WORDS and words & _NO_WORDS:
        raise ParseFailure(f"the answer says both yes and no: {_quote(raw)}")
    lead = _LEADING_VERDICT.match(text)
    if lead:
        verdict = lead.group(1) in _YES_WORDS
        if not verdict or not _NEGATION.search(text[lead.end() :]):
            return verdict
        raise ParseFailure(f"the answer says yes, then no or not: {_quote(raw)}")
    raise ParseFailure(f"expected yes or no, got {_quote(raw)}")


def parse_choice(value: Any, choices: tuple[str, ...]) -> str:
    """One of ``choices``: case-insensitive, or by a prefix that only one choice has."""
    text = _clean(str(value)).lower()
    if not text:
        raise ParseFailure("expected one of the choices, got an empty answer")
    for choice in choices:
        if text == choice.lower():
            return choice
    by_prefix = [c for c in choices if c.lower().startswith(text)]
    if len(by_prefix) == 1:
        return by_prefix[0]
    expected = ", ".join(choices)
    if len(by_prefix) > 1:
        raise ParseFailure(f"{_quote(str(value))} could be any of {', '.join(by_prefix)}")
    raise ParseFailure(f"expected one of {expected}, got {_quote(str(value))}")


def parse_json_object(text: str) -> dict[str, Any]:
    """A JSON object from an answer, also inside a Markdown code fence."""
    fenced = _FENCE.match(text)
    body = fenced.group(1) if fenced else text.strip()
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ParseFailure(
            f"not valid JSON ({exc.msg} at line {exc.lineno} col {exc.colno})"
        ) from None
    if not isinstance(value, dict):
        raise ParseFailure(f"expected a JSON object, got {type(value).__name__}")
    return value


def validate(value: Any, schema: dict[str, Any]) -> None:
    """Check ``value`` against ``schema``; the first error as a :class:`ParseFailure`."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    error = jsonschema.exceptions.best_match(cls(schema).iter_errors(value))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "the answer"
        raise ParseFailure(f"{where}: {error.message}")


def flatten(value: dict[str, Any], columns: list[str] | None) -> dict[str, Any]:
    """One column per top-level field; nested values as JSON text."""
    names = columns if columns is not None else list(value)
    out: dict[str, Any] = {}
    for name in names:
        item = value.get(name)
        out[name] = json.dumps(item, ensure_ascii=False) if isinstance(item, dict | list) else item
    return out


def _quote(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _dtype_of(prop: Any) -> str:
    if not isinstance(prop, dict):
        return "object"
    kind = prop.get("type")
    if isinstance(kind, list):
        non_null = [k for k in kind if k != "null"]
        kind = non_null[0] if len(non_null) == 1 else None
    return _PYTYPES.get(str(kind), "object")


def _schema_name(name: str) -> str:
    cleaned = re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:64]
    return cleaned or "answer"


def is_strict_compatible(schema: Any) -> bool:
    """True when OpenAI's strict mode accepts the schema as it is.

    Strict mode wants every object closed (``additionalProperties: false``) with every
    property required; a schema that is not is sent with ``strict: false``, not rewritten.
    """
    if isinstance(schema, dict):
        if schema.get("type") == "object" or "properties" in schema:
            props = schema.get("properties") or {}
            if schema.get("additionalProperties") is not False:
                return False
            if set(schema.get("required") or []) != set(props):
                return False
        return all(is_strict_compatible(v) for v in schema.values())
    if isinstance(schema, list):
        return all(is_strict_compatible(v) for v in schema)
    return True


def to_strict_schema(schema: dict[str, Any]) -> dict[str, Any] | None:
    """``schema`` rewritten into OpenAI's strict form, or None where that cannot be done.

    Objects without ``additionalProperties`` are closed and every property is required (an
    optional Pydantic field is ``anyOf [..., null]`` already, so the model can still say
    null), ``default: null`` goes, and a ``$ref`` with sibling keys is inlined. A schema that
    allows extra keys (``dict[str, X]``, ``extra="allow"``) stays as it is: None.
    """
    root = copy.deepcopy(schema)
    try:
        strict = _make_strict(root, root, depth=0)
    except (KeyError, TypeError, ValueError, RecursionError):
        return None
    return strict if is_strict_compatible(strict) else None


def _make_strict(node: Any, root: dict[str, Any], *, depth: int) -> Any:
    if depth > 64:
        raise ValueError("the schema nests too deeply to rewrite")
    if not isinstance(node, dict):
        return node
    for key in ("$defs", "definitions"):
        defs = node.get(key)
        if isinstance(defs, dict):
            for name, sub in defs.items():
                defs[name] = _make_strict(sub, root, depth=depth + 1)
    if node.get("type") == "object" and "additionalProperties" not in node:
        node["additionalProperties"] = False
    props = node.get("properties")
    if isinstance(props, dict):
        if "additionalProperties" not in node:
            node["additionalProperties"] = False
        node["required"] = list(props)
        node["properties"] = {
            name: _make_strict(sub, root, depth=depth + 1) for name, sub in props.items()
        }
    if isinstance(node.get("items"), dict):
        node["items"] = _make_strict(node["items"], root, depth=depth + 1)
    for key in ("anyOf", "oneOf"):
        if isinstance(node.get(key), list):
            node[key] = [_make_strict(sub, root, depth=depth + 1) for sub in node[key]]
    all_of = node.get("allOf")
    if isinstance(all_of, list):
        if len(all_of) == 1:
            node.pop("allOf")
            node.update(_make_strict(all_of[0], root, depth=depth + 1))
        else:
            node["allOf"] = [_make_strict(sub, root, depth=depth + 1) for sub in all_of]
    if "default" in node and node["default"] is None:
        node.pop("default")
    ref = node.get("$ref")
    if isinstance(ref, str) and len(node) > 1:
        resolved = _resolve_ref(root, ref)
        merged = {**resolved, **node}
        merged.pop("$ref")
        return _make_strict(merged, root, depth=depth + 1)
    return node


def _resolve_ref(root: dict[str, Any], ref: str) -> dict[str, Any]:
    if not ref.startswith("#/"):
        raise ValueError(f"cannot inline the reference {ref!r}")
    found: Any = root
    for part in ref[2:].split("/"):
        found = found[part]
    if not isinstance(found, dict):
        raise ValueError(f"the reference {ref!r} is not a schema")
    return copy.deepcopy(found)


def _import_from_cwd(module_name: str) -> Any:
    """Import ``module_name`` as ``python -m`` would: the current folder first on the path.

    The ``rowprompt`` console script's ``sys.path`` starts at its own bin folder, so
    ``--schema models:Review`` beside the user's data would not be found otherwise.
    """
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


def load_schema(source: Any) -> tuple[dict[str, Any], str]:
    """A JSON Schema and its name from a file, ``module:Model``, a pydantic class or a dict."""
    schema, name, _ = _load_schema(source)
    return schema, name


def _load_schema(source: Any) -> tuple[dict[str, Any], str, bool]:
    """:func:`load_schema`, and whether the schema came from a Pydantic model."""
    if isinstance(source, dict):
        return (*_checked(source, str(source.get("title") or "answer")), False)
    if isinstance(source, type) and hasattr(source, "model_json_schema"):
        return (*_checked(source.model_json_schema(), source.__name__), True)
    if not isinstance(source, str | Path):
        raise UsageError(f"cannot use {source!r} as a schema", hint="give a JSON Schema file")
    text = str(source)
    path = Path(text)
    if path.suffix.lower() == ".json" or path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"schema file {text} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the schema file {text}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise UsageError(
                f"the schema file {text} is not valid JSON: {exc.msg} at line {exc.lineno}",
                hint="fix the JSON, or give module:PydanticModel",
            ) from None
        if not isinstance(data, dict):
            raise UsageError(f"the schema file {text} does not hold a JSON object")
        return (*_checked(data, str(data.get("title") or path.stem)), False)
    if ":" in text:
        module_name, _, attr = text.partition(":")
        try:
            module = _import_from_cwd(module_name)
            model = getattr(module, attr)
        except (ImportError, AttributeError) as exc:
            raise UsageError(
                f"cannot load the schema {text}: {exc}",
                hint="give a JSON Schema file, or module:Model with the module in the current"
                " folder or on PYTHONPATH",
            ) from None
        if not hasattr(model, "model_json_schema"):
            raise UsageError(f"{text} is not a pydantic model")
        return (*_checked(model.model_json_schema(), attr), True)
    raise UsageError(f"schema file {text} does not exist", hint="give a .json file or module:Model")


def _checked(schema: dict[str, Any], name: str) -> tuple[dict[str, Any], str]:
    try:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        cls.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        raise UsageError(
            f"the schema does not parse as JSON Schema: {exc.message}",
            hint="check it with a JSON Schema validator",
        ) from None
    if schema.get("type") != "object":
        raise UsageError(
            'the schema must describe an object (top-level "type": "object")',
            hint="wrap your fields in an object schema",
        )
    return schema, name
