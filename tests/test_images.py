"""Image inputs end to end: header parsers, token counts, and image-column jobs in both modes.

Images are built in the tests (a real PNG encoder, JPEG/GIF/WEBP headers by hand): Pillow is
not a dependency. The sandbox's model tags every image it is shown with its format, size and
the first 8 hex digits of the bytes' sha256, so an answer proves which image a row carried.
"""

from __future__ import annotations

import base64
import hashlib
import multiprocessing
import os
import signal
import sqlite3
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rowprompt
from rowprompt import images, tokens
from rowprompt.engine import shards
from rowprompt.engine.context import admission_parts
from rowprompt.engine.shards import enqueued_tokens_many
from rowprompt.errors import InputError, TemplateError
from rowprompt.providers.base import BatchCaps
from rowprompt.providers.openai import OpenAIProvider
from rowprompt.sandbox import Sandbox
from tests.helpers import fast_config, run_cli

PROMPT = "Describe the product {{ name }}."


# -- images built by hand -------------------------------------------------------------------
def png_bytes(width: int, height: int, rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A real PNG (8-bit RGB, one zlib stream)."""
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def jpeg_bytes(width: int, height: int, padding: int = 0) -> bytes:
    """A baseline JPEG's markers in order (SOI, APP0, an optional APP1 of ``padding`` bytes
    such as EXIF, DQT, SOF0, SOS, scan bytes, EOI): what a header reader meets."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    app1 = b"\xff\xe1" + struct.pack(">H", padding + 2) + bytes(padding) if padding else b""
    dqt = b"\xff\xdb" + struct.pack(">H", 67) + b"\x00" + bytes(range(1, 65))
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3)
    sof += b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    sos = b"\xff\xda" + struct.pack(">HB", 12, 3) + b"\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    return b"\xff\xd8" + app0 + app1 + dqt + sof + sos + b"\x12\x34" * 8 + b"\xff\xd9"


def gif_bytes(width: int, height: int, frames: int = 1) -> bytes:
    """A GIF89a with a 2-colour table and ``frames`` one-pixel-code frames."""
    head = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00" * 3 + b"\xff" * 3
    control = b"\x21\xf9\x04\x00\x00\x00\x00\x00"
    descriptor = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
    frame = control + descriptor + b"\x02\x02\x44\x01\x00"  # LZW code size 2, one sub-block
    return head + frame * frames + b"\x3b"


def webp_bytes(width: int, height: int, kind: str = "VP8L") -> bytes:
    """A WEBP container with a lossless (VP8L), lossy (VP8) or extended (VP8X) header."""
    if kind == "VP8L":
        payload = b"\x2f" + struct.pack("<I", (width - 1) | ((height - 1) << 14)) + bytes(4)
    elif kind == "VP8 ":
        payload = b"\x00\x00\x00\x9d\x01\x2a" + struct.pack("<HH", width, height) + bytes(4)
    else:
        w, h = width - 1, height - 1
        payload = b"\x00" + bytes(3) + w.to_bytes(3, "little") + h.to_bytes(3, "little")
    body = kind.encode() + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def tag(data: bytes, fmt: str, width: int, height: int) -> str:
    """How the sandbox's model names an image it was shown."""
    return f"[image {fmt} {width}x{height} #{hashlib.sha256(data).hexdigest()[:8]}]"


def data_url(data: bytes, media_type: str = "image/png") -> str:
    """A base64 data URL."""
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


# -- header parsers -------------------------------------------------------------------------
sides = st.integers(min_value=1, max_value=16383)


@given(width=sides, height=sides)
def test_headers_give_the_size_they_were_built_with(width: int, height: int) -> None:
    built = {
        "jpeg": jpeg_bytes(width % 65535 + 1, height % 65535 + 1),
        "gif": gif_bytes(width % 65535 + 1, height % 65535 + 1),
        "webp": webp_bytes(width, height),
    }
    for fmt, data in built.items():
        info = images.image_info(data)
        assert info.format == fmt
        if fmt != "webp":
            assert (info.width, info.height) == (width % 65535 + 1, height % 65535 + 1)
        else:
            assert (info.width, info.height) == (width, height)
    for kind in ("VP8X", "VP8 "):
        info = images.image_info(webp_bytes(width, height, kind))
        assert (info.width, info.height) == (width, height)
    png = png_bytes(1, 1)
    png = png[:16] + struct.pack(">II", width, height) + png[24:]
    assert (images.image_info(png).width, images.image_info(png).height) == (width, height)


