"""`selvad`: the daemon (`run`) and the commands that talk to it through its state database.

The CLI never talks to the daemon directly: `status`/`runs` read the queue database named by
the config (`--config`, default $SELVAD_CONFIG or /etc/selvad/selvad.toml), and
`enqueue`/`cancel`/`retry` write a request row that the daemon answers at its next tick
(the answer is printed when it comes within `--wait` seconds). Exit status: 0 success,
1 failure (an error the command reports, e.g. a state database that cannot be written),
2 bad arguments (a job name that is a path, a run id that is not an id) or an invalid
config, 141 when the reader of the output went away (`selvad status | head -1`).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from selvad.config.daemon import DEFAULT_CONFIG_PATH, DaemonConfig, default_config_path, load_config
from selvad.config.jobs import check_run_id, job_file
from selvad.config.schema import ConfigError
from selvad.display import eta_text, progress_bar
from selvad.runs.queue import JOB_ACTIONS, STATES, Run, RunQueue
from selvad.runs.statelock import daemon_running
from selvad.runs.watched import WatchedTable

__all__ = ["main"]

OK_RESULTS = ("cancelled", "cancelling", "queued", "may start")  # request answers meaning success
EXIT_BROKEN_PIPE = 128 + 13  # as a command killed by SIGPIPE
FULL_BELOW = 64 * 1024  # bytes free under which a failing state database means "disk full"


def default_config() -> Path:
    """$SELVAD_CONFIG, or /etc/selvad/selvad.toml."""
    return default_config_path()


def _fail(message: str, code: int = 1) -> int:
    print(f"selvad: {message}", file=sys.stderr)
    return code


def _config(args: argparse.Namespace) -> DaemonConfig:
    return load_config(args.config)


def _queue(cfg: DaemonConfig, must_exist: bool = True) -> RunQueue | None:
    path = cfg.paths.queue_path
    if must_exist and not path.exists():
        return None
    return RunQueue(path)


def state_problem(cfg: DaemonConfig, exc: BaseException) -> str:
    """One sentence for a state database that failed with `exc` (sqlite3.Error or OSError):
    what happened to which file and the fix (free space, permissions, a stuck process).

    sqlite says "database or disk is full" when a write does not fit, but only "disk I/O
    error" (or "unable to open") when its -shm/-wal file cannot be created; then the state
    directory's filesystem (free space, read-only flag) and permissions tell why."""
    state, db = cfg.paths.state_dir, cfg.paths.queue_path
    text, code = str(exc).lower(), getattr(exc, "errno", None)
    try:
        fs = os.statvfs(state)
        free, read_only = fs.f_bavail * fs.f_frsize, bool(fs.f_flag & os.ST_RDONLY)
    except OSError:
        free, read_only = None, False
    full = (f"cannot write the state database {db}: the disk holding {state} is full; "
            f"free space in {state} and try again")
    if "full" in text or code in (errno.ENOSPC, errno.EDQUOT):
        return full
    if "locked" in text or "busy" in text:
        return (f"the state database {db} stayed locked by another process; try again, or "
                "stop the process holding it if it is stuck")
    if read_only or code == errno.EROFS:
        return (f"cannot write the state database {db}: {state} is on a read-only filesystem; "
                "remount it read-write or set paths.state_dir to a writable directory")
    if free is not None and free < FULL_BELOW:
        return full
    if "readonly" in text or code in (errno.EACCES, errno.EPERM) or (
            state.is_dir() and not os.access(state, os.W_OK)):
        return (f"cannot write the state database {db}: {state} is not writable for this user; "
                "run the command as the daemon's user (e.g. `sudo -u selvad selvad ...`) or "
                f"make {state} writable")
    return (f"cannot use the state database {db} ({exc}); check free space and permissions "
            f"in {state} and try again")


def _no_db(cfg: DaemonConfig) -> int:
    return _fail(f"no state database at {cfg.paths.queue_path} (has the daemon run with "
                 f"{cfg.path}? start it with `selvad run --config {cfg.path}`)")


