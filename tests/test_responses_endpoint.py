"""Jobs on the Responses API: the translation both ways, the endpoint's choice, and whole runs.

The sandbox answers a Responses request as it answers the equivalent chat request, so a job
on ``--endpoint responses`` must give the very answers, tokens and statuses of a chat job.
"""

from __future__ import annotations

import asyncio
import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai import OpenAI
from pydantic import BaseModel

import rowprompt
from rowprompt.errors import ConfigError, Permanent, Transient, UsageError
from rowprompt.providers.base import CompletionResult
from rowprompt.providers.openai import OpenAIProvider, parse_batch_line, shape_for
from rowprompt.providers.openai_responses import (
    SHAPE,
    endpoint_for,
    is_answer,
    responses_only,
    to_completion,
    to_request,
)
from rowprompt.sandbox import Sandbox
from rowprompt.sandbox.responses_model import validate_response
from tests.helpers import fast_config, run_cli
from tests.reliability.harness import crash_trial
from tests.sandbox.test_openapi import make_checker

FRAME = pd.DataFrame({"text": [f"review number {i}" for i in range(8)]})
PROMPT = "Rate 1-5: {{ text }}"
LONG = " ".join(f"word{i}" for i in range(60))


class Verdict(BaseModel):
    """A structured answer: one column per field."""

    score: int
    label: str


# -- the request translation ---------------------------------------------------------------
@pytest.fixture(scope="module")
def check_request() -> Callable[[Any], None]:
    """``check_request(body)`` validates a body against ``CreateResponse``."""
    check = make_checker(one_of_as_any_of=True)
    return lambda body: check("CreateResponse", body)


TEXT = st.text(max_size=40)
IMAGE = st.fixed_dictionaries(
    {"type": st.just("image_url"),
     "image_url": st.fixed_dictionaries(
         {"url": st.sampled_from(["https://example.com/cat.png",
                                  "data:image/png;base64,iVBORw0KGgo="])},
         optional={"detail": st.sampled_from(["low", "high", "auto"])})})  # fmt: skip
PART = st.one_of(st.builds(lambda t: {"type": "text", "text": t}, TEXT), IMAGE)
MESSAGE = st.one_of(
    st.builds(lambda r, c: {"role": r, "content": c},
              st.sampled_from(["system", "developer", "user", "assistant"]), TEXT),
    st.builds(lambda c: {"role": "user", "content": c}, st.lists(PART, min_size=1, max_size=3)),
)  # fmt: skip
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
          "additionalProperties": False}  # fmt: skip
FORMAT = st.sampled_from(
    [None, {"type": "json_object"},
     {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}},
     {"type": "json_schema", "json_schema": {"name": "loose", "schema": {"type": "object"}}}]
)  # fmt: skip
CHAT_BODY = st.fixed_dictionaries(
    {"model": st.sampled_from(["gpt-4o-mini", "o3-pro", "gpt-5-codex"]),
     "messages": st.lists(MESSAGE, min_size=1, max_size=4)},
    optional={"max_completion_tokens": st.integers(16, 100_000),
              "temperature": st.floats(0, 2), "top_p": st.floats(0, 1),
              "seed": st.integers(0, 2**31), "response_format": FORMAT},
)  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=CHAT_BODY)
def test_a_chat_body_becomes_a_valid_create_response_body(
    body: dict[str, Any], check_request: Callable[[Any], None]
) -> None:
    request = to_request(body)
    check_request(request)
    assert request["store"] is False and request["model"] == body["model"]
    assert not {"messages", "max_completion_tokens", "max_tokens", "seed", "response_format"} & set(
        request
    )
    assert request.get("max_output_tokens") == body.get("max_completion_tokens")
    assert [item["role"] for item in request["input"]] == [m["role"] for m in body["messages"]]
    for item, message in zip(request["input"], body["messages"], strict=True):
        if isinstance(message["content"], str):
            assert item["content"] == message["content"]
            continue
        for part, given_part in zip(item["content"], message["content"], strict=True):
            if given_part["type"] == "text":
                assert part == {"type": "input_text", "text": given_part["text"]}
            else:
                image = given_part["image_url"]
                assert part == {"type": "input_image", "image_url": image["url"],
                                "detail": image.get("detail", "auto")}  # fmt: skip
    fmt = body.get("response_format")
    if fmt is None:
        assert "text" not in request
    elif fmt["type"] == "json_object":
        assert request["text"] == {"format": {"type": "json_object"}}
    else:
        assert request["text"]["format"] == {"type": "json_schema", **fmt["json_schema"]}