@given(st.binary(max_size=300))
def test_garbage_raises_our_error_never_crashes(data: bytes) -> None:
    for candidate in (
        data,
        b"\x89PNG\r\n\x1a\n" + data,
        b"\xff\xd8\xff" + data,
        b"GIF89a" + data,
        b"RIFF" + data[:4] + b"WEBP" + data[4:],
    ):
        for complete in (True, False):
            try:
                info = images.image_info(candidate, complete=complete)
            except images.ImageFormatError:
                continue
            assert info.width > 0 and info.height > 0


@given(st.text(max_size=200), st.binary(max_size=200))
def test_garbage_data_urls_raise_our_error_never_crash(text: str, data: bytes) -> None:
    for url in (text, "data:" + text, "data:image/png;base64," + text, data_url(data)):
        try:
            info = images.data_url_info(url)
        except images.ImageFormatError:
            continue
        assert info.width > 0 and info.height > 0
        assert tokens.part_tokens(url, "auto", "gpt-4o") >= 85


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=30)
@given(cut=st.integers(min_value=0, max_value=200), pick=st.integers(0, 4))
def test_a_truncated_image_is_refused_with_our_error(cut: int, pick: int) -> None:
    jpeg = jpeg_bytes(9, 9)
    # Each image and where its header ends (a GIF's "header" is its first frame).
    data, header = [
        (png_bytes(4, 4), 24),
        (jpeg, jpeg.index(b"\xff\xc0") + 9),
        (gif_bytes(3, 3), len(gif_bytes(3, 3)) - 1),
        (webp_bytes(5, 5), 25),
        (webp_bytes(5, 5, "VP8 "), 30),
    ][pick]
    head = data[: cut % header]
    with pytest.raises(images.ImageFormatError):
        images.image_info(head)


def test_a_file_header_past_the_first_read_is_still_found(tmp_path: Path) -> None:
    photo = tmp_path / "exif.jpg"
    photo.write_bytes(jpeg_bytes(1200, 800, padding=60000))  # the frame header lies past 60 KB
    info = images.file_info(photo)
    assert (info.format, info.width, info.height, info.nbytes) == (
        "jpeg",
        1200,
        800,
        photo.stat().st_size,
    )
    assert images.image_info(gif_bytes(2, 2, frames=3)).animated


# -- token counts ---------------------------------------------------------------------------
def test_image_tokens_follow_the_providers_documented_formulas() -> None:
    # OpenAI's worked examples for gpt-4o-class models, and detail low.
    assert tokens.image_tokens("gpt-4o", 1024, 1024) == 765
    assert tokens.image_tokens("gpt-4o", 2048, 4096, "high") == 1105
    assert tokens.image_tokens("gpt-4o", 4096, 8192, "low") == 85
    assert tokens.image_tokens("gpt-4o", 500, 500) == 255
    # gpt-4o-mini: the same tiles at 2833 base + 5667 a tile.
    assert tokens.image_tokens("gpt-4o-mini", 1024, 1024) == 2833 + 4 * 5667
    assert tokens.image_tokens("gpt-4o-mini-2024-07-18", 10, 10, "low") == 2833
    # Patch models: 1800x2400 scales to 33x44 patches.
    assert tokens.image_tokens("gpt-4.1-mini", 1800, 2400) == round(1452 * 1.62 + 0.5)
    # Anthropic: width x height / 750.
    assert tokens.image_tokens("claude-haiku-4-5", 750, 100) == 100
    # Unknown size (a web URL): the largest the formula gives.
    assert tokens.image_tokens("gpt-4o", None, None) == 85 + 8 * 170
    assert tokens.image_tokens("gpt-4o", None, None, "low") == 85
    parts = [{"type": "text", "text": "hi"}, images.image_part(data_url(png_bytes(600, 10)))]
    with_image = tokens.count_messages([{"role": "user", "content": parts}], "gpt-4o")
    assert with_image == tokens.count_messages([{"role": "user", "content": "hi"}], "gpt-4o") + 425
    # The rate limiter's admission and the batch queue's estimate count the image too.
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": parts}], "max_tokens": 9}
    assert admission_parts(body) == (with_image, 9)
    assert enqueued_tokens_many([body, {**body, "model": "gpt-4o"}]) == [with_image + 9] * 2


