"""The Gemini API shape on the official ``google-genai`` SDK: generateContent and batch mode.

Requests arrive in the OpenAI chat body shape (the seam's lingua franca) and are translated
here into a ``GenerateContentRequest``: messages become ``contents`` with the roles ``user``
and ``model``, system messages ``systemInstruction``, ``max_completion_tokens``
``maxOutputTokens``, and a ``json_schema`` response format ``responseMimeType:
application/json`` with ``responseJsonSchema``. The SDK's retries are off (one attempt, no
implicit retry of dropped connections): the engine retries.

Batch mode takes a JSONL file uploaded through the File API, one ``{"key", "request"}`` line
per row; each request names its model (as the SDK's own inlined requests do), so ``create``
reads the model from the uploaded file's display name. Gemini batches carry no metadata: the
job, shard and try go into the batch's ``displayName`` and are read back from the listing to
adopt a batch after a crash. A create refused with a 429 (the model's queue is full) comes back
as a batch failed with ``token_limit_exceeded``, so the engine learns a limit and waits. The SDK
does not pass on a batch's request counts or its error for the Gemini API, so
:class:`BatchInfo` has no counts, and a failed batch no reason.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import os
import re
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, unquote

import aiohttp
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from rowprompt.errors import (
    ConfigError,
    Permanent,
    ProviderError,
    QuotaExhausted,
    RateLimited,
    Transient,
)
from rowprompt.jobs import Completion
from rowprompt.providers.base import (
    BatchCaps,
    BatchError,
    BatchInfo,
    BatchLineResult,
    CompletionResult,
)

KEY_HINT: Final = "set GEMINI_API_KEY to a valid key (aistudio.google.com, Get API key)"
DISPLAY_PREFIX: Final = "rowprompt"
MODEL_PREFIX: Final = "rowprompt model="
API_VERSION: Final = "v1beta"
# A create Gemini refused for want of room: no batch exists, so the id is made up here.
REFUSED: Final = "refused/"
REFUSED_MESSAGE: Final = (
    "Gemini refused the batch at create (429 RESOURCE_EXHAUSTED): the model's queue of batch "
    "tokens (or of batches) is full"
)
_FIND_SCAN_LIMIT = 1000
_FINISH = {"STOP": "stop", "MAX_TOKENS": "length"}
_FILTERED = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
     "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "LANGUAGE"}
)  # fmt: skip
_STATES = {
    "JOB_STATE_UNSPECIFIED": "validating",
    "JOB_STATE_QUEUED": "validating",
    "JOB_STATE_PENDING": "validating",
    "JOB_STATE_RUNNING": "in_progress",
    "JOB_STATE_PAUSED": "in_progress",
    "JOB_STATE_UPDATING": "in_progress",
    "JOB_STATE_SUCCEEDED": "completed",
    "JOB_STATE_PARTIALLY_SUCCEEDED": "completed",
    "JOB_STATE_FAILED": "failed",
    "JOB_STATE_CANCELLING": "cancelling",
    "JOB_STATE_CANCELLED": "cancelled",
    "JOB_STATE_EXPIRED": "expired",
}
# google.rpc.Code numbers (a batch line's status object) as HTTP statuses.
_RPC_HTTP = {1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400, 10: 409,
             11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401}  # fmt: skip
_RPC_NAMES = {3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND", 7: "PERMISSION_DENIED",
              8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION", 13: "INTERNAL", 14: "UNAVAILABLE",
              16: "UNAUTHENTICATED"}  # fmt: skip
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
_DATA_URL = re.compile(r"^data:([^;,]+);base64,(.*)$", re.DOTALL)
# The SDK speaks through aiohttp when it is installed (a rowprompt dependency).
_NETWORK_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


# -- requests ---------------------------------------------------------------------------------
def _parts(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return [{"text": ""}]
    if isinstance(content, str):
        return [{"text": content}]
    parts: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else [content]:
        if not isinstance(part, dict):
            parts.append({"text": str(part)})
        elif part.get("type") in ("text", "input_text") or "text" in part:
            parts.append({"text": str(part.get("text") or "")})
        elif part.get("type") == "image_url":
            url = str((part.get("image_url") or {}).get("url") or "")
            found = _DATA_URL.match(url)
            if found:
                parts.append({"inlineData": {"mimeType": found[1], "data": found[2]}})
            else:
                kind = mimetypes.guess_type(url)[0] or "image/jpeg"
                parts.append({"fileData": {"mimeType": kind, "fileUri": url}})
    return parts or [{"text": ""}]


def to_gemini(body: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI chat body as a ``GenerateContentRequest`` (REST JSON, with its model)."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    for message in body.get("messages") or []:
        role, parts = message.get("role"), _parts(message.get("content"))
        if role in ("system", "developer"):
            system.extend(parts)
        else:
            contents.append({"role": "model" if role == "assistant" else "user", "parts": parts})
    request: dict[str, Any] = {"model": "models/" + str(body["model"]), "contents": contents}
    if system:
        request["systemInstruction"] = {"parts": system}
    config: dict[str, Any] = {}
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit:
        config["maxOutputTokens"] = int(limit)
    for ours, theirs in (("temperature", "temperature"), ("top_p", "topP"), ("seed", "seed")):
        if body.get(ours) is not None:
            config[theirs] = body[ours]
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    fmt = body.get("response_format") or {}
    if fmt.get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
    if fmt.get("type") == "json_schema":
        config["responseJsonSchema"] = dict((fmt.get("json_schema") or {}).get("schema") or {})
    if config:
        request["generationConfig"] = config
    return request


def _sdk_config(request: Mapping[str, Any], timeout: float) -> types.GenerateContentConfig:
    """The SDK's config for a real-time call: the request's generation config and system."""
    fields: dict[str, Any] = dict(request.get("generationConfig") or {})
    if request.get("systemInstruction"):
        fields["systemInstruction"] = request["systemInstruction"]
    fields["httpOptions"] = {"timeout": max(1, int(timeout * 1000))}
    return types.GenerateContentConfig.model_validate(fields)


# -- answers ----------------------------------------------------------------------------------
def _get(data: Mapping[str, Any], snake: str, camel: str) -> Any:
    value = data.get(camel)
    return data.get(snake) if value is None else value


def completion_from_response(data: Mapping[str, Any], model: str | None = None) -> Completion:
    """A ``GenerateContentResponse`` (REST camelCase or the SDK's snake_case) as a completion."""
    candidates = data.get("candidates") or []
    candidate: Mapping[str, Any] = candidates[0] if candidates else {}
    content = candidate.get("content") or {}
    texts = [
        str(p.get("text") or "")
        for p in content.get("parts") or []
        if isinstance(p, dict) and not p.get("thought")
    ]
    reason = str(_get(candidate, "finish_reason", "finishReason") or "")
    feedback = _get(data, "prompt_feedback", "promptFeedback") or {}
    blocked = _get(feedback, "block_reason", "blockReason")
    usage = _get(data, "usage_metadata", "usageMetadata") or {}
    cached = int(_get(usage, "cached_content_token_count", "cachedContentTokenCount") or 0)
    output = int(_get(usage, "candidates_token_count", "candidatesTokenCount") or 0)
    # Thinking tokens are billed as output tokens.
    output += int(_get(usage, "thoughts_token_count", "thoughtsTokenCount") or 0)
    text: str | None = "".join(texts)
    refusal = None
    finish: str | None = _FINISH.get(reason, reason.lower() or None)
    if blocked or reason in _FILTERED:
        finish = "content_filter"
        if blocked or not text:  # nothing came before the block: a refusal
            text, refusal = None, f"blocked by Gemini: {blocked or reason}"
    return Completion(
        text=text,
        refusal=refusal,
        finish_reason=finish,
        prompt_tokens=int(_get(usage, "prompt_token_count", "promptTokenCount") or 0),
        completion_tokens=output,
        cached_tokens=cached,
        model=_get(data, "model_version", "modelVersion") or model,
    )


# -- errors -----------------------------------------------------------------------------------
def parse_duration(value: Any) -> float | None:
    """A protobuf Duration in JSON (``"37s"``, ``"1.5s"``) in seconds."""
    found = _DURATION.match(str(value or ""))
    return float(found[1]) if found else None


def _details(err: Mapping[str, Any], kind: str) -> list[Mapping[str, Any]]:
    return [
        d
        for d in err.get("details") or []
        if isinstance(d, dict) and str(d.get("@type", "")).endswith(kind)
    ]


def translate_error(exc: BaseException) -> ProviderError | ConfigError:
    """Turn an SDK or network error into ours, keeping Gemini's status and message."""
    if isinstance(exc, asyncio.TimeoutError):
        return Transient("the request timed out", code="timeout")
    if not isinstance(exc, genai_errors.APIError):
        return Transient(f"connection error: {exc!r}", code="connection_error")
    status = int(exc.code or 500)
    body = exc.details if isinstance(exc.details, dict) else {}
    found = body.get("error", body)
    err: Mapping[str, Any] = found if isinstance(found, dict) else {}
    kind = str(exc.status or err.get("status") or "UNKNOWN")
    message = str(exc.message or err.get("message") or exc)
    reasons = {str(d.get("reason")) for d in _details(err, "google.rpc.ErrorInfo")}
    if status in (401, 403) or "API_KEY_INVALID" in reasons or "API key not valid" in message:
        return ConfigError(
            f"Gemini refused the credentials ({status} {kind}): {message}", hint=KEY_HINT
        )
    if status == 429:
        quotas = [
            str(v.get("quotaId") or "")
            for q in _details(err, "google.rpc.QuotaFailure")
            for v in q.get("violations") or []
            if isinstance(v, dict)
        ]
        if any("PerDay" in q for q in quotas):
            return QuotaExhausted(
                f"Gemini says a daily quota is used up: {message}",
                hint="wait for the quota to reset (midnight Pacific time) or raise it in AI "
                "Studio, then `rowprompt resume` the job",
                status=429,
                code="RESOURCE_EXHAUSTED",
            )
        delays = [
            parse_duration(d.get("retryDelay")) for d in _details(err, "google.rpc.RetryInfo")
        ]
        wait = next((d for d in delays if d is not None), None)
        return RateLimited(message, retry_after=wait, code="RESOURCE_EXHAUSTED")
    if status == 404 and "models/" in message:
        return ConfigError(
            f"Gemini does not serve that model: {message}",
            hint="pass --model with a Gemini model, e.g. gemini-2.5-flash",
        )
    if status in (408, 409) or status >= 500:
        return Transient(message, status=status, code=kind)
    return Permanent(message, status=status, code=kind)


# -- batch helpers ------------------------------------------------------------------------------
def display_name(metadata: Mapping[str, str]) -> str:
    """The metadata pairs as a batch's display name: ``rowprompt k=v k=v``."""
    pairs = " ".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in metadata.items())
    return f"{DISPLAY_PREFIX} {pairs}".strip()


