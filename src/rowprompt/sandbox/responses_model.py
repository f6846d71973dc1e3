"""The Responses API's request checks and ``Response`` bodies, over the chat model.

A ``CreateResponse`` body is checked for what belongs to the Responses API (its parameters,
``input`` items, ``text.format``, ``max_output_tokens >= 16``), then translated into the
equivalent chat request and checked and answered by the same code as chat completions: the
same deterministic answers, rules, schemas and token counts. Errors name the Responses API's
parameters (``input[0].content``, ``text.format.name``), not chat's. Pure functions: the
batch worker threads call them too.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from rowprompt.tokens import count_messages

from .errors import APIError, missing, wrong_type
from .model import Rule, completion
from .validation import ChatRequest, check_body_and_model, validate_chat

# Every parameter of CreateResponse in openai-openapi f85dbe2; others are refused.
KNOWN_PARAMS = frozenset(
    {
        "background", "context_management", "conversation", "include", "input", "instructions",
        "max_output_tokens", "max_tool_calls", "metadata", "model", "moderation",
        "parallel_tool_calls", "previous_response_id", "prompt", "prompt_cache_key",
        "prompt_cache_options", "prompt_cache_retention", "reasoning", "safety_identifier",
        "service_tier", "store", "stream", "stream_options", "temperature", "text",
        "tool_choice", "tools", "top_logprobs", "top_p", "truncation", "user",
    }
)  # fmt: skip
# Parameters that need state or streaming the sandbox does not keep.
UNSUPPORTED = ("previous_response_id", "conversation", "prompt", "background", "stream")
MIN_OUTPUT_TOKENS = 16
ROLES = ("user", "assistant", "system", "developer")
DETAILS = ("low", "high", "auto", "original")
_MESSAGE_PARAM = re.compile(r"^messages\[(\d+)\]")
# Chat parameter names as the Responses API calls them (longest first).
_RENAMED = (
    ("response_format.json_schema.", "text.format."),
    ("response_format", "text.format"),
    ("max_completion_tokens", "max_output_tokens"),
    ("messages", "input"),
)


@dataclass(frozen=True)
class ResponsesRequest:
    """A ``CreateResponse`` body that passed validation, with its chat equivalent."""

    body: dict[str, Any]
    chat: ChatRequest


def _invalid_value(param: str, value: Any, supported: Sequence[str]) -> APIError:
    listed = ", ".join(f"'{s}'" for s in supported[:-1]) + f", and '{supported[-1]}'"
    return APIError(
        400,
        f"Invalid value: '{value}'. Supported values are: {listed}.",
        param=param,
        code="invalid_value",
    )


def _chat_part(part: Any, where: str, role: str) -> dict[str, Any]:
    """One content part as chat's (text or image_url)."""
    if not isinstance(part, dict):
        raise wrong_type(where, "an object", part)
    kind = part.get("type")
    # An assistant item is an earlier answer; the others are what the user sends.
    allowed = ("output_text", "refusal") if role == "assistant" else ("input_text", "input_image")
    if kind is None:
        raise missing(f"{where}.type")
    if kind not in allowed:
        raise _invalid_value(f"{where}.type", kind, allowed)
    if kind == "refusal":
        return {"type": "text", "text": str(part.get("refusal") or "")}
    if kind != "input_image":
        text = part.get("text")
        if text is None:
            raise missing(f"{where}.text")
        if not isinstance(text, str):
            raise wrong_type(f"{where}.text", "a string", text)
        return {"type": "text", "text": text}
    if part.get("file_id") is not None:
        raise APIError(
            400,
            "Images by 'file_id' are not supported by the rowprompt sandbox; send "
            "'image_url' (an https or data URL).",
            param=f"{where}.file_id",
            code="unsupported_value",
        )
    url = part.get("image_url")
    if url is None:
        raise missing(f"{where}.image_url")
    if not isinstance(url, str):
        raise wrong_type(f"{where}.image_url", "a string", url)
    detail = part.get("detail", "auto")
    if detail not in DETAILS:
        raise _invalid_value(f"{where}.detail", detail, DETAILS)
    return {"type": "image_url", "image_url": {"url": url, "detail": detail}}


