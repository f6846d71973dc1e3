"""Shared pieces of the real-time benchmarks: a sandbox process, a job, the engine, figures.

The sandbox runs as ``rowprompt sandbox`` in a child process, so that its CPU does not count
against the client's and the GIL is not shared. Jobs are made straight in a ledger of their
own (a temporary home) with synthetic rows; the engine is the real one.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

from rowprompt.engine.context import RunContext
from rowprompt.engine.pacing import EngineStats
from rowprompt.engine.ratelimit import Limiter
from rowprompt.engine.realtime import RealtimeEngine
from rowprompt.jobs import JobSpec
from rowprompt.ledger import Ledger
from rowprompt.providers.openai import OpenAIProvider
from rowprompt.tokens import count_text

MODEL = "gpt-4o-mini"
_TEXT = (
    "the kettle broke after two days and the support line never answered my calls though"
    " the box looked lovely and delivery was quick which I appreciated very much indeed"
)
WORDS = _TEXT.split()


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SandboxProcess:
    """``rowprompt sandbox`` with these flags in a child process; a context manager."""

    def __init__(self, *flags: str) -> None:
        self.port = free_port()
        self.flags = flags
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL."""
        return self.url + "/v1"

    def __enter__(self) -> SandboxProcess:
        code = "from rowprompt.sandbox.cli import sandbox_command; sandbox_command()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, "--port", str(self.port), *self.flags],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx2.get(self.url + "/sandbox/stats", timeout=1)
                return self
            except httpx2.HTTPError:
                time.sleep(0.1)
        self.proc.kill()
        raise SystemExit("the sandbox did not start within 30 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def stats(self) -> dict[str, Any]:
        """``GET /sandbox/stats``."""
        return dict(httpx2.get(self.url + "/sandbox/stats", timeout=30).json())

    def reset(self) -> None:
        """Forget the counts so far."""
        httpx2.post(self.url + "/sandbox/reset", timeout=30)

    def drain(self, rpm: int | None, tpm: int | None) -> None:
        """Empty the model's buckets, as a key in steady use would have them."""
        asyncio.run(self._drain(rpm, tpm))
        # A second's refill: what a key in steady use has left when the next job starts.
        time.sleep(1.0)
        self.reset()

    async def _drain(self, rpm: int | None, tpm: int | None) -> None:
        headers = {"authorization": "Bearer sk-bench"}
        body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
        async with httpx2.AsyncClient(base_url=self.base_url, headers=headers, timeout=30) as c:
            if tpm:
                await c.post("/chat/completions", json={**body, "max_tokens": max(1, tpm - 50)})
            full = False

            async def worker() -> None:
                nonlocal full
                while not full:
                    response = await c.post("/chat/completions", json={**body, "max_tokens": 1})
                    full = full or response.status_code == 429

            if rpm:
                await asyncio.gather(*(worker() for _ in range(50)))


def prompt_of(position: int, words: int) -> str:
    """A review-like user message of about ``words`` words, different for every row."""
    picked = [WORDS[(position * 7 + i * 3) % len(WORDS)] for i in range(words)]
    return f"Review {position}: " + " ".join(picked)


@dataclass
class Run:
    """A job in a ledger of its own, and the engine that drives it."""

    ledger: Ledger
    ctx: RunContext
    engine: RealtimeEngine
    provider: OpenAIProvider
    rows: int
    home: Path


def make_run(
    base_url: str,
    rows: int,
    *,
    words: int = 12,
    max_tokens: int | None = 16,
    limiter: Limiter | None = None,
    concurrency: int = 256,
    on_stats: Callable[[EngineStats], None] | None = None,
    max_attempts: int = 6,
) -> Run:
    """A fresh job of ``rows`` synthetic rows, ready to run against ``base_url``."""
    count_text("warm up", MODEL)  # load the tokenizer once, outside any measurement
    home = Path(tempfile.mkdtemp(prefix="rowprompt-bench-"))
    ledger = Ledger(home)
    params = {} if max_tokens is None else {"max_tokens": max_tokens}
    spec = JobSpec(
        input_hash=f"bench-{time.time_ns()}",
        prompt="{{ review }}",
        system=None,
        model=MODEL,
        provider="sandbox",
        base_url=base_url,
        params=params,
        mode="realtime",
    )
    job = ledger.create_job(
        spec, ((f"r{i}", i, f"h{i}") for i in range(rows)), input_path=None, output_path=None,
        mode="realtime",
    )  # fmt: skip

    def build_body(position: int) -> dict[str, Any]:
        messages = [{"role": "user", "content": prompt_of(position, words)}]
        return {"model": MODEL, "messages": messages, **params}

    ctx = RunContext(
        job_id=job.id,
        model=MODEL,
        build_body=build_body,
        price=lambda completion, batch: 0.0,
        max_attempts=max_attempts,
        use_cache=False,
        request_timeout=30.0,
        on_message=lambda text: print(f"  [{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr),
    )
    provider = OpenAIProvider(api_key="sk-bench", base_url=base_url, name="sandbox", timeout=30)
    engine = RealtimeEngine(
        provider, ledger, ctx, limiter=limiter or Limiter(), concurrency=concurrency,
        on_stats=on_stats,
    )  # fmt: skip
    return Run(ledger, ctx, engine, provider, rows, home)


async def run_for(run: Run, seconds: float | None) -> float:
    """Drive the engine to the end, or stop it gracefully after ``seconds``; wall seconds."""
    started = time.perf_counter()

    async def stopper() -> None:
        if seconds is not None:
            await asyncio.sleep(seconds)
            run.engine.request_stop()

    timer = asyncio.create_task(stopper())
    try:
        await run.engine.run()
    finally:
        timer.cancel()
        await run.provider.aclose()
    return time.perf_counter() - started


def window_rate(stats: dict[str, Any], field: str, start: float, end: float) -> float:
    """``field`` per minute from the sandbox's per-second series over [start, end)."""
    total = sum(s[field] for s in stats["tokens_per_second"] if start <= s["t"] < end)
    return total * 60.0 / max(1.0, end - start)


def row_states(run: Run) -> dict[str, int]:
    """Rows by state in the ledger."""
    progress = run.ledger.progress(run.ctx.job_id)
    return {"done": progress.done, "failed": progress.failed, "pending": progress.pending,
            "in_flight": progress.in_flight, "total": progress.total}  # fmt: skip


def dump(figures: dict[str, Any]) -> str:
    """Figures as one JSON line."""
    return json.dumps(figures, sort_keys=True)
