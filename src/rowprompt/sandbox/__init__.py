"""An offline OpenAI-compatible provider: chat completions, files, batches, limits, faults.

>>> from rowprompt.sandbox import Sandbox, SandboxConfig
>>> with Sandbox(SandboxConfig(seed=0)) as sb:
...     client = OpenAI(base_url=sb.base_url, api_key="anything")

See docs/sandbox.md for the options, faults, rules and stats.
"""

from typing import TYPE_CHECKING, Any

from .config import DEFAULT_MODELS, FaultConfig, SandboxConfig
from .errors import APIError
from .model import SYSTEM_FINGERPRINT, expected_answer, sandbox_model_name

if TYPE_CHECKING:
    from .server import Sandbox, serve


def __getattr__(name: str) -> Any:
    # The server pulls in FastAPI and uvicorn (a third of a second): only when one is started,
    # not for every `rowprompt` command that merely lists the sandbox's options.
    if name in ("Sandbox", "serve"):
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_MODELS",
    "SYSTEM_FINGERPRINT",
    "APIError",
    "FaultConfig",
    "Sandbox",
    "SandboxConfig",
    "expected_answer",
    "sandbox_model_name",
    "serve",
]
