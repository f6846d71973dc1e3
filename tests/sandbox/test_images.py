"""Image content parts in the sandbox, through the official SDKs: validation as OpenAI (and
Anthropic) validate them, image tokens in the usage, and answers that show each image."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from openai import BadRequestError, OpenAI
from openai.types.chat import ChatCompletion

from rowprompt import tokens
from rowprompt.sandbox import Sandbox
from tests.test_images import data_url, gif_bytes, jpeg_bytes, png_bytes, tag

from .conftest import chat_line, read_lines, submit, wait_batch


def ask(client: OpenAI, *parts: dict[str, Any], system: Any = None) -> ChatCompletion:
    """One chat completion whose user message is ``parts``."""
    messages: list[Any] = [{"role": "user", "content": list(parts)}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return client.chat.completions.create(model="gpt-4o", messages=messages)


def image(url: str, **more: Any) -> dict[str, Any]:
    """An image_url content part."""
    return {"type": "image_url", "image_url": {"url": url, **more}}


TEXT = {"type": "text", "text": "What is this?"}


def test_an_image_is_counted_and_shown_in_the_answer(client: OpenAI) -> None:
    photo = png_bytes(600, 300)
    answer = ask(client, TEXT, image(data_url(photo), detail="high"))
    text_only = ask(client, TEXT)
    assert answer.choices[0].message.content.startswith(tag(photo, "png", 600, 300) + " ")
    # 600x300 at gpt-4o: 2 tiles of 512 px, 85 + 2 x 170 tokens.
    assert answer.usage is not None and text_only.usage is not None
    assert answer.usage.prompt_tokens - text_only.usage.prompt_tokens == 85 + 2 * 170
    other = ask(client, TEXT, image(data_url(png_bytes(600, 301))))
    assert other.choices[0].message.content != answer.choices[0].message.content


def test_a_url_is_not_fetched_and_counts_the_largest_image(client: OpenAI) -> None:
    url = "https://example.com/photo.jpg"
    answer = ask(client, TEXT, image(url))
    assert answer.choices[0].message.content.startswith(f"[image url {url}] ")
    low = ask(client, TEXT, image(url, detail="low"))
    assert answer.usage is not None and low.usage is not None
    assert answer.usage.prompt_tokens - low.usage.prompt_tokens == 8 * 170
    assert low.usage.prompt_tokens == ask(client, TEXT).usage.prompt_tokens + 85  # type: ignore[union-attr]


BAD_PARTS = {
    "detail": (image("https://e.com/a.png", detail="medium"), "invalid_value", "detail"),
    "no url": ({"type": "image_url", "image_url": {}}, "missing_required_parameter", ".url"),
    "text as png": (image(data_url(b"hello there")), "invalid_image_format", None),
    "declared text": (image(data_url(png_bytes(2, 2), "text/plain")), "invalid_image_format", None),
    "animated": (image(data_url(gif_bytes(2, 2, 3), "image/gif")), "invalid_image_format", None),
    "bad base64": (image("data:image/png;base64,@@@@"), "invalid_base64_image", ".url"),
    "ftp": (image("ftp://e.com/a.png"), "invalid_image_url", ".url"),
    "unknown part": ({"type": "video", "video": {}}, "invalid_value", ".type"),
}


@pytest.mark.parametrize("case", list(BAD_PARTS))
def test_bad_image_parts_get_openais_400s(client: OpenAI, case: str) -> None:
    part, code, param = BAD_PARTS[case]
    with pytest.raises(BadRequestError) as caught:
        ask(client, TEXT, part)
    body = caught.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    assert body["code"] == code and body["type"] == "invalid_request_error"
    assert (body["param"] is None) if param is None else param in body["param"]
    if code == "invalid_image_format":
        assert "['png', 'jpeg', 'gif', 'webp']" in body["message"]


def test_an_image_in_the_system_message_is_refused(client: OpenAI) -> None:
    with pytest.raises(BadRequestError) as caught:
        ask(client, TEXT, system=[image("https://e.com/a.png")])
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["param"] == "messages[0].content[0].type"
    assert "Supported values are: 'text'." in caught.value.body["message"]


def test_batch_lines_with_images_are_answered_and_a_bad_one_fails_alone(
    make_sandbox: Any,
) -> None:
    sb = make_sandbox()
    client = OpenAI(base_url=sb.base_url, api_key="sk-test", max_retries=0)
    photo = jpeg_bytes(64, 48)
    good = chat_line("a", "x")
    good["body"]["messages"][0]["content"] = [TEXT, image(data_url(photo, "image/jpeg"))]
    bad = chat_line("b", "x")
    bad["body"]["messages"][0]["content"] = [TEXT, image(data_url(b"text"))]
    batch = wait_batch(client, submit(client, [good, bad]).id)
    assert batch.status == "completed" and batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 1)
    [ok] = read_lines(client, batch.output_file_id)
    message = ok["response"]["body"]["choices"][0]["message"]["content"]
    assert message.startswith(tag(photo, "jpeg", 64, 48))
    assert ok["response"]["body"]["usage"]["prompt_tokens"] == tokens.count_messages(
        good["body"]["messages"], "gpt-4o-mini"
    )
    [failed] = read_lines(client, batch.error_file_id)
    assert failed["response"]["status_code"] == 400
    assert failed["response"]["body"]["error"]["code"] == "invalid_image_format"


# -- the Anthropic face ---------------------------------------------------------------------
@pytest.fixture
def claude(sandbox: Sandbox) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=sandbox.url, api_key="k", max_retries=0) as c:
        yield c


def block(data: bytes, media_type: str = "image/png") -> dict[str, Any]:
    """An Anthropic base64 image block."""
    payload = data_url(data, media_type).split(",", 1)[1]
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": media_type, "data": payload},
    }


def test_anthropic_image_blocks_are_counted_and_shown(claude: anthropic.Anthropic) -> None:
    photo = png_bytes(150, 100)  # 150 x 100 / 750 = 20 tokens
    asked = [{"type": "text", "text": "What is this?"}, block(photo)]
    message = claude.messages.create(
        model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": asked}]
    )
    plain = claude.messages.create(
        model="claude-haiku-4-5",
        max_tokens=50,
        messages=[{"role": "user", "content": [{"type": "text", "text": "What is this?"}]}],
    )
    text = message.content[0].text  # type: ignore[union-attr]
    assert text.startswith(tag(photo, "png", 150, 100))
    assert message.usage.input_tokens - plain.usage.input_tokens == 20
    url = {"type": "image", "source": {"type": "url", "url": "https://e.com/z.png"}}
    by_url = claude.messages.create(
        model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": [url]}]
    )
    assert by_url.content[0].text.startswith("[image url https://e.com/z.png]")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("made", "words"),
    [
        (block(png_bytes(2, 2), "image/bmp"), "media_type: Input should be 'image/jpeg'"),
        (block(png_bytes(2, 2), "image/jpeg"), "does not match the provided media type"),
        (block(b"no image here"), "Could not process image"),
        ({"type": "image", "source": {"type": "file"}}, "does not match any of the expected"),
    ],
)
def test_anthropic_bad_image_blocks_get_anthropics_400s(
    claude: anthropic.Anthropic, made: dict[str, Any], words: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(
            model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": [made]}]
        )
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("messages.0.content.0.image.source")
    assert words in body["error"]["message"]
