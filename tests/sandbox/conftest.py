"""Fixtures of the sandbox tests: sandboxes on free ports, SDK clients, bounded waits."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from openai import InternalServerError, OpenAI
from openai.types import Batch

from rowprompt.sandbox import Sandbox, SandboxConfig

FAST = {
    "batch_rows_per_second": 5000.0,
    "batch_validating_seconds": 0.05,
    "batch_finalizing_seconds": 0.05,
}


@pytest.fixture(scope="session")
def shared_sandbox() -> Iterator[Sandbox]:
    """One default sandbox for tests that only read (chat answers, models)."""
    with Sandbox(SandboxConfig(**FAST)) as sb:  # type: ignore[arg-type]
        yield sb


@pytest.fixture
def make_sandbox() -> Iterator[Callable[..., Sandbox]]:
    """Start a sandbox with the given config fields (fast batch settings by default)."""
    started: list[Sandbox] = []

    def make(**fields: Any) -> Sandbox:
        sb = Sandbox(SandboxConfig(**{**FAST, **fields}))
        sb.start()
        started.append(sb)
        return sb

    yield make
    for sb in started:
        sb.stop()


def client_for(sb: Sandbox, **options: Any) -> OpenAI:
    """The official SDK pointed at ``sb``; no retries unless asked."""
    options.setdefault("max_retries", 0)
    options.setdefault("timeout", 10.0)
    return OpenAI(base_url=sb.base_url, api_key="sk-test", **options)


@pytest.fixture
def client(shared_sandbox: Sandbox) -> OpenAI:
    """An SDK client of the shared sandbox."""
    return client_for(shared_sandbox)


def wait_until(check: Callable[[], Any], timeout: float = 10.0, every: float = 0.02) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(every)


def chat_line(custom_id: str, text: str, model: str = "gpt-4o-mini", **body: Any) -> dict[str, Any]:
    """One batch input line for a chat completion."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}], **body},
    }


def to_jsonl(lines: list[Any]) -> bytes:
    """Lines as JSONL bytes (strings are written as they are)."""
    return "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode()


def submit(client: OpenAI, lines: list[Any], **create: Any) -> Batch:
    """Upload ``lines`` as a batch file and create a chat completions batch from it."""
    uploaded = client.files.create(file=("input.jsonl", to_jsonl(lines)), purpose="batch")
    return client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        **create,
    )


TERMINAL = ("completed", "failed", "expired", "cancelled")


def wait_batch(client: OpenAI, batch_id: str, timeout: float = 15.0) -> Batch:
    """Poll a batch until it reaches a terminal state."""

    def done() -> Batch | None:
        batch = client.batches.retrieve(batch_id)
        return batch if batch.status in TERMINAL else None

    result: Batch = wait_until(done, timeout=timeout, every=0.05)
    return result


def read_lines(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    """A result file's lines, parsed."""
    if file_id is None:
        return []
    text = client.files.content(file_id).text
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def fault_sequence(sb: Sandbox, count: int = 30) -> list[int]:
    """Statuses of ``count`` sequential chat requests (200, or the 5xx of a fault)."""
    client = client_for(sb)
    statuses = []
    for i in range(count):
        try:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"row {i}"}]
            )
            statuses.append(200)
        except InternalServerError as exc:
            statuses.append(exc.status_code)
    return statuses
