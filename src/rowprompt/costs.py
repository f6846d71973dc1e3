"""What a row costs: prices per model, real-time and batch, offline.

Prices come from the ``genai-prices`` package, whose data ships inside the package, so no
network is needed. Its calculator takes about a hundred microseconds a call, far too slow to
run once per row of a million-row job, so each ``(model, provider)`` pair is resolved once into
a :class:`Price` (USD per million tokens) and the per-row arithmetic is done here.

Where a price comes from, first match wins:

1. the JSON file named by the ``ROWPROMPT_PRICES`` environment variable, for models the user
   prices themselves: ``{"my-model": {"input": 0.5, "output": 1.5}}`` (``cached_input``,
   ``batch_input`` and ``batch_output`` are optional; batch defaults to half the real-time
   price, as the OpenAI, Anthropic and Azure batch APIs charge);
2. ``genai-prices``, with ``price_context={"processing": "batch"}`` for batch prices; where it
   has no batch variant for a model (Anthropic, Azure, OpenAI embeddings) batch is half price;
3. :data:`FALLBACK_PRICES`, a small table of OpenAI prices in this module (provider
   ``openai`` only).

Model names are normalised first: surrounding space is dropped, a trailing ``-sandbox`` is
stripped (the offline sandbox names its models after the real ones, and is priced as them so
that demos show realistic costs), and the ``sandbox`` provider is priced as ``openai``. Date
suffixes (``gpt-4o-mini-2024-07-18``) are understood by ``genai-prices`` and, for the two
tables, are stripped when the dated name itself is not listed.

A model nobody prices gives ``None``: the caller warns once and shows the cost as unknown.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from rowprompt.errors import ConfigError

__all__ = [
    "FALLBACK_PRICES",
    "PRICES_ENV",
    "Price",
    "clear_cache",
    "cost_usd",
    "estimate_cost",
    "normalise_model",
    "price_for",
    "require_price",
]

PRICES_ENV = "ROWPROMPT_PRICES"
"""Environment variable naming a JSON file of the user's own prices."""

_PER_TOKEN = 1e-6  # prices are per million tokens


@dataclass(frozen=True)
class Price:
    """Prices of one model in USD per million tokens.

    ``cached_input`` is the real-time price of prompt tokens served from the provider's prompt
    cache, ``None`` where the model has no cache discount (cached tokens then cost ``input``).
    ``batch_cached_input`` is the same through the Batch API. ``source`` says where the figures
    came from: ``genai-prices``, ``rowprompt`` (:data:`FALLBACK_PRICES`) or the user's file.
    """

    input: float
    output: float
    cached_input: float | None
    batch_input: float
    batch_output: float
    batch_cached_input: float | None = None
    source: str = "genai-prices"


# OpenAI prices for models genai-prices does not know (provider "openai" only). Figures from
# the OpenAI API pricing page (https://openai.com/api/pricing, "Standard" and "Batch" tiers,
# text tokens, USD per 1M), as of 2025. They agree with genai-prices 0.2.3, which wins where it
# knows the model (a test checks the agreement); the table is the safety net that keeps the
# models the docs and demos use priced even if a genai-prices release (or an updated snapshot)
# renames or drops them. Add rows here for OpenAI models it lacks.
FALLBACK_PRICES: dict[str, Price] = {
    "gpt-4o-mini": Price(0.15, 0.60, 0.075, 0.075, 0.30, 0.075, "rowprompt"),
    "gpt-4o": Price(2.50, 10.00, 1.25, 1.25, 5.00, 1.25, "rowprompt"),
    "gpt-4.1": Price(2.00, 8.00, 0.50, 1.00, 4.00, 0.50, "rowprompt"),
    "gpt-4.1-mini": Price(0.40, 1.60, 0.10, 0.20, 0.80, 0.10, "rowprompt"),
    "gpt-4.1-nano": Price(0.10, 0.40, 0.025, 0.05, 0.20, 0.025, "rowprompt"),
    "text-embedding-3-small": Price(0.02, 0.0, None, 0.01, 0.0, None, "rowprompt"),
    "text-embedding-3-large": Price(0.13, 0.0, None, 0.065, 0.0, None, "rowprompt"),
    "text-embedding-ada-002": Price(0.10, 0.0, None, 0.05, 0.0, None, "rowprompt"),
}

_SANDBOX_SUFFIX = re.compile(r"-sandbox$", re.IGNORECASE)
_DATE_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})$")
# Providers whose models are priced as another provider's.
_PROVIDER_ALIASES = {"sandbox": "openai", "gemini": "google"}  # genai-prices' provider id

