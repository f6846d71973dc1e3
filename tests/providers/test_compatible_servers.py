"""What the real llama.cpp server taught (tests/integration), kept in the fast suite.

- Its server has ``GET /v1/models`` but no ``GET /v1/models/{id}``: a 404 there must not read
  as "unknown model" when the list names it.
- A server named by ``OPENAI_BASE_URL`` is a compatible server as much as one named by
  ``--base-url``: ``max_tokens`` (it ignores ``max_completion_tokens``) and no ``json_schema``
  (it answers 500).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from rowprompt.errors import ConfigError
from rowprompt.providers.openai import OpenAIProvider
from rowprompt.runner import RunOptions, prepare


class _ListOnly(BaseHTTPRequestHandler):
    """Like llama.cpp's server: a model list, and FastAPI's 404 for any other path."""

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            status, body = 200, {"object": "list", "data": [{"id": "local-model"}]}
        else:
            status, body = 404, {"detail": "Not Found"}
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def list_only_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ListOnly)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def _check(base_url: str, model: str) -> None:
    async def go() -> None:
        provider = OpenAIProvider(api_key="not-needed", base_url=base_url, lean=False)
        try:
            await provider.check_model(model)
        finally:
            await provider.aclose()

    asyncio.run(go())


def test_a_server_without_the_retrieve_route_accepts_a_listed_model(
    list_only_server: str,
) -> None:
    _check(list_only_server, "local-model")


def test_a_server_without_the_retrieve_route_still_refuses_an_unlisted_model(
    list_only_server: str,
) -> None:
    with pytest.raises(ConfigError, match=r"does not know the model 'gpt-9'.*local-model"):
        _check(list_only_server, "gpt-9")


def test_openai_base_url_from_the_environment_makes_a_compatible_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    frame = pd.DataFrame({"thing": ["cat"]})
    options = RunOptions(prompt="Legs of a {{ thing }}?", output_type="integer", max_tokens=5)
    prepared = prepare(frame, options)
    assert prepared.spec.base_url == "http://127.0.0.1:9/v1"
    assert not prepared.structured
    body = prepared.build_body(0)
    assert body["max_tokens"] == 5
    assert "max_completion_tokens" not in body
    assert "response_format" not in body
    assert body["messages"][0]["role"] == "system"  # the answer format, as an instruction
