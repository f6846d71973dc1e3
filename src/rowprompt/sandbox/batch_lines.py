"""Batch input validation and line execution: pure functions, run in worker threads.

Validation follows reference §3: each line valid JSON, required keys, ``method == "POST"``,
``url`` equal to the batch endpoint, unique ``custom_id``, one model per file, no ``stream``,
at most ``max_batch_requests`` lines and ``max_batch_bytes`` bytes.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from rowprompt.tokens import count_messages

from . import embeddings_model, responses_model
from .errors import APIError, server_error
from .model import Rule, completion
from .validation import resolve_model, validate_chat

MAX_REPORTED_ERRORS = 10
_log = logging.getLogger("rowprompt.sandbox")


@dataclass
class ParsedInput:
    """A batch input file that was read: line spans, the model, token estimate, errors."""

    spans: list[tuple[str, int, int]] = field(default_factory=list)
    """(custom_id, start, end) byte offsets of each request line."""
    model: str | None = None
    tokens: int = 0
    inputs: int = 0
    """Inputs of endpoints that cap them per batch (embeddings)."""
    errors: list[dict[str, Any]] = field(default_factory=list)


def batch_error(
    code: str, message: str, param: str | None = None, line: int | None = None
) -> dict[str, Any]:
    """One entry of a failed batch's ``errors.data``."""
    return {"code": code, "message": message, "param": param, "line": line}


def _estimate(body: dict[str, Any], model: str) -> int:
    """Enqueued tokens of one chat request: prompt estimate + max output tokens x n."""
    messages = body.get("messages")
    prompt = 0
    if isinstance(messages, list) and all(isinstance(m, dict) for m in messages):
        prompt = count_messages(messages, model)
    out = body.get("max_completion_tokens", body.get("max_tokens"))
    n = body.get("n") or 1
    if not isinstance(out, int) or isinstance(out, bool):
        out = 0
    if not isinstance(n, int) or isinstance(n, bool):
        n = 1
    return prompt + out * n


def _check_line(record: Any, number: int, endpoint: str) -> dict[str, Any] | None:
    if not isinstance(record, dict):
        return batch_error(
            "invalid_json_line", "This line is not parseable as valid JSON.", line=number
        )
    for key in ("custom_id", "method", "url", "body"):
        if key not in record:
            return batch_error(
                "missing_required_parameter",
                f"Missing required parameter: '{key}'.",
                param=key,
                line=number,
            )
    if not isinstance(record["custom_id"], str) or not record["custom_id"]:
        return batch_error(
            "invalid_type",
            "Invalid 'custom_id': expected a non-empty string.",
            param="custom_id",
            line=number,
        )
    if record["method"] != "POST":
        return batch_error(
            "invalid_value",
            f"Invalid value: '{record['method']}'. Supported values are: 'POST'.",
            param="method",
            line=number,
        )
    if record["url"] != endpoint:
        return batch_error(
            "url_mismatch",
            f"The provided url '{record['url']}' does not match the batch endpoint '{endpoint}'."
            " All requests in a batch must use the same endpoint.",
            param="url",
            line=number,
        )
    if not isinstance(record["body"], dict):
        return batch_error(
            "invalid_type", "Invalid 'body': expected an object.", param="body", line=number
        )
    if record["body"].get("stream"):
        return batch_error(
            "unsupported_value",
            "Streaming is not supported in the Batch API.",
            param="body.stream",
            line=number,
        )
    return None


def parse_input(
    content: bytes, endpoint: str, max_requests: int, max_bytes: int, models: Collection[str]
) -> ParsedInput:
    """Validate a batch input file; on success, its line spans, model and token estimate."""
    parsed = ParsedInput()
    errors = parsed.errors
    if len(content) > max_bytes:
        errors.append(
            batch_error(
                "file_too_large",
                f"The batch input file is larger than the {max_bytes:,} byte maximum. "
                "Please try again with a smaller batch.",
            )
        )
        return parsed
    seen: set[str] = set()
    start = 0
    number = 0
    size = len(content)
    while start < size and len(errors) < MAX_REPORTED_ERRORS:
        end = content.find(b"\n", start)
        if end < 0:
            end = size
        raw = content[start:end]
        number += 1
        line_start, start = start, end + 1
        if not raw.strip():
            continue  # blank lines (a trailing newline above all) carry no request
        try:
            record = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            record = None
        problem = _check_line(record, number, endpoint)
        if problem is None:
            custom_id = record["custom_id"]
            body = record["body"]
            model = body.get("model")
            if custom_id in seen:
                problem = batch_error(
                    "duplicate_custom_id",
                    f"The custom_id '{custom_id}' is used more than once; each request in a "
                    "batch must have a unique custom_id.",
                    param="custom_id",
                    line=number,
                )
            elif isinstance(model, str) and parsed.model is None:
                parsed.model = model
            elif isinstance(model, str) and model != parsed.model:
                problem = batch_error(
                    "model_mismatch",
                    f"The model '{model}' differs from the model '{parsed.model}' of earlier "
                    "requests. Each input file can only include requests to a single model.",
                    param="body.model",
                    line=number,
                )
        if problem is not None:
            errors.append(problem)
            continue
        seen.add(custom_id)
        if endpoint in INPUT_LIMITS:
            parsed.inputs += INPUT_LIMITS[endpoint][0](body)
        parsed.spans.append((custom_id, line_start, end))
        if len(parsed.spans) <= max_requests:
            base = resolve_model(parsed.model or "", models) or "gpt-4o-mini"
            parsed.tokens += ESTIMATORS.get(endpoint, _estimate)(body, base)
    if errors:
        return parsed
    if not parsed.spans:
        errors.append(batch_error("empty_file", "The batch input file is empty."))
    elif len(parsed.spans) > max_requests:
        errors.append(
            batch_error(
                "too_many_tasks",
                f"The batch input file has {len(parsed.spans):,} requests, more than the "
                f"maximum of {max_requests:,} requests per batch.",
            )
        )
    elif endpoint in INPUT_LIMITS and parsed.inputs > INPUT_LIMITS[endpoint][1]:
        # The code of this failure is not documented; the limit is (reference §3).
        errors.append(
            batch_error(
                "too_many_tasks",
                f"The batch input file has {parsed.inputs:,} embedding inputs, more than the "
                f"maximum of {INPUT_LIMITS[endpoint][1]:,} embedding inputs per batch.",
            )
        )
    return parsed