# The per-row fast path: (model, provider) as the caller spells them -> resolved price, valid
# for the ROWPROMPT_PRICES value in _fast_env.
_FAST: dict[tuple[str, str], Price | None] = {}
_fast_env: str | None = None


def normalise_model(model: str) -> str:
    """The name a model is priced under: trimmed, lower case, without a ``-sandbox`` suffix."""
    return _SANDBOX_SUFFIX.sub("", model.strip()).lower()


def price_for(model: str, provider: str = "openai") -> Price | None:
    """The prices of ``model`` at ``provider``, or ``None`` when nobody prices it.

    Resolved once per model, provider and ``ROWPROMPT_PRICES`` value, then cached. Each call
    reads ``ROWPROMPT_PRICES`` afresh (and forgets what :func:`cost_usd` cached when it has
    changed). Raises :class:`~rowprompt.errors.ConfigError` when that file is unreadable or
    malformed.
    """
    global _fast_env
    prices_file = os.environ.get(PRICES_ENV) or None
    if prices_file != _fast_env:
        _FAST.clear()
        _fast_env = prices_file
    price = _resolve(model, provider, prices_file)
    _FAST[(model, provider)] = price
    return price


def cost_usd(
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    *,
    cached_tokens: int = 0,
    batch: bool = False,
    provider: str = "openai",
) -> float | None:
    """What one request cost in USD, or ``None`` when the model's price is unknown.

    ``prompt_tokens`` includes ``cached_tokens``, as in OpenAI's usage object; the cached part
    is charged at the cached-input price where the model has one. Built to be called once per
    row: after the first call for a model it is a dictionary look-up and a few multiplications
    (it does not re-read ``ROWPROMPT_PRICES``; :func:`price_for` and :func:`clear_cache` do).
    """
    try:
        price = _FAST[(model, provider)]
    except KeyError:
        price = price_for(model, provider)
    if price is None:
        return None
    if batch:
        input_price, output_price = price.batch_input, price.batch_output
    else:
        input_price, output_price = price.input, price.output
    if cached_tokens <= 0:
        return (prompt_tokens * input_price + completion_tokens * output_price) * _PER_TOKEN
    cached_price = price.batch_cached_input if batch else price.cached_input
    if cached_price is None:
        cached_price = input_price
    cached = cached_tokens if cached_tokens < prompt_tokens else prompt_tokens
    total = (
        (prompt_tokens - cached) * input_price
        + cached * cached_price
        + completion_tokens * output_price
    )
    return total * _PER_TOKEN


def require_price(model: str, provider: str = "openai", *, needed_by: str = "--budget") -> Price:
    """The price of ``model``, or a one-line ConfigError naming the model and the fix.

    A spending cap needs a price: without one every request's cost is unknown, and a cap that
    cannot count lets everything through.
    """
    price = price_for(model, provider)
    if price is None:
        raise ConfigError(
            f"{needed_by} needs a price for the model {model!r}, and none is known",
            hint=f'add [prices."{model}"] with input = and output = (USD per 1M tokens) to'
            " rowprompt.toml",
        )
    return price


def estimate_cost(
    model: str,
    prompt_tokens: int,
    max_completion_tokens: int,
    *,
    batch: bool,
    provider: str = "openai",
) -> float | None:
    """An upper bound in USD before spending: every prompt token uncached, every answer full.

    ``None`` when the model's price is unknown.
    """
    return cost_usd(model, prompt_tokens, max_completion_tokens, batch=batch, provider=provider)


def clear_cache() -> None:
    """Forget resolved prices and the user's price file (after editing it, and in tests)."""
    global _fast_env
    _FAST.clear()
    _fast_env = None
    _resolve.cache_clear()
    _load_user_prices.cache_clear()


# -- resolution, once per (model, provider, prices file) -------------------------------------


@cache
def _resolve(model: str, provider: str, prices_file: str | None) -> Price | None:
    name = normalise_model(model)
    provider_id = provider.strip().lower()
    provider_id = _PROVIDER_ALIASES.get(provider_id, provider_id)
    if prices_file:
        found = _lookup(_load_user_prices(prices_file), name)
        if found is not None:
            return found
    found = _lookup(_CONFIGURED, name)
    if found is not None:
        return found
    found = _from_genai_prices(name, provider_id)
    if found is not None:
        return found
    if provider_id == "openai":
        return _lookup(FALLBACK_PRICES, name)
    return None


def _lookup(table: dict[str, Price], name: str) -> Price | None:
    if name in table:
        return table[name]
    undated = _DATE_SUFFIX.sub("", name)
    return table.get(undated)


