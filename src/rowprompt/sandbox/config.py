"""Configuration of a sandbox: limits, speeds, scripted rules and faults."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_MODELS: tuple[str, ...] = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-4.1",
    "gpt-5-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "text-embedding-ada-002",
)


class FaultConfig(BaseModel):
    """Faults the sandbox injects on purpose, drawn from the sandbox's seeded RNG.

    Rates are fractions in [0, 1] of the chat requests (or batches, or batch lines) they
    apply to. Storms and the ``*_nth`` lists count from the moment the faults are set.
    """

    model_config = ConfigDict(extra="forbid")

    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """Fraction of chat requests answered with a 500 or 503 ``server_error``."""
    error_statuses: list[int] = Field(default_factory=lambda: [500, 503])
    rate_limit_storm_requests: int = Field(default=0, ge=0)
    """The next N chat requests get a 429, whatever the limits say."""
    rate_limit_storm_seconds: float = Field(default=0.0, ge=0.0)
    """Every chat request gets a 429 for this many seconds from when the faults are set."""
    storm_retry_after_s: float = Field(default=1.0, gt=0.0)
    slow_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """Fraction of chat requests that sleep ``slow_seconds`` before answering."""
    slow_seconds: float = Field(default=5.0, ge=0.0)
    drop_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """Fraction of chat requests whose connection is closed with no HTTP answer."""
    batch_fail_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    batch_fail_nth: list[int] = Field(default_factory=list)
    """1-based positions, counted in batches created after the faults are set, that fail."""
    batch_expire_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    batch_expire_nth: list[int] = Field(default_factory=list)
    """Batches that expire once half their requests are done."""
    output_drop_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """Fraction of succeeded lines left out of output files."""
    output_truncate_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """Fraction of succeeded lines of output files cut mid-JSON (the line's first half, then
    its newline): billed by the provider, unreadable by the client."""
    download_cut_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    download_cut_nth: list[int] = Field(default_factory=list)
    """1-based positions, counted in downloads of batch output and error files after the
    faults are set, that stop partway through the file (mid-line)."""
    download_cut_style: Literal["drop", "short"] = "drop"
    """How a cut download ends: ``drop`` closes the connection before the announced length
    arrived (the client sees a broken transfer); ``short`` answers a shorter file, cleanly,
    as if the provider's file itself ended early."""
    quota_exhausted_after: int | None = Field(default=None, ge=0)
    """After this many chat requests (counted from when set), every one gets a 429
    ``insufficient_quota``: the account ran out of credit."""


class SandboxConfig(BaseModel):
    """Everything a sandbox instance is started with. All times are real seconds."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    latency_ms: float = Field(default=0.0, ge=0.0)
    """Latency added to each real-time answer: the mean (``normal``) or median (``lognormal``)."""
    latency_jitter_ms: float = Field(default=0.0, ge=0.0)
    """Standard deviation of the ``normal`` latency (cut at 0)."""
    latency_distribution: Literal["normal", "lognormal"] = "normal"
    """``lognormal`` has the long tail real providers show: median ``latency_ms``, 95th
    percentile ``latency_p95_ms``."""
    latency_p95_ms: float | None = Field(default=None, gt=0.0)
    batch_rows_per_second: float = Field(default=1000.0, gt=0.0)
    batch_validating_seconds: float = Field(default=0.2, ge=0.0)
    batch_finalizing_seconds: float = Field(default=0.2, ge=0.0)
    time_scale: float = Field(default=1.0, gt=0.0)
    """Real seconds that one simulated second of the completion window lasts."""
    max_batch_requests: int = Field(default=50_000, ge=1)
    max_batch_bytes: int = Field(default=200 * 1024 * 1024, ge=1)
    enqueued_token_limit: dict[str, int] | int | None = None
    """Per-model cap on enqueued batch tokens; an int applies to every model."""
    rules: list[dict[str, Any]] = Field(default_factory=list)
    rules_file: Path | None = None
    models: list[str] = Field(default_factory=lambda: list(DEFAULT_MODELS))
    faults: FaultConfig = Field(default_factory=lambda: FaultConfig())
    rate_limit_headers: bool = True
    """Send ``x-ratelimit-*`` (and ``anthropic-ratelimit-*``) headers. False plays a server
    that enforces limits without announcing them (many OpenAI-compatible servers): a client
    must learn the limit from its 429s."""
    token_accounting: Literal["openai", "anthropic"] = "openai"
    """How the tokens-per-minute bucket counts: ``openai`` keeps prompt + max_tokens × n;
    ``anthropic`` gives back the unused part of max_tokens when the answer is done."""
    request_log_limit: int = Field(default=1_000_000, ge=0)
    """Most entries the per-request log keeps (oldest dropped first)."""

    @field_validator("rules")
    @classmethod
    def _rules_parse(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from .model import parse_rules  # model imports this module

        parse_rules(value)
        return value

    @model_validator(mode="after")
    def _latency_shape(self) -> SandboxConfig:
        if self.latency_distribution == "lognormal":
            p95 = self.latency_p95_ms
            if self.latency_ms <= 0 or p95 is None or p95 <= self.latency_ms:
                raise ValueError(
                    "a lognormal latency needs latency_ms (the median) above 0 and "
                    "latency_p95_ms above latency_ms"
                )
        elif self.latency_p95_ms is not None:
            raise ValueError("latency_p95_ms needs latency_distribution 'lognormal'")
        return self

    @field_validator("models")
    @classmethod
    def _models_not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("models must name at least one model")
        return value

    def token_limit_for(self, model: str) -> int | None:
        """The enqueued-token limit of ``model``, or None when unlimited."""
        limit = self.enqueued_token_limit
        if limit is None or isinstance(limit, int):
            return limit
        return limit.get(model)

    @property
    def window_seconds(self) -> float:
        """Real seconds that the 24 h completion window lasts."""
        return 86_400 * self.time_scale
