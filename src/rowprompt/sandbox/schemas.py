"""Deterministic instances of JSON schemas, for ``response_format: json_schema`` answers.

The generator covers what structured outputs use: objects (every property filled), enums,
consts, strings with lengths and common formats, bounded integers and numbers, booleans,
arrays, ``$defs``/``$ref`` (recursion bounded), ``anyOf``/``oneOf``/``allOf`` and nullable
types. Each instance is checked with jsonschema; a draft that fails is redrawn a few times.
General ``pattern`` regexes are not generated (see docs/sandbox.md).
"""

from __future__ import annotations

import json
import math
import random
import threading
import uuid
from collections import OrderedDict
from typing import Any

import jsonschema

WORDS: tuple[str, ...] = (
    "amber", "brisk", "calm", "dawn", "ember", "fable", "gale", "harbor", "iris", "jade",
    "kite", "lumen", "maple", "nova", "onyx", "pearl", "quartz", "river", "sage", "tide",
    "umber", "vale", "willow", "xenon", "yarrow", "zephyr", "bright", "quiet", "swift",
    "gentle", "north", "silver", "crisp", "mellow", "steady", "vivid", "lucid", "plain",
    "clear", "rapid", "solid", "humble", "eager", "noble", "rustic", "sunny", "tidy", "warm",
)  # fmt: skip

_MAX_DEPTH = 6
_ATTEMPTS = 8
_validators: OrderedDict[str, Any] = OrderedDict()
_validators_lock = threading.Lock()


def words(rng: random.Random, count: int) -> str:
    """``count`` words drawn from the sandbox's small vocabulary."""
    return " ".join(rng.choice(WORDS) for _ in range(count))


def validator(schema: dict[str, Any]) -> Any:
    """A cached jsonschema validator for ``schema`` (draft from ``$schema``, else 2020-12)."""
    key = json.dumps(schema, sort_keys=True)
    with _validators_lock:
        found = _validators.get(key)
        if found is not None:
            _validators.move_to_end(key)
            return found
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    made = cls(schema, format_checker=cls.FORMAT_CHECKER)
    with _validators_lock:
        _validators[key] = made
        while len(_validators) > 256:
            _validators.popitem(last=False)
    return made


def instance(schema: dict[str, Any], rng: random.Random) -> Any:
    """An instance of ``schema`` drawn from ``rng``; it validates whenever we can make one."""
    check = validator(schema)
    draft: Any = None
    for _ in range(_ATTEMPTS):
        draft = _Generator(schema, rng).gen(schema, 0)
        if check.is_valid(draft):
            return draft
    return draft


