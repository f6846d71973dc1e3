"""A local journal of the Message Batches this machine created, with their metadata.

Anthropic's batches carry no metadata, yet the batch engine adopts, after a crash, the batch
whose metadata names its job, shard and try. The journal keeps those pairs: one JSON line
before each create (when it was sent, how many requests) and one after (the batch id), in
``HOME/batches/anthropic-batches.jsonl``. Appends are small single writes; a torn last line
is skipped on reading.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

FILE_NAME = "anthropic-batches.jsonl"


@dataclass
class Entry:
    """One create: its metadata, when it was sent, its size, and its batch once known."""

    metadata: dict[str, str]
    sent_at: float = 0.0
    requests: int = 0
    batch_id: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def _key(metadata: Mapping[str, str]) -> str:
    return json.dumps(dict(metadata), sort_keys=True)


class Journal:
    """The journal; with no folder it lives in memory (this process only)."""

    def __init__(self, folder: Path | None) -> None:
        self.path = folder / FILE_NAME if folder is not None else None
        self._entries: dict[str, Entry] = {}
        if self.path is not None and self.path.exists():
            for raw in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue  # a line torn by a crash
                if isinstance(record, dict) and isinstance(record.get("metadata"), dict):
                    self._apply(record)

    def _apply(self, record: dict[str, object]) -> None:
        metadata = {str(k): str(v) for k, v in dict(record["metadata"]).items()}  # type: ignore[call-overload]
        entry = self._entries.setdefault(_key(metadata), Entry(metadata))
        if record.get("batch_id"):
            entry.batch_id = str(record["batch_id"])
        if record.get("sent_at") is not None:
            entry.sent_at = float(record["sent_at"])  # type: ignore[arg-type]
            entry.requests = int(record.get("requests") or 0)  # type: ignore[call-overload]

    def _append(self, record: dict[str, object]) -> None:
        self._apply(record)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")

    def before_create(self, metadata: Mapping[str, str], requests: int) -> None:
        """Note a create about to be sent."""
        if metadata:
            self._append({"metadata": dict(metadata), "sent_at": time.time(), "requests": requests})

    def created(self, metadata: Mapping[str, str], batch_id: str) -> None:
        """Note the batch a create made."""
        if metadata:
            self._append({"metadata": dict(metadata), "batch_id": batch_id})

    def matching(self, metadata: Mapping[str, str]) -> list[Entry]:
        """Entries whose metadata holds all these pairs."""
        return [
            e
            for e in self._entries.values()
            if all(e.metadata.get(k) == v for k, v in metadata.items())
        ]

    def metadata_of(self, batch_id: str) -> dict[str, str] | None:
        """The metadata a batch was created with, if this journal knows it."""
        for entry in self._entries.values():
            if entry.batch_id == batch_id:
                return dict(entry.metadata)
        return None

    def claimed_ids(self) -> set[str]:
        """Every batch id some entry already owns."""
        return {e.batch_id for e in self._entries.values() if e.batch_id}
