"""The cost before the spending: exact prompt tokens, a pilot that measures, the summary."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import pandas as pd
import pytest

import rowprompt
from rowprompt.sandbox import Sandbox
from tests.helpers import RP, fast_config, run_cli

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


# -- the planner's one-line reasons, warnings and batch history -------------------------------
def texts(path: Path, n: int) -> Path:
    pd.DataFrame({"text": [f"a short review number {i}" for i in range(n)]}).to_csv(
        path, index=False
    )
    return path


def line(output: str, label: str) -> str:
    found = [x for x in output.splitlines() if x.startswith(label)]
    assert found, output
    return found[0]


def test_run_says_why_it_chose_its_mode(sandbox: Sandbox, tmp_path: Path) -> None:
    src = texts(tmp_path / "in.csv", 3)
    result = run_cli("run", str(src), "--prompt", "Say {{ text }}", "--provider", "sandbox",
                     "--base-url", sandbox.base_url, "--home", str(tmp_path / "h"),
                     "--mode", "auto", "--no-report")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "realtime: a small job (3 rows <= 200)" in result.stderr


def test_estimate_explains_a_deadline_and_shows_batch_history(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    src, home = texts(tmp_path / "in.csv", 1200), str(tmp_path / "h")
    common = ["--prompt", "Say {{ text }}", "--provider", "sandbox", "--home", home]
    result = run_cli("estimate", str(src), *common, "--deadline", "1h", "--rpm", "600")
    assert result.returncode == 0, result.stderr
    advice = line(result.stdout, "advice:")
    # 2 min of real time at 600/min: batches first, real time keeps the deadline.
    assert "batch: 1,200 rows and the deadline leaves" in advice and "deadline" in advice
    assert "no batch history here" in line(result.stdout, "time, batch:")
    assert "warning:" not in result.stdout
    # Once batches of this model came back here, the estimate says how long they took.
    rowprompt.run(pd.DataFrame({"text": ["x", "y"]}), prompt="Say {{ text }}",
                  provider="sandbox", base_url=sandbox.base_url, home=home, mode="batch",
                  poll_interval=0.2)  # fmt: skip
    again = run_cli("estimate", str(src), *common, "--deadline", "1h")
    assert "(p50/p90 of 1 batch of this model here)" in line(again.stdout, "time, batch:")


def test_a_24h_deadline_on_10k_rows_goes_batch(tmp_path: Path) -> None:
    src = texts(tmp_path / "in.csv", 10_000)
    result = run_cli("estimate", str(src), "--prompt", "Say {{ text }}", "--provider",
                     "sandbox", "--home", str(tmp_path / "h"), "--rpm", "600",
                     "--deadline", "24h")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert line(result.stdout, "advice:").startswith("advice:            batch: 10,000 rows")


def test_estimate_plans_only_the_rows_it_would_send(sandbox: Sandbox, tmp_path: Path) -> None:
    frame = pd.DataFrame({"text": [f"row {i}" for i in range(300)]})
    options = {"provider": "sandbox", "base_url": sandbox.base_url, "home": str(tmp_path / "h")}
    assert rowprompt.estimate(frame, prompt="Say {{ text }}", **options).mode == "hybrid"
    rowprompt.run(frame.head(150), prompt="Say {{ text }}", mode="realtime", **options)
    estimate = rowprompt.estimate(frame, prompt="Say {{ text }}", **options)
    assert estimate.rows_cached == 150
    assert estimate.advice.startswith("realtime: a small job (150 rows <= 200)"), estimate.advice


@pytest.mark.parametrize("limit", [["--rpm", "60"], ["--tpm", "1500"]])
def test_real_time_mode_says_up_front_a_deadline_it_cannot_meet(
    limit: list[str], sandbox: Sandbox, tmp_path: Path
) -> None:
    src = texts(tmp_path / "in.csv", 200)
    args = [str(src), "--prompt", "Say {{ text }}", "--provider", "sandbox", "--home",
            str(tmp_path / "h"), "--mode", "realtime", "--max-tokens", "5", "--deadline", "1m",
            *limit]  # fmt: skip
    estimate = run_cli("estimate", *args)
    warning = line(estimate.stdout, "warning:")
    # 200 rows in the minute less the second or two it took to get there.
    assert needs(warning) in range(200, 215), warning
    assert "the rate limit allows" in warning and "the job will finish late" in warning
    # The run says it before its first request, then is stopped (it would take minutes).
    with subprocess.Popen(
        [RP, "run", *args, "--base-url", sandbox.base_url, "--no-report"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stderr is not None
        seen = []
        for text in proc.stderr:
            seen.append(text)
            if "cannot be met" in text:
                break
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    said = [x for x in seen if "cannot be met" in x]
    assert said and needs(said[0]) in range(200, 215), seen


def needs(text: str) -> int:
    found = re.search(r"the deadline cannot be met: it needs (\d+) rows/min", text)
    assert found is not None, text
    return int(found[1])
