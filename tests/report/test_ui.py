"""The live view: loopback by default, a token on every request, actions through the API."""

from __future__ import annotations

import http.cookiejar
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rowprompt.report.commands import ui_command
from rowprompt.report.ui import UIServer, is_loopback
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
        assert {j["id"] for j in listed["jobs"]} == {jobs.realtime, jobs.batch, jobs.failing}
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
