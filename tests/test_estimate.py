"""The cost before the spending: exact prompt tokens, a pilot that measures, the summary."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

import rowprompt
from rowprompt.sandbox import Sandbox
from tests.helpers import fast_config, run_cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PROMPT = (EXAMPLES / "sentiment.prompt").read_text(encoding="utf-8")


def test_prompt_tokens_equal_what_the_sandbox_counts(sandbox: Sandbox, tmp_path: Path) -> None:
    frame = pd.read_csv(EXAMPLES / "reviews.csv", dtype=str, keep_default_na=False).head(40)
    options = {"provider": "sandbox", "base_url": sandbox.base_url, "home": str(tmp_path / "h")}
    estimate = rowprompt.estimate(frame, prompt=PROMPT, max_tokens=5, **options)
    assert estimate.rows == 40 and estimate.rows_cached == 0 and estimate.tokens_exact
    assert len(sandbox.requests()) == 0  # an estimate spends nothing
    out = rowprompt.run(frame, prompt=PROMPT, max_tokens=5, mode="realtime", **options)
    assert estimate.prompt_tokens == int(out["_prompt_tokens"].sum())
    assert estimate.completion_tokens == 5 * 40  # the upper bound
    again = rowprompt.estimate(frame, prompt=PROMPT, max_tokens=5, **options)
    assert again.rows_cached == 40 and "cache" in again.advice


def test_a_pilot_measures_the_answers_within_a_quarter(tmp_path: Path) -> None:
    frame = pd.read_csv(EXAMPLES / "reviews.csv", dtype=str, keep_default_na=False)
    with Sandbox(fast_config(rules_file=EXAMPLES / "sandbox-rules.json")) as sb:
        options = {"provider": "sandbox", "base_url": sb.base_url, "home": str(tmp_path / "h")}
        estimate = rowprompt.estimate(frame, prompt=PROMPT, pilot=20, **options)
        assert len(sb.requests()) == 20
        out = rowprompt.run(frame, prompt=PROMPT, mode="realtime", no_cache=False, **options)
    # The pilot's rows come from the cache; compare the estimate with the rows it priced.
    asked = out[out["_via"] != "cache"]
    actual = int(asked["_completion_tokens"].sum())
    assert abs(estimate.completion_tokens - actual) <= 0.25 * actual
    assert estimate.cost_batch is not None and estimate.cost_realtime is not None
    assert estimate.cost_batch < estimate.cost_realtime


def test_the_cli_prints_the_estimate_and_the_summary(sandbox: Sandbox, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    pd.DataFrame({"text": ["a", "b", "c"]}).to_csv(src, index=False)
    common = ["--prompt", "Say {{ text }}", "--provider", "sandbox", "--base-url",
              sandbox.base_url, "--home", str(tmp_path / "h"), "--rpm", "60"]  # fmt: skip
    result = run_cli("estimate", str(src), *common)
    assert result.returncode == 0, result.stderr
    assert "cost, batch" in result.stdout and "time, real time:   0.1 min" in result.stdout
    run = run_cli("run", str(src), *common, "--mode", "batch", "--poll-interval", "0.2")
    assert run.returncode == 0, run.stderr
    assert "rows:   3 ok" in run.stdout and "batch mode saved $" in run.stdout
    rerun = run_cli("run", str(src), *common, "--mode", "realtime")
    assert "the cache saved $" in rerun.stdout


def test_prices_from_rowprompt_toml(sandbox: Sandbox, tmp_path: Path, monkeypatch: object) -> None:
    import pytest

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    from rowprompt import costs

    config = tmp_path / "rowprompt.toml"
    config.write_text('[prices."gpt-4o-mini"]\ninput = 1000.0\noutput = 2000.0\n')
    monkeypatch.setenv("ROWPROMPT_CONFIG", str(config))
    try:
        frame = pd.DataFrame({"text": ["a"]})
        out = rowprompt.run(frame, prompt="Say {{ text }}", provider="sandbox",
                            base_url=sandbox.base_url, mode="realtime",
                            home=str(tmp_path / "h"))  # fmt: skip
        tokens_in, tokens_out = int(out["_prompt_tokens"][0]), int(out["_completion_tokens"][0])
        expected = (tokens_in * 1000.0 + tokens_out * 2000.0) / 1e6
        assert out["_cost_usd"][0] == pytest.approx(expected)
    finally:
        costs._CONFIGURED.clear()
        costs.clear_cache()
