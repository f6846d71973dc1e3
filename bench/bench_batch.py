"""Batch engine benchmarks: preparation, reconcile, and the queue against the sandbox.

    python bench/bench_batch.py                      # all three, 1,000,000 rows
    python bench/bench_batch.py prepare --rows 200000
    python bench/bench_batch.py reconcile | queue

Each part runs in a process of its own, so its peak RSS is its own. Figures are printed;
``docs/benchmarks.md`` (section "Batch engine") records them with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pandas as pd

from rowprompt.engine.batch import BatchEngine
from rowprompt.engine.context import RunContext
from rowprompt.engine.shards import ShardCaps, ShardPlanner, enqueued_tokens
from rowprompt.jobs import JobSpec, ShardState, request_hash
from rowprompt.ledger import Ledger
from rowprompt.providers.base import BatchCaps, BatchInfo, BatchLineResult
from rowprompt.providers.openai import OpenAIProvider, parse_batch_line

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "reviewers",
    "write",
    "long",
    "notes",
]


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def review(i: int) -> str:
    """About 90 words of text, different for each row."""
    return " ".join(f"{WORDS[(i * 7 + j) % len(WORDS)]}{(i + j) % 97}" for j in range(45))


# -- preparation -----------------------------------------------------------------------------
def _write_input(path: Path, rows: int) -> None:
    pd.DataFrame({"id": range(rows), "review": [review(i) for i in range(rows)]}).to_parquet(path)


def bench_prepare(rows: int) -> None:
    """Parquet → job in the ledger → shard files, through the runner as a user runs it."""
    from rowprompt.runner import Runner, RunOptions, prepare

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.parquet"
        # Made in a process of its own: the peak RSS printed below is rowprompt's, not the
        # test data's (a million generated strings and their Parquet encoding).
        subprocess.run(
            [sys.executable, __file__, "--write-input", str(src), "--rows", str(rows)], check=True
        )
        options = RunOptions(
            prompt="Rate this review from 1 to 5: {{ review }}",
            model="gpt-4o-mini",
            provider="openai",
            base_url="http://127.0.0.1:9/v1",
            mode="batch",
            max_tokens=8,
            home=str(Path(tmp) / "home"),
            no_cache=True,
        )
        t0 = time.perf_counter()
        prepared = prepare(str(src), options)
        t1 = time.perf_counter()
        runner = Runner(prepared)
        job = runner.ensure_job()
        t2 = time.perf_counter()
        provider = OpenAIProvider(api_key="x", base_url=options.base_url)
        ctx = runner.context()
        planner = ShardPlanner(provider, runner.ledger, ctx)
        caps = ShardCaps(BatchCaps().max_requests, BatchCaps().max_bytes)
        shards = list(planner.plan_all(caps))
        t3 = time.perf_counter()
        tokens = sum(s.estimated_tokens for s in shards)
        print(f"prepare: {rows:,} rows, {len(shards)} shards, ~{tokens / rows:.0f} tokens/row")
        print(f"  read + check (prepare):      {t1 - t0:6.1f} s")
        print(f"  ledger rows (ensure_job):    {t2 - t1:6.1f} s  {rows / (t2 - t1):>9,.0f} rows/s")
        print(f"  shard files (plan):          {t3 - t2:6.1f} s  {rows / (t3 - t2):>9,.0f} rows/s")
        print(f"  whole:                       {t3 - t0:6.1f} s  {rows / (t3 - t0):>9,.0f} rows/s")
        print(f"  peak RSS: {peak_rss_mb():,.0f} MB")
        # Where the planning time goes, on 20,000 rows.
        sample = range(20_000)
        t = time.perf_counter()
        bodies = [prepared.build_body(i) for i in sample]
        render = time.perf_counter() - t
        t = time.perf_counter()
        for body in bodies:
            enqueued_tokens(body)
        count = time.perf_counter() - t
        t = time.perf_counter()
        for i, body in enumerate(bodies):
            provider.batch_line(ctx.custom_id(i), body)
        dump = time.perf_counter() - t
        t = time.perf_counter()
        for body in bodies:
            request_hash(body)
        hashing = time.perf_counter() - t
        n = len(sample)
        print(
            f"  per row: render {render / n * 1e6:.1f} µs, tokens {count / n * 1e6:.1f} µs"
            f" (one by one), JSON line {dump / n * 1e6:.1f} µs, request hash"
            f" {hashing / n * 1e6:.1f} µs"
        )
        runner.ledger.close()
        del job


# -- reconcile -------------------------------------------------------------------------------
class FileProvider:
    """Serves result files from disk: measures our join, not a server's download."""

    name = "bench"
    batch_caps = BatchCaps()

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    async def batch_results(self, info: BatchInfo) -> AsyncIterator[BatchLineResult]:
        with self.files[info.id].open() as handle:
            for line in handle:
                result = parse_batch_line(line)
                if result is not None:
                    yield result