@settings(max_examples=40, deadline=None)
@given(messages=st.lists(
    st.builds(lambda r, c: {"role": r, "content": c},
              st.sampled_from(["system", "developer", "user", "assistant"]),
              st.one_of(TEXT, st.lists(st.builds(lambda t: {"type": "text", "text": t}, TEXT),
                                       min_size=1, max_size=2))),
    min_size=1, max_size=4), fmt=FORMAT)  # fmt: skip
def test_the_sandbox_reads_back_the_chat_request_it_came_from(
    messages: list[dict[str, Any]], fmt: dict[str, Any] | None
) -> None:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": messages,
                            "max_completion_tokens": 64}  # fmt: skip
    if fmt is not None:
        body["response_format"] = fmt
        messages.append({"role": "user", "content": "in json"})
    assistant_lists = any(m["role"] == "assistant" and isinstance(m["content"], list)
                          for m in messages)  # fmt: skip
    chat = validate_response(to_request(body), {"gpt-4o-mini"}).chat
    if not assistant_lists:
        assert chat.messages == messages
    assert chat.max_tokens == 64
    assert chat.response_format == (
        None
        if fmt is None
        else {**fmt, "json_schema": {**fmt.get("json_schema", {})}}
        if fmt["type"] == "json_schema"
        else fmt
    )


def test_what_the_responses_api_lacks_is_refused_or_dropped() -> None:
    base = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(UsageError, match="n=2"):
        to_request({**base, "n": 2})
    with pytest.raises(UsageError, match="'functions'"):
        to_request({**base, "functions": []})
    with pytest.raises(UsageError, match="'tool'"):
        to_request({**base, "messages": [{"role": "tool", "content": "x"}]})
    dropped = to_request({**base, "n": 1, "seed": 3, "stop": ["x"], "max_tokens": 40})
    assert dropped == {"model": "gpt-4o-mini", "input": [
        {"type": "message", "role": "user", "content": "x"}], "store": False,
        "max_output_tokens": 40}  # fmt: skip
    effort = to_request({**base, "reasoning_effort": "low", "verbosity": "low"})
    assert (effort["reasoning"], effort["text"]) == ({"effort": "low"}, {"verbosity": "low"})


# -- the answer translation ----------------------------------------------------------------
OUT_TEXT = st.builds(lambda t: {"type": "output_text", "text": t, "annotations": []}, TEXT)
REFUSAL = st.builds(lambda t: {"type": "refusal", "refusal": t}, TEXT)
ITEM = st.one_of(
    st.builds(lambda parts: {"type": "message", "role": "assistant", "status": "completed",
                             "id": "msg_1", "content": parts},
              st.lists(st.one_of(OUT_TEXT, REFUSAL), max_size=3)),
    st.just({"type": "reasoning", "id": "rs_1", "summary": []}),
)  # fmt: skip
RESPONSE = st.fixed_dictionaries(
    {"object": st.just("response"), "model": st.sampled_from(["o3-pro", "gpt-4o-mini"]),
     "status": st.sampled_from(["completed", "incomplete"]),
     "incomplete_details": st.sampled_from(
         [None, {"reason": "max_output_tokens"}, {"reason": "content_filter"}]),
     "output": st.lists(ITEM, max_size=3),
     "usage": st.fixed_dictionaries(
         {"input_tokens": st.integers(0, 10**6), "output_tokens": st.integers(0, 10**6),
          "input_tokens_details": st.fixed_dictionaries({"cached_tokens": st.integers(0, 99)}),
          "output_tokens_details": st.fixed_dictionaries(
              {"reasoning_tokens": st.integers(0, 99)})})},
)  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(data=RESPONSE)
def test_a_response_becomes_a_completion(data: dict[str, Any]) -> None:
    completion = to_completion(data)
    parts = [p for item in data["output"] if item["type"] == "message" for p in item["content"]]
    texts = [p["text"] for p in parts if p["type"] == "output_text"]
    refusals = [p["refusal"] for p in parts if p["type"] == "refusal"]
    assert completion.refusal == ("".join(refusals) if refusals else None)
    assert completion.text == ("".join(texts) if texts or not refusals else None)
    reason = str((data["incomplete_details"] or {}).get("reason"))
    expected = {"max_output_tokens": "length", "content_filter": "content_filter"}
    want = "stop" if data["status"] == "completed" else expected.get(reason, "incomplete")
    assert completion.finish_reason == want
    usage = data["usage"]
    assert completion.prompt_tokens == usage["input_tokens"]
    assert completion.completion_tokens == usage["output_tokens"]  # reasoning included
    assert completion.cached_tokens == usage["input_tokens_details"]["cached_tokens"]
    assert completion.model == data["model"]
    assert is_answer(data)
    line = json.dumps({"custom_id": "job-1", "response": {"status_code": 200, "body": data}})
    result = parse_batch_line(line, SHAPE)
    assert result is not None and result.completion == completion


