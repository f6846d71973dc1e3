"""What the sandbox saw, for ``GET /sandbox/stats`` and ``GET /sandbox/requests``.

Benchmarks and tests read their truth here, so counts are exact: every chat request,
every 429 by cause, every fault, tokens per second, enqueued tokens per model.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict, deque
from typing import Any

_KEEP_SECONDS = 2 * 3600


class Stats:
    """Thread-safe counters; one instance per sandbox."""

    def __init__(self, request_log_limit: int) -> None:
        self._lock = threading.Lock()
        self._log_limit = request_log_limit
        self.reset()

    def reset(self) -> None:
        """Forget everything counted so far (enqueued tokens in flight are kept)."""
        with self._lock:
            self.started = time.time()
            self.requests_by_endpoint: Counter[str] = Counter()
            self.requests_by_status: Counter[str] = Counter()
            self.rate_limited: Counter[str] = Counter()
            self.faults: Counter[str] = Counter()
            self.per_second: dict[int, list[int]] = {}
            self.peak_enqueued: dict[str, int] = dict(getattr(self, "enqueued", {}))
            self.enqueued: dict[str, int] = dict(getattr(self, "enqueued", {}))
            self.batches_final: Counter[str] = Counter()
            self.internal_errors = 0
            self.batches_created = 0
            self.batch_lines: defaultdict[str, int] = defaultdict(int)
            self.batch_lines_total: Counter[str] = Counter()
            self.request_log: deque[dict[str, Any]] = deque(maxlen=self._log_limit or None)

    def count_request(self, endpoint: str, status: int) -> None:
        """One HTTP answer (any endpoint)."""
        with self._lock:
            self.requests_by_endpoint[endpoint] += 1
            self.requests_by_status[str(status)] += 1

    def count_tokens(self, admitted: int, prompt: int, completion: int) -> None:
        """Tokens of one answered chat request, into the per-second series."""
        second = int(time.time())
        with self._lock:
            slot = self.per_second.get(second)
            if slot is None:
                slot = self.per_second[second] = [0, 0, 0, 0]
                if len(self.per_second) > _KEEP_SECONDS:
                    for old in sorted(self.per_second)[: len(self.per_second) - _KEEP_SECONDS]:
                        del self.per_second[old]
            slot[0] += 1
            slot[1] += admitted
            slot[2] += prompt
            slot[3] += completion

    def count_rate_limited(self, cause: str) -> None:
        """One 429 served, by cause: requests, tokens, request_too_large or storm."""
        with self._lock:
            self.rate_limited[cause] += 1

    def count_fault(self, kind: str, amount: int = 1) -> None:
        """Faults served, by kind."""
        with self._lock:
            self.faults[kind] += amount

    def count_internal_error(self) -> None:
        """One error of the sandbox itself (a bug): a 500 no fault asked for, a batch failed."""
        with self._lock:
            self.internal_errors += 1

    def log_request(self, entry: dict[str, Any]) -> None:
        """One chat completion request, as ``GET /sandbox/requests`` lists it."""
        with self._lock:
            self.request_log.append(entry)

    def set_enqueued(self, model: str, tokens: int) -> None:
        """The model's enqueued batch tokens now; the peak follows."""
        with self._lock:
            self.enqueued[model] = tokens
            self.peak_enqueued[model] = max(self.peak_enqueued.get(model, 0), tokens)

    def batch_created(self) -> None:
        """One batch created."""
        with self._lock:
            self.batches_created += 1

    def batch_final(self, status: str) -> None:
        """One batch reached a final state."""
        with self._lock:
            self.batches_final[status] += 1

    def batch_line(self, custom_id: str, status_code: int) -> None:
        """One batch line executed; lines answered 200 are the billed ones."""
        with self._lock:
            self.batch_lines_total[str(status_code)] += 1
            if status_code == 200:
                self.batch_lines[custom_id] += 1

    def requests(self) -> list[dict[str, Any]]:
        """The per-request log, oldest first."""
        with self._lock:
            return list(self.request_log)

    def batch_line_counts(self) -> dict[str, int]:
        """How many times each custom_id was answered 200 in any batch."""
        with self._lock:
            return dict(self.batch_lines)

    def snapshot(self) -> dict[str, Any]:
        """Everything, as a JSON-ready dict."""
        with self._lock:
            seconds = sorted(self.per_second.items())
            per_minute: dict[int, list[int]] = {}
            for second, slot in seconds:
                minute = per_minute.setdefault(second // 60 * 60, [0, 0, 0, 0])
                for i, value in enumerate(slot):
                    minute[i] += value
            series = [
                {"t": t, "requests": s[0], "tokens": s[1], "prompt_tokens": s[2],
                 "completion_tokens": s[3]}
                for t, s in seconds
            ]  # fmt: skip
            minutes = [
                {"t": t, "requests": s[0], "tokens": s[1], "prompt_tokens": s[2],
                 "completion_tokens": s[3]}
                for t, s in sorted(per_minute.items())
            ]  # fmt: skip
            twice = sum(1 for count in self.batch_lines.values() if count > 1)
            return {
                "since": int(self.started),
                "requests_total": sum(self.requests_by_endpoint.values()),
                "requests_by_endpoint": dict(self.requests_by_endpoint),
                "requests_by_status": dict(self.requests_by_status),
                "rate_limited_total": sum(self.rate_limited.values()),
                "rate_limited": dict(self.rate_limited),
                "faults": dict(self.faults),
                "internal_errors": self.internal_errors,
                "tokens_per_second": series,
                "tokens_per_minute": minutes,
                "enqueued_tokens": dict(self.enqueued),
                "peak_enqueued_tokens": dict(self.peak_enqueued),
                "batches_created": self.batches_created,
                "batches_by_final_state": dict(self.batches_final),
                "batch_lines_by_status": dict(self.batch_lines_total),
                "batch_lines_billed": sum(self.batch_lines.values()),
                "batch_custom_ids_billed_twice": twice,
            }
