"""An offline OpenAI-compatible provider: chat completions, files, batches, limits, faults.

>>> from rowprompt.sandbox import Sandbox, SandboxConfig
>>> with Sandbox(SandboxConfig(seed=0)) as sb:
...     client = OpenAI(base_url=sb.base_url, api_key="anything")

See docs/sandbox.md for the options, faults, rules and stats.
"""

from .config import DEFAULT_MODELS, FaultConfig, SandboxConfig
from .errors import APIError
from .model import SYSTEM_FINGERPRINT, expected_answer, sandbox_model_name
from .server import Sandbox, serve

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
