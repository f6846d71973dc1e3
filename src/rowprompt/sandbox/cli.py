"""``rowprompt sandbox``: serve the sandbox in the foreground."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from .config import FaultConfig, SandboxConfig


@click.command("sandbox")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8787, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of answers and faults.")
@click.option("--rpm", type=click.IntRange(min=1), help="Requests per minute per model.")
@click.option("--tpm", type=click.IntRange(min=1), help="Tokens per minute per model.")
@click.option("--latency-ms", default=0.0, show_default=True, type=float)
@click.option("--latency-jitter-ms", default=0.0, show_default=True, type=float,
              help="Standard deviation of a normal latency.")  # fmt: skip
@click.option("--latency-distribution", type=click.Choice(["normal", "lognormal"]),
              help="normal (mean --latency-ms, sd --latency-jitter-ms) or lognormal (median "
                   "--latency-ms, p95 --latency-p95-ms); lognormal when --latency-p95-ms is "
                   "given.")  # fmt: skip
@click.option("--latency-p95-ms", type=click.FloatRange(min=0, min_open=True),
              help="95th percentile of a lognormal latency: its long tail.")  # fmt: skip
@click.option("--rules", "rules_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Scripted answers: a JSON or YAML rule list.")  # fmt: skip
@click.option("--models", default=None, help="Comma-separated model names to serve.")
@click.option("--batch-rows-per-second", default=1000.0, show_default=True, type=float)
@click.option("--batch-validating-seconds", default=0.2, show_default=True, type=float)
@click.option("--batch-finalizing-seconds", default=0.2, show_default=True, type=float)
@click.option("--time-scale", default=1.0, show_default=True, type=float,
              help="Real seconds per simulated second of the 24h completion window.")  # fmt: skip
@click.option("--max-batch-requests", default=50_000, show_default=True, type=int)
@click.option("--max-batch-bytes", default=200 * 1024 * 1024, show_default=True, type=int)
@click.option("--batch-token-limit", type=click.IntRange(min=1),
              help="Enqueued batch tokens allowed per model.")  # fmt: skip
@click.option("--fail-rate", default=0.0, type=click.FloatRange(0, 1),
              help="Fraction of chat requests answered 500/503.")  # fmt: skip
@click.option("--rate-limit-storm", default=0, type=click.IntRange(min=0),
              help="The first N chat requests get a 429.")  # fmt: skip
@click.option("--storm-seconds", default=0.0, type=click.FloatRange(min=0),
              help="Every chat request gets a 429 for this many seconds after start.")  # fmt: skip
@click.option("--slow-rate", default=0.0, type=click.FloatRange(0, 1))
@click.option("--slow-seconds", default=5.0, show_default=True, type=click.FloatRange(min=0))
@click.option("--drop-rate", default=0.0, type=click.FloatRange(0, 1),
              help="Fraction of chat requests whose connection is dropped.")  # fmt: skip
@click.option("--batch-fail-rate", default=0.0, type=click.FloatRange(0, 1))
@click.option("--batch-expire-rate", default=0.0, type=click.FloatRange(0, 1),
              help="Fraction of batches that expire half done.")  # fmt: skip
@click.option("--output-drop-rate", default=0.0, type=click.FloatRange(0, 1),
              help="Fraction of succeeded lines missing from output files.")  # fmt: skip
@click.option("--quota-exhausted-after", type=click.IntRange(min=0),
              help="After N chat requests, 429 insufficient_quota.")  # fmt: skip
@click.option("--rate-limit-headers/--no-rate-limit-headers", default=True, show_default=True,
              help="Announce the limits in x-ratelimit-* headers (off: enforce them "
                   "silently, as many OpenAI-compatible servers do).")  # fmt: skip
@click.option("--token-accounting", type=click.Choice(["openai", "anthropic"]),
              default="openai", show_default=True,
              help="TPM keeps max_tokens (openai) or refunds unused output.")  # fmt: skip
def sandbox_command(
    host: str,
    port: int,
    seed: int,
    rpm: int | None,
    tpm: int | None,
    latency_ms: float,
    latency_jitter_ms: float,
    latency_distribution: str | None,
    latency_p95_ms: float | None,
    rules_file: Path | None,
    models: str | None,
    batch_rows_per_second: float,
    batch_validating_seconds: float,
    batch_finalizing_seconds: float,
    time_scale: float,
    max_batch_requests: int,
    max_batch_bytes: int,
    batch_token_limit: int | None,
    fail_rate: float,
    rate_limit_storm: int,
    storm_seconds: float,
    slow_rate: float,
    slow_seconds: float,
    drop_rate: float,
    batch_fail_rate: float,
    batch_expire_rate: float,
    output_drop_rate: float,
    quota_exhausted_after: int | None,
    rate_limit_headers: bool,
    token_accounting: str,
) -> None:
    """Serve an offline OpenAI-compatible API (chat, files, batches) with limits and faults."""
    from .server import serve

    faults = FaultConfig(
        error_rate=fail_rate,
        rate_limit_storm_requests=rate_limit_storm,
        rate_limit_storm_seconds=storm_seconds,
        slow_rate=slow_rate,
        slow_seconds=slow_seconds,
        drop_rate=drop_rate,
        batch_fail_rate=batch_fail_rate,
        batch_expire_rate=batch_expire_rate,
        output_drop_rate=output_drop_rate,
        quota_exhausted_after=quota_exhausted_after,
    )
    fields: dict[str, Any] = {
        "seed": seed,
        "rpm": rpm,
        "tpm": tpm,
        "latency_ms": latency_ms,
        "latency_jitter_ms": latency_jitter_ms,
        "latency_distribution": latency_distribution
        or ("lognormal" if latency_p95_ms is not None else "normal"),
        "latency_p95_ms": latency_p95_ms,
        "rules_file": rules_file,
        "batch_rows_per_second": batch_rows_per_second,
        "batch_validating_seconds": batch_validating_seconds,
        "batch_finalizing_seconds": batch_finalizing_seconds,
        "time_scale": time_scale,
        "max_batch_requests": max_batch_requests,
        "max_batch_bytes": max_batch_bytes,
        "enqueued_token_limit": batch_token_limit,
        "faults": faults,
        "rate_limit_headers": rate_limit_headers,
        "token_accounting": token_accounting,
    }
    if models is not None:
        fields["models"] = [m.strip() for m in models.split(",") if m.strip()]
    try:
        config = SandboxConfig(**fields)
        from .state import SandboxState

        SandboxState(config)  # load the rules now, so a bad file is a clean error
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise click.UsageError(f"{where}: {message}" if where else message) from None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    from .server import exposure_warning

    warning = exposure_warning(host)
    if warning:
        click.echo(f"Warning: {warning}", err=True)
    click.echo(
        f"rowprompt sandbox on http://{host}:{port}/v1 (seed {seed}); "
        f"stats at http://{host}:{port}/sandbox/stats",
        err=True,
    )
    serve(config, host=host, port=port, warn_exposed=False)
