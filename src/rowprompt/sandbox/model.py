"""The sandbox's "model": deterministic answers, scripted rules and completion bodies.

Everything here is a pure function of the request body, the seed and the rules, so a test
can compute the exact answer the sandbox gives a row with :func:`expected_answer`.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rowprompt.tokens import count_messages, encoding, encoding_name_for_model

from .config import DEFAULT_MODELS
from .errors import APIError
from .schemas import instance, words
from .validation import SANDBOX_SUFFIX, ChatRequest, validate_chat

SYSTEM_FINGERPRINT = "fp_rowprompt_sandbox"
_GROUP_REF = re.compile(r"\\(\d+)|\{(\d+)\}")
ANSWER_MAX_ITEMS = 10
_DATA_KEYS = frozenset({"const", "enum", "default", "examples"})  # values, not schemas


@dataclass(frozen=True)
class Rule:
    """One scripted answer: the first rule whose pattern matches the last user message wins."""

    pattern: re.Pattern[str]
    answer: str | None = None
    refusal: str | None = None
    status: int | None = None
    message: str | None = None
    code: str | None = None

    def expand(self, text: str, match: re.Match[str]) -> str:
        """``text`` with ``\\1`` and ``{1}`` replaced by the match's groups."""

        def group(ref: re.Match[str]) -> str:
            index = int(ref.group(1) or ref.group(2))
            if index > (match.re.groups or 0):
                return ref.group(0)
            return match.group(index) or ""

        return _GROUP_REF.sub(group, text)


def parse_rules(raw: Iterable[Mapping[str, Any]]) -> tuple[Rule, ...]:
    """Rules from their dict form; raise ValueError naming the bad rule."""
    rules = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or not isinstance(item.get("pattern"), str):
            raise ValueError(f"rule {i + 1}: needs a string 'pattern'")
        if not any(k in item for k in ("answer", "refusal", "status")):
            raise ValueError(f"rule {i + 1}: needs one of 'answer', 'refusal' or 'status'")
        status = item.get("status")
        if status is not None and (not isinstance(status, int) or not 400 <= status <= 599):
            raise ValueError(f"rule {i + 1}: 'status' must be an HTTP error status (400-599)")
        try:
            pattern = re.compile(item["pattern"])
        except re.error as exc:
            raise ValueError(f"rule {i + 1}: bad pattern: {exc}") from exc
        rules.append(
            Rule(
                pattern=pattern,
                answer=None if item.get("answer") is None else str(item["answer"]),
                refusal=None if item.get("refusal") is None else str(item["refusal"]),
                status=status,
                message=item.get("message"),
                code=item.get("code"),
            )
        )
    return tuple(rules)


