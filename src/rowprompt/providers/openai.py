"""The OpenAI API shape, on the official ``openai`` SDK: OpenAI itself and any compatible server.

The SDK's own retries are off (``max_retries=0``): exactly one loop retries, the engine's, so
the ledger sees every attempt.

The real-time hot path (:meth:`OpenAIProvider.complete`) posts the body as it is through
``aiohttp`` when it is installed: measured on one core, the SDK's request transform and its
``httpx2`` connection pool cost ~4 ms of CPU a request, aiohttp ~0.3 ms (see
``docs/benchmarks.md``). Errors still become the SDK's exception types, built by the SDK from
the response, then ours through :func:`translate_error`; everything else stays on the SDK.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import httpx2
import openai
from openai import AsyncOpenAI, Omit

from rowprompt.errors import (
    BatchUnsupported,
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
    EndpointShape,
    LimitsObservation,
    retry_after_seconds,
)

if TYPE_CHECKING:
    import aiohttp

CHAT_ENDPOINT: Final = "/v1/chat/completions"
_FIND_SCAN_LIMIT = 2000
HAS_AIOHTTP: Final = importlib.util.find_spec("aiohttp") is not None


class OpenAIProvider:
    """Real time through Chat Completions, batch through Files + Batches."""

    batch_caps = BatchCaps()

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        name: str = "openai",
        timeout: float = 120.0,
        max_connections: int = 256,
        lean: bool | None = None,
        endpoint: str = "chat",
    ) -> None:
        self.name = name
        self.base_url = base_url
        # Which API the job's requests go to: chat (Chat Completions), responses, embeddings.
        self.endpoint = endpoint
        self.shape = shape_for(endpoint)
        self._client = AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            timeout=timeout,
        )
        self._max_connections = max_connections
        # None: the lean hot path whenever aiohttp is installed.
        self.lean = HAS_AIOHTTP if lean is None else lean and HAS_AIOHTTP
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    async def aclose(self) -> None:
        """Close the SDK client's connections (and the hot path's)."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self._client.close()

    # -- real time ------------------------------------------------------------------------
    async def complete(self, body: Mapping[str, Any], *, timeout: float) -> CompletionResult:
        """One request to the job's endpoint, with the limits its headers announce."""
        if self.lean:
            return await self._complete_lean(body, timeout)
        if self.shape is not CHAT:
            return await self._complete_sdk(body, timeout)
        extra = {k: v for k, v in body.items() if k not in ("model", "messages")}
        try:
            raw = await self._client.chat.completions.with_raw_response.create(
                model=body["model"],
                messages=body["messages"],
                extra_body=extra or None,
                timeout=timeout,
            )
        except openai.APIError as exc:
            raise translate_error(exc) from None
        parsed = raw.parse()
        data = parsed.model_dump()
        return CompletionResult(
            completion=completion_from_body(data),
            limits=limits_from_headers(raw.headers),
            status_code=raw.status_code,
        )

    async def _complete_sdk(self, body: Mapping[str, Any], timeout: float) -> CompletionResult:
        # Endpoints other than chat go through the SDK's own transport (auth, base URL,
        # api-version, errors) with the shape's body as it is.
        try:
            response = await self._client.post(
                self.shape.path.removeprefix("/v1"),
                body=self.shape.to_request(body),
                cast_to=httpx2.Response,
                options={"timeout": timeout},
            )
        except openai.APIError as exc:
            raise translate_error(exc) from None
        try:
            data = response.json()
        except ValueError:
            raise Transient(
                f"the answer ({response.status_code}) is not JSON: {response.content[:200]!r}",
                status=response.status_code,
            ) from None
        return CompletionResult(
            completion=self.shape.to_completion(data),
            limits=limits_from_headers(response.headers),
            status_code=response.status_code,
        )

    def _lean_session(self) -> aiohttp.ClientSession:
        import aiohttp

        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            headers = {
                k: v for k, v in self._client.default_headers.items() if not isinstance(v, Omit)
            }
            headers.update(self._client.auth_headers)
            connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, headers=headers)
            self._session_loop = loop
        return self._session

    async def _complete_lean(self, body: Mapping[str, Any], timeout: float) -> CompletionResult:
        import aiohttp

        session = self._lean_session()
        url = f"{self._client.base_url}{self.shape.path.removeprefix('/v1/')}"
        request = body if self.shape is CHAT else self.shape.to_request(body)
        payload = json.dumps(request, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            async with session.post(
                url, data=payload, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                raw = await response.read()
                status = response.status
                headers = response.headers
        except TimeoutError:
            raise Transient("the request timed out", code="timeout") from None
        except aiohttp.ClientError as exc:
            raise Transient(f"connection error: {exc!r}", code="connection_error") from None
        if status >= 400:
            # The SDK builds its own exception from the response, as it would have raised it.
            sdk_response = httpx2.Response(
                status,
                headers=list(headers.items()),
                content=raw,
                request=httpx2.Request("POST", url),
            )
            error = self._client._make_status_error_from_response(sdk_response)
            raise translate_error(error) from None
        try:
            data = json.loads(raw)
        except ValueError:
            raise Transient(
                f"the answer ({status}) is not JSON: {raw[:200]!r}", status=status
            ) from None
        return CompletionResult(
            completion=self.shape.to_completion(data),
            limits=limits_from_headers(headers),
            status_code=status,
        )

    async def check_model(self, model: str) -> None:
        """Fail early with a clear error when the server does not know ``model``.

        Servers without ``GET /v1/models/{id}`` are given the benefit of the doubt.
        """
        try:
            await self._client.models.retrieve(model, timeout=30)
        except openai.NotFoundError as exc:
            known: list[str] = []
            try:
                page = await self._client.models.list(timeout=30)
                known = sorted(m.id for m in page.data)
            except openai.APIError:
                # Neither route: only OpenAI's own "model_not_found" says the model is unknown.
                if _error_code(exc) != "model_not_found":
                    return
            if model in known:
                return  # the 404 was the route itself (llama.cpp's server has no retrieve)
            listing = f" (it knows: {', '.join(known[:20])})" if known else ""
            raise ConfigError(
                f"the provider does not know the model {model!r}{listing}",
                hint="pass --model with a model the provider serves",
            ) from None
        except openai.AuthenticationError as exc:
            raise translate_error(exc) from None
        except openai.APIError:
            return

    # -- batch ----------------------------------------------------------------------------
    def batch_line(self, custom_id: str, body: Mapping[str, Any]) -> bytes:
        """One line of a batch input file."""
        request = body if self.shape is CHAT else self.shape.to_request(body)
        line = {"custom_id": custom_id, "method": "POST", "url": self.shape.path, "body": request}
        return (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode()

    async def upload_batch_file(self, path: Path) -> str:
        """Upload a JSONL file with purpose ``batch``."""
        try:
            with path.open("rb") as handle:
                created = await self._client.files.create(file=handle, purpose="batch")
        except openai.NotFoundError as exc:
            raise _no_batches(exc) from None
        except openai.APIError as exc:
            raise translate_error(exc) from None
        return created.id

    async def create_batch(self, input_file_id: str, metadata: Mapping[str, str]) -> BatchInfo:
        """Create a 24h batch on the job's endpoint over an uploaded file."""
        try:
            batch = await self._client.batches.create(
                input_file_id=input_file_id,
                endpoint=self.shape.path,  # type: ignore[arg-type]
                completion_window="24h",
                metadata=dict(metadata),
            )
        except openai.NotFoundError as exc:
            if "file" in str(exc.message).lower():
                raise translate_error(exc) from None
            raise _no_batches(exc) from None
        except openai.APIError as exc:
            raise translate_error(exc) from None
        return batch_info(batch.model_dump())

    async def get_batch(self, batch_id: str) -> BatchInfo:
        """The batch now."""
        try:
            batch = await self._client.batches.retrieve(batch_id)
        except openai.APIError as exc:
            raise translate_error(exc) from None
        return batch_info(batch.model_dump())

    async def cancel_batch(self, batch_id: str) -> BatchInfo:
        """Ask for a cancel; a batch already ended is returned as it is."""
        try:
            batch = await self._client.batches.cancel(batch_id)
        except (openai.BadRequestError, openai.ConflictError):
            return await self.get_batch(batch_id)
        except openai.APIError as exc:
            raise translate_error(exc) from None
        return batch_info(batch.model_dump())

    async def find_batches(self, metadata: Mapping[str, str]) -> list[BatchInfo]:
        """Batches carrying all these metadata pairs, among the most recent ones."""
        found: list[BatchInfo] = []
        seen = 0
        try:
            async for batch in self._client.batches.list(limit=100):
                seen += 1
                meta = batch.metadata or {}
                if all(meta.get(k) == v for k, v in metadata.items()):
                    found.append(batch_info(batch.model_dump()))
                if seen >= _FIND_SCAN_LIMIT:
                    break
        except openai.NotFoundError as exc:
            raise _no_batches(exc) from None
        except openai.APIError as exc:
            raise translate_error(exc) from None
        return found

    async def batch_results(self, info: BatchInfo) -> AsyncIterator[BatchLineResult]:
        """Stream the output file, then the error file, line by line."""
        for file_id in (info.output_file_id, info.error_file_id):
            if not file_id:
                continue
            try:
                async with self._client.files.with_streaming_response.content(file_id) as resp:
                    async for line in resp.iter_lines():
                        result = parse_batch_line(line, self.shape)
                        if result is not None:
                            yield result
            except openai.APIError as exc:
                raise translate_error(exc) from None


class RateLimitedSeen(RateLimited):
    """A 429 with the rate-limit headers it carried (they correct the engine's budgets)."""

    def __init__(
        self, message: str, *, retry_after: float | None, limits: LimitsObservation | None
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.limits = limits


def _error_code(exc: openai.APIError) -> str | None:
    """The ``error.code`` of an error body, when it has one."""
    body = exc.body if isinstance(exc.body, dict) else {}
    err = body.get("error", body)
    return err.get("code") if isinstance(err, dict) else None


def _no_batches(exc: openai.APIError) -> BatchUnsupported:
    return BatchUnsupported(
        f"the server at {exc.request.url.copy_with(path='/', query=None)} has no Batch API"
        f" ({exc.request.method} {exc.request.url.path} answered 404)",
        hint="use --mode realtime with this server",
        status=404,
    )


def translate_error(exc: openai.APIError) -> ProviderError | ConfigError:
    """Turn an SDK error into ours, keeping the provider's code and message."""
    if isinstance(exc, openai.APITimeoutError):
        return Transient("the request timed out", code="timeout")
    if isinstance(exc, openai.APIConnectionError):
        return Transient(f"connection error: {exc}", code="connection_error")
    if not isinstance(exc, openai.APIStatusError):
        return Transient(str(exc))
    status = exc.status_code
    body = exc.body if isinstance(exc.body, dict) else {}
    err = body.get("error", body) if isinstance(body, dict) else {}
    err = err if isinstance(err, dict) else {}
    code = err.get("code") or err.get("type")
    message = str(err.get("message") or exc.message)
    if status == 429:
        if code == "insufficient_quota" or err.get("type") == "insufficient_quota":
            return QuotaExhausted(
                f"the provider says the account is out of quota: {message}",
                hint="add credit or raise the quota, then `rowprompt resume` the job",
                status=429,
                code="insufficient_quota",
            )
        if message.startswith("Request too large"):
            # One request above the whole tokens-per-minute limit: waiting will not help.
            return Permanent(message, status=429, code="request_too_large")
        headers = exc.response.headers
        return RateLimitedSeen(
            message, retry_after=retry_after_seconds(headers), limits=limits_from_headers(headers)
        )
    if status in (401, 403):
        return ConfigError(
            f"the provider refused the credentials ({status}): {message}",
            hint="check OPENAI_API_KEY (or the key for --base-url)",
        )
    if status == 404 and code == "model_not_found":
        return ConfigError(message, hint="pass --model with a model the provider serves")
    if status in (408, 409) or status >= 500:
        return Transient(message, status=status, code=code)
    return Permanent(message, status=status, code=code)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str | None) -> float | None:
    """A Go-style duration (``1s``, ``6m0s``, ``120ms``) in seconds."""
    if not text:
        return None
    parts = _DURATION_PART.findall(text.strip())
    if not parts:
        try:
            return float(text)
        except ValueError:
            return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(number) * scale[unit] for number, unit in parts)


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def limits_from_headers(headers: Mapping[str, str]) -> LimitsObservation | None:
    """The ``x-ratelimit-*`` headers of an answer, or None when it has none."""
    if "x-ratelimit-limit-requests" not in headers and "x-ratelimit-limit-tokens" not in headers:
        return None
    return LimitsObservation(
        limit_requests=_int(headers.get("x-ratelimit-limit-requests")),
        limit_tokens=_int(headers.get("x-ratelimit-limit-tokens")),
        remaining_requests=_int(headers.get("x-ratelimit-remaining-requests")),
        remaining_tokens=_int(headers.get("x-ratelimit-remaining-tokens")),
        reset_requests_s=parse_duration(headers.get("x-ratelimit-reset-requests")),
        reset_tokens_s=parse_duration(headers.get("x-ratelimit-reset-tokens")),
    )


def completion_from_body(body: Mapping[str, Any]) -> Completion:
    """A chat.completion body in the neutral shape (first choice)."""
    choices = body.get("choices") or [{}]
    choice = choices[0] or {}
    message = choice.get("message") or {}
    usage = body.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    return Completion(
        text=message.get("content"),
        refusal=message.get("refusal"),
        finish_reason=choice.get("finish_reason"),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        cached_tokens=int(details.get("cached_tokens") or 0),
        model=body.get("model"),
    )


def parse_batch_line(line: str, shape: EndpointShape | None = None) -> BatchLineResult | None:
    """One line of a batch output or error file; None for a line that does not parse."""
    shape = shape or CHAT
    line = line.strip()
    if not line:
        return None
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("custom_id"), str):
        return None
    response = data.get("response") or None
    error = data.get("error") or None
    if isinstance(response, dict):
        status = response.get("status_code")
        body = response.get("body") or {}
        if status == 200 and isinstance(body, dict) and shape.is_answer(body):
            return BatchLineResult(data["custom_id"], shape.to_completion(body), status_code=200)
        err = body.get("error") if isinstance(body, dict) else None
        err = err if isinstance(err, dict) else {}
        return BatchLineResult(
            data["custom_id"],
            None,
            status_code=status if isinstance(status, int) else None,
            error_code=err.get("code") or err.get("type") or f"http_{status}",
            error_message=str(err.get("message") or f"the request answered {status}"),
        )
    err = error if isinstance(error, dict) else {}
    return BatchLineResult(
        data["custom_id"],
        None,
        error_code=err.get("code") or "batch_error",
        error_message=str(err.get("message") or "no response"),
    )


CHAT: Final = EndpointShape(
    path=CHAT_ENDPOINT,
    to_request=dict,
    to_completion=completion_from_body,
    is_answer=lambda body: bool(body.get("choices")),
)


def shape_for(endpoint: str) -> EndpointShape:
    """The shape of ``chat``, ``responses`` or ``embeddings``."""
    if endpoint == "chat":
        return CHAT
    if endpoint == "responses":
        from rowprompt.providers.openai_responses import SHAPE as responses

        return responses
    if endpoint == "embeddings":
        from rowprompt.providers.openai_embeddings import SHAPE as embeddings

        return embeddings
    raise ConfigError(f"unknown endpoint {endpoint!r}", hint="use chat, responses or embeddings")


def batch_info(data: Mapping[str, Any]) -> BatchInfo:
    """A Batch object's dump in the neutral shape."""
    counts = data.get("request_counts") or {}
    errors = (data.get("errors") or {}).get("data") or []
    return BatchInfo(
        id=data["id"],
        status=data["status"],
        total=int(counts.get("total") or 0),
        completed=int(counts.get("completed") or 0),
        failed=int(counts.get("failed") or 0),
        input_file_id=data.get("input_file_id"),
        output_file_id=data.get("output_file_id"),
        error_file_id=data.get("error_file_id"),
        errors=tuple(
            BatchError(code=e.get("code"), message=str(e.get("message") or ""), line=e.get("line"))
            for e in errors
            if isinstance(e, dict)
        ),
        metadata=dict(data.get("metadata") or {}),
        created_at=data.get("created_at"),
    )
