"""The worker: one queued run executed in a child process, its events fed into the queue.

A run never executes inside the daemon: `RunProcess.start()` prepares the run directory and
starts ``python -m selvad.runs.child <train|extract> ...`` (a trampoline into `selva_engine.cli`
that makes the child checkpoint and stop if the daemon dies, see selvad.runs.child) in its own
process group. A crash, an out-of-memory kill or a
bad dataset therefore fails that run only. The child's stdout is one JSON event per line
(see selva_engine.cli); a reader thread turns them into queue state changes
(`extracting` -> `training` on "train_start"), progress rows and structured log events,
and stderr goes to `worker.log`. When the child exits the run ends:

=========  ================================================================================
exit 0     done (then retention prunes old step checkpoints; final/best are never touched)
exit 3     queued again when the daemon is stopping (resumed from its checkpoint next time),
           cancelled when a cancel was asked for (SIGTERM makes the trainer save the
           current step first); a SIGTERM before training began counts the same
otherwise  failed: the last "error" event's message (or how the process ended and the last
           exception line of stderr) as one line, plus the path of the run's log
=========  ================================================================================

Layout of the run directories: see selvad.runs.rundir.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selva_engine.training.options import TrainConfig
from selvad.config.daemon import DaemonConfig
from selvad.log import get_logger
from selvad.runs.queue import Run, RunQueue
from selvad.runs.retention import prune_run_dir
from selvad.runs.rundir import (
    atomic_write,
    child_device,
    run_config,
    run_dir_for,
    state_dir_for,
    update_latest,
    write_run_toml,
)
from selvad.runs.sweeps import update_sweep_summary

__all__ = ["EXIT_INTERRUPTED", "Outcome", "RunProcess", "describe_exit", "last_exception_line",
           "one_line"]

EXIT_INTERRUPTED = 3  # selva_engine.cli: a checkpoint of the current step was saved
STDERR_TAIL = 20  # lines of stderr searched for the exception of a crashed run
MESSAGE_LIMIT = 300  # characters of a failed run's error sentence
_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b(: .*)?$")


@dataclass(frozen=True)
class Outcome:
    """How a run ended: the new queue state, the error (failed only) and the exit code."""

    state: str  # "done" | "failed" | "cancelled" | "queued"
    error: str | None = None
    exit_code: int | None = None


def describe_exit(code: int, kind: str = "train") -> str:
    """Words for a child's exit status (negative = killed by that signal); `kind` is the
    run's kind ("train" or "extract"), so the sentence names the right process."""
    process = "training" if kind == "train" else "extraction"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory? see dmesg)" if -code == signal.SIGKILL else ""
        return f"the {process} process was killed by {name}{hint}"
    return f"the {process} process exited with status {code}"


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """`text` (an exception's message, possibly several lines) as one line of at most
    `limit` characters, for `selvad status`."""
    flat = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def last_exception_line(lines: list[str]) -> str | None:
    """The last 'SomeError: message' line of a traceback in `lines` (stderr), if any."""
    for line in reversed(lines):
        if _EXC_LINE.match(line):
            return line.strip()
    return None


