"""The worker: one queued run executed in a child process, its events fed into the queue.

A run never executes inside the daemon: `RunProcess.start()` prepares the run directory and
starts ``python -m selvad.runs.child <train|extract> ...`` (a trampoline into `selva_engine.cli`
that makes the child checkpoint and stop if the daemon dies, see selvad.runs.child) in its own
process group; the child also writes `validation.toml` (so the daemon's main loop never
re-validates a large dataset itself). A crash, an out-of-memory kill or a bad dataset
therefore fails that run only. The child's stdout is one JSON event per line (see
selva_engine.cli); a reader thread turns them into queue state changes (`extracting` ->
`training` on "train_start"), progress rows and structured log events, and stderr goes to
`worker.log`. The reader never waits for the queue database (a `RowWriter` thread writes
and retries, see selvad.runs.rowwriter), so the child never blocks on a full pipe. A
child silent for `STALL_AFTER` seconds is logged once as `run.stalled` and noted on its
row for `selvad status`. When the child exits the run ends:

=========  ================================================================================
exit 0     done (then retention prunes old step checkpoints; final/best are never touched)
exit 3     queued again when the daemon is stopping (resumed from its checkpoint next time),
           cancelled when a cancel was asked for (SIGTERM makes the trainer save the
           current step first); a SIGTERM before training began counts the same
SIGKILL    not sent by the daemon (the OOM killer): queued again after a delay, a bounded
           number of times, then failed with the fix (see selvad.runs.exits)
otherwise  failed: the last "error" event's message (or how the process ended and the last
           exception line of stderr) as one line, plus the path of the run's log
=========  ================================================================================

Layout of the run directories: see selvad.runs.rundir.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selvad.config.daemon import DaemonConfig
from selvad.log import get_logger
from selvad.runs.child import signal_group
from selvad.runs.exits import (
    PROCESS,
    REASON_LIMIT,
    describe_exit,
    kill_cause,
    last_exception_line,
    one_line,
    oom_kill_count,
    sigkill_verdict,
)
from selvad.runs.queue import Run, RunQueue
from selvad.runs.render import RenderProblem, choose_adapter, render_spec, renders_dir
from selvad.runs.retention import prune_run_dir
from selvad.runs.rowwriter import RowWriter
from selvad.runs.rundir import (
    atomic_write,
    child_device,
    run_config,
    run_dir_for,
    state_dir_for,
    update_latest,
    write_run_toml,
)
from selvad.runs.slots import Slot
from selvad.runs.sweeps import update_sweep_summary

__all__ = ["EXIT_INTERRUPTED", "STALL_AFTER", "Outcome", "RunProcess", "describe_exit",
           "last_exception_line", "one_line"]

EXIT_INTERRUPTED = 3  # selva_engine.cli: a checkpoint of the current step was saved
STDERR_TAIL = 20  # lines of stderr searched for the exception of a crashed run
# seconds without one line from the child before its run counts as stalled: far above the
# longest silence of a healthy child (loading a large model, a checkpoint's evaluation and
# sample on a CPU, a log interval of slow steps)
STALL_AFTER = 30 * 60.0


@dataclass(frozen=True)
class Outcome:
    """How a run ended: the new queue state, the error (failed only) and the exit code."""

    state: str  # "done" | "failed" | "cancelled" | "queued"
    error: str | None = None  # failed: why; queued by an automatic retry: the reason
    exit_code: int | None = None
    retry_at: float | None = None  # unix seconds: an automatic retry starts then


class RunProcess:
    """One run of `queue` (already claimed: state `extracting`) in a child process.

    `start()` writes the run's files and starts the child; `cancel()` / `interrupt()` ask
    it to stop (SIGTERM: checkpoint, then exit 3); `check_stall()` notes a silent child;
    `wait()` returns the Outcome once the child is gone and the queue row is final. The
    reader thread hands every queue write for the run to its RowWriter, the final one too.
    """

    stall_after = STALL_AFTER  # seconds; tests lower it

    def __init__(self, run: Run, queue: RunQueue, cfg: DaemonConfig,
                 slot: Slot | None = None) -> None:
        self.run, self.queue, self.cfg = run, queue, cfg
        if slot is None:  # the single `[device] name`, as before device slots
            device, env = child_device(cfg.device.name[0])
            slot = Slot(cfg.device.name[0], device, env)
        self.slot = slot
        self.log = get_logger("selvad.runs.worker", run_id=run.id, job=run.job, dataset=run.dataset,
                              kind=run.kind, device=slot.label)
        self.is_train = run.kind == "train"
        self.out_dir = run_dir_for(cfg, run) if self.is_train else state_dir_for(cfg, run)
        # where the run's results are (the queue's output_dir): a render's is the job's renders/
        self.results_dir = renders_dir(cfg, run.job) if run.kind == "render" else self.out_dir
        self.private = state_dir_for(cfg, run)
        self.proc: subprocess.Popen[bytes] | None = None
        self.cancel_requested = False
        self.stop_requested = False
        self.state = run.state
        self.step: int | None = run.step
        self.total_steps: int | None = run.total_steps
        self.last_error: str | None = None
        self.last_output = time.monotonic()  # when the child last wrote a line
        self.stalled = False
        self._stall_lock = threading.Lock()  # the reader clears what the main loop sets
        self._oom_before: int | None = None
        self._reader: threading.Thread | None = None
        self._writer: RowWriter | None = None
        self._decided: Outcome | None = None
        self._outcome: Outcome | None = None
        self._lock = threading.Lock()

    # -- start ---------------------------------------------------------------------------

    def _command(self) -> list[str]:
        trampoline = [sys.executable, "-m", "selvad.runs.child", "--parent", str(os.getpid())]
        if self.is_train:
            cfg = run_config(self.run, self.cfg, self.out_dir, device=self.slot.device)
            cfg_json = self.private / "config.json"
            atomic_write(cfg_json, json.dumps(cfg.to_dict(), indent=2) + "\n")
            write_run_toml(self.out_dir / "run.toml", self.run, cfg)
            # the child validates the dataset into validation.toml: slow on large datasets,
            # so not here on the daemon's main loop; every option is read from the JSON file
            return [*trampoline, "--validation", str(self.out_dir / "validation.toml"),
                    "train", "--config_json", str(cfg_json), "--json"]
        if self.run.kind == "render":
            return [*trampoline, "render", "--spec", str(self._render_spec()), "--json"]
        return [*trampoline, "extract", "--data_dir", str(self.run.config["data_dir"]),
                "--variant", str(self.run.config["variant"]),
                "--selva_dir", str(self.cfg.paths.weights_dir or ""),
                "--cache_dir", str(self.cfg.paths.effective_cache_dir),
                "--device", self.slot.device, "--prepare", json.dumps(self._prepare_overrides()), "--json"]

    def _render_spec(self) -> Path:
        """Choose the render's adapter now and write the child's spec; RenderProblem (one
        sentence with the fix) when it cannot start."""
        choice = choose_adapter(self.cfg, self.queue, self.run)
        if choice is None:
            raise RenderProblem(f"job {self.run.job} has no finished training run to render with; "
                                f"`selvad enqueue {self.run.job} --render` once one is done")
        spec = render_spec(self.cfg, self.run, choice, self.slot.device)
        path = self.private / "render.json"
        atomic_write(path, json.dumps(spec, indent=2) + "\n")
        self.log.info("run.render_adapter", adapter=spec["adapter"], strength=spec["strength"],
                      video=spec["video"], chosen_by=choice.used.get("chosen_by"))
        return path

    def _prepare_overrides(self) -> dict:
        """The job's `[prepare]` values (TrainConfig's prepare_* fields set), for the extract child."""
        return {k[len("prepare_"):]: v for k, v in self.run.config.items()
                if k.startswith("prepare_") and v is not None}

    def start(self) -> None:
        """Prepare the run directory (run.toml, `latest` link for training runs) and start
        the child (which writes validation.toml). Raises OSError when the child cannot be
        started; the caller records that as a failed run."""
        self._prepare_dirs()
        cmd = self._command()
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS")}
        env.update(self.slot.env)  # CUDA_VISIBLE_DEVICES: the child sees its own GPU only
        env["PYTHONUNBUFFERED"] = "1"
        self._oom_before = oom_kill_count()
        with open(self.out_dir / "worker.log", "ab") as err:
            self._log_header(err, cmd)
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=err, env=env, start_new_session=True)
        atomic_write(self.private / "child.pid", f"{self.proc.pid}\n")
        self.log.info("run.child_started", pid=self.proc.pid, output_dir=str(self.out_dir),
                      attempt=self.run.attempts)
        self._follow(self._read, f"run-{self.run.id}")

    def _prepare_dirs(self) -> None:
        """The run's output and private directories, and `latest` for a training run."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.private.mkdir(parents=True, exist_ok=True)
        if self.is_train:
            update_latest(self.out_dir.parent, self.run.id)

    def _log_header(self, log: Any, cmd: list[str], where: str = "") -> None:
        """The line worker.log gets before each attempt's output: when, which, the command."""
        log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} attempt {self.run.attempts}"
                  f"{where}: {' '.join(cmd)}\n".encode())
        log.flush()

    def _follow(self, reader: Any, name: str, *args: Any) -> None:
        """Start following the started run: its queue writer and the reader thread."""
        self.last_output = time.monotonic()
        self._writer = RowWriter(self.queue, self.run.id, self.log)
        self._reader = threading.Thread(target=reader, args=args, name=name, daemon=True)
        self._reader.start()

    # -- events --------------------------------------------------------------------------

    def _read(self) -> None:
        """The reader thread: drain the child's stdout to the end, whatever goes wrong
        with one line (the child would block on a full pipe if this thread died)."""
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            try:
                raw = self.proc.stdout.readline()
            except (OSError, ValueError):
                self.log.exception("run.read_failed")
                return
            if not raw:
                return
            try:
                self._on_line(raw.decode("utf-8", "replace").strip())
            except Exception:  # never fatal: log it (the child_event field is ours)
                self.log.exception("run.event_failed", child_event=raw[:200].decode("utf-8", "replace"))

    def _on_line(self, line: str) -> None:
        if not line:
            return
        with self._stall_lock:
            self.last_output = time.monotonic()
            if self.stalled:
                self.stalled = False
                self.log.info("run.unstalled", step=self.step)
                self._write().note(None)
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            event = None
        if not isinstance(event, dict) or "event" not in event:
            self.log.debug("run.child_output", line=line[:500])
            return
        self._on_event(event)

    def _write(self) -> RowWriter:
        assert self._writer is not None
        return self._writer

    def _on_event(self, ev: dict[str, Any]) -> None:
        kind = ev["event"]
        if kind == "train_start":
            self.total_steps, self.step = ev.get("steps"), ev.get("step")
            if self.slot.device == "auto" and ev.get("device"):  # name the device it chose
                self._write().device(f"auto: {ev['device']}")
            if self.state == "extracting":
                self._write().state("training", output_dir=str(self.out_dir))
                self.state = "training"
                self.log.info("run.state", state="training", step=self.step,
                              steps=self.total_steps, torch_device=ev.get("device"))
            self._write().progress(step=self.step, total_steps=self.total_steps)
        elif kind == "progress":
            self.step, self.total_steps = ev.get("step"), ev.get("steps")
            self._write().progress(step=self.step, total_steps=self.total_steps,  # smoothed:
                                   loss=ev.get("smoothed_loss", ev.get("loss")),  # one figure
                                   samples_per_s=ev.get("samples_per_s"),
                                   eta_s=ev.get("eta_s"))
            self.log.info("run.progress", step=self.step, steps=self.total_steps,
                          loss=ev.get("loss"), smoothed_loss=ev.get("smoothed_loss"),
                          lr=ev.get("lr"), samples_per_s=ev.get("samples_per_s"),
                          eta_s=ev.get("eta_s"))
        elif kind == "resumed":
            self.step = ev.get("step")
            self.log.info("run.resumed", step=self.step, checkpoint=ev.get("checkpoint"))
        elif kind == "checkpoint":
            self.log.info("run.checkpoint", step=ev.get("step"), path=ev.get("path"),
                          sample=ev.get("sample"), val_loss=ev.get("val_loss"))
        elif kind == "warning":
            self.log.warning("run.warning", message=ev.get("message"))
        elif kind == "error":
            self.last_error = str(ev.get("message") or ev.get("error") or "unknown error")
            self.log.error("run.child_error", error=self.last_error)
        else:
            self._on_other_event(kind, ev)

    def _on_other_event(self, kind: str, ev: dict[str, Any]) -> None:
        fields = {k: v for k, v in ev.items() if k not in ("event", "time")}
        if kind == "validation" and ev.get("errors"):
            # the daemon validated before queueing; the data changed since
            self.log.warning("run.validation_errors", **fields)
        elif kind in ("extract_start", "extract_done", "video_extract_start", "video_extract_done",
                      "render_start", "render_done", "interrupted", "done"):
            self.log.info(f"run.{kind}", **fields)
        else:  # extract_progress, validation without errors and anything new
            self.log.debug(f"run.{kind}", **fields)

    def check_stall(self, now: float | None = None) -> bool:
        """Called from the main loop: True (and logged once as `run.stalled`, noted on the
        run's row for `selvad status`) when the child has written nothing for
        `stall_after` seconds; a later line clears it."""
        with self._stall_lock:
            now = time.monotonic() if now is None else now
            silent = now - self.last_output
            if self.stalled or self._writer is None or silent < self.stall_after:
                return self.stalled
            self.stalled = True
            self._note_stall(silent)
            return True

    def _note_stall(self, silent: float) -> None:
        minutes = max(1, round(silent / 60))
        self.log.warning("run.stalled", silent_s=round(silent), step=self.step, pid=self.pid,
                         fix=f"see {self.out_dir / 'worker.log'}; `selvad cancel {self.run.id}` "
                             "stops it")
        self._write().note(f"stalled: no output from the {self.run.kind} process for "
                           f"{minutes} min (step {self.step or 0}); see "
                           f"{self.out_dir / 'worker.log'} or `selvad cancel {self.run.id}`")

    # -- control -------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The child's pid (None before start)."""
        return self.proc.pid if self.proc is not None else None

    def _signal(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            signal_group(self.proc.pid, sig)  # SIGCONT first for SIGTERM: a stopped child
        except ProcessLookupError:
            pass

    def cancel(self) -> None:
        """Ask the child to stop for good: SIGTERM (it checkpoints); the run ends cancelled."""
        self.cancel_requested = True
        self.log.info("run.cancelling", pid=self.pid)
        self._signal(signal.SIGTERM)

    def interrupt(self) -> None:
        """Ask the child to stop for a daemon shutdown: SIGTERM; the run goes back to queued."""
        self.stop_requested = True
        self.log.info("run.interrupting", pid=self.pid)
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the child's process group (after a stop timeout)."""
        self.log.warning("run.killing", pid=self.pid)
        self._signal(signal.SIGKILL)

    # -- end -----------------------------------------------------------------------------

    def poll(self) -> Outcome | None:
        """The Outcome if the child has exited and its row is final, else None; no waiting."""
        return self.wait(0)

    def wait(self, timeout: float | None = None) -> Outcome | None:
        """Wait up to `timeout` seconds (None = forever) for the child and for its final
        queue write (retried while the database is busy), then (once) run retention and
        return the Outcome; None while either is still pending."""
        with self._lock:
            if self._outcome is not None:
                return self._outcome
            assert self._writer is not None
            deadline = None if timeout is None else time.monotonic() + timeout
            code = self._wait_exit(timeout)
            if code is None:
                return None
            if self._decided is None:
                if self._reader is not None:
                    self._reader.join(timeout=30)  # the last events (error, done) are read
                self._decided = self._decide(code)
                out_dir = str(self.results_dir) if self.run.kind != "extract" else None
                self._writer.final(self._decided.state, self._decided.error, out_dir,
                                   self._decided.retry_at)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._writer.flush(left):
                return None  # the database is busy: the writer retries; so does the caller
            self._writer.close()
            self._outcome = self._finish(self._decided)
            return self._outcome

    def _wait_exit(self, timeout: float | None) -> int | None:
        """The child's exit status, waiting up to `timeout` seconds; None while it runs."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def _decide(self, code: int) -> Outcome:
        stopped = code == EXIT_INTERRUPTED or (
            code == -signal.SIGTERM and (self.cancel_requested or self.stop_requested))
        if code == 0:
            return Outcome("done", exit_code=code)
        if stopped and self.cancel_requested:
            return Outcome("cancelled", exit_code=code)
        if stopped:
            return Outcome("queued", exit_code=code)
        log = self.out_dir / "worker.log"
        if code == -signal.SIGKILL:
            if self.cancel_requested or self.stop_requested:  # our own kill after a timeout
                return Outcome("cancelled" if self.cancel_requested else "queued", exit_code=code)
            process = PROCESS[self.run.kind]
            state, why, retry_at = sigkill_verdict(process, kill_cause(self._oom_before,
                                                                       oom_kill_count()),
                                                   self.run.auto_retries)
            return Outcome(state, error=f"{why}; the full log is {log}", exit_code=code,
                           retry_at=retry_at)
        if self.last_error:  # whole: the fix is often at its end
            error = one_line(self.last_error, REASON_LIMIT)
        else:
            cause = last_exception_line(self._read_stderr_tail())
            error = describe_exit(code, self.run.kind) + (f" ({one_line(cause, REASON_LIMIT)})"
                                                         if cause else "")
        return Outcome("failed", error=f"{error}; the full log is {log}", exit_code=code)

    def _read_stderr_tail(self) -> list[str]:
        try:
            with open(self.out_dir / "worker.log", "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 8192))
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return []
        return [ln for ln in lines if ln.strip()][-STDERR_TAIL:]

    def _finish(self, outcome: Outcome) -> Outcome:
        """After the final row is written: pid file, the log line, retention, sweeps."""
        (self.private / "child.pid").unlink(missing_ok=True)
        fields: dict[str, Any] = {"state": outcome.state, "exit_code": outcome.exit_code,
                                  "step": self.step}
        if outcome.error:
            fields["error"] = outcome.error
        if outcome.retry_at is not None:
            fields["retry_in_s"] = round(outcome.retry_at - time.time())
        (self.log.error if outcome.state == "failed" else self.log.info)("run.state", **fields)
        if self.is_train and outcome.state in ("done", "failed", "cancelled"):
            self.prune(finished=outcome.state == "done")
            self._update_sweep()
        return outcome

    def _update_sweep(self) -> None:
        """Rewrite the job's sweep summary when this run belongs to a sweep (never fatal)."""
        try:
            run = self.queue.get(self.run.id)
            result = update_sweep_summary(self.cfg, self.queue, run) if run else None
        except Exception as exc:  # a broken summary must not fail the finished run
            self.log.warning("sweep.summary_failed", error=f"{type(exc).__name__}: {exc}")
            return
        if result:
            rec = result["recommendation"]
            event = "sweep.done" if result["complete"] else "sweep.updated"
            self.log.info(event, summary=result["path"], recommended=rec.get("id"),
                          reason=rec.get("reason"), strength_range=rec.get("strength_range"))

    def prune(self, finished: bool) -> list[Path]:
        """Retention for this run's directory (never the final/best adapter or, when not
        `finished`, the resume point); returns the deleted paths."""
        r = self.cfg.retention
        removed = prune_run_dir(self.out_dir, r.keep_last_checkpoints, finished, r.keep_spread)
        if removed:
            self.log.info("run.pruned", files=[p.name for p in removed])
        return removed