class _Generator:
    def __init__(self, root: dict[str, Any], rng: random.Random) -> None:
        self.root = root
        self.rng = rng

    def resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            return {}
        node: Any = self.root
        for part in ref.lstrip("#").split("/"):
            if not part:
                continue
            part = part.replace("~1", "/").replace("~0", "~")
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return node

    def gen(self, schema: Any, depth: int) -> Any:
        if not isinstance(schema, dict):
            return words(self.rng, 2)
        if depth > 4 * _MAX_DEPTH:
            return None  # a schema with no finite instance; validation reports it
        if "$ref" in schema:
            target = self.resolve(schema["$ref"])
            extra = {k: v for k, v in schema.items() if k not in ("$ref", "$defs", "definitions")}
            merged = {**target, **extra} if isinstance(target, dict) else extra
            return self.gen(merged, depth + 1)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self.rng.choice(schema["enum"])
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                return self.gen(self.pick(options, depth), depth + 1)
        if isinstance(schema.get("allOf"), list):
            return self.gen(self.merge(schema), depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"] or ["null"]
            kind = "null" if depth >= _MAX_DEPTH and "null" in kind else self.rng.choice(kinds)
        if kind is None:
            kind = (
                "object" if "properties" in schema else "array" if "items" in schema else "string"
            )
        maker = getattr(self, f"gen_{kind}", None)
        return maker(schema, depth) if maker else None

    def merge(self, schema: dict[str, Any]) -> dict[str, Any]:
        return _merge(schema, self.resolve)

    def pick(self, options: list[Any], depth: int) -> Any:
        if depth >= _MAX_DEPTH:
            # Deep in a recursive schema: take the option that ends the recursion.
            for option in options:
                if isinstance(option, dict) and option.get("type") == "null":
                    return option
            for option in options:
                if isinstance(option, dict) and "$ref" not in option:
                    return option
        return self.rng.choice(options)

    def gen_null(self, schema: dict[str, Any], depth: int) -> None:
        return None

    def gen_boolean(self, schema: dict[str, Any], depth: int) -> bool:
        return self.rng.random() < 0.5

    def gen_object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        props = schema.get("properties") or {}
        if depth >= _MAX_DEPTH:
            # Deep in a recursive schema: only what is required, so the recursion ends.
            required = set(schema.get("required") or [])
            props = {name: sub for name, sub in props.items() if name in required}
        out = {name: self.gen(sub, depth + 1) for name, sub in props.items()}
        for name in schema.get("required") or []:
            if name not in out:
                extra = schema.get("additionalProperties")
                out[name] = self.gen(extra if isinstance(extra, dict) else {}, depth + 1)
        return out

    def gen_array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        low = int(schema.get("minItems", 0))
        high = int(schema.get("maxItems", max(low, 3)))
        count = low if depth >= _MAX_DEPTH else self.rng.randint(max(low, min(1, high)), high)
        prefix = schema.get("prefixItems") or []
        items = schema.get("items", {})
        out: list[Any] = []
        seen: set[str] = set()
        for i in range(count):
            sub = prefix[i] if i < len(prefix) else items
            for _ in range(4):
                value = self.gen(sub, depth + 1)
                key = json.dumps(value, sort_keys=True)
                if not schema.get("uniqueItems") or key not in seen:
                    break
            seen.add(key)
            out.append(value)
        return out

    def gen_string(self, schema: dict[str, Any], depth: int) -> str:
        fmt = schema.get("format")
        rng = self.rng
        if fmt == "date":
            return f"20{rng.randint(10, 29)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        if fmt == "date-time":
            return (
                f"20{rng.randint(10, 29)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
                f"T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z"
            )
        if fmt == "time":
            return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z"
        if fmt == "email":
            return f"{rng.choice(WORDS)}@example.com"
        if fmt in ("uri", "url"):
            return f"https://example.com/{rng.choice(WORDS)}"
        if fmt == "uuid":
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if fmt == "ipv4":
            return f"192.0.2.{rng.randint(1, 254)}"
        if fmt == "hostname":
            return f"{rng.choice(WORDS)}.example.com"
        low = int(schema.get("minLength", 0))
        high = schema.get("maxLength")
        text = words(rng, rng.randint(1, 4))
        if len(text) < low:
            text = (text + " " + words(rng, low)).strip()[: max(low, 1)]
            text = text.ljust(low, "x")
        if high is not None and len(text) > int(high):
            text = text[: int(high)]
        return text

    def gen_integer(self, schema: dict[str, Any], depth: int) -> int:
        low, high = _bounds(schema, integer=True)
        step = schema.get("multipleOf")
        if isinstance(step, int) and step > 0:
            first = -(-int(low) // step) * step
            last = int(high) // step * step
            if first <= last:
                return first + step * self.rng.randint(0, (last - first) // step)
        return self.rng.randint(int(low), int(high))

    def gen_number(self, schema: dict[str, Any], depth: int) -> float:
        low, high = _bounds(schema, integer=False)
        value = round(self.rng.uniform(low, high), 2)
        return min(max(value, low), high)


def _bounds(schema: dict[str, Any], *, integer: bool) -> tuple[float, float]:
    nudge = 1 if integer else 0.01
    low: float | None = schema.get("minimum")
    high: float | None = schema.get("maximum")
    if isinstance(schema.get("exclusiveMinimum"), int | float):
        low = schema["exclusiveMinimum"] + nudge
    if isinstance(schema.get("exclusiveMaximum"), int | float):
        high = schema["exclusiveMaximum"] - nudge
    if low is None:
        low = 0 if high is None or high >= 100 else high - 100
    if high is None:
        high = low + 100
    if integer:
        low, high = math.ceil(low), math.floor(high)
    return low, max(low, high)


def _merge(schema: dict[str, Any], resolve: Any) -> dict[str, Any]:
    merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    for part in schema.get("allOf") or []:
        if isinstance(part, dict) and "$ref" in part:
            part = resolve(part["$ref"])
        if not isinstance(part, dict):
            continue
        for key, value in part.items():
            if key == "properties":
                merged.setdefault("properties", {}).update(value)
            elif key == "required":
                merged["required"] = list(merged.get("required", [])) + list(value)
            else:
                merged.setdefault(key, value)
    return merged
