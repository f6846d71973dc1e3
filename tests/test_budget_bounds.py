"""``--budget`` is a hard bound: what the sandbox itself billed never passes it.

Spend is counted from the sandbox's own usage records (its per-second token series for real
time, each batch's ``usage`` for batch), priced at the model's published price: the user's
view of the bill, not rowprompt's own counters. The cases are the ones that once leaked:
repairs asked after the rows, answers longer than the reserved allowance, and the pilot.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from openai import OpenAI

import rowprompt
from rowprompt import costs
from rowprompt.engine.budget import BUDGET_OUTPUT_CAP
from rowprompt.errors import ConfigError
from rowprompt.sandbox import Sandbox
from tests.helpers import fast_config

MODEL = "gpt-4o-mini"
FRAME = pd.DataFrame({"text": [f"row number {i}" for i in range(40)]})


def sandbox_spend(sb: Sandbox, model: str = MODEL) -> float:
    """USD the sandbox's own usage records add up to, real time and batch."""
    stats = sb.stats()
    prompt = sum(s["prompt_tokens"] for s in stats["tokens_per_second"])
    completion = sum(s["completion_tokens"] for s in stats["tokens_per_second"])
    batch_in = batch_out = 0
    for batch in OpenAI(base_url=sb.base_url, api_key="sk-test").batches.list(limit=100):
        if batch.usage is not None:
            batch_in += batch.usage.input_tokens
            batch_out += batch.usage.output_tokens
    realtime = costs.cost_usd(model, prompt, completion)
    batch = costs.cost_usd(model, batch_in, batch_out, batch=True)
    assert realtime is not None and batch is not None
    return realtime + batch


def run(sb: Sandbox, home: Path, **kwargs: object) -> pd.DataFrame:
    settings: dict[str, object] = {
        "prompt": "Judge: {{ text }}",
        "provider": "sandbox",
        "base_url": sb.base_url,
        "home": str(home),
        "poll_interval": 0.1,
    }
    settings.update(kwargs)
    return rowprompt.run(FRAME, **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["realtime", "batch"])
def test_repairs_stay_under_the_budget(tmp_path: Path, mode: str) -> None:
    budget = 0.0001
    # Every answer is unusable as an integer, so every row asks for a repair.
    with Sandbox(fast_config(rules=[{"pattern": ".", "answer": "3 or 4"}])) as sb:
        options = {"mode": mode, "max_tokens": 20, "output_type": "integer", "structured": False}
        out = run(sb, tmp_path / "h", budget=budget, **options)
        spent = sandbox_spend(sb)
        # The same job with room in the budget asks the held-back rows (and the rest) again.
        again = run(sb, tmp_path / "h", budget=1.0, **options)
    assert 0 < spent <= budget
    # The table's own figures agree with the bill.
    assert float(out["_cost_usd"].fillna(0).sum()) == pytest.approx(spent, rel=1e-6)
    unparsed = out[out["_status"] == "parse_error"]
    assert len(unparsed) > 0
    held = unparsed[unparsed["_error"].str.contains("repair skipped: budget", regex=False)]
    assert len(held) > 0, list(unparsed["_error"])
    assert all(raw == "3 or 4" for raw in held["_raw"])
    assert all("more than one number" in error for error in held["_error"])
    # Only an answer from a repair clears the mark: every held-back row was asked again.
    assert list(again["_status"]) == ["parse_error"] * len(FRAME)
    assert not any("repair skipped" in error for error in again["_error"])


@pytest.mark.parametrize("mode", ["realtime", "batch"])
def test_long_answers_without_max_tokens_stay_under_the_budget(tmp_path: Path, mode: str) -> None:
    budget = 0.0005
    long_answer = " ".join(["word"] * 1500)
    frame = FRAME.head(20)
    with Sandbox(fast_config(rules=[{"pattern": ".", "answer": long_answer}])) as sb:
        out = rowprompt.run(frame, prompt="Say {{ text }}", provider="sandbox",
                            base_url=sb.base_url, mode=mode, home=str(tmp_path / "h"),
                            budget=budget, poll_interval=0.1)  # fmt: skip
        spent = sandbox_spend(sb)
    assert 0 < spent <= budget
    answered = out[out["_status"] == "truncated"]
    assert len(answered) > 0 and (out["_status"] == "skipped").sum() > 0
    # The cap was sent: the answers were cut there, not at 1,500 tokens.
    assert set(answered["_completion_tokens"]) == {BUDGET_OUTPUT_CAP}


def test_a_budget_on_a_model_with_no_price_is_refused_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    with Sandbox(fast_config(models=[MODEL, "acme-7b"])) as sb:
        with pytest.raises(ConfigError) as caught:
            run(sb, tmp_path / "h", model="acme-7b", mode="realtime", budget=1.0)
        assert len(sb.requests()) == 0
    line = caught.value.one_line()
    assert "acme-7b" in line and '[prices."acme-7b"]' in line and "rowprompt.toml" in line


def test_the_pilot_stays_under_the_budget(tmp_path: Path) -> None:
    budget = 0.0001
    with Sandbox(fast_config()) as sb:
        estimate = rowprompt.estimate(FRAME, prompt="Say {{ text }}", provider="sandbox",
                                      base_url=sb.base_url, home=str(tmp_path / "h"),
                                      max_tokens=50, budget=budget, pilot=40)  # fmt: skip
        spent = sandbox_spend(sb)
        asked = len(sb.requests())
    assert 0 < spent <= budget
    assert 0 < asked < 40
    assert estimate.rows == 40
