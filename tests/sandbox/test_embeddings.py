"""The sandbox's ``POST /v1/embeddings``, driven through the official SDK over HTTP.

Vectors are checked against :func:`expected_embedding`, bodies against OpenAI's OpenAPI
description and the SDK's own types, errors against what OpenAI answers.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import httpx2
import numpy as np
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types import CreateEmbeddingResponse

from rowprompt.sandbox import FaultConfig, Sandbox
from rowprompt.sandbox.embeddings import expected_embedding
from rowprompt.tokens import count_text

from . import test_openapi
from .conftest import client_for, read_lines, to_jsonl, wait_batch

check = test_openapi.check  # the OpenAPI checker fixture, shared

MODEL = "text-embedding-3-small"


def _post(sb: Sandbox, body: Any) -> httpx2.Response:
    return httpx2.post(
        f"{sb.base_url}/embeddings", json=body, headers={"authorization": "Bearer sk-test"}
    )


def test_vectors_are_the_expected_unit_vectors(shared_sandbox: Sandbox) -> None:
    client = client_for(shared_sandbox)
    texts = ["first text", "second, longer text with more words", "Très bien 👍"]
    answer = client.embeddings.create(model=MODEL, input=texts)  # the SDK asks base64
    assert [d.index for d in answer.data] == [0, 1, 2]
    for item, text in zip(answer.data, texts, strict=True):
        vector = np.asarray(item.embedding, dtype=np.float32)
        assert np.array_equal(vector, expected_embedding(text))
        assert len(vector) == 1536
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
    assert answer.usage.prompt_tokens == sum(count_text(t, MODEL) for t in texts)
    assert answer.usage.total_tokens == answer.usage.prompt_tokens
    assert answer.model == f"{MODEL}-sandbox"


def test_dimensions_shorten_and_renormalise(shared_sandbox: Sandbox) -> None:
    client = client_for(shared_sandbox)
    short = client.embeddings.create(model="text-embedding-3-large", input="x", dimensions=64)
    vector = np.asarray(short.data[0].embedding, dtype=np.float32)
    assert len(vector) == 64
    assert np.array_equal(vector, expected_embedding("x", 64, "text-embedding-3-large"))
    full = expected_embedding("x", None, "text-embedding-3-large")
    assert len(full) == 3072
    # The short vector points the way the full one's first 64 values do.
    assert np.allclose(vector, full[:64] / np.linalg.norm(full[:64]), atol=1e-6)


def test_float_and_base64_bodies_validate_against_the_spec_and_the_sdk(
    shared_sandbox: Sandbox, check: Callable[[str, Any], None]
) -> None:
    floats = _post(shared_sandbox, {"model": MODEL, "input": ["a", "b"], "dimensions": 8})
    data = floats.json()
    check("CreateEmbeddingResponse", data)
    CreateEmbeddingResponse.model_validate(data, strict=True)
    assert np.array_equal(
        np.asarray(data["data"][1]["embedding"], dtype=np.float32), expected_embedding("b", 8)
    )
    encoded = _post(
        shared_sandbox, {"model": MODEL, "input": "b", "dimensions": 8, "encoding_format": "base64"}
    ).json()
    raw = np.frombuffer(base64.b64decode(encoded["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(raw, expected_embedding("b", 8))
    for name in ("x-ratelimit-limit-requests", "x-ratelimit-remaining-tokens", "x-request-id"):
        assert name in floats.headers


def test_token_arrays_embed_as_their_text(shared_sandbox: Sandbox) -> None:
    from rowprompt.tokens import encoding

    ids = encoding("cl100k_base").encode("hello there")
    data = _post(shared_sandbox, {"model": MODEL, "input": [ids], "dimensions": 4}).json()
    assert np.allclose(data["data"][0]["embedding"], expected_embedding("hello there", 4))
    assert data["usage"]["prompt_tokens"] == len(ids)


@pytest.mark.parametrize(
    ("body", "status", "message", "param"),
    [
        ({"model": MODEL, "input": ""}, 400, "'$.input' is invalid", None),
        ({"model": MODEL, "input": ["ok", ""]}, 400, "'$.input' is invalid", None),
        ({"model": MODEL, "input": []}, 400, "'$.input' is invalid", None),
        ({"model": MODEL}, 400, "Missing required parameter: 'input'", "input"),
        ({"input": "x"}, 400, "you must provide a model parameter", "model"),
        ({"model": "nope", "input": "x"}, 404, "does not exist", None),
        ({"model": "gpt-4o-mini", "input": "x"}, 403, "not allowed to generate embeddings", None),
        (
            {"model": "text-embedding-ada-002", "input": "x", "dimensions": 8},
            400,
            "does not support specifying dimensions",
            None,
        ),
        ({"model": MODEL, "input": "x", "dimensions": 0}, 400, "below minimum", "dimensions"),
        ({"model": MODEL, "input": "x", "dimensions": 5000}, 400, "above maximum", "dimensions"),
        (
            {"model": MODEL, "input": "x", "encoding_format": "hex"},
            400,
            "Supported values are: 'float' and 'base64'",
            "encoding_format",
        ),
        ({"model": MODEL, "input": "x", "temperature": 1}, 400, "Unrecognized", "temperature"),
        ({"model": MODEL, "input": ["x"] * 2049}, 400, "'$.input' is invalid", None),
        ({"model": MODEL, "input": "word " * 9000}, 400, "maximum context length is 8192", None),
        ({"model": MODEL, "input": ["word " * 8000] * 40}, 400, "max 300000 tokens", None),
    ],
)
def test_bad_requests_are_answered_as_openai_does(
    shared_sandbox: Sandbox,
    check: Callable[[str, Any], None],
    body: dict[str, Any],
    status: int,
    message: str,
    param: str | None,
) -> None:
    answer = _post(shared_sandbox, body)
    assert answer.status_code == status
    error = answer.json()["error"]
    check("ErrorResponse", answer.json())
    assert message in error["message"]
    assert error["param"] == param


def test_faults_limits_and_the_request_log_apply(make_sandbox: Any) -> None:
    sb = make_sandbox(tpm=50, faults=FaultConfig(rate_limit_storm_requests=1))
    client = client_for(sb)
    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(model=MODEL, input="storm")
    ok = client.embeddings.with_raw_response.create(model=MODEL, input=["a b c", "d e"])
    assert ok.headers["x-ratelimit-limit-tokens"] == "50"
    tokens_left = int(ok.headers["x-ratelimit-remaining-tokens"])
    assert tokens_left == 50 - count_text("a b c", MODEL) - count_text("d e", MODEL)
    with pytest.raises(openai.RateLimitError):  # more tokens than the minute has left
        client.embeddings.create(model=MODEL, input="word " * 60)
    log = [e for e in sb.requests() if e["status"] == 200]
    assert log[-1]["inputs"] == 2 and log[-1]["input_texts"] == ["a b c", "d e"]
    assert sb.stats()["requests_by_endpoint"]["POST /v1/embeddings"] == 3


def test_scripted_errors_fail_the_request_whose_input_matches(make_sandbox: Any) -> None:
    sb = make_sandbox(rules=[{"pattern": "^poison", "status": 400, "message": "bad input"}])
    assert _post(sb, {"model": MODEL, "input": ["fine", "poison here"]}).status_code == 400
    assert _post(sb, {"model": MODEL, "input": ["fine"]}).status_code == 200


def _line(custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": body}


def _submit(client: openai.OpenAI, lines: list[Any]) -> Any:
    uploaded = client.files.create(file=("input.jsonl", to_jsonl(lines)), purpose="batch")
    return client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
    )


def test_an_embeddings_batch_answers_every_line(
    shared_sandbox: Sandbox, check: Callable[[str, Any], None]
) -> None:
    client = client_for(shared_sandbox)
    lines = [
        _line(f"r{i}", {"model": MODEL, "input": f"row {i}", "dimensions": 4}) for i in range(5)
    ]
    lines.append(_line("bad", {"model": MODEL, "input": ""}))
    batch = wait_batch(client, _submit(client, lines).id)
    assert batch.status == "completed"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (5, 1)
    for record in read_lines(client, batch.output_file_id):
        check("manual:BatchRequestOutput", record)
        body = record["response"]["body"]
        check("CreateEmbeddingResponse", body)
        i = int(record["custom_id"][1:])
        assert np.array_equal(
            np.asarray(body["data"][0]["embedding"], dtype=np.float32),
            expected_embedding(f"row {i}", 4),
        )
    (error,) = read_lines(client, batch.error_file_id)
    assert error["custom_id"] == "bad" and error["response"]["status_code"] == 400


def test_a_batch_over_50000_embedding_inputs_fails_validation(shared_sandbox: Sandbox) -> None:
    client = client_for(shared_sandbox)
    lines = [_line(f"r{i}", {"model": MODEL, "input": ["a"] * 2048}) for i in range(25)]
    batch = wait_batch(client, _submit(client, lines).id)
    assert batch.status == "failed"
    assert batch.errors is not None and batch.errors.data
    assert "50,000 embedding inputs" in (batch.errors.data[0].message or "")


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=1, max_size=60), st.integers(min_value=1, max_value=1536))
def test_expected_embedding_is_a_deterministic_unit_vector(text: str, dims: int) -> None:
    vector = expected_embedding(text, dims)
    assert vector.dtype == np.float32 and vector.shape == (dims,)
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4
    assert np.array_equal(vector, expected_embedding(text, dims))
    assert json.dumps(vector.tolist())  # plain floats, JSON-ready
