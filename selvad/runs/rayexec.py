"""The Ray executor (`[executor] kind = "ray"`): runs placed on the nodes of a Ray cluster.

The daemon stays the single owner of the queue, the watch folders and the output tree; Ray
does placement, transport and failure detection (no protocol of our own between machines).
At start-up `RayExecutor.connect` joins the cluster at `[executor] address` and checks that
every node sees the daemon's storage: it writes a marker file with a random token into each
dataset root, the cache, the output root and the weights directory, and a task pinned to
each node (NodeAffinitySchedulingStrategy) reads them back; a node that cannot is named in
a `DeviceError` (the daemon refuses to start, exit 78). A node that joins later is checked
the same way in the background (`ray.node_joined`, or `ray.node_storage_missing` with the
fix).

Capacity is the cluster's total of `[executor] resource` ("GPU", or "CPU" for tests), one
run per unit, so the daemon keeps its own priority order and never queues runs inside Ray.
Each run is a `RayRun`: an actor of `selvad.runs.rayremote.RunActor` needing one unit
(`num_gpus=1`), which starts the same child as a local run and hands its lines back
(a long poll: `take` calls, which work through Ray Client as well); the events update the queue exactly as for a local child, stderr goes
to the run's worker.log. Cancel and shutdown are actor calls that send SIGTERM to the child
(it checkpoints, then exits); after the stop timeout the actor is killed with `ray.kill`.
When Ray reports the actor lost (its node died) the run is queued again at once and
resumes from its newest checkpoint on whichever node Ray gives it next (checkpoints are on
the shared output root), at most `MAX_LOST` times in a row.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import Any

from selva_engine.io import atomic_write_text
from selvad.config.daemon import DaemonConfig
from selvad.log import get_logger
from selvad.runs.queue import Run, RunQueue
from selvad.runs.rayremote import CONFIG_PLACEHOLDER, RunActor, read_markers
from selvad.runs.slots import DeviceError, Slot
from selvad.runs.worker import Outcome, RunProcess, one_line

__all__ = ["MARKER", "MAX_LOST", "RayExecutor", "RayRun"]

MARKER = ".selvad-storage-check"  # written by the daemon, read on every node, then removed
MAX_LOST = 3  # a run whose node is lost this many times in a row fails
CHECK_TIMEOUT = 120.0  # seconds the storage check may take on all nodes
STORAGE_FIX = ("mount the dataset roots, the cache, the output root and the weights at the "
               "same paths on every node (NFS or similar)")
CAPACITY_EVERY = 1.0  # seconds between asks for the cluster's resources
POLL_WAIT = 5.0  # seconds one `take` call waits for the child's next line
_TRAMPOLINE_ARGS = 5  # python -m selvad.runs.child --parent PID: the actor supplies its own


def _fix() -> str:
    return 'see the README, "Several machines (Ray)"'


class RayExecutor:
    """Runs on a Ray cluster (see the module docstring); build it with `connect`."""

    kind = "ray"

    def __init__(self, cfg: DaemonConfig, ray: Any) -> None:
        self.cfg, self.ray = cfg, ray
        self.resource = cfg.executor.resource
        self.device = "cuda" if self.resource == "GPU" else "cpu"
        opts = {"num_gpus": 1, "num_cpus": 0} if self.resource == "GPU" else {"num_cpus": 1}
        # start/take and signal run side by side in the actor
        self.actor_class = ray.remote(max_concurrency=4)(RunActor).options(**opts)
        self._capacity = (0, 0.0)
        self._known_capacity = 0
        self._checked: set[str] = set()  # node ids whose storage was checked
        self._checker: threading.Thread | None = None
        self.log = get_logger("selvad.runs.rayexec")

    @classmethod
    def connect(cls, cfg: DaemonConfig) -> RayExecutor:
        """Join the cluster at `[executor] address` and check the storage of every node;
        DeviceError (saying the fix) when Ray is missing, unreachable or a node does not
        see the daemon's directories."""
        where = f"{cfg.path}:executor" if cfg.path else "executor"
        try:
            import ray
        except ImportError as exc:
            raise DeviceError(f'{where}.kind = "ray" but Ray is not installed ({exc}); '
                              "pip install 'selvad[ray]' on this machine and every node, or "
                              'write kind = "local"') from exc
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
        address = cfg.executor.address
        try:
            ray.init(address=address, namespace="selvad", logging_level=logging.WARNING,
                     log_to_driver=False)
        except Exception as exc:  # ConnectionError, RuntimeError, a missing ray[client]
            raise DeviceError(f"{where}.address = {address!r}: cannot join the Ray cluster "
                              f"({one_line(str(exc), 200)}); start it first (`ray start "
                              f"--head` on the head node) or fix the address; {_fix()}") from exc
        ex = cls(cfg, ray)
        try:
            ex.check_storage()
        except BaseException:
            ray.shutdown()
            raise
        return ex

    # -- storage -------------------------------------------------------------------------

    def shared_dirs(self) -> list[Path]:
        """The directories every node must see at the same path."""
        p = self.cfg.paths
        dirs = [*p.dataset_roots, p.effective_cache_dir, p.output_root]
        if p.weights_dir is not None:
            dirs.append(p.weights_dir)
        return [d for d in dirs if d.is_dir()]

    def check_storage(self) -> None:
        """Check every alive node (see `storage_problems`); DeviceError naming each node
        and path that failed."""
        problems = self.storage_problems(self._alive_nodes())
        if problems:
            raise DeviceError(
                "these Ray nodes do not see the daemon's storage: " + "; ".join(problems)
                + f". {STORAGE_FIX[0].upper()}{STORAGE_FIX[1:]}; {_fix()}")

    def _alive_nodes(self) -> dict[str, str]:
        """Alive nodes: node id -> "node ADDRESS (ID8)"."""
        return {n["NodeID"]: f"node {n.get('NodeManagerAddress')} ({n['NodeID'][:8]})"
                for n in self.ray.nodes() if n.get("Alive")}

    def storage_problems(self, nodes: dict[str, str]) -> list[str]:
        """Write a marker into each shared directory, have a task on each of `nodes` read
        them all, remove them; one line per node and path that failed. The nodes count
        as checked."""
        markers = {}
        for d in self.shared_dirs():
            token = secrets.token_hex(16)
            atomic_write_text(d / MARKER, token + "\n")
            markers[str(d / MARKER)] = token
        try:
            problems = self._read_on(nodes, markers)
        finally:
            for path in markers:
                Path(path).unlink(missing_ok=True)
        self._checked |= set(nodes)
        return problems

    def _read_on(self, nodes: dict[str, str], markers: dict[str, str]) -> list[str]:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        task = self.ray.remote(read_markers)
        refs = {}
        for node_id, name in nodes.items():
            refs[name] = task.options(num_cpus=0, scheduling_strategy=(
                NodeAffinitySchedulingStrategy(node_id, soft=False))).remote(markers)
        problems = []
        for name, ref in refs.items():
            try:
                found = self.ray.get(ref, timeout=CHECK_TIMEOUT)
            except Exception as exc:  # the task could not run there at all
                found = [f"the check could not run ({one_line(str(exc), 160)})"]
            problems += [f"{name}: {p}" for p in found]
        return problems

    # -- slots ---------------------------------------------------------------------------

    def capacity(self) -> int:
        """How many runs the cluster holds at once: its total of the resource (alive nodes,
        asked at most every CAPACITY_EVERY seconds)."""
        value, when = self._capacity
        now = time.monotonic()
        if now - when >= CAPACITY_EVERY:
            value = int(self.ray.cluster_resources().get(self.resource, 0))
            self._capacity = (value, now)
            if value > self._known_capacity:  # a node joined: check its storage
                self._check_joined()
            self._known_capacity = value
        return value

    def _check_joined(self) -> None:
        """Check the storage of nodes that joined since start-up, in a thread (the main
        loop goes on); a node that does not see it is logged with the fix. Ray places
        runs there all the same: stop Ray on that node (`ray stop`) or mount the paths."""
        new = {k: v for k, v in self._alive_nodes().items() if k not in self._checked}
        if not new or self._checker is not None and self._checker.is_alive():
            return

        def check() -> None:
            try:
                problems = self.storage_problems(new)
            except Exception as exc:  # never fatal: the runs there fail with their own error
                problems = [f"the check failed ({one_line(str(exc), 160)})"]
            for problem in problems:
                self.log.error("ray.node_storage_missing", problem=problem,
                               fix=f"{STORAGE_FIX}, or `ray stop` on that node")
            if not problems:
                self.log.info("ray.node_joined", nodes=sorted(new.values()))

        self._checker = threading.Thread(target=check, name="ray-storage-check", daemon=True)
        self._checker.start()

    def free_slots(self, running: Any) -> list[Slot]:
        """One slot per unit of the resource no run holds (Ray picks the node)."""
        free = self.capacity() - len(list(running))
        return [Slot("ray", self.device)] * max(0, free)

    def handle(self, run: Run, queue: RunQueue, cfg: DaemonConfig, slot: Slot) -> RayRun:
        """A RayRun for `run` (not started)."""
        return RayRun(run, queue, cfg, slot, self)

    def close(self) -> None:
        """Leave the cluster (actors still owned by the daemon are ended by Ray)."""
        self.ray.shutdown()