# -- jobs through the sandbox ---------------------------------------------------------------
def photo_table(folder: Path, n: int) -> tuple[pd.DataFrame, list[str]]:
    """``n`` rows, each with its own image file under ``folder/photos`` (PNG, JPEG, WEBP)."""
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    paths, tags = [], []
    for i in range(n):
        if i % 3 == 0:
            data, fmt, name = png_bytes(2 + i, 3), "png", f"p{i}.png"
            size = (2 + i, 3)
        elif i % 3 == 1:
            data, fmt, name = jpeg_bytes(100 + i, 50), "jpeg", f"p{i}.jpg"
            size = (100 + i, 50)
        else:
            data, fmt, name = webp_bytes(30, 20 + i), "webp", f"p{i}.webp"
            size = (30, 20 + i)
        (folder / "photos" / name).write_bytes(data)
        paths.append(f"photos/{name}")
        tags.append(tag(data, fmt, *size))
    frame = pd.DataFrame({"name": [f"item {i}" for i in range(n)], "photo": paths})
    return frame, tags


def _options(sandbox: Sandbox, tmp_path: Path, mode: str, **more: Any) -> dict[str, Any]:
    return {
        "provider": "sandbox",
        "base_url": sandbox.base_url,
        "mode": mode,
        "home": str(tmp_path / "home"),
        "poll_interval": 0.05,
        **more,
    }


@pytest.mark.parametrize("mode", ["realtime", "batch"])
def test_an_image_column_job_gives_each_row_its_own_image(
    sandbox: Sandbox, tmp_path: Path, mode: str
) -> None:
    frame, tags = photo_table(tmp_path, 6)
    frame.loc[5, "photo"] = ""  # an empty cell: that row is asked without an image
    src = tmp_path / "in.csv"
    frame.to_csv(src, index=False)
    estimate = rowprompt.estimate(
        str(src),
        PROMPT,
        image_columns=["photo"],
        model="gpt-4o-mini",
        **_options(sandbox, tmp_path, mode),
    )
    out = rowprompt.run(
        str(src), PROMPT, image_columns="photo", **_options(sandbox, tmp_path, mode)
    )
    assert list(out["_status"]) == ["ok"] * 6
    for i in range(5):
        assert out["response"][i].startswith(tags[i] + " "), (i, out["response"][i])
    assert "[image" not in out["response"][5]
    assert list(out["photo"]) == [*frame["photo"][:5], ""]
    # The estimate counts each image as the provider bills it: the same as the usage.
    assert estimate.images == 5 and estimate.images_by_url == 0
    assert estimate.prompt_tokens == int(out["_prompt_tokens"].astype(int).sum())
    assert estimate.image_tokens == sum(
        tokens.image_tokens("gpt-4o-mini", *size)
        for size in [(2, 3), (101, 50), (30, 22), (5, 3), (104, 50)]
    )


def test_urls_pass_through_and_the_filter_places_the_image(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a DataFrame's relative paths start here
    Path("local.png").write_bytes(png_bytes(7, 5))
    frame = pd.DataFrame(
        {
            "name": ["a", "b", "c"],
            "pic": [
                "https://example.com/a.png",
                "local.png",
                data_url(gif_bytes(4, 4), "image/gif"),
            ],
        }
    )
    prompt = 'Before {{ row["pic"] | image(detail="low") }} after {{ name }}'
    out = rowprompt.run(frame, prompt, **_options(sandbox, tmp_path, "realtime"))
    assert list(out["_status"]) == ["ok"] * 3
    assert out["response"][0].startswith("[image url https://example.com/a.png] ")
    assert out["response"][1].startswith(tag(png_bytes(7, 5), "png", 7, 5))
    assert out["response"][2].startswith(tag(gif_bytes(4, 4), "gif", 4, 4))
    seen = sorted(r["last_user_message"] for r in sandbox.requests())
    assert seen[0].startswith("Before  after a\n[image url https://example.com/a.png]")
    # detail low: 2833 image tokens each for gpt-4o-mini, URL or not.
    text_only = tokens.count_messages(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Before "},
                    {"type": "text", "text": " after a"},
                ],
            }
        ]
    )
    assert int(out["_prompt_tokens"][0]) == text_only + 2833


BAD_CASES: dict[str, Callable[[Path], str]] = {
    "missing": lambda d: "photos/nowhere.png",
    "not an image": lambda d: _write(d / "notes.png", b"just some text, not pixels"),
    "animated": lambda d: _write(d / "anim.gif", gif_bytes(3, 3, frames=2)),
    "oversized": lambda d: _sparse(d / "huge.jpg", 21_000_000),
    "bad data URL": lambda d: data_url(b"plain text", "image/png"),
}
EXPECTED_WORDS = {
    "missing": "no such file",
    "not an image": "not an image",
    "animated": "animated GIF",
    "oversized": "over the 20 MB",
    "bad data URL": "not an image",
}


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return path.name


def _sparse(path: Path, size: int) -> str:
    with path.open("wb") as handle:
        handle.write(jpeg_bytes(10, 10))
        handle.truncate(size)  # a hole: the stat says 21 MB, nothing was written
    return path.name