# -- commands ------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    """`selvad run`: the daemon itself, until SIGTERM."""
    from selvad.service.daemon import Daemon

    try:
        daemon = Daemon(args.config)
        if daemon.cfg.web.enabled:  # the web page, beside the main loop
            from selvad.web.server import WebServer

            daemon.companions.append(WebServer(daemon.cfg))
        return daemon.run()
    except OSError as exc:
        return _fail(str(exc))


def _run_cells(run: Run) -> list[str]:
    sweep = f"[{run.sweep_id}]" if run.sweep_id else ""
    step = f"{run.step}/{run.total_steps}" if run.step is not None and run.total_steps else "-"
    loss = f"{run.loss:.4f}" if run.loss is not None else "-"
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.created_at))
    return [run.id, run.state, run.kind, run.job + sweep + _rendered(run), step, loss, when]


def _rendered(run: Run) -> str:
    """" (VIDEO)" for a render run: the video it renders."""
    return f" ({Path(run.config.get('video') or '?').name})" if run.kind == "render" else ""


RUN_HEADER = ["run id", "state", "kind", "job", "step", "train loss (smoothed)", "created"]


def _run_lines(runs: Sequence[Run], header: bool = False, indent: str = "") -> list[str]:
    """One line per run, columns as wide as their longest cell (long sweep ids included);
    a run's error or note goes on the line below it."""
    rows = [_run_cells(r) for r in runs]
    widths = [max(len(c) for c in col) for col in zip(RUN_HEADER, *rows, strict=False)]
    right = {4, 5}  # step and loss align right

    def fmt(cells: list[str]) -> str:
        return indent + "  ".join(c.rjust(w) if i in right else c.ljust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    lines = [fmt(RUN_HEADER)] if header else []
    for run, cells in zip(runs, rows, strict=True):
        lines.append(fmt(cells))
        if run.error:
            label = "error" if run.state == "failed" else "note"
            lines.append(f"{indent}    {label}: {run.error.splitlines()[0]}")
    return lines


def _status_follow(args: argparse.Namespace) -> int:
    """`selvad status --follow`: the status redrawn in place every --interval seconds."""
    import contextlib
    import io

    from selvad.display import follow

    def render() -> tuple[int, str]:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = cmd_status(argparse.Namespace(**{**vars(args), "follow": False}))
        stamp = time.strftime("%H:%M:%S")
        return rc, f"selvad status (every {args.interval:g} s, Ctrl-C to stop; {stamp})\n" + buf.getvalue()

    return follow(render, sys.stdout, args.interval)


def cmd_status(args: argparse.Namespace) -> int:
    """`selvad status`: counts per state, the current run with a progress bar, the queue."""
    if getattr(args, "follow", False) and not getattr(args, "json", False):
        return _status_follow(args)
    cfg = _config(args)
    q = _queue(cfg)
    if q is None:
        return _no_db(cfg)
    runs = q.list_runs()
    counts = {s: sum(r.state == s for r in runs) for s in STATES}
    current = [r for r in runs if r.state in ("extracting", "training")]
    shown = _filtered(runs, args)
    queued = [r for r in shown if r.state == "queued"]
    recent = [r for r in shown if r.state in ("done", "failed", "cancelled")]
    recent = recent if args.all or args.state or args.job else recent[-5:]
    problems = WatchedTable(q).problems()
    if args.json:
        print(json.dumps({"config": str(cfg.path), "counts": counts,
                          "current": [r.to_dict() for r in current],
                          "queued": [r.to_dict() for r in queued],
                          "recent": [r.to_dict() for r in recent],
                          "problems": [asdict(p) for p in problems]}, indent=2, default=str))
        return 0
    print("runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    print(_daemon_line(cfg, q))
    for p in problems:  # what blocks training, and where to look; every line of it
        first, *rest = (p.problem or "").splitlines() or [""]
        print(f"problem: {p.kind} {p.name if p.kind == 'job' else p.path}: {first}"
              + (f" ({p.path})" if p.kind == "job" else ""))
        for line in rest:
            print(f"  {line}")
    if not current:
        print("current: none" + (" (idle)" if daemon_running(cfg.paths.state_dir) else ""))
    stopping = _cancelling(q)
    for r in current:
        sweep = f" [{r.sweep_id}]" if r.sweep_id else ""
        where = f"  on {r.device}" if r.device else ""
        state = f"{r.state} (cancelling: saving a checkpoint, then it stops)" \
            if r.id in stopping else r.state
        print(f"current: {r.id}  {r.job}{sweep}{_rendered(r)}  dataset {r.dataset}  {r.kind}  {state}{where}")
        if r.kind == "train" and (saved := last_checkpoint(r.output_dir)):
            print(f"  last checkpoint: step {saved[0]} ({saved[1]})")
        if r.error:  # a note on a live run (e.g. stalled: no output for 30 minutes)
            print(f"  note: {r.error}")
        if r.kind == "train":
            loss = f"  train loss (smoothed) {r.loss:.4f}" if r.loss is not None else ""
            rate = f"  {r.samples_per_s:.1f} samples/s" if r.samples_per_s else ""
            print(f"  {progress_bar(r.step, r.total_steps)}  step {r.step or 0}/"
                  f"{r.total_steps or '?'}{loss}{rate}  {eta_text(r.step, r.total_steps, r.eta_s)}")
    table = _run_lines(queued + recent, indent="  ")  # one alignment for both lists
    if queued:
        print(f"queued ({len(queued)}):")
        print("\n".join(table[:_lines_of(queued)]))
    if recent:
        print("finished:" if args.all or args.state or args.job else "recent:")
        print("\n".join(table[_lines_of(queued):]))
    return 0


def _daemon_line(cfg: DaemonConfig, q: RunQueue) -> str:
    """"daemon: running", or "not running" with the requests it will handle at start."""
    running = daemon_running(cfg.paths.state_dir)
    if running is None:  # no kernel lock table to ask (not Linux)
        return "daemon: unknown (cannot read /proc/locks)"
    if running:
        return "daemon: running"
    waiting = len(q.pending_requests())
    what = f" ({waiting} request{'s' if waiting != 1 else ''} waiting)" if waiting else ""
    return (f"daemon: not running{what}; start it with `systemctl start selvad` or "
            f"`selvad run --config {cfg.path}`")


def _cancelling(q: RunQueue) -> set[str]:
    """Runs the daemon has been asked to stop and answered "cancelling" (still running)."""
    rows = q.connection().execute(
        "SELECT run_id FROM requests WHERE action = 'cancel' AND result LIKE 'cancelling%'")
    return {row[0] for row in rows if row[0]}


def last_checkpoint(output_dir: str | None) -> tuple[int, str] | None:
    """(step, file name) of the newest adapter_stepNNNNN.pt in a run directory, or None."""
    if not output_dir:
        return None
    try:
        names = [p.name for p in Path(output_dir).glob("adapter_step*.pt")]
    except OSError:
        return None
    steps = sorted((int(n[12:-3]), n) for n in names if n[12:-3].isdigit())
    return steps[-1] if steps else None


def _lines_of(runs: Sequence[Run]) -> int:
    return sum(2 if r.error else 1 for r in runs)


def _filtered(runs: list[Run], args: argparse.Namespace) -> list[Run]:
    """`runs` of `--job` (sweep entries included) in the `--state` states."""
    return [r for r in runs if (not args.state or r.state in args.state)
            and (not args.job or r.job == args.job)]


def cmd_runs(args: argparse.Namespace) -> int:
    """`selvad runs JOB`: every run of one job, oldest first."""
    cfg = _config(args)
    q = _queue(cfg)
    if q is None:
        return _no_db(cfg)
    runs = q.list_runs(job=args.job)
    if args.json:
        print(json.dumps([r.to_dict() for r in runs], indent=2, default=str))
        return 0
    if not runs:
        print(f"no runs of job {args.job!r} yet")
        return 0
    print("\n".join(_run_lines(runs, header=True)))
    return 0


def _job_file_problem(path: Path, job: str) -> str:
    """Why the job file `path` cannot be enqueued ("" when it can), without opening it."""
    try:
        if not path.exists():
            return f"no job file {path} (write one with `selvad init-job {job} --dataset DIR`)"
        if not path.is_file():  # a FIFO or a device: the daemon would refuse it unread
            return (f"{path} is not a regular file; replace it with a job file "
                    f"(`selvad init-job {job} --dataset DIR`)")
    except OSError as exc:
        return f"cannot look at job file {path} ({exc.strerror or exc}); check its permissions"
    return ""


def _request(args: argparse.Namespace, action: str, run_id: str | None = None,
             job: str | None = None) -> int:
    cfg = _config(args)
    try:  # a job is a name in the jobs directory, never a path; a run id is an id
        path = job_file(cfg.paths.jobs_dir, job) if job is not None else None
        if run_id is not None:
            check_run_id(run_id)
    except ValueError as exc:
        return _fail(str(exc), 2)
    if path is not None:
        problem = _job_file_problem(path, str(job))
        if problem:
            return _fail(problem)
    q = _queue(cfg, must_exist=action in JOB_ACTIONS)
    if q is None:
        return _no_db(cfg)
    if run_id is not None and q.get(run_id) is None:
        return _fail(f"no run with id {run_id!r} (see `selvad runs JOB` or `selvad status`)")
    if getattr(args, "current", False) and run_id is not None:
        run = q.get(run_id)
        job = run.job if run is not None else None
    req_id = q.request(action, run_id=run_id, job=job)
    if daemon_running(cfg.paths.state_dir) is False:
        print(f"recorded ({action} request {req_id}); the daemon is not running, it will act "
              f"at next start (`systemctl start selvad` or `selvad run --config {cfg.path}`)")
        return 0
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        req = q.get_request(req_id)
        if req is not None and req.handled_at is not None:
            print(req.result or "done")
            return 0 if (req.result or "").startswith(OK_RESULTS) else 1
        time.sleep(0.2)
    print(f"request {req_id} ({action}) recorded; no answer from the daemon within "
          f"{args.wait:g} s (is it running? `systemctl status selvad`); it is handled when "
          "the daemon runs")
    return 0


def cmd_init_job(args: argparse.Namespace) -> int:
    """`selvad init-job NAME --dataset DIR`: a commented job file in the jobs directory."""
    from selvad.config.jobcheck import choose_variant
    from selvad.config.templates import start_note, write_job_file

    cfg = _config(args)
    try:
        variant, note = choose_variant(cfg, args.variant)
        path = write_job_file(cfg.paths.jobs_dir, args.name, args.dataset, variant)
    except FileExistsError:
        return _fail(f"{cfg.paths.jobs_dir / (args.name + '.toml')} exists already; edit it "
                     "or choose another name")
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    print(f"wrote {path}" + (f"\nnote: {note}" if note else "")
          + f"\n{start_note(path, cfg)}\n(check the dataset first: "
          f"selvad validate {args.dataset} --variant {variant} --config {cfg.path}; "
          f"the job file: selvad check-job {path} --config {cfg.path})")
    return 0


def _check_job(args: argparse.Namespace) -> int:
    """`selvad check-job FILE`: see selvad.config.jobcheck."""
    from selvad.config.jobcheck import cmd_check_job

    return cmd_check_job(args)


def cmd_demo(args: argparse.Namespace) -> int:
    """`selvad demo [DIR]`: see selvad.demo."""
    from selvad.demo import run_demo

    return run_demo(Path(args.dir), steps=args.steps, weights=args.weights, variant=args.variant,
                    keep=args.keep)


def cmd_web_url(args: argparse.Namespace) -> int:
    """`selvad web-url`: the page's link with its token (see selvad.web.access)."""
    from selvad.web.access import ensure_token, page_link, served_url

    cfg = _config(args)
    try:
        print(page_link(served_url(cfg), ensure_token(cfg)))
    except OSError as exc:
        return _fail(str(exc))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """`selvad doctor`: environment checks (see selvad.doctor); exit 1 when any is a problem."""
    from selvad.doctor import format_checks, run_checks

    # an explicit --config or $SELVAD_CONFIG is checked even when missing (that is a problem);
    # the built-in default only when it exists
    default = default_config_path()
    explicit = args.config is not None or bool(os.environ.get("SELVAD_CONFIG"))
    path = args.config or default if explicit or default.exists() else None
    checks = run_checks(path)
    sys.stdout.write(format_checks(checks))
    return 1 if any(c.status == "problem" for c in checks) else 0


# -- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The `selvad` argument parser (every subcommand takes --config)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=default_config(),
                        help="daemon config file (default: $SELVAD_CONFIG or "
                             f"{DEFAULT_CONFIG_PATH})")
    p = argparse.ArgumentParser(prog="selvad", description="SelVA LoRA training daemon.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", parents=[common], help="run the daemon (what systemd starts)")
    doc = sub.add_parser("doctor", help="check Python, torch/torchaudio, CUDA, soundfile, the "
                         "config, weights and disk space")
    doc.add_argument("--config", type=Path, default=None,
                     help="daemon config file (default: $SELVAD_CONFIG, or "
                          f"{DEFAULT_CONFIG_PATH} when it exists)")
    v = sub.add_parser("validate", help="check a dataset directory", add_help=False)
    v.add_argument("rest", nargs=argparse.REMAINDER)
    x = sub.add_parser("export", help="write a dataset's clips as .npz + .flac for ComfyUI-SelVA's "
                       "trainer", add_help=False)
    x.add_argument("rest", nargs=argparse.REMAINDER)
    s = sub.add_parser("status", parents=[common], help="queue overview and the current run")
    s.add_argument("--json", action="store_true")
    s.add_argument("--all", action="store_true", help="every finished run, not the last 5")
    s.add_argument("--state", action="append", choices=STATES,
                   help="only runs in this state (repeatable)")
    s.add_argument("--job", help="only runs of this job")
    s.add_argument("--follow", "-f", action="store_true",
                   help="redraw the status in place until Ctrl-C (like watch)")
    s.add_argument("--interval", type=float, default=2.0,
                   help="seconds between redraws with --follow (default 2)")
    r = sub.add_parser("runs", parents=[common], help="runs of one job")
    r.add_argument("job")
    r.add_argument("--json", action="store_true")
    for name, what, helptext in (("enqueue", "job", "queue a job's runs now"),
                                 ("cancel", "run", "cancel a queued or running run"),
                                 ("retry", "run", "queue a failed/cancelled run again")):
        c = sub.add_parser(name, parents=[common], help=helptext)
        c.add_argument(what, help="job name" if what == "job" else "run id")
        c.add_argument("--wait", type=float, default=10.0,
                       help="seconds to wait for the daemon's answer (default 10)")
        if name == "enqueue":
            c.add_argument("--render", action="store_true",
                           help="render every video of the job's render folder again, with the "
                                "adapter chosen now (a newer recommendation reaches old renders so)")
        if name == "retry":
            c.add_argument("--current", action="store_true",
                           help="run the job file's current config (default: the config "
                                "the run ran, resuming its checkpoint)")
    i = sub.add_parser("init-job", parents=[common], help="write a commented job file")
    i.add_argument("name")
    i.add_argument("--dataset", required=True, help="dataset name or directory")
    i.add_argument("--variant", default=None,
                   help="model variant (default: large_44k when the configured weights can "
                        "run it, else one they can run)")
    cj = sub.add_parser("check-job", parents=[common],
                        help="check a job file (a path or a job name) as the daemon would, "
                             "and its variant's weights")
    cj.add_argument("job", help="job file path, or the name of a job in the jobs directory")
    im = sub.add_parser("import-sweep", help="a ComfyUI-SelVA experiments.json -> a job file "
                        "with [[sweep]] entries")
    im.add_argument("file", help="the LoRA Scheduler's experiments JSON file")
    im.add_argument("--dataset", required=True, help="dataset name (or directory) to train on")
    im.add_argument("--variant", default=None, help="model variant (default: the daemon's)")
    im.add_argument("--output", default=None, help="write the job file here (refused if it "
                    "exists; default: print it)")
    sub.add_parser("web-url", parents=[common], help="print the web page's link with its token")
    d = sub.add_parser("demo", help="train a tiny adapter end to end with the real daemon")
    d.add_argument("dir", nargs="?", default="selvad-demo")
    d.add_argument("--steps", type=int, default=100, help="training steps (default 100)")
    d.add_argument("--weights", default=os.environ.get("SELVA_DIR", ""),
                   help="real SelVA weights directory (default $SELVA_DIR; none = tiny model)")
    d.add_argument("--variant", default="", help="variant of --weights (e.g. small_16k)")
    d.add_argument("--keep", action="store_true", help="reuse DIR if it exists")
    for name in ("train", "sample"):
        e = sub.add_parser(name, help=f"selva-{name} (the engine's command line)", add_help=False)
        e.add_argument("rest", nargs=argparse.REMAINDER)
    return p


def cmd_import_sweep(args: argparse.Namespace) -> int:
    """`selvad import-sweep FILE --dataset NAME`: print (or write) the job file; 2 when the
    file cannot be imported, each problem on its own line."""
    from selvad.config.sweepimport import SweepImportError, import_experiments

    try:
        text = import_experiments(args.file, args.dataset, args.variant)
    except SweepImportError as exc:
        print("selvad import-sweep: cannot import:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    if args.output is None:
        sys.stdout.write(text)
        return 0
    out = Path(args.output)
    if os.path.lexists(out):
        return _fail(f"{out} exists; choose another --output or remove it first")
    from selva_engine.io import atomic_write_text

    atomic_write_text(out, text)
    print(f"wrote {out}: {text.count('id = ')} sweep entries; the daemon picks it up when it "
          "lies in the jobs directory")
    return 0


def _state_command(handler: Callable[[argparse.Namespace], int]
                   ) -> Callable[[argparse.Namespace], int]:
    """`handler` (a command that uses the state database) with its database failures (a full
    disk, a read-only directory, a lock held too long) said in one sentence, exit 1."""
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except BrokenPipeError:
            raise
        except (sqlite3.Error, OSError) as exc:
            return _fail(state_problem(_config(args), exc))

    return run


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in ("validate", "export", "train", "sample"):  # own parsers, own --help
        if argv[0] == "export":
            from selvad.datasets.export import main as export_main

            return export_main(argv[1:])
        if argv[0] == "validate":
            from selvad.datasets.validate import main as validate_main

            return validate_main(argv[1:])
        from selva_engine import cli as engine

        return engine.train_main(argv[1:]) if argv[0] == "train" else engine.sample_main(argv[1:])
    args = build_parser().parse_args(argv)
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": cmd_run, "doctor": cmd_doctor, "init-job": cmd_init_job, "demo": cmd_demo,
        "check-job": _check_job,
        "import-sweep": cmd_import_sweep,
        "web-url": cmd_web_url,
        "status": _state_command(cmd_status), "runs": _state_command(cmd_runs),
        "enqueue": _state_command(lambda a: _request(a, "render" if a.render else "enqueue", job=a.job)),
        "cancel": _state_command(lambda a: _request(a, "cancel", run_id=a.run)),
        "retry": _state_command(lambda a: _request(a, "retry", run_id=a.run)),
    }
    try:
        return handlers[args.command](args)
    except ConfigError as exc:
        print("selvad: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2


def _silence_stdout() -> None:
    """Point stdout at /dev/null: the interpreter flushes it again at exit, and a second
    BrokenPipeError there would print a traceback-like warning."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # not a real file descriptor (tests capture stdout)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `selvad` console script; returns the exit status.

    Output into a pipe whose reader went away (`selvad status | head -1`) ends the command
    quietly with EXIT_BROKEN_PIPE, as a command killed by SIGPIPE."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _dispatch(argv)
        sys.stdout.flush()  # a broken pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
