"""Configuration of a sandbox: limits, speeds, scripted rules and faults."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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
    """Fraction of succeeded lines left out of output files (a truncated file)."""
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
    latency_jitter_ms: float = Field(default=0.0, ge=0.0)
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
