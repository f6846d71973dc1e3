"""The Files API through the SDK: upload, list with pagination, retrieve, content, delete."""

from __future__ import annotations

import json

import pytest
from openai import BadRequestError, NotFoundError, OpenAI
from openai.types import FileObject

from rowprompt.sandbox import Sandbox

from .conftest import client_for


def test_file_crud(make_sandbox: object) -> None:
    client = client_for(make_sandbox())  # type: ignore[operator]
    data = b'{"a": 1}\n{"a": 2}\n'
    uploaded = client.files.create(file=("rows.jsonl", data), purpose="batch")
    assert uploaded.id.startswith("file-")
    assert uploaded.bytes == len(data)
    assert uploaded.filename == "rows.jsonl"
    assert uploaded.purpose == "batch"
    assert uploaded.status == "processed"
    assert uploaded.expires_at == uploaded.created_at + 30 * 86400
    assert client.files.retrieve(uploaded.id).id == uploaded.id
    assert client.files.content(uploaded.id).content == data
    listed = client.files.list()
    assert [f.id for f in listed.data] == [uploaded.id]
    deleted = client.files.delete(uploaded.id)
    assert deleted.deleted is True and deleted.id == uploaded.id
    with pytest.raises(NotFoundError) as info:
        client.files.retrieve(uploaded.id)
    assert info.value.message.endswith(f"No such File object: {uploaded.id}")
    assert info.value.param == "id"
    with pytest.raises(NotFoundError):
        client.files.delete(uploaded.id)
    with pytest.raises(NotFoundError):
        client.files.content("file-nothere")


def test_file_object_validates_strictly(client: OpenAI) -> None:
    raw = client.files.with_raw_response.create(file=("x.jsonl", b"{}\n"), purpose="batch")
    FileObject.model_validate(json.loads(raw.text), strict=True)


def test_list_pagination_order_and_purpose(make_sandbox: object) -> None:
    sb: Sandbox = make_sandbox()  # type: ignore[operator]
    client = client_for(sb)
    ids = [client.files.create(file=(f"f{i}.jsonl", b"{}\n"), purpose="batch").id for i in range(7)]
    other = client.files.create(file=("notes.txt", b"hello"), purpose="user_data")
    page = client.files.list(limit=3, purpose="batch")
    assert len(page.data) == 3 and page.has_more
    walked = [f.id for f in client.files.list(limit=3, purpose="batch")]  # auto-pagination
    assert walked == list(reversed(ids))
    ascending = [f.id for f in client.files.list(limit=2, order="asc")]
    assert ascending == [*ids, other.id]
    assert [f.id for f in client.files.list(purpose="user_data")] == [other.id]


def test_upload_errors(client: OpenAI) -> None:
    with pytest.raises(BadRequestError) as info:
        client.files.create(file=("rows.csv", b"a,b\n"), purpose="batch")
    assert "jsonl" in info.value.message
    with pytest.raises(BadRequestError) as info:
        client.files.create(file=("rows.jsonl", b"{}\n"), purpose="homework")  # type: ignore[arg-type]
    assert info.value.param == "purpose"
    with pytest.raises(BadRequestError) as info:
        client.post(
            "/files",
            body=None,
            files=[("file", ("rows.jsonl", b"{}\n"))],
            options={"headers": {"Content-Type": "multipart/form-data"}},
            cast_to=object,
        )
    assert info.value.param == "purpose"


def test_upload_expires_after(client: OpenAI) -> None:
    uploaded = client.files.create(
        file=("x.jsonl", b"{}\n"),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert uploaded.expires_at == uploaded.created_at + 3600