@pytest.mark.parametrize("case", list(BAD_CASES))
@pytest.mark.parametrize("mode", ["realtime", "batch"])
def test_bad_images_stop_the_run_before_any_request(
    sandbox: Sandbox, tmp_path: Path, case: str, mode: str
) -> None:
    frame, _ = photo_table(tmp_path, 4)
    frame.loc[2, "photo"] = BAD_CASES[case](tmp_path)
    frame.insert(0, "sku", [f"sku-{i}" for i in range(4)])
    src = tmp_path / "in.csv"
    frame.to_csv(src, index=False)
    with pytest.raises(InputError) as caught:
        rowprompt.run(
            str(src),
            PROMPT,
            image_columns=["photo"],
            id_column="sku",
            **_options(sandbox, tmp_path, mode),
        )
    message = caught.value.one_line()
    assert EXPECTED_WORDS[case] in message
    assert "(row sku-2, column 'photo')" in message
    assert message.startswith(str(frame.loc[2, "photo"])[:20])
    assert sandbox.requests() == [] and sandbox.stats()["batches_created"] == 0
    assert not (tmp_path / "home" / "rowprompt.db").exists() or not _jobs(tmp_path / "home")


def _jobs(home: Path) -> list[Any]:
    db = sqlite3.connect(home / "rowprompt.db")
    try:
        return db.execute("SELECT id FROM jobs").fetchall()
    finally:
        db.close()


