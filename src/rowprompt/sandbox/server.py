"""Running a sandbox: in a background thread (:class:`Sandbox`) or blocking (:func:`serve`)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import Any

import uvicorn

from .app import build_app
from .config import FaultConfig, SandboxConfig
from .state import SandboxState

_READY_TIMEOUT = 20.0
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def exposure_warning(host: str) -> str | None:
    """A warning when ``host`` is not a loopback address, else None."""
    if host in LOOPBACK or host.startswith("127."):
        return None
    return (
        f"the sandbox binds {host}, not loopback: anyone who can reach this machine can use it"
        " and read every prompt sent to it; bind 127.0.0.1 unless you mean it"
    )


def _uvicorn_config(app: Any, host: str, port: int) -> uvicorn.Config:
    # h11 because httptools is not a dependency; no access log: it costs ~20% of throughput.
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        http="h11",
        loop="asyncio",
        lifespan="off",
        timeout_keep_alive=30,
        timeout_graceful_shutdown=1,
    )


def serve(
    config: SandboxConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8787,
    *,
    warn_exposed: bool = True,
) -> None:
    """Serve a sandbox in the foreground until interrupted (warns when not on loopback)."""
    state = SandboxState(config or SandboxConfig())
    warning = exposure_warning(host)
    if warning and warn_exposed:
        warnings.warn(warning, stacklevel=2)
    uvicorn.Server(_uvicorn_config(build_app(state), host, port)).run()


class Sandbox:
    """An OpenAI-compatible sandbox server on 127.0.0.1 and a free port, in a thread.

    >>> with Sandbox(SandboxConfig(seed=1)) as sb:
    ...     client = OpenAI(base_url=sb.base_url, api_key="anything")
    """

    def __init__(self, config: SandboxConfig | None = None, *, host: str = "127.0.0.1") -> None:
        self.config = config or SandboxConfig()
        self.host = host
        warning = exposure_warning(host)
        if warning:
            warnings.warn(warning, stacklevel=2)
        self.state = SandboxState(self.config)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        """The port it listens on (once started)."""
        if self._port is None:
            raise RuntimeError("the sandbox is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``, the ``base_url`` for the OpenAI SDK."""
        return f"{self.url}/v1"

    def start(self) -> Sandbox:
        """Start serving; return once the server accepts connections."""
        if self._thread is not None:
            return self
        # proto must be IPPROTO_TCP: asyncio only sets TCP_NODELAY on such sockets, and
        # without it every answer waits ~40 ms for a delayed ACK (headers and body are
        # two writes).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self._port = sock.getsockname()[1]
        server = uvicorn.Server(_uvicorn_config(build_app(self.state), self.host, self._port))
        self._server = server

        def run() -> None:
            try:
                asyncio.run(server.serve(sockets=[sock]))
            except BaseException as exc:  # reported to start() or stop()
                self._error = exc
            finally:
                sock.close()

        self._thread = threading.Thread(target=run, name=f"sandbox-{self._port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + _READY_TIMEOUT
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the sandbox did not start: {self._error!r}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving and join the thread; calling it again does nothing."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout=10)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        """What the server saw; the same dict as ``GET /sandbox/stats``."""
        return self.state.stats.snapshot()

    def requests(self) -> list[dict[str, Any]]:
        """The per-request log of chat completions; the same as ``GET /sandbox/requests``."""
        return self.state.stats.requests()

    def batch_lines(self) -> dict[str, int]:
        """How many times each batch ``custom_id`` was answered 200 (billed)."""
        return self.state.stats.batch_line_counts()

    def reset_stats(self) -> None:
        """Clear the stats and the request log (``POST /sandbox/reset``)."""
        self.state.stats.reset()

    def on_request(self, hook: Callable[[str, str], None] | None) -> None:
        """Call ``hook(event, endpoint)`` around every /v1 request (None removes it).

        ``event`` is ``"request"`` before the route runs and ``"response"`` once it has run,
        before any byte of the answer leaves; ``endpoint`` is as in the stats, e.g.
        ``"POST /v1/batches"``. The hook runs on the server's event loop: keep it quick.
        """
        self.state.hook = hook

    def set_faults(self, faults: FaultConfig) -> None:
        """Change the faults while it runs (``POST /sandbox/faults``)."""
        self.state.set_faults(faults)
        self.config = self.state.config
