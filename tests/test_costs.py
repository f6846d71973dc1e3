"""Prices and costs: genai-prices figures, name normalisation, the user's price file."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rowprompt import costs
from rowprompt.costs import (
    FALLBACK_PRICES,
    PRICES_ENV,
    Price,
    clear_cache,
    cost_usd,
    estimate_cost,
    price_for,
)
from rowprompt.errors import ConfigError

M = 1_000_000


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(PRICES_ENV, raising=False)
    clear_cache()
    yield
    clear_cache()


def write_prices(tmp_path: Path, data: object, name: str = "prices.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("model", "rt_in", "rt_out", "b_in", "b_out"),
    [
        ("gpt-4o-mini", 0.15, 0.60, 0.075, 0.30),
        ("gpt-4o", 2.50, 10.00, 1.25, 5.00),
        ("gpt-4.1-mini", 0.40, 1.60, 0.20, 0.80),
    ],
)
def test_known_prices(model: str, rt_in: float, rt_out: float, b_in: float, b_out: float) -> None:
    price = price_for(model)
    assert price is not None
    assert price.input == pytest.approx(rt_in)
    assert price.output == pytest.approx(rt_out)
    assert price.batch_input == pytest.approx(b_in)
    assert price.batch_output == pytest.approx(b_out)
    assert price.source == "genai-prices"
    assert cost_usd(model, M, 0) == pytest.approx(rt_in)
    assert cost_usd(model, 0, M) == pytest.approx(rt_out)
    assert cost_usd(model, M, M, batch=True) == pytest.approx(b_in + b_out)
    assert cost_usd(model, 1000, 10) == pytest.approx((1000 * rt_in + 10 * rt_out) / M)


def test_cached_input_is_cheaper_and_part_of_prompt_tokens() -> None:
    price = price_for("gpt-4o-mini")
    assert price is not None and price.cached_input == pytest.approx(0.075)
    # 1M prompt tokens of which half were cached: 0.5 * 0.15 + 0.5 * 0.075
    assert cost_usd("gpt-4o-mini", M, 0, cached_tokens=M // 2) == pytest.approx(0.1125)
    # more cached than prompt tokens is clamped, never negative
    assert cost_usd("gpt-4o-mini", 1000, 0, cached_tokens=5000) == pytest.approx(1000 * 0.075 / M)


@pytest.mark.parametrize(
    "name",
    [
        "gpt-4o-mini-2024-07-18",
        "gpt-4o-mini-sandbox",
        "gpt-4o-mini-2024-07-18-sandbox",
        "  GPT-4o-mini  ",
    ],
)
def test_name_variants_price_as_the_base_model(name: str) -> None:
    assert price_for(name) == price_for("gpt-4o-mini")
    assert cost_usd(name, M, M, batch=True) == pytest.approx(0.375)


def test_sandbox_provider_prices_as_openai() -> None:
    assert price_for("gpt-4.1-mini-sandbox", provider="sandbox") == price_for("gpt-4.1-mini")


def test_unknown_model_is_none() -> None:
    assert price_for("no-such-model-xyz") is None
    assert price_for("no-such-model-xyz-sandbox") is None
    assert cost_usd("no-such-model-xyz", 10, 10) is None
    assert estimate_cost("no-such-model-xyz", 10, 10, batch=True) is None
    assert price_for("gpt-4o-mini", provider="no-such-provider") is None


def test_a_cap_on_an_unpriced_model_names_the_model_and_the_fix() -> None:
    assert costs.require_price("gpt-4o-mini-sandbox", "sandbox") == price_for("gpt-4o-mini")
    with pytest.raises(ConfigError) as caught:
        costs.require_price("no-such-model-xyz")
    line = caught.value.one_line()
    assert "--budget" in line and "'no-such-model-xyz'" in line
    assert '[prices."no-such-model-xyz"]' in line and "rowprompt.toml" in line


def test_batch_is_half_where_genai_prices_has_no_batch_variant() -> None:
    # genai-prices knows Anthropic's prices but not its Message Batches discount.
    price = price_for("claude-3-5-haiku-latest", provider="anthropic")
    assert price is not None
    assert price.batch_input == pytest.approx(price.input / 2)
    assert price.batch_output == pytest.approx(price.output / 2)
    emb = price_for("text-embedding-3-small")
    assert emb is not None and emb.batch_input == pytest.approx(0.01)


def test_estimate_is_an_upper_bound() -> None:
    assert estimate_cost("gpt-4o-mini", 2000, 100, batch=False) == pytest.approx(
        (2000 * 0.15 + 100 * 0.60) / M
    )
    assert estimate_cost("gpt-4o-mini", 2000, 100, batch=True) == pytest.approx(
        (2000 * 0.075 + 100 * 0.30) / M
    )
    estimate = estimate_cost("gpt-4o-mini", 2000, 100, batch=False)
    actual = cost_usd("gpt-4o-mini", 2000, 7, cached_tokens=1024)
    assert estimate is not None and actual is not None and actual < estimate


def test_fallback_table_agrees_with_genai_prices() -> None:
    for model, fallback in FALLBACK_PRICES.items():
        known = price_for(model)
        assert known is not None, model
        for field in ("input", "output", "batch_input", "batch_output"):
            assert getattr(fallback, field) == pytest.approx(getattr(known, field)), (model, field)


def test_fallback_table_used_when_genai_prices_does_not_know(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(costs, "_from_genai_prices", lambda model, provider: None)
    price = price_for("gpt-4o-mini-2024-07-18-sandbox")
    assert price is not None and price.source == "rowprompt"
    assert price.batch_input == pytest.approx(0.075)
    assert price_for("no-such-model-xyz") is None


def test_user_price_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_prices(
        tmp_path,
        {
            "my-local-model": {"input": 1.0, "output": 3.0},
            "gpt-4o-mini": {"input": 0.2, "output": 0.8, "batch_input": 0.05, "batch_output": 0.1},
        },
    )
    monkeypatch.setenv(PRICES_ENV, str(path))
    mine = price_for("my-local-model")
    assert mine == Price(1.0, 3.0, None, 0.5, 1.5, None, source=str(path))
    assert cost_usd("my-local-model-sandbox", M, M, batch=True) == pytest.approx(2.0)
    assert cost_usd("my-local-model-2025-01-01", M, 0) == pytest.approx(1.0)
    # the user's file wins over genai-prices
    assert cost_usd("gpt-4o-mini", M, M) == pytest.approx(1.0)
    assert cost_usd("gpt-4o-mini", M, M, batch=True) == pytest.approx(0.15)
    # models the file does not name still come from genai-prices
    assert cost_usd("gpt-4o", M, 0) == pytest.approx(2.5)


def test_changing_the_price_file_is_seen_by_price_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cost_usd("gpt-4o-mini", M, 0) == pytest.approx(0.15)
    path = write_prices(tmp_path, {"gpt-4o-mini": {"input": 9.0, "output": 9.0}})
    monkeypatch.setenv(PRICES_ENV, str(path))
    assert price_for("gpt-4o-mini") is not None
    assert cost_usd("gpt-4o-mini", M, 0) == pytest.approx(9.0)
    monkeypatch.delenv(PRICES_ENV)
    clear_cache()
    assert cost_usd("gpt-4o-mini", M, 0) == pytest.approx(0.15)


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[1, 2]",
        json.dumps({"m": 3}),
        json.dumps({"m": {"input": 1}}),
        json.dumps({"m": {"input": "cheap", "output": 1}}),
        json.dumps({"m": {"input": -1, "output": 1}}),
        json.dumps({"m": {"input": 1, "output": 1, "inptu_batch": 1}}),
    ],
)
def test_bad_price_file_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str
) -> None:
    path = tmp_path / "prices.json"
    path.write_text(content, encoding="utf-8")
    monkeypatch.setenv(PRICES_ENV, str(path))
    with pytest.raises(ConfigError, match=PRICES_ENV):
        price_for("m")


def test_missing_price_file_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PRICES_ENV, str(tmp_path / "absent.json"))
    with pytest.raises(ConfigError, match=r"absent\.json"):
        cost_usd("gpt-4o-mini", 1, 1)


def test_cost_per_row_is_cheap() -> None:
    cost_usd("gpt-4o-mini", 1, 1)  # resolve once
    started = time.perf_counter()
    for _ in range(200_000):
        cost_usd("gpt-4o-mini", 523, 3, batch=True)
    # about 0.15 s here; a million rows must stay well under two seconds
    assert time.perf_counter() - started < 2.0
