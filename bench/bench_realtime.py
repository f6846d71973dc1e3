"""The real-time engine against the sandbox: how close it holds the limits, and how fast it is.

Scenarios (each bounded; ``--only NAME`` runs one):

- ``rpm``: 600 RPM, latency 400 ± 150 ms, 3,000 rows. The sandbox's buckets are emptied first
  (a key in steady use), the engine runs ``--seconds`` and is then stopped gracefully; the
  steady-state rate is read from the sandbox's own per-second counts after ``--warmup`` s.
  ``--full`` runs every row to the end instead (about five minutes).
- ``tpm``: 40,000 TPM, prompts of ~150 tokens, ``max_tokens`` 100: tokens admitted per minute
  as the sandbox counts them.
- ``unknown``: the sandbox at 600 RPM, no ``--rpm``/``--tpm`` given: seconds until a 10 s
  window reaches 90% of the limit, and the 429s on the way. The sandbox announces its limit
  in ``x-ratelimit-*`` headers, so the engine knows it after one answer.
- ``unknown-noheaders``: the same, but the sandbox sends no ``x-ratelimit-*`` headers
  (``sandbox --no-rate-limit-headers``, a server that does not announce its limits): the
  engine has only slow start, 429s and their ``retry-after`` to learn the limit from.
- ``ceiling``: an unlimited sandbox, latency 0, in its own process: our engine's requests per
  second and client CPU per request, beside bare ``httpx2`` (and ``aiohttp`` if installed) loops.
- ``faults``: 5% 500/503 and 2% dropped connections: every row must end ``ok``.

Every figure is printed as a ratio to its limit, so it holds on any machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rowprompt.engine.ratelimit import Limiter
from rt_harness import (
    MODEL,
    SandboxProcess,
    dump,
    make_run,
    row_states,
    run_for,
    window_rate,
)

SCENARIOS = ("rpm", "tpm", "unknown", "unknown-noheaders", "ceiling", "faults")


def _chat_429s(stats: dict[str, Any]) -> tuple[int, int]:
    requests = int(stats["requests_by_endpoint"].get("POST /v1/chat/completions", 0))
    return int(stats["rate_limited_total"]), requests


def _lost(states: dict[str, int]) -> int:
    return states["total"] - states["done"] - states["failed"] - states["pending"]


def bench_limited(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The rpm, tpm and unknown scenarios: a limited sandbox, the engine held under it."""
    rpm, tpm = (600, None) if name != "tpm" else (None, 40_000)
    unknown = name.startswith("unknown")
    flags = ["--latency-ms", "400", "--latency-jitter-ms", "150"]
    flags += ["--rpm", str(rpm)] if rpm else ["--tpm", str(tpm)]
    if name == "unknown-noheaders":
        flags.append("--no-rate-limit-headers")
    words, max_tokens = (150, 100) if name == "tpm" else (12, 16)
    limiter = Limiter() if unknown else Limiter(rpm, tpm)
    seconds = None if args.full else args.warmup + args.seconds
    with SandboxProcess(*flags) as sandbox:
        sandbox.drain(rpm, tpm)
        run = make_run(sandbox.base_url, args.rows, words=words, max_tokens=max_tokens,
                       limiter=limiter, concurrency=args.concurrency)  # fmt: skip
        begin = time.time()
        wall = asyncio.run(run_for(run, seconds))
        end = time.time()
        time.sleep(1.1)  # let the last second's counts land
        stats = sandbox.stats()
    states = row_states(run)
    limited, requests = _chat_429s(stats)
    field, limit = ("tokens", float(tpm or 0)) if name == "tpm" else ("requests", float(rpm or 0))
    start = int(begin) + args.warmup
    stop = int(end) - 1  # the last, partial second is left out
    ratio = window_rate(stats, field, start, stop) / limit
    figures: dict[str, Any] = {
        "scenario": name,
        "limit": f"{int(limit)} {'TPM' if name == 'tpm' else 'RPM'}",
        "window_s": stop - start,
        "ratio_to_limit": round(ratio, 4),
        "requests": requests,
        "429s": limited,
        "429_ratio": round(limited / max(1, requests), 5),
        "rows": states,
        "lost": _lost(states),
        "wall_s": round(wall, 1),
    }
    if unknown:
        figures["limit_source"] = limiter.state().source
        figures["limit_in_force_rpm"] = None if limiter.rpm is None else round(limiter.rpm)
        series = {s["t"]: s["requests"] for s in stats["tokens_per_second"]}
        reached = None
        for t in range(int(begin), stop - 9):
            if sum(series.get(t + i, 0) for i in range(10)) * 6 >= 0.9 * limit:
                reached = t + 10 - begin
                break
        figures["seconds_to_90pct"] = None if reached is None else round(reached, 1)
    print(
        f"{name:<8} {figures['limit']:>10}: {ratio:6.1%} of the limit over"
        f" {figures['window_s']} s, 429s {figures['429_ratio']:.3%} ({limited}/{requests}),"
        f" rows {states}, lost {figures['lost']}"
        + (
            f", 90% after {figures.get('seconds_to_90pct')} s, limit"
            f" {figures['limit_in_force_rpm']} RPM from {figures['limit_source']}"
            if unknown
            else ""
        )
    )
    return figures


