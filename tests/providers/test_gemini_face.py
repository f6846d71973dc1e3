"""The sandbox's Gemini face, driven by the official ``google-genai`` SDK over HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from google import genai
from google.genai import errors, types

from rowprompt.sandbox import FaultConfig, Sandbox
from tests.helpers import fast_config

MODEL = "gemini-2.5-flash"
KEY = {"x-goog-api-key": "k"}


def make_client(sandbox: Sandbox) -> genai.Client:
    """A synchronous SDK client on the sandbox, without the SDK's retries."""
    options = types.HttpOptions(
        base_url=sandbox.url, api_version="v1beta", retry_options=types.HttpRetryOptions(attempts=1)
    )
    return genai.Client(api_key="anything", http_options=options)


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[genai.Client]:
    with make_client(sandbox) as c:
        yield c


def ask(client: genai.Client, text: str = "hello", **config: Any) -> types.GenerateContentResponse:
    config.setdefault("max_output_tokens", 50)
    return client.models.generate_content(model=MODEL, contents=text, config=config)


def wait_done(client: genai.Client, name: str) -> types.BatchJob:
    for _ in range(200):
        job = client.batches.get(name=name)
        if job.done:
            return job
        time.sleep(0.05)
    raise AssertionError(f"batch {name} did not end")


def upload_lines(client: genai.Client, tmp_path: Path, lines: list[dict[str, Any]]) -> str:
    path = tmp_path / "batch.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    uploaded = client.files.upload(file=path, config={"mime_type": "jsonl"})
    assert uploaded.name and uploaded.size_bytes == path.stat().st_size
    return uploaded.name


def request(text: str, **config: Any) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}], "generationConfig": config}


def test_an_answer_has_geminis_shape(sandbox: Sandbox, client: genai.Client) -> None:
    answer = ask(client, "hi", system_instruction="Be brief.")
    candidate = (answer.candidates or [])[0]
    assert answer.text and candidate.finish_reason == types.FinishReason.STOP
    assert candidate.content is not None and candidate.content.role == "model"
    usage = answer.usage_metadata
    assert usage is not None and usage.prompt_token_count and usage.candidates_token_count
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count
    assert answer.model_version == f"{MODEL}-sandbox"
    (logged,) = sandbox.requests()
    assert logged["face"] == "gemini" and logged["last_user_message"] == "hi"
    endpoint = f"POST /v1beta/models/{MODEL}:generateContent"
    assert sandbox.stats()["requests_by_endpoint"] == {endpoint: 1}


@pytest.mark.parametrize("field", ["response_json_schema", "response_schema"])
def test_a_schema_answer_follows_the_schema(client: genai.Client, field: str) -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"label": {"type": "string"}, "score": {"type": "integer"}},
        "required": ["label", "score"],
    }
    if field == "response_schema":  # Gemini's OpenAPI subset names types in capitals
        properties = {"label": {"type": "STRING"}, "score": {"type": "INTEGER"}}
        schema = {**schema, "type": "OBJECT", "properties": properties}
    answer = ask(client, response_mime_type="application/json", **{field: schema})
    data = json.loads(answer.text or "")
    assert isinstance(data["label"], str) and isinstance(data["score"], int)


def test_max_output_tokens_cuts_the_answer(client: genai.Client) -> None:
    answer = ask(client, max_output_tokens=1)
    assert (answer.candidates or [])[0].finish_reason == types.FinishReason.MAX_TOKENS
    assert answer.usage_metadata and answer.usage_metadata.candidates_token_count == 1


@pytest.mark.parametrize(
    ("model", "config", "status", "words"),
    [
        ("gemini-nope", {}, 404, "models/gemini-nope is not found"),
        (MODEL, {"temperature": 3.0}, 400, "temperature: must be in the range"),
        (MODEL, {"response_schema": {"type": "OBJECT"}}, 400, "must be application/json"),
    ],
)
def test_bad_requests_get_geminis_errors(
    client: genai.Client, model: str, config: dict[str, Any], status: int, words: str
) -> None:
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model=model, contents="hi", config=config)
    error = caught.value
    assert error.code == status
    assert error.status == ("NOT_FOUND" if status == 404 else "INVALID_ARGUMENT")
    assert set(error.details["error"]) >= {"code", "message", "status"}
    assert words in (error.message or "")


