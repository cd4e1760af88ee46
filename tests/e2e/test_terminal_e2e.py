"""`selvad run` on a terminal (a real pseudo-terminal): readable lines and a live progress bar
for the current run, no JSON, no overlong lines."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import threading

import pytest

from tests.e2e.conftest import REPO, DaemonTree, scaled


def _read_all(fd: int, sink: list[bytes]) -> None:
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO once the last writer closed the terminal
            return
        if not chunk:
            return
        sink.append(chunk)


@pytest.mark.slow  # a real tiny training run: ~30-90 s
def test_run_on_a_terminal_shows_a_live_progress_bar(tree: DaemonTree) -> None:
    tree.config.write_text(tree.config.read_text().replace('format = "json"', 'format = "auto"'))
    tree.add_clips("dogs", 3)
    tree.write_job("dogs", "dogs")
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.Popen([sys.executable, "-m", "selvad.cli", "run", "--config",
                             str(tree.config)], stdin=slave, stdout=slave, stderr=slave,
                            cwd=REPO, env=env, start_new_session=True)
    tree.proc = proc  # the fixture kills it (and its children) if the test fails
    os.close(slave)
    chunks: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(master, chunks), daemon=True)
    reader.start()
    try:
        tree.wait_for(lambda: [r for r in tree.runs("dogs") if r.state == "done"], 240,
                      "the run to finish")
        tree.wait_for(lambda: b"state=done" in b"".join(chunks), 30, "the done line")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(scaled(60))
        reader.join(10)
        os.close(master)
    out = b"".join(chunks).decode(errors="replace")
    assert '{"event"' not in out, out[-3000:]  # a terminal gets readable lines, not JSON
    # the bar is redrawn in place (carriage return, clear line) with rounded numbers
    bars = re.findall(r"\r\x1b\[K[^\r\n]*step (\d+)/20[^\r\n]*", out)
    assert "20" in bars, out[-3000:]
    assert re.search(r"\[#+\.*\]\s+\d+% step \d+/20  train loss \(smoothed\) "
                     r"\d\.\d{1,4}(e-?\d+)?  [\d.]+ samples/s  ETA \d+(s|m\d\ds)", out), out[-3000:]
    lines = re.split(r"[\r\n]+", out)
    assert max(len(line) for line in lines) < 400, max(lines, key=len)
    assert re.search(r"run\.state .*state=done", out), out[-3000:]


def test_status_follow_redraws_in_place_until_ctrl_c(tree: DaemonTree) -> None:
    assert tree.queue.list_runs() == []  # creates the state database the daemon would
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "selvad.cli", "status", "--follow",
                             "--interval", "0.3", "--config", str(tree.config)],
                            stdin=slave, stdout=slave, stderr=slave, cwd=REPO)
    os.close(slave)
    chunks: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(master, chunks), daemon=True)
    reader.start()
    try:
        tree.wait_for(lambda: b"".join(chunks).count(b"\x1b[H\x1b[2J") >= 3, 60,
                      "three redraws")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(scaled(30)) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(10)
        os.close(master)
    out = b"".join(chunks).decode(errors="replace")
    assert "Traceback" not in out, out
    screens = out.split("\x1b[H\x1b[2J")[1:]
    assert all("runs: 0 queued" in s and "Ctrl-C to stop" in s for s in screens[:3]), out
