"""Settings from ``rowprompt.toml``: defaults < rowprompt.toml < ROWPROMPT_* env < CLI flags.

The file is looked for in the current directory (or at ``ROWPROMPT_CONFIG``)::

    confirm_over = 5.0                 # ask before runs estimated above this many USD

    [prices."my-finetune"]             # USD per 1M tokens; batch defaults to half
    input = 0.30
    output = 1.20

    [batch_token_limits]               # enqueued-token limit per model for the Batch API
    "gpt-4o-mini" = 2000000

    [planner]                          # the thresholds of --mode auto and of deadlines
    small_job_rows = 200               # at most this many rows: real time
    large_job_rows = 1000              # at least this many (with slack): batch
    default_batch_turnaround_s = 86400 # a batch's turnaround with no history in the ledger
    realtime_rows_per_min = 100        # real-time speed assumed with no --rpm/--tpm
    fallback_safety = 1.5              # the deadline fallback starts this many times early...
    fallback_margin_s = 30             # ...plus this many seconds
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rowprompt import costs
from rowprompt.engine.planner import PlannerSettings
from rowprompt.errors import ConfigError

CONFIG_ENV = "ROWPROMPT_CONFIG"
FILE_NAME = "rowprompt.toml"
DEFAULT_CONFIRM_OVER = 1.00
_KNOWN = {"confirm_over", "prices", "batch_token_limits", "planner"}
# Each [planner] key: (integer only, lower bound, bound allowed). A safety under 1 would start
# the deadline fallback too late by design.
_PLANNER_KEYS: dict[str, tuple[bool, float, bool]] = {
    "small_job_rows": (True, 0, True),
    "large_job_rows": (True, 1, True),
    "default_batch_turnaround_s": (False, 0, False),
    "realtime_rows_per_min": (False, 0, False),
    "fallback_safety": (False, 1, True),
    "fallback_margin_s": (False, 0, True),
}


@dataclass(frozen=True)
class Settings:
    """What ``rowprompt.toml`` says (empty when there is none)."""

    path: Path | None = None
    confirm_over: float = DEFAULT_CONFIRM_OVER
    prices: dict[str, Any] = field(default_factory=dict)
    batch_token_limits: dict[str, int] = field(default_factory=dict)
    planner: PlannerSettings = field(default_factory=PlannerSettings)


def load_settings(directory: str | os.PathLike[str] | None = None) -> Settings:
    """Read ``rowprompt.toml`` and apply its prices; a bad file is a one-line ConfigError."""
    explicit = os.environ.get(CONFIG_ENV)
    path = Path(explicit) if explicit else Path(directory or ".") / FILE_NAME
    if not path.exists():
        if explicit:
            raise ConfigError(f"{CONFIG_ENV}={explicit} does not exist")
        return Settings()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", hint="fix the file") from None
    unknown = set(data) - _KNOWN
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting(s) {', '.join(sorted(unknown))}",
            hint=f"known settings: {', '.join(sorted(_KNOWN))}",
        )
    prices = data.get("prices") or {}
    limits = data.get("batch_token_limits") or {}
    if not isinstance(prices, dict) or not isinstance(limits, dict):
        raise ConfigError(f"{path}: [prices] and [batch_token_limits] must be tables")
    if prices:
        costs.configure_prices(prices, str(path))
    bad = [k for k, v in limits.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1]
    if bad:
        raise ConfigError(f"{path}: batch_token_limits for {', '.join(bad)} must be integers >= 1")
    confirm = data.get("confirm_over", DEFAULT_CONFIRM_OVER)
    if not isinstance(confirm, int | float) or isinstance(confirm, bool) or confirm < 0:
        raise ConfigError(f"{path}: confirm_over must be a number of USD >= 0")
    planner = _planner_settings(path, data.get("planner", {}))
    limits_by_model = {str(k): int(v) for k, v in limits.items()}
    return Settings(path, float(confirm), prices, limits_by_model, planner)


def _planner_settings(path: Path, table: Any) -> PlannerSettings:
    """The `[planner]` table checked key by key; a bad value is a one-line ConfigError."""
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [planner] must be a table")
    unknown = set(table) - set(_PLANNER_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown [planner] setting(s) {', '.join(sorted(unknown))}",
            hint=f"known: {', '.join(_PLANNER_KEYS)}",
        )
    values: dict[str, Any] = {}
    for key, value in table.items():
        integer, least, inclusive = _PLANNER_KEYS[key]
        kind = "an integer" if integer else "a number"
        bound = f">= {least:g}" if inclusive else f"> {least:g}"
        number = isinstance(value, int) if integer else isinstance(value, int | float)
        if (
            isinstance(value, bool)
            or not number
            or not math.isfinite(value)
            or value < least
            or (not inclusive and value == least)
        ):
            raise ConfigError(f"{path}: [planner] {key} must be {kind} {bound}, not {value!r}")
        values[key] = value if integer else float(value)
    return PlannerSettings(**values)
