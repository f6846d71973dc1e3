"""The Files API store: uploads, batch result files, listing and deletion, in memory."""

from __future__ import annotations

import secrets
import string
import threading
import time
from dataclasses import dataclass
from typing import Any

from .errors import APIError, not_found

UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
MAX_FILE_BYTES = 512 * 1024 * 1024
DEFAULT_BATCH_FILE_TTL = 30 * 86_400
_ALPHABET = string.ascii_letters + string.digits


def make_id(prefix: str, length: int = 22) -> str:
    """An OpenAI-looking id: ``prefix`` + random letters and digits."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


@dataclass
class StoredFile:
    """One file: its bytes and the fields of its ``OpenAIFile`` object."""

    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int
    expires_at: int | None
    seq: int

    def to_dict(self) -> dict[str, Any]:
        """The ``OpenAIFile`` object."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


class FileStore:
    """All files of one sandbox, oldest first."""

    def __init__(self) -> None:
        self._files: dict[str, StoredFile] = {}
        self._seq = 0
        self._lock = threading.Lock()

    def add(
        self, filename: str, purpose: str, content: bytes, ttl_seconds: int | None = None
    ) -> StoredFile:
        """Store ``content`` and return its record."""
        now = int(time.time())
        with self._lock:
            self._seq += 1
            stored = StoredFile(
                id=make_id("file-"),
                filename=filename,
                purpose=purpose,
                content=content,
                created_at=now,
                expires_at=now + ttl_seconds if ttl_seconds else None,
                seq=self._seq,
            )
            self._files[stored.id] = stored
        return stored

    def get(self, file_id: str) -> StoredFile:
        """The file, or a 404 as OpenAI words it."""
        with self._lock:
            found = self._files.get(file_id)
        if found is None:
            raise not_found("File", file_id)
        return found

    def find(self, file_id: str) -> StoredFile | None:
        """The file, or None."""
        with self._lock:
            return self._files.get(file_id)

    def delete(self, file_id: str) -> dict[str, Any]:
        """Delete the file; the ``DeleteFileResponse`` body."""
        with self._lock:
            if self._files.pop(file_id, None) is None:
                raise not_found("File", file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    def listing(
        self, purpose: str | None, limit: int, order: str, after: str | None
    ) -> dict[str, Any]:
        """The ``ListFilesResponse`` body, paginated by ``after`` (an id)."""
        with self._lock:
            items = sorted(self._files.values(), key=lambda f: f.seq, reverse=order == "desc")
        if purpose:
            items = [f for f in items if f.purpose == purpose]
        if after:
            ids = [f.id for f in items]
            if after not in ids:
                raise APIError(400, f"No such File object: {after}", param="after")
            items = items[ids.index(after) + 1 :]
        page = items[:limit]
        data = [f.to_dict() for f in page]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(items) > len(page),
        }
