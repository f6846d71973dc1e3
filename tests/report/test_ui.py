"""The live view: loopback by default, a token on every request, actions through the API."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import pytest

from rowprompt.report.commands import ui_command
from rowprompt.report.ui import UIServer, is_loopback
from rowprompt.sandbox import Sandbox
from tests.helpers import RP, fast_config
from tests.report.conftest import Jobs


@dataclass
class Reply:
    """One HTTP answer."""

    status_code: int
    text: str
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.text)


class Client:
    """A tiny cookie-keeping HTTP client on the standard library (no extra dependency)."""

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        self.headers = headers or {}
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def request(self, method: str, url: str, params: dict[str, str] | None = None,
                headers: dict[str, str] | None = None, timeout: float = 10) -> Reply:  # fmt: skip
        if params:
            url += "?" + urllib.parse.urlencode(params)
        req = urllib.request.Request(
            url, method=method, headers={**self.headers, **(headers or {})}
        )
        try:
            with self.opener.open(req, timeout=timeout) as r:
                return Reply(
                    r.status, r.read().decode(), {k.lower(): v for k, v in r.headers.items()}
                )
        except urllib.error.HTTPError as e:
            return Reply(e.code, e.read().decode(), {k.lower(): v for k, v in e.headers.items()})

    def get(self, url: str, **kw: Any) -> Reply:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> Reply:
        return self.request("POST", url, **kw)


def test_binds_to_loopback_by_default() -> None:
    defaults = {p.name: p.default for p in ui_command.params}
    assert defaults["host"] == "127.0.0.1"
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("evil.example")


def test_refuses_requests_without_the_token(jobs: Jobs) -> None:
    with UIServer(str(jobs.home)) as ui:
        assert ui.sock.getsockname()[0] == "127.0.0.1"
        base = f"http://127.0.0.1:{ui.port}"
        with Client() as client:
            for path in ("/", "/api/jobs", f"/jobs/{jobs.batch}", f"/api/jobs/{jobs.batch}"):
                assert client.get(base + path).status_code == 403
                assert client.get(base + path, params={"token": "wrong"}).status_code == 403
            first = client.get(ui.url)
            assert first.status_code == 200 and jobs.batch in first.text
            # The cookie set on the first visit lets the links work without the token.
            assert client.get(f"{base}/jobs/{jobs.batch}").status_code == 200
            # ... but never an action: that needs the token itself (no CSRF through a cookie).
            assert client.post(f"{base}/api/jobs/{jobs.batch}/collect").status_code == 403
            # A page that rebinds its own name to 127.0.0.1 is refused by Host.
            evil = client.get(ui.url, headers={"Host": "evil.example"})
            assert evil.status_code == 403


def test_json_endpoints(jobs: Jobs) -> None:
    with UIServer(str(jobs.home)) as ui, Client(headers={"X-Rowprompt-Token": ui.token}) as c:
        base = f"http://127.0.0.1:{ui.port}"
        listed = c.get(base + "/api/jobs").json()
        assert {j["id"] for j in listed["jobs"]} == {
            jobs.realtime,
            jobs.batch,
            jobs.failing,
            jobs.cached,
        }
        assert all(j["state"] == "done" for j in listed["jobs"])
        one = c.get(f"{base}/api/jobs/{jobs.realtime[:5]}").json()
        assert one["id"] == jobs.realtime and 'data-chart="realtime"' in one["body"]
        again = c.get(f"{base}/api/jobs/{jobs.realtime}").json()
        assert again["version"] == one["version"]  # unchanged ledger: the cached render
        assert c.get(f"{base}/api/jobs/nope").status_code == 404
        report = c.get(f"{base}/jobs/{jobs.batch}/report.html")
        assert report.status_code == 200 and "attachment" in report.headers["content-disposition"]


def test_actions_call_the_library(jobs: Jobs, home_copy: Path) -> None:
    with UIServer(str(home_copy)) as ui, Client(headers={"X-Rowprompt-Token": ui.token}) as c:
        base = f"http://127.0.0.1:{ui.port}"
        collected = c.post(f"{base}/api/jobs/{jobs.batch}/collect", timeout=30)
        assert collected.status_code == 200 and collected.json()["ok"]
        assert collected.json()["message"].startswith("60 ok, 0 failed")
        cancelled = c.post(f"{base}/api/jobs/{jobs.realtime}/cancel", timeout=30)
        assert cancelled.status_code == 200, cancelled.text
        state = c.get(f"{base}/api/jobs/{jobs.realtime}").json()["state"]
        assert state == "cancelled"
        # The library's own refusal comes back as one line, as the CLI would print it.
        dataframe = c.post(f"{base}/api/jobs/{jobs.failing}/cancel", timeout=30)
        assert dataframe.status_code == 409 and "DataFrame" in dataframe.json()["message"]
        missing = c.post(f"{base}/api/jobs/nope/cancel")
        assert missing.status_code == 409 and "no job" in missing.json()["message"]


T = TypeVar("T")


def _until(read: Callable[[], T], ok: Callable[[T], bool], timeout: float = 60) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if ok(value):
            return value
        assert time.monotonic() < deadline, f"timed out; last: {value!r}"[:2000]
        time.sleep(0.05)


def test_job_page_updates_while_running(tmp_path: Path) -> None:
    """A job driven by another process: the list's progress and the job page's body move on
    while it runs, and an action on it is refused (its driver holds it) with the reason."""
    source = tmp_path / "in.csv"
    pd.DataFrame({"review": [f"review number {i}" for i in range(40)]}).to_csv(source, index=False)
    home = tmp_path / "home"
    # 40 rows, 2 at a time, 250 ms each: about 5 s of running, room for a loaded machine.
    with Sandbox(fast_config(latency_ms=250)) as sb:
        args = ["run", str(source), "--prompt", "Sentiment of: {{ review }}", "--provider",
                "sandbox", "--base-url", sb.base_url, "--mode", "realtime", "--concurrency", "2",
                "--home", str(home), "--yes", "--quiet", "--no-report"]  # fmt: skip
        driver = subprocess.Popen([RP, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            _until(lambda: (home / "rowprompt.db").is_file(), bool)
            with UIServer(str(home)) as ui, Client({"X-Rowprompt-Token": ui.token}) as c:
                base = f"http://127.0.0.1:{ui.port}"

                def listed() -> dict[str, Any]:
                    reply = c.get(base + "/api/jobs")
                    jobs = reply.json()["jobs"] if reply.status_code == 200 else []
                    return jobs[0] if jobs else {"state": "", "finished": 0}

                first = _until(listed, lambda j: j["state"] == "running" and j["finished"] >= 2)
                job = first["id"]
                # Its driver holds it: the action is refused, with the CLI's reason.
                busy = c.post(f"{base}/api/jobs/{job}/collect", timeout=30)
                assert busy.status_code == 409 and not busy.json()["ok"], busy.text
                assert f"pid {driver.pid}" in busy.json()["message"]
                page = _until(lambda: c.get(f"{base}/api/jobs/{job}").json(),
                              lambda p: p["state"] == "running")  # fmt: skip
                later = _until(listed, lambda j: j["finished"] >= first["finished"] + 4)
                assert later["state"] == "running" and later["total"] == 40
                moved = _until(lambda: c.get(f"{base}/api/jobs/{job}").json(),
                               lambda p: p["version"] != page["version"])  # fmt: skip
                assert moved["state"] == "running"
                done = [int(re.search(r'<div class="v">([\d,]+) / 40</div>', p["body"])[1])
                        for p in (page, moved)]  # fmt: skip
                assert done[1] > done[0]
                assert driver.wait(timeout=60) == 0, driver.stdout.read() if driver.stdout else ""
                end = _until(lambda: c.get(f"{base}/api/jobs/{job}").json(),
                             lambda p: p["state"] == "done")  # fmt: skip
                assert '<div class="v">40 / 40</div>' in end["body"]
                assert _until(listed, lambda j: j["state"] == "done")["finished"] == 40
        finally:
            if driver.poll() is None:
                driver.kill()
            driver.wait()


@pytest.fixture
def started() -> Iterator[Callable[..., tuple[subprocess.Popen[str], str, str]]]:
    """Starts `rowprompt ui` with these arguments; returns it, its URL and its warnings."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> tuple[subprocess.Popen[str], str, str]:
        proc = subprocess.Popen(
            [RP, "ui", "--no-browser", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # in the order written: a warning comes before the URL
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        procs.append(proc)
        assert proc.stdout is not None
        before: list[str] = []
        while not (line := proc.stdout.readline()).startswith("rowprompt ui: "):
            assert line, "".join(before)  # it ended without printing its URL
            before.append(line)
        warning = "".join(before)
        return proc, line.removeprefix("rowprompt ui: ").strip(), warning

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_ui_command_prints_a_url_with_its_token(jobs: Jobs, started: Any) -> None:
    proc, url, warning = started("--home", str(jobs.home))
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\?token=[\w-]{32}", url), url
    assert warning == ""
    port = int(url.split(":")[2].split("/")[0])
    with Client() as c:
        assert c.get(f"http://127.0.0.1:{port}/").status_code == 403
        page = c.get(url)
        assert page.status_code == 200 and jobs.realtime in page.text
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) in (0, 130)  # Ctrl-C stops it


def test_ui_command_warns_off_loopback(jobs: Jobs, started: Any) -> None:
    _, url, warning = started("--home", str(jobs.home), "--host", "0.0.0.0")
    assert warning.startswith("Warning: listening on 0.0.0.0: anyone who can reach it")
    assert re.fullmatch(r"http://0\.0\.0\.0:\d+/\?token=[\w-]{32}", url), url
    port = int(url.split(":")[2].split("/")[0])
    with Client() as c:
        # Still the token: reachable from elsewhere is no reason to let anyone in.
        assert c.get(f"http://127.0.0.1:{port}/api/jobs").status_code == 403
        listed = c.get(f"http://127.0.0.1:{port}/api/jobs", params={"token": url[-32:]})
        assert listed.status_code == 200 and len(listed.json()["jobs"]) == 4


def test_ui_command_needs_a_ledger(tmp_path: Path) -> None:
    result = subprocess.run([RP, "ui", "--no-browser", "--home", str(tmp_path / "none")],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode != 0 and "no rowprompt ledger" in result.stderr