def test_a_failed_response_is_no_answer() -> None:
    failed = {"object": "response", "status": "failed", "output": [],
              "error": {"code": "server_error", "message": "boom"}}  # fmt: skip
    assert not is_answer(failed)
    with pytest.raises(Transient, match="boom"):
        to_completion(failed)
    line = json.dumps({"custom_id": "job-3", "response": {"status_code": 200, "body": failed}})
    result = parse_batch_line(line, SHAPE)
    assert result is not None and result.completion is None
    assert (result.error_code, result.error_message) == ("server_error", "boom")
    assert shape_for("responses") is SHAPE


# -- choosing the endpoint -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "only"),
    [("o1-pro", True), ("o3-pro-2025-06-10", True), ("gpt-5-pro", True), ("gpt-5.5-pro", True),
     ("gpt-5-codex", True), ("gpt-5.1-codex-max", True), ("codex-mini-latest", True),
     ("computer-use-preview", True), ("o3-deep-research", True),
     ("o4-mini-deep-research-2025-06-26", True), ("gpt-4o-mini", False), ("o3", False),
     ("gpt-5", False), ("o4-mini", False), ("gpt-5-mini", False)],
)  # fmt: skip
def test_models_only_the_responses_api_serves_go_there_by_default(model: str, only: bool) -> None:
    assert responses_only(model) is only
    assert endpoint_for(None, model, "openai") == ("responses" if only else "chat")
    assert endpoint_for("chat", model, "openai") == "chat"


def test_the_responses_api_is_refused_where_it_cannot_work() -> None:
    with pytest.raises(ConfigError, match="Anthropic API has no Responses endpoint"):
        endpoint_for("responses", "claude-haiku-4-5", "anthropic")
    with pytest.raises(ConfigError, match="o3-pro is served only by the Responses API"):
        endpoint_for(None, "o3-pro", "azure")
    with pytest.raises(UsageError, match="minimum of 16"):
        endpoint_for("responses", "gpt-4o-mini", "openai", max_tokens=8)
    with pytest.raises(UsageError, match="unknown endpoint"):
        endpoint_for("completions", "gpt-4o-mini", "openai")


# -- whole jobs ----------------------------------------------------------------------------
def _client(sb: Sandbox) -> OpenAI:
    return OpenAI(base_url=sb.base_url, api_key="sk-test", max_retries=0)


def _run(sb: Sandbox, home: Path, **options: Any) -> pd.DataFrame:
    settings: dict[str, Any] = {"prompt": PROMPT, "provider": "sandbox",
                                "base_url": sb.base_url, "home": str(home),
                                "poll_interval": 0.1}  # fmt: skip
    settings.update(options)
    return rowprompt.run(FRAME, **settings)