def output_line(custom_id: str, i: int) -> str:
    body = {
        "id": f"chatcmpl-{i}",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": f"{i % 5 + 1}", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 100 + i % 30, "completion_tokens": 1, "total_tokens": 101},
        "system_fingerprint": "fp",
    }
    line = {
        "id": f"batch_req_{i}",
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": f"req_{i}", "body": body},
        "error": None,
    }
    return json.dumps(line, separators=(",", ":"))


def bench_reconcile(rows: int) -> None:
    """N output lines joined to their rows in the ledger, then the table written to Parquet."""
    from rowprompt import tables
    from rowprompt.costs import cost_usd
    from rowprompt.output import build_output

    per_shard = 50_000
    with tempfile.TemporaryDirectory() as tmp, Ledger(Path(tmp) / "home") as ledger:
        spec = JobSpec(input_hash="x", prompt="p", system=None, model="gpt-4o-mini", provider="b")
        job = ledger.create_job(
            spec,
            ((f"r{i}", i, f"h{i}") for i in range(rows)),
            input_path=None,
            output_path=None,
            mode="batch",
        )
        ctx = RunContext(
            job_id=job.id,
            model="gpt-4o-mini",
            build_body=lambda i: {},
            price=lambda c, batch: cost_usd(
                c.model or "gpt-4o-mini", c.prompt_tokens, c.completion_tokens, batch=batch
            ),
        )
        files: dict[str, Path] = {}
        for number, start in enumerate(range(0, rows, per_shard)):
            stop = min(rows, start + per_shard)
            keys = [f"r{i}" for i in range(start, stop)]
            ledger.create_shard(job.id, number, provider="b", model="gpt-4o-mini", path="",
                                keys=keys, nbytes=0, estimated_tokens=0)  # fmt: skip
            path = Path(tmp) / f"out-{number}.jsonl"
            with path.open("w") as handle:
                # Output files come back shuffled: reverse the order to be as unkind.
                for i in reversed(range(start, stop)):
                    handle.write(output_line(ctx.custom_id(i), i) + "\n")
            files[f"batch_{number}"] = path
            ledger.update_shard(job.id, number, state=ShardState.SUBMITTED,
                                batch_id=f"batch_{number}", status="completed")  # fmt: skip
        engine = BatchEngine(FileProvider(files), ledger, ctx)  # type: ignore[arg-type]
        t0 = time.perf_counter()

        async def collect_all() -> None:
            for shard in ledger.shards(job.id, active_only=True):
                info = BatchInfo(id=shard.batch_id or "", status="completed", total=shard.rows)
                await engine.collect(shard, info)

        asyncio.run(collect_all())
        t1 = time.perf_counter()
        frame = pd.DataFrame({"id": range(rows)})
        out, _ = build_output(frame, [f"r{i}" for i in range(rows)], ledger, job.id)
        tables.write_table(out, Path(tmp) / "out.parquet")
        t2 = time.perf_counter()
        done = int((out["_status"] == "ok").sum())
        print(f"reconcile: {rows:,} output lines in {len(files)} files, {done:,} rows ok")
        print(
            f"  join to the ledger (collect): {t1 - t0:6.1f} s  {rows / (t1 - t0):>9,.0f} lines/s"
        )
        print(f"  table to Parquet:             {t2 - t1:6.1f} s")
        print(
            f"  whole:                        {t2 - t0:6.1f} s  {rows / (t2 - t0):>9,.0f} lines/s"
        )
        print(f"  peak RSS: {peak_rss_mb():,.0f} MB")


# -- the queue -------------------------------------------------------------------------------
def bench_queue(rows: int) -> None:
    """A job of 10× the sandbox's enqueued-token limit, the limit unknown to the engine."""
    model = "gpt-4o-mini"

    def body(i: int) -> dict[str, Any]:
        return {"model": model, "messages": [{"role": "user", "content": review(i)}],
                "max_tokens": 8}  # fmt: skip

    total = sum(enqueued_tokens(body(i)) for i in range(rows))
    limit = total // 10
    # The sandbox runs in a process of its own, as `rowprompt sandbox` does: in this process
    # it would share the GIL with the engine, and measure that contention instead.
    # Scaled up from hours to seconds, keeping a real batch's shape: processing the rows
    # takes far longer than validating and finalizing.
    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("rowprompt")), "sandbox", "--port", str(port),
         "--batch-rows-per-second", str(_arg("--rps", "50")), "--batch-validating-seconds", "0.05",
         "--batch-finalizing-seconds", "0.05", "--batch-token-limit", str(limit)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _queue_run(rows, body, total, limit, port)
    finally:
        server.terminate()
        server.wait()


