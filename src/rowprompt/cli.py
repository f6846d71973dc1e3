"""The command line: parses, calls the library, prints. One place turns errors into one line."""

from __future__ import annotations

import functools
import math
import os
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

import click

from rowprompt import api
from rowprompt.config import load_settings
from rowprompt.engine.scheduler import shard_summary
from rowprompt.errors import RowpromptError
from rowprompt.estimator import Estimate
from rowprompt.progress import ProgressView
from rowprompt.runner import MODES, RunOptions

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def one_line_errors(func: F) -> F:
    """Turn every error into a one-line cause and fix and an exit code, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RowpromptError as exc:
            _fail(exc.one_line(), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted; run the same command again to resume where it stopped", 130)
        except sqlite3.OperationalError as exc:
            message = _ledger_trouble(exc)
            if message is None:
                if os.environ.get("ROWPROMPT_DEBUG"):
                    raise
                message = f"unexpected OperationalError: {exc}. This is a bug in rowprompt"
            _fail(message, 3)
        except Exception as exc:
            if os.environ.get("ROWPROMPT_DEBUG"):
                raise
            _fail(
                f"unexpected {type(exc).__name__}: {exc}. This is a bug in rowprompt; rerun with"
                " ROWPROMPT_DEBUG=1 for the traceback and report it",
                70,
            )
        return None

    return wrapper  # type: ignore[return-value]


def _ledger_trouble(exc: sqlite3.OperationalError) -> str | None:
    """A one-line cause and fix for the job database's own troubles, else None."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return (
            f"the job database is locked by another program ({text}); wait for it to let go,"
            " then run the same command again: the job resumes where it stopped"
        )
    if "full" in text or "disk I/O" in text or "readonly" in text or "unable to open" in text:
        return (
            f"the job database cannot be written ({text}); free disk space or move it with"
            " --home DIR, then run the same command again: the job resumes where it stopped"
        )
    return None


