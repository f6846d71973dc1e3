"""Faults on demand, drawn from the sandbox's seeded RNG so that a run can be replayed."""

from __future__ import annotations

import math
import random
import threading
import time

from .config import FaultConfig


class FaultInjector:
    """Decides which requests, batches and output lines get a fault."""

    def __init__(self, config: FaultConfig, seed: int) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.config = config
        self._storm_left = 0
        self._storm_until = 0.0
        self._batches_seen = 0
        self._chats_seen = 0
        self._downloads_seen = 0
        self.replace(config)

    def replace(self, config: FaultConfig) -> None:
        """Replace the faults; storms and batch positions count from now."""
        with self._lock:
            self.config = config
            self._storm_left = config.rate_limit_storm_requests
            self._storm_until = time.monotonic() + config.rate_limit_storm_seconds
            self._batches_seen = 0
            self._chats_seen = 0
            self._downloads_seen = 0

    def _draw(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    def chat(self) -> str | None:
        """The next chat request's fault: ``quota``, ``storm``, ``drop``, ``error``, ``slow``."""
        with self._lock:
            cfg = self.config
            self._chats_seen += 1
            if (
                cfg.quota_exhausted_after is not None
                and self._chats_seen > cfg.quota_exhausted_after
            ):
                return "quota"
            if self._storm_left > 0:
                self._storm_left -= 1
                return "storm"
            if time.monotonic() < self._storm_until:
                return "storm"
            if self._draw(cfg.drop_rate):
                return "drop"
            if self._draw(cfg.error_rate):
                return "error"
            if self._draw(cfg.slow_rate):
                return "slow"
            return None

    def error_status(self) -> int:
        """Which 5xx status an ``error`` fault answers with."""
        with self._lock:
            return self._rng.choice(self.config.error_statuses or [500])

    def storm_wait(self) -> float:
        """Seconds a storm 429 tells the client to wait."""
        with self._lock:
            left = self._storm_until - time.monotonic()
            return max(self.config.storm_retry_after_s, left if left > 0 else 0.0)

    def batch(self) -> str | None:
        """The fault for a batch being created: ``fail``, ``expire`` or None."""
        with self._lock:
            cfg = self.config
            self._batches_seen += 1
            nth = self._batches_seen
            if nth in cfg.batch_fail_nth or self._draw(cfg.batch_fail_rate):
                return "fail"
            if nth in cfg.batch_expire_nth or self._draw(cfg.batch_expire_rate):
                return "expire"
            return None

    def _pick_lines(self, rate: float, count: int) -> set[int]:
        # The expected fraction, rounded at random: a one-line batch (a retry) loses its
        # line with probability ``rate``, not always, or a row could never come back.
        if rate <= 0 or count == 0:
            return set()
        exact = count * rate
        picked = math.floor(exact)
        if exact - picked > 1e-9 and self._rng.random() < exact - picked:
            picked += 1
        return set(self._rng.sample(range(count), min(count, picked)))

    def drop_output_lines(self, count: int) -> set[int]:
        """Indexes of succeeded output lines to leave out of the output file."""
        with self._lock:
            return self._pick_lines(self.config.output_drop_rate, count)

    def truncate_output_lines(self, count: int) -> set[int]:
        """Indexes of succeeded output lines to cut mid-JSON in the output file."""
        with self._lock:
            return self._pick_lines(self.config.output_truncate_rate, count)

    def cut_download(self, size: int) -> int | None:
        """Bytes of a ``size``-byte batch result file to serve before the download stops;
        None to serve it whole."""
        with self._lock:
            cfg = self.config
            self._downloads_seen += 1
            if size < 2:
                return None
            if self._downloads_seen not in cfg.download_cut_nth and not self._draw(
                cfg.download_cut_rate
            ):
                return None
            # Somewhere in the middle half: earlier lines arrive whole, the cut lands mid-line.
            return self._rng.randint(max(1, size // 4), max(1, (3 * size) // 4))
