"""--budget: committed plus reserved spend never passes it, in either mode."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import rowprompt
from rowprompt.sandbox import Sandbox

BUDGET = 0.0001  # USD: a handful of rows' worst case at gpt-4o-mini prices


@pytest.mark.parametrize("mode", ["realtime", "batch"])
def test_spend_never_passes_the_budget(sandbox: Sandbox, tmp_path: Path, mode: str) -> None:
    frame = pd.DataFrame({"text": [f"row number {i}" for i in range(40)]})
    options = {"prompt": "Say {{ text }}", "provider": "sandbox", "base_url": sandbox.base_url,
               "home": str(tmp_path / "h"), "mode": mode, "max_tokens": 20,
               "poll_interval": 0.2}  # fmt: skip
    out = rowprompt.run(frame, budget=BUDGET, **options)
    spent = float(out["_cost_usd"].fillna(0).sum())
    assert 0 < spent <= BUDGET
    skipped = out[out["_status"] == "skipped"]
    assert len(skipped) > 0 and (out["_status"] == "ok").sum() > 0
    assert all(e.startswith("over_budget") for e in skipped["_error"])
    # Only the rows that fit were sent: the sandbox saw no more.
    sent = len(sandbox.requests()) if mode == "realtime" else sum(sandbox.batch_lines().values())
    assert sent == (out["_status"] == "ok").sum()
    # A higher budget on the same job asks the held-back rows and nothing else again.
    again = rowprompt.run(frame, budget=1.0, **options)
    assert list(again["_status"]) == ["ok"] * 40
