"""Hybrid, deadline and auto through the sandbox: the planner's promises, end to end."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd

import rowprompt
from rowprompt.sandbox import Sandbox
from tests.helpers import fast_config


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"r{i}" for i in range(n)], "text": [f"row {i}" for i in range(n)]})


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


def test_a_deadline_the_batch_can_meet_stays_in_batch(tmp_path: Path) -> None:
    home = tmp_path / "h"
    with Sandbox(fast_config()) as sb:
        rowprompt.run(frame(3), **options(sb, home, mode="batch", prompt="Warm {{ text }}"))
        out = rowprompt.run(frame(1200), **options(sb, home, deadline="1h"))
        assert len(sb.requests()) == 0
    assert set(out["_via"]) == {"batch"}
    assert list(out["_status"]) == ["ok"] * 1200
