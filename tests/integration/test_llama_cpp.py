"""The core workflow in real time through a real llama.cpp server and a real (tiny) model.

What the sandbox cannot prove: that rowprompt reads a server it did not write. Real
tokenisation, real usage, real ``finish_reason``, real latency, no rate-limit headers, no
Batch API, a 500 for ``json_schema``. The model is SmolLM2-135M: these tests check the
plumbing, never its wording. Temperature 0 keeps every answer the same from run to run.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import rowprompt
from tests.helpers import RP, run_cli
from tests.integration.conftest import MODEL_ALIAS, LlamaServer

# Twelve words whose short answers all end well inside MAX_TOKENS (at most 13 tokens): the
# core tests then expect every row ok. Answers that run long are what `truncated` is for.
THINGS = [
    "apple", "river", "mountain", "cat", "bread", "winter",
    "guitar", "lemon", "grass", "sky", "tomato", "cloud",
]  # fmt: skip
ROWS = 10
SHORT_PROMPT = "Name the colour of {{ thing }} in one word."
LONG_PROMPT = "Write a long story about a {{ thing }}."
MAX_TOKENS = 32


def things(n: int = ROWS) -> pd.DataFrame:
    """A small table: a row id and a word to ask about (every row a different request)."""
    assert n <= len(THINGS)
    return pd.DataFrame({"id": [f"r{i:02d}" for i in range(n)], "thing": THINGS[:n]})


def write_things(path: Path, n: int = ROWS) -> Path:
    """The table as a CSV file."""
    things(n).to_csv(path, index=False)
    return path


def cli_args(server: LlamaServer, src: Path, home: Path, out: Path, *extra: str) -> list[str]:
    """``rowprompt run`` against the server as a user would type it (no OPENAI_API_KEY)."""
    return ["run", str(src), "--prompt", SHORT_PROMPT, "--provider", "openai",
            "--base-url", server.base_url, "--temperature", "0",
            "--max-tokens", str(MAX_TOKENS), "--home", str(home), "--output", str(out),
            "--no-report", *extra]  # fmt: skip


def ledger_rows(home: Path, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    """Rows of a query on the job database."""
    db = sqlite3.connect(home / "rowprompt.db", timeout=5)
    db.row_factory = sqlite3.Row
    try:
        return list(db.execute(sql, params))
    finally:
        db.close()


def ask_server(server: LlamaServer, content: str, **params: Any) -> dict[str, Any]:
    """One chat completion straight from the server, without rowprompt in between."""
    body = {"model": MODEL_ALIAS, "messages": [{"role": "user", "content": content}], **params}
    request = urllib.request.Request(
        f"{server.base_url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer: dict[str, Any] = json.loads(response.read())
        answer["_headers"] = dict(response.headers.items())
        return answer


def check_against_ledger(frame: pd.DataFrame, home: Path) -> None:
    """Each row's tokens are those of its one successful attempt, and its latency is kept."""
    keys = [row["key"] for row in ledger_rows(home, "SELECT key FROM rows ORDER BY position")]
    attempts = ledger_rows(
        home, "SELECT key, prompt_tokens, completion_tokens, started_at, finished_at"
        " FROM attempts WHERE via = 'realtime' AND status_code = 200",
    )  # fmt: skip
    by_key: dict[str, list[sqlite3.Row]] = {}
    for attempt in attempts:
        by_key.setdefault(attempt["key"], []).append(attempt)
    assert sorted(by_key) == sorted(keys)
    for key, prompt_tokens, completion_tokens in zip(
        keys, frame["_prompt_tokens"], frame["_completion_tokens"], strict=True
    ):
        (attempt,) = by_key[key]
        assert attempt["prompt_tokens"] == int(prompt_tokens) > 0
        assert attempt["completion_tokens"] == int(completion_tokens) > 0
        assert attempt["finished_at"] > attempt["started_at"] > 0


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll until ``condition`` holds."""
    stop = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < stop, "timed out"
        time.sleep(0.05)


def done_rows(home: Path) -> int:
    """Rows done so far (0 while the job database does not exist yet)."""
    if not (home / "rowprompt.db").exists():
        return 0
    try:
        return int(ledger_rows(home, "SELECT count(*) FROM rows WHERE state = 'done'")[0][0])
    except sqlite3.OperationalError:
        return 0


def statuses(frame: pd.DataFrame) -> list[str]:
    """The ``_status`` column as a list."""
    return [str(s) for s in frame["_status"]]


# -- the core workflow ------------------------------------------------------------------------
def test_cli_run_in_auto_mode_answers_every_row_with_the_servers_usage(
    llama_server: LlamaServer, tmp_path: Path
) -> None:
    src, home, out = write_things(tmp_path / "in.csv"), tmp_path / "home", tmp_path / "out.csv"
    result = run_cli(*cli_args(llama_server, src, home, out, "--mode", "auto"), timeout=120)
    assert result.returncode == 0, result.stderr
    # auto picks real time for a small job: this server could not take a batch.
    assert "realtime: a small job" in result.stderr
    frame = pd.read_csv(out, dtype={"id": str, "thing": str, "response": str})
    assert list(frame["id"]) == list(things()["id"])
    assert list(frame["thing"]) == THINGS[:ROWS]
    assert statuses(frame) == ["ok"] * ROWS
    assert all(isinstance(text, str) and text.strip() for text in frame["response"])
    assert set(frame["_via"]) == {"realtime"}
    check_against_ledger(frame, home)
    # The server's own count for the same request, asked without rowprompt in between.
    direct = ask_server(
        llama_server, SHORT_PROMPT.replace("{{ thing }}", THINGS[0]),
        temperature=0, max_tokens=MAX_TOKENS,
    )  # fmt: skip
    assert int(frame["_prompt_tokens"][0]) == direct["usage"]["prompt_tokens"]
    assert int(frame["_completion_tokens"][0]) == direct["usage"]["completion_tokens"]


def test_python_run_returns_the_servers_answers_after_a_slow_start(
    llama_server: LlamaServer, tmp_path: Path
) -> None:
    direct = ask_server(
        llama_server, SHORT_PROMPT.replace("{{ thing }}", THINGS[5]),
        temperature=0, max_tokens=MAX_TOKENS,
    )  # fmt: skip
    # No rate-limit headers: the engine knows no limit and paces itself by slow start.
    assert not [name for name in direct["_headers"] if name.lower().startswith("x-ratelimit")]
    seen: list[Any] = []
    frame = rowprompt.run(
        things(), prompt=SHORT_PROMPT, provider="openai", base_url=llama_server.base_url,
        mode="realtime", temperature=0, max_tokens=MAX_TOKENS, home=str(tmp_path / "home"),
        on_stats=seen.append,
    )  # fmt: skip
    assert list(frame["id"]) == list(things()["id"])
    assert statuses(frame) == ["ok"] * ROWS
    check_against_ledger(frame, tmp_path / "home")
    assert direct["choices"][0]["finish_reason"] == "stop"
    assert frame["response"][5] == direct["choices"][0]["message"]["content"]
    assert frame["_prompt_tokens"][5] == direct["usage"]["prompt_tokens"]
    assert frame["_completion_tokens"][5] == direct["usage"]["completion_tokens"]
    assert seen
    assert {s.limit_source for s in seen} == {"unknown"}
    assert all(s.rpm_limit is None and s.tpm_limit is None for s in seen)
    assert seen[-1].rate_limited == 0


def test_max_tokens_cuts_answers_and_marks_them_truncated(
    llama_server: LlamaServer, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    frame = rowprompt.run(
        things(6), prompt=LONG_PROMPT, provider="openai", base_url=llama_server.base_url,
        mode="realtime", temperature=0, max_tokens=5, home=str(home),
    )  # fmt: skip
    reasons = [
        row["finish_reason"]
        for row in ledger_rows(home, "SELECT finish_reason FROM rows ORDER BY position")
    ]
    assert "length" in reasons
    for reason, status, completion_tokens, raw, error in zip(
        reasons, frame["_status"], frame["_completion_tokens"], frame["_raw"], frame["_error"],
        strict=True,
    ):  # fmt: skip
        assert completion_tokens <= 5
        if reason == "length":
            assert status == "truncated"
            assert completion_tokens == 5
            assert isinstance(raw, str) and raw
            assert "token limit" in error
        else:
            assert status == "ok"


# -- typed answers on a server without json_schema --------------------------------------------
def test_json_answers_parse_or_fail_honestly(llama_server: LlamaServer, tmp_path: Path) -> None:
    rows = 4
    for structured in (None, True):
        frame = rowprompt.run(
            things(rows), prompt='Describe a {{ thing }} as JSON with keys "name" and "colour".',
            provider="openai", base_url=llama_server.base_url, mode="realtime",
            temperature=0, max_tokens=40, output_type="json", structured=structured,
            repair=0, home=str(tmp_path / f"home-{structured}"),
        )  # fmt: skip
        assert list(frame["id"]) == list(things(rows)["id"])
        if structured:
            # json_object mode: the server constrains the answer to JSON, every row parses.
            assert statuses(frame) == ["ok"] * rows, list(frame["_raw"])
            answer_columns = set(frame.columns) - {"id", "thing", "_status", "_error", "_raw"}
            assert {c for c in answer_columns if not c.startswith("_")}
        # Instruct and parse (the default on a compatible server): parsed or kept raw.
        assert set(statuses(frame)) <= {"ok", "parse_error"}, list(frame["_error"])
        for status, raw, error in zip(
            frame["_status"], frame["_raw"], frame["_error"], strict=True
        ):
            if status == "ok":
                assert pd.isna(raw) and pd.isna(error)
            else:
                assert isinstance(raw, str) and raw
                assert isinstance(error, str) and error


@pytest.mark.parametrize("server_from", ["--base-url", "OPENAI_BASE_URL"])
def test_integer_output_instructs_and_parses_on_a_compatible_server(
    llama_server: LlamaServer, tmp_path: Path, server_from: str
) -> None:
    rows, cap = 4, 8
    src, home, out = write_things(tmp_path / "in.csv", rows), tmp_path / "home", tmp_path / "o.csv"
    args = cli_args(llama_server, src, home, out, "--mode", "realtime")
    args[args.index(SHORT_PROMPT)] = "How many letters are in the word {{ thing }}?"
    args[args.index("--max-tokens") + 1] = str(cap)
    env = {}
    if server_from == "OPENAI_BASE_URL":
        at = args.index("--base-url")
        del args[at : at + 2]
        env["OPENAI_BASE_URL"] = llama_server.base_url
    posts_before = llama_server.chat_posts()
    result = run_cli(*args, "--output-type", "integer", "--repair", "0", env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(out, dtype={"_raw": str, "_error": str})
    # Whatever the tiny model says, each row is answered, cut at the cap, or kept raw.
    assert set(statuses(frame)) <= {"ok", "parse_error", "truncated"}, list(frame["_error"])
    for status, response, raw, completion_tokens in zip(
        frame["_status"], frame["response"], frame["_raw"], frame["_completion_tokens"],
        strict=True,
    ):  # fmt: skip
        assert 0 < completion_tokens <= cap
        if status == "ok":
            assert float(response) == int(response)
        else:
            assert isinstance(raw, str) and raw
    # One request a row, none of them a json_schema the server would have answered with a 500.
    assert llama_server.chat_posts() - posts_before == rows
    assert '/v1/chat/completions HTTP/1.1" 500' not in llama_server.log_tail(10**9)


# -- batch ------------------------------------------------------------------------------------
def test_batch_mode_fails_in_one_line_naming_the_missing_batch_api(
    llama_server: LlamaServer, tmp_path: Path
) -> None:
    src, home, out = write_things(tmp_path / "in.csv"), tmp_path / "home", tmp_path / "out.csv"
    args = cli_args(llama_server, src, home, out, "--mode", "batch", "--quiet")
    posts_before = llama_server.chat_posts()
    result = run_cli(*args, timeout=120)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1, result.stderr
    line = result.stderr.strip()
    assert line.startswith("Error: the server at http://127.0.0.1:")
    assert "has no Batch API" in line
    assert "--mode realtime" in line
    assert "Traceback" not in result.stdout
    assert llama_server.chat_posts() == posts_before


# -- resume -----------------------------------------------------------------------------------
def test_a_run_killed_midway_resumes_asking_no_finished_row_again(
    llama_server: LlamaServer, tmp_path: Path
) -> None:
    n, concurrency = len(THINGS), 2
    src, home, out = write_things(tmp_path / "in.csv", n), tmp_path / "home", tmp_path / "out.csv"
    args = cli_args(llama_server, src, home, out, "--mode", "realtime",
                    "--concurrency", str(concurrency))  # fmt: skip
    posts_before = llama_server.chat_posts()
    proc = subprocess.Popen([RP, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: done_rows(home) >= 3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done_at_kill = done_rows(home)
    assert 3 <= done_at_kill < n
    result = run_cli(*args, timeout=120)
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(out, dtype={"id": str})
    assert list(frame["id"]) == list(things(n)["id"])
    assert statuses(frame) == ["ok"] * n
    check_against_ledger(frame, home)
    # Rows answered before the kill were not asked again; only those in flight at the kill
    # may have reached the server twice.
    asked = llama_server.chat_posts() - posts_before
    assert n <= asked <= n + concurrency
