"""The Batch API through the SDK: lifecycle, output joined back, errors, cancel, expiry."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from openai import BadRequestError, NotFoundError
from openai.types import Batch

from rowprompt.sandbox import Sandbox, batch_lines, expected_answer

from .conftest import (
    chat_line,
    client_for,
    read_lines,
    submit,
    to_jsonl,
    wait_batch,
    wait_until,
)

MakeSandbox = Callable[..., Sandbox]


def test_batch_completes_and_joins_back_by_custom_id(make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox(batch_rows_per_second=200.0, rules=[{"pattern": "^row 7$", "status": 400}])
    client = client_for(sb)
    lines = [chat_line(f"row-{i}", f"row {i}", max_tokens=20) for i in range(40)]
    created = submit(client, lines, metadata={"job": "test"})
    assert created.status == "validating"
    assert created.request_counts is not None and created.request_counts.total == 0
    assert created.expires_at == created.created_at + 86400
    assert created.in_progress_at is None and created.errors is None
    seen = {created.status}

    def finished() -> Batch | None:
        batch = client.batches.retrieve(created.id)
        seen.add(batch.status)
        return batch if batch.status == "completed" else None

    batch = wait_until(finished, timeout=15, every=0.02)
    assert {"validating", "in_progress", "finalizing", "completed"} <= seen
    for stamp in ("in_progress_at", "finalizing_at", "completed_at"):
        assert getattr(batch, stamp) is not None
    assert batch.failed_at is None and batch.cancelled_at is None
    assert batch.model == "gpt-4o-mini-sandbox"
    assert batch.metadata == {"job": "test"}
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed,
            batch.request_counts.failed) == (40, 39, 1)  # fmt: skip
    output = read_lines(client, batch.output_file_id)
    errors = read_lines(client, batch.error_file_id)
    assert len(output) == 39 and len(errors) == 1
    by_id = {line["custom_id"]: line for line in output}
    for line in lines:
        if line["custom_id"] == "row-7":
            continue
        got = by_id[line["custom_id"]]
        assert got["error"] is None and got["id"].startswith("batch_req_")
        assert got["response"]["status_code"] == 200
        content = got["response"]["body"]["choices"][0]["message"]["content"]
        assert content == expected_answer(line["body"])
    assert [line["custom_id"] for line in output] != [
        c["custom_id"] for c in lines if c["custom_id"] != "row-7"
    ]  # shuffled, as the real service gives them
    failed = errors[0]
    assert failed["custom_id"] == "row-7" and failed["error"] is None
    assert failed["response"]["status_code"] == 400
    assert set(failed["response"]["body"]["error"]) == {"message", "type", "param", "code"}
    assert batch.usage is not None
    assert batch.usage.input_tokens == sum(
        line["response"]["body"]["usage"]["prompt_tokens"] for line in output
    )
    assert batch.usage.output_tokens == sum(
        line["response"]["body"]["usage"]["completion_tokens"] for line in output
    )
    stats = sb.stats()
    assert stats["batches_by_final_state"] == {"completed": 1}
    assert stats["batch_lines_billed"] == 39
    assert stats["batch_custom_ids_billed_twice"] == 0
    assert set(sb.batch_lines()) == {line["custom_id"] for line in output}
    files = {f.id: f for f in client.files.list()}
    assert files[batch.output_file_id or ""].purpose == "batch_output"


def test_request_counts_advance_while_running(make_sandbox: MakeSandbox) -> None:
    client = client_for(make_sandbox(batch_rows_per_second=50.0))
    created = submit(client, [chat_line(f"r{i}", f"text {i}") for i in range(30)])

    def partial() -> bool:
        counts = client.batches.retrieve(created.id).request_counts
        return counts is not None and 0 < counts.completed < 30

    wait_until(partial, timeout=10)
    assert wait_batch(client, created.id).status == "completed"


def test_all_requests_failing_gives_no_output_file(make_sandbox: MakeSandbox) -> None:
    client = client_for(make_sandbox(rules=[{"pattern": ".", "status": 400}]))
    batch = wait_batch(client, submit(client, [chat_line(f"r{i}", "x") for i in range(3)]).id)
    assert batch.status == "completed"
    assert batch.output_file_id is None and batch.error_file_id is not None
    assert batch.request_counts is not None and batch.request_counts.failed == 3
    assert len(read_lines(client, batch.error_file_id)) == 3


GOOD = chat_line("a", "hello")
VALIDATION_CASES: list[tuple[str, list[Any], str, int | None]] = [
    ("bad json", [GOOD, "{not json"], "invalid_json_line", 2),
    ("missing key", [GOOD, {"custom_id": "b", "method": "POST", "url": "/v1/chat/completions"}],
     "missing_required_parameter", 2),
    ("method", [GOOD, {**chat_line("b", "x"), "method": "GET"}], "invalid_value", 2),
    ("url", [GOOD, {**chat_line("b", "x"), "url": "/v1/embeddings"}], "url_mismatch", 2),
    ("duplicate", [GOOD, chat_line("a", "again")], "duplicate_custom_id", 2),
    ("model", [GOOD, chat_line("b", "x", model="gpt-4o")], "model_mismatch", 2),
    ("empty", [], "empty_file", None),
    ("blank only", ["", "  "], "empty_file", None),
    ("stream", [GOOD, chat_line("b", "x", stream=True)], "unsupported_value", 2),
    ("unknown model", [chat_line("a", "x", model="gpt-9")], "model_not_found", None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("lines", "code", "line"),
    [c[1:] for c in VALIDATION_CASES],
    ids=[c[0] for c in VALIDATION_CASES],
)
def test_validation_failures(
    make_sandbox: MakeSandbox, lines: list[Any], code: str, line: int | None
) -> None:
    client = client_for(make_sandbox())
    batch = wait_batch(client, submit(client, lines).id)
    assert batch.status == "failed"
    assert batch.failed_at is not None and batch.in_progress_at is None
    assert batch.errors is not None and batch.errors.data
    error = batch.errors.data[0]
    assert error.code == code
    assert error.line == line
    assert error.message
    assert batch.output_file_id is None and batch.error_file_id is None


def test_too_many_requests_and_too_many_bytes(make_sandbox: MakeSandbox) -> None:
    client = client_for(make_sandbox(max_batch_requests=3, max_batch_bytes=2000))
    many = wait_batch(client, submit(client, [chat_line(f"r{i}", "x") for i in range(4)]).id)
    assert many.errors is not None and many.errors.data[0].code == "too_many_tasks"
    big = wait_batch(client, submit(client, [chat_line("r", "x" * 2100)]).id)
    assert big.errors is not None and big.errors.data[0].code == "file_too_large"
    ok = wait_batch(client, submit(client, [chat_line(f"r{i}", "x") for i in range(3)]).id)
    assert ok.status == "completed"


def test_create_parameter_errors(make_sandbox: MakeSandbox) -> None:
    client = client_for(make_sandbox())
    good = client.files.create(file=("in.jsonl", json.dumps(GOOD).encode()), purpose="batch")
    notes = client.files.create(file=("notes.txt", b"x"), purpose="user_data")
    base: dict[str, Any] = {
        "input_file_id": good.id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    cases: list[tuple[dict[str, Any], str]] = [
        ({"endpoint": "/v1/nothing"}, "endpoint"),
        ({"completion_window": "48h"}, "completion_window"),
        ({"input_file_id": "file-missing"}, "input_file_id"),
        ({"input_file_id": notes.id}, "input_file_id"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata.k"),
    ]
    for change, param in cases:
        with pytest.raises(BadRequestError) as info:
            client.batches.create(**{**base, **change})
        assert info.value.param == param, change
    with pytest.raises(BadRequestError) as info:
        client.post("/batches", body={"endpoint": "/v1/chat/completions"}, cast_to=object)
    assert info.value.code == "missing_required_parameter"
    with pytest.raises(NotFoundError):
        client.batches.retrieve("batch_nothere")
    with pytest.raises(NotFoundError):
        client.batches.cancel("batch_nothere")


def _limit_message(model: str, limit: int) -> str:
    return (
        f"Enqueued token limit reached for {model} in organization org-sandbox. "
        f"Limit: {limit:,} enqueued tokens. Please try again once some in_progress batches "
        "have been completed."
    )


def test_token_limit_exceeded(make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox(batch_rows_per_second=20.0, enqueued_token_limit={"gpt-4o-mini": 1000})
    client = client_for(sb)
    # 10 lines of (about 10 prompt tokens + 50 max_tokens): about 600 tokens each batch.
    lines = [chat_line(f"r{i}", f"row {i}", max_tokens=50) for i in range(10)]
    first = submit(client, lines)
    wait_until(lambda: client.batches.retrieve(first.id).status == "in_progress")
    second = wait_batch(client, submit(client, lines).id)
    assert second.status == "failed"
    assert second.errors is not None
    error = second.errors.data[0]
    assert error.code == "token_limit_exceeded"
    assert error.line is None and error.param is None
    assert error.message == _limit_message("gpt-4o-mini", 1000)
    stats = sb.stats()
    assert 500 < stats["peak_enqueued_tokens"]["gpt-4o-mini"] <= 1000
    assert stats["enqueued_tokens"]["gpt-4o-mini"] == stats["peak_enqueued_tokens"]["gpt-4o-mini"]
    assert wait_batch(client, first.id).status == "completed"
    assert sb.stats()["enqueued_tokens"]["gpt-4o-mini"] == 0
    # Once the first is done, the same batch fits again; another model has no limit here.
    assert wait_batch(client, submit(client, lines).id).status == "completed"
    other = [chat_line(f"r{i}", f"row {i}", model="gpt-4o", max_tokens=500) for i in range(10)]
    assert wait_batch(client, submit(client, other).id).status == "completed"


def test_one_batch_alone_over_the_limit(make_sandbox: MakeSandbox) -> None:
    client = client_for(make_sandbox(enqueued_token_limit=100))
    batch = wait_batch(client, submit(client, [chat_line("r", "x", max_tokens=200)]).id)
    assert batch.status == "failed"
    assert batch.errors is not None
    assert batch.errors.data[0].message == _limit_message("gpt-4o-mini", 100)


def test_expiry_keeps_finished_results(make_sandbox: MakeSandbox) -> None:
    # The 24 h window lasts 0.4 s; 20 rows/s finish about 6 of the 30 rows in that time.
    sb = make_sandbox(batch_rows_per_second=20.0, time_scale=0.4 / 86400)
    client = client_for(sb)
    lines = [chat_line(f"r{i}", f"row {i}") for i in range(30)]
    batch = wait_batch(client, submit(client, lines).id)
    assert batch.status == "expired"
    assert batch.expired_at is not None and batch.completed_at is None
    output = read_lines(client, batch.output_file_id)
    errors = read_lines(client, batch.error_file_id)
    assert 0 < len(output) < 30
    assert len(output) + len(errors) == 30
    assert {line["custom_id"] for line in output} | {line["custom_id"] for line in errors} == {
        line["custom_id"] for line in lines
    }
    for line in errors:
        assert line["response"] is None
        assert line["error"] == {
            "code": "batch_expired",
            "message": "This request could not be executed before the completion window expired.",
        }
    assert batch.request_counts is not None
    assert batch.request_counts.completed == len(output)
    assert sb.stats()["batches_by_final_state"] == {"expired": 1}


def test_cancel_gives_partial_results(make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox(batch_rows_per_second=40.0, batch_finalizing_seconds=0.3)
    client = client_for(sb)
    created = submit(client, [chat_line(f"r{i}", f"row {i}") for i in range(100)])
    wait_until(lambda: (client.batches.retrieve(created.id).request_counts or created).completed)
    cancelling = client.batches.cancel(created.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    batch = wait_batch(client, created.id)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    output = read_lines(client, batch.output_file_id)
    assert batch.request_counts is not None
    assert 0 < len(output) == batch.request_counts.completed < 100
    with pytest.raises(BadRequestError):
        client.batches.cancel(created.id)


def test_cancel_while_validating(make_sandbox: MakeSandbox) -> None:
    client = client_for(make_sandbox(batch_validating_seconds=5.0))
    created = submit(client, [chat_line("r", "x")])
    assert client.batches.cancel(created.id).status == "cancelling"
    batch = wait_batch(client, created.id, timeout=5)
    assert batch.status == "cancelled" and batch.output_file_id is None


def test_list_pagination(make_sandbox: MakeSandbox) -> None:
    client = client_for(make_sandbox(batch_validating_seconds=0.0))
    ids = [submit(client, [chat_line("r", f"x{i}")]).id for i in range(5)]
    first_page = client.batches.list(limit=2)
    assert [b.id for b in first_page.data] == ids[::-1][:2]
    assert first_page.has_more
    assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]  # auto-pagination
    after = client.batches.list(limit=10, after=ids[2])
    assert [b.id for b in after.data] == ids[1::-1] and not after.has_more
    for batch_id in ids:
        wait_batch(client, batch_id)


def test_a_line_with_a_bad_schema_fails_alone(make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox()
    client = client_for(sb)
    bad = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "wat"}}}
    lines = [chat_line("r0", "x"), chat_line("r1", "x", response_format=bad), chat_line("r2", "x")]
    batch = wait_batch(client, submit(client, lines).id)
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 1)
    [error] = read_lines(client, batch.error_file_id)
    assert error["custom_id"] == "r1"
    assert error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["code"] == "invalid_json_schema"
    assert {line["custom_id"] for line in read_lines(client, batch.output_file_id)} == {"r0", "r2"}


def test_a_line_that_crashes_the_sandbox_is_a_500_line(
    make_sandbox: MakeSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug (simulated) while answering one line: that line gets OpenAI's 500 body, the
    others are answered and the batch completes."""
    handler = batch_lines.HANDLERS["/v1/chat/completions"]

    def crashing(body: Any, *args: Any) -> Any:
        if body["messages"][0]["content"] == "crash":
            raise RuntimeError("simulated bug")
        return handler(body, *args)

    monkeypatch.setitem(batch_lines.HANDLERS, "/v1/chat/completions", crashing)
    sb = make_sandbox()
    client = client_for(sb)
    lines = [chat_line("r0", "x"), chat_line("r1", "crash"), chat_line("r2", "y")]
    batch = wait_batch(client, submit(client, lines).id)
    assert batch.status == "completed"
    [error] = read_lines(client, batch.error_file_id)
    assert error["custom_id"] == "r1"
    assert error["response"]["status_code"] == 500
    assert error["response"]["body"]["error"]["type"] == "server_error"
    assert len(read_lines(client, batch.output_file_id)) == 2


def test_a_worker_crash_fails_the_batch_with_a_reason(
    make_sandbox: MakeSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug (simulated) in the batch worker itself: the batch ends ``failed`` and says why,
    rather than staying ``in_progress`` for ever; its enqueued tokens are released."""
    sb = make_sandbox(batch_finalizing_seconds=0.01)
    client = client_for(sb)
    uploaded = client.files.create(
        file=("in.jsonl", to_jsonl([chat_line("r0", "x", max_tokens=5)])), purpose="batch"
    )

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(sb.state.files, "add", broken)  # writing the result files fails
    created = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = wait_batch(client, created.id, timeout=5)
    assert batch.status == "failed"
    assert batch.failed_at is not None
    assert batch.errors is not None and batch.errors.data
    assert batch.errors.data[0].code == "server_error"
    assert "internal error (RuntimeError)" in (batch.errors.data[0].message or "")
    stats = sb.stats()
    assert stats["batches_by_final_state"] == {"failed": 1}
    assert stats["internal_errors"] == 1
    assert stats["enqueued_tokens"]["gpt-4o-mini"] == 0
