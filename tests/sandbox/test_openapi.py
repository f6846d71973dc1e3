"""Every body the sandbox gives validates against OpenAI's OpenAPI description.

The schemas come from tests/data/openai-openapi-subset.json (extracted from openai/openai-openapi
f85dbe2 by tests/data/extract_openapi.py). As reference §10 explains, the spec omits
``nullable`` on fields the real API sends as null, so every property a schema does not
require is made nullable before validating; required ones stay strict.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from openai.types import Batch, FileObject
from openai.types.chat import ChatCompletion
from openapi_schema_validator import OAS31Validator, oas31_format_checker
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from rowprompt.sandbox import FaultConfig, Sandbox

from .conftest import (
    chat_line,
    client_for,
    read_lines,
    submit,
    to_jsonl,
    wait_batch,
    wait_until,
)

SUBSET = Path(__file__).resolve().parents[1] / "data" / "openai-openapi-subset.json"
BASE = "urn:openai-openapi-subset"


def _nullable(node: Any) -> Any:
    """Non-required properties (and OAS 3.0 ``nullable: true`` ones) also accept null."""
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True:
        out = {"anyOf": [out, {"type": "null"}]}
    props = node.get("properties")
    if isinstance(props, dict):
        required = set(node.get("required") or [])
        out["properties"] = {
            name: _nullable(sub)
            if name in required
            else {"anyOf": [_nullable(sub), {"type": "null"}]}
            for name, sub in props.items()
        }
    return out


def _any_of(node: Any) -> Any:
    """``oneOf`` read as ``anyOf``."""
    if isinstance(node, list):
        return [_any_of(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {("anyOf" if k == "oneOf" else k): _any_of(v) for k, v in node.items()}


def make_checker(*, one_of_as_any_of: bool = False) -> Callable[[str, Any], None]:
    """``check(schema_name, body)``: validates ``body`` or fails listing every error.

    ``one_of_as_any_of`` is for request bodies: the spec's discriminated unions overlap for
    plain JSON Schema (a ``message`` input item with a content list is both an
    EasyInputMessage and an InputMessage), where OpenAPI picks by the discriminator.
    """
    subset = json.loads(SUBSET.read_text(encoding="utf-8"))
    doc = {"components": _nullable(copy.deepcopy(subset["components"]))}
    manual = _nullable(subset["x-manual-spec"]["components"]["schemas"])
    doc["components"]["schemas"].update({f"manual:{k}": v for k, v in manual.items()})
    if one_of_as_any_of:
        doc = _any_of(doc)
    registry: Registry[Any] = Registry().with_resource(BASE, DRAFT202012.create_resource(doc))

    def run(name: str, body: Any) -> None:
        schema = {"$ref": f"{BASE}#/components/schemas/{name}"}
        validator = OAS31Validator(schema, registry=registry, format_checker=oas31_format_checker)
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
        assert not errors, f"{name}: " + "; ".join(errors[:5])

    return run


@pytest.fixture(scope="module")
def check() -> Callable[[str, Any], None]:
    """``check(schema_name, body)`` validates ``body`` or fails listing every error."""
    return make_checker()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    """A sandbox with a refusal rule and a scripted error, fast batches, short window."""
    from rowprompt.sandbox import SandboxConfig

    config = SandboxConfig(
        batch_rows_per_second=2000,
        batch_validating_seconds=0.02,
        batch_finalizing_seconds=0.02,
        rules=[
            {"pattern": "^refuse", "refusal": "I can't help with that."},
            {"pattern": "^fail", "status": 400, "message": "Scripted bad request."},
        ],
    )
    with Sandbox(config) as sb:
        yield sb


def _json(response: Any) -> Any:
    return json.loads(response.text)


def test_chat_completions(sandbox: Sandbox, check: Callable[[str, Any], None]) -> None:
    client = client_for(sandbox)
    bodies: list[dict[str, Any]] = [
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "hi"}], "n": 2, "max_tokens": 1},
        {"messages": [{"role": "user", "content": "refuse this"}]},
        {"messages": [{"role": "user", "content": "json please"}],
         "response_format": {"type": "json_object"}},
        {"messages": [{"role": "user", "content": "x"}], "response_format": {
            "type": "json_schema", "json_schema": {"name": "s", "strict": True, "schema": {
                "type": "object", "properties": {"a": {"type": "integer"}},
                "required": ["a"], "additionalProperties": False}}}},
    ]  # fmt: skip
    for body in bodies:
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", **body)
        data = _json(raw)
        check("CreateChatCompletionResponse", data)
        ChatCompletion.model_validate(data, strict=True)


def test_error_bodies(sandbox: Sandbox, check: Callable[[str, Any], None]) -> None:
    headers = {"authorization": "Bearer sk-test"}
    url = sandbox.base_url
    answers = [
        httpx2.post(f"{url}/chat/completions", content=b"{", headers=headers),
        httpx2.post(f"{url}/chat/completions", json={"model": "gpt-4o-mini"}, headers=headers),
        httpx2.post(f"{url}/chat/completions", json={"model": "nope", "messages": [
            {"role": "user", "content": "x"}]}, headers=headers),
        httpx2.post(f"{url}/chat/completions", json={"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": "fail now"}]}, headers=headers),
        httpx2.get(f"{url}/files/file-nothere", headers=headers),
        httpx2.get(f"{url}/batches/batch_nothere", headers=headers),
        httpx2.get(f"{url}/models/nope", headers=headers),
        httpx2.get(f"{url}/nowhere", headers=headers),
        httpx2.get(f"{url}/models"),
        httpx2.post(f"{url}/batches", json={}, headers=headers),
        httpx2.post(f"{url}/chat/completions", json={"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": "x"}], "response_format": {"type": "json_schema",
            "json_schema": {"name": "s", "schema": {"type": "array", "minItems": 2,
            "maxItems": 1}}}}, headers=headers),
        httpx2.post(f"{url}/chat/completions", json={"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": "x"}], "max_tokens": 10**6}, headers=headers),
    ]  # fmt: skip
    for answer in answers:
        assert 400 <= answer.status_code < 500
        check("ErrorResponse", answer.json())


def test_429_and_5xx_bodies(make_sandbox: Any, check: Callable[[str, Any], None]) -> None:
    sb = make_sandbox(rpm=1, faults=FaultConfig(error_rate=1.0))
    client = client_for(sb)
    first = client.chat.completions.with_raw_response
    with pytest.raises(Exception):  # noqa: B017 - a 5xx, then a 429; both bodies are checked
        first.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    headers = {"authorization": "Bearer sk-test"}
    messages = [{"role": "user", "content": "x"}]
    url = f"{sb.base_url}/chat/completions"
    limited = httpx2.post(url, headers=headers, json={"model": "gpt-4o-mini", "messages": messages})
    assert limited.status_code == 429
    check("ErrorResponse", limited.json())
    sb.set_faults(FaultConfig(error_rate=1.0))
    failed = httpx2.post(url, headers=headers, json={"model": "gpt-4o", "messages": messages})
    assert failed.status_code in (500, 503)
    check("ErrorResponse", failed.json())


def test_files(sandbox: Sandbox, check: Callable[[str, Any], None]) -> None:
    client = client_for(sandbox)
    raw = client.files.with_raw_response.create(file=("a.jsonl", b"{}\n"), purpose="batch")
    created = _json(raw)
    check("OpenAIFile", created)
    FileObject.model_validate(created, strict=True)
    check("OpenAIFile", _json(client.files.with_raw_response.retrieve(created["id"])))
    listing = _json(client.files.with_raw_response.list())
    check("ListFilesResponse", listing)
    check("DeleteFileResponse", _json(client.files.with_raw_response.delete(created["id"])))


def test_models(sandbox: Sandbox, check: Callable[[str, Any], None]) -> None:
    client = client_for(sandbox)
    check("ListModelsResponse", _json(client.models.with_raw_response.list()))
    check("Model", _json(client.models.with_raw_response.retrieve("gpt-4o-mini")))


def test_batches_in_every_state(make_sandbox: Any, check: Callable[[str, Any], None]) -> None:
    sb = make_sandbox(batch_rows_per_second=30.0, batch_validating_seconds=0.2)
    client = client_for(sb)
    bodies: list[dict[str, Any]] = []

    def grab(batch_id: str) -> dict[str, Any]:
        body: dict[str, Any] = _json(client.batches.with_raw_response.retrieve(batch_id))
        bodies.append(body)
        return body

    lines = [chat_line(f"r{i}", "fail" if i == 3 else f"row {i}") for i in range(20)]
    uploaded = client.files.create(file=("in.jsonl", to_jsonl(lines)), purpose="batch")
    created = _json(client.batches.with_raw_response.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
        metadata={"k": "v"},
    ))  # fmt: skip
    bodies.append(created)  # the create answer itself, not only later retrieves
    running = Batch.model_validate(created)
    assert grab(running.id)["status"] == "validating"
    wait_until(lambda: grab(running.id)["status"] == "in_progress")
    wait_until(lambda: grab(running.id)["status"] in ("finalizing", "completed"))
    done = wait_batch(client, running.id)
    grab(done.id)
    failed = wait_batch(client, submit(client, ["{oops"]).id)
    grab(failed.id)
    cancelled = _json(client.batches.with_raw_response.cancel(submit(client, lines).id))
    bodies.append(cancelled)  # the cancel answer itself
    cancelling = Batch.model_validate(cancelled)
    assert cancelling.status == "cancelling"
    grab(cancelling.id)
    grab(wait_batch(client, cancelling.id).id)
    statuses = {b["status"] for b in bodies}
    assert {
        "validating",
        "in_progress",
        "completed",
        "failed",
        "cancelling",
        "cancelled",
    } <= statuses
    for body in bodies:
        check("Batch", body)
        Batch.model_validate(body, strict=True)
    check("ListBatchesResponse", _json(client.batches.with_raw_response.list(limit=2)))
    for line in read_lines(client, done.output_file_id) + read_lines(client, done.error_file_id):
        check("manual:BatchRequestOutput", line)
        if line["response"]["status_code"] == 200:
            check("CreateChatCompletionResponse", line["response"]["body"])
        else:
            check("ErrorResponse", line["response"]["body"])


def test_expired_batch_and_its_lines(make_sandbox: Any, check: Callable[[str, Any], None]) -> None:
    sb = make_sandbox(batch_rows_per_second=20.0, time_scale=0.3 / 86400)
    client = client_for(sb)
    batch = wait_batch(client, submit(client, [chat_line(f"r{i}", "x") for i in range(20)]).id)
    assert batch.status == "expired"
    body = _json(client.batches.with_raw_response.retrieve(batch.id))
    check("Batch", body)
    Batch.model_validate(body, strict=True)
    for line in read_lines(client, batch.error_file_id):
        check("manual:BatchRequestOutput", line)


def test_the_checker_is_not_vacuous(check: Callable[[str, Any], None]) -> None:
    with pytest.raises(AssertionError):
        check("Batch", {"id": "batch_1", "object": "batch"})
    with pytest.raises(AssertionError):
        check("ErrorResponse", {"error": {"message": "x", "type": "t", "param": None}})
    with pytest.raises(AssertionError):
        check("manual:BatchRequestOutput", {"id": "x", "custom_id": 5, "response": None})
    check("manual:BatchRequestOutput", {"id": "x", "custom_id": "c", "response": None,
                                        "error": None})  # fmt: skip
