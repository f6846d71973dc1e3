"""Starting and stopping sandboxes, their independence, the stats and request log, the CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx2
from click.testing import CliRunner

from rowprompt.sandbox import Sandbox, SandboxConfig
from rowprompt.sandbox.cli import sandbox_command
from rowprompt.tokens import count_messages

from .conftest import client_for

MakeSandbox = Callable[..., Sandbox]
MESSAGES = [{"role": "user", "content": "Row 1: " + "x" * 600}]


def test_start_stop_without_with_block() -> None:
    sb = Sandbox(SandboxConfig())
    sb.start()
    try:
        assert sb.base_url == f"http://127.0.0.1:{sb.port}/v1"
        assert httpx2.get(f"{sb.url}/sandbox/stats").status_code == 200
    finally:
        sb.stop()
        sb.stop()  # idempotent
    try:
        httpx2.get(f"{sb.url}/sandbox/stats", timeout=1)
    except httpx2.HTTPError:
        pass
    else:
        raise AssertionError("the sandbox still answers after stop()")


def test_instances_are_independent(make_sandbox: MakeSandbox) -> None:
    one, two = make_sandbox(seed=1), make_sandbox(seed=2, models=["gpt-4o"])
    assert one.port != two.port
    client_for(one).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert one.stats()["requests_total"] == 1
    assert two.stats()["requests_total"] == 0
    assert [m.id for m in client_for(two).models.list()] == ["gpt-4o"]


def test_request_log_and_reset(make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox()
    client = client_for(sb)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    log = sb.requests()
    assert len(log) == 1
    entry = log[0]
    assert entry["status"] == 200 and entry["model"] == "gpt-4o-mini"
    assert entry["retry_count"] == "0"
    assert entry["last_user_message"] == MESSAGES[0]["content"][:500]
    raw = json.dumps(MESSAGES, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert entry["messages_sha256"] == hashlib.sha256(raw.encode()).hexdigest()
    assert entry["prompt_tokens"] == count_messages(MESSAGES, "gpt-4o-mini")
    assert httpx2.get(f"{sb.url}/sandbox/requests").json() == log
    stats = httpx2.get(f"{sb.url}/sandbox/stats").json()
    assert stats["requests_by_endpoint"] == {"POST /v1/chat/completions": 1}
    assert stats["requests_by_status"] == {"200": 1}
    assert stats["tokens_per_second"][0]["prompt_tokens"] == entry["prompt_tokens"]
    assert stats["tokens_per_minute"][0]["requests"] == 1
    assert httpx2.post(f"{sb.url}/sandbox/reset").status_code == 200
    assert sb.requests() == []
    assert sb.stats()["requests_total"] == 0


def test_endpoints_are_counted_with_placeholders(make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox()
    client = client_for(sb)
    uploaded = client.files.create(file=("a.jsonl", b"{}\n"), purpose="batch")
    client.files.retrieve(uploaded.id)
    client.models.retrieve("gpt-4o")
    counted = sb.stats()["requests_by_endpoint"]
    assert counted == {
        "POST /v1/files": 1,
        "GET /v1/files/{file_id}": 1,
        "GET /v1/models/{model}": 1,
    }


def test_cli_help_and_bad_rules(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(sandbox_command, ["--help"])
    assert result.exit_code == 0 and "--rate-limit-storm" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text('[{"pattern": "(", "answer": "x"}]')
    result = runner.invoke(sandbox_command, ["--rules", str(bad)])
    assert result.exit_code == 2 and "bad pattern" in result.output


def test_cli_serves_until_terminated() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = "from rowprompt.sandbox.cli import sandbox_command; sandbox_command()"
    options = ["--port", str(port), "--rpm", "5", "--seed", "3", "--quota-exhausted-after", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *options, "--token-accounting", "anthropic"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx2.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    json={"model": "gpt-4o-mini", "messages": MESSAGES},
                    headers={"authorization": "Bearer sk-test"},
                    timeout=2,
                )
                break
            except httpx2.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit-requests"] == "5"
        # The account's credit ran out after one request.
        again = httpx2.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": MESSAGES},
            headers={"authorization": "Bearer sk-test"},
            timeout=2,
        )
        assert again.status_code == 429
        assert again.json()["error"]["code"] == "insufficient_quota"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
