"""``rowprompt ui``: a local web view of the jobs of a home, live, with cancel and collect.

Security, as Jupyter does it: the server binds to loopback unless told otherwise, and every
request must carry a random token (in the URL once, then an HttpOnly SameSite=Strict cookie).
Actions (POST) need the token in a header, which a cross-site form can never send, so the
cookie alone cannot be used for CSRF. A Host header naming another machine is refused too,
so a DNS-rebinding page cannot talk to a loopback server.

The view reads the ledger read-only; the actions call the same library functions as the CLI
(:func:`rowprompt.api.cancel_job`, :func:`rowprompt.api.collect_job`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse

from rowprompt.errors import RowpromptError
from rowprompt.report.charts import render_all
from rowprompt.report.data import (
    JobInfo,
    JobSummary,
    find_job,
    fingerprint,
    open_readonly,
    state_counts,
)
from rowprompt.report.html import build_report, render_body, render_page
from rowprompt.report.series import load_report
from rowprompt.report.tally import LiveTallies, RowTally, jobs, summarize
from rowprompt.report.uipages import JOB_SCRIPT, JOBS_SCRIPT, head, jobs_table, nav

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
TOKEN_HEADER = "X-Rowprompt-Token"


def is_loopback(host: str) -> bool:
    """True for a name or address that only this machine can reach."""
    name = host.strip("[]")
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


# After a read of a changing job that took 1 s, the next one waits at least THROTTLE x 1 s.
# However many pages poll, the live view then spends at most about a third of a core on a
# job, whatever its size.
THROTTLE = 2.0


@dataclass
class _Kept:
    """What the live view keeps of one job between requests."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    tallies: LiveTallies = field(default_factory=LiveTallies)
    mark: tuple[Any, ...] | None = None
    rendered: dict[str, Any] | None = None
    next_read: float = 0.0
    list_rows: RowTally | None = None
    list_mark: tuple[Any, ...] | None = None
    summary: JobSummary | None = None
    list_next_read: float = 0.0


class _Renders:
    """Job pages and jobs-list lines, kept per job: redrawn only when the ledger's fingerprint
    of the job changed, and for a running job no more often than ``THROTTLE`` allows. Between
    reads, only what changed is read (see :mod:`rowprompt.report.tally`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[str, _Kept] = {}

    def _of(self, job_id: str) -> _Kept:
        with self._lock:
            return self._kept.setdefault(job_id, _Kept())

    def job(self, home: str | None, job_id: str) -> dict[str, Any]:
        """The job page's body and version (its id, or any unique prefix)."""
        with open_readonly(home) as db:
            kept = self._of(find_job(db, job_id).id)
        with kept.lock:  # one read of a job at a time: the tallies are updated in place
            if kept.rendered is not None and time.monotonic() < kept.next_read:
                return kept.rendered
            start = time.monotonic()
            with open_readonly(home) as db:
                job = find_job(db, job_id)
                states = state_counts(db, job)
                mark = fingerprint(db, job, states)
                if kept.rendered is not None and kept.mark == mark:
                    return kept.rendered
                live = job.state == "running"
                # Re-parsing every answer on each refresh of a running job is too dear; it is
                # done once the job stops changing.
                data = load_report(db, job, check_parse=not live, keep=kept.tallies, states=states)
            body = render_body(data, render_all(data))
            kept.mark, kept.rendered = (
                mark,
                {
                    "id": job.id,
                    "state": data.state,
                    "version": repr(hash(mark)),
                    "body": body,
                },
            )
            kept.next_read = time.monotonic() + THROTTLE * (time.monotonic() - start)
            return kept.rendered

    def summaries(self, home: str | None) -> list[JobSummary]:
        """Every job's line of the jobs list, newest first."""
        with open_readonly(home) as db:
            return [self._summary(db, job) for job in jobs(db)]

    def _summary(self, db: sqlite3.Connection, job: JobInfo) -> JobSummary:
        kept = self._of(job.id)
        with kept.lock:
            if kept.summary is not None and time.monotonic() < kept.list_next_read:
                return kept.summary
            start = time.monotonic()
            states = state_counts(db, job)
            mark = fingerprint(db, job, states)
            if kept.summary is None or kept.list_mark != mark:
                t0, rows = job.created_at, kept.list_rows
                if job.state != "running":  # read once: it is not expected to change
                    rows = RowTally.build(db, job, t0, live=False, by_second=False, states=states)
                elif rows is not None:
                    rows = rows.refresh(db, job, t0, states)
                else:
                    rows = RowTally.build(db, job, t0, live=True, by_second=False, states=states)
                kept.list_rows = rows if job.state == "running" else None
                kept.summary = summarize(db, job, rows)
                kept.list_mark = mark
                kept.list_next_read = time.monotonic() + THROTTLE * (time.monotonic() - start)
            return kept.summary


