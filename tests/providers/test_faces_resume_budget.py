"""Resume after a kill and the budget, over every provider face of the sandbox.

The same assertions for the OpenAI face (``--provider sandbox``), the Anthropic face
(``--provider anthropic`` on the ``anthropic`` SDK, batches through Message Batches), the
Azure face (``--provider azure`` on ``AsyncAzureOpenAI``) and the Gemini face (``--provider
gemini`` on ``google-genai``, batches through Gemini batch mode), in real time and in batch.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

import rowprompt
from rowprompt.sandbox import Sandbox
from tests.helpers import RP, fast_config

FACES = {
    "openai": ("sandbox", "gpt-4o-mini", "/v1"),
    "anthropic": ("anthropic", "claude-haiku-4-5", ""),
    "azure": ("azure", "gpt-4o-mini", ""),
    "gemini": ("gemini", "gemini-2.5-flash-lite", ""),
}
PROMPT = "Say something about {{ text }}"
KEYS = {"ANTHROPIC_API_KEY": "sandbox", "AZURE_OPENAI_API_KEY": "sandbox",
        "GEMINI_API_KEY": "sandbox"}  # fmt: skip


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)


def _done_rows(home: Path) -> int:
    db_path = home / "rowprompt.db"
    if not db_path.exists():
        return 0
    try:
        db = sqlite3.connect(db_path, timeout=5)
        try:
            row = db.execute("SELECT count(*) FROM rows WHERE state = 'done'").fetchone()
        finally:
            db.close()
    except sqlite3.OperationalError:
        return 0
    return int(row[0] or 0)


def _submitted(home: Path) -> int:
    try:
        db = sqlite3.connect(home / "rowprompt.db", timeout=5)
        try:
            row = db.execute("SELECT count(*) FROM shards WHERE batch_id IS NOT NULL").fetchone()
        finally:
            db.close()
    except sqlite3.OperationalError:
        return 0
    return int(row[0] or 0)


def _wait_for(check: Callable[[], bool], limit: float = 30.0) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("the condition never came true")


@pytest.mark.parametrize("mode", ["realtime", "batch"])
@pytest.mark.parametrize("face", list(FACES))
def test_every_face_resumes_a_killed_job_without_paying_twice(
    tmp_path: Path, face: str, mode: str
) -> None:
    provider, model, path = FACES[face]
    n, concurrency = 40, 4
    src = tmp_path / "in.csv"
    pd.DataFrame({"text": [f"row {i}" for i in range(n)]}).to_csv(src, index=False)
    home, out = tmp_path / "home", tmp_path / "out.csv"
    config = fast_config(latency_ms=30.0, batch_rows_per_second=20.0)
    with Sandbox(config) as sb:
        args = ["run", str(src), "--prompt", PROMPT, "--provider", provider, "--model", model,
                "--base-url", sb.url + path, "--mode", mode, "--home", str(home),
                "--output", str(out), "--concurrency", str(concurrency),
                "--poll-interval", "0.1", "--max-tokens", "20"]  # fmt: skip
        env = {**os.environ, **KEYS}
        env.pop("OPENAI_API_KEY", None)
        proc = subprocess.Popen(
            [RP, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        try:
            if mode == "realtime":
                _wait_for(lambda: _done_rows(home) >= n // 2)
            else:
                _wait_for(lambda: _submitted(home) >= 1)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert _done_rows(home) < n
        result = subprocess.run(
            [RP, *args], capture_output=True, text=True, env=env, timeout=90, check=False
        )
        assert result.returncode == 0, result.stderr
        frame = pd.read_csv(out, dtype=str)
        assert list(frame["text"]) == [f"row {i}" for i in range(n)]
        assert list(frame["_status"]) == ["ok"] * n
        if mode == "realtime":
            asked: dict[str, int] = {}
            for request in sb.requests():
                message = request.get("last_user_message")
                if message:
                    asked[message] = asked.get(message, 0) + 1
            assert len(asked) == n
            # Only requests in flight at the kill may be asked twice.
            assert sum(1 for count in asked.values() if count > 1) <= concurrency
        else:
            # The batch submitted before the kill was adopted, not paid again.
            assert max(sb.batch_lines().values()) == 1
            assert sb.stats()["batches_created"] == _submitted(home)


BUDGET = 0.0001  # USD: a handful of rows' worst case at these models' prices


@pytest.mark.parametrize("mode", ["realtime", "batch"])
@pytest.mark.parametrize("face", list(FACES))
def test_every_face_keeps_spend_under_the_budget(
    sandbox: Sandbox, tmp_path: Path, face: str, mode: str
) -> None:
    provider, model, path = FACES[face]
    budget = BUDGET * (10 if face == "anthropic" else 1)  # Claude costs about ten times more
    frame = pd.DataFrame({"text": [f"row number {i}" for i in range(40)]})
    options = {"prompt": PROMPT, "provider": provider, "model": model,
               "base_url": sandbox.url + path, "home": str(tmp_path / "h"), "mode": mode,
               "max_tokens": 20, "poll_interval": 0.1}  # fmt: skip
    out = rowprompt.run(frame, budget=budget, **options)
    spent = float(out["_cost_usd"].fillna(0).sum())
    assert 0 < spent <= budget
    skipped = out[out["_status"] == "skipped"]
    assert len(skipped) > 0 and (out["_status"] == "ok").sum() > 0
    assert all(e.startswith("over_budget") for e in skipped["_error"])
    asked = sandbox.requests() if mode == "realtime" else sandbox.batch_lines()
    sent = len([r for r in asked if mode == "batch" or r.get("last_user_message")])
    assert sent == (out["_status"] == "ok").sum()
    again = rowprompt.run(frame, budget=1.0, **options)
    assert list(again["_status"]) == ["ok"] * 40