def _from_genai_prices(model: str, provider_id: str) -> Price | None:
    """Resolve a Price through genai-prices' calculator, probing one unit at a time."""
    try:
        from genai_prices import Usage, calc_price
    except ImportError:  # pragma: no cover - a declared dependency
        return None

    # Probe with 1,000 tokens, well under any long-context tier threshold, and scale to 1M.
    probe = 1000
    scale = Decimal(1_000_000 // probe)

    def rate(batch: bool, **usage: int) -> tuple[Decimal, bool]:
        context = {"processing": "batch"} if batch else None
        result = calc_price(Usage(**usage), model, provider_id=provider_id, price_context=context)
        has_cache_price = getattr(result.model_price, "cache_read_mtok", None) is not None
        return result.total_price * scale, has_cache_price

    try:
        rt_in, has_cache = rate(False, input_tokens=probe)
        rt_out, _ = rate(False, input_tokens=0, output_tokens=probe)
        rt_cached, _ = rate(False, input_tokens=probe, cache_read_tokens=probe)
        b_in, _ = rate(True, input_tokens=probe)
        b_out, _ = rate(True, input_tokens=0, output_tokens=probe)
        b_cached, _ = rate(True, input_tokens=probe, cache_read_tokens=probe)
    except (LookupError, ValueError, TypeError, ArithmeticError):
        return None

    if (b_in, b_out) == (rt_in, rt_out):
        # No batch variant in the data: the OpenAI, Anthropic and Azure batch APIs charge half.
        b_in, b_out, b_cached = rt_in / 2, rt_out / 2, rt_cached / 2
    return Price(
        input=float(rt_in),
        output=float(rt_out),
        cached_input=float(rt_cached) if has_cache else None,
        batch_input=float(b_in),
        batch_output=float(b_out),
        batch_cached_input=float(b_cached) if has_cache else None,
        source="genai-prices",
    )


_USER_KEYS = frozenset(
    {"input", "output", "cached_input", "batch_input", "batch_output", "batch_cached_input"}
)


@cache
def _load_user_prices(path: str) -> dict[str, Price]:
    """Read the ``ROWPROMPT_PRICES`` file into a table keyed by normalised model name."""
    where = f"the price file {PRICES_ENV}={path}"
    try:
        raw: Any = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {where}: {exc.strerror or exc}", hint=_HINT) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where} is not valid JSON: {exc}", hint=_HINT) from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must hold a JSON object of models", hint=_HINT)
    return {
        normalise_model(str(model)): _user_price(entry, f"{where}, model {model!r}", path)
        for model, entry in raw.items()
    }


_HINT = (
    'Write a JSON object such as {"my-model": {"input": 0.5, "output": 1.5}} '
    f"(USD per 1M tokens), or unset {PRICES_ENV}."
)


def _user_price(entry: Any, where: str, source: str) -> Price:
    """One model's entry of the user's price file, checked, with batch defaulting to half."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: the entry must be an object", hint=_HINT)
    if "input" not in entry or "output" not in entry:
        raise ConfigError(f"{where}: the entry needs 'input' and 'output'", hint=_HINT)
    unknown = set(entry) - _USER_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}", hint=_HINT)
    values: dict[str, float | None] = {}
    for key in _USER_KEYS:
        value = entry.get(key)
        if value is None:
            values[key] = None
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise ConfigError(f"{where}: {key} must be a number >= 0, not {value!r}", hint=_HINT)
        values[key] = float(value)
    input_price = values["input"]
    output_price = values["output"]
    if input_price is None or output_price is None:
        raise ConfigError(f"{where}: 'input' and 'output' must be numbers", hint=_HINT)
    cached = values["cached_input"]
    batch_input = values["batch_input"]
    batch_output = values["batch_output"]
    batch_cached = values["batch_cached_input"]
    return Price(
        input=input_price,
        output=output_price,
        cached_input=cached,
        batch_input=input_price / 2 if batch_input is None else batch_input,
        batch_output=output_price / 2 if batch_output is None else batch_output,
        batch_cached_input=(
            batch_cached if batch_cached is not None else None if cached is None else cached / 2
        ),
        source=source,
    )


# -- prices from rowprompt.toml ---------------------------------------------------------------
_CONFIGURED: dict[str, Price] = {}


def configure_prices(entries: dict[str, Any], source: str) -> None:
    """Prices from ``rowprompt.toml`` (``[prices."model"]`` tables), checked like the JSON file.

    They come after ``ROWPROMPT_PRICES`` and before genai-prices.
    """
    table = {
        normalise_model(str(model)): _user_price(entry, f"{source}, model {model!r}", source)
        for model, entry in entries.items()
    }
    if table != _CONFIGURED:
        _CONFIGURED.clear()
        _CONFIGURED.update(table)
        _FAST.clear()
        _resolve.cache_clear()
