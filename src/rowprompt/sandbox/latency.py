"""Per-request latency of real-time answers: normal, or lognormal with a long tail.

Latency draws come from their own seeded RNG, not the fault injector's: changing the
latency settings must not change which requests get a fault, or a fault campaign could
not be replayed at another speed.
"""

from __future__ import annotations

import math
import random
import threading

from .config import SandboxConfig

# The standard normal's 95th percentile: a lognormal's p95 is median * exp(Z95 * sigma).
Z95 = 1.6448536269514722
_LATENCY_SEED = 0x5EED


class Latency:
    """Draws the simulated latency of each real-time answer."""

    def __init__(self, config: SandboxConfig) -> None:
        self._rng = random.Random(config.seed ^ _LATENCY_SEED)
        self._lock = threading.Lock()
        self.median_ms = config.latency_ms
        self.jitter_ms = config.latency_jitter_ms
        self.lognormal = config.latency_distribution == "lognormal"
        p95 = config.latency_p95_ms
        self.sigma = math.log(p95 / config.latency_ms) / Z95 if self.lognormal and p95 else 0.0

    def seconds(self) -> float:
        """The next answer's latency in seconds (0 when none is configured)."""
        if self.median_ms <= 0 and self.jitter_ms <= 0:
            return 0.0
        with self._lock:
            if self.lognormal:
                value = self._rng.lognormvariate(math.log(self.median_ms), self.sigma)
            elif self.jitter_ms > 0:
                value = self._rng.gauss(self.median_ms, self.jitter_ms)
            else:
                value = self.median_ms
        return max(0.0, value) / 1000.0