class RayRun(RunProcess):
    """One run as a Ray actor (see the module docstring); the event handling, the outcome
    and the clean-up are RunProcess's, only the transport differs."""

    def __init__(self, run: Run, queue: RunQueue, cfg: DaemonConfig, slot: Slot,
                 executor: RayExecutor) -> None:
        super().__init__(run, queue, cfg, slot)
        self.ex = executor
        self.actor: Any = None
        self._code: int | None = None
        self._lost: str | None = None
        self._ended = threading.Event()
        self._remote_pid: int | None = None
        self._log_file: Any = None

    @property
    def pid(self) -> int | None:
        """The child's pid on its node (None before it started)."""
        return self._remote_pid

    def start(self) -> None:
        """Write the run's files and start its actor; the reader thread follows it."""
        self._prepare_dirs()
        args = self._command()[_TRAMPOLINE_ARGS:]
        config_json = None
        if "--config_json" in args:  # sent by value: the state dir need not be shared
            i = args.index("--config_json") + 1
            config_json = Path(args[i]).read_text(encoding="utf-8")
            args[i] = CONFIG_PLACEHOLDER
        self._log_file = open(self.out_dir / "worker.log", "ab")  # noqa: SIM115 (the reader closes it)
        self._log_header(self._log_file, args, " on Ray")
        self.actor = self.ex.actor_class.remote()
        started = self.actor.start.remote(args, {"PYTHONUNBUFFERED": "1", **self.slot.env},
                                          config_json)
        self.log.info("run.submitted", executor="ray", resource=self.ex.resource,
                      output_dir=str(self.out_dir), attempt=self.run.attempts)
        self._follow(self._pump, f"ray-{self.run.id}", started)

    def _pump(self, started: Any) -> None:
        """The reader thread: wait for the actor to be placed and start the child, then
        take its lines until it exits or Ray reports the actor lost."""
        from ray.exceptions import RayActorError

        ray = self.ex.ray
        try:
            self._placed(ray.get(started))
            while self._code is None:
                for kind, value in ray.get(self.actor.take.remote(POLL_WAIT)):
                    if kind == "out":
                        self._on_line(value.strip())
                    elif kind == "err":
                        self._log_file.write(value.encode("utf-8", "replace") + b"\n")
                        self._log_file.flush()
                    elif kind == "exit":
                        self._code = int(value)
        except RayActorError as exc:
            self._lost = one_line(str(exc).split("\n")[0] + " " + _death_cause(str(exc)), 240)
        except Exception as exc:  # never leave the run hanging: count it as lost
            self.log.exception("run.ray_stream_failed")
            self._lost = f"{type(exc).__name__}: {one_line(str(exc), 200)}"
        finally:
            self._log_file.close()
            self._ended.set()

    def _placed(self, where: dict[str, Any]) -> None:
        """The actor started the child: record the node (and GPU) it runs on."""
        gpus = where.get("gpus") or []
        label = f"ray:{where.get('host')}:{str(where.get('node_id'))[:8]}" + (
            f":gpu{','.join(gpus)}" if gpus else "")
        self.slot = Slot(label, self.slot.device, self.slot.env)
        self.log = self.log.bind(device=label)
        self._remote_pid = where.get("pid")
        self.log.info("run.child_started", pid=self._remote_pid, device=label,
                      host=where.get("host"), node_id=where.get("node_id"), gpus=gpus,
                      output_dir=str(self.out_dir), attempt=self.run.attempts)
        try:
            self.queue.set_device(self.run.id, label)
        except Exception as exc:  # only a display; the run goes on
            self.log.warning("run.device_not_recorded", error=str(exc))

    def _signal(self, sig: int) -> None:
        if self.actor is not None and not self._ended.is_set():
            self.actor.signal.remote(int(sig))

    def kill(self) -> None:
        """After a stop timeout: SIGKILL the child, then end the actor through Ray."""
        self.log.warning("run.killing", pid=self.pid, executor="ray")
        self._signal(signal.SIGKILL)
        if self.actor is not None:
            self.ex.ray.kill(self.actor)

    def _wait_exit(self, timeout: float | None) -> int | None:
        if not self._ended.wait(timeout):
            return None
        if self.actor is not None:  # frees its resource for the next run at once
            self.ex.ray.kill(self.actor)
            self.actor = None
        return self._code if self._code is not None else -1

    def _decide(self, code: int) -> Outcome:
        if self._lost is None:
            return super()._decide(code)
        if self.cancel_requested:
            return Outcome("cancelled")
        if self.stop_requested:
            return Outcome("queued")
        log = self.out_dir / "worker.log"
        if self.run.auto_retries >= MAX_LOST:
            return Outcome("failed", error=f"Ray lost the run {self.run.auto_retries + 1} times "
                           f"in a row ({self._lost}); check the cluster's nodes (`ray status`), "
                           f"then `selvad retry {self.run.id}`; the full log is {log}")
        return Outcome("queued", error=f"Ray lost the run ({self._lost}); it resumes from its "
                       "newest checkpoint on another node", retry_at=time.time())


def _death_cause(text: str) -> str:
    """The line of a RayActorError that says why the actor died ("" when none does)."""
    for line in text.splitlines():
        if "died because" in line or "node" in line.lower() and "died" in line:
            return line.strip()
    return ""
