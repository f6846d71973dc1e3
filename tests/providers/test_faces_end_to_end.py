"""The core workflow over every provider face of the sandbox: the same assertions for each.

``rowprompt.run`` goes through the OpenAI face (``--provider sandbox``), the Anthropic face
(``--provider anthropic`` on the ``anthropic`` SDK), the Azure face (``--provider azure``
on ``AsyncAzureOpenAI``) and the Gemini face (``--provider gemini`` on ``google-genai``), in
real time and through each Batch API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import rowprompt
from rowprompt.sandbox import Sandbox

FACES: dict[str, dict[str, Any]] = {
    "openai": {"provider": "sandbox", "model": "gpt-4o-mini", "path": "/v1"},
    "anthropic": {"provider": "anthropic", "model": "claude-haiku-4-5", "path": ""},
    "azure": {"provider": "azure", "model": "gpt-4o-mini", "path": ""},
    "gemini": {"provider": "gemini", "model": "gemini-2.5-flash-lite", "path": ""},
}
COLUMNS = ["review", "response", "_status", "_error", "_raw", "_prompt_tokens",
           "_completion_tokens", "_cost_usd", "_via"]  # fmt: skip


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    # The sandbox takes any key; the SDKs want one. The home keeps the Anthropic journal.
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sandbox")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "sandbox")
    monkeypatch.setenv("GEMINI_API_KEY", "sandbox")
    monkeypatch.setenv("ROWPROMPT_HOME", str(home))


def frame(n: int = 8) -> pd.DataFrame:
    return pd.DataFrame({"review": [f"review number {i}, with a comma" for i in range(n)]})


def run(sandbox: Sandbox, face: str, home: Path, **options: Any) -> pd.DataFrame:
    spec = FACES[face]
    return rowprompt.run(
        frame(),
        prompt="Sentiment of: {{ review }}",
        provider=spec["provider"],
        model=spec["model"],
        base_url=sandbox.url + spec["path"],
        home=str(home),
        poll_interval=0.1,
        **options,
    )


@pytest.mark.parametrize("mode", ["realtime", "batch"])
@pytest.mark.parametrize("face", list(FACES))
def test_every_face_gives_the_same_table(
    sandbox: Sandbox, home: Path, face: str, mode: str
) -> None:
    out = run(sandbox, face, home, mode=mode, max_tokens=40)
    assert list(out.columns) == COLUMNS
    assert list(out["review"]) == list(frame()["review"])
    assert set(out["_status"]) == {"ok"}
    assert set(out["_via"]) == {mode}
    assert (out["_prompt_tokens"] > 0).all() and (out["_completion_tokens"] > 0).all()
    assert out["response"].map(lambda v: isinstance(v, str) and len(v) > 0).all()
    assert (out["_cost_usd"] > 0).all()
    # Running again pays nothing twice.
    before = sandbox.stats()
    again = run(sandbox, face, home, mode=mode, max_tokens=40)
    assert list(again["response"]) == list(out["response"])
    after = sandbox.stats()
    assert after["batches_created"] == before["batches_created"]
    assert after["requests_total"] - before["requests_total"] <= 2  # a model check at most


@pytest.mark.parametrize("face", list(FACES))
def test_every_face_recovers_from_server_errors(sandbox: Sandbox, home: Path, face: str) -> None:
    from rowprompt.sandbox import FaultConfig

    sandbox.set_faults(FaultConfig(error_rate=0.3))
    out = run(sandbox, face, home, mode="realtime", max_tokens=20)
    assert set(out["_status"]) == {"ok"}
    assert sandbox.stats()["faults"].get("server_error", 0) > 0


@pytest.mark.parametrize("face", list(FACES))
def test_every_face_recovers_from_failed_expired_and_short_batches(
    sandbox: Sandbox, home: Path, face: str
) -> None:
    from rowprompt.sandbox import FaultConfig

    # The first batch fails outright, the second expires half done, and a fifth of the lines
    # that succeed are missing from the results: every row must still come back, once.
    sandbox.set_faults(FaultConfig(batch_fail_nth=[1], batch_expire_nth=[2], output_drop_rate=0.2))
    out = run(sandbox, face, home, mode="batch", max_tokens=20)
    assert list(out["review"]) == list(frame()["review"])
    assert set(out["_status"]) == {"ok"}
    assert set(out["_via"]) == {"batch"}
    faults = sandbox.stats()["faults"]
    assert faults.get("batch_fail", 0) >= 1 and faults.get("batch_expire", 0) >= 1
    assert sandbox.stats()["batches_created"] >= 3
