"""Shared fixtures: a sandbox on a free loopback port, a clean rowprompt home."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rowprompt.sandbox import Sandbox
from tests.helpers import fast_config


@pytest.fixture(autouse=True)
def _no_real_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never reach a real provider: no key, no base URL from the environment."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("ROWPROMPT_HOME", raising=False)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A fresh sandbox for one test."""
    with Sandbox(fast_config()) as sb:
        yield sb


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A rowprompt home of the test's own."""
    return tmp_path / "home"