class RunProcess:
    """One run of `queue` (already claimed: state `extracting`) in a child process.

    `start()` writes the run's files and starts the child; `cancel()` / `interrupt()` ask
    it to stop (SIGTERM: checkpoint, then exit 3); `wait()` returns the Outcome once the
    child is gone and the queue row is final. All queue writes for the run happen on the
    reader thread, except the finishing one, done by whichever thread calls `wait()` first.
    """

    def __init__(self, run: Run, queue: RunQueue, cfg: DaemonConfig) -> None:
        self.run, self.queue, self.cfg = run, queue, cfg
        self.log = get_logger("selvad.runs.worker", run_id=run.id, job=run.job, dataset=run.dataset,
                              kind=run.kind)
        self.is_train = run.kind == "train"
        self.out_dir = run_dir_for(cfg, run) if self.is_train else state_dir_for(cfg, run)
        self.private = state_dir_for(cfg, run)
        self.proc: subprocess.Popen[bytes] | None = None
        self.cancel_requested = False
        self.stop_requested = False
        self.state = run.state
        self.step: int | None = run.step
        self.total_steps: int | None = run.total_steps
        self.last_error: str | None = None
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL)
        self._reader: threading.Thread | None = None
        self._outcome: Outcome | None = None
        self._lock = threading.Lock()

    # -- start ---------------------------------------------------------------------------

    def _command(self) -> list[str]:
        trampoline = [sys.executable, "-m", "selvad.runs.child", "--parent", str(os.getpid())]
        if self.is_train:
            cfg = run_config(self.run, self.cfg, self.out_dir)
            cfg_json = self.private / "config.json"
            atomic_write(cfg_json, json.dumps(cfg.to_dict(), indent=2) + "\n")
            write_run_toml(self.out_dir / "run.toml", self.run, cfg)
            self._write_validation(cfg)
            # every option, data_dir included, is read from the JSON file
            return [*trampoline, "train", "--config_json", str(cfg_json), "--json"]
        device, _ = child_device(self.cfg.device.name)
        return [*trampoline, "extract", "--data_dir", str(self.run.config["data_dir"]),
                "--variant", str(self.run.config["variant"]),
                "--selva_dir", str(self.cfg.paths.weights_dir or ""),
                "--cache_dir", str(self.cfg.paths.effective_cache_dir),
                "--device", device, "--json"]

    def _write_validation(self, cfg: TrainConfig) -> None:
        from selvad.datasets.validate import validate_dataset, write_report

        report = validate_dataset(cfg.data_dir, cfg.variant, config=cfg, targets=cfg.target)
        write_report(report, self.out_dir / "validation.toml")
        if not report.ok:  # the daemon validated before queueing; the data changed since
            self.log.warning("run.validation_errors", errors=len(report.errors),
                             first=report.errors[0].message, file=report.errors[0].file)

    def start(self) -> None:
        """Prepare the run directory (run.toml, validation.toml, `latest` link for training
        runs) and start the child. Raises OSError when the child cannot be started; the
        caller records that as a failed run."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.private.mkdir(parents=True, exist_ok=True)
        if self.is_train:
            update_latest(self.out_dir.parent, self.run.id)
        cmd = self._command()
        _, extra_env = child_device(self.cfg.device.name)
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS")}
        env.update(extra_env)
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.out_dir / "worker.log", "ab") as err:
            err.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} attempt {self.run.attempts}: "
                      f"{' '.join(cmd)}\n".encode())
            err.flush()
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=err, env=env, start_new_session=True)
        atomic_write(self.private / "child.pid", f"{self.proc.pid}\n")
        self.log.info("run.child_started", pid=self.proc.pid, output_dir=str(self.out_dir),
                      attempt=self.run.attempts)
        self._reader = threading.Thread(target=self._read, name=f"run-{self.run.id}", daemon=True)
        self._reader.start()

    # -- events --------------------------------------------------------------------------

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = None
            if not isinstance(event, dict) or "event" not in event:
                self.log.debug("run.child_output", line=line[:500])
                continue
            try:
                self._on_event(event)
            except Exception:  # a queue hiccup must not kill the reader (the child would block)
                self.log.exception("run.event_failed", event=event.get("event"))

    def _on_event(self, ev: dict[str, Any]) -> None:
        kind = ev["event"]
        if kind == "train_start":
            self.total_steps, self.step = ev.get("steps"), ev.get("step")
            if self.state == "extracting":
                self.queue.set_state(self.run.id, "training", output_dir=str(self.out_dir))
                self.state = "training"
                self.log.info("run.state", state="training", step=self.step,
                              steps=self.total_steps, device=ev.get("device"))
            self.queue.update_progress(self.run.id, step=self.step, total_steps=self.total_steps)
        elif kind == "progress":
            self.step, self.total_steps = ev.get("step"), ev.get("steps")
            self.queue.update_progress(self.run.id, step=self.step, total_steps=self.total_steps,
                                       loss=ev.get("loss"), samples_per_s=ev.get("samples_per_s"),
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
        elif kind in ("extract_start", "extract_done", "interrupted", "done"):
            fields = {k: v for k, v in ev.items() if k not in ("event", "time")}
            self.log.info(f"run.{kind}", **fields)
        else:  # extract_progress and anything new
            self.log.debug(f"run.{kind}", **{k: v for k, v in ev.items() if k != "event"})

    # -- control -------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The child's pid (None before start)."""
        return self.proc.pid if self.proc is not None else None

    def _signal(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
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
        """The Outcome if the child has exited (finishing the run), else None; no waiting."""
        return self.wait(0)

    def wait(self, timeout: float | None = None) -> Outcome | None:
        """Wait up to `timeout` seconds (None = forever) for the child; on exit record the
        final state in the queue (once), run retention, and return the Outcome."""
        with self._lock:
            if self._outcome is not None:
                return self._outcome
            assert self.proc is not None
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
            if self._reader is not None:
                self._reader.join(timeout=30)  # the last events (error, done) are read
            self._outcome = self._finish(code)
            return self._outcome

    def _decide(self, code: int) -> Outcome:
        stopped = code == EXIT_INTERRUPTED or (
            code == -signal.SIGTERM and (self.cancel_requested or self.stop_requested))
        if code == 0:
            return Outcome("done", exit_code=code)
        if stopped and self.cancel_requested:
            return Outcome("cancelled", exit_code=code)
        if stopped:
            return Outcome("queued", exit_code=code)
        if code == -signal.SIGKILL and (self.cancel_requested or self.stop_requested):
            return Outcome("cancelled" if self.cancel_requested else "queued", exit_code=code)
        log = self.out_dir / "worker.log"
        if self.last_error:
            error = one_line(self.last_error)
        else:
            cause = last_exception_line(self._read_stderr_tail())
            error = describe_exit(code, self.run.kind) + (f" ({one_line(cause)})" if cause else "")
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

    def _finish(self, code: int) -> Outcome:
        outcome = self._decide(code)
        out_dir = str(self.out_dir) if self.is_train else None
        self.queue.set_state(self.run.id, outcome.state, error=outcome.error, output_dir=out_dir)
        (self.private / "child.pid").unlink(missing_ok=True)
        fields: dict[str, Any] = {"state": outcome.state, "exit_code": code, "step": self.step}
        if outcome.error:
            fields["error"] = outcome.error
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
        removed = prune_run_dir(self.out_dir, self.cfg.retention.keep_last_checkpoints, finished)
        if removed:
            self.log.info("run.pruned", files=[p.name for p in removed])
        return removed