@pytest.mark.parametrize("mode", ["realtime", "batch"])
@pytest.mark.parametrize("output", ["integer", "schema"])
def test_a_job_on_the_responses_api_gives_the_chat_job_table(
    sandbox: Sandbox, tmp_path: Path, mode: str, output: str
) -> None:
    typed: dict[str, Any] = {"output_type": "integer"} if output == "integer" else {
        "schema": Verdict}  # fmt: skip
    got = _run(sandbox, tmp_path / "r", mode=mode, endpoint="responses", **typed)
    asked = sandbox.stats()["requests_by_endpoint"]
    chat = _run(sandbox, tmp_path / "c", mode=mode, endpoint="chat", **typed)
    assert list(got["_status"]) == ["ok"] * len(FRAME)
    assert list(got["_via"]) == [mode] * len(FRAME)
    answers = ["response"] if output == "integer" else ["score", "label"]
    for column in [*answers, "_prompt_tokens", "_completion_tokens", "_cost_usd"]:
        assert list(got[column]) == list(chat[column]), column
    assert (got["_cost_usd"] > 0).all()
    if mode == "realtime":
        assert asked.get("POST /v1/responses") == len(FRAME)
        assert "POST /v1/chat/completions" not in asked
    else:
        batches = list(_client(sandbox).batches.list())
        assert sorted(b.endpoint for b in batches) == ["/v1/chat/completions", "/v1/responses"]


@pytest.mark.parametrize("mode", ["realtime", "batch"])
def test_a_cut_answer_is_truncated(tmp_path: Path, mode: str) -> None:
    rules = [{"pattern": "review", "answer": LONG}]
    with Sandbox(fast_config(rules=rules)) as sb:
        got = _run(sb, tmp_path, mode=mode, endpoint="responses", max_tokens=16)
    assert list(got["_status"]) == ["truncated"] * len(FRAME)
    assert list(got["_completion_tokens"]) == [16] * len(FRAME)
    assert all(LONG.startswith(raw) and raw != LONG for raw in got["_raw"])


def test_a_responses_only_model_uses_the_responses_api_unasked(tmp_path: Path) -> None:
    with Sandbox(fast_config(models=["gpt-4o-mini", "o3-pro"])) as sb:
        got = _run(sb, tmp_path, model="o3-pro", mode="realtime")
        asked = sb.stats()["requests_by_endpoint"]
    assert list(got["_status"]) == ["ok"] * len(FRAME)
    assert asked.get("POST /v1/responses") == len(FRAME)
    assert "POST /v1/chat/completions" not in asked


