"""Helpers the tests share: a fast sandbox configuration and the installed CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rowprompt.sandbox import SandboxConfig

RP = str(Path(sys.executable).with_name("rowprompt"))


def fast_config(**overrides: object) -> SandboxConfig:
    """A sandbox whose batches finish in well under a second."""
    settings: dict[str, object] = {
        "batch_rows_per_second": 5000.0,
        "batch_validating_seconds": 0.05,
        "batch_finalizing_seconds": 0.05,
    }
    settings.update(overrides)
    return SandboxConfig(**settings)  # type: ignore[arg-type]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``rowprompt`` command."""
    full_env = {
        k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")
    }
    full_env.update(env or {})
    return subprocess.run(
        [RP, *args], capture_output=True, text=True, timeout=timeout, env=full_env, check=False
    )
