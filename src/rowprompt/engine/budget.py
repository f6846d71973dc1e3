"""A spending cap: committed plus reserved spend never passes ``--budget``.

Before a request (or a batch shard) leaves, its worst-case cost is reserved: every prompt
token and every allowed output token at the price of the mode. When the answer comes back the
reservation is replaced by what it really cost. A request that would not fit is not sent; its
row is skipped as ``over_budget``, with the reason.

The worst case is only a bound when every request carries a maximum output: with
``--budget`` and no ``--max-tokens`` each request is sent with :data:`BUDGET_OUTPUT_CAP` as
its maximum (see :func:`output_cap`), and a model with no known price is refused before
anything is sent (:func:`rowprompt.costs.require_price`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

OVER_BUDGET = "over_budget"
REPAIR_SKIPPED = "repair_skipped"
"""The error code of a done row whose unparsable answer the budget did not let be asked again."""

BUDGET_OUTPUT_CAP = 256
"""Output tokens a request may use under ``--budget`` when ``--max-tokens`` is not given.

The same allowance a request without a maximum reserves (``DEFAULT_OUTPUT_ESTIMATE``), now
sent as its maximum, so the reservation is a bound and not a guess.
"""


def output_cap(budget: float | None, max_tokens: int | None, endpoint: str | None) -> int | None:
    """The maximum output to send because of ``--budget``; None when nothing is to change.

    Only when a budget is set and the user gave no ``--max-tokens``; embeddings have no output.
    """
    if budget is None or max_tokens is not None or endpoint == "embeddings":
        return None
    return BUDGET_OUTPUT_CAP


def output_cap_message(cap: int) -> str:
    """The one line that says the budget capped every answer."""
    return (
        f"--budget: each answer is capped at {cap} tokens so spend cannot pass the budget;"
        " longer answers come back truncated (set --max-tokens to choose the cap)"
    )


@dataclass
class Budget:
    """USD allowed, spent and reserved for one run of a job."""

    limit_usd: float
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    refused_usd: float = 0.0
    unpriced: bool = False
    """True once a request was refused because its cost could not be known (no price)."""
    held: dict[str, float] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def remaining_usd(self) -> float:
        """What can still be reserved."""
        return self.limit_usd - self.spent_usd - self.reserved_usd

    def try_reserve(self, amount: float) -> bool:
        """Reserve ``amount`` if it fits under the limit; False (and nothing held) if not."""
        with self._lock:
            if self.spent_usd + self.reserved_usd + amount > self.limit_usd + 1e-12:
                self.refused_usd += amount
                return False
            self.reserved_usd += amount
            return True

    def settle(self, reserved: float, actual: float | None) -> None:
        """Replace a reservation by the actual cost (the reservation when unknown)."""
        with self._lock:
            self.reserved_usd = max(0.0, self.reserved_usd - reserved)
            self.spent_usd += reserved if actual is None else actual

    def release(self, reserved: float) -> None:
        """Give a reservation back unspent (the request was never answered)."""
        with self._lock:
            self.reserved_usd = max(0.0, self.reserved_usd - reserved)

    def reserve(self, key: str, amount: float) -> bool:
        """Reserve ``amount`` for the row ``key`` (until :meth:`settle_row` or release)."""
        if not self.try_reserve(amount):
            return False
        with self._lock:
            self.held[key] = self.held.get(key, 0.0) + amount
        return True

    def hold(self, key: str, amount: float) -> None:
        """Hold ``amount`` for the row ``key`` whether it fits or not: money already committed
        (a batch another process submitted, paid for when it finishes)."""
        with self._lock:
            self.reserved_usd += amount
            self.held[key] = self.held.get(key, 0.0) + amount

    def settle_row(self, key: str, actual: float | None) -> None:
        """The row's answer came: its reservation becomes what it cost."""
        with self._lock:
            reserved = self.held.pop(key, None)
        if reserved is not None:
            self.settle(reserved, actual)
        elif actual:
            with self._lock:
                self.spent_usd += actual

    def release_row(self, key: str) -> None:
        """The row was not answered this time: give its reservation back."""
        with self._lock:
            reserved = self.held.pop(key, None)
        if reserved is not None:
            self.release(reserved)

    def over_budget_message(self) -> str:
        """Why a row was skipped."""
        if self.unpriced:
            return (
                "not sent: the model has no known price, so a request's cost cannot be held"
                ' under the budget (add [prices."model"] to rowprompt.toml)'
            )
        return (
            f"not sent: it would pass the budget of ${self.limit_usd:,.4f}"
            f" (${self.spent_usd:,.4f} spent, ${self.reserved_usd:,.4f} reserved)"
        )

    def repair_skipped_message(self) -> str:
        """Why a row's unparsable answer was not asked again."""
        return (
            f"repair skipped: budget (asking again could pass the budget of"
            f" ${self.limit_usd:,.4f}: ${self.spent_usd:,.4f} spent,"
            f" ${self.reserved_usd:,.4f} reserved)"
        )
