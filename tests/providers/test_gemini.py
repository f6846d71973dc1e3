"""The Gemini provider over the sandbox's Gemini face, with the real ``google-genai`` SDK."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from google.genai import errors as genai_errors
from hypothesis import given
from hypothesis import strategies as st

import rowprompt
from rowprompt import costs
from rowprompt.errors import ConfigError, Permanent, QuotaExhausted, RateLimited, Transient
from rowprompt.ledger import Ledger
from rowprompt.providers import open_provider, resolve_provider
from rowprompt.providers.base import BatchInfo, BatchLineResult, CompletionResult
from rowprompt.providers.gemini import (
    GeminiProvider,
    completion_from_response,
    display_name,
    metadata_of,
    parse_duration,
    parse_result_line,
    to_gemini,
    translate_error,
)
from rowprompt.sandbox import FaultConfig, Sandbox
from tests.helpers import fast_config, run_cli

MODEL = "gemini-2.5-flash"
TERMINAL = ("completed", "failed", "expired", "cancelled")


def body(text: str = "hello", model: str = MODEL, **params: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}],
        **params,
    }


async def _complete(provider: GeminiProvider, request: dict[str, Any]) -> CompletionResult:
    try:
        return await provider.complete(request, timeout=10)
    finally:
        await provider.aclose()


def test_the_openai_body_becomes_a_generate_content_request() -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    request = to_gemini(
        body(
            max_completion_tokens=30,
            temperature=0.2,
            stop="END",
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": [{"type": "text", "text": "and?"}]},
            ],
        )
    )
    assert request == {
        "model": f"models/{MODEL}",
        "contents": [
            {"role": "user", "parts": [{"text": "hi"}]},
            {"role": "model", "parts": [{"text": "hello"}]},
            {"role": "user", "parts": [{"text": "and?"}]},
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {
            "maxOutputTokens": 30,
            "temperature": 0.2,
            "stopSequences": ["END"],
            "responseMimeType": "application/json",
            "responseJsonSchema": schema,
        },
    }


def test_an_image_data_url_becomes_inline_data() -> None:
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    request = to_gemini({"model": MODEL, "messages": [{"role": "user", "content": [part]}]})
    assert request["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}
    ]


def test_answers_map_finish_reasons_usage_and_blocks() -> None:
    answer = {
        "candidates": [
            {"content": {"parts": [{"text": "thinking", "thought": True}, {"text": "Yes"}]},
             "finishReason": "MAX_TOKENS"}
        ],
        "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 2,
                          "thoughtsTokenCount": 5, "cachedContentTokenCount": 3},
        "modelVersion": "gemini-2.5-flash-001",
    }  # fmt: skip
    done = completion_from_response(answer)
    assert (done.text, done.finish_reason, done.model) == ("Yes", "length", "gemini-2.5-flash-001")
    assert (done.prompt_tokens, done.completion_tokens, done.cached_tokens) == (7, 7, 3)
    blocked = completion_from_response({"promptFeedback": {"blockReason": "SAFETY"}}, MODEL)
    assert blocked.text is None and blocked.finish_reason == "content_filter"
    assert blocked.refusal == "blocked by Gemini: SAFETY" and blocked.model == MODEL


@given(st.dictionaries(st.sampled_from(["rowprompt_job", "rowprompt_shard", "k y", "="]),
                       st.text(min_size=0, max_size=20)))  # fmt: skip
def test_metadata_survives_the_display_name(metadata: dict[str, str]) -> None:
    assert metadata_of(display_name(metadata)) == metadata


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_retry_delays_parse_as_seconds(seconds: float) -> None:
    parsed = parse_duration(f"{seconds:.3f}s")
    assert parsed is not None and abs(parsed - round(seconds, 3)) < 1e-6
    assert parse_duration("soon") is None and parse_duration(None) is None


@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_a_results_line_never_raises(raw: str | bytes) -> None:
    result = parse_result_line(raw)
    assert result is None or isinstance(result, BatchLineResult)


def test_result_lines_carry_the_status_of_their_error() -> None:
    ok = parse_result_line(json.dumps({"key": "j-1", "response": {"candidates": []}}))
    assert ok is not None and ok.custom_id == "j-1" and ok.status_code == 200
    bad = parse_result_line(json.dumps({"key": "j-2", "error": {"code": 3, "message": "no"}}))
    assert bad is not None and (bad.status_code, bad.error_code) == (400, "INVALID_ARGUMENT")
    busy = parse_result_line(json.dumps({"key": "j-3", "error": {"code": 8, "message": "busy"}}))
    assert busy is not None and busy.status_code == 503  # asked again, as a server error


def test_real_time_gives_a_completion_with_usage(sandbox: Sandbox) -> None:
    provider = GeminiProvider(api_key="k", base_url=sandbox.url)
    done = asyncio.run(_complete(provider, body(max_completion_tokens=30))).completion
    assert done.text and done.finish_reason == "stop"
    assert done.prompt_tokens > 0 and done.completion_tokens > 0
    assert done.model == f"{MODEL}-sandbox"


def test_structured_output_comes_back_as_json_text(sandbox: Sandbox) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    provider = GeminiProvider(api_key="k", base_url=sandbox.url)
    result = asyncio.run(_complete(provider, body(response_format=fmt)))
    assert json.loads(result.completion.text or "") in ({"ok": True}, {"ok": False})


@pytest.mark.parametrize(
    ("faults", "request_body", "error"),
    [
        (FaultConfig(rate_limit_storm_requests=1), body(), RateLimited),
        (FaultConfig(error_rate=1.0), body(), Transient),
        (FaultConfig(drop_rate=1.0), body(), Transient),
        (FaultConfig(quota_exhausted_after=0), body(), QuotaExhausted),
        (FaultConfig(), body(model="gemini-nope"), ConfigError),
        (FaultConfig(), body(temperature=2.5), Permanent),
    ],
)
def test_errors_become_rowprompt_errors(
    sandbox: Sandbox, faults: FaultConfig, request_body: dict[str, Any], error: type[Exception]
) -> None:
    sandbox.set_faults(faults)
    provider = GeminiProvider(api_key="k", base_url=sandbox.url)
    with pytest.raises(error) as caught:
        asyncio.run(_complete(provider, request_body))
    if isinstance(caught.value, RateLimited):
        assert caught.value.retry_after == 1.0  # the RetryInfo delay
    if isinstance(caught.value, ConfigError):
        assert "--model" in caught.value.one_line()


def test_a_slow_answer_times_out_as_transient() -> None:
    with Sandbox(fast_config(faults=FaultConfig(slow_rate=1.0, slow_seconds=0.6))) as sb:
        provider = GeminiProvider(api_key="k", base_url=sb.url)

        async def ask() -> CompletionResult:
            try:
                return await provider.complete(body(), timeout=0.3)
            finally:
                await provider.aclose()

        with pytest.raises(Transient, match="timed out"):
            asyncio.run(ask())


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, {"code": 400, "message": "API key not valid. Please pass a valid API key.",
               "status": "INVALID_ARGUMENT",
               "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                            "reason": "API_KEY_INVALID"}]}),
        (403, {"code": 403, "message": "Permission denied.", "status": "PERMISSION_DENIED"}),
    ],
)  # fmt: skip
def test_refused_credentials_name_the_key_to_set(status: int, error: dict[str, Any]) -> None:
    translated = translate_error(genai_errors.ClientError(status, {"error": error}))
    assert isinstance(translated, ConfigError)
    assert "GEMINI_API_KEY" in translated.one_line() and "\n" not in translated.one_line()


async def _batch_round(provider: GeminiProvider, path: Path) -> tuple[BatchInfo, list[Any]]:
    lines = [provider.batch_line(f"job1-{i}", body(f"row {i}", max_tokens=20)) for i in range(4)]
    lines.append(provider.batch_line("job1-4", body("bad", temperature=5)))
    path.write_bytes(b"".join(lines))
    meta = {"rowprompt_job": "job1", "rowprompt_shard": "1", "rowprompt_try": "1"}
    file_id = await provider.upload_batch_file(path)
    assert file_id.startswith("files/")
    info = await provider.create_batch(file_id, meta)
    assert info.status == "validating" and info.metadata == meta
    assert info.input_file_id == file_id and info.created_at
    while info.status not in TERMINAL:
        await asyncio.sleep(0.05)
        info = await provider.get_batch(info.id)
    found = await provider.find_batches({"rowprompt_job": "job1", "rowprompt_shard": "1"})
    assert [f.id for f in found] == [info.id] and found[0].metadata == meta
    assert await provider.find_batches({"rowprompt_job": "other"}) == []
    results = [r async for r in provider.batch_results(info)]
    assert (await provider.cancel_batch(info.id)).status == "completed"  # ended: unchanged
    await provider.aclose()
    return info, results


def test_a_batch_round_trip(sandbox: Sandbox, tmp_path: Path) -> None:
    provider = GeminiProvider(api_key="k", base_url=sandbox.url)
    info, results = asyncio.run(_batch_round(provider, tmp_path / "shard.jsonl"))
    assert info.status == "completed" and info.output_file_id
    by_id = {r.custom_id: r for r in results}
    assert [r.custom_id for r in results] == [f"job1-{i}" for i in range(5)]
    assert all(by_id[f"job1-{i}"].completion is not None for i in range(4))
    assert by_id["job1-4"].status_code == 400 and by_id["job1-4"].completion is None
    endpoints = sandbox.stats()["requests_by_endpoint"]
    assert endpoints[f"POST /v1beta/models/{MODEL}:batchGenerateContent"] == 1


def test_a_cancelled_job_cancels_its_gemini_batch(tmp_path: Path) -> None:
    frame = pd.DataFrame({"text": [f"row {i}" for i in range(60)]})
    with Sandbox(fast_config(batch_rows_per_second=10)) as sb:
        job = rowprompt.submit(frame, prompt="{{ text }}", provider="gemini", model=MODEL,
                               base_url=sb.url, home=str(tmp_path), mode="batch")  # fmt: skip
        job.cancel()
        assert sb.stats()["batches_by_final_state"] == {"cancelled": 1}
        (shard,) = job.status().shards
        assert shard.status == "cancelled" and (shard.batch_id or "").startswith("batches/")


def test_a_full_batch_queue_is_learned_and_waited_for(tmp_path: Path) -> None:
    model, limit = "gemini-2.5-flash-lite", 200
    frame = pd.DataFrame({"text": [f"row number {i}" for i in range(12)]})
    config = fast_config(enqueued_token_limit={model: limit}, batch_rows_per_second=1000)
    with Sandbox(config) as sb:
        out = rowprompt.run(frame, prompt="About {{ text }}", provider="gemini", model=model,
                            base_url=sb.url, home=str(tmp_path), mode="batch", max_tokens=20,
                            poll_interval=0.05)  # fmt: skip
        assert list(out["_status"]) == ["ok"] * 12
        stats = sb.stats()
        assert stats["requests_by_status"]["429"] >= 1  # creates refused: the queue was full
        assert 0 < stats["peak_enqueued_tokens"][model] <= limit
        assert max(sb.batch_lines().values()) == 1
    learned = Ledger(tmp_path).queue_limit("gemini", model)
    assert learned is not None and learned.source == "learned"


def test_model_names_may_name_gemini() -> None:
    assert resolve_provider("openai", "gemini:gemini-2.5-flash") == ("gemini", MODEL)
    assert resolve_provider("gemini", MODEL) == ("gemini", MODEL)


def test_gemini_models_are_priced_with_the_batch_discount() -> None:
    price = costs.price_for("gemini-2.5-flash-lite-sandbox", "gemini")
    assert price is not None and price.input > 0
    assert price.batch_input == pytest.approx(price.input / 2)


def test_open_provider_builds_gemini(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_API_KEY", "k")
    opened = open_provider("gemini")
    assert opened.provider.name == "gemini"
    assert opened.provider.batch_caps.max_bytes == 2_000_000_000
    asyncio.run(opened.close())
    with pytest.raises(ConfigError, match="no embeddings endpoint"):
        open_provider("gemini", endpoint="embeddings")


def test_a_missing_key_is_one_line_from_the_cli(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("text\nhello\n")
    no_key = {"GEMINI_API_KEY": "", "GOOGLE_API_KEY": ""}
    result = run_cli("run", str(src), "--prompt", "{{ text }}", "--model", "gemini:" + MODEL,
                     "--home", str(tmp_path / "h"), env=no_key)  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "GEMINI_API_KEY is not set" in lines[0]
