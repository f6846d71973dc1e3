"""What every engine needs to know about the job it drives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rowprompt import tokens, vectors
from rowprompt.engine.budget import Budget
from rowprompt.jobs import Completion, JobProgress


@dataclass(frozen=True)
class GroupLimits:
    """How many rows one real-time request may carry (endpoints whose ``input`` is a list)."""

    max_inputs: int
    max_tokens: int


@dataclass
class RunContext:
    """One job's request builder, pricing and policy, shared by the engines.

    ``build_body(position)`` renders the row at that position into a chat request body; the
    engines never see tables or templates.
    """

    job_id: str
    model: str
    build_body: Callable[[int], dict[str, Any]]
    price: Callable[[Completion, bool], float | None]
    max_attempts: int = 6
    use_cache: bool = True
    request_timeout: float = 120.0
    on_progress: Callable[[JobProgress], None] | None = None
    on_message: Callable[[str], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    budget: Budget | None = None
    # Worst-case USD of a request (prompt tokens, output tokens, batch?), for the budget.
    worst_cost: Callable[[int, int, bool], float | None] | None = None
    # Set for embeddings: real time sends several rows per request (see engine/groups.py).
    grouping: GroupLimits | None = None
    endpoint: str = "chat"
    """The API the requests go to; part of each request's cache key (see ``request_hash``)."""

    def reserve_budget(self, key: str, prompt_tokens: int, output_tokens: int, batch: bool) -> bool:
        """Reserve a row's worst-case cost under ``--budget``; False when it would pass it.

        A request without a maximum output is assumed to answer ``DEFAULT_OUTPUT_ESTIMATE``
        tokens; under a budget the runner sends that as every request's maximum, so it is a
        bound (see ``engine.budget.output_cap``). A request whose cost cannot be known (no
        price for the model) is refused: a cap that cannot count would let everything through.
        """
        if self.budget is None or self.worst_cost is None:
            return True
        worst = self.worst_cost(prompt_tokens, output_tokens or DEFAULT_OUTPUT_ESTIMATE, batch)
        if worst is None:
            self.budget.unpriced = True
            return False
        return self.budget.reserve(key, worst)

    def custom_id(self, position: int) -> str:
        """The batch ``custom_id`` of the row at ``position``: job and row."""
        return f"{self.job_id}-{position}"

    def position_of(self, custom_id: str) -> int | None:
        """The row position a ``custom_id`` of this job names, or None if it is not ours."""
        prefix = f"{self.job_id}-"
        if not custom_id.startswith(prefix):
            return None
        try:
            return int(custom_id[len(prefix) :])
        except ValueError:
            return None

    def say(self, message: str) -> None:
        """Tell the user something (the CLI prints it)."""
        if self.on_message is not None:
            self.on_message(message)


def admission_parts(body: dict[str, Any]) -> tuple[int, int]:
    """(prompt tokens, output tokens) a request counts against a tokens-per-minute limit.

    OpenAI admits a request by its prompt (counted here offline with tiktoken) plus
    ``max_tokens`` (or ``max_completion_tokens``) × ``n``. Without a maximum we assume a modest
    answer: the provider's own estimate is not published, and a refunding provider gives the
    difference back anyway.
    """
    if vectors.is_embeddings_body(body):
        return vectors.input_tokens(body), 0  # embeddings count their inputs, no output
    model = str(body.get("model") or "")
    prompt = tokens.count_messages(body.get("messages") or [], model)
    cap = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_OUTPUT_ESTIMATE
    return prompt, int(cap) * int(body.get("n") or 1)


def admission_tokens(body: dict[str, Any]) -> int:
    """Tokens a request counts against a tokens-per-minute or enqueued-token limit.

    The prompt plus ``max_tokens`` × ``n`` (see :func:`admission_parts`).
    """
    prompt, output = admission_parts(body)
    return prompt + output


DEFAULT_OUTPUT_ESTIMATE = 256
