"""What runs on a Ray node for the daemon (selvad.runs.rayexec): the run actor and the
shared-storage check. Plain Python classes and functions, made remote by the daemon's
side (only `_where` asks Ray where it runs), so they work and are tested without Ray.

`RunActor` starts the same child a local run starts (``python -m selvad.runs.child ...``,
the trampoline into selva_engine.cli, with the actor as its parent: if the actor or its
node dies, PR_SET_PDEATHSIG makes the trainer checkpoint and stop) and streams back
what the child says, one item per line: ``("out", line)`` for stdout (the JSON events),
``("err", line)`` for stderr (the daemon appends it to the run's worker.log), and last
``("exit", status)``. The child sees the GPU Ray gave the actor (Ray sets
CUDA_VISIBLE_DEVICES for it). `signal` stops the child (SIGTERM: checkpoint, exit 3).

`read_markers` is the start-up check that every node sees the daemon's storage: it reads
the marker files the daemon wrote into its dataset roots, cache and output root.
"""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import sys
import tempfile
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

    def run(self, args: list[str], env: dict[str, str], config_json: str | None
            ) -> Iterator[tuple[str, Any]]:
        """Start the child with `args` (after the trampoline's own), `env` added to this
        process's environment and, when given, `config_json` written to a private file;
        yield its lines as they come, then ("exit", status)."""
        with tempfile.TemporaryDirectory(prefix="selvad-run-") as private:
            if config_json is not None:
                path = Path(private) / "config.json"
                path.write_text(config_json, encoding="utf-8")
                args = [str(path) if a == CONFIG_PLACEHOLDER else a for a in args]
            cmd = [sys.executable, "-m", "selvad.runs.child", "--parent", str(os.getpid()), *args]
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, env={**os.environ, **env},
                                         start_new_session=True)
            yield ("started", {"pid": self.proc.pid, **_where()})
            if self.stopped_with is not None:  # a stop that came before the child existed
                self.signal(self.stopped_with)
            yield from _lines(self.proc)
            yield ("exit", self.proc.wait())

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
    try:
        import ray

        ctx = ray.get_runtime_context()
        node_id, gpus = ctx.get_node_id(), [str(g) for g in ray.get_gpu_ids()]
    except Exception:  # outside Ray (a test of the class itself)
        node_id, gpus = "", []
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