async def _bare_loop(kind: str, base_url: str, total: int, concurrency: int) -> tuple[int, float]:
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Review 1: ok"}],
                       "max_tokens": 16}).encode()  # fmt: skip
    headers = {"authorization": "Bearer sk-bench", "content-type": "application/json"}
    url = base_url + "/chat/completions"
    left = total
    done = 0
    if kind == "httpx2":
        limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        client = httpx2.AsyncClient(limits=limits, timeout=30)

        async def one() -> None:
            response = await client.post(url, content=body, headers=headers)
            response.json()

        close: Any = client.aclose
    else:
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))

        async def one() -> None:
            async with session.post(url, data=body, headers=headers) as response:
                await response.json()

        close = session.close

    async def worker() -> None:
        nonlocal left, done
        while left > 0:
            left -= 1
            await one()
            done += 1

    cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu = time.process_time() - cpu
    await close()
    return done, cpu


def bench_ceiling(args: argparse.Namespace) -> dict[str, Any]:
    """Requests per second with no limit and no latency, ours beside bare loops."""
    figures: dict[str, Any] = {"scenario": "ceiling"}
    kinds = ["httpx2"]
    try:
        import aiohttp  # noqa: F401

        kinds.append("aiohttp")
    except ImportError:
        pass
    total = args.ceiling_rows
    with SandboxProcess() as sandbox:
        for kind in kinds:
            asyncio.run(_bare_loop(kind, sandbox.base_url, 300, args.concurrency))  # warm-up
            began = time.perf_counter()
            done, cpu = asyncio.run(_bare_loop(kind, sandbox.base_url, total, args.concurrency))
            wall = time.perf_counter() - began
            figures[f"bare_{kind}"] = {"req_per_s": round(done / wall),
                                       "client_cpu_ms_per_req": round(cpu / done * 1000, 3),
                                       "req_per_client_cpu_s": round(done / cpu)}  # fmt: skip
        run = make_run(sandbox.base_url, total, concurrency=args.concurrency)
        cpu = time.process_time()
        wall = asyncio.run(run_for(run, None))
        cpu = time.process_time() - cpu
        states = row_states(run)
        figures["rowprompt"] = {"req_per_s": round(states["done"] / wall),
                                "client_cpu_ms_per_req": round(cpu / states["done"] * 1000, 3),
                                "req_per_client_cpu_s": round(states["done"] / cpu),
                                "rows": states}  # fmt: skip
    ours = figures["rowprompt"]
    bare_httpx2 = figures["bare_httpx2"]["req_per_s"]
    for kind in kinds:
        bare = figures[f"bare_{kind}"]
        print(f"ceiling  bare {kind:<8}: {bare['req_per_s']:>6} req/s wall,"
              f" {bare['client_cpu_ms_per_req']:.3f} ms client CPU a request"
              f" ({bare['req_per_client_cpu_s']} req per client CPU second)")  # fmt: skip
    print(
        f"ceiling  rowprompt    : {ours['req_per_s']:>6} req/s wall,"
        f" {ours['client_cpu_ms_per_req']:.3f} ms client CPU a request"
        f" ({ours['req_per_client_cpu_s']} req per client CPU second);"
        f" wall ratio to bare httpx2 {ours['req_per_s'] / bare_httpx2:.2f},"
        f" to the 1,500 req/s goal {ours['req_per_s'] / 1500:.2f}"
        f" (per client CPU second: {ours['req_per_client_cpu_s'] / 1500:.2f})"
    )
    return figures


def bench_faults(args: argparse.Namespace) -> dict[str, Any]:
    """5% server errors and 2% dropped connections: every row must end ok."""
    flags = ["--fail-rate", "0.05", "--drop-rate", "0.02", "--latency-ms", "20"]
    with SandboxProcess(*flags) as sandbox:
        run = make_run(sandbox.base_url, args.fault_rows, concurrency=64)
        wall = asyncio.run(run_for(run, None))
        stats = sandbox.stats()
    states = row_states(run)
    ok_ratio = states["done"] / states["total"]
    print(f"faults   5% 5xx + 2% drops: {ok_ratio:.2%} of {states['total']} rows ok,"
          f" faults served {stats['faults']}, rows {states}, {wall:.1f} s")  # fmt: skip
    return {"scenario": "faults", "ok_ratio": ok_ratio, "rows": states, "faults": stats["faults"]}


def main() -> int:
    """Parse options, run the scenarios, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=SCENARIOS)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=10, help="Seconds left out at the start.")
    parser.add_argument("--seconds", type=int, default=60, help="Measured seconds.")
    parser.add_argument("--full", action="store_true", help="Run every row to the end.")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--ceiling-rows", type=int, default=6000)
    parser.add_argument("--fault-rows", type=int, default=2000)
    parser.add_argument("--json", action="store_true", help="Print the figures as JSON too.")
    args = parser.parse_args()
    names = [args.only] if args.only else list(SCENARIOS)
    results = []
    for name in names:
        if name == "ceiling":
            results.append(bench_ceiling(args))
        elif name == "faults":
            results.append(bench_faults(args))
        else:
            results.append(bench_limited(name, args))
    if args.json:
        for figures in results:
            print(dump(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
