"""`selvad demo` ends its daemon however it is stopped, and prints the page it really serves
(issue 22.1): SIGTERM, SIGHUP (a closed terminal) and SIGKILL of the demo leave no daemon, and
with port 8765 taken the demo's page is on another port, which it prints and which answers."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper has ended)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] not in ("Z", "X")


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_a_stopped_demo_leaves_no_daemon_and_shows_its_own_page(
        tmp_path: Path, sig: signal.Signals) -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        taken.bind(("127.0.0.1", 8765))
        taken.listen(1)
    except OSError:  # taken already by someone else: the same case
        pass
    out = tmp_path / "demo.out"
    with open(out, "wb") as f:
        demo = subprocess.Popen([sys.executable, "-m", "selvad.cli", "demo",
                                 str(tmp_path / "demo"), "--steps", "5000"],
                                stdout=f, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    daemon = 0
    try:
        _wait_for(lambda: "page: served at http" in out.read_text() or demo.poll() is not None,
                  240, "the demo to print its page")
        text = out.read_text()
        url = re.search(r"page: served at (http://127\.0\.0\.1:(\d+)/)", text)
        assert url and url.group(2) != "8765", text
        try:  # the URL printed is the demo's own daemon (any HTTP answer: it listens)
            urllib.request.urlopen(url.group(1), timeout=30).close()
        except urllib.error.HTTPError:
            pass
        (daemon,) = _children(demo.pid)
        assert _alive(daemon)
        demo.send_signal(sig)
        code = demo.wait(120)
        assert code == (-sig if sig == signal.SIGKILL else 128 + sig), out.read_text()[-2000:]
        _wait_for(lambda: not _alive(daemon), 120, f"daemon {daemon} to end")
        if sig != signal.SIGKILL:
            assert "daemon stopped (exit status 0)" in out.read_text(), out.read_text()[-2000:]
    finally:
        taken.close()
        if demo.poll() is None:
            demo.kill()
            demo.wait(30)
        if daemon and _alive(daemon):
            os.kill(daemon, signal.SIGKILL)
