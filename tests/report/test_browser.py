"""The report and the live view in headless Chromium: charts drawn, no errors, nothing fetched
from off the machine. Skipped (with the reason) where Chromium or playwright is missing, unless
ROWPROMPT_REQUIRE_BROWSER=1 (as CI sets it): then a missing browser fails the run.

ROWPROMPT_DOCS_SHOTS=docs saves the screenshots docs/report.md shows (report.png, ui-jobs.png,
ui.png) into that folder: `ROWPROMPT_DOCS_SHOTS=docs make test` retakes them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from rowprompt.report import write_report
from rowprompt.report.ui import UIServer
from tests.report.conftest import Jobs

CHROMIUM = os.environ.get("ROWPROMPT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
REQUIRED = os.environ.get("ROWPROMPT_REQUIRE_BROWSER") == "1"
DOCS_SHOTS = os.environ.get("ROWPROMPT_DOCS_SHOTS")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class Watched:
    """A page whose console errors and requests are recorded; off-machine requests blocked."""

    def __init__(self, context: Any) -> None:
        self.page = context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.blocked: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.route("**/*", self._route)

    def _route(self, route: Any) -> None:
        url = route.request.url
        self.requests.append(url)
        parsed = urlparse(url)
        if parsed.scheme in ("file", "data") or parsed.hostname == "127.0.0.1":
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()

    def check(self, shot: Path, charts: int, docs_name: str | None = None) -> None:
        self.page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if docs_name and DOCS_SHOTS:
            Path(DOCS_SHOTS).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, Path(DOCS_SHOTS) / docs_name)
        drawn = self.page.eval_on_selector_all(
            "svg.chart", "els => els.filter(e => e.getBoundingClientRect().width > 200).length"
        )
        assert drawn >= charts
        # Off-machine requests first: a blocked one also logs a console error, less telling.
        assert not self.blocked, self.blocked
        assert not self.errors, self.errors


def _missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not Path(CHROMIUM).exists():
        return f"chromium is not installed ({CHROMIUM}); apt-get install -y chromium"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium with a fresh profile for the module."""
    missing = _missing()
    if missing:
        if REQUIRED:
            pytest.fail(f"ROWPROMPT_REQUIRE_BROWSER=1, but {missing}", pytrace=False)
        pytest.skip(missing)
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


def test_report_in_chromium(browser: Any, jobs: Jobs, tmp_path: Path) -> None:
    for job, charts in ((jobs.realtime, 3), (jobs.batch, 3)):
        path = write_report(job, str(jobs.home), str(tmp_path / f"{job}.html"))
        page = Watched(browser)
        page.page.goto(path.as_uri())
        page.check(tmp_path / f"{job}.png", charts, "report.png" if job == jobs.realtime else None)
        assert all(u.startswith("file:") or u.startswith("data:") for u in page.requests)
        page.page.close()


def test_the_watcher_catches_a_request_off_the_machine(
    browser: Any, jobs: Jobs, tmp_path: Path
) -> None:
    """The negative control: a report that did fetch something would fail the checks above."""
    html = write_report(jobs.realtime, str(jobs.home), str(tmp_path / "r.html")).read_text()
    leaky = tmp_path / "leaky.html"
    leaky.write_text(
        html.replace("</main>", '<img src="https://example.invalid/pixel.png"></main>', 1),
        encoding="utf-8",
    )
    page = Watched(browser)
    page.page.goto(leaky.as_uri())
    page.page.wait_for_load_state("load")
    assert page.blocked == ["https://example.invalid/pixel.png"]
    with pytest.raises(AssertionError, match=r"example\.invalid"):
        page.check(tmp_path / "leaky.png", 3)
    page.page.close()


def test_ui_in_chromium(browser: Any, jobs: Jobs, home_copy: Path, tmp_path: Path) -> None:
    with UIServer(str(home_copy)) as ui:
        page = Watched(browser)
        page.page.goto(ui.url)
        assert page.page.locator("table.jobs tr[data-job]").count() == 4
        page.page.wait_for_timeout(2300)  # one refresh of the list through /api/jobs
        assert any("/api/jobs" in u for u in page.requests)
        page.check(tmp_path / "jobs.png", 0, "ui-jobs.png")

        # A real-time job's page: requests, latency and cost drawn.
        page.page.click(f'a[href="/jobs/{jobs.realtime}"]')
        page.page.wait_for_selector('svg.chart[data-chart="realtime"]')
        assert page.page.locator("#state").inner_text() == "done"
        page.check(tmp_path / "realtime-job.png", 3)

        page.page.click('a[href="/"]')
        page.page.wait_for_selector("table.jobs")

        page.page.click(f'a[href="/jobs/{jobs.batch}"]')
        page.page.wait_for_selector('svg.chart[data-chart="batches"]')
        page.page.wait_for_timeout(2300)  # one refresh through the JSON endpoint
        assert any(u.endswith(f"/api/jobs/{jobs.batch}") for u in page.requests)
        page.page.click("#collect")
        page.page.wait_for_function(
            "document.getElementById('message').textContent.startsWith('collect:')"
        )
        assert "60 ok" in page.page.inner_text("#message")
        page.check(tmp_path / "job.png", 3, "ui.png")
