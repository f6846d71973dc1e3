"""The cost before the spending: rows, tokens, cost and duration in each mode, and advice."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import tiktoken

from rowprompt import costs, tokens, vectors
from rowprompt.config import load_settings
from rowprompt.engine.context import DEFAULT_OUTPUT_ESTIMATE
from rowprompt.jobs import request_hash
from rowprompt.ledger import Ledger

if TYPE_CHECKING:
    from rowprompt.engine.planner import BatchHistory, Plan
    from rowprompt.runner import Prepared

# The provider's promise: what a job with no batch history here can say of batch time.
BATCH_TURNAROUND = "within 24 h (often under 1 h)"


@dataclass(frozen=True)
class Estimate:
    """What a job would ask and cost, before anything is spent."""

    rows: int
    rows_cached: int
    prompt_tokens: int
    tokens_exact: bool
    completion_tokens: int
    completion_basis: str
    cost_realtime: float | None
    cost_batch: float | None
    realtime_minutes: float | None
    limits: str
    mode: str
    advice: str
    images: int = 0
    """Images attached to the rows to ask (their tokens are in ``prompt_tokens``)."""
    images_by_url: int = 0
    """Of those, web URLs: not fetched, so counted at the model's largest image."""
    image_tokens: int = 0
    batch_time: str = BATCH_TURNAROUND
    """Batch turnaround in words: this provider's history in the ledger, or its promise."""
    warning: str | None = None
    """Said when the deadline cannot be met, with the rows a minute it needs and allowed."""

    @property
    def rows_to_ask(self) -> int:
        """Rows that would be sent (the rest come from the cache)."""
        return self.rows - self.rows_cached


def tokens_are_exact(model: str) -> bool:
    """True when tiktoken knows the model's encoding (else counts are an approximation)."""
    try:
        tiktoken.encoding_name_for_model(model)
    except KeyError:
        return False
    return True


def estimate_job(
    prepared: Prepared,
    ledger: Ledger,
    *,
    plan_for: Callable[[int], Plan],
    history: BatchHistory | None = None,
    use_cache: bool,
    rpm: int | None,
    tpm: int | None,
    pilot_completion_tokens: float | None = None,
    pilot_rows: int = 0,
) -> Estimate:
    """Count every row's prompt exactly, bound or measure the answers, price both modes."""
    model = prepared.spec.model
    prompt_total = cached = rows = 0
    cap_total = 0
    capped = True
    images = images_by_url = image_tokens = 0
    for position in range(len(prepared.table)):
        body = prepared.build_body(position)
        rows += 1
        if use_cache and ledger.cached(request_hash(body, prepared.spec.endpoint)) is not None:
            cached += 1
            continue
        if vectors.is_embeddings_body(body):
            prompt_total += vectors.input_tokens(body)  # embeddings: no answer tokens
            continue
        prompt_total += tokens.count_messages(body["messages"], model)
        found, by_url, counted = tokens.count_images(body["messages"], model)
        images, images_by_url = images + found, images_by_url + by_url
        image_tokens += counted
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        if cap is None:
            capped = False
            cap = DEFAULT_OUTPUT_ESTIMATE
        cap_total += int(cap) * int(body.get("n") or 1)
    asked = rows - cached
    if pilot_completion_tokens is not None:
        completion = round(pilot_completion_tokens * asked)
        basis = f"measured on a pilot of {pilot_rows} rows ({pilot_completion_tokens:.1f} a row)"
    elif capped:
        completion = cap_total
        basis = "an upper bound: --max-tokens for every row"
    else:
        completion = cap_total
        basis = (
            f"assumed {DEFAULT_OUTPUT_ESTIMATE} a row: no --max-tokens"
            " (set it, or --pilot N to measure)"
        )
    provider = "openai" if prepared.spec.provider == "sandbox" else prepared.spec.provider
    realtime = costs.cost_usd(model, prompt_total, completion, batch=False, provider=provider)
    batch = costs.cost_usd(model, prompt_total, completion, batch=True, provider=provider)
    minutes, limits = _realtime_minutes(asked, prompt_total + cap_total, rpm, tpm)
    # Planned for the rows that would be sent: those answered in the cache cost no time.
    plan = plan_for(asked)
    mode = plan.mode
    advice = _advice(plan, asked, realtime, batch)
    return Estimate(
        rows=rows,
        rows_cached=cached,
        prompt_tokens=prompt_total,
        tokens_exact=tokens_are_exact(model),
        completion_tokens=completion,
        completion_basis=basis,
        cost_realtime=realtime,
        cost_batch=batch,
        realtime_minutes=minutes,
        limits=limits,
        mode=mode,
        advice=advice,
        images=images,
        images_by_url=images_by_url,
        image_tokens=image_tokens,
        batch_time=(
            history.describe(load_settings().planner) if history is not None else BATCH_TURNAROUND
        ),
        warning=plan.warning if asked else None,
    )


def _realtime_minutes(
    rows: int, admitted_tokens: int, rpm: int | None, tpm: int | None
) -> tuple[float | None, str]:
    if rows == 0:
        return 0.0, "nothing to send"
    bounds = []
    if rpm:
        bounds.append(rows / rpm)
    if tpm:
        bounds.append(admitted_tokens / tpm)
    if not bounds:
        return None, "rate limits unknown (give --rpm/--tpm for a duration)"
    parts = [f"{rpm:,} requests/min" if rpm else "", f"{tpm:,} tokens/min" if tpm else ""]
    return max(bounds), "at " + " and ".join(p for p in parts if p)


def _advice(plan: Plan, rows: int, realtime: float | None, batch: float | None) -> str:
    if rows == 0:
        return "every row is already answered in the cache: running costs nothing"
    if realtime is not None and batch is not None and realtime > 0 and plan.mode == "realtime":
        saving = f"{_usd(realtime - batch)} ({(1 - batch / realtime):.0%})"
        return f"{plan.reason} (batch would save {saving})"
    return plan.reason


def _usd(amount: float) -> str:
    return f"${amount:,.2f}" if amount >= 1 else f"${amount:.4f}"


def _duration(minutes: float) -> str:
    if minutes < 1:
        return f"{max(1, round(minutes * 60))} s"
    if minutes < 120:
        return f"{minutes:.0f} min"
    return f"{minutes / 60:.1f} h"
