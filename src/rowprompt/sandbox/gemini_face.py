"""The sandbox's Gemini face: ``generateContent``, the File API and batch mode (``v1beta``).

It shares the sandbox's model, rules, rate-limit buckets, faults and stats with the OpenAI
face, and speaks Gemini's wire format: ``x-goog-api-key`` auth, camelCase JSON (snake_case
is accepted too, as protobuf JSON parsers do), errors ``{"error": {"code", "message",
"status", "details"}}`` with ``RESOURCE_EXHAUSTED`` 429s that carry a ``QuotaFailure`` and a
``RetryInfo`` delay (Gemini sends no rate-limit headers). A request is carried into the
sandbox's own :class:`ChatRequest`, so the same deterministic model answers it. Gemini
counts input tokens per minute, so admission takes the prompt's tokens only. See
docs/providers.md.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.responses import Response

from rowprompt.tokens import count_messages

from .chat import admit, request_context
from .errors import APIError
from .model import Rule, completion, sandbox_model_name
from .state import SandboxState
from .validation import ChatRequest, content_text, resolve_model

GEMINI_MODELS: Final = (
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "gemini-2.5-pro",
    "gemini-2.0-flash",
)
PATHS: Final = ("/v1beta/", "/upload/v1beta/", "/download/v1beta/")
NO_KEY: Final = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)
QUOTA_MESSAGE: Final = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
)
STATUS_NAMES: Final = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    409: "ABORTED", 413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
    501: "NOT_IMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}  # fmt: skip
RPC_CODES: Final = {
    "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5, "ABORTED": 10,
    "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "INTERNAL": 13,
    "NOT_IMPLEMENTED": 12, "UNAVAILABLE": 14, "UNAUTHENTICATED": 16,
}  # fmt: skip
_TYPE = "type.googleapis.com/google.rpc."
_TOP_FIELDS = frozenset(
    {"model", "contents", "systemInstruction", "generationConfig", "safetySettings", "tools",
     "toolConfig", "cachedContent", "labels"}
)  # fmt: skip
_CONFIG_FIELDS = frozenset(
    {"maxOutputTokens", "temperature", "topP", "topK", "candidateCount", "stopSequences",
     "responseMimeType", "responseSchema", "responseJsonSchema", "seed", "presencePenalty",
     "frequencyPenalty", "responseLogprobs", "logprobs", "thinkingConfig", "responseModalities",
     "mediaResolution", "speechConfig", "enableEnhancedCivicAnswers"}
)  # fmt: skip
_MIME_TYPES = ("text/plain", "application/json", "text/x.enum")


class GeminiError(APIError):
    """An error answered in Gemini's shape: ``{"error": {code, message, status, details}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        name: str | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(status, message, type=name or status_name(status))
        self.details = details or []

    def body(self) -> dict[str, Any]:
        """The JSON body Gemini sends for this error."""
        err: dict[str, Any] = {"code": self.status, "message": self.message, "status": self.type}
        if self.details:
            err["details"] = self.details
        return {"error": err}

    def rpc_status(self) -> dict[str, Any]:
        """The error as a ``google.rpc.Status`` (a batch line's or an operation's error)."""
        status: dict[str, Any] = {"code": RPC_CODES.get(self.type, 2), "message": self.message}
        if self.details:
            status["details"] = self.details
        return status


def status_name(status: int) -> str:
    """Gemini's canonical status name for an HTTP status."""
    return STATUS_NAMES.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")


def no_key_body() -> dict[str, Any]:
    """What Gemini answers a request without an API key (a 403)."""
    info = {"@type": _TYPE + "ErrorInfo", "reason": "CONSUMER_INVALID",
            "domain": "googleapis.com"}  # fmt: skip
    return GeminiError(403, NO_KEY, details=[info]).body()


def is_upload_session(scope: Mapping[str, Any]) -> bool:
    """Whether a request sends bytes to an upload URL (its ``upload_id`` is its credential)."""
    query = bytes(scope.get("query_string") or b"")
    return str(scope.get("path", "")).startswith("/upload/") and b"upload_id=" in query


def _bad(message: str) -> GeminiError:
    return GeminiError(400, message)


