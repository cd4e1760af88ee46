"""The daemon: watch, validate, queue, run one run per device slot, talk to systemd.

One main thread owns all decisions; other threads only hand it work. The watcher thread
(selvad.datasets.watch) and the apscheduler thread (rescan, retention) append events to an inbox
and set a wake-up Event; the main loop, ticking every `TICK` seconds, then:

1. reloads the config after SIGHUP (RELOADING=1 ... READY=1; a running run goes on),
2. handles inbox events: a job file created/modified is loaded (a broken one is logged and
   ignored) and its runs queued; a dataset that settled is validated (an invalid one is
   logged and its jobs are not queued), extraction is queued for every variant its jobs
   use, and jobs with `trigger.on_change` get training queued after `settle_minutes`,
3. answers CLI requests stored in the queue database (see selvad.service.requests),
4. reaps the runs that ended and fills each free slot of its executor with the next run
   (training only inside a training window; see selvad.service.runner and
   selvad.runs.executor: the device slots of this machine, or a Ray cluster),
5. sends WATCHDOG=1 and a STATUS= line (also from inside long hashing and validation,
   through `keepalive`, so a large dataset never looks like a hung daemon).

The queue refuses duplicates (same job, config hash and dataset manifest), so re-reported
files and unchanged job files queue nothing. SIGTERM/SIGINT: STOPPING=1, every child is
asked to checkpoint, their runs go back to `queued` and the daemon exits 0; the next start
resumes them. Runs found `extracting`/`training` at start-up (the daemon died) are requeued.
Before touching anything the daemon locks its state directory (selvad.runs.statelock): a
second daemon on the same state directory logs `daemon.already_running` with the pid of
the first and exits 75 without sending READY=1 (CLI commands never take that lock). Then
it checks that audio resampling works (the probe of `selva_engine.audio.stack`, as
`selvad doctor` does, in a short-lived child so torch never loads into the daemon:
selvad.service.stackprobe); when it does not, it logs `daemon.audio_stack_broken` with the fix
and exits 78 without ever sending READY=1. So does a `[device]` or `[executor]` section
this machine cannot serve (`daemon.bad_executor`: a GPU it does not have, Ray not
installed or unreachable, storage a Ray node does not see).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any

from selvad.config.daemon import DaemonConfig, load_config
from selvad.config.jobs import Job, RunSpec
from selvad.datasets.hashcache import FileHashCache
from selvad.datasets.watch import Watcher
from selvad.log import get_logger, setup_logging
from selvad.runs.child import stop_orphan
from selvad.runs.executor import Executor, LocalExecutor, RunHandle
from selvad.runs.queue import (
    ACTIVE,
    Run,
    RunQueue,
    dataset_manifest,
    manifest_hash,
)
from selvad.runs.recovery import QueueUnrecoverable, backup, open_queue
from selvad.runs.retention import prune_run_dir
from selvad.runs.retrywait import RetryWaits
from selvad.runs.schedule import build_scheduler, reschedule
from selvad.runs.slots import DeviceError, resolve_slots
from selvad.runs.statelock import StateDirLocked, StateLock
from selvad.service import notify
from selvad.service.events import EventHandler
from selvad.service.renders import RenderEvent
from selvad.service.requests import RequestHandler
from selvad.service.runner import STOP_TIMEOUT, Runner
from selvad.service.stackprobe import probe_in_child

__all__ = ["EXIT_BROKEN_INSTALL", "EXIT_LOCKED", "STOP_TIMEOUT", "TICK", "Daemon", "run"]

TICK = 0.25  # seconds between main-loop passes when nothing wakes it earlier
STATUS_EVERY = 2.0  # seconds between STATUS= updates
# The install cannot work (torchaudio's library does not load): EX_CONFIG, which the unit's
# RestartPreventExitStatus= names so systemd does not restart a broken install in a loop.
EXIT_BROKEN_INSTALL = 78
# Another daemon holds the state directory: EX_TEMPFAIL (systemd may try again later).
EXIT_LOCKED = 75


class Daemon:
    """The selvad service for the config file at `config_path` (see the module docstring).

    Construct, then call `run()` from the main thread (it installs signal handlers and
    returns the exit status). `request_stop()` / `request_reload()` do what SIGTERM /
    SIGHUP do, for embedding and tests.
    """

    def __init__(self, config_path: Path | str) -> None:
        self.config_path = Path(config_path)
        self.cfg: DaemonConfig = load_config(self.config_path)
        self.log = get_logger("selvad.service.daemon")
        self.wake = threading.Event()
        self.inbox: deque[Any] = deque()
        self.jobs: dict[str, Job] = {}
        # why each variant cannot run from the weights directory ("" = it can), from the
        # start-up probe and each reload's; None: not checked (jobs are then not held)
        self.weights_problems: dict[str, str] | None = None
        self.running: dict[str, RunHandle] = {}  # run id -> its child (or Ray task)
        self._runner: Runner | None = None  # built from [device]/[executor] at start-up
        self.skip_window: set[str] = set()
        self.queue: RunQueue | None = None
        self.watcher: Watcher | None = None
        self.render_watcher: Watcher | None = None  # [paths] render_root's job folders
        self.scheduler: Any = None
        self._stop = False
        self._reload = False
        self.hashes: FileHashCache | None = None  # under state_dir, opened on first use
        self.state_lock: StateLock | None = None  # held from start-up to the end of run()
        self._last_status = ("", 0.0)
        self._last_watchdog = 0.0
        # services started beside the main loop (the web page): start() once the queue
        # exists, stop() at shutdown; an OSError from start() is logged and the daemon goes on
        self.companions: list[Any] = []
        self.events = EventHandler(self)
        self.requests = RequestHandler(self)
        self.retry_waits = RetryWaits()  # SIGKILL retry delays on the monotonic clock

    # -- signals -------------------------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        """Begin a graceful shutdown (the SIGTERM/SIGINT handler)."""
        self._stop = True
        self.wake.set()

    def request_reload(self, *_: Any) -> None:
        """Re-read the config at the next tick (the SIGHUP handler)."""
        self._reload = True
        self.wake.set()

    def post(self, item: Any) -> None:
        """Hand an event to the main loop (called from the watcher/scheduler threads)."""
        self.inbox.append(item)
        self.wake.set()

    # -- start-up ------------------------------------------------------------------------

    def _prepare_dirs(self) -> None:
        p = self.cfg.paths
        for what, d in (("state_dir", p.state_dir), ("output_root", p.output_root),
                        ("cache_dir", p.effective_cache_dir)):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OSError(f"{self.config_path}:paths.{what}: cannot create {d} "
                              f"({exc.strerror or exc}); create it or fix the path") from exc
        for root in p.dataset_roots:
            if not root.is_dir():
                self.log.warning("config.missing_dataset_root", path=str(root),
                                 fix="create it; it is watched as soon as it exists")
        if p.render_root is not None and not p.render_root.is_dir():
            try:
                p.render_root.mkdir(parents=True, exist_ok=True)
            except OSError:
                self.log.warning("config.missing_render_root", path=str(p.render_root),
                                 fix="create it; <render_root>/<job>/ takes the videos to render")
        if not p.jobs_dir.is_dir():
            try:
                p.jobs_dir.mkdir(parents=True, exist_ok=True)
            except OSError:
                self.log.warning("config.missing_jobs_dir", path=str(p.jobs_dir),
                                 fix="create it and put <job>.toml files in it")

    def _requeue_interrupted(self) -> None:
        assert self.queue is not None
        for run in self.queue.interrupted_runs():
            pid = stop_orphan(self.cfg, run)
            if pid is not None:
                self.log.warning("run.orphan_stopped", run_id=run.id, job=run.job, pid=pid)
            self.queue.set_state(run.id, "queued")
            self.log.info("run.state", state="queued", run_id=run.id, job=run.job,
                          dataset=run.dataset, kind=run.kind, step=run.step,
                          reason="interrupted (the daemon stopped); resumes from its checkpoint")

    def _start_watching(self) -> None:
        w = self.cfg.watch
        self.watcher = Watcher(self.cfg.paths.dataset_roots, self.cfg.paths.jobs_dir,
                               on_dataset=self.post, on_job=self.post,
                               settle_seconds=w.settle_seconds, use_polling=w.use_polling,
                               poll_interval=w.poll_interval, ignore=w.ignore)
        self.watcher.start()
        if self.cfg.paths.render_root is not None:
            self.render_watcher = Watcher([self.cfg.paths.render_root], None,
                                          on_dataset=lambda ev: self.post(RenderEvent(ev)),
                                          on_job=self.post, settle_seconds=w.settle_seconds,
                                          use_polling=w.use_polling, poll_interval=w.poll_interval,
                                          ignore=w.ignore)
            self.render_watcher.start()

    def _schedule_kwargs(self) -> dict[str, Any]:
        return {"rescan_minutes": self.cfg.watch.rescan_minutes,
                "retention_minutes": self.cfg.retention.interval_minutes,
                "rescan": self._rescan, "retention": lambda: self.post("retention")}

    def _watchers(self) -> list[Watcher]:
        """The running watchers: the datasets' and jobs', and the render root's when set."""
        return [w for w in (self.watcher, self.render_watcher) if w is not None]

    def _rescan(self) -> None:
        for watcher in self._watchers():
            watcher.full_scan()
        self.wake.set()

    # -- main loop -----------------------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit status (0 after a clean stop,
        EXIT_LOCKED when another daemon holds the state directory, EXIT_BROKEN_INSTALL)."""
        setup_logging(self.cfg.logging.format, self.cfg.logging.level)
        if not self._lock_state_dir():
            return EXIT_LOCKED
        try:
            return self._serve()
        finally:
            assert self.state_lock is not None
            self.state_lock.release()

    def _lock_state_dir(self) -> bool:
        """Take the state directory's lock before touching anything in it; False (logged
        with the holder's pid) when another daemon holds it."""
        state_dir = self.cfg.paths.state_dir
        try:
            self.state_lock = StateLock.acquire(state_dir)
        except StateDirLocked as exc:
            self.log.error("daemon.already_running", pid=exc.pid, state_dir=str(state_dir),
                           config=str(self.config_path), message=str(exc))
            notify.status(f"not started: another selvad (pid {exc.pid}) uses {state_dir}")
            return False
        except OSError as exc:
            raise OSError(f"{self.config_path}:paths.state_dir: cannot lock {state_dir} "
                          f"({exc.strerror or exc}); fix its permissions or the path") from exc
        return True

    def _serve(self) -> int:
        # clips at another rate than the model's need it; probed in a child so that torch
        # never loads into the daemon (idle RSS ~60 MB instead of ~530 MB)
        probe = probe_in_child(weights_dir=self.cfg.paths.weights_dir)
        stack, self.weights_problems = probe.stack, probe.weights
        if not stack.ok:
            self.log.error("daemon.audio_stack_broken", problem=stack.problem, fix=stack.fix,
                           pair=stack.pair)
            notify.status(f"not started: {stack.problem}")
            return EXIT_BROKEN_INSTALL
        self._prepare_dirs()
        if not self._open_queue():
            return EXIT_BROKEN_INSTALL
        if not self._check_executor():
            return EXIT_BROKEN_INSTALL
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
            signal.signal(signal.SIGHUP, self.request_reload)
        self.log.info("daemon.starting", config=str(self.config_path), pid=os.getpid(),
                      device=self.cfg.device.text, executor=self.cfg.executor.kind,
                      settle_seconds=self.cfg.watch.settle_seconds)
        self._requeue_interrupted()
        self._start_companions()
        self._start_watching()
        self.scheduler = build_scheduler(**self._schedule_kwargs())
        notify.ready(self._status_text())
        self.log.info("daemon.ready", dataset_roots=[str(r) for r in self.cfg.paths.dataset_roots],
                      jobs_dir=str(self.cfg.paths.jobs_dir))
        while not self._stop:
            self.wake.wait(TICK)
            self.wake.clear()
            self._tick()
        return self._shutdown()

    def _open_queue(self) -> bool:
        """Open the queue database, recovering a damaged one (selvad.runs.recovery); False
        (logged, one line with the fix) when nothing can restore it."""
        db = self.cfg.paths.queue_path
        try:
            self.queue, rec = open_queue(db, self.cfg.paths.output_root)
        except QueueUnrecoverable as exc:
            self.log.error("daemon.queue_unrecoverable", path=str(db), message=str(exc))
            notify.status(f"not started: {exc}")
            return False
        if rec.problem is not None:
            self.log.warning("queue.recovered", path=str(db), problem=rec.problem,
                             moved_to=str(rec.moved_to),
                             restored_from=str(rec.restored_from or "") or None,
                             runs_from_output_tree=rec.runs_restored)
        elif rec.runs_restored:
            self.log.warning("queue.runs_restored", path=str(db), runs=rec.runs_restored)
        self._backup_queue()
        return True

    def _backup_queue(self) -> None:
        try:
            backup(self.queue)  # type: ignore[arg-type]
        except (OSError, sqlite3.Error) as exc:
            self.log.warning("queue.backup_failed", path=str(self.cfg.paths.queue_path),
                             message=str(exc), fix="check the state directory's free space")

    def _start_companions(self) -> None:
        """Start the web page (the only companion); one that cannot start is logged and
        recorded as a `page` problem, which `selvad status` shows, and the daemon goes on."""
        for comp in self.companions:
            name = type(comp).__name__
            try:
                comp.start()
            except OSError as exc:
                self.log.error("daemon.companion_failed", companion=name, message=str(exc))
                self.events.watched.record("page", name, self.cfg.web.listen,
                                           problem=f"not served: {exc}")
            else:
                self.events.watched.forget("page", name)

    def _tick(self) -> None:
        """One pass of the main loop; any error is logged and the daemon goes on."""
        steps = (self._maybe_reload, self._drain_inbox, self.requests.handle_pending,
                 self.events.due_training, self._check_current, self._release_retries,
                 self._maybe_start_next,
                 self._heartbeat)
        for step in steps:
            if self._stop:
                return
            try:
                step()
            except Exception as exc:  # the daemon never dies of one bad event
                # no exception message: it may quote a job file or a clip's metadata
                self.log.error("daemon.tick_failed", step=step.__name__,
                               error=type(exc).__name__, frames=code_frames(exc))

    def _drain_inbox(self) -> None:
        while self.inbox:
            item = self.inbox.popleft()
            if item == "retention":
                self.retention()
            else:
                self.events.handle(item)

    # -- runs ----------------------------------------------------------------------------

    @property
    def runner(self) -> Runner:
        """The runs in progress and the executor they run on (built on first use)."""
        if self._runner is None:
            self._runner = Runner(self, self.make_executor())
        return self._runner

    def make_executor(self) -> Executor:
        """The executor of `[executor]` and `[device]`; DeviceError (its message says the
        fix) when this machine cannot serve them."""
        ex = self.cfg.executor
        if ex.kind == "ray":
            from selvad.runs.rayexec import RayExecutor

            return RayExecutor.connect(self.cfg)
        return LocalExecutor(resolve_slots(self.cfg.device.name))

    def _check_executor(self) -> bool:
        """Build the executor before READY; False (logged with the fix) when it cannot be."""
        try:
            runner = self.runner
        except DeviceError as exc:
            text, path = str(exc), str(self.config_path)
            message = (text if text.startswith(path) else
                       f"{path}:{text}" if text.startswith("device.") else f"{path}: {text}")
            self.log.error("daemon.bad_executor", config=path, problem=text, message=message)
            notify.status(f"not started: {exc}")
            return False
        ex = runner.executor
        if isinstance(ex, LocalExecutor):
            self.log.info("daemon.executor", kind=ex.kind, slots=[s.label for s in ex.slots])
        else:
            self.log.info("daemon.executor", kind=ex.kind, address=self.cfg.executor.address,
                          resource=self.cfg.executor.resource,
                          capacity=getattr(ex, "capacity", lambda: None)())
        return True

    def _release_retries(self) -> None:
        """End the automatic-retry waits that are over by the monotonic clock."""
        assert self.queue is not None
        for run_id in self.retry_waits.due(self.queue.retry_waiting()):
            if self.queue.release_retry(run_id):
                self.log.info("run.retry_due", run_id=run_id)

    def _pick(self) -> Run | None:
        return self.runner.pick()

    def _maybe_start_next(self) -> None:
        if not self._stop:
            self.runner.start_next()

    def _check_current(self) -> None:
        if self._runner is not None:
            before = len(self.running)
            self._runner.check()
            if len(self.running) < before:  # a run ended: keep a consistent copy
                self._backup_queue()

    def retention(self) -> None:
        """Prune old step checkpoints of finished runs (and old run directories when
        `retention.keep_runs_per_job` is set); never the final/best adapter."""
        from selvad.runs.rundir import prune_job_runs

        assert self.queue is not None
        r = self.cfg.retention
        finished = self.queue.list_runs(states=["done", "failed", "cancelled"])
        removed = 0
        for run in finished:
            if run.kind == "train" and run.output_dir and Path(run.output_dir).is_dir():
                removed += len(prune_run_dir(run.output_dir, r.keep_last_checkpoints,
                                             finished=run.state == "done",
                                             keep_spread=r.keep_spread))
        for job in sorted({run.job for run in finished}):
            ids = {run.id for run in finished if run.job == job}
            removed += len(prune_job_runs(self.cfg, job, ids, r.keep_runs_per_job))
        forgotten = 0
        if self.hashes is not None:
            forgotten = self.hashes.prune_missing(progress=lambda done, total: self.keepalive(
                f"retention: checking {done}/{total} hashed files"))
        self.log.info("retention.done", removed=removed, hashes_forgotten=forgotten)

    # -- enqueueing (used by the event and request handlers) ----------------------------

    def manifest(self, job: Job) -> dict[str, Any]:
        """The current manifest of `job`'s dataset (see `dataset_manifest`)."""
        return self.dataset_manifest(job.dataset_dir, job.dataset)

    def dataset_manifest(self, path: Path, name: str) -> dict[str, Any]:
        """The current manifest of the dataset directory `path` (called `name`). Content
        hashes are cached in `state_dir` (kept across restarts); the cache opens on first
        use."""
        if self.hashes is None:
            self.hashes = FileHashCache(self.cfg.paths.hash_cache_path, on_problem=lambda message:
                                        self.log.warning("hashes.problem", error=message,
                                                         fix="nothing is lost; files are hashed again if needed"))
        return dataset_manifest(path, cache=self.hashes, progress=lambda done, total:
                                self.keepalive(f"hashing {name}: {done}/{total} files"))

    def enqueue(self, spec: RunSpec, manifest: dict[str, Any], reason: str,
                force: bool = False, explicit: bool = False) -> Run | None:
        """Queue `spec` on `manifest` (None when the same run exists); logs the new run.

        Automatic triggers (file events) never revive a failed or cancelled run of the
        same identity; an `explicit` request (`selvad enqueue`) runs those again."""
        assert self.queue is not None
        run = self.queue.enqueue(spec.job, spec.dataset, spec.config.to_dict(), manifest,
                                 priority=spec.priority, kind=spec.kind, sweep_id=spec.sweep_id,
                                 config_hash=spec.config_hash, force=force,
                                 rerun_states=("failed", "cancelled") if explicit else ())
        if run is None:
            self.log.debug("run.duplicate", job=spec.job, dataset=spec.dataset, kind=spec.kind,
                           sweep_id=spec.sweep_id, manifest_hash=manifest_hash(manifest)[:12])
            return None
        self.log.info("run.state", state="queued", run_id=run.id, job=run.job,
                      dataset=run.dataset, kind=run.kind, sweep_id=run.sweep_id, reason=reason,
                      files=len(manifest.get("files", [])))
        self.wake.set()
        return run

    # -- systemd -------------------------------------------------------------------------

    def _status_text(self) -> str:
        """STATUS: the runs, and what an off-loop validation is doing."""
        text, busy = self.runner.status_text(), self.events.background_activity()
        return f"{text}; {busy}" if busy else text

    def _feed_watchdog(self, now: float) -> None:
        interval = notify.watchdog_interval()
        if interval is not None and now - self._last_watchdog >= min(interval / 2, 1.0):
            notify.watchdog()
            self._last_watchdog = now

    def keepalive(self, activity: str) -> None:
        """Called by long work on the main thread (hashing, validating a large dataset):
        feeds the systemd watchdog, which would otherwise restart a daemon that is only
        busy, and shows `activity` as STATUS (both rate-limited)."""
        now = time.monotonic()
        self._feed_watchdog(now)
        if now - self._last_status[1] >= STATUS_EVERY:
            notify.status(activity)
            self._last_status = (activity, now)

    def _heartbeat(self) -> None:
        now = time.monotonic()
        self._feed_watchdog(now)
        text, sent = self._last_status
        if now - sent >= STATUS_EVERY:
            new = self._status_text()
            if new != text:
                notify.status(new)
            self._last_status = (new, now)

    def _maybe_reload(self) -> None:
        if not self._reload:
            return
        self._reload = False
        notify.reloading()
        self.log.info("daemon.reloading", config=str(self.config_path))
        try:
            new = load_config(self.config_path)
        except Exception as exc:  # keep running on the old config
            problems = getattr(exc, "problems", [str(exc)])
            self.log.error("config.reload_failed", problems=problems,
                           fix="fix the config file and reload again; the old config stays")
            notify.ready(self._status_text())
            return
        self._reload_executor(new)
        self.cfg = new
        # the weights may have been fixed (the reload is how a user says so): check again
        self.weights_problems = probe_in_child(weights_dir=new.paths.weights_dir).weights
        setup_logging(new.logging.format, new.logging.level)
        self._prepare_dirs()
        for watcher in self._watchers():
            watcher.stop()
        self.render_watcher = None
        self.jobs.clear()  # reloaded by the new watcher's first scan ([defaults] may differ)
        self._start_watching()
        if self.scheduler is not None:
            reschedule(self.scheduler, **self._schedule_kwargs())
        notify.ready(self._status_text())
        self.log.info("daemon.reloaded", config=str(self.config_path),
                      running=sorted(self.running))

    def _reload_executor(self, new: DaemonConfig) -> None:
        """New device slots apply to the next runs (running ones keep theirs); a device
        list this machine cannot serve is logged and the old slots stay. The executor
        kind, the Ray address and the [web] section change at the next start only (a
        warning says so)."""
        if new.web != self.cfg.web:  # the page's server is bound at start
            self.log.warning("config.web_changed", fix="restart the daemon (systemctl restart "
                             "selvad) to serve the page with the new [web] section")
        if new.executor != self.cfg.executor:
            self.log.warning("config.executor_changed", fix="restart the daemon (systemctl "
                             "restart selvad) to use the new [executor] section")
        elif new.device != self.cfg.device and isinstance(self.runner.executor, LocalExecutor):
            try:
                self.runner.executor.slots = resolve_slots(new.device.name)
            except DeviceError as exc:
                self.log.error("config.reload_failed", problems=[f"{self.config_path}: {exc}"],
                               fix="fix [device] and reload again; the old slots stay")

    # -- shutdown ------------------------------------------------------------------------

    def _shutdown(self) -> int:
        notify.stopping()
        self.log.info("daemon.stopping", running=sorted(self.running))
        for watcher in self._watchers():
            watcher.stop()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        for comp in self.companions:
            comp.stop()
        if self._runner is not None:
            self._runner.stop_all(lambda: self._feed_watchdog(time.monotonic()), STOP_TIMEOUT)
        if self.hashes is not None:
            self.hashes.close()
        self.log.info("daemon.stopped")
        return 0


def code_frames(exc: BaseException) -> list[str]:
    """Where `exc` was raised, as "file:line in function" frames (innermost last), without
    its message or source lines: what a log may keep of an error about user data."""
    return [f"{f.filename}:{f.lineno} in {f.name}"
            for f in traceback.extract_tb(exc.__traceback__)]


def active_runs(queue: RunQueue) -> list[Run]:
    """Runs currently extracting or training (what `selvad status` shows as current)."""
    return queue.list_runs(states=ACTIVE)


def run(config_path: Path | str) -> int:
    """Run the daemon with the config at `config_path` until stopped; returns the exit
    status. Config errors raise ConfigError (the CLI prints them and exits 2)."""
    return Daemon(config_path).run()
