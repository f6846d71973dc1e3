"""Hybrid, deadline and auto through the sandbox: the planner's promises, end to end."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import rowprompt
from rowprompt import costs
from rowprompt.api import summarize
from rowprompt.ledger import Ledger
from rowprompt.sandbox import Sandbox
from tests.helpers import fast_config


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"r{i}" for i in range(n)], "text": [f"row {i}" for i in range(n)]})


def positions(billed: dict[str, int]) -> set[int]:
    """Row positions of billed batch lines (custom ids are ``JOB-POSITION``)."""
    return {int(custom_id.rsplit("-", 1)[1]) for custom_id in billed}


def full_price(out: pd.DataFrame) -> float:
    """What the rows' tokens cost at the real-time price."""
    total = 0.0
    for prompt, completion in zip(out["_prompt_tokens"], out["_completion_tokens"], strict=True):
        total += costs.cost_usd("gpt-4o-mini", int(prompt), int(completion)) or 0.0
    return total


def options(sb: Sandbox, home: Path, **kw: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "prompt": "Say {{ text }}",
        "provider": "sandbox",
        "base_url": sb.base_url,
        "home": str(home),
        "poll_interval": 0.2,
    }
    settings.update(kw)
    return settings


def test_hybrid_writes_the_preview_before_any_batch_finishes(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    data = frame(30)
    with Sandbox(fast_config(batch_validating_seconds=3.0)) as sb:
        result: dict[str, pd.DataFrame] = {}
        settings = options(sb, tmp_path / "h", mode="hybrid", preview=5, output=str(out))
        worker = threading.Thread(
            target=lambda: result.setdefault("frame", rowprompt.run(data, **settings))
        )
        worker.start()
        deadline = time.monotonic() + 20
        while not out.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        preview = pd.read_csv(out, dtype=str, keep_default_na=False)
        assert sb.stats()["batches_by_final_state"] == {}
        worker.join(30)
    assert list(preview["_status"]) == ["ok"] * 5 + ["pending"] * 25
    final = result["frame"]
    assert list(final["_status"]) == ["ok"] * 30
    assert list(final["_via"]) == ["realtime"] * 5 + ["batch"] * 25


def test_a_deadline_the_batch_cannot_meet_falls_back_to_real_time(tmp_path: Path) -> None:
    home = tmp_path / "h"
    with Sandbox(fast_config()) as fast:
        # History: batches of this provider and model come back in about a second.
        rowprompt.run(frame(3), **options(fast, home, mode="batch", prompt="Warm {{ text }}"))
    data = frame(40)
    with Sandbox(fast_config(batch_rows_per_second=1.0)) as slow:
        started = time.monotonic()
        out = rowprompt.run(data, **options(slow, home, mode="batch", deadline="40s", rpm=1200))
        took = time.monotonic() - started
        billed = slow.batch_lines()
        asked = [r["last_user_message"] for r in slow.requests()]
    assert took < 40
    assert list(out["_status"]) == ["ok"] * 40
    via = set(out["_via"])
    assert "realtime" in via and "batch" in via
    # No row twice: batch lines billed and real-time requests are disjoint, each row once.
    batch_rows = set(out.loc[out["_via"] == "batch", "text"])
    realtime_rows = set(out.loc[out["_via"] == "realtime", "text"])
    assert len(batch_rows) + len(realtime_rows) == 40
    assert sorted(asked) == sorted(f"Say {t}" for t in realtime_rows)
    assert all(count == 1 for count in billed.values())
    # The rows billed in the cancelled batch are exactly the batch rows, none asked again.
    billed_rows = {data["text"][position] for position in positions(billed)}
    assert billed_rows == batch_rows
    assert billed_rows.isdisjoint(realtime_rows)
    assert len(billed) + len(asked) == 40


def test_a_deadline_the_batch_can_meet_stays_in_batch(tmp_path: Path) -> None:
    home = tmp_path / "h"
    with Sandbox(fast_config()) as sb:
        rowprompt.run(frame(3), **options(sb, home, mode="batch", prompt="Warm {{ text }}"))
        out = rowprompt.run(frame(1200), **options(sb, home, deadline="1h"))
        assert len(sb.requests()) == 0
    assert set(out["_via"]) == {"batch"}
    assert list(out["_status"]) == ["ok"] * 1200
    # It costs half: every row at the batch price, and the summary says what that saved.
    full = full_price(out)
    assert full > 0
    assert out["_cost_usd"].sum() == pytest.approx(full / 2)
    assert summarize(out, "gpt-4o-mini", "sandbox").batch_saved_usd == pytest.approx(full / 2)


def test_a_deadline_neither_route_can_meet_keeps_the_batch_rows_and_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A small margin and safety, so a 12 s deadline has room for real time to do something.
    config = tmp_path / "rowprompt.toml"
    config.write_text("[planner]\nfallback_margin_s = 1\nfallback_safety = 1.2\n")
    monkeypatch.setenv("ROWPROMPT_CONFIG", str(config))
    home, data, messages = tmp_path / "h", frame(60), []
    # No history (a batch may take 24 h), and 120 rows/min cannot do 60 rows in 12 s.
    with Sandbox(fast_config(batch_rows_per_second=3.0)) as sb:
        started = time.time()
        out = rowprompt.run(
            data,
            **options(sb, home, mode="batch", deadline="12s", rpm=120),
            on_message=messages.append,
        )
        billed = sb.batch_lines()
        requests = sb.requests()
        final_states = sb.stats()["batches_by_final_state"]
    warnings = [m for m in messages if "cannot be met" in m]
    assert len(warnings) == 1, messages  # said once, up front
    needed = re.search(r"needs (\d+) rows/min, the rate limit allows 120", warnings[0])
    # 60 rows in the 12 s less what starting took.
    assert needed is not None and 300 <= int(needed[1]) <= 400, warnings[0]
    assert list(out["_status"]) == ["ok"] * 60
    via = out["_via"].value_counts().to_dict()
    # Real time took only what it could finish (about 120/min x 11 s / 1.2), the batch the rest.
    assert 5 <= via.get("realtime", 0) <= 18, via
    assert via.get("batch", 0) == 60 - via.get("realtime", 0)
    assert final_states == {"completed": 1}  # the batch was kept, not cancelled
    # Each row once: billed batch lines and real-time requests are disjoint and cover the job.
    realtime_rows = set(out.index[out["_via"] == "realtime"])
    assert positions(billed) == set(out.index[out["_via"] == "batch"])
    assert positions(billed).isdisjoint(realtime_rows)
    assert len(billed) + len(requests) == 60
    # The real-time rows were answered before the deadline, while the batch was running.
    times = [r["time"] for r in requests]
    assert max(times) <= started + 12
    with Ledger(home) as ledger:
        (shard,) = ledger.shards(ledger.list_jobs()[0].id)
    assert shard.submitted_at is not None and shard.finished_at is not None
    assert shard.submitted_at < min(times) and max(times) < shard.finished_at
