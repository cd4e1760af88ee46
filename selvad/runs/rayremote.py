"""What runs on a Ray node for the daemon (selvad.runs.rayexec): the run actor and the
shared-storage check. Plain Python classes and functions, made remote by the daemon's
side (only `_where` asks Ray where it runs), so they work and are tested without Ray.

`RunActor.start` starts the same child a local run starts (``python -m selvad.runs.child
...``, the trampoline into selva_engine.cli, with the actor as its parent: if the actor or
its node dies, PR_SET_PDEATHSIG makes the trainer checkpoint and stop); `take` hands the
daemon what the child said since the last call (a long poll), one item per line:
``("out", line)`` for stdout (the JSON events), ``("err", line)`` for stderr (the daemon
appends it to the run's worker.log), and last ``("exit", status)``. The child sees the GPU
Ray gave the actor (Ray sets CUDA_VISIBLE_DEVICES for it). `signal` stops the child
(SIGTERM: checkpoint, exit 3).

`read_markers` is the start-up check that every node sees the daemon's storage: it reads
the marker files the daemon wrote into its dataset roots, cache and output root.
"""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["CONFIG_PLACEHOLDER", "RunActor", "read_markers"]

# stands for the path of the run's config.json in a child's arguments: the actor writes
# the config (sent by value) to a file of its own node and puts its path there
CONFIG_PLACEHOLDER = "{config_json}"


class RunActor:
    """One run on a Ray node (see the module docstring); one actor per run attempt."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped_with: int | None = None
        self._items: list[tuple[str, Any]] = []
        self._ready = threading.Condition()
        self._private = ""
        self._start_error = ""

    def start(self, args: list[str], env: dict[str, str], config_json: str | None
              ) -> dict[str, Any]:
        """Start the child with `args` (after the trampoline's own), `env` added to this
        process's environment and, when given, `config_json` written to a file of this
        node; returns where it runs (host, node id, GPUs, the child's pid)."""
        self._private = tempfile.mkdtemp(prefix="selvad-run-")
        if config_json is not None:
            path = Path(self._private) / "config.json"
            path.write_text(config_json, encoding="utf-8")
            args = [str(path) if a == CONFIG_PLACEHOLDER else a for a in args]
        cmd = [sys.executable, "-m", "selvad.runs.child", "--parent", str(os.getpid()), *args]
        started = threading.Event()
        # the child's parent-death signal fires when the *thread* that started it ends, so
        # it is started by a thread that lives until the child exits, not by a pool thread
        threading.Thread(target=self._own, args=(cmd, {**os.environ, **env}, started),
                         name="selvad-child", daemon=True).start()
        started.wait()
        if self.proc is None:
            raise RuntimeError(f"could not start {' '.join(cmd)}: {self._start_error}")
        if self.stopped_with is not None:  # a stop that came before the child existed
            self.signal(self.stopped_with)
        return {"pid": self.proc.pid, **_where()}

    def _own(self, cmd: list[str], env: dict[str, str], started: threading.Event) -> None:
        """Start the child, pass its lines on, then its exit status."""
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, env=env,
                                         start_new_session=True)
        except OSError as exc:
            self._start_error = str(exc)
            return
        finally:
            started.set()
        for item in _lines(self.proc):
            self._put(item)
        code = self.proc.wait()
        shutil.rmtree(self._private, ignore_errors=True)
        self._put(("exit", code))

    def _put(self, item: tuple[str, Any]) -> None:
        with self._ready:
            self._items.append(item)
            self._ready.notify_all()

    def take(self, timeout: float) -> list[tuple[str, Any]]:
        """The child's lines since the last call, ("out" | "err", line), and last
        ("exit", status); waits up to `timeout` seconds for the first (a long poll, which
        works through Ray Client too, where generators do not)."""
        with self._ready:
            if not self._items:
                self._ready.wait(timeout)
            items, self._items = self._items, []
        return items

    def signal(self, sig: int) -> bool:
        """Send `sig` to the child's process group; False when there is no child (yet)."""
        self.stopped_with = sig
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return False
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return False
        return True


def _where() -> dict[str, Any]:
    """Where this actor runs: host name, Ray node id and the GPUs Ray gave it."""
    node_id, gpus = "", []
    try:
        import ray

        if ray.is_initialized():  # inside an actor; not in a test of the class itself
            node_id = ray.get_runtime_context().get_node_id()
            gpus = [str(g) for g in ray.get_gpu_ids()]
    except ImportError:
        pass
    return {"host": socket.gethostname(), "node_id": node_id, "gpus": gpus}


def _lines(proc: subprocess.Popen[bytes]) -> Iterator[tuple[str, str]]:
    """("out" | "err", line) from the child's stdout and stderr as they come, to the end."""
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    partial = {"out": b"", "err": b""}
    while sel.get_map():
        for key, _ in sel.select():
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fileobj)
                if partial[key.data]:
                    yield key.data, partial[key.data].decode("utf-8", "replace")
                continue
            *whole, partial[key.data] = (partial[key.data] + chunk).split(b"\n")
            for line in whole:
                yield key.data, line.decode("utf-8", "replace")
    sel.close()


def read_markers(markers: dict[str, str]) -> list[str]:
    """On a node: read each marker file (path -> the token the daemon wrote into it);
    returns one line per path this node cannot read or reads differently (empty: this
    node sees the daemon's storage)."""
    problems = []
    for path, token in markers.items():
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            problems.append(f"{path}: {exc.strerror or exc}")
            continue
        if text != token:
            problems.append(f"{path}: another file than the daemon's (a different disk "
                            "mounted at that path)")
    return problems

