"""Image inputs: what a cell names, whether it may be sent, and how large it is.

A cell holds a local path (absolute, or relative to the input file's folder; for a DataFrame,
to the current directory), an ``http(s)://`` URL (passed through: the provider fetches it), a
``data:`` URL (checked, then passed through) or raw bytes (a Parquet binary column). An empty
cell attaches no image.

The type is sniffed from the magic bytes, never taken from a file name: PNG, JPEG, WEBP and
still (non-animated) GIF, what OpenAI accepts. Width and height come from the header (PNG
IHDR, JPEG SOFn, the GIF screen descriptor, WEBP VP8/VP8L/VP8X) without decoding a pixel, so
checking every row costs a stat and a small read each. Only a GIF is read whole, to count its
frames. Files are read and base64-encoded when a request is built, one request at a time.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from rowprompt.errors import InputError
from rowprompt.tables import is_missing, to_python

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif"}
ACCEPTED = "PNG, JPEG, WEBP or still GIF"
DETAILS = ("auto", "low", "high")
# Formats people try that no provider here accepts: named in the error instead of "unknown".
_OTHER_FORMATS = (
    (b"BM", "a BMP image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"%PDF", "a PDF document"),
    (b"\x00\x00\x01\x00", "an ICO icon"),
)
_READ_FIRST = 4096  # bytes read first from a file; doubled while a header runs longer
MB = 1000 * 1000


class ImageFormatError(InputError):
    """Bytes that are not a supported image, or whose header is broken."""


class _Truncated(ImageFormatError):
    """The data ends inside the header: more bytes are needed."""


@dataclass(frozen=True)
class ImageInfo:
    """What a header says: the format, the size in pixels and, where known, in bytes."""

    format: str
    width: int
    height: int
    animated: bool = False
    nbytes: int | None = None

    @property
    def media_type(self) -> str:
        """The MIME type (``image/png`` ...)."""
        return MEDIA_TYPES[self.format]


@dataclass(frozen=True)
class ImageLimits:
    """What one provider accepts: bytes per image and per request, images per request."""

    provider: str
    max_image_bytes: int
    max_request_bytes: int
    max_images: int
    max_side: int | None = None


# OpenAI's vision guide: "Up to 50 MB total payload size per request" and "up to 500 individual
# image inputs per request"; 20 MB per image is OpenAI's published per-image cap. The
# reference files (../shared/reference) state neither. Decimal MB: the stricter reading.
OPENAI_LIMITS = ImageLimits("OpenAI", 20 * MB, 50 * MB, 500)
# Anthropic's vision docs: at most 5 MB per image through the API, 8000 px a side, 100 images
# per request, and 32 MB per Messages request.
ANTHROPIC_LIMITS = ImageLimits("Anthropic", 5 * MB, 32 * MB, 100, 8000)


def limits_for(provider: str) -> ImageLimits:
    """The image limits of a provider (OpenAI's for OpenAI-compatible ones and the sandbox)."""
    return ANTHROPIC_LIMITS if provider == "anthropic" else OPENAI_LIMITS


# -- headers ------------------------------------------------------------------------------
def sniff(head: bytes) -> str | None:
    """The supported format the leading bytes announce, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def _unsupported(head: bytes) -> ImageFormatError:
    what = next((name for magic, name in _OTHER_FORMATS if head.startswith(magic)), None)
    if what is None and head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        what = "a HEIC/AVIF image"
    if what is None and head.lstrip()[:5].lower() in (b"<svg ", b"<?xml"):
        what = "an SVG or XML file"
    return ImageFormatError(
        f"{what or 'not an image'}: the accepted types are {ACCEPTED}",
        hint="Convert it to PNG or JPEG.",
    )


def _need(data: bytes, end: int) -> None:
    if len(data) < end:
        raise _Truncated("the data ends inside the image header")


def _u16be(data: bytes, at: int) -> int:
    _need(data, at + 2)
    return int(struct.unpack_from(">H", data, at)[0])


def _u32be(data: bytes, at: int) -> int:
    _need(data, at + 4)
    return int(struct.unpack_from(">I", data, at)[0])


def _u16le(data: bytes, at: int) -> int:
    _need(data, at + 2)
    return int(struct.unpack_from("<H", data, at)[0])


def _u24le(data: bytes, at: int) -> int:
    _need(data, at + 3)
    return data[at] | data[at + 1] << 8 | data[at + 2] << 16


def _png(data: bytes) -> ImageInfo:
    if _u32be(data, 8) != 13 or data[12:16] != b"IHDR":
        raise ImageFormatError("a PNG without its IHDR header", hint="Re-save the image.")
    return ImageInfo("png", _u32be(data, 16), _u32be(data, 20))


# Start-of-frame markers: every SOFn except DHT (C4), JPG (C8) and DAC (CC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg(data: bytes) -> ImageInfo:
    at = 2
    while True:
        _need(data, at + 1)
        if data[at] != 0xFF:
            raise ImageFormatError("a JPEG with a broken marker", hint="Re-save the image.")
        while data[at] == 0xFF:  # fill bytes before a marker
            at += 1
            _need(data, at + 1)
        marker = data[at]
        at += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            continue  # markers without a length
        if marker in (0xD9, 0xDA):
            raise ImageFormatError("a JPEG without a frame header", hint="Re-save the image.")
        length = _u16be(data, at)
        if length < 2:
            raise ImageFormatError("a JPEG with a broken segment", hint="Re-save the image.")
        if marker in _SOF:
            return ImageInfo("jpeg", _u16be(data, at + 5), _u16be(data, at + 3))
        at += length


def _skip_sub_blocks(data: bytes, at: int) -> int:
    while True:
        _need(data, at + 1)
        size = data[at]
        at += 1
        if size == 0:
            return at
        at += size


def _gif(data: bytes, complete: bool) -> ImageInfo:
    width, height = _u16le(data, 6), _u16le(data, 8)
    _need(data, 13)
    at = 13
    if data[10] & 0x80:  # a global colour table follows the screen descriptor
        at += 3 << ((data[10] & 7) + 1)
    frames = 0
    while True:
        if len(data) <= at and complete and frames:
            break  # a missing trailer: browsers show such a GIF, so do we
        _need(data, at + 1)
        block = data[at]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # an extension: label, then sub-blocks
            at = _skip_sub_blocks(data, at + 2)
        elif block == 0x2C:  # an image descriptor: a frame
            frames += 1
            if frames > 1:
                break
            _need(data, at + 10)
            flags = data[at + 9]
            at += 10
            if flags & 0x80:
                at += 3 << ((flags & 7) + 1)
            at = _skip_sub_blocks(data, at + 1)  # LZW minimum code size, then the data
        else:
            raise ImageFormatError("a GIF with a broken block", hint="Re-save the image.")
    if frames == 0:
        raise ImageFormatError("a GIF with no image in it", hint="Re-save the image.")
    return ImageInfo("gif", width, height, animated=frames > 1)


def _webp(data: bytes) -> ImageInfo:
    _need(data, 16)
    chunk = data[12:16]
    if chunk == b"VP8 ":
        _need(data, 30)
        if data[23:26] != b"\x9d\x01\x2a":
            raise ImageFormatError("a WEBP with a broken VP8 header", hint="Re-save the image.")
        return ImageInfo("webp", _u16le(data, 26) & 0x3FFF, _u16le(data, 28) & 0x3FFF)
    if chunk == b"VP8L":
        _need(data, 25)
        if data[20] != 0x2F:
            raise ImageFormatError("a WEBP with a broken VP8L header", hint="Re-save the image.")
        bits = int(struct.unpack_from("<I", data, 21)[0])
        return ImageInfo("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        _need(data, 30)
        animated = bool(data[20] & 0x02)
        return ImageInfo("webp", _u24le(data, 24) + 1, _u24le(data, 27) + 1, animated=animated)
    raise ImageFormatError("a WEBP of an unknown kind", hint="Re-save the image.")


def image_info(data: bytes, *, complete: bool = True) -> ImageInfo:
    """Format and size from an image's bytes (its start is enough, except for a GIF).

    Raises :class:`ImageFormatError` for anything that is not a readable PNG, JPEG, WEBP or
    GIF header. With ``complete=False`` a header that runs past the data raises a subclass
    the caller answers by reading more.
    """
    kind = sniff(data[:16])
    if kind is None:
        if len(data) < 12 and not complete:
            raise _Truncated("too few bytes to tell the type")
        raise _unsupported(data[:64])
    try:
        if kind == "png":
            info = _png(data)
        elif kind == "jpeg":
            info = _jpeg(data)
        elif kind == "gif":
            info = _gif(data, complete)
        else:
            info = _webp(data)
    except _Truncated:
        if not complete:
            raise
        raise ImageFormatError(
            f"a {kind.upper()} cut short: the data ends inside its header",
            hint="Re-save the image.",
        ) from None
    if info.width < 1 or info.height < 1:
        raise ImageFormatError(
            f"a {kind.upper()} of {info.width}x{info.height} pixels", hint="Re-save the image."
        )
    return info


def file_info(path: Path) -> ImageInfo:
    """Format and size of an image file, reading no more than its header needs."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        data = handle.read(_READ_FIRST)
        while True:
            try:
                return replace(image_info(data, complete=len(data) >= size), nbytes=size)
            except _Truncated:
                more = handle.read(max(len(data), _READ_FIRST))
                if not more:
                    size = len(data)  # the file shrank while we read it
                data += more


# -- data URLs ------------------------------------------------------------------------------
def split_data_url(url: str) -> tuple[str, int]:
    """(media type, offset of the base64 payload) of a ``data:...;base64,`` URL."""
    comma = url.find(",", 0, 256)
    header = url[5:comma] if url[:5].lower() == "data:" and comma > 0 else None
    if header is None or not header.lower().endswith(";base64"):
        raise ImageFormatError(
            "a data URL that is not base64 (data:image/png;base64,...)",
            hint="Encode the image as base64.",
        )
    return header[: -len(";base64")].strip().lower(), comma + 1


def _decode(url: str, start: int, end: int) -> bytes:
    try:
        return base64.b64decode(url[start:end], validate=True)
    except (binascii.Error, ValueError):
        raise ImageFormatError(
            "a data URL whose base64 does not decode", hint="Encode the image as base64 again."
        ) from None


def data_url_bytes(url: str) -> int:
    """The decoded size of a base64 data URL's payload (without decoding it)."""
    _, start = split_data_url(url)
    payload = len(url) - start
    return payload * 3 // 4 - (url.endswith("==") + url.endswith("="))


def data_url_info(url: str) -> ImageInfo:
    """Format and size of a base64 data URL's image, decoding only what its header needs.

    Checks that the declared media type is the one the bytes show.
    """
    declared, start = split_data_url(url)
    total = len(url) - start
    take = _READ_FIRST
    while True:
        complete = take >= total
        end = len(url) if complete else start + take // 4 * 4
        try:
            info = image_info(_decode(url, start, end), complete=complete)
            break
        except _Truncated:
            take *= 2
    if declared != info.media_type and not (declared == "image/jpg" and info.format == "jpeg"):
        raise ImageFormatError(
            f"a data URL declared {declared or 'without a type'} that holds a"
            f" {info.format.upper()} image",
            hint=f"Write it as data:{info.media_type};base64,...",
        )
    return replace(info, nbytes=data_url_bytes(url))


def data_url_payload(url: str) -> tuple[str, str]:
    """(media type, base64 payload) of a data URL, for APIs that take them apart."""
    media_type, start = split_data_url(url)
    return media_type, url[start:]


# -- cells --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageRef:
    """What one cell names: a ``path``, a ``url``, a ``data`` URL, or raw ``bytes``."""

    kind: str
    shown: str
    """How messages name it: the cell as written (a data URL or bytes abbreviated)."""
    path: Path | None = None
    url: str | None = None
    data: bytes | None = None


def image_ref(cell: Any, base_dir: Path) -> ImageRef | None:
    """The image a cell names; None for an empty cell (no image for that row)."""
    if is_missing(cell):
        return None
    cell = to_python(cell)
    if isinstance(cell, bytes | bytearray | memoryview):
        raw = bytes(cell)
        return ImageRef("bytes", f"<{len(raw):,} bytes>", data=raw) if raw else None
    if isinstance(cell, float) and cell.is_integer():
        cell = int(cell)
    text = str(cell).strip()
    if not text:
        return None
    head = text[:8].lower()
    if head.startswith(("http://", "https://")):
        return ImageRef("url", text, url=text)
    if head.startswith("data:"):
        return ImageRef("data", text[:40] + "...", url=text)
    if head.startswith("file://"):
        text = unquote(urlparse(text).path)
    path = Path(os.path.expanduser(text))
    return ImageRef("path", str(cell).strip(), path=path if path.is_absolute() else base_dir / path)


def ref_info(ref: ImageRef) -> ImageInfo | None:
    """The checked header of a referenced image; None for an http(s) URL (not fetched)."""
    if ref.kind == "url":
        return None
    if ref.kind == "data":
        assert ref.url is not None
        return data_url_info(ref.url)
    if ref.kind == "bytes":
        assert ref.data is not None
        return replace(image_info(ref.data), nbytes=len(ref.data))
    assert ref.path is not None
    try:
        return file_info(ref.path)
    except FileNotFoundError:
        raise InputError("no such file", hint=_path_hint(ref)) from None
    except IsADirectoryError:
        raise InputError("a directory, not an image file") from None
    except PermissionError:
        raise InputError("permission denied", hint="Make the file readable.") from None
    except OSError as exc:
        raise InputError(f"cannot read it: {exc.strerror or exc}") from None


def _path_hint(ref: ImageRef) -> str:
    assert ref.path is not None
    if str(ref.path) == ref.shown:
        return "Check the path."
    return f"Relative paths are read from {ref.path.parent}; check the path."


def ref_url(ref: ImageRef) -> str:
    """The URL to send: a URL as it is, a file or bytes as a base64 data URL."""
    if ref.url is not None:
        return ref.url
    if ref.data is not None:
        data = ref.data
    else:
        assert ref.path is not None
        try:
            data = ref.path.read_bytes()
        except OSError as exc:
            raise InputError(
                f"{ref.shown}: cannot read it: {exc.strerror or exc}", hint=_path_hint(ref)
            ) from None
    kind = sniff(data[:16])
    if kind is None:
        raise _unsupported(data[:64])
    return f"data:{MEDIA_TYPES[kind]};base64,{base64.b64encode(data).decode('ascii')}"


def image_part(url: Any, detail: str = "auto") -> dict[str, Any]:
    """A Chat Completions image content part."""
    return {"type": "image_url", "image_url": {"url": url, "detail": detail}}


# -- a job's images -------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageCheck:
    """What the check of every row found."""

    images: int = 0
    by_url: int = 0
    nbytes: int = 0


@dataclass(frozen=True)
class ImageInputs:
    """A job's images: the ``--image-column`` columns, where paths start, the provider's caps.

    The prompt's ``| image`` filter leaves image parts holding the cell as it is;
    :meth:`attach` turns those into URLs and appends each image column's image.
    """

    columns: tuple[str, ...]
    base_dir: Path
    limits: ImageLimits = OPENAI_LIMITS

    def attach(
        self, messages: list[dict[str, Any]], row: Mapping[str, Any], key: str
    ) -> list[dict[str, Any]]:
        """The messages with every image reference made a URL and the columns' images added."""
        out = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, list):
                parts = [self._resolved(part, row, key) for part in content]
                message = {**message, "content": parts}
            out.append(message)
        extra = []
        for column in self.columns:
            ref = image_ref(row[column], self.base_dir)
            if ref is not None:
                extra.append(image_part(self._url(ref, key, column)))
        if extra:
            last = max(i for i, m in enumerate(out) if m.get("role") == "user")
            content = out[last].get("content")
            parts = (
                list(content) if isinstance(content, list) else [{"type": "text", "text": content}]
            )
            out[last] = {**out[last], "content": [*parts, *extra]}
        return out

    def _resolved(self, part: Any, row: Mapping[str, Any], key: str) -> Any:
        if not isinstance(part, dict) or part.get("type") != "image_url":
            return part
        image = part["image_url"]
        ref = image_ref(image["url"], self.base_dir)
        if ref is None:  # the filter leaves no part for an empty cell; be safe all the same
            return {"type": "text", "text": ""}
        column = _column_of(image["url"], row)
        return image_part(self._url(ref, key, column), image.get("detail", "auto"))

    def _url(self, ref: ImageRef, key: str, column: str) -> str:
        try:
            return ref_url(ref)
        except InputError as exc:
            raise _located(exc, ref, key, column) from None

    def check_table(
        self,
        keys: Sequence[str],
        columns: Sequence[tuple[str, Sequence[Any]]],
        render: Callable[[int], list[dict[str, Any]]] | None = None,
    ) -> ImageCheck:
        """Check the images of every row: ``columns`` are (name, cells) of image columns;
        ``render(position)`` gives a row's messages where the prompt's images are dynamic."""

        def cells(position: int) -> list[tuple[str, Any]]:
            found = [(name, values[position]) for name, values in columns]
            if render is not None:
                for message in render(position):
                    content = message.get("content")
                    for part in content if isinstance(content, list) else ():
                        if isinstance(part, dict) and part.get("type") == "image_url":
                            found.append(("the prompt's image filter", part["image_url"]["url"]))
            return found

        return self.check_rows(keys, cells)

    def check_rows(
        self, keys: Sequence[str], cells: Callable[[int], Iterable[tuple[str, Any]]]
    ) -> ImageCheck:
        """Check every row's images cheaply (a stat and a header each) against the caps.

        ``cells(position)`` gives the row's (column, cell) pairs that name images. Raises
        :class:`InputError` naming the file, the row and the column of the first bad one.
        """
        limits = self.limits
        images = by_url = total = 0
        seen: dict[Path, ImageInfo] = {}
        for position, key in enumerate(keys):
            count = request_bytes = 0
            for column, cell in cells(position):
                ref = image_ref(cell, self.base_dir)
                if ref is None:
                    continue
                count += 1
                try:
                    info = seen.get(ref.path) if ref.path is not None else None
                    if info is None:
                        info = self._checked(ref)
                    if info is not None and ref.path is not None and len(seen) < 65536:
                        seen[ref.path] = info
                except InputError as exc:
                    raise _located(exc, ref, key, column) from None
                if info is None:
                    by_url += 1
                    continue
                nbytes = info.nbytes or 0
                total += nbytes
                request_bytes += 4 * -(-nbytes // 3) + 32  # base64 and the data URL's prefix
            images += count
            if count > limits.max_images:
                raise InputError(
                    f"row {key} has {count} images, more than {limits.provider} takes in one"
                    f" request ({limits.max_images})",
                    hint="Attach fewer image columns.",
                )
            if request_bytes > limits.max_request_bytes:
                raise InputError(
                    f"row {key}: its images make a request of {request_bytes / MB:.1f} MB,"
                    f" over the {limits.max_request_bytes // MB} MB {limits.provider} takes",
                    hint="Shrink or recompress the images.",
                )
        return ImageCheck(images, by_url, total)

    def _checked(self, ref: ImageRef) -> ImageInfo | None:
        limits = self.limits
        if ref.path is not None:
            try:
                size = ref.path.stat().st_size
            except OSError:
                size = 0  # file_info says why, below
            if size > limits.max_image_bytes:
                raise _too_big(size, limits)
        if ref.kind == "data" and ref.url is not None:
            size = data_url_bytes(ref.url)
            if size > limits.max_image_bytes:
                raise _too_big(size, limits)
        info = ref_info(ref)
        if info is None:
            return None
        if info.nbytes is not None and info.nbytes > limits.max_image_bytes:
            raise _too_big(info.nbytes, limits)
        if info.animated and info.format == "gif":
            raise ImageFormatError(
                f"an animated GIF: the accepted types are {ACCEPTED}",
                hint="Send one frame as PNG.",
            )
        side = max(info.width, info.height)
        if limits.max_side is not None and side > limits.max_side:
            raise ImageFormatError(
                f"{info.width}x{info.height} pixels, over the {limits.max_side} px a side"
                f" {limits.provider} takes",
                hint="Scale the image down.",
            )
        return info


def _too_big(size: int, limits: ImageLimits) -> ImageFormatError:
    return ImageFormatError(
        f"{size / MB:.1f} MB, over the {limits.max_image_bytes // MB} MB an image may be"
        f" at {limits.provider}",
        hint="Shrink or recompress the image.",
    )


def _located(exc: InputError, ref: ImageRef, key: str, column: str) -> InputError:
    """The error with the file (or URL), the row and the column named."""
    return type(exc)(f"{ref.shown}: {exc.message} (row {key}, column {column!r})", hint=exc.hint)


def _column_of(cell: Any, row: Mapping[str, Any]) -> str:
    """The column whose cell a filter's image came from, for messages."""
    for name, value in row.items():
        try:
            if value is cell or (isinstance(value, str) and value == cell):
                return name
        except Exception:  # an odd cell type that does not compare: not this one
            continue
    return "the prompt's image filter"