@dataclass
class LineResult:
    """One executed request line: its output-file record and its usage."""

    custom_id: str
    status_code: int
    record: dict[str, Any]
    prompt_tokens: int = 0
    completion_tokens: int = 0


def _chat_line(
    body: Any, models: Collection[str], seed: int, rules: Sequence[Rule]
) -> tuple[dict[str, Any], int, int]:
    answer = completion(validate_chat(body, models), seed, rules)
    usage = answer["usage"]
    return answer, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)


# One handler per batch endpoint: the line's body -> (response body, input tokens, output
# tokens); an invalid body raises APIError, which becomes the line's error response.
LineHandler = Callable[[Any, Collection[str], int, Sequence[Rule]], tuple[dict[str, Any], int, int]]
HANDLERS: dict[str, LineHandler] = {
    "/v1/chat/completions": _chat_line,
    "/v1/responses": responses_model.answer_line,
    "/v1/embeddings": embeddings_model.embeddings_line,
}
# Enqueued-token estimate of one line's body, per endpoint (chat's when absent).
ESTIMATORS: dict[str, Callable[[dict[str, Any], str], int]] = {
    "/v1/responses": responses_model.estimate_tokens,
    "/v1/embeddings": embeddings_model.line_tokens,
}
# Endpoints that also cap the inputs of a whole batch: (inputs of one line's body, the cap).
INPUT_LIMITS: dict[str, tuple[Callable[[dict[str, Any]], int], int]] = {
    "/v1/embeddings": (embeddings_model.line_inputs, 50_000),
}


def execute(
    content: bytes,
    spans: Sequence[tuple[str, int, int]],
    models: Collection[str],
    seed: int,
    rules: Sequence[Rule],
    endpoint: str = "/v1/chat/completions",
) -> list[LineResult]:
    """Answer request lines the way the endpoint would (without limits or faults)."""
    handler = HANDLERS[endpoint]
    results = []
    for custom_id, start, end in spans:
        body = json.loads(content[start:end])["body"]
        request_id = "req_" + secrets.token_hex(16)
        try:
            response_body, prompt_tokens, completion_tokens = handler(body, models, seed, rules)
        except APIError as exc:
            status, response_body, prompt_tokens, completion_tokens = exc.status, exc.body(), 0, 0
        except Exception as exc:  # a sandbox bug: this line fails, the batch goes on
            _log.error("batch line %s failed: %s: %s", custom_id, type(exc).__name__, exc)
            error = server_error(500)
            status, response_body, prompt_tokens, completion_tokens = 500, error.body(), 0, 0
        else:
            status = 200
        record = {
            "id": "batch_req_" + secrets.token_hex(16),
            "custom_id": custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": response_body},
            "error": None,
        }
        results.append(LineResult(custom_id, status, record, prompt_tokens, completion_tokens))
    return results


def expired_record(custom_id: str) -> dict[str, Any]:
    """The error-file line of a request the completion window closed on (reference §4)."""
    return {
        "id": "batch_req_" + secrets.token_hex(16),
        "custom_id": custom_id,
        "response": None,
        "error": {
            "code": "batch_expired",
            "message": "This request could not be executed before the completion window expired.",
        },
    }


def to_jsonl(records: Sequence[dict[str, Any]], cut: Collection[int] = ()) -> bytes:
    """Records as JSON lines, each ending with a newline; the lines at the ``cut`` indexes
    keep only their first half (a line truncated mid-JSON, still ended by its newline)."""
    lines = []
    for i, record in enumerate(records):
        line = json.dumps(record, ensure_ascii=False)
        lines.append((line[: len(line) // 2] if i in cut else line) + "\n")
    return "".join(lines).encode("utf-8")
