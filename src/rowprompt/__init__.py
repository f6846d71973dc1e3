"""rowprompt: one prompt, every row, the cheapest way that still meets your deadline.

>>> import rowprompt
>>> table = rowprompt.run("reviews.csv", prompt="Sentiment of: {{ review }}", mode="batch")

The public names load on first use, so ``import rowprompt.errors`` (or the sandbox) does not
pull in pandas and the SDK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rowprompt.errors import RowpromptError

if TYPE_CHECKING:
    from rowprompt.api import Estimate, Job, JobStatus, estimate, run, submit
    from rowprompt.embeddings import embed

__version__ = "0.1.0"

__all__ = [
    "Estimate",
    "Job",
    "JobStatus",
    "RowpromptError",
    "__version__",
    "embed",
    "estimate",
    "run",
    "submit",
]

_LAZY = {"Estimate", "Job", "JobStatus", "estimate", "run", "submit"}


def __getattr__(name: str) -> Any:
    if name == "embed":
        from rowprompt.embeddings import embed

        return embed
    if name in _LAZY:
        from rowprompt import api

        return getattr(api, name)
    raise AttributeError(f"module 'rowprompt' has no attribute {name!r}")
