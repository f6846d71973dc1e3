"""Shard planning: pending rows to batch input files that respect every cap, streamed.

A shard is cut before the line that would break the provider's request cap, its byte cap
or the shard's token cap. Rows are read from the ledger a chunk at a time and their lines go
straight to the shard's file, so planning a million rows holds one chunk of rendered
requests and one shard's row keys in memory, never the whole job. The rows of a shard are
assigned to it in one transaction, once its file is complete on disk.

Each request's *enqueued tokens* are estimated the way the Batch API's queue counts them:
the prompt tokens (counted offline with tiktoken, chat formatting included) plus
``max_completion_tokens`` (or ``max_tokens``) × ``n``. A request that gives no maximum counts
0 output tokens: OpenAI's queue limit is documented as a limit on enqueued *prompt* tokens,
and the sandbox counts a missing maximum as 0 too. The queue scheduler keeps a margin for
the provider's own estimate differing from ours.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

import tiktoken

from rowprompt import tokens, vectors
from rowprompt.engine.budget import OVER_BUDGET
from rowprompt.engine.context import RunContext
from rowprompt.jobs import VIA_BATCH, VIA_CACHE, RowOutcome, RowState
from rowprompt.ledger import Ledger, ShardRecord
from rowprompt.providers.base import Provider

# Rows rendered per ledger read: large enough to amortise the query and the batched token
# count, small enough that the rows rendered past a shard's end cost little.
CHUNK_ROWS = 2000
# Rendered requests held at once: a chunk of text prompts fits in one window, while requests
# that carry images (base64, megabytes each) are rendered a window at a time, so a chunk never
# holds thousands of encoded images in memory.
RENDER_WINDOW_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ShardCaps:
    """The limits one shard must respect."""

    max_requests: int
    max_bytes: int
    max_tokens: int | None = None
    """Target enqueued tokens per shard (a single larger request still gets a shard alone)."""
    row_token_limit: int | None = None
    """A request estimated above this can never be enqueued (the model's queue limit)."""


def output_allowance(body: Mapping[str, Any]) -> int:
    """Output tokens a request reserves in the queue: its maximum × ``n``, 0 when unset."""
    cap = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    n = body.get("n") or 1
    try:
        return int(cap) * int(n)
    except (TypeError, ValueError):
        return 0


def enqueued_tokens(body: Mapping[str, Any]) -> int:
    """One request's estimated enqueued tokens (see the module docstring)."""
    if vectors.is_embeddings_body(body):
        return vectors.input_tokens(body)
    model = str(body.get("model") or "")
    return tokens.count_messages(body.get("messages") or [], model) + output_allowance(body)


def enqueued_tokens_many(bodies: Sequence[Mapping[str, Any]]) -> list[int]:
    """``enqueued_tokens`` for many requests, with one batched tokenizer call.

    tiktoken's batch encoder releases the GIL and runs on several threads; per-message
    formatting is added exactly as :func:`rowprompt.tokens.count_messages` adds it, so the
    result is the same number, only faster.
    """
    if not bodies:
        return []
    model = str(bodies[0].get("model") or "")
    enc = tokens.encoding(tokens.encoding_name_for_model(model))
    if all(isinstance(body.get("input"), str) for body in bodies):
        # Embeddings, one input a line: the input's tokens are the whole estimate.
        return _token_counts(enc, [body["input"] for body in bodies])
    texts: list[str] = []
    plain: list[bool] = []
    role_cost: dict[str, int] = {}
    fixed: list[int] = []
    for body in bodies:
        messages = body.get("messages") or []
        simple = str(body.get("model") or "") == model and all(
            isinstance(m.get("content"), str) and "name" not in m and isinstance(m.get("role"), str)
            for m in messages
        )
        plain.append(simple)
        if not simple:
            fixed.append(enqueued_tokens(body))
            continue
        total = tokens.TOKENS_REPLY_PRIMER + output_allowance(body)
        for message in messages:
            role = message["role"]
            if role not in role_cost:
                role_cost[role] = len(enc.encode_ordinary(role))
            total += tokens.TOKENS_PER_MESSAGE + role_cost[role]
            texts.append(message["content"])
        fixed.append(total)
    counts = iter(_token_counts(enc, texts))
    result: list[int] = []
    for body, simple, base in zip(bodies, plain, fixed, strict=True):
        if simple:
            base += sum(next(counts) for _ in body.get("messages") or [])
        result.append(base)
    return result


_POOL: ThreadPoolExecutor | None = None
_THREADS = max(1, min(8, os.cpu_count() or 1))


def _token_counts(enc: tiktoken.Encoding, texts: list[str]) -> list[int]:
    """Token counts of many texts, one slice per thread (tiktoken releases the GIL).

    tiktoken's own batch call makes one future per text, which costs more than the count of
    a short prompt; slices cost one future per thread.
    """
    global _POOL
    if len(texts) < 256 or _THREADS == 1:
        return [len(enc.encode_ordinary(t)) for t in texts]
    if _POOL is None:
        _POOL = ThreadPoolExecutor(_THREADS, thread_name_prefix="rowprompt-tokens")
    step = -(-len(texts) // _THREADS)
    parts = [texts[i : i + step] for i in range(0, len(texts), step)]
    counted = _POOL.map(lambda part: [len(enc.encode_ordinary(t)) for t in part], parts)
    return [n for part in counted for n in part]


class ShardPlanner:
    """Writes shard files for a job's pending rows and assigns the rows to them."""

    def __init__(self, provider: Provider, ledger: Ledger, ctx: RunContext) -> None:
        self.provider = provider
        self.ledger = ledger
        self.ctx = ctx

    def plan_all(self, caps: ShardCaps, max_rows: int | None = None) -> Iterator[ShardRecord]:
        """Plan shards until no pending row is left (or ``max_rows`` rows are planned)."""
        left = max_rows
        while left is None or left > 0:
            shard = self.plan_one(caps, max_rows=left)
            if shard is None:
                return
            if left is not None:
                left -= shard.rows
            yield shard

    def plan_one(self, caps: ShardCaps, max_rows: int | None = None) -> ShardRecord | None:
        """Plan one shard from the first pending rows; None when no row is left to plan."""
        job_id = self.ctx.job_id
        number = self.ledger.next_shard_number(job_id)
        path = self.ledger.batch_dir / f"{job_id}-{number}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        keys: list[str] = []
        size = total_tokens = 0
        limit_rows = min(caps.max_requests, max_rows or caps.max_requests)
        handle: BinaryIO = tmp.open("wb")
        try:
            full = False
            for chunk in self.ledger.iter_pending(job_id, min(CHUNK_ROWS, limit_rows)):
                for key, line, estimate in self._render(chunk, caps):
                    over = (
                        len(keys) >= limit_rows
                        or size + len(line) > caps.max_bytes
                        or (
                            caps.max_tokens is not None
                            and total_tokens + estimate > caps.max_tokens
                        )
                    )
                    if keys and over:
                        full = True
                        break
                    handle.write(line)
                    keys.append(key)
                    size += len(line)
                    total_tokens += estimate
                if full:
                    break
            handle.close()
            if not keys:
                return None
            os.replace(tmp, path)
        finally:
            handle.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self.ledger.create_shard(
            job_id,
            number,
            provider=self.provider.name,
            model=self.ctx.model,
            path=str(path),
            keys=keys,
            nbytes=size,
            estimated_tokens=total_tokens,
        )
        return self.ledger.shard(job_id, number)

    def _render(
        self, chunk: list[tuple[str, int, str]], caps: ShardCaps
    ) -> Iterator[tuple[str, bytes, int]]:
        """(key, batch line, enqueued tokens) of each row, rendered a window at a time (see
        ``RENDER_WINDOW_BYTES``); cache hits and impossible rows end."""
        hits = self.ledger.cached_many([h for _, _, h in chunk]) if self.ctx.use_cache else {}
        cached: list[RowOutcome] = []
        todo: list[tuple[str, int]] = []
        for key, position, rhash in chunk:
            hit = hits.get(rhash)
            if hit is not None:
                cached.append(RowOutcome(key, RowState.DONE, VIA_CACHE, hit, cost_usd=0.0))
            else:
                todo.append((key, position))
        if cached:
            self.ledger.record_outcomes(self.ctx.job_id, cached)
        window: list[tuple[str, dict[str, Any], bytes]] = []
        held = 0
        for index, (key, position) in enumerate(todo):
            body = self.ctx.build_body(position)
            line = self.provider.batch_line(self.ctx.custom_id(position), body)
            window.append((key, body, line))
            held += len(line)
            if held >= RENDER_WINDOW_BYTES or index == len(todo) - 1:
                yield from self._settle(window, caps)
                window, held = [], 0

    def _settle(
        self, window: list[tuple[str, dict[str, Any], bytes]], caps: ShardCaps
    ) -> list[tuple[str, bytes, int]]:
        """The window's lines with their estimates; rows no batch can carry (or the budget
        refuses) end here."""
        estimates = enqueued_tokens_many([body for _, body, _ in window])
        ended: list[RowOutcome] = []
        lines: list[tuple[str, bytes, int]] = []
        for (key, body, line), estimate in zip(window, estimates, strict=True):
            too_big = _too_big(len(line), estimate, caps)
            if too_big:
                ended.append(
                    RowOutcome(
                        key, RowState.FAILED, VIA_BATCH, error_code="request_too_large",
                        error_message=too_big,
                    )
                )  # fmt: skip
                continue
            output = output_allowance(body)
            if not self.ctx.reserve_budget(key, estimate - output, output, True):
                assert self.ctx.budget is not None
                ended.append(
                    RowOutcome(
                        key, RowState.FAILED, VIA_BATCH, error_code=OVER_BUDGET,
                        error_message=self.ctx.budget.over_budget_message(),
                    )
                )  # fmt: skip
                continue
            lines.append((key, line, estimate))
        if ended:
            # Rows that no batch can carry end here for good.
            self.ledger.record_outcomes(self.ctx.job_id, ended)
        return lines


def _too_big(nbytes: int, estimate: int, caps: ShardCaps) -> str | None:
    if nbytes > caps.max_bytes:
        return (
            f"the request is {nbytes:,} bytes, more than a batch file may hold ({caps.max_bytes:,})"
        )
    if caps.row_token_limit is not None and estimate > caps.row_token_limit:
        return (
            f"the request needs about {estimate:,} enqueued tokens, more than the model's"
            f" batch queue limit ({caps.row_token_limit:,}); use --mode realtime or a lower"
            " --max-tokens"
        )
    return None