def test_unknown_fields_and_roles_are_refused(sandbox: Sandbox) -> None:
    url = f"{sandbox.url}/v1beta/models/{MODEL}:generateContent"
    odd = httpx2.post(url, headers=KEY, json={**request("hi"), "temprature": 1})
    assert odd.status_code == 400 and 'Unknown name "temprature"' in odd.json()["error"]["message"]
    role = httpx2.post(
        url, headers=KEY, json={"contents": [{"role": "bot", "parts": [{"text": "x"}]}]}
    )
    assert role.status_code == 400 and "valid role" in role.json()["error"]["message"]
    # snake_case proto names are accepted as well as camelCase.
    snake = {
        "contents": [{"parts": [{"text": "x"}]}],
        "generation_config": {"max_output_tokens": 1},
    }
    answer = httpx2.post(url, headers=KEY, json=snake)
    assert (
        answer.status_code == 200 and answer.json()["candidates"][0]["finishReason"] == "MAX_TOKENS"
    )


def test_no_key_is_a_403_permission_denied(sandbox: Sandbox) -> None:
    answer = httpx2.post(f"{sandbox.url}/v1beta/models/{MODEL}:generateContent", json={})
    assert answer.status_code == 403
    assert answer.json()["error"]["status"] == "PERMISSION_DENIED"


def test_rate_limits_give_resource_exhausted_with_a_retry_delay() -> None:
    with Sandbox(fast_config(rpm=2)) as sb, make_client(sb) as client:
        ask(client)
        ask(client)
        with pytest.raises(errors.ClientError) as caught:
            ask(client)
        error = caught.value
        assert error.code == 429 and error.status == "RESOURCE_EXHAUSTED"
        details = {d["@type"].rsplit(".", 1)[-1]: d for d in error.details["error"]["details"]}
        assert float(details["RetryInfo"]["retryDelay"].removesuffix("s")) > 0
        (violation,) = details["QuotaFailure"]["violations"]
        assert "PerMinute" in violation["quotaId"]
        assert sb.stats()["rate_limited"] == {"requests": 1}


def test_faults_reach_the_gemini_face(sandbox: Sandbox, client: genai.Client) -> None:
    sandbox.set_faults(FaultConfig(error_rate=1.0, error_statuses=[503]))
    with pytest.raises(errors.ServerError) as server:
        ask(client)
    assert (server.value.code, server.value.status) == (503, "UNAVAILABLE")
    sandbox.set_faults(FaultConfig(quota_exhausted_after=0))
    with pytest.raises(errors.ClientError) as quota:
        ask(client)
    assert quota.value.code == 429 and "PerDay" in json.dumps(quota.value.details)


def test_an_upload_is_resumable_in_chunks(sandbox: Sandbox) -> None:
    start = httpx2.post(
        f"{sandbox.url}/upload/v1beta/files",
        headers={**KEY, "x-goog-upload-protocol": "resumable", "x-goog-upload-command": "start",
                 "x-goog-upload-header-content-length": "10",
                 "x-goog-upload-header-content-type": "text/plain"},
        json={"file": {"displayName": "ten bytes"}},
    )  # fmt: skip
    url = start.headers["x-goog-upload-url"]
    assert start.status_code == 200 and "upload_id=" in url

    def send(data: bytes, offset: int, command: str) -> httpx2.Response:
        headers = {"x-goog-upload-command": command, "x-goog-upload-offset": str(offset)}
        return httpx2.post(url, content=data, headers=headers)  # the URL is the credential

    first = send(b"01234", 0, "upload")
    assert first.headers["x-goog-upload-status"] == "active"
    wrong = send(b"56789", 3, "upload, finalize")
    assert wrong.status_code == 400 and wrong.headers["x-goog-upload-status"] == "final"
    last = send(b"56789", 5, "upload, finalize")
    stored = last.json()["file"]
    assert last.headers["x-goog-upload-status"] == "final"
    assert [stored[k] for k in ("sizeBytes", "displayName", "state")] == [
        "10",
        "ten bytes",
        "ACTIVE",
    ]
    name = stored["name"]
    got = httpx2.get(f"{sandbox.url}/v1beta/{name}", headers=KEY)
    assert got.json()["mimeType"] == "text/plain"
    # Uploaded files cannot be downloaded; only generated ones (a batch's results) can.
    assert (
        httpx2.get(f"{sandbox.url}/v1beta/{name}:download?alt=media", headers=KEY).status_code
        == 400
    )


