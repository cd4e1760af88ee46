"""Fixtures for end-to-end tests: a temporary tree and the real daemon process on it.

`DaemonTree` writes a daemon config (tiny weights, CPU, fast settling, JSON logs), job files
and synthetic clips, starts `python -m selvad.cli run --config ...` as a child (optionally
with a fake NOTIFY_SOCKET), and offers waits on the queue database and the JSON log. Every
process it started (the daemon and the run children it spawned) is killed in the finalizer.

The waits poll their condition; a timeout given to them is what an idle 2-core machine needs
with a margin, and it is stretched by `slowdown()`, measured once per session: how much
slower than that machine this one starts a Python that imports torch and computes with it
(what the daemon's start-up and every run child do). A loaded machine is then slow, not red.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from selvad.demo import make_dataset
from selvad.runs.queue import Run, RunQueue

REPO = Path(__file__).resolve().parents[2]
# seconds an idle 2-core machine takes for the calibration below (measured: 1.9-2.3 s)
CALIBRATION_IDLE_S = 2.0
CALIBRATION = ("import torch; a = torch.ones(256, 256)\nfor _ in range(200): a @ a\n"
               "import selvad.service.daemon")
FAST_TRAIN = {"steps": 20, "save_every": 10, "log_every": 5, "precision": "fp32",
              "warmup_steps": 2}


@functools.cache
def slowdown() -> float:
    """How many times slower than an idle 2-core machine this one is now (>= 1, <= 10),
    measured once per session with CALIBRATION in a child Python; SELVA_E2E_SLOWDOWN
    overrides it (e.g. 5 on a machine known to be crowded)."""
    forced = os.environ.get("SELVA_E2E_SLOWDOWN")
    if forced:
        return max(1.0, float(forced))
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", CALIBRATION], cwd=REPO, check=True,
                   capture_output=True, timeout=600)
    return min(10.0, max(1.0, (time.monotonic() - t0) / CALIBRATION_IDLE_S))


def scaled(seconds: float) -> float:
    """`seconds` (enough on an idle 2-core machine) stretched by this machine's slowdown."""
    return seconds * slowdown()


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny_16k weights directory shared by every e2e test (written once, ~3 s)."""
    from selva_engine.weights.tiny import make_tiny

    path = tmp_path_factory.mktemp("weights")
    make_tiny(path, "tiny_16k")
    return path


class FakeNotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET. A thread reads it all
    the time, as systemd does: a full datagram queue (10 by default) would block the
    daemon's next notification."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                return

    def drain(self) -> list[str]:
        """All messages received so far (a copy)."""
        return list(self.messages)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self.sock.close()


class DaemonTree:
    """A temporary selvad installation in `root` with the daemon as a child process."""

    def __init__(self, root: Path, weights: Path, settle: float = 0.3) -> None:
        self.root = root
        for d in ("datasets", "jobs", "out", "state"):
            (root / d).mkdir(parents=True, exist_ok=True)
        self.config = root / "selvad.toml"
        self.config.write_text(
            f'[paths]\ndataset_roots = ["datasets"]\njobs_dir = "jobs"\noutput_root = "out"\n'
            f'state_dir = "state"\nweights_dir = "{weights}"\n[device]\nname = "cpu"\n'
            f'[watch]\nsettle_seconds = {settle}\nrescan_minutes = 0\n'
            '[retention]\nkeep_last_checkpoints = 10\n[logging]\nformat = "json"\n'
            '[web]\nlisten = "127.0.0.1:0"\n')  # a free port: tests run side by side
        self.log_path = root / "daemon.log"
        self.render_root: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify: FakeNotifySocket | None = None
        self._queue: RunQueue | None = None
        self._link = ""

    # -- files ---------------------------------------------------------------------------

    def dataset(self, name: str) -> Path:
        return self.root / "datasets" / name

    def add_clips(self, name: str, n: int = 3, seed: int = 0) -> list[Path]:
        """Write `n` synthetic tiny_16k clips straight into dataset `name`."""
        return make_dataset(self.dataset(name), n, "tiny_16k", seed=seed)

    def write_job(self, name: str, dataset: str, on_change: bool = True,
                  settle_minutes: float = 0.01, **train: Any) -> Path:
        """Write `jobs/<name>.toml` (tiny_16k, fast training; `train` overrides [train])."""
        opts = {**FAST_TRAIN, **train}
        lines = [f'dataset = "{dataset}"', 'variant = "tiny_16k"', "[lora]", "rank = 4",
                 "[train]"] + [f"{k} = {json.dumps(v)}" for k, v in opts.items()]
        lines += ["[sample]", "steps = 2", "[trigger]", f"on_change = {str(on_change).lower()}",
                  f"settle_minutes = {settle_minutes}", ""]
        path = self.root / "jobs" / f"{name}.toml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines))
        os.replace(tmp, path)
        return path

    def watch_renders(self) -> Path:
        """Set `[paths] render_root = "render"` (before `start`); the render root."""
        self.render_root = self.root / "render"
        text = self.config.read_text()
        if "render_root" not in text:
            self.config.write_text(text.replace('state_dir = "state"\n',
                                                'state_dir = "state"\nrender_root = "render"\n', 1))
        return self.render_root

    # -- the daemon ----------------------------------------------------------------------

    def start(self, notify: bool = False,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start the daemon (appending to daemon.log); with `notify` a fake NOTIFY_SOCKET;
        `env` replaces the environment it inherits."""
        env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
        env.pop("NOTIFY_SOCKET", None)
        if notify:
            if self.notify is None:
                self.notify = FakeNotifySocket(self.root / "notify.sock")
            env["NOTIFY_SOCKET"] = str(self.notify.path)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "selvad.cli", "run", "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO, env=env)
        return self.proc

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 60) -> int:
        """Wait for the daemon to exit (`timeout` scaled by `slowdown()`); its status."""
        assert self.proc is not None
        return self.proc.wait(scaled(timeout))

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `selvad ARGS --config <this tree>`; returns the completed process."""
        return subprocess.run([sys.executable, "-m", "selvad.cli", *args, "--config",
                               str(self.config)], capture_output=True, text=True, cwd=REPO,
                              timeout=scaled(timeout))

    # -- observation ---------------------------------------------------------------------

    @property
    def queue(self) -> RunQueue:
        if self._queue is None:
            self._queue = RunQueue(self.root / "state" / "queue.sqlite3")
        return self._queue

    def runs(self, job: str | None = None, kind: str | None = None) -> list[Run]:
        if not (self.root / "state" / "queue.sqlite3").exists():
            return []
        return [r for r in self.queue.list_runs(job=job) if kind is None or r.kind == kind]

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The daemon's JSON log events so far (optionally only those named `name`)."""
        out = []
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        for line in lines:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(ev, dict) and (name is None or ev.get("event") == name):
                out.append(ev)
        return out

    def web_url(self, timeout: float = 30) -> str:
        """The web page's URL, from the daemon's `web.ready` log event."""
        return self.wait_for(lambda: [e["url"] for e in self.events("web.ready")], timeout,
                             "web.ready")[0]

    def web_link(self, timeout: float = 30) -> str:
        """The page's link with its token, as `selvad web-url` prints it (once serving)."""
        url = self.web_url(timeout)
        if not self._link.startswith(url):
            out = self.cli("web-url")
            assert out.returncode == 0 and out.stdout.startswith(url + "?token="), out
            self._link = out.stdout.strip()
        return self._link

    def web_token(self, timeout: float = 30) -> str:
        """The page's token (every page, file and API call needs it)."""
        return self.web_link(timeout).split("?token=", 1)[1]

    def web_get(self, path: str, timeout: float = 10) -> tuple[int, bytes]:
        """GET the page's `path` (relative to its URL) with the token as a Bearer header:
        (status, body)."""
        request = urllib.request.Request(self.web_url() + path,
                                         headers={"authorization": f"Bearer {self.web_token()}"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_for(self, what: Callable[[], Any], timeout: float = 90, desc: str = "") -> Any:
        """Poll `what()` until truthy (returned); fail with the log tail after `timeout` s
        stretched by this machine's `slowdown()`."""
        timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = what()
            if value:
                return value
            if self.proc is not None and self.proc.poll() is not None:
                value = what()
                if value:
                    return value
                pytest.fail(f"daemon exited ({self.proc.returncode}) while waiting for {desc}\n"
                            + self.log_tail())
            time.sleep(0.2)
        pytest.fail(f"timed out after {timeout} s waiting for {desc}\n" + self.log_tail())

    def wait_state(self, run_id: str, states: tuple[str, ...], timeout: float = 120) -> Run:
        def check() -> Run | None:
            run = self.queue.get(run_id)
            return run if run is not None and run.state in states else None

        return self.wait_for(check, timeout, f"run {run_id} to be {'/'.join(states)}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    # -- clean-up ------------------------------------------------------------------------

    def child_pids(self) -> list[int]:
        pids = []
        for f in (self.root / "state" / "runs").glob("*/child.pid"):
            try:
                pids.append(int(f.read_text().strip()))
            except (OSError, ValueError):
                pass
        return pids

    def cleanup(self) -> None:
        """Kill the daemon and any run child it left (by pid, never by name)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in self.child_pids():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"selvad.runs.child" in cmdline:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        if self.notify is not None:
            self.notify.close()
        if self._queue is not None:
            self._queue.close()


@pytest.fixture
def tree(tmp_path: Path, tiny_weights: Path) -> Iterator[DaemonTree]:
    """A fresh DaemonTree (settle 0.3 s); its processes are killed afterwards."""
    t = DaemonTree(tmp_path, tiny_weights)
    yield t
    t.cleanup()


@pytest.fixture
def make_tree(tmp_path: Path, tiny_weights: Path) -> Iterator[Callable[..., DaemonTree]]:
    """Factory for a DaemonTree with other settings (e.g. `settle=1.0`)."""
    made: list[DaemonTree] = []

    def make(settle: float = 0.3) -> DaemonTree:
        t = DaemonTree(tmp_path, tiny_weights, settle=settle)
        made.append(t)
        return t

    yield make
    for t in made:
        t.cleanup()
