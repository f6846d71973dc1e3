"""A real llama.cpp server (llama-cpp-python) with a real model, for the whole session.

``make test-integration`` builds its environment once (``scripts/integration_env.sh``) in
``~/.cache/rowprompt-integration`` (``ROWPROMPT_INTEGRATION_HOME`` moves it); these fixtures
start the server from there on a free loopback port and always stop it at the end.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The model answers as this name, so rowprompt's defaults (prices, tokenizer) apply as they
# would to any OpenAI-compatible server serving a familiar name.
MODEL_ALIAS = "gpt-4o-mini"
READY_TIMEOUT_S = 60.0


def integration_home() -> Path:
    """Where ``scripts/integration_env.sh`` keeps the server's venv and the model."""
    explicit = os.environ.get("ROWPROMPT_INTEGRATION_HOME")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "rowprompt-integration"


@dataclass(frozen=True)
class LlamaServer:
    """A running ``llama_cpp.server``: its base URL and its log."""

    base_url: str
    log: Path
    process: subprocess.Popen[bytes]

    def chat_posts(self) -> int:
        """Chat requests the server has received so far (from its access log)."""
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return text.count('"POST /v1/chat/completions HTTP/1.1"')

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's log, for failure messages."""
        return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """The server, started once for the session and stopped at its end, whatever happened."""
    home = integration_home()
    python = home / "venv" / "bin" / "python"
    model = home / "model" / MODEL_NAME
    ready = (home / "venv" / ".ready", home / "model" / ".ready")
    if not (python.exists() and model.exists() and all(p.exists() for p in ready)):
        pytest.fail(
            f"the integration environment is missing in {home}: run `make test-integration`"
            " (its first build compiles llama.cpp, about 6 minutes)",
            pytrace=False,
        )
    port = _free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    command = [
        str(python), "-m", "llama_cpp.server", "--model", str(model),
        "--model_alias", MODEL_ALIAS, "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "2048", "--n_threads", "2",
    ]  # fmt: skip
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    server = LlamaServer(f"http://127.0.0.1:{port}/v1", log, process)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _answers(f"{server.base_url}/models"):
            if process.poll() is not None:
                pytest.fail(
                    f"llama_cpp.server exited ({process.returncode}):\n{server.log_tail()}",
                    pytrace=False,
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"llama_cpp.server did not answer within {READY_TIMEOUT_S:.0f} s:\n"
                    f"{server.log_tail()}",
                    pytrace=False,
                )
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
