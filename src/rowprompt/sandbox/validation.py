"""Validation of chat completion requests, with OpenAI's 400/404 messages and params."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import warnings
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, TypeGuard

import jsonschema

from rowprompt import images

from .errors import APIError, describe, missing, wrong_type

SANDBOX_SUFFIX = "-sandbox"

# Every parameter of CreateChatCompletionRequest in openai-openapi f85dbe2; others are refused.
KNOWN_PARAMS = frozenset(
    {
        "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
        "max_completion_tokens", "max_tokens", "messages", "metadata", "modalities", "model",
        "moderation", "n", "parallel_tool_calls", "prediction", "presence_penalty",
        "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention", "reasoning_effort",
        "response_format", "safety_identifier", "seed", "service_tier", "stop", "store", "stream",
        "stream_options", "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user",
        "verbosity", "web_search_options",
    }
)  # fmt: skip
ROLES = ("system", "assistant", "user", "function", "tool", "developer")
# Content part types each role may send (ChatCompletionRequest*MessageContentPart).
PART_TYPES = {
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
    "system": ("text",),
    "developer": ("text",),
    "tool": ("text",),
}
IMAGE_FORMAT_MESSAGE = (
    "You uploaded an unsupported image. Please make sure your image has of one the following"
    " formats: ['png', 'jpeg', 'gif', 'webp']."
)
_SCHEMA_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_STOP = 4
DECIMAL_RANGES = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
# Most completion tokens per model (OpenAI's model pages); a larger max_tokens is a 400.
# Longest prefix first; models not listed are not checked.
OUTPUT_TOKEN_CAPS: tuple[tuple[str, int], ...] = (
    ("gpt-4o-mini", 16_384), ("gpt-4o", 16_384), ("gpt-4.1", 32_768), ("gpt-5", 128_000),
    ("o3", 100_000), ("o4-mini", 100_000),
)  # fmt: skip


@dataclass(frozen=True)
class ChatRequest:
    """A chat completion request that passed validation."""

    body: dict[str, Any]
    model: str
    """The model as requested."""
    base_model: str
    """The listed model it maps to (the requested name without a ``-sandbox`` suffix)."""
    messages: list[dict[str, Any]]
    n: int
    max_tokens: int | None
    response_format: dict[str, Any] | None

    @cached_property
    def last_user_text(self) -> str:
        """Text of the last user message, then a tag per image: what scripted rules match."""
        text = content_text(self._last_user_content)
        return "\n".join([text, *self.last_user_images]) if self.last_user_images else text

    @cached_property
    def last_user_images(self) -> tuple[str, ...]:
        """A tag per image of the last user message (see :func:`image_tag`)."""
        content = self._last_user_content
        if not isinstance(content, list):
            return ()
        tags = []
        for part in content:
            image = part.get("image_url") if isinstance(part, dict) else None
            if isinstance(image, dict) and isinstance(image.get("url"), str):
                tags.append(image_tag(image["url"]))
        return tuple(tags)

    @property
    def _last_user_content(self) -> Any:
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return message.get("content")
        return None


def image_tag(url: str) -> str:
    """How the sandbox's model "sees" an image: ``[image png 4x3 #1a2b3c4d]``.

    The hash is the first 8 hex digits of the image bytes' sha256, so an answer shows which
    image a request carried. A web URL is not fetched: ``[image url https://...]``.
    """
    if url[:5].lower() != "data:":
        return f"[image url {url[:200]}]"
    try:
        info = images.data_url_info(url)
        _, start = images.split_data_url(url)
        digest = hashlib.sha256(base64.b64decode(url[start:])).hexdigest()[:8]
    except (images.ImageFormatError, binascii.Error, ValueError):
        return "[image unreadable]"  # refused by validation wherever validation runs
    return f"[image {info.format} {info.width}x{info.height} #{digest}]"


def content_text(content: Any) -> str:
    """The text of a message's content (a string or a list of text parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def resolve_model(name: str, models: Collection[str]) -> str | None:
    """The listed model ``name`` stands for, or None when the sandbox does not serve it."""
    if name in models:
        return name
    if name.endswith(SANDBOX_SUFFIX) and name[: -len(SANDBOX_SUFFIX)] in models:
        return name[: -len(SANDBOX_SUFFIX)]
    return None


def _int_param(body: dict[str, Any], name: str, low: int, high: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise wrong_type(name, "an integer", value)
    if value < low:
        raise APIError(
            400,
            f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, "
            f"but got {value} instead.",
            param=name,
            code="integer_below_min_value",
        )
    if high is not None and value > high:
        raise APIError(
            400,
            f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, "
            f"but got {value} instead.",
            param=name,
            code="integer_above_max_value",
        )
    return value


def _decimal_param(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise wrong_type(name, "a decimal", value)
    if not low <= value <= high:
        raise APIError(
            400,
            f"Invalid '{name}': decimal out of range. Expected a value between {low:g} and "
            f"{high:g}, but got {value} instead.",
            param=name,
            code="decimal_out_of_range",
        )


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list):
        raise wrong_type("messages", "an array", messages)
    if not messages:
        raise APIError(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            param="messages",
            code="empty_array",
        )
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise wrong_type(where, "an object", message)
        role = message.get("role")
        if role is None:
            raise missing(f"{where}.role")
        if role not in ROLES:
            supported = ", ".join(f"'{r}'" for r in ROLES[:-1]) + f", and '{ROLES[-1]}'"
            raise APIError(
                400,
                f"Invalid value: '{role}'. Supported values are: {supported}.",
                param=f"{where}.role",
                code="invalid_value",
            )
        content = message.get("content")
        if content is None and role != "assistant":
            raise missing(f"{where}.content")
        if content is not None and not isinstance(content, str | list):
            raise wrong_type(f"{where}.content", "one of a string or array of objects", content)
        if isinstance(content, list):
            _check_parts(content, f"{where}.content", PART_TYPES.get(role, ("text",)))
    return messages


def _check_parts(parts: list[Any], where: str, allowed: tuple[str, ...]) -> None:
    for j, part in enumerate(parts):
        at = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise wrong_type(at, "an object", part)
        kind = part.get("type")
        if kind is None:
            raise missing(f"{at}.type")
        if kind not in allowed:
            names = [f"'{t}'" for t in allowed]
            supported = names[0] if len(names) == 1 else f"{', '.join(names[:-1])}, and {names[-1]}"
            raise APIError(
                400,
                f"Invalid value: '{kind}'. Supported values are: {supported}.",
                param=f"{at}.type",
                code="invalid_value",
            )
        if kind == "text" and not isinstance(part.get("text"), str):
            if "text" not in part:
                raise missing(f"{at}.text")
            raise wrong_type(f"{at}.text", "a string", part["text"])
        if kind == "image_url":
            _check_image(part.get("image_url"), f"{at}.image_url")


def _check_image(image: Any, where: str) -> None:
    """An image part checked as OpenAI checks it; a data URL must hold a supported image."""
    if image is None:
        raise missing(where)
    if not isinstance(image, dict):
        raise wrong_type(where, "an object", image)
    url = image.get("url")
    if url is None:
        raise missing(f"{where}.url")
    if not isinstance(url, str):
        raise wrong_type(f"{where}.url", "a string", url)
    detail = image.get("detail")
    if detail is not None and detail not in images.DETAILS:
        raise APIError(
            400,
            f"Invalid value: '{detail}'. Supported values are: 'auto', 'low', and 'high'.",
            param=f"{where}.detail",
            code="invalid_value",
        )
    if url[:8].lower().startswith(("http://", "https://")):
        return  # the sandbox fetches nothing: it answers from the URL string
    if url[:5].lower() != "data:":
        raise APIError(
            400,
            "Invalid image URL: expected an http(s) URL or a base64 data URL"
            " (data:image/png;base64,...).",
            param=f"{where}.url",
            code="invalid_image_url",
        )
    try:
        declared, start = images.split_data_url(url)
        base64.b64decode(url[start:], validate=True)
    except (images.ImageFormatError, binascii.Error, ValueError):
        raise APIError(
            400, "Invalid base64 image_url.", param=f"{where}.url", code="invalid_base64_image"
        ) from None
    if declared not in ("image/png", "image/jpeg", "image/jpg", "image/gif", "image/webp"):
        raise APIError(400, IMAGE_FORMAT_MESSAGE, code="invalid_image_format")
    try:
        info = images.data_url_info(url)
    except images.ImageFormatError:
        raise APIError(400, IMAGE_FORMAT_MESSAGE, code="invalid_image_format") from None
    if info.animated and info.format == "gif":
        raise APIError(400, IMAGE_FORMAT_MESSAGE, code="invalid_image_format")
    limit = images.OPENAI_LIMITS.max_image_bytes
    if (info.nbytes or 0) > limit:
        raise APIError(
            400,
            f"Image too large: {info.nbytes:,} bytes, over the {limit // images.MB} MB"
            " an image may be.",
            param=f"{where}.url",
            code="image_too_large",
        )


def _strict_errors(schema: Any, path: tuple[str, ...]) -> str | None:
    """The first rule of OpenAI's strict mode ``schema`` breaks, worded as OpenAI words it."""
    if not isinstance(schema, dict):
        return None
    if schema.get("type") == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        if schema.get("additionalProperties") is not False:
            return (
                f"In context={path}, 'additionalProperties' is required to be supplied "
                "and to be false."
            )
        required = schema.get("required") or []
        lacking = [name for name in props if name not in required]
        if lacking:
            return (
                f"In context={path}, 'required' is required to be supplied and to be an array "
                f"including every key in properties. Missing '{lacking[0]}'."
            )
        for name, sub in props.items():
            found = _strict_errors(sub, (*path, "properties", name))
            if found:
                return found
    for key in ("items",):
        found = _strict_errors(schema.get(key), (*path, key))
        if found:
            return found
    for key in ("anyOf", "allOf", "oneOf"):
        for i, sub in enumerate(schema.get(key) or []):
            found = _strict_errors(sub, (*path, key, str(i)))
            if found:
                return found
    for key in ("$defs", "definitions"):
        for name, sub in (schema.get(key) or {}).items():
            found = _strict_errors(sub, (*path, key, name))
            if found:
                return found
    return None


# Keywords whose value is a schema, a list of schemas, or a map of name -> schema.
_SUBSCHEMA = (
    "items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames",
    "unevaluatedItems", "unevaluatedProperties", "additionalItems",
)  # fmt: skip
_SUBSCHEMA_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems", "items")
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions",
                   "dependentSchemas")  # fmt: skip
_BOUNDS = (
    ("minItems", "maxItems"), ("minLength", "maxLength"), ("minProperties", "maxProperties"),
    ("minimum", "maximum"), ("minContains", "maxContains"),
)  # fmt: skip
# Bounds that no value meets even when equal.
_OPEN_BOUNDS = (
    ("exclusiveMinimum", "maximum"), ("minimum", "exclusiveMaximum"),
    ("exclusiveMinimum", "exclusiveMaximum"),
)  # fmt: skip
# The most items, characters or properties an answer's instance is built with: a larger
# instance would be far past any model's output cap, and building it would stall the server.
MAX_INSTANCE_SIZE = 100_000


def _subschemas(
    schema: dict[str, Any], path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key in _SUBSCHEMA:
        if isinstance(schema.get(key), dict):
            yield (*path, key), schema[key]
    for key in _SUBSCHEMA_LISTS:
        if isinstance(schema.get(key), list):
            for i, sub in enumerate(schema[key]):
                yield (*path, key, str(i)), sub
    for key in _SUBSCHEMA_MAPS:
        if isinstance(schema.get(key), dict):
            for name, sub in schema[key].items():
                yield (*path, key, str(name)), sub


def _resolves(root: dict[str, Any], ref: str) -> bool:
    """Whether a local ``$ref`` (``#``, ``#/json/pointer`` or ``#anchor``) points somewhere."""
    fragment = ref[1:]
    if fragment and not fragment.startswith("/"):  # a plain-name fragment: an $anchor
        return any(
            isinstance(sub, dict) and sub.get("$anchor") == fragment
            for _, sub, _ in _walk(root, ())
        )
    node: Any = root
    for part in fragment.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return isinstance(node, dict | bool)


def _walk(
    schema: Any, path: tuple[str, ...], copies: int = 1
) -> Iterator[tuple[tuple[str, ...], Any, int]]:
    """Every subschema, its path, and how many copies of it an instance holds at least
    (nested ``minItems`` multiply)."""
    yield path, schema, copies
    if isinstance(schema, dict):
        least = schema.get("minItems")
        inner = copies * least if isinstance(least, int) and least > 1 else copies
        for where, sub in _subschemas(schema, path):
            repeated = where[len(path)] in ("items", "prefixItems", "contains")
            yield from _walk(sub, where, inner if repeated else copies)


def _schema_problem(schema: dict[str, Any]) -> str | None:
    """What makes ``schema`` an invalid JSON Schema, worded as OpenAI words schema errors."""
    meta = schema.get("$schema")
    if meta is not None and not isinstance(meta, str):
        return "In context=(), '$schema' must be a string."
    with warnings.catch_warnings():  # an unknown $schema falls back to 2020-12
        warnings.simplefilter("ignore", DeprecationWarning)
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = tuple(str(p) for p in exc.path)
        return f"In context={where}, {_short(exc.message)}"
    for path, sub, copies in _walk(schema, ()):
        if not isinstance(sub, dict):
            continue
        ref = sub.get("$ref")
        if isinstance(ref, str) and (not ref.startswith("#") or not _resolves(schema, ref)):
            return (
                f"In context={path}, reference to component '{ref}' which was not found in "
                "the schema."
            )
        if sub.get("enum") == []:
            return f"In context={path}, 'enum' must have at least one value."
        empty = _empty_range(sub)
        if empty:
            return f"In context={path}, {empty}: no value can satisfy the schema."
        too_big = _size_problem(path, sub, copies)
        if too_big:
            return too_big
    return None


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _empty_range(sub: dict[str, Any]) -> str | None:
    for low, high in _BOUNDS + _OPEN_BOUNDS:
        lo, hi = sub.get(low), sub.get(high)
        if not (_is_number(lo) and _is_number(hi)):
            continue
        if lo > hi:
            return f"'{low}' ({lo}) is greater than '{high}' ({hi})"
        if lo == hi and (low, high) in _OPEN_BOUNDS:
            return f"'{low}' ({lo}) is not below '{high}' ({hi})"
    return None


def _size_problem(path: tuple[str, ...], sub: dict[str, Any], copies: int) -> str | None:
    for key in ("minItems", "minLength", "minProperties"):
        value = sub.get(key)
        if isinstance(value, int) and value * copies > MAX_INSTANCE_SIZE:
            return (
                f"In context={path}, '{key}' asks for {value * copies:,} items or characters "
                f"in all: the rowprompt sandbox builds answers of at most "
                f"{MAX_INSTANCE_SIZE:,}."
            )
    return None


def _short(message: str, limit: int = 300) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


def _check_response_format(fmt: Any, messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise wrong_type("response_format", "an object", fmt)
    kind = fmt.get("type")
    if kind is None:
        raise missing("response_format.type")
    if kind not in ("text", "json_object", "json_schema"):
        raise APIError(
            400,
            f"Invalid value: '{kind}'. Supported values are: 'text', 'json_object', "
            "and 'json_schema'.",
            param="response_format.type",
            code="invalid_value",
        )
    if kind == "json_object":
        text = " ".join(content_text(m.get("content")) for m in messages).lower()
        if "json" not in text:
            raise APIError(
                400,
                "'messages' must contain the word 'json' in some form, to use "
                "'response_format' of type 'json_object'.",
                param="messages",
            )
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if spec is None:
            raise missing("response_format.json_schema")
        if not isinstance(spec, dict):
            raise wrong_type("response_format.json_schema", "an object", spec)
        name = spec.get("name")
        if name is None:
            raise missing("response_format.json_schema.name")
        if not isinstance(name, str) or not _SCHEMA_NAME.match(name):
            raise APIError(
                400,
                "Invalid 'response_format.json_schema.name': string does not match pattern. "
                "Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
                param="response_format.json_schema.name",
                code="invalid_value",
            )
        schema = spec.get("schema", {})
        if not isinstance(schema, dict):
            raise wrong_type("response_format.json_schema.schema", "an object", schema)
        problem = schema_errors(schema, strict=bool(spec.get("strict")))
        if problem:
            raise APIError(
                400,
                f"Invalid schema for response_format '{name}': {problem}",
                param="response_format",
                code="invalid_json_schema",
            )
    return fmt


def schema_errors(schema: dict[str, Any], *, strict: bool) -> str | None:
    """Why OpenAI would refuse ``schema`` (an invalid JSON Schema, a dangling ``$ref``, bounds
    no value meets, strict-mode rules), or None."""
    try:
        key = json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError, RecursionError):
        return _schema_errors(schema, strict)
    return _cached_schema_errors(key, strict)


@lru_cache(maxsize=256)
def _cached_schema_errors(key: str, strict: bool) -> str | None:
    # The checks cost about a millisecond; a run sends the same schema with every row.
    return _schema_errors(json.loads(key), strict)


def _schema_errors(schema: dict[str, Any], strict: bool) -> str | None:
    try:
        problem = _schema_problem(schema)
        if problem or not strict:
            return problem
        if schema.get("type") != "object":
            return (
                "schema must be a JSON Schema of 'type: \"object\"', "
                f"got 'type: \"{schema.get('type')}\"'."
            )
        return _strict_errors(schema, ())
    except RecursionError:
        return "In context=(), the schema is nested too deeply."


def output_token_cap(model: str) -> int | None:
    """The most completion tokens ``model`` may be asked for (None: not known)."""
    for prefix, cap in OUTPUT_TOKEN_CAPS:
        if model.startswith(prefix):
            return cap
    return None


def _check_output_cap(name: str, value: int | None, model: str) -> None:
    cap = output_token_cap(model)
    if value is not None and cap is not None and value > cap:
        raise APIError(
            400,
            f"{name} is too large: {value}. This model supports at most {cap} completion "
            f"tokens, whereas you provided {value}.",
            param=name,
        )


def _check_stop(stop: Any) -> None:
    """``StopConfiguration``: a string, or an array of 1 to 4 strings."""
    if stop is None or isinstance(stop, str):
        return
    if not isinstance(stop, list):
        raise wrong_type("stop", "one of a string or array of strings", stop)
    if not stop:
        raise APIError(
            400,
            "Invalid 'stop': empty array. Expected an array with minimum length 1, but got an "
            "empty array instead.",
            param="stop",
            code="empty_array",
        )
    if len(stop) > MAX_STOP:
        raise APIError(
            400,
            f"Invalid 'stop': array too long. Expected an array with maximum length {MAX_STOP}, "
            f"but got an array with length {len(stop)} instead.",
            param="stop",
            code="array_above_max_length",
        )
    for i, item in enumerate(stop):
        if not isinstance(item, str):
            raise wrong_type(f"stop[{i}]", "a string", item)


def _check_tools(tools: Any) -> None:
    """Function and custom tools as the spec describes them; a function's ``parameters``
    schema is checked as a response format's is."""
    if tools is None:
        return
    if not isinstance(tools, list):
        raise wrong_type("tools", "an array", tools)
    for i, tool in enumerate(tools):
        at = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise wrong_type(at, "an object", tool)
        kind = tool.get("type")
        if kind is None:
            raise missing(f"{at}.type")
        if kind not in ("function", "custom"):
            raise APIError(
                400,
                f"Invalid value: '{kind}'. Supported values are: 'function' and 'custom'.",
                param=f"{at}.type",
                code="invalid_value",
            )
        spec = tool.get(kind)
        if spec is None:
            raise missing(f"{at}.{kind}")
        if not isinstance(spec, dict):
            raise wrong_type(f"{at}.{kind}", "an object", spec)
        name = spec.get("name")
        if name is None:
            raise missing(f"{at}.{kind}.name")
        if not isinstance(name, str):
            raise wrong_type(f"{at}.{kind}.name", "a string", name)
        if kind == "function":
            _check_function(spec, name, at)


def _check_function(spec: dict[str, Any], name: str, at: str) -> None:
    if not _SCHEMA_NAME.match(name):
        raise APIError(
            400,
            f"Invalid '{at}.function.name': string does not match pattern. Expected a string "
            "that matches the pattern '^[a-zA-Z0-9_-]+$'.",
            param=f"{at}.function.name",
            code="invalid_value",
        )
    parameters = spec.get("parameters")
    if parameters is None:
        return
    if not isinstance(parameters, dict):
        raise wrong_type(f"{at}.function.parameters", "an object", parameters)
    problem = schema_errors(parameters, strict=spec.get("strict") is True)
    if problem:
        raise APIError(
            400,
            f"Invalid schema for function '{name}': {problem}",
            param=f"{at}.function.parameters",
            code="invalid_function_parameters",
        )


def check_body_and_model(body: Any, *, missing_model: APIError | None = None) -> str:
    """The first checks of every endpoint: an object body naming a model (returned)."""
    if not isinstance(body, dict):
        raise APIError(
            400,
            f"Invalid type for the request body: expected an object, but got {describe(body)}"
            " instead.",
            code="invalid_type",
        )
    model = body.get("model")
    if model is None:
        raise missing_model or APIError(400, "you must provide a model parameter", param="model")
    if not isinstance(model, str):
        raise wrong_type("model", "a string", model)
    return model


def check_params_and_model(
    body: dict[str, Any], known: Collection[str], model: str, models: Collection[str]
) -> str:
    """Unknown parameters refused, then the served model ``model`` names (404 if none)."""
    for name in body:
        if name not in known:
            raise APIError(400, f"Unrecognized request argument supplied: {name}", param=name)
    base = resolve_model(model, models)
    if base is None:
        raise APIError(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            code="model_not_found",
        )
    return base


def validate_chat(body: Any, models: Collection[str]) -> ChatRequest:
    """Check a chat completion body the way OpenAI does; raise :class:`APIError` if it fails."""
    model = check_body_and_model(body)
    if "messages" not in body:
        raise missing("messages")
    messages = _check_messages(body["messages"])
    base = check_params_and_model(body, KNOWN_PARAMS, model, models)
    if body.get("stream"):
        raise APIError(
            400,
            "Streaming is not supported by the rowprompt sandbox.",
            param="stream",
            code="unsupported_value",
        )
    if body.get("max_tokens") is not None and base.startswith(("gpt-5", "o1", "o3", "o4")):
        raise APIError(
            400,
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            param="max_tokens",
            code="unsupported_parameter",
        )
    n = _int_param(body, "n", 1, 128) or 1
    max_tokens = _int_param(body, "max_completion_tokens", 1, None)
    legacy = _int_param(body, "max_tokens", 1, None)
    for name, (low, high) in DECIMAL_RANGES.items():
        _decimal_param(body, name, low, high)
    _int_param(body, "seed", -(2**63), 2**63 - 1)
    _check_stop(body.get("stop"))
    _check_tools(body.get("tools"))
    for name, value in (("max_completion_tokens", max_tokens), ("max_tokens", legacy)):
        _check_output_cap(name, value, base)
    fmt = _check_response_format(body.get("response_format"), messages)
    return ChatRequest(
        body=body,
        model=model,
        base_model=base,
        messages=messages,
        n=n,
        max_tokens=max_tokens if max_tokens is not None else legacy,
        response_format=fmt,
    )
