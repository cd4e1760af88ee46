"""The web page's server: uvicorn in a thread beside the daemon's main loop.

The socket is bound in `start()` (so a port in use is an OSError the daemon logs at once,
and `listen = "127.0.0.1:0"` picks a free port, which `url` then names); uvicorn serves it
on its own event loop in a daemon thread, its request handlers reading the queue database
read-only, so nothing the page does can block training or the watchdog.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from selvad.config.daemon import DaemonConfig
from selvad.log import get_logger
from selvad.web.app import create_app

__all__ = ["WebServer"]

START_TIMEOUT = 10.0  # seconds to wait for uvicorn to accept connections


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
        self.url = f"http://{host}:{port}/"
        config = uvicorn.Config(create_app(self.cfg), log_config=None, access_log=False,
                                lifespan="off", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       name="selvad-web", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.log.info("web.ready", url=self.url, actions_locked=bool(web.token) or not web.loopback)

    def stop(self) -> None:
        """Stop serving (open connections get 2 s) and wait for the thread."""
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(5)
            self.log.info("web.stopped")