def quota_error(model: str, quota_id: str, wait: float | None) -> GeminiError:
    """A 429 ``RESOURCE_EXHAUSTED`` naming the quota; a ``RetryInfo`` when waiting helps."""
    violation = {
        "quotaMetric": "generativelanguage.googleapis.com/"
        + ("generate_content_input_token_count" if "Token" in quota_id else "generate_requests"),
        "quotaId": quota_id,
        "quotaDimensions": {"location": "global", "model": model},
    }
    details: list[dict[str, Any]] = [
        {"@type": _TYPE + "QuotaFailure", "violations": [violation]},
        {"@type": _TYPE + "Help", "links": [{"description": "Learn more about Gemini API quotas",
          "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
    ]  # fmt: skip
    message = QUOTA_MESSAGE
    if wait is not None:
        delay = f"{wait:.3f}".rstrip("0").rstrip(".") + "s"
        details.append({"@type": _TYPE + "RetryInfo", "retryDelay": delay})
        message += f" Please retry in {delay}."
    return GeminiError(429, message, details=details)


def from_openai_error(exc: APIError, model: str = "") -> GeminiError:
    """An OpenAI-shaped sandbox error (a limit, a fault, a scripted rule) in Gemini's shape."""
    if isinstance(exc, GeminiError):
        return exc
    if exc.status == 429:
        if exc.type == "insufficient_quota":
            return quota_error(model, "GenerateRequestsPerDayPerProjectPerModel", None)
        wait_ms = exc.headers.get("retry-after-ms") or str(
            1000 * float(exc.headers.get("retry-after") or 1)
        )
        kind = "GenerateContentInputTokensPerModelPerMinute"
        if exc.type in ("requests", "storm"):
            kind = "GenerateRequestsPerMinutePerProjectPerModel"
        return quota_error(model, kind, math.ceil(float(wait_ms)) / 1000)
    if exc.status == 503:
        return GeminiError(503, "The model is overloaded. Please try again later.")
    if exc.status == 500 and exc.type == "server_error":
        return GeminiError(
            500,
            "An internal error has occurred. Please retry or report in "
            "https://developers.generativeai.google/guide/troubleshooting",
        )
    return GeminiError(exc.status, exc.message)


# -- requests -------------------------------------------------------------------------------
def _field(data: dict[str, Any], camel: str) -> Any:
    """A field by its camelCase name or its snake_case proto name."""
    if camel in data:
        return data[camel]
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)
    return data.get(snake)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def _check_fields(data: dict[str, Any], known: frozenset[str], where: str) -> None:
    for name in data:
        if _camel(name) not in known:
            raise _bad(
                f"Invalid JSON payload received. Unknown name \"{name}\" at '{where}': "
                "Cannot find field."
            )


def _text(content: Any, where: str) -> tuple[str | None, str]:
    """A ``Content``'s role and text; raise a 400 when it is malformed."""
    if not isinstance(content, dict):
        raise _bad(f"Invalid value at '{where}': expected a Content object.")
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        raise _bad(f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.")
    role = content.get("role")
    return (str(role) if role else None), content_text(parts)


def _lower_types(schema: Any) -> Any:
    """A ``responseSchema`` (OpenAPI, ``"type": "OBJECT"``) with JSON Schema type names."""
    if isinstance(schema, dict):
        out = {k: _lower_types(v) for k, v in schema.items()}
        if isinstance(out.get("type"), str):
            out["type"] = out["type"].lower()
        return out
    if isinstance(schema, list):
        return [_lower_types(v) for v in schema]
    return schema


def _generation_config(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise _bad("Invalid value at 'generation_config': expected a GenerationConfig object.")
    _check_fields(config, _CONFIG_FIELDS, "generation_config")
    limit = _field(config, "maxOutputTokens")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise _bad(
            "* GenerateContentRequest.generation_config.max_output_tokens: must be positive."
        )
    temperature = _field(config, "temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0 <= temperature <= 2
    ):
        raise _bad(
            "* GenerateContentRequest.generation_config.temperature: must be in the range "
            "[0.0, 2.0]."
        )
    mime = _field(config, "responseMimeType")
    if mime is not None and mime not in _MIME_TYPES:
        raise _bad(
            f"* GenerateContentRequest.generation_config.response_mime_type: allowed mimetypes "
            f"are {', '.join(_MIME_TYPES)}, but got {mime}."
        )
    schema = _field(config, "responseJsonSchema")
    if schema is None and _field(config, "responseSchema") is not None:
        schema = _lower_types(_field(config, "responseSchema"))
    if schema is not None and mime != "application/json":
        raise _bad(
            "* GenerateContentRequest.generation_config.response_mime_type: it must be "
            "application/json when a response schema is set."
        )
    return {"max_tokens": limit, "mime": mime, "schema": schema, "seed": _field(config, "seed")}


def check_model(model: str, models: Collection[str], method: str = "generateContent") -> str:
    """The listed model ``model`` (``models/`` optional) stands for; a 404 when none."""
    name = model.removeprefix("models/")
    base = resolve_model(name, models)
    if base is None:
        raise GeminiError(
            404,
            f"models/{name} is not found for API version v1beta, or is not supported for "
            f"{method}. Call ListModels to see the list of available models and their "
            "supported methods.",
        )
    return base


def parse_request(body: Any, model: str, models: Collection[str]) -> ChatRequest:
    """Check a ``GenerateContentRequest`` as Gemini does; raise :class:`GeminiError` if bad."""
    if not isinstance(body, dict):
        raise _bad("Invalid JSON payload received. Expected an object.")
    _check_fields(body, _TOP_FIELDS, "")
    base = check_model(model, models)
    contents = _field(body, "contents")
    if not isinstance(contents, list) or not contents:
        raise _bad("* GenerateContentRequest.contents: contents is not specified")
    messages: list[dict[str, Any]] = []
    system = _field(body, "systemInstruction")
    if system is not None:
        messages.append({"role": "system", "content": _text(system, "system_instruction")[1]})
    for i, content in enumerate(contents):
        role, text = _text(content, f"contents[{i}]")
        if role not in (None, "user", "model"):
            raise _bad("Please use a valid role: user, model.")
        messages.append({"role": "assistant" if role == "model" else "user", "content": text})
    config = _generation_config(_field(body, "generationConfig"))
    response_format = None
    if config.get("schema") is not None:
        schema = config["schema"]
        response_format = {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema},
        }
    elif config.get("mime") == "application/json":
        response_format = {"type": "json_object"}
    return ChatRequest(
        body={"seed": config.get("seed")},
        model=model.removeprefix("models/"),
        base_model=base,
        messages=messages,
        n=1,
        max_tokens=config.get("max_tokens"),
        response_format=response_format,
    )


def response_body(
    req: ChatRequest, seed: int, rules: Sequence[Rule], prompt_tokens: int | None = None
) -> dict[str, Any]:
    """The ``GenerateContentResponse`` the sandbox answers ``req`` with (raises for rules)."""
    try:
        chat = completion(req, seed, rules, prompt_tokens)
    except APIError as exc:
        raise from_openai_error(exc, req.base_model) from None
    choice = chat["choices"][0]
    usage = chat["usage"]
    prompt, output = usage["prompt_tokens"], usage["completion_tokens"]
    candidate: dict[str, Any] = {"index": 0}
    if choice["message"]["refusal"] is not None:
        candidate["finishReason"] = "SAFETY"
        candidate["safetyRatings"] = [
            {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH",
             "blocked": True}
        ]  # fmt: skip
        output = 0
    else:
        text = choice["message"]["content"] or ""
        candidate["content"] = {"parts": [{"text": text}], "role": "model"}
        candidate["finishReason"] = "MAX_TOKENS" if choice["finish_reason"] == "length" else "STOP"
    return {
        "candidates": [candidate],
        "usageMetadata": {
            "promptTokenCount": prompt,
            "candidatesTokenCount": output,
            "totalTokenCount": prompt + output,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
        },
        "modelVersion": sandbox_model_name(req.base_model),
        "responseId": secrets.token_urlsafe(16),
    }


def models_of(state: SandboxState) -> frozenset[str]:
    """The models the face serves: the sandbox's and the Gemini names."""
    return state.models | frozenset(GEMINI_MODELS)


def json_answer(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer as Gemini sends it."""
    return Response(
        json.dumps(data, ensure_ascii=False).encode("utf-8"),
        status_code=status,
        headers=headers,
        media_type="application/json; charset=UTF-8",
    )


async def read_json(request: Request) -> Any:
    """The request's JSON body; a 400 as Gemini words it when it is not JSON."""
    raw = await request.body()
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        raise _bad("Invalid JSON payload received. Unexpected token.") from None


async def generate_content(state: SandboxState, request: Request, model: str) -> Response:
    """Answer one ``POST /v1beta/models/{model}:generateContent``."""
    started = time.perf_counter()
    _, entry = request_context(request, last_user_message=None, face="gemini")
    entry["model"] = model
    status = 200
    try:
        body = await read_json(request)
        req = parse_request(body, model, models_of(state))
        entry["last_user_message"] = req.last_user_text[:500]
        prompt = count_messages(req.messages, req.base_model)
        entry["prompt_tokens"] = prompt
        try:
            sending = await admit(
                state, request, model=req.model, limit_model=req.base_model, cost=prompt,
                headers={}, entry=entry,
            )  # fmt: skip
        except APIError as exc:
            raise from_openai_error(exc, req.base_model) from None
        if not sending:
            status = 0
            return Response(b"")
        data = response_body(req, state.config.seed, state.rules, prompt)
        state.stats.count_tokens(prompt, prompt, data["usageMetadata"]["candidatesTokenCount"])
        elapsed = round((time.perf_counter() - started) * 1000)
        return json_answer(data, headers={"server-timing": f"gfet4t7; dur={elapsed}"})
    except APIError as exc:
        error = from_openai_error(exc, model)
        status = error.status
        return json_answer(error.body(), error.status)
    finally:
        entry["status"] = status
        state.stats.log_request(entry)


def mount(app: FastAPI, state: SandboxState) -> None:
    """Add the Gemini routes to ``app``: generateContent, the File API, batch mode."""
    from .gemini_batches import mount_batches  # the batch module builds on this one

    @app.post("/v1beta/models/{model}:generateContent")
    async def generate(model: str, request: Request) -> Response:
        return await generate_content(state, request, model)

    mount_batches(app, state)
