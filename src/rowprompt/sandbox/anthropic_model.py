"""The Anthropic Messages shape over the sandbox's model: validation, answers, error bodies.

A Messages request is checked the way Anthropic checks it (field errors worded
``max_tokens: Field required``), then carried into the sandbox's own :class:`ChatRequest`
so that the same deterministic model, scripted rules and ``max_tokens`` cut answer it. A
forced tool (``tool_choice: {"type": "tool"}``) is Anthropic's structured output: it is
answered as a ``json_schema`` response format would be, and returned as a ``tool_use``
block whose ``input`` follows the tool's ``input_schema``.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from rowprompt import images

from .errors import APIError
from .model import Rule, completion, sandbox_model_name
from .validation import ChatRequest, content_text, resolve_model

ANTHROPIC_MODELS: Final = (
    "claude-haiku-4-5",
    "claude-sonnet-4-5",
    "claude-opus-4-1",
    "claude-3-5-haiku-latest",
)
ANTHROPIC_VERSION: Final = "2023-06-01"
CUSTOM_ID: Final = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# Every parameter of the Messages API (non-beta) that the sandbox accepts; others are refused
# as Anthropic refuses them: "<name>: Extra inputs are not permitted".
KNOWN_PARAMS: Final = frozenset(
    {
        "model", "messages", "max_tokens", "system", "temperature", "top_p", "top_k",
        "stop_sequences", "metadata", "tools", "tool_choice", "stream", "thinking",
        "service_tier", "container", "mcp_servers", "context_management",
    }
)  # fmt: skip
ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
CREDIT_TOO_LOW: Final = (
    "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing "
    "to upgrade or purchase credits."
)


def rfc3339(moment: float) -> str:
    """A Unix time as Anthropic writes times: ``2025-01-01T00:00:00Z``."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AnthropicError(APIError):
    """An error answered in Anthropic's shape: ``{"type": "error", "error": {type, message}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, type=kind or error_type(status), headers=headers)
        self.request_id = "req_" + secrets.token_hex(12)

    def body(self) -> dict[str, Any]:
        """The JSON body Anthropic sends for this error."""
        return {
            "type": "error",
            "error": {"type": self.type, "message": self.message},
            "request_id": self.request_id,
        }


def error_type(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP status."""
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def from_openai_error(exc: APIError) -> AnthropicError:
    """An OpenAI-shaped sandbox error (a scripted rule, a fault) in Anthropic's shape."""
    if isinstance(exc, AnthropicError):
        return exc
    # Anthropic says "overloaded" with 529 where OpenAI answers 503.
    status = 529 if exc.status == 503 else exc.status
    message = "Overloaded" if status == 529 else exc.message
    if status == 500 and exc.type == "server_error":
        message = "Internal server error"
    return AnthropicError(status, message, headers=dict(exc.headers))


def _bad(message: str) -> AnthropicError:
    return AnthropicError(400, message)


def _text_of(content: Any, where: str) -> str:
    """The text of a message's content: a string or a list of content blocks."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"{where}: Input should be a valid list")
    for i, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _bad(f"{where}.{i}: Input should be a valid dictionary or object")
    return content_text(content)


ANTHROPIC_MEDIA_TYPES: Final = ("image/jpeg", "image/png", "image/gif", "image/webp")
ANTHROPIC_MAX_IMAGE_BYTES: Final = 5 * 1024 * 1024


def _content_of(content: Any, where: str) -> Any:
    """A message's content for the sandbox's model: its text, or text and image parts.

    Image blocks are checked as Anthropic checks them and carried as Chat Completions
    ``image_url`` parts (a base64 source as a data URL), so one model answers both faces.
    """
    text = _text_of(content, where)
    if not isinstance(content, list) or not any(b.get("type") == "image" for b in content):
        return text
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        if block["type"] == "text" and isinstance(block.get("text"), str):
            parts.append({"type": "text", "text": block["text"]})
        elif block["type"] == "image":
            url = _image_url(block.get("source"), f"{where}.content.{j}.image.source")
            parts.append({"type": "image_url", "image_url": {"url": url}})
    return parts


def _image_url(source: Any, where: str) -> str:
    if not isinstance(source, dict):
        raise _bad(f"{where}: Field required")
    kind = source.get("type")
    if kind == "url":
        if not isinstance(source.get("url"), str):
            raise _bad(f"{where}.url.url: Field required")
        return str(source["url"])
    if kind != "base64":
        raise _bad(
            f"{where}: Input tag '{kind}' found using 'type' does not match any of the expected"
            " tags: 'base64', 'file', 'url'"
        )
    media_type, data = source.get("media_type"), source.get("data")
    if media_type not in ANTHROPIC_MEDIA_TYPES:
        raise _bad(
            f"{where}.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif'"
            " or 'image/webp'"
        )
    if not isinstance(data, str):
        raise _bad(f"{where}.base64.data: Field required")
    url = f"data:{media_type};base64,{data}"
    try:
        size = images.data_url_bytes(url)
        if size > ANTHROPIC_MAX_IMAGE_BYTES:
            raise _bad(
                f"{where}.base64: image exceeds 5 MB maximum: {size} bytes >"
                f" {ANTHROPIC_MAX_IMAGE_BYTES} bytes"
            )
        info = images.data_url_info(url)
    except images.ImageFormatError as exc:
        if exc.message.startswith("a data URL declared"):
            raise _bad(
                f"{where}.base64: Image does not match the provided media type {media_type}"
            ) from None
        raise _bad(f"{where}.base64.data: Could not process image") from None
    if max(info.width, info.height) > 8000:
        raise _bad(f"{where}.base64: image dimensions exceed max allowed size: 8000 pixels")
    return url


def _int_field(body: dict[str, Any], name: str, low: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{name}: Input should be a valid integer")
    if value < low:
        raise _bad(f"{name}: Input should be greater than or equal to {low}")
    return value


def _forced_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The tool that ``tool_choice`` forces, checked; None when no tool is forced."""
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("tools: Input should be a valid list")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                raise _bad(f"tools.{i}.name: Field required")
            schema = tool.get("input_schema")
            if not isinstance(schema, dict) or schema.get("type") != "object":
                raise _bad(f"tools.{i}.custom.input_schema.type: Input should be 'object'")
    choice = body.get("tool_choice")
    if not isinstance(choice, dict) or choice.get("type") != "tool":
        return None
    for tool in tools or []:
        if tool.get("name") == choice.get("name"):
            return dict(tool)
    raise _bad(f"tool_choice.name: Tool '{choice.get('name')}' not found in provided tools")


