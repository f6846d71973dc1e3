"""Throughput of the sandbox's chat endpoint: requests per second, p50 and p99 latency.

The sandbox runs in its own process (as ``rowprompt sandbox`` would) so that the client's
CPU does not count against it; ``--in-process`` runs it in a thread of this process instead.
Two clients are measured: a lean ``httpx2.AsyncClient`` (what the server can hold) and the
official ``AsyncOpenAI`` SDK (what a real client gets). Bounded by ``--requests`` and
``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import httpx2
from openai import AsyncOpenAI

BODY = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You label product reviews."},
        {"role": "user", "content": "Sentiment of: the kettle broke after two days."},
    ],
    "max_tokens": 16,
}


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(port: int) -> subprocess.Popen[bytes]:
    """``rowprompt sandbox`` in a child process, ready when this returns."""
    code = "from rowprompt.sandbox.cli import sandbox_command; sandbox_command()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx2.get(f"http://127.0.0.1:{port}/sandbox/stats", timeout=1)
            return proc
        except httpx2.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the sandbox did not start within 30 s")


async def drive(
    call: Callable[[], Awaitable[None]], total: int, concurrency: int, max_seconds: float
) -> tuple[int, float, list[float]]:
    """Run ``call`` ``total`` times, ``concurrency`` at once; (done, seconds, latencies)."""
    latencies: list[float] = []
    remaining = total
    stop_at = time.monotonic() + max_seconds

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0 and time.monotonic() < stop_at:
            remaining -= 1
            begin = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - begin)

    begin = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), time.perf_counter() - begin, latencies


def report(name: str, done: int, seconds: float, latencies: list[float]) -> dict[str, float]:
    """Print one line of figures and return them."""
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    rate = done / seconds
    print(f"{name:<22} {done:>6} req in {seconds:6.2f} s = {rate:7.0f} req/s   "
          f"p50 {p50:6.1f} ms   p99 {p99:6.1f} ms")  # fmt: skip
    return {"requests": done, "seconds": seconds, "req_per_s": rate, "p50_ms": p50, "p99_ms": p99}


async def bench(base: str, total: int, concurrency: int, max_seconds: float) -> dict[str, object]:
    """Both clients against the server at ``base``."""
    results: dict[str, object] = {}
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    payload = json.dumps(BODY).encode()
    headers = {"authorization": "Bearer sk-bench", "content-type": "application/json"}
    async with httpx2.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def lean() -> None:
            response = await client.post("/chat/completions", content=payload, headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"status {response.status_code}: {response.text[:200]}")

        await drive(lean, min(200, total), concurrency, max_seconds)  # warm-up
        results["httpx2"] = report("httpx2.AsyncClient", *await drive(
            lean, total, concurrency, max_seconds))  # fmt: skip
    sdk = AsyncOpenAI(base_url=base, api_key="sk-bench", max_retries=0)

    async def official() -> None:
        await sdk.chat.completions.create(**BODY)  # type: ignore[call-overload]

    results["openai_sdk"] = report("AsyncOpenAI", *await drive(
        official, total, concurrency, max_seconds))  # fmt: skip
    await sdk.close()
    return results


def main() -> int:
    """Parse options, start the server, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-seconds", type=float, default=20.0)
    parser.add_argument("--in-process", action="store_true")
    parser.add_argument("--json", action="store_true", help="Print the figures as JSON too.")
    args = parser.parse_args()
    where = "in-process thread" if args.in_process else "own process"
    print(
        f"sandbox chat throughput: {args.requests} requests, concurrency {args.concurrency}, "
        f"latency 0, no limits ({where})"
    )
    if args.in_process:
        from rowprompt.sandbox import Sandbox, SandboxConfig

        with Sandbox(SandboxConfig()) as sb:
            figures = asyncio.run(bench(sb.base_url, args.requests, args.concurrency,
                                        args.max_seconds))  # fmt: skip
    else:
        port = free_port()
        proc = start_server(port)
        try:
            figures = asyncio.run(bench(f"http://127.0.0.1:{port}/v1", args.requests,
                                        args.concurrency, args.max_seconds))  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
