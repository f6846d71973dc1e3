"""The cost before the spending, at the command line: the confirmation at a terminal,
``--dry-run``, the budget's lines (the cap, a missing price, how much more would finish),
and the approximate label for a tokenizer nobody ships."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from rowprompt.sandbox import Sandbox
from tests.helpers import RP, fast_config, run_cli

PROMPT = "Say {{ text }}"
# Prices that make a handful of tokens cost dollars, so four printed decimals are exact
# enough to act on.
DEAR = '[prices."{model}"]\ninput = 1000.0\noutput = 2000.0\n'


def table(path: Path, n: int) -> Path:
    pd.DataFrame({"text": [f"row {i}" for i in range(n)]}).to_csv(path, index=False)
    return path


def common(sb: Sandbox, home: Path, *, no_report: bool = True) -> list[str]:
    """The options the commands here share (``estimate`` has no ``--no-report``)."""
    return ["--prompt", PROMPT, "--provider", "sandbox", "--base-url", sb.base_url,
            "--home", str(home), *(["--no-report"] if no_report else [])]  # fmt: skip


def chat_requests(sb: Sandbox) -> int:
    return len([r for r in sb.requests() if r.get("last_user_message")])


# -- the confirmation at a terminal ------------------------------------------------------------
def run_in_a_terminal(
    args: list[str], answer: bytes | None, timeout: float = 60
) -> tuple[int, str]:
    """Run the CLI with a pty as its terminal; answer the first question with ``answer``."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    proc = subprocess.Popen([RP, *args], stdin=slave, stdout=slave, stderr=slave, env=env,
                            close_fds=True)  # fmt: skip
    os.close(slave)
    seen = b""
    answered = answer is None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
            if not answered and b"Continue?" in seen:
                assert answer is not None
                os.write(master, answer)
                answered = True
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return code, seen.decode(errors="replace")


def test_a_no_at_the_terminal_sends_nothing(tmp_path: Path) -> None:
    src = table(tmp_path / "in.csv", 3)
    with Sandbox(fast_config()) as sb:
        args = ["run", str(src), *common(sb, tmp_path / "h"), "--mode", "realtime",
                "--confirm-over", "0"]  # fmt: skip
        code, shown = run_in_a_terminal(args, b"n\n")
        assert chat_requests(sb) == 0
    # A small amount is shown as one, not as "$0.00".
    assert re.search(r"This run may cost up to \$0\.0*[1-9]\d* \(3 rows, realtime\)", shown)
    assert code == 1, shown
    assert "not confirmed: nothing was sent" in shown and "bug" not in shown


def test_a_yes_at_the_terminal_runs(tmp_path: Path) -> None:
    src = table(tmp_path / "in.csv", 3)
    with Sandbox(fast_config()) as sb:
        args = ["run", str(src), *common(sb, tmp_path / "h"), "--mode", "realtime",
                "--confirm-over", "0"]  # fmt: skip
        code, shown = run_in_a_terminal(args, b"y\n")
        assert code == 0, shown
        assert chat_requests(sb) == 3


def test_yes_and_a_higher_threshold_do_not_ask(tmp_path: Path) -> None:
    src = table(tmp_path / "in.csv", 3)
    with Sandbox(fast_config()) as sb:
        for extra in (["--confirm-over", "0", "--yes"], ["--confirm-over", "5"]):
            code, shown = run_in_a_terminal(
                ["run", str(src), *common(sb, tmp_path / "h"), "--mode", "realtime", *extra],
                None,
            )
            assert code == 0, shown
            assert "Continue?" not in shown
        assert chat_requests(sb) == 3  # the second run found every answer already there


# -- --dry-run -------------------------------------------------------------------------------
def test_dry_run_sends_nothing_and_creates_no_job(tmp_path: Path) -> None:
    src = table(tmp_path / "in.csv", 4)
    out = tmp_path / "out.csv"
    home = tmp_path / "h"
    with Sandbox(fast_config()) as sb:
        result = run_cli("run", str(src), *common(sb, home), "--dry-run", "--output", str(out))
        assert result.returncode == 0, result.stderr
        assert len(sb.requests()) == 0 and sb.stats()["batches_created"] == 0
    assert "rows:              4" in result.stdout and "cost, real time:" in result.stdout
    assert not out.exists()
    assert run_cli("jobs", "--home", str(home)).stdout.strip() == "no jobs yet"