def parse_messages_request(body: Any, models: Collection[str]) -> ChatRequest:
    """Check a Messages API body as Anthropic does; raise :class:`AnthropicError` if it fails."""
    if not isinstance(body, dict):
        raise _bad("Input should be a valid dictionary or object")
    for name in ("model", "messages", "max_tokens"):
        if name not in body:
            raise _bad(f"{name}: Field required")
    for name in body:
        if name not in KNOWN_PARAMS:
            raise _bad(f"{name}: Extra inputs are not permitted")
    model = body["model"]
    if not isinstance(model, str):
        raise _bad("model: Input should be a valid string")
    max_tokens = _int_field(body, "max_tokens", 1)
    messages = body["messages"]
    if not isinstance(messages, list):
        raise _bad("messages: Input should be a valid list")
    if not messages:
        raise _bad("messages: at least one message is required")
    chat: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        chat.append({"role": "system", "content": _text_of(system, "system")})
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad(f"messages.{i}: Input should be a valid dictionary or object")
        role = message.get("role")
        if role == "system":
            raise _bad(
                'messages: Unexpected role "system". The Messages API accepts a top-level '
                '`system` parameter, not "system" as an input message role.'
            )
        if role not in ("user", "assistant"):
            raise _bad(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if "content" not in message:
            raise _bad(f"messages.{i}.content: Field required")
        chat.append({"role": role, "content": _content_of(message["content"], f"messages.{i}")})
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0 <= temperature <= 1
    ):
        raise _bad("temperature: Input should be less than or equal to 1")
    if body.get("stream"):
        raise _bad("stream: streaming is not supported by the rowprompt sandbox")
    tool = _forced_tool(body)
    base = resolve_model(model, models)
    if base is None:
        raise AnthropicError(404, f"model: {model}")
    response_format = None
    if tool is not None:
        response_format = {
            "type": "json_schema",
            "json_schema": {"name": tool["name"], "schema": tool["input_schema"]},
        }
    return ChatRequest(
        body=body,
        model=model,
        base_model=base,
        messages=chat,
        n=1,
        max_tokens=max_tokens,
        response_format=response_format,
    )


def message_body(
    req: ChatRequest, seed: int, rules: Sequence[Rule], prompt_tokens: int | None = None
) -> dict[str, Any]:
    """The ``message`` object the sandbox answers ``req`` with (raises for scripted errors)."""
    try:
        chat = completion(req, seed, rules, prompt_tokens)
    except APIError as exc:
        raise from_openai_error(exc) from None
    choice = chat["choices"][0]
    text = choice["message"]["content"]
    refusal = choice["message"]["refusal"]
    cut = choice["finish_reason"] == "length"
    content: list[dict[str, Any]]
    if refusal is not None:
        content, stop = [{"type": "text", "text": refusal}], "refusal"
    elif req.response_format is not None and not cut:
        name = req.response_format["json_schema"]["name"]
        try:
            data = json.loads(text or "")
        except ValueError:
            data = None
        if isinstance(data, dict):
            block = {"type": "tool_use", "id": "toolu_" + secrets.token_hex(12), "name": name}
            content, stop = [{**block, "input": data}], "tool_use"
        else:  # a scripted answer that is no JSON object: the model spoke instead
            content, stop = [{"type": "text", "text": text or ""}], "end_turn"
    else:
        content = [{"type": "text", "text": text or ""}]
        stop = "max_tokens" if cut else "end_turn"
    usage = chat["usage"]
    return {
        "id": "msg_" + secrets.token_hex(12),
        "type": "message",
        "role": "assistant",
        "model": sandbox_model_name(req.base_model),
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage["prompt_tokens"],
            "output_tokens": usage["completion_tokens"],
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "service_tier": "standard",
        },
    }
