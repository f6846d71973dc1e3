"""The report page: one self-contained HTML file (inline CSS and SVG, no script, no fetch).

The same body fragment is what the live view swaps in as a job runs, so the report and the
UI never disagree about what a job looks like.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from pathlib import Path

import jinja2
from markupsafe import Markup

from rowprompt.report.charts import CHART_NAMES, STATUS_COLORS, render_all
from rowprompt.report.data import find_job, ledger_path, open_readonly
from rowprompt.report.series import ReportData, load_report
from rowprompt.report.templates import BODY, CSS, PAGE

STATUS_ORDER = ("ok", "parse_error", "refused", "truncated", "failed", "skipped", "in_flight",
                "pending")  # fmt: skip
STATUS_COLOR = {
    "ok": "#3d9a6a",
    "parse_error": "#e8912d",
    "refused": "#b36b2f",
    "truncated": "#d4b03a",
    "failed": "#c8372d",
    "skipped": "#8a7f7f",
    "in_flight": "#2f6fb3",
    "pending": "#d9dee4",
}
MAX_SHARD_ROWS = 60


def money(value: float | None) -> str:
    """USD with enough digits for the small amounts a test job costs."""
    if value is None:
        return "unknown"
    return f"${value:,.2f}" if abs(value) >= 10 else f"${value:,.4f}"


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def when(timestamp: float | None) -> str:
    """A local wall-clock time."""
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
_ENV.filters.update(money=money, duration=duration, when=when)
_BODY = _ENV.from_string(BODY)
_PAGE = _ENV.from_string(PAGE)


def render_body(data: ReportData, charts: dict[str, str]) -> str:
    """The report's content (everything inside ``<main>``), for the file and the live view."""
    c = data.counts
    bar = [
        (s, c.statuses[s], 100.0 * c.statuses[s] / c.total, STATUS_COLOR[s])
        for s in STATUS_ORDER
        if c.statuses.get(s)
    ]
    return _BODY.render(
        d=data,
        c=c,
        bar=bar,
        charts={k: Markup(charts.get(k, "")) for k in CHART_NAMES},
        shards=data.shards[:MAX_SHARD_ROWS],
        more_shards=max(0, len(data.shards) - MAX_SHARD_ROWS),
        status_colors=STATUS_COLORS,
        input_columns=_input_columns(data),
        percent=100.0 * c.finished / c.total if c.total else 0.0,
    )


def _input_columns(data: ReportData) -> list[str]:
    columns: list[str] = []
    for row in data.sample:
        columns.extend(k for k in row.inputs if k not in columns)
    return columns


def render_page(
    title: str, body: str, *, head_extra: str = "", script: str = "", nav: str = ""
) -> str:
    """A whole HTML document around a body; the live view adds its nav and script."""
    return _PAGE.render(
        title=title,
        css=Markup(CSS),
        body=Markup(body),
        head_extra=Markup(head_extra),
        script=Markup(script),
        nav=Markup(nav),
    )


def build_report(job_id: str, home: str | None = None) -> str:
    """The self-contained HTML report of a job (id or unique prefix), read from the ledger."""
    with open_readonly(home) as db:
        job = find_job(db, job_id)
        data = load_report(db, job)
    body = render_body(data, render_all(data))
    return render_page(f"rowprompt report {job.id}", body)


def default_report_path(job_id: str, home: str | None) -> Path:
    """Where a job's report goes unless told: ``HOME/reports/JOB.html``."""
    return ledger_path(home).parent / "reports" / f"{job_id}.html"


def write_report(job_id: str, home: str | None, output: str | None = None) -> Path:
    """Write a job's report (to ``output``, else ``HOME/reports/JOB.html``); returns its path.

    Written to a temporary file first and renamed, so a reader never sees half a report.
    Readable by its owner only, as the ledger is: it holds inputs and answers.
    """
    with open_readonly(home) as db:
        job = find_job(db, job_id)
    html = build_report(job.id, home)
    target = Path(output) if output else default_report_path(job.id, home)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(html)
        os.chmod(tmp, 0o600)  # mkstemp makes it so already; said here so no edit loosens it
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