def _arg(name: str, default: str) -> str:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _queue_run(rows: int, body: Any, total: int, limit: int, port: int) -> None:
    import urllib.error
    import urllib.request

    model = "gpt-4o-mini"
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{base}/sandbox/stats", timeout=1).close()
            break
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)

    class Remote:
        base_url = f"{base}/v1"

        @staticmethod
        def stats() -> dict[str, Any]:
            with urllib.request.urlopen(f"{base}/sandbox/stats", timeout=10) as answer:
                return dict(json.load(answer))

    sb = Remote()
    samples: list[tuple[float, int, int]] = []
    ours: list[int] = []
    with tempfile.TemporaryDirectory() as tmp, Ledger(tmp) as ledger:
        spec = JobSpec(input_hash="q", prompt="p", system=None, model=model, provider="sandbox")
        job = ledger.create_job(spec, ((f"r{i}", i, request_hash(body(i))) for i in range(rows)),
                                input_path=None, output_path=None, mode="batch")  # fmt: skip
        ctx = RunContext(job_id=job.id, model=model, build_body=body,
                         price=lambda c, b: 0.0, use_cache=False)  # fmt: skip
        provider = OpenAIProvider(api_key="x", base_url=sb.base_url, name="sandbox")
        # The limit is learned from the first refusal, or told (`--batch-token-limit`).
        told = "--told" in sys.argv
        engine = BatchEngine(provider, ledger, ctx, poll_interval=0.1, max_poll_interval=2.0,
                             token_limit=limit if told else None)  # fmt: skip

        async def main() -> None:
            task = asyncio.create_task(engine.run(wait=True, timeout=600))
            while not task.done():
                stats = await asyncio.to_thread(sb.stats)
                left = ledger.count_rows(job.id, "pending")  # type: ignore[arg-type]
                samples.append((time.monotonic(), stats["enqueued_tokens"].get(model, 0), left))
                ours.append(engine.queue.in_use())
                await asyncio.sleep(0.1)
            await task
            await provider.aclose()

        t0 = time.perf_counter()
        asyncio.run(main())
        took = time.perf_counter() - t0
        stats = sb.stats()
        p = ledger.progress(job.id)
        # "While work remains": until the last shard went into the queue.
        busy = [tokens for _, tokens, left in samples if left > 0]
        full = [tokens for tokens in busy if tokens >= 0.8 * limit]
        print(f"queue: {rows:,} rows, {total:,} tokens = 10 × limit {limit:,} (told: {told})")
        print(f"  took {took:.1f} s; rows done {p.done:,}, failed {p.failed:,}")
        print(f"  batches: {stats['batches_created']} created, by state"
              f" {stats['batches_by_final_state']}")  # fmt: skip
        print(
            f"  token_limit_exceeded refusals: {stats['batches_by_final_state'].get('failed', 0)}"
        )
        peak = stats["peak_enqueued_tokens"].get(model, 0)
        print(f"  peak enqueued {peak:,} = {peak / limit:.0%} of the limit")
        if busy:
            mean = sum(busy) / len(busy)
            share = len(full) / len(busy)
            print(f"  while rows were pending ({len(busy)} samples): mean enqueued"
                  f" {mean / limit:.0%} of the limit, {share:.0%} of samples ≥ 80%")  # fmt: skip
        print(f"  billed twice: {stats['batch_custom_ids_billed_twice']}")
        if ours:
            ours.sort()
            median = ours[len(ours) // 2] / limit
            print(f"  the engine's own count of enqueued tokens: median {median:.0%} of the"
                  " limit (it counts a batch from create until it is seen ended)")  # fmt: skip


PARTS = {"prepare": bench_prepare, "reconcile": bench_reconcile, "queue": bench_queue}
DEFAULT_ROWS = {"prepare": 1_000_000, "reconcile": 1_000_000, "queue": 20_000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("part", nargs="?", choices=sorted(PARTS))
    parser.add_argument("--rows", type=int)
    parser.add_argument("--told", action="store_true", help="queue: tell the engine the limit")
    parser.add_argument("--rps", type=float, default=50.0, help="queue: sandbox rows/s per batch")
    parser.add_argument("--write-input", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_input:
        _write_input(Path(args.write_input), args.rows)
        return 0
    if args.part:
        PARTS[args.part](args.rows or DEFAULT_ROWS[args.part])
        return 0
    failed = 0
    for part in PARTS:
        cmd = [sys.executable, __file__, part] + (["--rows", str(args.rows)] if args.rows else [])
        failed += subprocess.run(cmd, check=False, timeout=900).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
