"""Validation of chat completion requests, with OpenAI's 400/404 messages and params."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Collection
from dataclasses import dataclass
from functools import cached_property
from typing import Any

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
        if spec.get("strict"):
            if schema.get("type") != "object":
                problem = (
                    "schema must be a JSON Schema of 'type: \"object\"', "
                    f"got 'type: \"{schema.get('type')}\"'."
                )
            else:
                problem = _strict_errors(schema, ()) or ""
            if problem:
                raise APIError(
                    400,
                    f"Invalid schema for response_format '{name}': {problem}",
                    param="response_format",
                    code="invalid_json_schema",
                )
    return fmt


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
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise wrong_type("temperature", "a decimal", temperature)
        if not 0 <= temperature <= 2:
            raise APIError(
                400,
                f"Invalid 'temperature': decimal out of range. Expected a value between 0 and 2, "
                f"but got {temperature} instead.",
                param="temperature",
                code="decimal_out_of_range",
            )
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
