"""The Anthropic API shape on the official ``anthropic`` SDK: Messages and Message Batches.

Requests arrive in the OpenAI chat body shape (the seam's lingua franca) and are translated
here: system messages become ``system``, ``max_completion_tokens`` becomes the required
``max_tokens``, and a ``json_schema`` response format becomes a forced tool whose
``input_schema`` is the schema (Anthropic's structured output); the tool's ``input`` comes
back as the answer's JSON text. The SDK's retries are off: the engine retries.

Message Batches take the requests inline (no file upload): ``upload_batch_file`` keeps the
shard's path as a local pseudo file id and ``create_batch`` sends the file's
``{"custom_id", "params"}`` lines. Batches carry no metadata at Anthropic, so the job/shard/try
pairs of each created batch are kept in a small local journal; see :mod:`.anthropic_journal`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import anthropic
from anthropic import AsyncAnthropic

from rowprompt.errors import (
    ConfigError,
    Permanent,
    ProviderError,
    QuotaExhausted,
    RateLimited,
    Transient,
)
from rowprompt.images import data_url_payload
from rowprompt.jobs import Completion
from rowprompt.providers.anthropic_journal import Journal
from rowprompt.providers.base import (
    BatchCaps,
    BatchInfo,
    BatchLineResult,
    CompletionResult,
    LimitsObservation,
    retry_after_seconds,
)

DEFAULT_MAX_TOKENS: Final = 4096
LOCAL_FILE: Final = "local-file:"
TOOL_DESCRIPTION: Final = "Give the answer in exactly this structure."
_FIND_SCAN_LIMIT = 1000
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "tool_use": "stop", "max_tokens": "length"}
# Errors of a batch line that another try may cure; the engine sends those rows again.
_LINE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 503,  # transient inside a batch: ask again, like a server error
    "api_error": 500,
    "overloaded_error": 529,
}


class RateLimitedSeen(RateLimited):
    """A 429 with the rate-limit headers it carried (they correct the engine's budgets)."""

    def __init__(
        self, message: str, *, retry_after: float | None, limits: LimitsObservation | None
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.limits = limits


def to_anthropic(body: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI chat body as Messages API params."""
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for message in body.get("messages") or []:
        role, content = message.get("role"), message.get("content")
        text = content if isinstance(content, str) else _parts_text(content)
        if role in ("system", "developer"):
            system.append(text)
        else:
            speaker = "assistant" if role == "assistant" else "user"
            messages.append({"role": speaker, "content": _blocks(content)})
    params: dict[str, Any] = {"model": body["model"], "messages": messages}
    if system:
        params["system"] = "\n\n".join(system)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    params["max_tokens"] = int(limit) if limit else DEFAULT_MAX_TOKENS
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            params[name] = body[name]
    stop = body.get("stop")
    if stop:
        params["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema") or {}
        name = str(spec.get("name") or "answer")
        schema = dict(spec.get("schema") or {})
        params["tools"] = [
            {"name": name, "description": TOOL_DESCRIPTION, "input_schema": _object(schema)}
        ]
        params["tool_choice"] = {"type": "tool", "name": name}
    # json_object has no Anthropic equivalent: the prompt's instruction asks for JSON instead.
    return params


def _object(schema: dict[str, Any]) -> dict[str, Any]:
    # A tool's input_schema must be an object; rowprompt's answer schemas are objects already.
    return schema if schema.get("type") == "object" else {"type": "object", **schema}


def _blocks(content: Any) -> Any:
    """Message content as Anthropic takes it: text, or text and image blocks in order."""
    if not isinstance(content, list) or not any(
        isinstance(p, dict) and p.get("type") == "image_url" for p in content
    ):
        return content if isinstance(content, str) else _parts_text(content)
    blocks: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and part.get("text"):
            blocks.append({"type": "text", "text": part["text"]})
        elif part.get("type") == "image_url":
            url = str((part.get("image_url") or {}).get("url") or "")
            if url[:5].lower() == "data:":
                media_type, data = data_url_payload(url)
                source = {"type": "base64", "media_type": media_type, "data": data}
            else:
                source = {"type": "url", "url": url}
            blocks.append({"type": "image", "source": source})
    return blocks


def _parts_text(content: Any) -> str:
    if not isinstance(content, list):
        return "" if content is None else str(content)
    return "".join(p.get("text", "") for p in content if isinstance(p, dict))


def completion_from_message(message: Mapping[str, Any]) -> Completion:
    """A Messages API answer in the neutral shape; a forced tool's input is the JSON text."""
    texts: list[str] = []
    tool_input: Any = None
    for block in message.get("content") or []:
        if block.get("type") == "text":
            texts.append(str(block.get("text") or ""))
        elif block.get("type") == "tool_use" and tool_input is None:
            tool_input = block.get("input")
    text: str | None = "".join(texts)
    if tool_input is not None:
        text = json.dumps(tool_input, ensure_ascii=False)
    stop = message.get("stop_reason")
    refusal = None
    if stop == "refusal":
        refusal, text = text or "refused", None
    usage = message.get("usage") or {}
    cached = int(usage.get("cache_read_input_tokens") or 0)
    prompt = int(usage.get("input_tokens") or 0) + cached
    prompt += int(usage.get("cache_creation_input_tokens") or 0)
    return Completion(
        text=text,
        refusal=refusal,
        finish_reason="content_filter" if stop == "refusal" else _FINISH.get(str(stop), stop),
        prompt_tokens=prompt,
        completion_tokens=int(usage.get("output_tokens") or 0),
        cached_tokens=cached,
        model=message.get("model"),
    )


def _reset_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, moment.timestamp() - time.time())


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def limits_from_headers(headers: Mapping[str, str]) -> LimitsObservation | None:
    """The ``anthropic-ratelimit-*`` headers of an answer, or None when it has none."""
    prefix = "anthropic-ratelimit-"
    if f"{prefix}requests-limit" not in headers and f"{prefix}tokens-limit" not in headers:
        return None
    # "tokens" is the most restrictive of the input and output token limits.
    return LimitsObservation(
        limit_requests=_int(headers.get(f"{prefix}requests-limit")),
        limit_tokens=_int(headers.get(f"{prefix}tokens-limit")),
        remaining_requests=_int(headers.get(f"{prefix}requests-remaining")),
        remaining_tokens=_int(headers.get(f"{prefix}tokens-remaining")),
        reset_requests_s=_reset_seconds(headers.get(f"{prefix}requests-reset")),
        reset_tokens_s=_reset_seconds(headers.get(f"{prefix}tokens-reset")),
    )


def translate_error(exc: anthropic.APIError) -> ProviderError | ConfigError:
    """Turn an SDK error into ours, keeping Anthropic's error type and message."""
    if isinstance(exc, anthropic.APITimeoutError):
        return Transient("the request timed out", code="timeout")
    if isinstance(exc, anthropic.APIConnectionError):
        return Transient(f"connection error: {exc}", code="connection_error")
    if not isinstance(exc, anthropic.APIStatusError):
        return Transient(str(exc))
    status = exc.status_code
    body = exc.body if isinstance(exc.body, dict) else {}
    found = body.get("error")
    err: dict[str, Any] = found if isinstance(found, dict) else {}
    kind = str(err.get("type") or "api_error")
    message = str(err.get("message") or exc.message)
    if status == 429:
        headers = exc.response.headers
        # Seconds or an HTTP date (RFC 9110), read the way the OpenAI face reads it.
        wait = retry_after_seconds(headers)
        return RateLimitedSeen(message, retry_after=wait, limits=limits_from_headers(headers))
    if status == 402 or "credit balance is too low" in message:
        return QuotaExhausted(
            f"Anthropic says the account cannot pay: {message}",
            hint="add credit in the Anthropic console, then `rowprompt resume` the job",
            status=status,
            code="billing_error",
        )
    if status in (401, 403):
        return ConfigError(
            f"Anthropic refused the credentials ({status}): {message}",
            hint="set ANTHROPIC_API_KEY to a valid key",
        )
    if status == 404 and message.startswith("model:"):
        return ConfigError(
            f"Anthropic does not know the model {message[6:].strip()!r}",
            hint="pass --model with a Claude model name, e.g. claude-haiku-4-5",
        )
    if status in (408, 409) or status >= 500:
        return Transient(message, status=status, code=kind)
    return Permanent(message, status=status, code=kind)


class AnthropicProvider:
    """Real time through Messages, batch through Message Batches."""

    # 100,000 requests or 256 MB per batch (reference §8); the JSON body a little over the file.
    # Decimal MB, the stricter reading: 250 MiB would pass 256,000,000 bytes.
    batch_caps = BatchCaps(max_requests=100_000, max_bytes=250 * 1000 * 1000)

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        name: str = "anthropic",
        timeout: float = 120.0,
        journal_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url
        self._client = AsyncAnthropic(
            api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout
        )
        self._journal = Journal(journal_dir)

    async def aclose(self) -> None:
        """Close the SDK client's connections."""
        await self._client.close()

    # -- real time ------------------------------------------------------------------------
    async def complete(self, body: Mapping[str, Any], *, timeout: float) -> CompletionResult:
        """One Messages request, with the limits its headers announce."""
        try:
            params = to_anthropic(body)
            required = {k: params.pop(k) for k in ("model", "messages", "max_tokens")}
            # The rest goes as extra_body: SDK releases differ in the keywords they type
            # (newer ones dropped temperature), while the API takes the JSON as sent.
            raw = await self._client.messages.with_raw_response.create(
                **required, extra_body=params or None, timeout=timeout
            )
        except anthropic.APIError as exc:
            raise translate_error(exc) from None
        message = (await raw.parse()).model_dump()
        return CompletionResult(
            completion=completion_from_message(message),
            limits=limits_from_headers(raw.headers),
            status_code=raw.status_code,
        )

    # -- batch ----------------------------------------------------------------------------
    def batch_line(self, custom_id: str, body: Mapping[str, Any]) -> bytes:
        """One request of a Message Batch as a JSON line (``custom_id`` and ``params``)."""
        line = {"custom_id": custom_id, "params": to_anthropic(body)}
        return (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode()

    async def upload_batch_file(self, path: Path) -> str:
        """Nothing to upload: the requests go inline at create. The path is the file id."""
        return LOCAL_FILE + str(path.resolve())

    async def create_batch(self, input_file_id: str, metadata: Mapping[str, str]) -> BatchInfo:
        """Create a Message Batch from the shard's lines; the metadata goes to the journal."""
        path = Path(input_file_id.removeprefix(LOCAL_FILE))
        try:
            with path.open("rb") as handle:
                requests = [json.loads(line) for line in handle if line.strip()]
        except OSError as exc:
            raise Permanent(f"cannot read the batch file {path}: {exc.strerror}") from None
        self._journal.before_create(metadata, len(requests))
        try:
            batch = await self._client.messages.batches.create(requests=requests)
        except anthropic.APIError as exc:
            raise translate_error(exc) from None
        self._journal.created(metadata, batch.id)
        return self._info(batch.model_dump(), input_file_id, metadata)

    async def get_batch(self, batch_id: str) -> BatchInfo:
        """The batch now, in OpenAI's status vocabulary."""
        try:
            batch = await self._client.messages.batches.retrieve(batch_id)
        except anthropic.APIError as exc:
            raise translate_error(exc) from None
        return self._info(batch.model_dump())

    async def cancel_batch(self, batch_id: str) -> BatchInfo:
        """Ask for a cancel; a batch that has ended is returned as it is."""
        try:
            batch = await self._client.messages.batches.cancel(batch_id)
        except (anthropic.BadRequestError, anthropic.ConflictError):
            return await self.get_batch(batch_id)
        except anthropic.APIError as exc:
            raise translate_error(exc) from None
        return self._info(batch.model_dump())

    async def find_batches(self, metadata: Mapping[str, str]) -> list[BatchInfo]:
        """Batches this machine created with these metadata pairs (from the journal).

        Where a create's answer was lost, the journal knows when it was sent and how many
        requests it held: a batch created at the provider just then with that many requests,
        and claimed by no other entry, is taken for it.
        """
        found: list[BatchInfo] = []
        for entry in self._journal.matching(metadata):
            if entry.batch_id:
                info = await self.get_batch(entry.batch_id)
                found.append(_with_metadata(info, entry.metadata))
                continue
            claimed = self._journal.claimed_ids()
            try:
                async for batch in self._client.messages.batches.list(limit=100):
                    data = batch.model_dump()
                    created = data["created_at"].timestamp()
                    if created < entry.sent_at - 5:
                        break  # newest first: older batches cannot be this one
                    info = self._info(data)
                    if info.id not in claimed and info.total == entry.requests:
                        self._journal.created(entry.metadata, info.id)
                        found.append(_with_metadata(info, entry.metadata))
                        break
            except anthropic.APIError as exc:
                raise translate_error(exc) from None
        return found

    async def batch_results(self, info: BatchInfo) -> AsyncIterator[BatchLineResult]:
        """Stream the results JSONL of an ended batch, line by line."""
        if not info.output_file_id:
            return
        try:
            decoder = await self._client.messages.batches.results(info.id)
            async for item in decoder:
                yield parse_result(item.model_dump())
        except anthropic.APIError as exc:
            raise translate_error(exc) from None

    def _info(
        self,
        data: Mapping[str, Any],
        input_file_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> BatchInfo:
        counts = data.get("request_counts") or {}
        status = batch_status(data)
        created = data.get("created_at")
        return BatchInfo(
            id=data["id"],
            status=status,
            total=sum(int(v or 0) for v in counts.values()),
            completed=int(counts.get("succeeded") or 0),
            failed=int(counts.get("errored") or 0),
            input_file_id=input_file_id,
            # The results are one stream named by the batch; there is no separate error file.
            output_file_id=data["id"] if data.get("results_url") else None,
            metadata=dict(metadata or self._journal.metadata_of(data["id"]) or {}),
            created_at=created.timestamp() if isinstance(created, datetime) else None,
        )


def _with_metadata(info: BatchInfo, metadata: Mapping[str, str]) -> BatchInfo:
    return BatchInfo(**{**info.__dict__, "metadata": dict(metadata)})


def batch_status(data: Mapping[str, Any]) -> str:
    """``processing_status`` and the counts in OpenAI's batch vocabulary."""
    status = data.get("processing_status")
    if status == "in_progress":
        return "in_progress"
    if status == "canceling":
        return "cancelling"
    if data.get("cancel_initiated_at"):
        return "cancelled"
    if int((data.get("request_counts") or {}).get("expired") or 0):
        return "expired"
    return "completed"


def parse_result(data: Mapping[str, Any]) -> BatchLineResult:
    """One line of a Message Batch's results in the neutral shape."""
    custom_id = str(data.get("custom_id"))
    result = data.get("result") or {}
    kind = result.get("type")
    if kind == "succeeded":
        message = result.get("message") or {}
        return BatchLineResult(custom_id, completion_from_message(message), status_code=200)
    if kind == "errored":
        outer = result.get("error") or {}
        inner = outer.get("error")
        err: Mapping[str, Any] = inner if isinstance(inner, dict) else outer
        code = str(err.get("type") or "api_error")
        return BatchLineResult(
            custom_id,
            None,
            status_code=_LINE_STATUS.get(code, 500),
            error_code=code,
            error_message=str(err.get("message") or "the request failed"),
        )
    if kind == "canceled":
        return BatchLineResult(
            custom_id, None, error_code="batch_cancelled", error_message="the batch was canceled"
        )
    return BatchLineResult(
        custom_id,
        None,
        error_code="batch_expired",
        error_message="the batch expired before this request ran",
    )
