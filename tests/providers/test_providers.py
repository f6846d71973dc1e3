"""The Anthropic and Azure providers over the sandbox's faces, with the real SDKs over HTTP."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from rowprompt.errors import ConfigError, Permanent, QuotaExhausted, RateLimited, Transient
from rowprompt.providers import check_provider_config, open_provider, resolve_provider
from rowprompt.providers.anthropic import AnthropicProvider, to_anthropic
from rowprompt.providers.azure import AzureOpenAIProvider
from rowprompt.providers.base import BatchInfo
from rowprompt.sandbox import FaultConfig, Sandbox
from tests.helpers import fast_config

CLAUDE = "claude-haiku-4-5"


def body(text: str = "hello", model: str = CLAUDE, **params: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}],
        **params,
    }


def test_the_openai_body_becomes_messages_params() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    params = to_anthropic(
        body(
            max_completion_tokens=7,
            temperature=0.2,
            stop="END",
            response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}},
        )
    )
    assert params["system"] == "Be brief."
    assert params["messages"] == [{"role": "user", "content": "hello"}]
    assert (params["max_tokens"], params["temperature"]) == (7, 0.2)
    assert params["stop_sequences"] == ["END"]
    assert params["tools"][0]["input_schema"] == schema
    assert params["tool_choice"] == {"type": "tool", "name": "r"}
    assert to_anthropic(body())["max_tokens"] > 0  # required by Anthropic, always given


async def _complete(provider: Any, request: dict[str, Any]) -> Any:
    try:
        return await provider.complete(request, timeout=10)
    finally:
        await provider.aclose()


def test_anthropic_real_time_gives_a_completion_with_usage_and_limits(sandbox: Sandbox) -> None:
    provider = AnthropicProvider(api_key="k", base_url=sandbox.url)
    result = asyncio.run(_complete(provider, body(max_completion_tokens=30)))
    done = result.completion
    assert done.text and done.finish_reason == "stop"
    assert done.prompt_tokens > 0 and done.completion_tokens > 0
    assert done.model == f"{CLAUDE}-sandbox"
    assert result.limits is not None and result.limits.limit_requests


def test_anthropic_structured_output_comes_back_as_json_text(sandbox: Sandbox) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    provider = AnthropicProvider(api_key="k", base_url=sandbox.url)
    result = asyncio.run(_complete(provider, body(response_format=fmt)))
    assert result.completion.text in ('{"ok": true}', '{"ok": false}')


@pytest.mark.parametrize(
    ("faults", "request_body", "error"),
    [
        (FaultConfig(rate_limit_storm_requests=1), body(), RateLimited),
        (FaultConfig(error_rate=1.0), body(), Transient),
        (FaultConfig(quota_exhausted_after=0), body(), QuotaExhausted),
        (FaultConfig(), body(model="claude-nope"), ConfigError),
        (FaultConfig(), body(temperature=1.7), Permanent),
    ],
)
def test_anthropic_errors_become_rowprompt_errors(
    sandbox: Sandbox, faults: FaultConfig, request_body: dict[str, Any], error: type[Exception]
) -> None:
    sandbox.set_faults(faults)
    provider = AnthropicProvider(api_key="k", base_url=sandbox.url)
    with pytest.raises(error) as caught:
        asyncio.run(_complete(provider, request_body))
    if isinstance(caught.value, RateLimited):
        assert caught.value.retry_after == 1.0
        assert getattr(caught.value, "limits", None) is not None


async def _batch_round(provider: AnthropicProvider, path: Path) -> tuple[BatchInfo, list[Any]]:
    lines = [provider.batch_line(f"job1-{i}", body(f"row {i}", max_tokens=20)) for i in range(4)]
    lines.append(provider.batch_line("job1-4", body(model="claude-nope")))
    path.write_bytes(b"".join(lines))
    meta = {"rowprompt_job": "job1", "rowprompt_shard": "1", "rowprompt_try": "1"}
    file_id = await provider.upload_batch_file(path)
    info = await provider.create_batch(file_id, meta)
    assert info.status == "in_progress" and info.metadata == meta
    while info.status not in ("completed", "expired", "cancelled"):
        await asyncio.sleep(0.05)
        info = await provider.get_batch(info.id)
    found = await provider.find_batches({"rowprompt_job": "job1", "rowprompt_shard": "1"})
    assert [f.id for f in found] == [info.id] and found[0].metadata == meta
    results = [r async for r in provider.batch_results(info)]
    await provider.aclose()
    return info, results


def test_anthropic_batch_round_trip(sandbox: Sandbox, tmp_path: Path) -> None:
    provider = AnthropicProvider(api_key="k", base_url=sandbox.url, journal_dir=tmp_path)
    info, results = asyncio.run(_batch_round(provider, tmp_path / "shard.jsonl"))
    assert (info.status, info.total, info.completed, info.failed) == ("completed", 5, 4, 1)
    by_id = {r.custom_id: r for r in results}
    assert all(by_id[f"job1-{i}"].completion is not None for i in range(4))
    assert by_id["job1-4"].status_code == 404 and by_id["job1-4"].completion is None
    # A fresh provider (a restarted process) still knows the batch's metadata.
    again = AnthropicProvider(api_key="k", base_url=sandbox.url, journal_dir=tmp_path)
    found = asyncio.run(again.find_batches({"rowprompt_job": "job1"}))
    assert found[0].id == info.id and found[0].metadata["rowprompt_try"] == "1"


def test_azure_real_time_on_a_deployment(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    provider = AzureOpenAIProvider(api_key="k", azure_endpoint=sandbox.url)
    result = asyncio.run(_complete(provider, body(model="gpt-4o-mini")))
    assert result.completion.text and result.completion.model == "gpt-4o-mini-sandbox"
    paths = sandbox.stats()["requests_by_endpoint"]
    assert paths == {"POST /openai/deployments/gpt-4o-mini/chat/completions": 1}
    missing = AzureOpenAIProvider(api_key="k", azure_endpoint=sandbox.url)
    with pytest.raises(ConfigError, match="no deployment named 'my-gpt'"):
        asyncio.run(_complete(missing, body(model="my-gpt")))


async def _azure_batch(provider: AzureOpenAIProvider, path: Path) -> tuple[BatchInfo, list[Any]]:
    line = provider.batch_line("job2-0", body(model="gpt-4o-mini"))
    assert b'"url":"/chat/completions"' in line
    path.write_bytes(line + provider.batch_line("job2-1", body("two", model="gpt-4o-mini")))
    info = await provider.create_batch(
        await provider.upload_batch_file(path), {"rowprompt_job": "j"}
    )
    while info.status not in ("completed", "failed", "expired", "cancelled"):
        await asyncio.sleep(0.05)
        info = await provider.get_batch(info.id)
    results = [r async for r in provider.batch_results(info)]
    await provider.aclose()
    return info, results


def test_azure_batch_round_trip(sandbox: Sandbox, tmp_path: Path) -> None:
    provider = AzureOpenAIProvider(api_key="k", azure_endpoint=sandbox.url)
    info, results = asyncio.run(_azure_batch(provider, tmp_path / "shard.jsonl"))
    assert (info.status, info.completed) == ("completed", 2)
    assert sorted(r.custom_id for r in results if r.completion) == ["job2-0", "job2-1"]


def test_model_names_may_carry_the_provider() -> None:
    assert resolve_provider("openai", "anthropic:claude-haiku-4-5") == ("anthropic", CLAUDE)
    assert resolve_provider("openai", "azure:my-deployment") == ("azure", "my-deployment")
    assert resolve_provider("openai", "openai:gpt-4o-mini") == ("openai", "gpt-4o-mini")
    assert resolve_provider("sandbox", "openai:gpt-4o-mini") == ("sandbox", "gpt-4o-mini")
    assert resolve_provider("openai", "llama3:8b") == ("openai", "llama3:8b")
    with pytest.raises(ConfigError, match="is a anthropic model but --provider is azure"):
        resolve_provider("azure", "anthropic:claude-haiku-4-5")


@pytest.mark.parametrize(
    ("name", "model", "env", "words"),
    [
        ("anthropic", CLAUDE, {}, "ANTHROPIC_API_KEY is not set"),
        ("anthropic", "gpt-4o-mini", {"ANTHROPIC_API_KEY": "k"}, "not an Anthropic model"),
        ("azure", "dep", {}, "AZURE_OPENAI_ENDPOINT is not set"),
        ("azure", "dep", {"AZURE_OPENAI_ENDPOINT": "https://x"}, "AZURE_OPENAI_API_KEY is not"),
        ("gemini", "gemini-2.5-flash", {}, "GEMINI_API_KEY is not set"),
        ("gemini", "gpt-4o-mini", {"GEMINI_API_KEY": "k"}, "not a Gemini model"),
        ("vertex", "x", {}, "unknown provider 'vertex'"),
    ],
)
def test_wrong_config_is_one_line_naming_what_to_set(
    monkeypatch: pytest.MonkeyPatch, name: str, model: str, env: dict[str, str], words: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as caught:
        check_provider_config(name, None, model)
    line = caught.value.one_line()
    assert words in line and "\n" not in line


def test_open_provider_builds_each_provider(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://example.openai.azure.com")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "k")
    anthropic_opened = open_provider("anthropic", home=tmp_path)
    azure_opened = open_provider("azure")
    assert anthropic_opened.provider.name == "anthropic"
    assert anthropic_opened.provider.batch_caps.max_requests == 100_000
    assert azure_opened.provider.name == "azure"
    assert azure_opened.provider.batch_caps.max_requests == 100_000

    async def close() -> None:
        await anthropic_opened.close()
        await azure_opened.close()

    asyncio.run(close())


def test_sandbox_faces_share_the_buckets() -> None:
    with Sandbox(fast_config(rpm=1)) as sb:
        provider = AnthropicProvider(api_key="k", base_url=sb.url)
        asyncio.run(_complete(provider, body(model="gpt-4o-mini")))
        azure = AzureOpenAIProvider(api_key="k", azure_endpoint=sb.url)
        with pytest.raises(RateLimited):
            asyncio.run(_complete(azure, body(model="gpt-4o-mini")))