def load_rules(path: str | Path) -> tuple[Rule, ...]:
    """Rules from a JSON or YAML file: a list of rules, or ``{"rules": [...]}``."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if isinstance(data, dict):
        data = data.get("rules")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of rules (or an object with 'rules')")
    try:
        return parse_rules(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


RulesLike = Sequence[Rule] | Sequence[Mapping[str, Any]] | str | Path | None


def as_rules(rules: RulesLike) -> tuple[Rule, ...]:
    """Accept rules as parsed rules, dicts, or a file path."""
    if rules is None:
        return ()
    if isinstance(rules, str | Path):
        return load_rules(rules)
    if all(isinstance(r, Rule) for r in rules):
        return tuple(r for r in rules if isinstance(r, Rule))
    return parse_rules(r for r in rules if isinstance(r, Mapping))


def _digest(req: ChatRequest, seed: int, index: int) -> bytes:
    key = [req.model, req.messages, seed, req.body.get("seed"), req.response_format, index]
    raw = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).digest()


def _few_items(schema: Any) -> Any:
    """``schema`` with every ``maxItems`` above :data:`ANSWER_MAX_ITEMS` lowered to it (or to
    ``minItems``): an answer holds a few items, and nested ``maxItems: 1000000`` would
    otherwise build an instance too large to send. The instance still fits ``schema``."""
    if isinstance(schema, list):
        return [_few_items(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: v if k in _DATA_KEYS else _few_items(v) for k, v in schema.items()}
    most, least = schema.get("maxItems"), schema.get("minItems")
    if isinstance(most, int) and not isinstance(most, bool) and most > ANSWER_MAX_ITEMS:
        floor = least if isinstance(least, int) and not isinstance(least, bool) else 0
        out["maxItems"] = max(ANSWER_MAX_ITEMS, floor)
    return out


def _default_content(req: ChatRequest, seed: int, index: int) -> str:
    rng = random.Random(_digest(req, seed, index))
    fmt = (req.response_format or {}).get("type")
    if fmt == "json_schema":
        spec = (req.response_format or {}).get("json_schema", {})
        schema = spec.get("schema", {})
        try:
            return json.dumps(instance(_few_items(schema), rng), ensure_ascii=False)
        except Exception as exc:
            # Validation let through a schema the generator cannot serve: the caller's
            # mistake as far as it can tell, so a 400 rather than a 500.
            raise APIError(
                400,
                f"Invalid schema for response_format '{spec.get('name')}': no instance of it "
                f"could be built ({type(exc).__name__}: {str(exc)[:200]}).",
                param="response_format",
                code="invalid_json_schema",
            ) from None
    text = words(rng, rng.randint(3, 8)).capitalize() + "."
    if req.last_user_images:  # the answer names what it "saw": each row's own image
        text = f"{' '.join(req.last_user_images)} {text}"
    if fmt == "json_object":
        return json.dumps({"answer": text})
    return text


def _choice(req: ChatRequest, seed: int, rules: Sequence[Rule], index: int) -> dict[str, Any]:
    """One choice's message before any max_tokens cut; raise APIError for scripted errors."""
    text = req.last_user_text
    for rule in rules:
        match = rule.pattern.search(text)
        if match is None:
            continue
        if rule.status is not None:
            message = rule.message or "Scripted error from the rowprompt sandbox rule table."
            kind = "server_error" if rule.status >= 500 else "invalid_request_error"
            raise APIError(rule.status, rule.expand(message, match), type=kind, code=rule.code)
        if rule.refusal is not None:
            return {"content": None, "refusal": rule.expand(rule.refusal, match)}
        return {"content": rule.expand(rule.answer or "", match), "refusal": None}
    return {"content": _default_content(req, seed, index), "refusal": None}


def completion(
    req: ChatRequest, seed: int, rules: Sequence[Rule], prompt_tokens: int | None = None
) -> dict[str, Any]:
    """The full ``chat.completion`` body the sandbox answers ``req`` with."""
    enc = encoding(encoding_name_for_model(req.base_model))
    choices = []
    completion_tokens = 0
    for index in range(req.n):
        message = _choice(req, seed, rules, index)
        finish = "stop"
        content = message["content"]
        shown = content if content is not None else message["refusal"]
        tokens = enc.encode(shown or "", disallowed_special=())
        if req.max_tokens is not None and len(tokens) > req.max_tokens:
            tokens = tokens[: req.max_tokens]
            finish = "length"
            if content is not None:
                message["content"] = enc.decode(tokens)
            else:
                message["refusal"] = enc.decode(tokens)
        completion_tokens += len(tokens)
        choices.append(
            {
                "index": index,
                "message": {"role": "assistant", "annotations": [], **message},
                "logprobs": None,
                "finish_reason": finish,
            }
        )
    if prompt_tokens is None:
        prompt_tokens = count_messages(req.messages, req.base_model)
    return {
        "id": "chatcmpl-" + secrets.token_hex(14),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": sandbox_model_name(req.base_model),
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def sandbox_model_name(model: str) -> str:
    """The model name answers carry: the listed name plus ``-sandbox``.

    OpenAI likewise answers with a dated snapshot name (``gpt-4o-mini-2024-07-18``), so
    clients that check the model compare by prefix.
    """
    return model if model.endswith(SANDBOX_SUFFIX) else model + SANDBOX_SUFFIX


def expected_answer(
    body: Mapping[str, Any],
    seed: int = 0,
    rules: RulesLike = None,
    *,
    index: int = 0,
    models: Iterable[str] = DEFAULT_MODELS,
) -> str | None:
    """The message content the sandbox returns for a chat ``body`` (None for a refusal).

    Raises :class:`~rowprompt.sandbox.errors.APIError` where the sandbox would answer an error.
    """
    req = validate_chat(dict(body), set(models))
    content = completion(req, seed, as_rules(rules), prompt_tokens=0)["choices"][index]
    result: str | None = content["message"]["content"]
    return result