def create_app(home: str | None, token: str, *, check_host: bool = True) -> FastAPI:
    """The web app. ``check_host`` refuses Host headers that do not name loopback."""
    from rowprompt import api

    app = FastAPI(title="rowprompt ui", docs_url=None, redoc_url=None, openapi_url=None)
    renders = _Renders()

    @app.middleware("http")
    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        host = (request.headers.get("host") or "").rsplit(":", 1)[0]
        if check_host and not is_loopback(host):
            return _refuse("this server answers only to loopback host names")
        cookie_name = f"rowprompt_token_{request.url.port or 0}"
        offered = request.query_params.get("token") or request.headers.get(TOKEN_HEADER)
        if request.method != "GET":
            # Actions need the token in the URL or a header: a cookie alone could be CSRF.
            if not _same(offered, token):
                return _refuse("this action needs the access token")
            return await call_next(request)
        if not (_same(offered, token) or _same(request.cookies.get(cookie_name), token)):
            return _refuse("open the URL `rowprompt ui` printed: it carries the access token")
        response = await call_next(request)
        if _same(offered, token):
            response.set_cookie(cookie_name, token, httponly=True, samesite="strict")
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        return response

    @app.get("/", response_class=HTMLResponse)
    def jobs_page() -> str:
        body = (
            f'<h1>Jobs</h1><p class="sub">{_home_label(home)}</p>'
            f'<div id="jobs">{jobs_table(renders.summaries(home))}</div>'
        )
        return render_page(
            "rowprompt jobs", body, head_extra=head(token), nav=nav(), script=JOBS_SCRIPT
        )

    @app.get("/api/jobs")
    def jobs_json() -> dict[str, Any]:
        summaries = renders.summaries(home)
        return {
            "html": jobs_table(summaries),
            "jobs": [
                {
                    "id": s.job.id,
                    "state": s.state,
                    "total": s.counts.total,
                    "finished": s.counts.finished,
                    "cost_usd": s.counts.cost_usd,
                }
                for s in summaries
            ],
        }

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(job_id: str) -> Response:
        try:
            rendered = renders.job(home, job_id)
        except RowpromptError as exc:
            page = render_page("rowprompt", f"<h1>{_esc(exc.one_line())}</h1>", nav=nav())
            return HTMLResponse(page, status_code=404)
        actions = (
            '<div class="actions"><button id="collect">Collect</button>'
            '<button id="cancel" class="danger">Cancel</button>'
            f'<a href="/jobs/{rendered["id"]}/report.html" download>Download report</a>'
            '<span id="message"></span></div>'
        )
        body = f'{actions}<div id="job-body">{rendered["body"]}</div>'
        return HTMLResponse(
            render_page(
                f"rowprompt job {rendered['id']}",
                body,
                head_extra=head(token, rendered["version"]),
                nav=nav(),
                script=JOB_SCRIPT,
            )
        )

    @app.get("/api/jobs/{job_id}")
    def job_json(job_id: str) -> Response:
        try:
            return JSONResponse(renders.job(home, job_id))
        except RowpromptError as exc:
            return JSONResponse({"error": exc.one_line()}, status_code=404)

    @app.get("/jobs/{job_id}/report.html")
    def report_file(job_id: str) -> Response:
        try:
            html = build_report(job_id, home)
        except RowpromptError as exc:
            return JSONResponse({"error": exc.one_line()}, status_code=404)
        headers = {"Content-Disposition": f'attachment; filename="rowprompt-{job_id}.html"'}
        return HTMLResponse(html, headers=headers)

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel(job_id: str) -> Response:
        return _action(lambda: api.cancel_job(job_id, home=home))

    @app.post("/api/jobs/{job_id}/collect")
    def collect(job_id: str) -> Response:
        return _action(lambda: api.collect_job(job_id, home=home, wait=False))

    return app


def _action(call: Callable[[], Any]) -> Response:
    try:
        outcome = call()
    except RowpromptError as exc:
        return JSONResponse({"ok": False, "message": exc.one_line()}, status_code=409)
    p = outcome.progress
    where = f"; wrote {outcome.output_path}" if outcome.output_path else ""
    message = f"{p.done} ok, {p.failed} failed, {p.pending + p.in_flight} waiting{where}"
    return JSONResponse({"ok": True, "message": message})


def _same(offered: str | None, token: str) -> bool:
    return offered is not None and secrets.compare_digest(offered.encode(), token.encode())


def _refuse(why: str) -> Response:
    return JSONResponse({"error": f"forbidden: {why}"}, status_code=403)


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _home_label(home: str | None) -> str:
    from rowprompt.report.data import ledger_path

    return f"ledger {_esc(str(ledger_path(home).resolve()))}, refreshed every 2 s"


def make_token() -> str:
    """A fresh random access token (as unguessable as Jupyter's)."""
    return secrets.token_urlsafe(24)


def url_for(host: str, port: int, token: str, path: str = "/") -> str:
    """The URL to open, token included."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{path}?token={token}"


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0 picks a free one), made before the URL is printed."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(128)
    return sock


class UIServer:
    """The UI served from a background thread: ``with UIServer(home) as ui: ui.url``."""

    def __init__(self, home: str | None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.home, self.host = home, host
        self.token = make_token()
        self.sock = bind(host, port)
        self.port = int(self.sock.getsockname()[1])
        app = create_app(home, self.token, check_host=is_loopback(host))
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        """The jobs page, token included."""
        return url_for(self.host, self.port, self.token)

    def __enter__(self) -> UIServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)
        with contextlib.suppress(OSError):
            self.sock.close()


@contextlib.contextmanager
def serving(home: str | None, host: str = "127.0.0.1", port: int = 0) -> Iterator[UIServer]:
    """The UI running for the length of a ``with`` block."""
    with UIServer(home, host, port) as ui:
        yield ui