def _png(path: Path, width: int, height: int) -> None:
    """A plain black PNG of this size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"".join(b"\0" + b"\0" * width for _ in range(height)))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
                     + chunk(b"IEND", b""))  # fmt: skip


def test_image_columns_go_as_input_images(sandbox: Sandbox, tmp_path: Path) -> None:
    frame = pd.DataFrame({"text": ["a", "b"], "img": ["a.png", "b.png"]})
    _png(tmp_path / "a.png", 20, 10)
    _png(tmp_path / "b.png", 30, 12)
    src = tmp_path / "in.csv"
    frame.to_csv(src, index=False)
    options: dict[str, Any] = {"prompt": "Describe {{ text }}", "provider": "sandbox",
                               "base_url": sandbox.base_url, "mode": "realtime",
                               "image_columns": ["img"]}  # fmt: skip
    got = rowprompt.run(str(src), endpoint="responses", home=str(tmp_path / "r"),
                        output=str(tmp_path / "r.csv"), **options)  # fmt: skip
    chat = rowprompt.run(str(src), endpoint="chat", home=str(tmp_path / "c"),
                         output=str(tmp_path / "c.csv"), **options)  # fmt: skip
    assert list(got["_status"]) == ["ok", "ok"]
    assert list(got["response"]) == list(chat["response"])
    assert list(got["_prompt_tokens"]) == list(chat["_prompt_tokens"])
    assert got["response"][0] != got["response"][1]


@pytest.mark.parametrize("lean", [True, False])
def test_the_lean_path_and_the_sdk_ask_and_read_alike(sandbox: Sandbox, lean: bool) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}],
            "max_completion_tokens": 40}  # fmt: skip

    async def ask(request: dict[str, Any]) -> CompletionResult:
        provider = OpenAIProvider(
            api_key="sk-test", base_url=sandbox.base_url, lean=lean, endpoint="responses"
        )
        try:
            return await provider.complete(request, timeout=10)
        finally:
            await provider.aclose()

    result = asyncio.run(ask(body))
    chat = _client(sandbox).chat.completions.create(**body)  # type: ignore[call-overload]
    assert result.completion.text == chat.choices[0].message.content
    assert result.completion.prompt_tokens == chat.usage.prompt_tokens
    assert result.completion.finish_reason == "stop"
    assert result.limits is not None and result.limits.limit_requests
    with pytest.raises(ConfigError, match="does not exist"):
        asyncio.run(ask({**body, "model": "nope"}))
    with pytest.raises(Permanent) as bad:
        asyncio.run(ask({**body, "temperature": 5}))
    assert bad.value.status == 400 and bad.value.code == "decimal_out_of_range"
    assert "POST /v1/responses" in sandbox.stats()["requests_by_endpoint"]


# -- the command line ----------------------------------------------------------------------
def test_the_cli_runs_and_estimates_on_the_responses_api(sandbox: Sandbox, tmp_path: Path) -> None:
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    FRAME.to_csv(src, index=False)
    common = [str(src), "--prompt", PROMPT, "--provider", "sandbox", "--base-url",
              sandbox.base_url, "--endpoint", "responses",
              "--home", str(tmp_path / "h")]  # fmt: skip
    estimate = run_cli("estimate", *common)
    assert estimate.returncode == 0, estimate.stderr
    done = run_cli("run", *common, "--mode", "realtime", "--output", str(out), "--yes",
                   "--quiet", "--no-report")  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(out)
    assert list(table["_status"]) == ["ok"] * len(FRAME)
    assert sandbox.stats()["requests_by_endpoint"]["POST /v1/responses"] == len(FRAME)


def test_the_cli_refuses_the_responses_api_on_anthropic_in_one_line(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    FRAME.to_csv(src, index=False)
    home = tmp_path / "h"
    result = run_cli("run", str(src), "--prompt", PROMPT, "--model", "anthropic:claude-haiku-4-5",
                     "--endpoint", "responses", "--home", str(home), "--yes",
                     env={"ANTHROPIC_API_KEY": "sk-ant-test"})  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Anthropic API has no Responses endpoint" in lines[0]
    assert "--endpoint chat" in lines[0]
    assert not (home / "rowprompt.db").exists()


# -- kill and resume -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "kill"),
    [("realtime", "hook:response:POST /v1/responses"), ("batch", "hook:response:POST /v1/batches")],
)
def test_a_killed_responses_job_resumes_with_every_row_once(
    tmp_path: Path, mode: str, kill: str
) -> None:
    trial = crash_trial(
        mode, 7, tmp_path, n=24, kill=kill, resume_with="rerun",
        extra_args=("--endpoint", "responses"),
    )  # fmt: skip
    assert trial.ok, trial
    assert not trial.notes, trial  # killed mid-job, resumed cleanly
    assert trial.phase.startswith(mode), trial
    assert trial.lost == trial.duplicated == trial.wrong == 0


def test_a_chat_answer_is_not_taken_from_the_cache_for_the_responses_api(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    # Same prompt, model and home: the endpoint still makes it another request.
    chat = _run(sandbox, tmp_path, mode="realtime", endpoint="chat")
    got = _run(sandbox, tmp_path, mode="realtime", endpoint="responses")
    assert list(chat["_via"]) == ["realtime"] * len(FRAME)
    assert list(got["_via"]) == ["realtime"] * len(FRAME)
    asked = sandbox.stats()["requests_by_endpoint"]
    assert asked.get("POST /v1/responses") == len(FRAME)
    # The same Responses job in another mode takes its own answers from the cache.
    again = _run(sandbox, tmp_path, mode="batch", endpoint="responses")
    assert list(again["_via"]) == ["cache"] * len(FRAME)
    assert list(again["response"]) == list(got["response"])
