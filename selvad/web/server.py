"""The web page's server: uvicorn in a thread beside the daemon's main loop.

The socket is bound in `start()` (so a port in use is an OSError the daemon logs at once,
and `listen = "127.0.0.1:0"` picks a free port, which `url` then names); uvicorn serves it
on its own event loop in a daemon thread, its request handlers reading the queue database
read-only, so nothing the page does can block training or the watchdog.

Bounded: a connection must send its request head within HEAD_TIMEOUT seconds (from its
start, or from the end of its previous response), an idle keep-alive connection is closed
after KEEP_ALIVE seconds, and at most MAX_CONNECTIONS are open at once (more are closed as
they arrive), far below the unit's descriptor limit. Bodies are bounded by the Gate.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from selvad.config.daemon import DaemonConfig
from selvad.log import get_logger
from selvad.web.access import URL_FILE, ensure_token, write_served_url
from selvad.web.app import create_app

__all__ = ["BoundedH11Protocol", "WebServer"]

START_TIMEOUT = 10.0  # seconds to wait for uvicorn to accept connections
HEAD_TIMEOUT = 10.0  # seconds for a request line and headers to arrive
KEEP_ALIVE = 5  # seconds an idle connection stays open after a response
MAX_CONNECTIONS = 200  # open at once; the unit's LimitNOFILE is 1024 or more


class BoundedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request head (uvicorn has none:
    a socket that never sends, or sends a byte a minute, is held forever) and a cap on the
    open connections."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > MAX_CONNECTIONS:
            transport.abort()  # no answer: the descriptor is what must be given back
            return
        self._waiting_after: Any = self.cycle  # the cycle before the head we wait for
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT, self._expire)

    def _disarm(self) -> None:
        if getattr(self, "_head_timer", None) is not None:
            self._head_timer.cancel()  # type: ignore[union-attr]
            self._head_timer = None

    def _expire(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not self._waiting_after:  # a complete head arrived: the app runs
            self._disarm()

    def on_response_complete(self) -> None:
        done = self.cycle
        super().on_response_complete()
        if self.cycle is done and not self.transport.is_closing():
            self._waiting_after = done  # the next head has HEAD_TIMEOUT again
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


class WebServer:
    """The page for daemon config `cfg`: `start()` binds and serves, `stop()` ends it."""

    def __init__(self, cfg: DaemonConfig) -> None:
        self.cfg = cfg
        self.log = get_logger("selvad.web")
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> None:
        """Bind `[web] listen` and serve in a thread; raises OSError when it cannot bind
        (its message names the address and the fix)."""
        web = self.cfg.web
        family = socket.AF_INET6 if ":" in web.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((web.host, web.port))
        except OSError as exc:
            sock.close()
            raise OSError(f"the web page cannot listen on {web.listen} ({exc.strerror or exc}); "
                          "set [web] listen to a free port or enabled = false") from exc
        sock.listen(64)
        port = sock.getsockname()[1]
        host = f"[{web.host}]" if family == socket.AF_INET6 else web.host
        if host in ("0.0.0.0", "[::]"):  # every interface: name one a browser here can open
            host = "127.0.0.1" if family == socket.AF_INET else "[::1]"
        self.url = f"http://{host}:{port}/"
        try:
            app = create_app(self.cfg, ensure_token(self.cfg))
        except OSError:
            sock.close()
            raise
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2, http=BoundedH11Protocol,
                                timeout_keep_alive=KEEP_ALIVE, limit_concurrency=MAX_CONNECTIONS)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       name="selvad-web", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            write_served_url(self.cfg, self.url)
        except OSError as exc:  # `selvad web-url` then names [web] listen's address
            self.log.warning("web.url_not_recorded", error=str(exc))
        self.log.info("web.ready", url=self.url,
                      token="[web] token" if web.token else str(self.cfg.paths.state_dir / "web_token"),
                      link_command="selvad web-url")

    def stop(self) -> None:
        """Stop serving (open connections get 2 s) and wait for the thread."""
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(5)
            (self.cfg.paths.state_dir / URL_FILE).unlink(missing_ok=True)
            self.log.info("web.stopped")
