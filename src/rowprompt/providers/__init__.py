"""Providers: one adapter per API shape, chosen by name."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from rowprompt.errors import ConfigError
from rowprompt.providers.base import Provider

PROVIDERS = ("openai", "sandbox", "azure", "anthropic")


@dataclass
class OpenedProvider:
    """A provider ready to use, and how to release it (and any in-process sandbox)."""

    provider: Provider
    close: Callable[[], Awaitable[None]]
    base_url: str | None
    in_process: bool = False


def check_provider_config(name: str, base_url: str | None) -> None:
    """Refuse, before anything is written or sent, a provider that cannot work as configured."""
    if name not in PROVIDERS:
        raise ConfigError(f"unknown provider {name!r}", hint=f"use one of: {', '.join(PROVIDERS)}")
    if name in ("azure", "anthropic"):
        raise ConfigError(
            f"--provider {name} is not available yet",
            hint="use --provider openai (any OpenAI-compatible server with --base-url) or sandbox",
        )
    has_url = base_url or os.environ.get("OPENAI_BASE_URL")
    if name == "openai" and not has_url and not os.environ.get("OPENAI_API_KEY"):
        raise ConfigError(
            "OPENAI_API_KEY is not set",
            hint="export OPENAI_API_KEY=sk-... , or rehearse offline with --provider sandbox",
        )


def open_provider(
    name: str,
    base_url: str | None = None,
    *,
    request_timeout: float = 120.0,
    sandbox_rules: str | None = None,
) -> OpenedProvider:
    """Open the named provider; ``sandbox`` without a base URL starts one in this process."""
    from rowprompt.providers.openai import OpenAIProvider

    check_provider_config(name, base_url)
    if name == "sandbox":
        if base_url:
            provider = OpenAIProvider(
                api_key="sandbox", base_url=base_url, name="sandbox", timeout=request_timeout
            )
            return OpenedProvider(provider, provider.aclose, base_url)
        from rowprompt.sandbox import Sandbox, SandboxConfig

        rules = sandbox_rules or os.environ.get("ROWPROMPT_SANDBOX_RULES") or None
        config = SandboxConfig(rules_file=Path(rules)) if rules else SandboxConfig()
        sandbox = Sandbox(config)
        sandbox.start()
        provider = OpenAIProvider(
            api_key="sandbox", base_url=sandbox.base_url, name="sandbox", timeout=request_timeout
        )

        async def close() -> None:
            await provider.aclose()
            sandbox.stop()

        return OpenedProvider(provider, close, sandbox.base_url, in_process=True)
    url = base_url or os.environ.get("OPENAI_BASE_URL") or None
    # Local OpenAI-compatible servers often need no key; the SDK insists on one.
    key = os.environ.get("OPENAI_API_KEY") or "not-needed"
    provider = OpenAIProvider(api_key=key, base_url=url, name="openai", timeout=request_timeout)
    return OpenedProvider(provider, provider.aclose, url)
