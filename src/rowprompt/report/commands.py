"""The ``report`` and ``ui`` commands, for the CLI group to add."""

from __future__ import annotations

import functools
import os
import sys
import threading
import webbrowser
from collections.abc import Callable
from typing import Any, TypeVar

import click

from rowprompt.errors import RowpromptError, UsageError
from rowprompt.report.html import write_report

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["report_command", "ui_command", "write_report"]


def _one_line_errors(func: F) -> F:
    # The same contract as the CLI's own commands: one line and an exit code, no traceback.
    # (Not imported from rowprompt.cli, which imports this module.)
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RowpromptError as exc:
            click.echo(f"Error: {exc.one_line()}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            sys.exit(130)
        except OSError as exc:
            if os.environ.get("ROWPROMPT_DEBUG"):
                raise
            click.echo(f"Error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


@click.command("report")
@click.argument("job")
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    help="Where to write the HTML (default: HOME/reports/JOB.html).",
)
@click.option("--home", type=click.Path(), help="Where the job database lives.")
@_one_line_errors
def report_command(job: str, output: str | None, home: str | None) -> None:
    """Write a self-contained HTML report of JOB: summary, charts, failures, sample answers."""
    path = write_report(job, home, output)
    click.echo(f"wrote {path}")


@click.command("ui")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8790, show_default=True, help="0 picks a free port.")
@click.option("--home", type=click.Path(), help="Where the job database lives.")
@click.option("--no-browser", is_flag=True, help="Do not open a browser.")
@_one_line_errors
def ui_command(host: str, port: int, home: str | None, no_browser: bool) -> None:
    """Serve a live web view of the jobs, with cancel and collect (Ctrl-C stops it)."""
    import uvicorn

    from rowprompt.report.data import ledger_path
    from rowprompt.report.ui import bind, create_app, is_loopback, make_token, url_for

    if not ledger_path(home).is_file():
        raise UsageError(
            f"no rowprompt ledger at {ledger_path(home)}",
            hint="pass --home DIR (or set ROWPROMPT_HOME) to the folder your jobs ran in",
        )
    if not is_loopback(host):
        click.echo(
            f"Warning: listening on {host}: anyone who can reach it and has the URL can cancel"
            " your jobs. Use 127.0.0.1 unless you mean it.",
            err=True,
        )
    token = make_token()
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror}", hint="pick another --port, or 0"
        ) from exc
    url = url_for(host, int(sock.getsockname()[1]), token)
    click.echo(f"rowprompt ui: {url}")
    click.echo("Ctrl-C stops it.")
    if not no_browser:
        threading.Timer(0.5, webbrowser.open, [url]).start()
    app = create_app(home, token, check_host=is_loopback(host))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    server.run(sockets=[sock])