def _chat_message(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise wrong_type(where, "an object", item)
    kind = item.get("type", "message")
    if kind != "message":
        raise APIError(
            400,
            f"Invalid value: '{kind}'. The rowprompt sandbox supports input items of type "
            "'message' only.",
            param=f"{where}.type",
            code="invalid_value",
        )
    role = item.get("role")
    if role is None:
        raise missing(f"{where}.role")
    if role not in ROLES:
        raise _invalid_value(f"{where}.role", role, ROLES)
    content = item.get("content")
    if content is None:
        raise missing(f"{where}.content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise wrong_type(f"{where}.content", "one of a string or array of objects", content)
    parts = [_chat_part(p, f"{where}.content[{i}]", role) for i, p in enumerate(content)]
    return {"role": role, "content": parts}


def _chat_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    if "input" not in body:
        raise missing("input")
    given = body["input"]
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise wrong_type("instructions", "a string", instructions)
    # Instructions are "a text input with the developer role", ahead of the input.
    messages = [{"role": "developer", "content": instructions}] if instructions else []
    if isinstance(given, str):
        return [*messages, {"role": "user", "content": given}]
    if not isinstance(given, list):
        raise wrong_type("input", "one of a string or array of input items", given)
    if not given:
        raise APIError(
            400,
            "Invalid 'input': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            param="input",
            code="empty_array",
        )
    return [*messages, *(_chat_message(item, f"input[{i}]") for i, item in enumerate(given))]


def _response_format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise wrong_type("text", "an object", text)
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise wrong_type("text.format", "an object", fmt)
    kind = fmt.get("type")
    if kind is None:
        raise missing("text.format.type")
    if kind != "json_schema":
        return {"type": kind}  # chat's check names what it does not know
    for key in ("name", "schema"):
        if key not in fmt:
            raise missing(f"text.format.{key}")
    spec = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
    return {"type": "json_schema", "json_schema": spec}


def _max_output_tokens(body: dict[str, Any]) -> int | None:
    value = body.get("max_output_tokens")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise wrong_type("max_output_tokens", "an integer", value)
    if value < MIN_OUTPUT_TOKENS:
        raise APIError(
            400,
            f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= "
            f"{MIN_OUTPUT_TOKENS}, but got {value} instead.",
            param="max_output_tokens",
            code="integer_below_min_value",
        )
    return value


def _renamed(param: str, offset: int) -> str:
    """A chat parameter path as the Responses API names it."""
    match = _MESSAGE_PARAM.match(param)
    if match is not None:
        index = int(match.group(1)) - offset
        head = "instructions" if index < 0 else f"input[{index}]"
        # Chat's image part is {"image_url": {"url"}}; the Responses API's a plain image_url.
        return head + param[match.end() :].replace(".image_url.url", ".image_url")
    for old, new in _RENAMED:
        if param.startswith(old):
            return new + param[len(old) :]
    return param


def _as_responses_error(exc: APIError, offset: int) -> APIError:
    message = exc.message
    param = exc.param
    if exc.code == "invalid_json_schema":
        param = "text.format.schema"
    elif param is not None:
        new = _renamed(param, offset)
        message = message.replace(f"'{param}'", f"'{new}'")
        if message.startswith(f"{param} "):  # "max_completion_tokens is too large: ..."
            message = new + message[len(param) :]
        param = new
    for old, new in _RENAMED:
        message = message.replace(f"'{old}'", f"'{new}'")
    return APIError(exc.status, message, type=exc.type, param=param, code=exc.code)


def validate_response(body: Any, models: Collection[str]) -> ResponsesRequest:
    """Check a ``CreateResponse`` body the way OpenAI does; raise :class:`APIError` if not."""
    check_body_and_model(body, missing_model=missing("model"))
    for name in body:
        if name not in KNOWN_PARAMS:
            raise APIError(
                400, f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter"
            )
    for name in UNSUPPORTED:
        if body.get(name):
            raise APIError(
                400,
                f"'{name}' is not supported by the rowprompt sandbox, which keeps no "
                "conversation state and does not stream.",
                param=name,
                code="unsupported_parameter",
            )
    messages = _chat_messages(body)
    offset = 1 if body.get("instructions") else 0
    chat: dict[str, Any] = {"model": body["model"], "messages": messages}
    max_tokens = _max_output_tokens(body)
    if max_tokens is not None:
        chat["max_completion_tokens"] = max_tokens
    fmt = _response_format(body.get("text"))
    if fmt is not None:
        chat["response_format"] = fmt
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            chat[name] = body[name]
    try:
        return ResponsesRequest(body, validate_chat(chat, models))
    except APIError as exc:
        raise _as_responses_error(exc, offset) from None


def response_object(
    req: ResponsesRequest, seed: int, rules: Sequence[Rule], prompt_tokens: int | None = None
) -> dict[str, Any]:
    """The ``Response`` the sandbox answers ``req`` with (``status`` incomplete when cut)."""
    try:
        chat = completion(req.chat, seed, rules, prompt_tokens)
    except APIError as exc:
        raise _as_responses_error(exc, 0) from None
    choice = chat["choices"][0]
    message = choice["message"]
    cut = choice["finish_reason"] == "length"
    if message["content"] is not None:
        part = {"type": "output_text", "text": message["content"], "annotations": [],
                "logprobs": []}  # fmt: skip
    else:
        part = {"type": "refusal", "refusal": message["refusal"]}
    usage = chat["usage"]
    now = int(time.time())
    body = req.body
    text = dict(body.get("text") or {})
    text.setdefault("format", {"type": "text"})
    text.setdefault("verbosity", "medium")
    return {
        "id": "resp_" + secrets.token_hex(24),
        "object": "response",
        "created_at": now,
        "status": "incomplete" if cut else "completed",
        "completed_at": None if cut else now,
        "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": chat["model"],
        "output": [
            {
                "id": "msg_" + secrets.token_hex(24),
                "type": "message",
                "status": "incomplete" if cut else "completed",
                "role": "assistant",
                "content": [part],
            }
        ],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": {"effort": None, "summary": None},
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": text,
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": [],
        "top_logprobs": body.get("top_logprobs", 0),
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation") or "disabled",
        "usage": {
            "input_tokens": usage["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": usage["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage["total_tokens"],
        },
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def answer_line(
    body: Any, models: Collection[str], seed: int, rules: Sequence[Rule]
) -> tuple[dict[str, Any], int, int]:
    """A batch line's ``/v1/responses`` body -> (Response, input tokens, output tokens)."""
    answer = response_object(validate_response(body, models), seed, rules)
    usage = answer["usage"]
    return answer, usage["input_tokens"], usage["output_tokens"]


def estimate_tokens(body: dict[str, Any], model: str) -> int:
    """Enqueued tokens of one line's body: the input's estimate + ``max_output_tokens``."""
    given = body.get("input")
    items = [{"role": "user", "content": given}] if isinstance(given, str) else given
    messages = []
    for item in items if isinstance(items, list) else ():
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, list):
            content = "".join(
                p.get("text") or "" for p in content if isinstance(p, dict)
            )  # images are not counted before the batch runs
        if isinstance(content, str):
            messages.append({"role": str(item.get("role") or "user"), "content": content})
    out = body.get("max_output_tokens")
    if not isinstance(out, int) or isinstance(out, bool):
        out = 0
    return (count_messages(messages, model) if messages else 0) + out