def test_the_cli_refuses_a_missing_image_in_one_line(tmp_path: Path) -> None:
    frame, _ = photo_table(tmp_path, 2)
    frame.loc[1, "photo"] = "photos/gone.png"
    frame.to_csv(tmp_path / "in.csv", index=False)
    result = run_cli(
        "estimate",
        str(tmp_path / "in.csv"),
        "--prompt",
        PROMPT,
        "--image-column",
        "photo",
        "--provider",
        "sandbox",
        "--home",
        str(tmp_path / "home"),
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "photos/gone.png: no such file (row 2, column 'photo')" in lines[0]  # the 2nd data row
    assert str(tmp_path / "photos") in lines[0]  # where relative paths were looked for


def test_template_mistakes_with_images_are_refused_before_reading(tmp_path: Path) -> None:
    frame = pd.DataFrame({"name": ["a"], "photo": ["x.png"]})
    with pytest.raises(InputError, match="--image-column 'picture'"):
        rowprompt.estimate(
            frame, PROMPT, image_columns=["picture"], provider="sandbox", home=str(tmp_path)
        )
    with pytest.raises(TemplateError, match="not in the system message"):
        rowprompt.estimate(
            frame, PROMPT, system="{{ photo | image }}", provider="sandbox", home=str(tmp_path)
        )
    with pytest.raises(TemplateError, match="detail is one of"):
        rowprompt.estimate(
            frame, "{{ photo | image(detail='medium') }}", provider="sandbox", home=str(tmp_path)
        )


def test_a_batch_job_whose_images_pass_a_shards_byte_cap_is_split(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "photos").mkdir()
    n, tags = 12, []
    for i in range(n):
        # Bytes after IEND make a bigger file of the same image: about 4.3 KB a batch line.
        data = png_bytes(40, 40 + i, rgb=(i * 20, 0, 0)) + b"\x00" * 3000
        (tmp_path / "photos" / f"{i}.png").write_bytes(data)
        tags.append(tag(data, "png", 40, 40 + i))
    frame = pd.DataFrame(
        {"name": [f"n{i}" for i in range(n)], "photo": [f"photos/{i}.png" for i in range(n)]}
    )
    src = tmp_path / "in.csv"
    frame.to_csv(src, index=False)
    # A 10 KB file cap takes two rows a batch.
    monkeypatch.setattr(OpenAIProvider, "batch_caps", BatchCaps(max_bytes=10_000))
    # The planner renders a window of about 5 KB of lines at a time, never a whole chunk.
    monkeypatch.setattr(shards, "RENDER_WINDOW_BYTES", 5_000)
    windows: list[int] = []
    settle = shards.ShardPlanner._settle

    def spy(self: shards.ShardPlanner, window: list[Any], caps: shards.ShardCaps) -> Any:
        windows.append(len(window))
        return settle(self, window, caps)

    monkeypatch.setattr(shards.ShardPlanner, "_settle", spy)
    out = rowprompt.run(
        str(src), PROMPT, image_columns=["photo"], **_options(sandbox, tmp_path, "batch")
    )
    assert list(out["_status"]) == ["ok"] * n
    assert list(out["_via"]) == ["batch"] * n
    assert [r.split(" ", 4)[:4] for r in out["response"]] == [t.split(" ") for t in tags]
    assert sandbox.stats()["batches_created"] >= n // 2
    assert windows and max(windows) <= 2
    assert max(sandbox.batch_lines().values()) == 1


@pytest.mark.parametrize("mode", ["realtime", "batch"])
def test_images_reach_the_anthropic_face_as_image_blocks(
    sandbox: Sandbox, tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sandbox")
    frame, tags = photo_table(tmp_path, 3)
    frame.loc[2, "photo"] = "https://example.com/z.jpg"
    src = tmp_path / "in.csv"
    frame.to_csv(src, index=False)
    options = _options(
        sandbox,
        tmp_path,
        mode,
        provider="anthropic",
        base_url=sandbox.url,
        model="claude-haiku-4-5",
        max_tokens=30,
    )
    estimate = rowprompt.estimate(str(src), PROMPT, image_columns=["photo"], **options)
    out = rowprompt.run(str(src), PROMPT, image_columns=["photo"], **options)
    assert list(out["_status"]) == ["ok"] * 3
    assert out["response"][0].startswith(tags[0]) and out["response"][1].startswith(tags[1])
    assert out["response"][2].startswith("[image url https://example.com/z.jpg]")
    # Anthropic bills w*h/750 per image; the URL's size is unknown: counted at the largest.
    assert estimate.images_by_url == 1
    assert estimate.image_tokens == 1 + 7 + tokens.ANTHROPIC_MAX_IMAGE_TOKENS


# -- kill and resume ------------------------------------------------------------------------
def _done_rows(home: Path) -> int:
    try:
        db = sqlite3.connect(home / "rowprompt.db", timeout=5)
        try:
            return int(db.execute("SELECT count(*) FROM rows WHERE state = 'done'").fetchone()[0])
        finally:
            db.close()
    except sqlite3.OperationalError:
        return 0


def _submitted(home: Path) -> int:
    try:
        db = sqlite3.connect(home / "rowprompt.db", timeout=5)
        try:
            got = db.execute("SELECT count(*) FROM shards WHERE batch_id IS NOT NULL").fetchone()
            return int(got[0])
        finally:
            db.close()
    except sqlite3.OperationalError:
        return 0


def _run_job(src: str, options: dict[str, Any]) -> None:
    rowprompt.run(src, PROMPT, **options)


@pytest.mark.parametrize("mode", ["realtime", "batch"])
def test_a_killed_image_job_resumes_without_losing_or_repaying_rows(
    tmp_path: Path, mode: str
) -> None:
    n, concurrency = 24, 4
    frame, tags = photo_table(tmp_path, n)
    src, home, out = tmp_path / "in.csv", tmp_path / "home", tmp_path / "out.csv"
    frame.to_csv(src, index=False)
    with Sandbox(fast_config(latency_ms=40.0, batch_rows_per_second=20.0)) as sb:
        options = _options(
            sb,
            tmp_path,
            mode,
            image_columns=["photo"],
            output=str(out),
            concurrency=concurrency,
            poll_interval=0.1,
        )
        # A forked child (rowprompt already imported: no second start-up) runs the job and
        # is SIGKILLed mid-way; this process then runs the same job again.
        child = multiprocessing.get_context("fork").Process(
            target=_run_job, args=(str(src), options)
        )
        child.start()
        try:
            check = (
                (lambda: _done_rows(home) >= n // 3)
                if mode == "realtime"
                else (lambda: _submitted(home) >= 1)
            )
            deadline = time.monotonic() + 30
            while not check() and time.monotonic() < deadline and child.is_alive():
                time.sleep(0.01)
        finally:
            assert child.pid is not None
            os.kill(child.pid, signal.SIGKILL)
            child.join()
        assert child.exitcode == -signal.SIGKILL
        assert _done_rows(home) < n
        table = rowprompt.run(str(src), PROMPT, **options)
        assert list(table["name"]) == [f"item {i}" for i in range(n)]
        assert list(table["_status"]) == ["ok"] * n
        assert all(r.startswith(t + " ") for r, t in zip(table["response"], tags, strict=True))
        if mode == "realtime":
            asked: dict[str, int] = {}
            for request in sb.requests():
                asked[request["last_user_message"]] = asked.get(request["last_user_message"], 0) + 1
            assert len(asked) == n
            assert sum(1 for count in asked.values() if count > 1) <= concurrency
        else:
            assert max(sb.batch_lines().values()) == 1  # the batch was adopted, not paid again
