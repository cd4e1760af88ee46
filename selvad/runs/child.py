"""The child-process side of a run: a trampoline into selva_engine.cli, and orphan clean-up.

The worker starts ``python -m selvad.runs.child --parent PID [--validation TOML]
<train|extract> ...``. The trampoline arms Linux's PR_SET_PDEATHSIG so that the trainer
gets SIGTERM, saves a checkpoint of its current step and exits if the daemon dies (even by
kill -9); with `--validation` it validates the training run's dataset into that file (work
that takes seconds on a large dataset, kept off the daemon's main loop) and reports it as
a "validation" event; then it hands the remaining arguments to `selva_engine.cli.main`
unchanged. `stop_orphan` is the daemon's start-up check that no child of an earlier daemon
still writes into a run's directory.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from selvad.config.daemon import DaemonConfig
from selvad.runs.queue import Run
from selvad.runs.rundir import state_dir_for

__all__ = ["main", "signal_group", "stop_orphan", "write_validation"]

_PR_SET_PDEATHSIG = 1


def signal_group(pgid: int, sig: int) -> None:
    """Send `sig` to process group `pgid`. SIGTERM is preceded by SIGCONT: a stopped child
    (SIGSTOP, a debugger, `kill -STOP`) would keep SIGTERM pending and never checkpoint, and
    the stop timeout would end in SIGKILL with the steps since the last save lost. Raises
    ProcessLookupError when the group is gone."""
    if sig == signal.SIGTERM:
        os.killpg(pgid, signal.SIGCONT)
    os.killpg(pgid, sig)


def stop_orphan(cfg: DaemonConfig, run: Run, timeout: float = 60.0) -> int | None:
    """Make sure no child of an earlier daemon still works on `run` (found interrupted at
    start-up). A live one (pid file under the run's state dir, command line of this
    trampoline) gets SIGTERM, so it checkpoints, and SIGKILL after `timeout` seconds.
    Returns the pid that was stopped, or None when there was none."""
    pid_file = state_dir_for(cfg, run) / "child.pid"
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        pid_file.unlink(missing_ok=True)
        return None
    if b"selvad.runs.child" not in cmdline and b"selvad.child" not in cmdline:  # also 0.1 children
        pid_file.unlink(missing_ok=True)
        return None
    try:
        signal_group(pid, signal.SIGTERM)
    except ProcessLookupError:
        return None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    pid_file.unlink(missing_ok=True)
    return pid


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie (its parent died too) has already stopped working


def _set_parent_death_signal(parent: int) -> None:
    """Ask Linux to SIGTERM this process when the daemon dies (kill -9 included), so the
    trainer checkpoints and exits instead of training on as an orphan."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return  # not Linux: the daemon's start-up check (stop_orphan) handles orphans
    if os.getppid() != parent:  # the daemon died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


class _PipeGuard:
    """stdout that survives the daemon's death: once the pipe breaks (EPIPE), fd 1 is
    pointed at /dev/null and writing goes on, so the trainer reaches its next step, sees
    the SIGTERM from PR_SET_PDEATHSIG and saves a checkpoint instead of crashing."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def _guard(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
            try:
                return fn(*args)
            except OSError:
                return None

    def write(self, text: str) -> int:
        self._guard(self._stream.write, text)
        return len(text)

    def flush(self) -> None:
        self._guard(self._stream.flush)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _emit(event: dict[str, Any]) -> None:
    print(json.dumps(event, default=str), flush=True)


def write_validation(config_json: Path, out: Path) -> None:
    """Validate the dataset of the training config in `config_json` (the run's JSON) into
    `out` (validation.toml, atomic) and emit a "validation" event on stdout. The clips the
    report leaves out (`[inspect] skip_rejected`) are written into `config_json` as
    `exclude_clips`, so the run trains on what the report says. Never raises: the report is
    informational (the daemon validated before queueing) and must not keep the run from
    training; a failure becomes a "warning" event, its traceback on stderr."""
    try:
        from selva_engine.io import atomic_write_text
        from selva_engine.training.options import TrainConfig
        from selvad.datasets.validate import validate_dataset, write_report

        options = json.loads(config_json.read_text())
        cfg = TrainConfig.from_dict(options)
        report = validate_dataset(cfg.data_dir, cfg.variant, config=cfg, targets=cfg.target)
        write_report(report, out)
        if report.skipped:
            options["exclude_clips"] = sorted(report.skipped)
            atomic_write_text(config_json, json.dumps(options, indent=2) + "\n")
    except Exception as exc:  # never fatal, see above
        traceback.print_exc(file=sys.stderr)
        _emit({"event": "warning", "message": f"could not write {out}: "
                                              f"{type(exc).__name__}: {exc}"})
        return
    first = report.errors[0] if report.errors else None
    _emit({"event": "validation", "path": str(out), "errors": len(report.errors),
           "first": first.message if first else None,
           "file": str(first.file) if first else None})


def _trampoline_options(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """The trampoline's own leading options (--parent, --validation) and the rest."""
    options: dict[str, str] = {}
    while len(argv) >= 2 and argv[0] in ("--parent", "--validation"):
        options[argv[0][2:]] = argv[1]
        argv = argv[2:]
    return options, argv


def _config_json(argv: list[str]) -> Path | None:
    if "--config_json" in argv[:-1]:
        return Path(argv[argv.index("--config_json") + 1])
    return None


def main(argv: list[str]) -> int:
    """`python -m selvad.runs.child --parent PID [--validation TOML] <train|extract> ...`:
    arm the parent-death signal, write validation.toml when asked, then run
    selva_engine.cli with the remaining arguments; returns its status."""
    options, argv = _trampoline_options(argv)
    if "parent" in options:
        _set_parent_death_signal(int(options["parent"]))
    sys.stdout = _PipeGuard(sys.stdout)
    config_json = _config_json(argv)
    if "validation" in options and config_json is not None:
        write_validation(config_json, Path(options["validation"]))
    from selva_engine.cli import main as engine_main

    return engine_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