def job_options(func: F) -> F:
    """The options shared by ``run`` and ``estimate``."""
    decorators = [
        click.argument("input_path", metavar="INPUT"),
        click.option("--prompt", help="The prompt, a Jinja2 template over the row's columns."),
        click.option("--prompt-file", type=click.Path(), help="Read the prompt from a file."),
        click.option("--system", help="A system prompt (also a template)."),
        click.option(
            "--system-file", type=click.Path(), help="Read the system prompt from a file."
        ),
        click.option("--model", default="gpt-4o-mini", show_default=True),
        click.option(
            "--provider",
            type=click.Choice(["openai", "azure", "anthropic", "gemini", "sandbox"]),
            default="openai",
            show_default=True,
            help="sandbox: the offline stand-in, started in this process.",
        ),
        click.option(
            "--base-url", help="Any OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1."
        ),
        click.option("--mode", type=click.Choice(list(MODES)), default="auto", show_default=True),
        click.option(
            "--image-column",
            "image_columns",
            multiple=True,
            help="Attach this column's image (a path, URL or data URL) to each row's prompt;"
            " repeatable.",
        ),
        click.option(
            "--endpoint",
            type=click.Choice(["chat", "responses"]),
            help="OpenAI API to ask: chat (Chat Completions) or responses (the Responses API);"
            " default chat, or responses for models only it serves (o3-pro, gpt-5-codex...).",
        ),
        click.option(
            "--output", type=click.Path(), help="Output table (.csv .tsv .xlsx .jsonl .parquet)."
        ),
        click.option(
            "--output-type",
            default="text",
            show_default=True,
            help="text, integer, number, boolean, choice:A,B,... or json.",
        ),
        click.option("--schema", help="A JSON Schema file, or module:PydanticModel."),
        click.option(
            "--repair",
            type=int,
            default=1,
            show_default=True,
            help="Ask again this many times when an answer does not parse.",
        ),
        click.option("--raw-cells", is_flag=True, help="Do not neutralise formula-like cells."),
        click.option("--max-tokens", type=int, help="Cap on each answer's tokens."),
        click.option("--temperature", type=float),
        click.option("--id-column", help="A column of unique row ids (default: row position)."),
        click.option("--limit", type=int, help="Only the first N rows."),
        click.option("--rpm", type=int, help="Requests per minute to stay under."),
        click.option("--tpm", type=int, help="Tokens per minute to stay under."),
        click.option("--concurrency", type=int, help="Real-time requests in flight at once."),
        click.option("--no-cache", is_flag=True, help="Ask again even where an answer is cached."),
        click.option("--max-attempts", type=int, default=6, show_default=True),
        click.option("--sheet", help="Excel sheet to read (default: the first)."),
        click.option("--home", type=click.Path(), help="Where the job database lives."),
        click.option(
            "--sandbox-rules", type=click.Path(), help="Scripted answers for --provider sandbox."
        ),
        click.option(
            "--deadline",
            help="Finish by then: a duration (2h, 90m) or an ISO time; kept with the job"
            " (resume, collect and the same command again keep it; `none` drops it).",
        ),
        click.option(
            "--preview",
            type=int,
            default=20,
            show_default=True,
            help="Hybrid mode: rows answered in real time first.",
        ),
        click.option("--budget", type=float, help="Stop before spending more than this (USD)."),
        click.option(
            "--pilot", type=int, help="With estimate/--dry-run: run N rows first to measure."
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def _options(kwargs: dict[str, Any]) -> RunOptions:
    fields = {k: v for k, v in kwargs.items() if k in RunOptions.__dataclass_fields__}
    return RunOptions(**fields)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rowprompt")
def main() -> None:
    """Run one LLM prompt over every row of a table, real-time or through the Batch API."""


@main.command()
@job_options
@click.option("--detach", is_flag=True, help="Submit the batches and exit; collect later.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before spending.")
@click.option(
    "--dry-run", is_flag=True, help="Say what would be sent and what it costs; send nothing."
)
@click.option("--force", is_flag=True, help="Overwrite an output file this job did not write.")
@click.option(
    "--poll-interval", type=float, help="Seconds between batch polls (default: adaptive)."
)
@click.option("--batch-token-limit", type=int, help="The model's enqueued-token limit.")
@click.option(
    "--fallback",
    type=click.Choice(["realtime", "none"]),
    help="Send a batch's last stragglers real time (default: realtime in hybrid mode).",
)
@click.option("--request-timeout", type=float, default=120.0, show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.option("--no-report", is_flag=True, help="Do not write the HTML report.")
@click.option(
    "--confirm-over",
    type=float,
    help="Ask before runs estimated above this many USD (default 1.00, or rowprompt.toml).",
)
@one_line_errors
def run(
    input_path: str,
    dry_run: bool,
    yes: bool,
    quiet: bool,
    pilot: int | None,
    confirm_over: float | None,
    no_report: bool,
    **kwargs: Any,
) -> None:
    """Run the prompt over every row of INPUT and write the answers beside its columns."""
    options = _options(kwargs)
    if dry_run:
        _print_estimate(api.estimate(input_path, options=options, pilot=pilot))
        return
    run_with_progress(api.run_job, input_path, options, yes=yes, quiet=quiet,
                      confirm_over=confirm_over, no_report=no_report)  # fmt: skip


def run_with_progress(
    job: Callable[[str, RunOptions], api.Outcome],
    input_path: str,
    options: RunOptions,
    *,
    yes: bool,
    quiet: bool,
    confirm_over: float | None,
    no_report: bool,
    after: Callable[[api.Outcome], None] | None = None,
) -> None:
    """Confirm the spending (at a terminal), run ``job`` behind a progress view, say how it
    ended (then ``after``), and write its report."""
    if not yes and sys.stdin.isatty() and sys.stdout.isatty():
        _confirm_spending(input_path, options, confirm_over)
    with ProgressView(quiet=quiet) as view:
        options.on_progress = view.update
        options.on_message = view.message
        options.on_stats = view.stats
        outcome = job(input_path, options)
    _print_outcome(outcome)
    if after is not None:
        after(outcome)
    if outcome.stopped:
        sys.exit(130)
    if not no_report and not outcome.detached:
        _write_report(outcome.job_id, options.home)


def _write_report(job_id: str, home: str | None) -> None:
    """Write the run's HTML report; a report must never fail a run that succeeded."""
    try:
        from rowprompt.report import write_report

        click.echo(f"report: {write_report(job_id, home)}")
    except Exception as exc:
        click.echo(f"Warning: no report written: {exc}", err=True)


@main.command()
@job_options
@one_line_errors
def estimate(input_path: str, pilot: int | None, **kwargs: Any) -> None:
    """Rows, tokens, cost and time in real time and batch, and advice; spends nothing.

    With --pilot N, N rows are run in real time first to measure the answers (they are kept).
    """
    _print_estimate(api.estimate(input_path, options=_options(kwargs), pilot=pilot))


def _confirm_spending(input_path: str, options: RunOptions, confirm_over: float | None) -> None:
    threshold = confirm_over if confirm_over is not None else load_settings().confirm_over
    estimate = api.estimate(input_path, options=replace(options, on_progress=None))
    cost = estimate.cost_batch if estimate.mode == "batch" else estimate.cost_realtime
    if cost is None or cost <= threshold:
        return
    try:
        confirmed = click.confirm(
            f"This run may cost up to {_upto(cost)}"
            f" ({estimate.rows_to_ask:,} rows, {estimate.mode}). Continue?",
            default=False,
        )
    except click.Abort:  # Ctrl-C or Ctrl-D at the question
        click.echo("", err=True)
        confirmed = False
    if not confirmed:
        _fail("not confirmed: nothing was sent (pass --yes to run without asking)", 1)


def _upto(cost: float) -> str:
    """USD with cents, or with two significant digits when under a cent (never "$0.00")."""
    if cost >= 0.01 or cost <= 0:
        return f"${cost:,.2f}"
    decimals = 1 - math.floor(math.log10(cost))
    return f"${cost:.{decimals}f}"


@main.command()
@click.option("--home", type=click.Path())
@one_line_errors
def jobs(home: str | None) -> None:
    """List jobs with state, progress and cost."""
    rows = api.list_jobs(home)
    if not rows:
        click.echo("no jobs yet")
        return
    click.echo(
        f"{'job':<13} {'created':<17} {'state':<10} {'mode':<9} {'done':>13}"
        f" {'failed':>7} {'skipped':>7} {'cost':>10}  input"
    )
    for s in rows:
        p = s.progress
        created = datetime.fromtimestamp(s.job.created_at).strftime("%Y-%m-%d %H:%M")
        click.echo(
            f"{s.job.id:<13} {created:<17} {s.state:<10} {s.job.mode or '':<9}"
            f" {p.done:>6}/{p.total:<6} {p.failed - p.skipped:>7} {p.skipped:>7}"
            f" {f'${p.cost_usd:.4f}':>10}"
            f"  {s.job.input_path or '<DataFrame>'}"
        )


@main.command()
@click.argument("job")
@click.option("--home", type=click.Path())
@one_line_errors
def status(job: str, home: str | None) -> None:
    """One job in detail, with its batches and their request counts."""
    s = api.job_status(job, home)
    p = s.progress
    click.echo(f"job {s.job.id}: {s.state}")
    click.echo(f"  input:  {s.job.input_path or '<DataFrame>'}")
    click.echo(f"  output: {s.job.output_path or '-'}")
    click.echo(f"  model:  {s.job.spec.model} via {s.job.spec.provider}, mode {s.job.mode}")
    click.echo(
        f"  rows:   {p.total} total, {p.done} answered, {p.failed - p.skipped} failed,"
        f" {p.skipped} skipped, {p.pending} pending, {p.in_flight} in flight"
    )
    click.echo(
        f"  tokens: {p.prompt_tokens:,} in, {p.completion_tokens:,} out; cost ${p.cost_usd:.4f}"
    )
    runs = _run_flags(s.job.run_settings)
    if runs:
        click.echo(f"  runs:   {runs} (resume and collect --wait keep these)")
    for shard in s.shards:
        click.echo(f"  {shard_summary(shard)}")


def _run_flags(settings: dict[str, Any]) -> str:
    """A job's stored run settings that differ from the defaults, as the flags that set them."""
    defaults = RunOptions()
    flags = []
    for name, value in settings.items():
        if name == "structured" or getattr(defaults, name, value) == value:
            continue
        flag = "--" + name.replace("_", "-")
        flags.append(flag if value is True else f"{flag} {value}")
    return " ".join(flags)


@main.command()
@click.argument("job")
@click.option("--output", type=click.Path(), help="Write the table here instead.")
@click.option("--wait", is_flag=True, help="Block until every batch has finished.")
@click.option("--home", type=click.Path())
@click.option("--quiet", "-q", is_flag=True)
@one_line_errors
def collect(job: str, output: str | None, wait: bool, home: str | None, quiet: bool) -> None:
    """Fetch finished batch results and write the table."""
    with ProgressView(quiet=quiet) as view:
        outcome = api.collect_job(
            job,
            home=home,
            output=output,
            wait=wait,
            on_message=view.message,
            on_progress=view.update,
        )
    _print_outcome(outcome)


@main.command()
@click.argument("job")
@click.option("--home", type=click.Path())
@click.option("--quiet", "-q", is_flag=True)
@one_line_errors
def resume(job: str, home: str | None, quiet: bool) -> None:
    """Continue an interrupted job where it stopped."""
    with ProgressView(quiet=quiet) as view:
        outcome = api.resume_job(job, home=home, on_message=view.message, on_progress=view.update)
    _print_outcome(outcome)


@main.command()
@click.argument("job")
@click.option("--home", type=click.Path())
@one_line_errors
def cancel(job: str, home: str | None) -> None:
    """Cancel a job and its provider batches; finished rows are kept."""
    outcome = api.cancel_job(job, home=home, on_message=lambda m: click.echo(m, err=True))
    _print_outcome(outcome)


def _money(x: float | None) -> str:
    return "unknown (no price for this model)" if x is None else f"${x:,.4f}"


def _print_estimate(e: Estimate) -> None:
    exact = "exact" if e.tokens_exact else "approximate: the model's tokenizer is not known"
    click.echo(f"rows:              {e.rows:,} ({e.rows_cached:,} already answered in the cache)")
    click.echo(f"prompt tokens:     {e.prompt_tokens:,} to send ({exact})")
    if e.images:
        urls = f"; {e.images_by_url:,} by URL, counted at their largest" if e.images_by_url else ""
        click.echo(f"images:            {e.images:,}, {e.image_tokens:,} of those tokens{urls}")
    click.echo(f"completion tokens: {e.completion_tokens:,} ({e.completion_basis})")
    click.echo(f"cost, real time:   {_money(e.cost_realtime)}")
    click.echo(f"cost, batch:       {_money(e.cost_batch)}")
    if e.realtime_minutes is not None:
        click.echo(f"time, real time:   {e.realtime_minutes:,.1f} min {e.limits}")
    else:
        click.echo(f"time, real time:   unknown, {e.limits}")
    click.echo(f"time, batch:       {e.batch_time}")
    click.echo(f"advice:            {e.advice}")
    if e.warning:
        click.echo(f"warning:           {e.warning}")


def _print_outcome(outcome: api.Outcome) -> None:
    p = outcome.progress
    if outcome.summary is not None and not outcome.detached:
        _print_summary(outcome.summary)
    if outcome.detached:
        click.echo(f"job {outcome.job_id}: submitted {p.total - p.finished} rows in batches.")
        click.echo(f"collect later with: rowprompt collect {outcome.job_id} --wait")
        return
    state = "complete" if p.complete else "not complete"
    # The ledger knows answered/failed; the output's statuses (truncated, skipped, ...) are
    # what the user reads in the table, so the last line says those when it has them.
    counts = (
        _status_counts(outcome.summary)
        if outcome.summary is not None
        else f"{p.done} answered, {p.failed - p.skipped} failed, {p.skipped} skipped"
    )
    click.echo(
        f"job {outcome.job_id}: {state}: {counts}, {p.pending + p.in_flight} waiting;"
        f" {p.prompt_tokens + p.completion_tokens:,} tokens, ${p.cost_usd:.4f}"
    )
    if outcome.output_path:
        click.echo(f"wrote {outcome.output_path}")
    if outcome.budget_short_usd:
        click.echo(
            f"the budget held rows back: about ${outcome.budget_short_usd:,.4f} more would finish"
            " the job (run again with a higher --budget)"
        )
    if outcome.stopped:
        click.echo(f"stopped; continue with: rowprompt resume {outcome.job_id}")
    elif not p.complete:
        click.echo(f"rows still waiting: rowprompt collect {outcome.job_id} --wait")


_STATUS_ORDER = ("ok", "parse_error", "refused", "truncated", "failed", "skipped")


def _status_counts(s: api.Summary) -> str:
    return ", ".join(f"{s.statuses[k]:,} {k}" for k in _STATUS_ORDER if s.statuses.get(k))


def _print_summary(s: api.Summary) -> None:
    rows = _status_counts(s)
    if s.statuses.get("pending"):
        rows += f", {s.statuses['pending']:,} pending"
    click.echo(f"rows:   {rows}")
    click.echo(f"tokens: {s.prompt_tokens:,} in, {s.completion_tokens:,} out")
    saved = []
    if s.batch_saved_usd > 0:
        saved.append(f"batch mode saved ${s.batch_saved_usd:,.4f}")
    if s.cache_saved_usd > 0:
        saved.append(f"the cache saved ${s.cache_saved_usd:,.4f}")
    click.echo(f"cost:   ${s.cost_usd:,.4f}" + (f" ({'; '.join(saved)})" if saved else ""))


def _add_sandbox() -> None:
    from rowprompt.sandbox.cli import sandbox_command

    main.add_command(sandbox_command, name="sandbox")


_add_sandbox()


def _add_report() -> None:
    from rowprompt.report.commands import report_command, ui_command

    main.add_command(report_command, name="report")
    main.add_command(ui_command, name="ui")


_add_report()


def _add_embed() -> None:
    from rowprompt.cli_embed import embed_command  # it builds on this module

    main.add_command(embed_command, name="embed")


_add_embed()

if __name__ == "__main__":
    main()
