"""``rowprompt embed``: one embedding vector per row, in real time or through the Batch API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from rowprompt import api
from rowprompt.cli import (
    _money,
    one_line_errors,
    run_with_progress,
)
from rowprompt.embeddings import embed_job, embed_options
from rowprompt.estimator import BATCH_TURNAROUND
from rowprompt.output import FLAT_FORMATS, npy_path
from rowprompt.runner import MODES


@click.command()
@click.argument("input_path", metavar="INPUT")
@click.option("--column", required=True, help="The column whose text is embedded.")
@click.option("--model", required=True, help="An embedding model, e.g. text-embedding-3-small.")
@click.option("--dimensions", type=int, help="Shorter vectors (text-embedding-3 models).")
@click.option("--mode", type=click.Choice(list(MODES)), default="auto", show_default=True)
@click.option(
    "--output",
    type=click.Path(),
    help="Output table; .csv/.tsv/.xlsx put the vectors in OUT.embeddings.npy beside it.",
)
@click.option(
    "--provider",
    type=click.Choice(["openai", "sandbox"]),
    default="openai",
    show_default=True,
    help="sandbox: the offline stand-in, started in this process.",
)
@click.option("--base-url", help="Any OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1.")
@click.option("--home", type=click.Path(), help="Where the job database lives.")
@click.option("--budget", type=float, help="Stop before spending more than this (USD).")
@click.option("--detach", is_flag=True, help="Submit the batches and exit; collect later.")
@click.option("--limit", type=int, help="Only the first N rows.")
@click.option("--id-column", help="A column of unique row ids (default: row position).")
@click.option("--skip-empty", is_flag=True, help="Skip rows with no text instead of refusing.")
@click.option(
    "--inputs-per-request",
    type=int,
    help="Rows one real-time request carries (1-2048; default 256).",
)
@click.option("--rpm", type=int, help="Requests per minute to stay under.")
@click.option("--tpm", type=int, help="Tokens per minute to stay under.")
@click.option("--concurrency", type=int, help="Real-time requests in flight at once.")
@click.option("--no-cache", is_flag=True, help="Ask again even where a vector is cached.")
@click.option("--max-attempts", type=int, default=6, show_default=True)
@click.option("--sheet", help="Excel sheet to read (default: the first).")
@click.option("--deadline", help="Finish by then: a duration (2h, 90m) or an ISO time.")
@click.option("--poll-interval", type=float, help="Seconds between batch polls (default adaptive).")
@click.option("--batch-token-limit", type=int, help="The model's enqueued-token limit.")
@click.option("--request-timeout", type=float, default=120.0, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an output file this job did not write.")
@click.option("--dry-run", is_flag=True, help="Say what it would cost; send nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before spending.")
@click.option("--confirm-over", type=float, help="Ask before runs estimated above this (USD).")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.option("--no-report", is_flag=True, help="Do not write the HTML report.")
@one_line_errors
def embed_command(
    input_path: str,
    column: str,
    model: str,
    dimensions: int | None,
    mode: str,
    dry_run: bool,
    yes: bool,
    confirm_over: float | None,
    quiet: bool,
    no_report: bool,
    **kwargs: Any,
) -> None:
    """One embedding vector per row of INPUT's COLUMN, beside its columns."""
    options = embed_options(column, model, dimensions=dimensions, mode=mode, **kwargs)
    if dry_run:
        _print_embed_estimate(api.estimate(input_path, options=options))
        return
    run_with_progress(embed_job, input_path, options, yes=yes, quiet=quiet,
                      confirm_over=confirm_over, no_report=no_report,
                      after=_say_where_vectors_are)  # fmt: skip


def _say_where_vectors_are(outcome: api.Outcome) -> None:
    if outcome.output_path and Path(outcome.output_path).suffix.lower() in FLAT_FORMATS:
        click.echo(
            f"vectors: {npy_path(Path(outcome.output_path))} (float32, one row per table row;"
            " the table itself has no vector column)"
        )


def _print_embed_estimate(e: api.Estimate) -> None:
    click.echo(f"rows:            {e.rows:,} ({e.rows_cached:,} already embedded in the cache)")
    click.echo(f"input tokens:    {e.prompt_tokens:,} to send")
    click.echo(f"cost, real time: {_money(e.cost_realtime)}")
    click.echo(f"cost, batch:     {_money(e.cost_batch)}")
    click.echo(f"time, batch:     {BATCH_TURNAROUND}")
    click.echo(f"advice:          {e.advice}")
