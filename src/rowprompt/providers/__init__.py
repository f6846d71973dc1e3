"""Providers: one adapter per API shape, chosen by name (or by the model's prefix).

- ``openai``: ``AsyncOpenAI``; ``OPENAI_API_KEY``, ``OPENAI_BASE_URL`` or ``--base-url``.
- ``azure``: ``AsyncAzureOpenAI``; ``AZURE_OPENAI_ENDPOINT`` (or ``--base-url``),
  ``AZURE_OPENAI_API_KEY``, ``OPENAI_API_VERSION``.
- ``anthropic``: ``AsyncAnthropic``; ``ANTHROPIC_API_KEY``, ``ANTHROPIC_BASE_URL`` or
  ``--base-url``.
- ``gemini``: ``google-genai``; ``GEMINI_API_KEY`` (or ``GOOGLE_API_KEY``),
  ``GOOGLE_GEMINI_BASE_URL`` or ``--base-url``.
- ``sandbox``: ``AsyncOpenAI`` on an in-process sandbox, or on ``--base-url`` of a running one.

Only modules of this package import an SDK.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from rowprompt.errors import ConfigError, UsageError
from rowprompt.providers.base import Provider

PROVIDERS = ("openai", "sandbox", "azure", "anthropic", "gemini")
# Providers a model name may name as its prefix (``anthropic:claude-haiku-4-5``).
MODEL_PREFIXES = ("openai", "azure", "anthropic", "gemini")
DEFAULT_PROVIDER = "openai"
_OPENAI_MODEL_PREFIXES = ("gpt-", "o1", "o3", "o4", "chatgpt-", "text-embedding-")


ENDPOINTS = ("chat", "responses", "embeddings")


@dataclass
class OpenedProvider:
    """A provider ready to use, and how to release it (and any in-process sandbox)."""

    provider: Provider
    close: Callable[[], Awaitable[None]]
    base_url: str | None
    in_process: bool = False


def resolve_provider(provider: str, model: str) -> tuple[str, str]:
    """The provider and bare model for ``--provider`` and a ``--model`` that may be prefixed.

    ``anthropic:claude-haiku-4-5`` names its provider; the prefix wins over the default
    provider (``openai``) and must agree with any other. ``--provider sandbox`` takes
    ``openai:`` models (it speaks the OpenAI shape). A colon that is not a provider prefix
    (``llama3:8b`` on an Ollama server) is part of the model's name.
    """
    prefix, sep, rest = model.partition(":")
    if not sep or prefix not in MODEL_PREFIXES:
        return provider, model
    if not rest:
        raise ConfigError(
            f"--model {model!r} names a provider but no model",
            hint=f"write it as {prefix}:MODEL, e.g. anthropic:claude-haiku-4-5",
        )
    if provider in (DEFAULT_PROVIDER, prefix):
        return prefix, rest
    if provider == "sandbox" and prefix == "openai":
        return provider, rest
    raise ConfigError(
        f"--model {model!r} is a {prefix} model but --provider is {provider}",
        hint=f"drop --provider, or pass --provider {prefix}",
    )


def check_provider_config(name: str, base_url: str | None, model: str | None = None) -> None:
    """Refuse, before anything is written or sent, a provider that cannot work as configured.

    Each refusal is one line naming what to set.
    """
    if name not in PROVIDERS:
        raise ConfigError(f"unknown provider {name!r}", hint=f"use one of: {', '.join(PROVIDERS)}")
    env = os.environ.get
    if name == "openai" and not (base_url or env("OPENAI_BASE_URL") or env("OPENAI_API_KEY")):
        raise ConfigError(
            "OPENAI_API_KEY is not set",
            hint="export OPENAI_API_KEY=sk-... , or rehearse offline with --provider sandbox",
        )
    if name == "anthropic":
        if not (base_url or env("ANTHROPIC_BASE_URL") or env("ANTHROPIC_API_KEY")):
            raise ConfigError(
                "ANTHROPIC_API_KEY is not set",
                hint="export ANTHROPIC_API_KEY=sk-ant-... (console.anthropic.com, API keys)",
            )
        if model and model.startswith(_OPENAI_MODEL_PREFIXES):
            raise ConfigError(
                f"{model!r} is not an Anthropic model",
                hint="pass --model with a Claude model, e.g. --model anthropic:claude-haiku-4-5",
            )
    if name == "gemini":
        keyed = env("GEMINI_API_KEY") or env("GOOGLE_API_KEY")
        if not (base_url or env("GOOGLE_GEMINI_BASE_URL") or keyed):
            raise ConfigError(
                "GEMINI_API_KEY is not set",
                hint="export GEMINI_API_KEY=... (aistudio.google.com, Get API key)",
            )
        if model and model.startswith((*_OPENAI_MODEL_PREFIXES, "claude")):
            raise ConfigError(
                f"{model!r} is not a Gemini model",
                hint="pass --model with a Gemini model, e.g. --model gemini:gemini-2.5-flash",
            )
    if name == "azure":
        if not (base_url or env("AZURE_OPENAI_ENDPOINT")):
            raise ConfigError(
                "AZURE_OPENAI_ENDPOINT is not set",
                hint="export AZURE_OPENAI_ENDPOINT=https://RESOURCE.openai.azure.com "
                "(or pass --base-url)",
            )
        if not env("AZURE_OPENAI_API_KEY"):
            raise ConfigError(
                "AZURE_OPENAI_API_KEY is not set",
                hint="export AZURE_OPENAI_API_KEY=... (Azure portal, the resource's Keys and "
                "Endpoint)",
            )


def open_provider(
    name: str,
    base_url: str | None = None,
    *,
    request_timeout: float = 120.0,
    sandbox_rules: str | None = None,
    home: str | os.PathLike[str] | None = None,
    endpoint: str = "chat",
) -> OpenedProvider:
    """Open the named provider; ``sandbox`` without a base URL starts one in this process.

    ``home`` is the rowprompt home; the Anthropic provider keeps its batch journal there.
    ``endpoint`` is the API the job's requests go to: ``chat`` (Chat Completions or
    Messages), ``responses`` or ``embeddings`` (OpenAI-shaped providers only).
    """
    check_provider_config(name, base_url)
    if endpoint not in ENDPOINTS:
        raise UsageError(
            f"unknown endpoint {endpoint!r}", hint=f"use one of: {', '.join(ENDPOINTS)}"
        )
    if name == "anthropic":
        if endpoint != "chat":
            raise ConfigError(
                f"the Anthropic API has no {endpoint} endpoint",
                hint="use an OpenAI model (--provider openai) for it",
            )
        return _open_anthropic(base_url, request_timeout, home)
    if name == "gemini":
        if endpoint != "chat":
            raise ConfigError(
                f"rowprompt's Gemini provider has no {endpoint} endpoint",
                hint="use an OpenAI model (--provider openai) for it",
            )
        from rowprompt.providers.gemini import GeminiProvider, key_from_env

        url = base_url or os.environ.get("GOOGLE_GEMINI_BASE_URL") or None
        # A local Gemini-compatible server (the sandbox) needs no real key; the SDK wants one.
        gemini = GeminiProvider(api_key=key_from_env() or "not-needed", base_url=url,
                                timeout=request_timeout)  # fmt: skip
        return OpenedProvider(gemini, gemini.aclose, url)
    if name == "azure":
        from rowprompt.providers.azure import DEFAULT_API_VERSION, AzureOpenAIProvider

        azure_endpoint = base_url or os.environ["AZURE_OPENAI_ENDPOINT"]
        azure = AzureOpenAIProvider(
            api_key=os.environ["AZURE_OPENAI_API_KEY"],
            azure_endpoint=azure_endpoint,
            api_version=os.environ.get("OPENAI_API_VERSION") or DEFAULT_API_VERSION,
            timeout=request_timeout,
            endpoint=endpoint,
        )
        return OpenedProvider(azure, azure.aclose, azure_endpoint)

    from rowprompt.providers.openai import OpenAIProvider

    if name == "sandbox":
        if base_url:
            provider = OpenAIProvider(
                api_key="sandbox",
                base_url=base_url,
                name="sandbox",
                timeout=request_timeout,
                endpoint=endpoint,
            )
            return OpenedProvider(provider, provider.aclose, base_url)
        from rowprompt.sandbox import Sandbox, SandboxConfig

        rules = sandbox_rules or os.environ.get("ROWPROMPT_SANDBOX_RULES") or None
        config = SandboxConfig(rules_file=Path(rules)) if rules else SandboxConfig()
        sandbox = Sandbox(config)
        sandbox.start()
        provider = OpenAIProvider(
            api_key="sandbox",
            base_url=sandbox.base_url,
            name="sandbox",
            timeout=request_timeout,
            endpoint=endpoint,
        )

        async def close() -> None:
            await provider.aclose()
            sandbox.stop()

        return OpenedProvider(provider, close, sandbox.base_url, in_process=True)
    url = base_url or os.environ.get("OPENAI_BASE_URL") or None
    # Local OpenAI-compatible servers often need no key; the SDK insists on one.
    key = os.environ.get("OPENAI_API_KEY") or "not-needed"
    provider = OpenAIProvider(
        api_key=key, base_url=url, name="openai", timeout=request_timeout, endpoint=endpoint
    )
    return OpenedProvider(provider, provider.aclose, url)


def _open_anthropic(
    base_url: str | None, timeout: float, home: str | os.PathLike[str] | None
) -> OpenedProvider:
    from rowprompt.ledger import default_home
    from rowprompt.providers.anthropic import AnthropicProvider

    url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
    # A local Anthropic-compatible server (the sandbox) needs no real key; the SDK wants one.
    key = os.environ.get("ANTHROPIC_API_KEY") or "not-needed"
    journal = Path(home) if home is not None else default_home()
    provider = AnthropicProvider(
        api_key=key, base_url=url, timeout=timeout, journal_dir=journal / "batches"
    )
    return OpenedProvider(provider, provider.aclose, url)
