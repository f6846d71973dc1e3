"""The OpenAI Responses API (``POST /v1/responses``) as an :class:`EndpointShape`.

The engines build every request in the chat-completions shape; :func:`to_request` turns it
into a ``CreateResponse`` body and :func:`to_completion` reads a ``Response`` back, in real
time and in batch lines alike. Requests go with ``store: false``: rows may be private, and a
job never needs the provider to keep a conversation's state.

Some models exist only on the Responses API (:data:`RESPONSES_ONLY_MODELS`, from the
``ResponsesOnlyModel`` list of OpenAI's OpenAPI description, plus the codex models); a job on
one of them uses this endpoint unless ``--endpoint`` says otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from rowprompt.errors import ConfigError, Transient, UsageError
from rowprompt.jobs import Completion
from rowprompt.providers import ENDPOINTS
from rowprompt.providers.base import EndpointShape

RESPONSES_PATH: Final = "/v1/responses"

# Models served only by the Responses API, with or without a dated snapshot suffix:
# o1-pro, o3-pro, gpt-5-pro, gpt-5.5-pro, gpt-5-codex, gpt-5.1-codex(-max|-mini),
# codex-mini-latest, computer-use-preview, o3-deep-research, o4-mini-deep-research.
RESPONSES_ONLY_MODELS: Final = re.compile(
    r"^(?:o1-pro|o3-pro|gpt-5(?:\.\d+)?-pro|gpt-5(?:\.\d+)?-codex(?:-max|-mini)?"
    r"|codex-mini-latest|computer-use-preview|o3-deep-research|o4-mini-deep-research)"
    r"(?:-\d{4}-\d{2}-\d{2})?$"
)
# The API refuses a smaller max_output_tokens (CreateResponse: ``minimum: 16``).
MIN_OUTPUT_TOKENS: Final = 16

# Chat parameters that mean the same in a CreateResponse body.
_SAME: Final = frozenset(
    {
        "model", "temperature", "top_p", "metadata", "user", "safety_identifier",
        "prompt_cache_key", "prompt_cache_retention", "service_tier", "top_logprobs",
        "parallel_tool_calls",
    }
)  # fmt: skip
# Chat parameters the Responses API lacks and a rowprompt job can do without.
_DROPPED: Final = frozenset(
    {"seed", "stop", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "store"}
)
_FINISH: Final = {"max_output_tokens": "length", "content_filter": "content_filter"}


def responses_only(model: str) -> bool:
    """Whether ``model`` is served only by the Responses API."""
    return RESPONSES_ONLY_MODELS.match(model) is not None


def endpoint_for(
    endpoint: str | None, model: str, provider: str, max_tokens: int | None = None
) -> str:
    """The job's endpoint: the one asked for, else ``responses`` for a Responses-only model.

    Refuses, in one line, what cannot work: an unknown endpoint, the Responses API on
    Anthropic or Azure, ``max_tokens`` below the API's minimum.
    """
    if endpoint is None:
        endpoint = "responses" if responses_only(model) else "chat"
    if endpoint not in ENDPOINTS:
        raise UsageError(
            f"unknown endpoint {endpoint!r}", hint=f"use one of: {', '.join(ENDPOINTS)}"
        )
    if endpoint != "responses":
        return endpoint
    why = f"{model} is served only by the Responses API; " if responses_only(model) else ""
    if provider == "anthropic":
        raise ConfigError(
            f"{why}the Anthropic API has no Responses endpoint",
            hint="use --endpoint chat, or an OpenAI model with --provider openai",
        )
    if provider == "azure":
        # Azure serves it at /openai/v1/responses, outside the deployment paths and the
        # api-version the rest of its provider uses; not supported yet.
        raise ConfigError(
            f"{why}rowprompt does not yet send Azure jobs to the Responses API",
            hint="use --endpoint chat with an Azure deployment, or --provider openai",
        )
    if max_tokens is not None and max_tokens < MIN_OUTPUT_TOKENS:
        raise UsageError(
            f"--max-tokens {max_tokens} is below the Responses API's minimum of "
            f"{MIN_OUTPUT_TOKENS}",
            hint=f"pass --max-tokens {MIN_OUTPUT_TOKENS} or more, or --endpoint chat",
        )
    return endpoint


def _content_part(part: Any) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, Mapping) else None
    if kind == "text":
        return {"type": "input_text", "text": part["text"]}
    if kind == "image_url":
        image = part["image_url"]
        url = image.get("url") if isinstance(image, Mapping) else image
        detail = (image.get("detail") if isinstance(image, Mapping) else None) or "auto"
        return {"type": "input_image", "image_url": url, "detail": detail}
    raise UsageError(f"the Responses API takes no {kind!r} content part from rowprompt")


def _input_item(message: Mapping[str, Any]) -> dict[str, Any]:
    role = message.get("role")
    if role not in ("system", "developer", "user", "assistant"):
        raise UsageError(f"the Responses API takes no {role!r} message from rowprompt")
    content = message.get("content")
    if isinstance(content, list):
        if role == "assistant":
            # An earlier answer in the conversation: output_text, as the model wrote it.
            parts = [{"type": "output_text", "text": p.get("text", "")} for p in content]
            return {"type": "message", "role": role, "content": parts}
        return {"type": "message", "role": role, "content": [_content_part(p) for p in content]}
    return {"type": "message", "role": role, "content": content or ""}


def _text_format(response_format: Mapping[str, Any]) -> dict[str, Any]:
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        flat: dict[str, Any] = {"type": "json_schema", "name": spec.get("name", "answer")}
        flat["schema"] = spec.get("schema", {})
        if spec.get("description") is not None:
            flat["description"] = spec["description"]
        if spec.get("strict") is not None:
            flat["strict"] = bool(spec["strict"])
        return flat
    if kind in ("json_object", "text"):
        return {"type": kind}
    raise UsageError(f"the Responses API has no response format {kind!r}")


def to_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """A chat-completions body as a ``CreateResponse`` body (``store: false``)."""
    n = body.get("n")
    if n is not None and n != 1:
        raise UsageError(
            f"the Responses API gives one answer per request, not n={n}",
            hint="drop n, or use --endpoint chat",
        )
    request: dict[str, Any] = {
        "model": body["model"],
        "input": [_input_item(m) for m in body.get("messages") or ()],
        "store": False,
    }
    text: dict[str, Any] = {}
    for name, value in body.items():
        if name in _SAME:
            request[name] = value
        elif name in ("max_tokens", "max_completion_tokens"):
            if value is not None:
                request["max_output_tokens"] = value
        elif name == "response_format":
            if value is not None:
                text["format"] = _text_format(value)
        elif name == "reasoning_effort":
            request["reasoning"] = {"effort": value}
        elif name == "verbosity":
            text["verbosity"] = value
        elif name not in _DROPPED and name not in ("messages", "n"):
            raise UsageError(
                f"the Responses API has no equivalent of the chat parameter {name!r}",
                hint="use --endpoint chat",
            )
    if text:
        request["text"] = text
    return request


def to_completion(data: Mapping[str, Any]) -> Completion:
    """A ``Response`` in the neutral shape: its output text, refusal, finish and usage.

    A response that neither completed nor stopped incomplete (``failed``, ``cancelled``,
    still ``queued``) raises :class:`Transient`: asking again is the remedy.
    """
    status = data.get("status")
    if status not in ("completed", "incomplete"):
        error = data.get("error") or {}
        message = error.get("message") if isinstance(error, Mapping) else None
        raise Transient(
            f"the response ended {status}: {message or 'no answer'}",
            code=(error.get("code") if isinstance(error, Mapping) else None) or str(status),
        )
    texts: list[str] = []
    refusals: list[str] = []
    for item in data.get("output") or ():
        if not isinstance(item, Mapping) or item.get("type") != "message":
            continue  # reasoning items, tool calls: not the answer
        for part in item.get("content") or ():
            if part.get("type") == "output_text":
                texts.append(str(part.get("text") or ""))
            elif part.get("type") == "refusal":
                refusals.append(str(part.get("refusal") or ""))
    finish = "stop"
    if status == "incomplete":
        reason = (data.get("incomplete_details") or {}).get("reason")
        finish = _FINISH.get(str(reason), str(reason or "incomplete"))
    usage = data.get("usage") or {}
    details = usage.get("input_tokens_details") or {}
    return Completion(
        text="".join(texts) if texts or not refusals else None,
        refusal="".join(refusals) if refusals else None,
        finish_reason=finish,
        prompt_tokens=int(usage.get("input_tokens") or 0),
        # output_tokens already holds the reasoning tokens, priced as output.
        completion_tokens=int(usage.get("output_tokens") or 0),
        cached_tokens=int(details.get("cached_tokens") or 0),
        model=data.get("model"),
    )


def is_answer(body: Mapping[str, Any]) -> bool:
    """Whether a 200 body is a Response that holds an answer (not a failed one)."""
    return (
        body.get("object") == "response"
        and isinstance(body.get("output"), list)
        and body.get("status") in ("completed", "incomplete")
    )


SHAPE: Final = EndpointShape(
    path=RESPONSES_PATH, to_request=to_request, to_completion=to_completion, is_answer=is_answer
)
