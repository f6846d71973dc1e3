"""Simulated latency: its distribution as measured over HTTP, and its own seeded RNG."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from click.testing import CliRunner
from openai import OpenAI
from pydantic import ValidationError

from rowprompt.sandbox import FaultConfig, Sandbox, SandboxConfig
from rowprompt.sandbox.cli import sandbox_command

from .conftest import client_for, fault_sequence

MakeSandbox = Callable[..., Sandbox]


def _processing_ms(client: OpenAI, count: int, workers: int = 1) -> list[float]:
    """``openai-processing-ms`` of ``count`` answers, sent ``workers`` at a time: the time
    the server spent on each, latency included, free of the client's own delays."""

    def one(i: int) -> float:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"row {i}"}]
        )
        return float(raw.headers["openai-processing-ms"])

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(count)))


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def test_lognormal_latency_has_the_median_and_tail_asked_for(make_sandbox: MakeSandbox) -> None:
    sb = make_sandbox(latency_ms=50, latency_distribution="lognormal", latency_p95_ms=150)
    # Concurrent, so 200 answers take about a second; the bounds leave room for a busy host.
    measured = _processing_ms(client_for(sb), 200, workers=12)
    median = statistics.median(measured)
    assert 40 <= median <= 80
    assert 100 <= _p95(measured) <= 300
    assert _p95(measured) > 1.8 * median  # a long tail, unlike a normal spread
    assert max(measured) > 3 * median


def test_normal_latency_and_no_latency(make_sandbox: MakeSandbox) -> None:
    steady = _processing_ms(client_for(make_sandbox(latency_ms=30)), 12)
    assert min(steady) >= 30
    assert statistics.median(steady) < 60
    spread = _processing_ms(client_for(make_sandbox(latency_ms=40, latency_jitter_ms=15)), 30)
    assert 30 <= statistics.median(spread) <= 65
    assert statistics.stdev(spread) > 5
    none = _processing_ms(client_for(make_sandbox()), 20)
    assert statistics.median(none) < 20  # latency 0 adds nothing


def test_latency_settings_do_not_shift_the_faults(make_sandbox: MakeSandbox) -> None:
    """Latency draws have their own RNG: the same seed faults the same requests whatever
    the latency, so a fault campaign can be replayed at another speed."""

    def statuses(**latency: object) -> list[int]:
        return fault_sequence(make_sandbox(seed=5, faults=FaultConfig(error_rate=0.3), **latency))

    plain = statuses()
    assert 200 in plain and {500, 503} & set(plain)
    assert statuses(latency_ms=2, latency_jitter_ms=1) == plain
    assert statuses(latency_ms=2, latency_distribution="lognormal", latency_p95_ms=4) == plain


@pytest.mark.parametrize(
    "fields",
    [
        {"latency_ms": 50, "latency_distribution": "lognormal"},
        {"latency_ms": 0, "latency_distribution": "lognormal", "latency_p95_ms": 10},
        {"latency_ms": 50, "latency_distribution": "lognormal", "latency_p95_ms": 40},
        {"latency_ms": 50, "latency_p95_ms": 100},
    ],
)
def test_bad_latency_settings_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SandboxConfig(**fields)  # type: ignore[arg-type]


def test_the_cli_takes_a_p95_as_a_lognormal_latency() -> None:
    result = CliRunner().invoke(sandbox_command, ["--latency-p95-ms", "100"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "Error: a lognormal latency needs latency_ms (the median) above 0 and latency_p95_ms "
        "above latency_ms"
    )
    result = CliRunner().invoke(
        sandbox_command, ["--latency-ms", "50", "--latency-distribution", "normal",
                          "--latency-p95-ms", "100"]
    )  # fmt: skip
    assert result.exit_code == 2
    assert "latency_p95_ms needs latency_distribution 'lognormal'" in result.output