def test_a_file_batch_succeeds_with_results_in_order(
    sandbox: Sandbox, client: genai.Client, tmp_path: Path
) -> None:
    lines = [
        {"key": f"row-{i}", "request": request(f"row {i}", maxOutputTokens=20)} for i in range(5)
    ]
    lines.append({"key": "bad", "request": request("x", temperature=9)})
    name = upload_lines(client, tmp_path, lines)
    created = client.batches.create(model=MODEL, src=name, config={"display_name": "six rows"})
    assert created.state == types.JobState.JOB_STATE_PENDING and created.display_name == "six rows"
    assert created.name and created.name.startswith("batches/")
    job = wait_done(client, created.name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED and job.end_time
    assert job.dest is not None and job.dest.file_name
    results = [json.loads(r) for r in client.files.download(file=job.dest.file_name).splitlines()]
    assert [r["key"] for r in results] == [f"row-{i}" for i in range(5)] + ["bad"]
    assert results[0]["response"]["candidates"][0]["content"]["parts"][0]["text"]
    assert results[-1]["error"]["code"] == 3  # google.rpc.Code INVALID_ARGUMENT
    raw = httpx2.get(f"{sandbox.url}/v1beta/{created.name}", headers=KEY).json()
    assert raw["done"] is True and raw["response"]["responsesFile"] == job.dest.file_name
    stats = raw["metadata"]["batchStats"]
    counts = ("requestCount", "successfulRequestCount", "failedRequestCount")
    assert [stats[c] for c in counts] == ["6", "5", "1"]
    assert sandbox.stats()["batches_by_final_state"] == {"completed": 1}


def test_an_inline_batch_answers_inline(client: genai.Client) -> None:
    inline: Any = [{"contents": [{"parts": [{"text": f"q{i}"}], "role": "user"}]} for i in range(3)]
    job = wait_done(client, client.batches.create(model=MODEL, src=inline).name or "")
    assert job.dest is not None and job.dest.inlined_responses is not None
    assert [bool(r.response and r.response.text) for r in job.dest.inlined_responses] == [True] * 3


def test_a_batch_for_an_unknown_model_is_refused(client: genai.Client, tmp_path: Path) -> None:
    name = upload_lines(client, tmp_path, [{"key": "a", "request": request("x")}])
    with pytest.raises(errors.ClientError, match="models/gemini-nope is not found"):
        client.batches.create(model="gemini-nope", src=name)


def test_cancel_ends_the_batch_cancelled(tmp_path: Path) -> None:
    with Sandbox(fast_config(batch_rows_per_second=20)) as sb, make_client(sb) as client:
        lines = [{"key": f"k{i}", "request": request(f"row {i}")} for i in range(50)]
        job = client.batches.create(model=MODEL, src=upload_lines(client, tmp_path, lines))
        time.sleep(0.2)
        client.batches.cancel(name=job.name or "")
        done = wait_done(client, job.name or "")
        assert done.state == types.JobState.JOB_STATE_CANCELLED
        client.batches.cancel(name=job.name or "")  # cancelling an ended batch changes nothing
        assert client.batches.get(name=job.name or "").state == types.JobState.JOB_STATE_CANCELLED


@pytest.mark.parametrize(
    ("faults", "state"),
    [
        (FaultConfig(batch_expire_nth=[1]), types.JobState.JOB_STATE_EXPIRED),
        (FaultConfig(batch_fail_nth=[1]), types.JobState.JOB_STATE_FAILED),
    ],
)
def test_batch_faults_end_expired_or_failed_without_results(
    sandbox: Sandbox, client: genai.Client, tmp_path: Path, faults: FaultConfig, state: Any
) -> None:
    sandbox.set_faults(faults)
    name = upload_lines(
        client, tmp_path, [{"key": f"k{i}", "request": request("x")} for i in range(10)]
    )
    job = wait_done(client, client.batches.create(model=MODEL, src=name).name or "")
    assert job.state == state and job.dest is None
    raw = httpx2.get(f"{sandbox.url}/v1beta/{job.name}", headers=KEY).json()
    assert ("error" in raw) == (state == types.JobState.JOB_STATE_FAILED)


def test_the_listing_pages_through_every_batch(sandbox: Sandbox, client: genai.Client) -> None:
    inline: Any = [{"contents": [{"parts": [{"text": "q"}]}]}]
    names = [client.batches.create(model=MODEL, src=inline).name for _ in range(3)]
    listed = [job.name for job in client.batches.list(config={"page_size": 2})]
    assert listed == names[::-1]  # newest first
    page = httpx2.get(f"{sandbox.url}/v1beta/batches?pageSize=2", headers=KEY).json()
    assert len(page["operations"]) == 2 and page["nextPageToken"]
    endpoints = sandbox.stats()["requests_by_endpoint"]
    assert endpoints["GET /v1beta/batches"] == 3