def metadata_of(name: str | None) -> dict[str, str]:
    """The metadata pairs a display name made by :func:`display_name` carries."""
    words = (name or "").split()
    if not words or words[0] != DISPLAY_PREFIX:
        return {}
    pairs = (w.partition("=") for w in words[1:])
    return {unquote(k): unquote(v) for k, sep, v in pairs if sep}


def batch_status(state: Any) -> str:
    """A ``JobState`` in OpenAI's batch vocabulary."""
    value = getattr(state, "value", state)
    return _STATES.get(str(value), "in_progress")


def parse_result_line(raw: bytes | str) -> BatchLineResult | None:
    """One line of a batch's results file; None for a blank or unreadable line."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    key = str(data.get("key") or (data.get("metadata") or {}).get("key") or "")
    if isinstance(data.get("response"), dict):
        return BatchLineResult(key, completion_from_response(data["response"]), status_code=200)
    err = data.get("error") or data.get("status") or {}
    err = err if isinstance(err, dict) else {}
    code = int(err.get("code") or 13)
    # A status object carries a google.rpc.Code; an HTTP-style error its HTTP status.
    status = _RPC_HTTP.get(code, 500) if code < 100 else code
    name = str(err.get("status") or _RPC_NAMES.get(code) or "UNKNOWN")
    if status == 429:
        status = 503  # a quota hit inside a batch: ask again, as for a server error
    return BatchLineResult(
        key,
        None,
        status_code=status,
        error_code=name,
        error_message=str(err.get("message") or "the request failed"),
    )


# -- the provider ---------------------------------------------------------------------------------
class GeminiProvider:
    """Real time through ``generateContent``, batch through Gemini batch mode."""

    # Files up to 2 GB (reference §9). Gemini caps no request count; 100,000 keeps one failed
    # or expired batch (all its rows asked again) and its results file (~100-200 MB) bounded.
    batch_caps = BatchCaps(max_requests=100_000, max_bytes=2_000_000_000)

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        name: str = "gemini",
        timeout: float = 120.0,
    ) -> None:
        self.name = name
        self.base_url = base_url
        options = types.HttpOptions(
            base_url=base_url,
            # Batch mode and the File API are documented on v1beta (the SDK's default is v1).
            api_version=API_VERSION,
            timeout=max(1, int(timeout * 1000)),
            # One attempt; a set retry_options also stops the SDK's implicit retry of a
            # dropped connection (a sleep of 1-10 s the engine would not see).
            retry_options=types.HttpRetryOptions(attempts=1),
        )
        self._client = genai.Client(api_key=api_key, vertexai=False, http_options=options)
        self._aio = self._client.aio

    async def aclose(self) -> None:
        """Close the SDK client's connections."""
        await self._aio.aclose()

    # -- real time ------------------------------------------------------------------------
    async def complete(self, body: Mapping[str, Any], *, timeout: float) -> CompletionResult:
        """One ``generateContent`` request."""
        request = to_gemini(body)
        try:
            answer = await self._aio.models.generate_content(
                model=request["model"],
                contents=request["contents"],
                config=_sdk_config(request, timeout),
            )
        except genai_errors.APIError as exc:
            raise translate_error(exc) from None
        except _NETWORK_ERRORS as exc:
            raise translate_error(exc) from None
        data = answer.model_dump(mode="json", exclude_none=True)
        return CompletionResult(completion=completion_from_response(data, str(body["model"])))

    # -- batch ----------------------------------------------------------------------------
    def batch_line(self, custom_id: str, body: Mapping[str, Any]) -> bytes:
        """One request of a batch file: ``{"key", "request"}``."""
        line = {"key": custom_id, "request": to_gemini(body)}
        return (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode()

    async def upload_batch_file(self, path: Path) -> str:
        """Upload through the File API; the file's display name carries the batch's model."""
        model = _first_model(path)
        try:
            uploaded = await self._aio.files.upload(
                file=path, config={"display_name": MODEL_PREFIX + model, "mime_type": "jsonl"}
            )
        except (genai_errors.APIError, *_NETWORK_ERRORS) as exc:
            raise translate_error(exc) from None
        if not uploaded.name:
            raise Transient("the File API answered without a file name")
        return uploaded.name

    async def create_batch(self, input_file_id: str, metadata: Mapping[str, str]) -> BatchInfo:
        """Create a batch over an uploaded file; the metadata goes into its display name."""
        try:
            stored = await self._aio.files.get(name=input_file_id)
            model = (stored.display_name or "").removeprefix(MODEL_PREFIX)
            if not stored.display_name or model == stored.display_name:
                raise Permanent(f"the file {input_file_id} was not uploaded by rowprompt")
            job = await self._aio.batches.create(
                model=model, src=input_file_id, config={"display_name": display_name(metadata)}
            )
        except (genai_errors.APIError, *_NETWORK_ERRORS) as exc:
            error = translate_error(exc)
            if isinstance(error, RateLimited):
                # The engine's word for "no room in the queue": it learns a limit, waits, and
                # sends the shard again (smaller if need be). Gemini states no number.
                return refused_batch(input_file_id, metadata, f"{REFUSED_MESSAGE}: {error}")
            raise error from None
        return self._info(job, input_file_id)

    async def get_batch(self, batch_id: str) -> BatchInfo:
        """The batch now, in OpenAI's status vocabulary."""
        if batch_id.startswith(REFUSED):
            return refused_batch(None, {}, REFUSED_MESSAGE, batch_id)
        try:
            job = await self._aio.batches.get(name=batch_id)
        except (genai_errors.APIError, *_NETWORK_ERRORS) as exc:
            raise translate_error(exc) from None
        return self._info(job)

    async def cancel_batch(self, batch_id: str) -> BatchInfo:
        """Ask for a cancel; a batch that has ended is returned as it is."""
        if batch_id.startswith(REFUSED):
            return await self.get_batch(batch_id)
        try:
            await self._aio.batches.cancel(name=batch_id)
        except genai_errors.ClientError as exc:
            if exc.code not in (400, 409):
                raise translate_error(exc) from None
        except (genai_errors.APIError, *_NETWORK_ERRORS) as exc:
            raise translate_error(exc) from None
        return await self.get_batch(batch_id)

    async def find_batches(self, metadata: Mapping[str, str]) -> list[BatchInfo]:
        """Batches whose display name holds these metadata pairs (the newest 1,000 looked at)."""
        found: list[BatchInfo] = []
        try:
            pager = await self._aio.batches.list(config={"page_size": 100})
            seen = 0
            async for job in pager:
                seen += 1
                pairs = metadata_of(job.display_name)
                if pairs and all(pairs.get(k) == v for k, v in metadata.items()):
                    found.append(self._info(job))
                if seen >= _FIND_SCAN_LIMIT:
                    break
        except (genai_errors.APIError, *_NETWORK_ERRORS) as exc:
            raise translate_error(exc) from None
        return found

    async def batch_results(self, info: BatchInfo) -> AsyncIterator[BatchLineResult]:
        """Stream the results file line by line (downloaded to a temporary file first)."""
        if not info.output_file_id:
            return
        handle, name = tempfile.mkstemp(prefix="rowprompt-gemini-", suffix=".jsonl")
        os.close(handle)
        try:
            try:
                await self._aio.files.download(file=info.output_file_id, destination=name)
            except (genai_errors.APIError, *_NETWORK_ERRORS) as exc:
                raise translate_error(exc) from None
            with open(name, "rb") as lines:
                for raw in lines:
                    if raw.strip():
                        result = parse_result_line(raw)
                        if result is not None:
                            yield result
        finally:
            Path(name).unlink(missing_ok=True)

    def _info(self, job: types.BatchJob, input_file_id: str | None = None) -> BatchInfo:
        created = job.create_time
        return BatchInfo(
            id=str(job.name),
            status=batch_status(job.state),
            input_file_id=input_file_id,
            output_file_id=job.dest.file_name if job.dest is not None else None,
            metadata=metadata_of(job.display_name),
            created_at=created.timestamp() if isinstance(created, datetime) else None,
        )


def refused_batch(
    input_file_id: str | None,
    metadata: Mapping[str, str],
    message: str,
    batch_id: str | None = None,
) -> BatchInfo:
    """A create refused for want of room, as a batch that failed ``token_limit_exceeded``."""
    return BatchInfo(
        id=batch_id or REFUSED + uuid.uuid4().hex,
        status="failed",
        input_file_id=input_file_id,
        errors=(BatchError("token_limit_exceeded", message),),
        metadata=dict(metadata),
    )


def _first_model(path: Path) -> str:
    """The model the first request of a batch file names."""
    try:
        with path.open("rb") as handle:
            first = handle.readline()
        model = str(json.loads(first)["request"]["model"])
    except OSError as exc:
        raise Permanent(f"cannot read the batch file {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError):
        raise Permanent(f"the batch file {path} does not start with a Gemini request") from None
    return model.removeprefix("models/")


def key_from_env() -> str | None:
    """The Gemini API key the environment holds: ``GEMINI_API_KEY``, else ``GOOGLE_API_KEY``."""
    return os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY") or None
