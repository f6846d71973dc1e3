"""The sandbox's Azure OpenAI face: deployment paths, ``api-version``, files and batches.

Azure puts the model in the path (``/openai/deployments/{deployment}/chat/completions``),
wants ``?api-version=`` on every call and an ``api-key`` header, and names the batch
endpoint ``/chat/completions`` (in ``POST /openai/batches`` and in each input line's
``url``). The sandbox serves a deployment named like one of its models; any other name gets
Azure's 404 ``DeploymentNotFound``. Batches run on the OpenAI face's worker: the input file
is copied with each line's ``url`` as the OpenAI face expects, and the batch object is shown
back with Azure's endpoint and the file the client uploaded.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from .chat import chat_completion
from .errors import APIError
from .state import SandboxState

AZURE_ENDPOINT = "/chat/completions"
OPENAI_ENDPOINT = "/v1/chat/completions"
DEPLOYMENT_NOT_FOUND = (
    "The API deployment for this resource does not exist. If you created the deployment "
    "within the last 5 minutes, please wait a moment and try again."
)

Upload = Callable[[SandboxState, Request], Awaitable[dict[str, Any]]]


def _ok(data: Any) -> Response:
    return Response(json.dumps(data).encode(), media_type="application/json")


def _api_version(request: Request) -> None:
    if not request.query_params.get("api-version"):
        raise APIError(
            400,
            "Missing required query parameter 'api-version'. The api-version query parameter "
            "(?api-version=) is required for all requests.",
            param="api-version",
            code="MissingApiVersionParameter",
        )


def _rewrite_lines(content: bytes) -> bytes:
    """Azure's line ``url`` (``/chat/completions``) as the OpenAI face's batch worker wants."""
    out = []
    for raw in content.split(b"\n"):
        try:
            line = json.loads(raw) if raw.strip() else None
        except ValueError:
            line = None
        if isinstance(line, dict) and line.get("url") == AZURE_ENDPOINT:
            line["url"] = OPENAI_ENDPOINT
            raw = json.dumps(line, ensure_ascii=False).encode()
        out.append(raw)
    return b"\n".join(out)


def mount(app: FastAPI, state: SandboxState, upload: Upload) -> None:
    """Add the Azure routes to ``app``; ``upload`` is the OpenAI face's file upload."""
    shown: dict[str, dict[str, str]] = {}  # batch id -> what the Azure client asked for

    def as_azure(batch: dict[str, Any]) -> dict[str, Any]:
        return {**batch, **shown.get(batch["id"], {})}

    @app.post("/openai/deployments/{deployment}/chat/completions")
    async def chat(deployment: str, request: Request) -> Response:
        _api_version(request)
        if deployment not in state.models:
            raise APIError(404, DEPLOYMENT_NOT_FOUND, code="DeploymentNotFound")
        body = await request.body()
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict):
            data["model"] = deployment  # the deployment decides the model, not the body
            body = json.dumps(data, ensure_ascii=False).encode()

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        return await chat_completion(state, Request(request.scope, receive))

    @app.post("/openai/files")
    async def upload_file(request: Request) -> Response:
        _api_version(request)
        return _ok(await upload(state, request))

    @app.get("/openai/files/{file_id}")
    async def get_file(file_id: str, request: Request) -> Response:
        _api_version(request)
        return _ok(state.files.get(file_id).to_dict())

    @app.get("/openai/files/{file_id}/content")
    async def file_content(file_id: str, request: Request) -> Response:
        _api_version(request)
        return Response(state.files.get(file_id).content, media_type="application/octet-stream")

    @app.delete("/openai/files/{file_id}")
    async def delete_file(file_id: str, request: Request) -> Response:
        _api_version(request)
        return _ok(state.files.delete(file_id))

    @app.post("/openai/batches")
    async def create_batch(request: Request) -> Response:
        _api_version(request)
        body = json.loads(await request.body() or b"null")
        if not isinstance(body, dict) or body.get("endpoint") != AZURE_ENDPOINT:
            raise APIError(
                400,
                f"Invalid value for 'endpoint': Azure OpenAI batches take '{AZURE_ENDPOINT}'.",
                param="endpoint",
                code="invalid_value",
            )
        file_id = body.get("input_file_id")
        stored = state.files.find(file_id) if isinstance(file_id, str) else None
        if stored is not None:
            copy = state.files.add(
                stored.filename, stored.purpose, _rewrite_lines(stored.content), None
            )
            body["input_file_id"] = copy.id
        body["endpoint"] = OPENAI_ENDPOINT
        record = state.batches.create(body)
        shown[record.id] = {"endpoint": AZURE_ENDPOINT, "input_file_id": str(file_id)}
        return _ok(as_azure(record.to_dict()))

    @app.get("/openai/batches")
    async def list_batches(request: Request) -> Response:
        _api_version(request)
        limit = int(request.query_params.get("limit", "20"))
        listing = state.batches.listing(request.query_params.get("after"), limit)
        listing["data"] = [as_azure(b) for b in listing["data"]]
        return _ok(listing)

    @app.get("/openai/batches/{batch_id}")
    async def get_batch(batch_id: str, request: Request) -> Response:
        _api_version(request)
        return _ok(as_azure(state.batches.get(batch_id).to_dict()))

    @app.post("/openai/batches/{batch_id}/cancel")
    async def cancel_batch(batch_id: str, request: Request) -> Response:
        _api_version(request)
        return _ok(as_azure(state.batches.cancel(batch_id).to_dict()))
