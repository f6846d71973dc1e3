"""Everything one sandbox instance holds; no module-level mutable state anywhere."""

from __future__ import annotations

from collections.abc import Callable

from rowprompt.tokens import count_text

from .batches import BatchManager
from .config import FaultConfig, SandboxConfig
from .faults import FaultInjector
from .files import FileStore
from .latency import Latency
from .limits import RateLimiter
from .model import Rule, as_rules, parse_rules
from .stats import Stats


class SandboxState:
    """The config, stores, limiter, faults and stats of one sandbox."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        rules: tuple[Rule, ...] = parse_rules(config.rules)
        if config.rules_file is not None:
            rules = rules + as_rules(config.rules_file)
        self.rules = rules
        self.models = frozenset(config.models)
        self.stats = Stats(config.request_log_limit)
        self.faults = FaultInjector(config.faults, config.seed)
        self.latency = Latency(config)
        self.limiter = RateLimiter(config.rpm, config.tpm)
        self.files = FileStore()
        self.batches = BatchManager(self)
        # Called as hook(event, endpoint) with event "request" (before the route runs) or
        # "response" (the route is done, nothing sent yet): tests use it to kill a client at
        # an exact point of the protocol. It must be quick; it runs on the server's loop.
        self.hook: Callable[[str, str], None] | None = None
        for model in config.models:
            count_text("warm up", model)  # load the tokenizer now, not on the first request

    def set_faults(self, faults: FaultConfig) -> None:
        """Replace the faults in force (storms and batch positions count from now)."""
        self.config = self.config.model_copy(update={"faults": faults})
        self.faults.replace(faults)