# -- the budget's lines ------------------------------------------------------------------------
def test_the_budget_cap_is_said_in_one_line(tmp_path: Path) -> None:
    src = table(tmp_path / "in.csv", 2)
    with Sandbox(fast_config()) as sb:
        result = run_cli("run", str(src), *common(sb, tmp_path / "h"), "--mode", "realtime",
                         "--budget", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    said = [line for line in (result.stdout + result.stderr).splitlines() if "capped at" in line]
    assert said == [
        "--budget: each answer is capped at 256 tokens so spend cannot pass the budget;"
        " longer answers come back truncated (set --max-tokens to choose the cap)"
    ]
    # With --max-tokens the user chose the cap: nothing to say.
    with Sandbox(fast_config()) as sb:
        again = run_cli("run", str(src), *common(sb, tmp_path / "h2"), "--mode", "realtime",
                        "--budget", "1", "--max-tokens", "30")  # fmt: skip
    assert "capped at" not in again.stdout + again.stderr


def test_a_model_with_no_price_gets_a_one_line_fix_and_then_runs_under_the_budget(
    tmp_path: Path,
) -> None:
    src = table(tmp_path / "in.csv", 10)
    config = tmp_path / "rowprompt.toml"
    with Sandbox(fast_config(models=["gpt-4o-mini", "acme-7b"])) as sb:
        args = ["run", str(src), *common(sb, tmp_path / "h"), "--model", "acme-7b",
                "--mode", "realtime", "--budget", "0.2", "--max-tokens", "20"]  # fmt: skip
        refused = run_cli(*args)
        assert refused.returncode != 0
        lines = [line for line in refused.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: "), refused.stderr
        assert "acme-7b" in lines[0] and '[prices."acme-7b"]' in lines[0]
        assert "rowprompt.toml" in lines[0]
        assert len(sb.requests()) == 0
        # The fix the line names works.
        config.write_text(DEAR.format(model="acme-7b"), encoding="utf-8")
        done = run_cli(*args, env={"ROWPROMPT_CONFIG": str(config)})
        assert done.returncode == 0, done.stderr
        tokens = sb.stats()["tokens_per_second"]
        prompt = sum(s["prompt_tokens"] for s in tokens)
        completion = sum(s["completion_tokens"] for s in tokens)
    spent = (prompt * 1000.0 + completion * 2000.0) / 1e6
    assert 0 < spent <= 0.2
    frame = pd.read_csv(tmp_path / "in.answers.csv")
    assert (frame["_status"] == "skipped").sum() > 0


def _money_in(line: str) -> float:
    found = re.search(r"\$([0-9,]+\.[0-9]+)", line)
    assert found, line
    return float(found.group(1).replace(",", ""))


def test_the_budget_says_how_much_more_would_finish_and_that_is_enough(tmp_path: Path) -> None:
    src = table(tmp_path / "in.csv", 12)
    config = tmp_path / "rowprompt.toml"
    config.write_text(DEAR.format(model="gpt-4o-mini"), encoding="utf-8")
    env = {"ROWPROMPT_CONFIG": str(config)}
    with Sandbox(fast_config()) as sb:
        args = ["run", str(src), *common(sb, tmp_path / "h"), "--mode", "realtime",
                "--max-tokens", "20", "--concurrency", "4"]  # fmt: skip
        first = run_cli(*args, "--budget", "0.2", env=env)
        assert first.returncode == 0, first.stderr
        more = [line for line in first.stdout.splitlines() if "more would finish" in line]
        assert len(more) == 1, first.stdout
        short = _money_in(more[0])
        assert short > 0
        frame = pd.read_csv(tmp_path / "in.answers.csv")
        spent = float(frame["_cost_usd"].fillna(0).sum())
        skipped = int((frame["_status"] == "skipped").sum())
        assert 0 < skipped < 12
        # Each held-back row's worst case: prompt and 20 answer tokens, at these prices.
        assert short >= skipped * 20 * 2000.0 / 1e6
        # Raising the budget by that much (plus the rounding of four printed decimals)
        # finishes the job, and asks only the rows held back.
        before = chat_requests(sb)
        second = run_cli(*args, "--budget", f"{spent + short + 0.0001:.4f}", env=env)
        assert second.returncode == 0, second.stderr
        assert "more would finish" not in second.stdout
        assert chat_requests(sb) - before == skipped
    assert set(pd.read_csv(tmp_path / "in.answers.csv")["_status"]) == {"ok"}


# -- the approximate label ------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["estimate", "run --dry-run"])
def test_an_unknown_tokenizer_is_labelled_approximate(tmp_path: Path, command: str) -> None:
    src = table(tmp_path / "in.csv", 3)
    with Sandbox(fast_config(models=["gpt-4o-mini", "acme-7b"])) as sb:
        base = common(sb, tmp_path / "h", no_report=False)
        unknown = run_cli(*command.split(), str(src), *base, "--model", "acme-7b")
        known = run_cli(*command.split(), str(src), *base)
        assert len(sb.requests()) == 0
    assert unknown.returncode == 0 and known.returncode == 0, unknown.stderr + known.stderr
    line = next(x for x in unknown.stdout.splitlines() if x.startswith("prompt tokens:"))
    assert "approximate: the model's tokenizer is not known" in line
    line = next(x for x in known.stdout.splitlines() if x.startswith("prompt tokens:"))
    assert "(exact)" in line
