"""The cache, from the user's side: an edited prompt re-asks only the rows it changed, and
``--no-cache`` asks everything again."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from rowprompt.sandbox import Sandbox
from tests.helpers import fast_config, run_cli

ROWS = 10


def table(path: Path) -> Path:
    pd.DataFrame({"n": list(range(ROWS)), "text": [f"row {i}" for i in range(ROWS)]}).to_csv(
        path, index=False
    )
    return path


def asked(sb: Sandbox) -> list[str]:
    return [r["last_user_message"] for r in sb.requests() if r.get("last_user_message")]


def test_an_edited_prompt_asks_again_only_the_rows_whose_request_changed(tmp_path: Path) -> None:
    src = table(tmp_path / "in.csv")
    out = tmp_path / "out.csv"
    # The edit changes what rows 5-9 are asked; rows 0-4 render exactly as before.
    before = "Say {{ text }}"
    after = "{% if n | int < 5 %}Say {{ text }}{% else %}Tell me about {{ text }}{% endif %}"
    with Sandbox(fast_config()) as sb:
        for prompt in (before, after):
            result = run_cli("run", str(src), "--prompt", prompt, "--provider", "sandbox",
                             "--base-url", sb.base_url, "--mode", "realtime", "--output",
                             str(out), "--home", str(tmp_path / "h"), "--no-report")  # fmt: skip
            assert result.returncode == 0, result.stderr
        messages = asked(sb)
    assert len(messages) == ROWS + 5
    assert sorted(messages[ROWS:]) == sorted(f"Tell me about row {i}" for i in range(5, ROWS))
    frame = pd.read_csv(out, dtype=str)
    assert list(frame["_via"]) == ["cache"] * 5 + ["realtime"] * 5
    assert list(frame["_status"]) == ["ok"] * ROWS
    # Rows from the cache cost this job nothing; the summary says what they saved.
    assert frame["_cost_usd"].astype(float)[:5].sum() == 0
    assert "the cache saved $" in result.stdout


def test_no_cache_asks_every_row_of_another_job_again(tmp_path: Path) -> None:
    src = table(tmp_path / "in.csv")
    home = str(tmp_path / "h")
    with Sandbox(fast_config()) as sb:
        base = ["run", str(src), "--prompt", "Say {{ text }}", "--provider", "sandbox",
                "--base-url", sb.base_url, "--home", home, "--no-report"]  # fmt: skip
        first = run_cli(*base, "--mode", "realtime", "--output", str(tmp_path / "rt.csv"))
        assert first.returncode == 0, first.stderr
        # Another job (batch mode) over the same requests: from the cache by default...
        cached = run_cli(*base, "--mode", "batch", "--output", str(tmp_path / "b.csv"))
        assert cached.returncode == 0, cached.stderr
        assert set(pd.read_csv(tmp_path / "b.csv")["_via"]) == {"cache"}
        assert sb.stats()["batches_created"] == 0
        # ...and asked again with --no-cache (a third job: hybrid).
        fresh = run_cli(*base, "--mode", "hybrid", "--preview", "3", "--no-cache",
                        "--poll-interval", "0.1", "--output", str(tmp_path / "h.csv"))  # fmt: skip
        assert fresh.returncode == 0, fresh.stderr
        frame = pd.read_csv(tmp_path / "h.csv")
        assert "cache" not in set(frame["_via"])
        assert list(frame["_status"]) == ["ok"] * ROWS
        billed = len(asked(sb)) - ROWS + sum(sb.batch_lines().values())
    assert billed == ROWS
