"""Requests- and tokens-per-minute limits: token buckets refilled continuously, per model.

OpenAI admits a request if both buckets hold enough: one request, and the request's token
estimate (prompt estimate + max_tokens x n). Nothing is refunded when the answer is shorter.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from .errors import APIError

UNLIMITED = 10_000_000  # what the headers report when no limit is configured
RATE_LIMIT_URL = "Visit https://platform.openai.com/account/rate-limits to learn more."
ORGANIZATION = "org-sandbox"


def go_duration(seconds: float) -> str:
    """A duration the way OpenAI's reset headers write it: ``120ms``, ``1s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours >= 1:
        return f"{int(hours)}h{int(minutes)}m{text}"
    if minutes >= 1:
        return f"{int(minutes)}m{text}"
    return text


@dataclass
class Bucket:
    """A bucket of ``limit`` units refilled at ``limit`` per minute."""

    limit: int
    level: float = field(default=-1.0)
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.level < 0:
            self.level = float(self.limit)

    def refill(self, now: float) -> None:
        """Top the bucket up for the time since the last look."""
        if now > self.stamp:
            self.level = min(float(self.limit), self.level + (now - self.stamp) * self.limit / 60.0)
            self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until the bucket holds ``amount``."""
        return max(0.0, (amount - self.level) * 60.0 / self.limit)

    def reset_in(self) -> float:
        """Seconds until the bucket is full again."""
        return self.wait_for(self.limit)


@dataclass
class Admission:
    """The outcome of one admission check: headers always, an error when refused."""

    headers: dict[str, str]
    error: APIError | None = None
    cause: str | None = None


class RateLimiter:
    """Per-model requests and tokens buckets. Call it from the event loop thread only."""

    def __init__(self, rpm: int | None, tpm: int | None) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self._buckets: dict[str, tuple[Bucket | None, Bucket | None]] = {}

    def _get(self, model: str) -> tuple[Bucket | None, Bucket | None]:
        found = self._buckets.get(model)
        if found is None:
            found = (
                Bucket(self.rpm) if self.rpm else None,
                Bucket(self.tpm) if self.tpm else None,
            )
            self._buckets[model] = found
        return found

    def admit(self, model: str, tokens: int) -> Admission:
        """Take one request and ``tokens`` tokens from ``model``'s buckets, or refuse."""
        now = time.monotonic()
        requests, token_bucket = self._get(model)
        for bucket in (requests, token_bucket):
            if bucket is not None:
                bucket.refill(now)
        error: APIError | None = None
        cause: str | None = None
        if token_bucket is not None and tokens > token_bucket.limit:
            cause = "request_too_large"
            error = APIError(
                429,
                f"Request too large for {model} in organization {ORGANIZATION} on tokens per min "
                f"(TPM): Limit {token_bucket.limit}, Requested {tokens}. The input or output "
                f"tokens must be reduced in order to run successfully. {RATE_LIMIT_URL}",
                type="tokens",
                code="rate_limit_exceeded",
            )
        elif requests is not None and requests.level < 1:
            cause = "requests"
            error = self._limited(model, "requests per min (RPM)", requests, 1, "requests")
        elif token_bucket is not None and token_bucket.level < tokens:
            cause = "tokens"
            error = self._limited(model, "tokens per min (TPM)", token_bucket, tokens, "tokens")
        if error is None:
            if requests is not None:
                requests.level -= 1
            if token_bucket is not None:
                token_bucket.level -= tokens
        headers = self.headers(requests, token_bucket)
        if error is not None:
            wait = 1.0
            if cause == "requests" and requests is not None:
                wait = requests.wait_for(1)
            elif cause == "tokens" and token_bucket is not None:
                wait = token_bucket.wait_for(tokens)
            # retry-after-ms is read first by the SDK; retry-after is whole seconds (>= 1).
            headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
            headers["retry-after"] = str(max(1, math.ceil(wait)))
            error.headers.update(headers)
        return Admission(headers, error, cause)

    @staticmethod
    def _limited(model: str, what: str, bucket: Bucket, asked: int, kind: str) -> APIError:
        used = bucket.limit - math.floor(bucket.level)
        return APIError(
            429,
            f"Rate limit reached for {model} in organization {ORGANIZATION} on {what}: "
            f"Limit {bucket.limit}, Used {used}, Requested {asked}. Please try again in "
            f"{go_duration(bucket.wait_for(asked))}. {RATE_LIMIT_URL}",
            type=kind,
            code="rate_limit_exceeded",
        )

    def refund(self, model: str, tokens: int) -> None:
        """Give ``tokens`` back to ``model``'s tokens bucket (a provider face that refunds)."""
        _, token_bucket = self._get(model)
        if token_bucket is not None and tokens > 0:
            token_bucket.refill(time.monotonic())
            token_bucket.level = min(float(token_bucket.limit), token_bucket.level + tokens)

    def peek(self, model: str) -> dict[str, str]:
        """The rate-limit headers for ``model`` without taking anything."""
        now = time.monotonic()
        requests, tokens = self._get(model)
        for bucket in (requests, tokens):
            if bucket is not None:
                bucket.refill(now)
        return self.headers(requests, tokens)

    @staticmethod
    def headers(requests: Bucket | None, tokens: Bucket | None) -> dict[str, str]:
        """``x-ratelimit-*`` headers; a large limit is reported when none is configured."""
        out = {}
        for name, bucket in (("requests", requests), ("tokens", tokens)):
            if bucket is None:
                out[f"x-ratelimit-limit-{name}"] = str(UNLIMITED)
                out[f"x-ratelimit-remaining-{name}"] = str(UNLIMITED)
                out[f"x-ratelimit-reset-{name}"] = "0s"
            else:
                out[f"x-ratelimit-limit-{name}"] = str(bucket.limit)
                out[f"x-ratelimit-remaining-{name}"] = str(max(0, math.floor(bucket.level)))
                out[f"x-ratelimit-reset-{name}"] = go_duration(bucket.reset_in())
        return out
