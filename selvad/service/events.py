"""What the daemon does when a job file or a dataset changes (main-loop side of the watcher).

- Job file created/modified: `load_job`; a broken file (or one that is not a regular
  file, e.g. a FIFO) is logged with every problem, recorded for `selvad status` and
  ignored (other jobs go on). A valid job's dataset is validated (once its files have
  settled: a job loaded mid-copy waits for the dataset event) and its extraction run
  queued; when `trigger.on_change` is true its training runs are queued once the file has
  been left alone for `settle_minutes` (saving again restarts the wait; 0 queues at once).
  With `on_change = false` only `selvad enqueue` queues training. Deleted: logged and
  forgotten.
- Dataset changed: validated once per variant its jobs use (the report is logged; an
  invalid dataset queues nothing, and the runs already queued for it wait, noted
  "waiting: dataset has errors", until it is valid again). Extraction is queued at once;
  jobs with `trigger.on_change` get their training queued when the dataset has been quiet
  for `settle_minutes` (a per-job debounce, fractional minutes allowed).
- Newest wins: when a job's training runs are queued, its queued runs that never started
  and no longer match the job file or the dataset (an edited config, new clips, a
  `[[sweep]]` replacing the plain run) are cancelled with the note "superseded by RUN".
- Nothing changed, nothing said: the job file's sha256 and the dataset's manifest hash are
  kept in the queue database (selvad.runs.watched), so the first scan after a restart or
  SIGHUP that finds them unchanged logs `change=unchanged` and arms no training.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selvad.config.jobs import Job, JobError, load_job
from selvad.datasets.report import forget_last_report, save_last_report
from selvad.datasets.validate import ValidationReport, validate_dataset
from selvad.datasets.watch import DatasetEvent, JobEvent
from selvad.runs.queue import WAITING, Run, manifest_hash
from selvad.runs.watched import WatchedTable
from selvad.service import offloop
from selvad.service.context import DaemonContext
from selvad.service.offloop import Key, ValidationDone
from selvad.service.renders import RenderEvent, RenderHandler

__all__ = ["EventHandler", "report_fields"]

MAX_LOGGED_FINDINGS = 20  # per report; the rest are counted


def report_fields(report: ValidationReport) -> dict[str, Any]:
    """Log fields of a validation report: counts, findings as "file: message (fix: ...)"."""
    def lines(findings: list[Any]) -> list[str]:
        out = [f"{f.file or '(dataset)'}: {f.message}" + (f" (fix: {f.fix})" if f.fix else "")
               for f in findings[:MAX_LOGGED_FINDINGS]]
        if len(findings) > MAX_LOGGED_FINDINGS:
            out.append(f"... and {len(findings) - MAX_LOGGED_FINDINGS} more")
        return out

    fields: dict[str, Any] = {"dataset_dir": report.dataset, "variant": report.variant,
                              "clips": len(report.clips), "error_count": report.error_count,
                              "warning_count": report.warning_count}
    if report.errors:
        fields["errors"] = lines(report.errors)
    if report.warnings:
        fields["warnings"] = lines(report.warnings)
    if report.advice:
        fields["advice"] = list(report.advice)
    return fields


class EventHandler:
    """Turns watcher events into validation, log events and queued runs for `daemon`."""

    def __init__(self, daemon: DaemonContext) -> None:
        self.d = daemon
        self.log = daemon.log
        self.train_due: dict[str, float] = {}  # job name -> monotonic deadline
        self.waiting: set[str] = set()  # jobs loaded while their dataset was settling
        self._reports: dict[Key, ValidationReport] = {}
        self._failed: dict[Key, str] = {}  # a background validation that raised: its problem
        self._background = offloop.BackgroundValidator(daemon.post)
        self.renders = RenderHandler(daemon)  # the render folders' videos

    @property
    def watched(self) -> WatchedTable:
        """What the daemon last saw of each job file and dataset (in the queue database)."""
        assert self.d.queue is not None
        return WatchedTable(self.d.queue)

    # -- dispatch ------------------------------------------------------------------------

    def handle(self, event: Any) -> None:
        """Handle one DatasetEvent or JobEvent (unknown items are logged and dropped)."""
        if isinstance(event, JobEvent):
            self.on_job(event)
        elif isinstance(event, DatasetEvent):
            self.on_dataset(event)
        elif isinstance(event, ValidationDone):
            self.on_validated(event)
        elif isinstance(event, RenderEvent):
            self.renders.on_folder(event)
        else:
            self.log.warning("daemon.unknown_event", item=repr(event)[:200])

    # -- validation ----------------------------------------------------------------------

    def check(self, job: Job, then: Callable[[], None] | None = None
              ) -> tuple[bool | None, dict[str, Any]]:
        """Validate `job`'s dataset for its variant; returns (ok, manifest).

        A report is computed and logged once per (dataset, variant, manifest hash); an
        unchanged dataset is not read again. A missing directory is not ok. The queued runs
        of the jobs on an invalid dataset are held (they wait), and released when it is
        valid again; the dataset's problem is recorded for `selvad status`. A heavy dataset
        (`offloop.OFF_LOOP_BYTES`) is validated on a worker thread: ok is None until its
        report is in, and `then` runs on the main loop once it is.
        """
        try:
            manifest = self.d.manifest(job)
        except OSError as exc:
            self.log.error("dataset.unreadable", dataset=job.dataset, job=job.name,
                           path=str(job.dataset_dir), error=str(exc),
                           fix="create the dataset directory or fix `dataset` in the job file")
            self._hold(job, f"dataset {job.dataset_dir} cannot be read ({exc}); create it or "
                            "fix `dataset` in the job file")
            return False, {"files": []}
        key = (str(job.dataset_dir), job.base.variant, manifest_hash(manifest))
        if key in self._failed:
            self._hold(job, self._failed[key])
            return False, manifest
        report = self._reports.get(key)
        if report is None:
            def validate() -> ValidationReport:
                return validate_dataset(job.dataset_dir, job.base.variant, config=job.base,
                                        targets=job.base.target, progress=progress)

            def progress(done: int, total: int) -> None:
                self._progress(key, f"validating {job.dataset}: {done}/{total} clips")

            if self._later(key, validate, manifest, then, job.dataset):
                return None, manifest
            report = validate()
            self._record(key, report, job.dataset)
        self._hold(job, None if report.ok else _problem(job, report))
        return report.ok, manifest

    def validating(self, job: Job) -> bool:
        """Whether `job`'s dataset is being validated off the main loop now."""
        return any(k[0] == str(job.dataset_dir) and k[1] == job.base.variant
                   for k in self._background.keys())

    def _progress(self, key: Key, activity: str) -> None:
        """A validation's progress: on the main loop (which it keeps busy) the watchdog is fed
        and STATUS shows it; on a worker thread it is kept for the heartbeat's STATUS."""
        if threading.current_thread() is threading.main_thread():
            self.d.keepalive(activity)
        else:
            self._background.note(key, activity)

    def background_activity(self) -> str:
        """What the off-loop validations are doing, for STATUS ("" when none runs)."""
        return self._background.activity()

    def _later(self, key: Key, validate: Callable[[], ValidationReport], manifest: dict[str, Any],
               then: Callable[[], None] | None, name: str) -> bool:
        """Start (or join) the off-loop validation of a heavy dataset; False: do it inline."""
        size = offloop.dataset_bytes(manifest)
        if not self._background.pending(key) and size <= offloop.OFF_LOOP_BYTES:
            return False
        if not self._background.pending(key):
            self.log.info("dataset.validating", dataset=name, dataset_dir=key[0], variant=key[1],
                          files=len(manifest.get("files", [])), bytes=size,
                          note="validated off the main loop; what waits for it goes on after")
        self._background.start(key, validate, then)
        return True

    def _record(self, key: Key, report: ValidationReport, name: str) -> None:
        """Keep and log a new report of the dataset `key[0]` for variant `key[1]`."""
        self._reports[key] = report
        self._keep(report, key[0])
        if report.ok:
            self.log.info("dataset.valid", dataset=name, **report_fields(report))
        else:
            blocked = sorted(j.name for j in self.jobs_for(Path(key[0])) if j.base.variant == key[1])
            self.log.error("dataset.invalid", dataset=name, jobs_blocked=blocked,
                           **report_fields(report))

    def on_validated(self, done: ValidationDone) -> None:
        """A background validation ended: record its report, then run what waited for it."""
        report, error, after = self._background.take(done.key)
        name = os.path.basename(done.key[0].rstrip(os.sep))
        if error is not None:
            self.log.error("dataset.validation_failed", dataset=name, dataset_dir=done.key[0],
                           variant=done.key[1], error=type(error).__name__)
            self._failed[done.key] = (f"dataset {done.key[0]} could not be validated "
                                      f"({type(error).__name__}); see the daemon's log, fix or "
                                      f"remove the file it names, then save the job file again")
        elif done.key[1].startswith(offloop.UNUSED):
            self._reports[done.key] = report  # reported by the continuation, with its advice
        elif report is not None:
            self._record(done.key, report, name)
        for step in after:
            step()

    def _keep(self, report: ValidationReport, dataset_dir: str) -> None:
        """Keep `report` for the web page's dataset list (a failed write is logged only)."""
        try:
            save_last_report(report, self.d.cfg.paths.state_dir, os.path.abspath(dataset_dir))
        except OSError as exc:
            self.log.warning("dataset.report_not_kept", dataset_dir=dataset_dir, error=str(exc))

    def _hold(self, job: Job, problem: str | None) -> None:
        """Record `job`'s dataset problem (None: none) and hold or release the queued runs
        of the jobs on it; logs each run whose note changed."""
        self.watched.record("dataset", os.path.abspath(job.dataset_dir), str(job.dataset_dir),
                            problem=problem)
        assert self.d.queue is not None
        names = self._names(job) + [job.extract_run().job]
        for run_id in self.d.queue.hold(names, held=problem is not None):
            self.log.info("run.waiting" if problem else "run.released", run_id=run_id,
                          dataset=job.dataset, jobs=names,
                          note=WAITING if problem else "dataset valid again")

    def _names(self, job: Job) -> list[str]:
        return sorted(j.name for j in self.jobs_for(job.dataset_dir) if
                      j.base.variant == job.base.variant) or [job.name]

    def jobs_for(self, dataset_dir: Path) -> list[Job]:
        """Known valid jobs whose dataset is `dataset_dir`, by name."""
        want = os.path.abspath(dataset_dir)
        return sorted((j for j in self.d.jobs.values() if os.path.abspath(j.dataset_dir) == want),
                      key=lambda j: j.name)

    # -- jobs ----------------------------------------------------------------------------

    def load(self, path: Path) -> Job | None:
        """Load the job file at `path`; log and return None when it is invalid (a symbolic
        link is: the page lists regular files only, and a link may lead out of jobs_dir)."""
        try:
            if path.is_symlink():
                raise JobError([f"{path}: is a symbolic link; job files must be regular files "
                                "in the jobs directory (replace the link with a copy of its "
                                "target)"])
            return load_job(path, self.d.cfg)
        except JobError as exc:
            problems = list(exc.problems)
            self.log.error("job.invalid", job=path.stem, path=str(path), problems=problems,
                           fix="fix the job file; the daemon picks it up when saved")
        except (OSError, ValueError) as exc:
            problems = [str(exc)]
            self.log.error("job.invalid", job=path.stem, path=str(path), problems=problems)
        fix = "fix the job file, the daemon picks it up when saved"
        # every problem, one a line: status and the page show the first line as the summary
        self.watched.record("job", path.stem, str(path), problem=(
            f"{problems[0] if problems else 'invalid'}; {fix}" if len(problems) <= 1 else
            "\n".join([f"{len(problems)} problems; {fix}:", *problems])))
        return None

    def on_job(self, ev: JobEvent) -> None:
        """A job file changed: (re)load it and queue its runs (training once the file has
        settled), or forget it."""
        if ev.change == "deleted":
            self.forget_job(ev)
            return
        job = self.load(ev.path)
        if job is None:
            self.d.jobs.pop(ev.name, None)
            self.train_due.pop(ev.name, None)
            return
        self.d.jobs[job.name] = job
        old, new = self.watched.fingerprint("job", job.name), _file_digest(job.path)
        change = "unchanged" if old == new else ("modified" if old else ev.change)
        missing = self.weights_problem(job)
        self.watched.record("job", job.name, str(job.path), fingerprint=new,
                            problem=f"{missing} (then reload the daemon: SIGHUP)" if missing else None)
        self.log.info("job.loaded", job=job.name, change=change, dataset=job.dataset,
                      variant=job.base.variant, runs=len(job.resolve_runs()),
                      on_change=job.trigger.on_change)
        if missing:  # its runs would fail at the start of training: hold the job
            self.d.jobs.pop(job.name, None)
            self.train_due.pop(job.name, None)
            self.log.error("job.weights_missing", job=job.name, variant=job.base.variant,
                           problem=missing, fix="download the missing files, or set `variant` "
                           "to one the weights can run; then reload the daemon (SIGHUP)")
            return
        self.renders.job_loaded(job)
        if self.settling(job.dataset_dir):  # never validate half-copied clips
            self.waiting.add(job.name)
            self.log.info("job.waiting_for_dataset", job=job.name, dataset=job.dataset,
                          note="files are still being copied; queued once they settle")
            return
        if change == "unchanged" and job.name in self.train_due:
            return  # touched, not edited: the settle time already running stays
        if change == "unchanged" or not job.trigger.on_change or not job.trigger.settle_minutes:
            self._queue_loaded(job, reason=f"job file {change}")
            return
        def queue_and_arm() -> None:
            if self.d.jobs.get(job.name) is job and self.queue_job(
                    job, reason=f"job file {change}", train=False, then=queue_and_arm) is not None:
                self._arm(job, why="job file saved")

        queue_and_arm()

    def weights_problem(self, job: Job) -> str:
        """Why the configured weights cannot run `job`'s variant ("" when they can, or when
        the daemon has not checked them)."""
        return (self.d.weights_problems or {}).get(job.base.variant, "")

    def forget_job(self, ev: JobEvent) -> None:
        """A job file was deleted: forget the job (its queued runs stay)."""
        self.d.jobs.pop(ev.name, None)
        self.train_due.pop(ev.name, None)
        self.waiting.discard(ev.name)
        self.watched.forget("job", ev.name)
        self.log.info("job.removed", job=ev.name, path=str(ev.path),
                      note="queued runs of this job stay queued; cancel them if unwanted")

    def _arm(self, job: Job, why: str) -> None:
        """(Re)start `job`'s settle time; its training is queued when it ends."""
        seconds = job.trigger.settle_minutes * 60.0
        self.train_due[job.name] = time.monotonic() + seconds
        self.log.info("job.training_due", job=job.name, dataset=job.dataset,
                      in_seconds=round(seconds, 1), why=why)

    def _queue_loaded(self, job: Job, reason: str) -> None:
        """Queue what a job file event may queue: everything for an `on_change` job, only
        the extraction (the cache is filled ahead) for a job trained on request only."""
        self.queue_job(job, reason=reason, train=job.trigger.on_change)
        if not job.trigger.on_change:
            self.log.info("job.manual", job=job.name,
                          note=f"trigger.on_change = false: no training is queued until "
                               f"`selvad enqueue {job.name}`")

    def settling(self, dataset_dir: Path) -> bool:
        """True while the watcher still waits for files of `dataset_dir` to settle."""
        watcher = self.d.watcher
        if watcher is None:
            return False
        prefix = os.path.abspath(dataset_dir) + os.sep
        return any(p.startswith(prefix) for p in watcher.tracker.pending())

    def queue_job(self, job: Job, reason: str, force: bool = False, train: bool = True,
                  then: Callable[[], None] | None = None) -> list[str] | None:
        """Validate `job`'s dataset and queue its extraction and (with `train`) training
        runs; returns the ids of the training runs queued (empty when all are duplicates or
        `train` is false), None when the dataset is invalid. `force` queues a plain job
        again even when an identical run is done; a sweep's runs are never forced: a
        re-queued sweep skips the runs already done (or queued) and re-runs only failed,
        cancelled or new entries. While a heavy dataset is validated off the main loop this
        returns None and runs again (or runs `then`) once the report is in, unless the job
        was reloaded meanwhile."""
        def again() -> None:
            if self.d.jobs.get(job.name) is job:
                self.queue_job(job, reason, force, train)

        ok, manifest = self.check(job, then=then or again)
        if not ok:
            return None
        self.d.enqueue(job.extract_run(), manifest, reason=reason, explicit=force)
        queued: list[str] = []
        if not train:
            return queued
        specs = job.resolve_runs()
        for spec in specs:
            run = self.d.enqueue(spec, manifest, reason=reason, force=force and not spec.sweep_id,
                                 explicit=force)
            if run is not None:
                queued.append(run.id)
        self._supersede(job, specs, manifest, by=queued[0] if queued else "")
        return queued

    def _supersede(self, job: Job, specs: list[Any], manifest: dict[str, Any], by: str) -> None:
        """Cancel `job`'s queued, never started runs that match neither a current spec nor
        the current manifest ("superseded by RUN")."""
        assert self.d.queue is not None
        mhash = manifest_hash(manifest)
        keep = {(s.sweep_id, s.config_hash, mhash) for s in specs}
        by = by or "the job's current runs"
        for run_id in self.d.queue.supersede(job.name, keep, by):
            self.log.info("run.state", state="cancelled", run_id=run_id, job=job.name,
                          dataset=job.dataset, kind="train", reason=f"superseded by {by}")

    # -- datasets ------------------------------------------------------------------------

    def on_dataset(self, ev: DatasetEvent) -> None:
        """A dataset settled or went away: validate, queue extraction, arm the debounce
        (not when its content is what the daemon saw last: a restart's first scan)."""
        jobs = self.jobs_for(ev.path)
        if ev.change == "removed":
            self.log.info("dataset.removed", dataset=ev.name, path=str(ev.path),
                          jobs=[j.name for j in jobs])
            self.watched.forget("dataset", os.path.abspath(ev.path))
            forget_last_report(self.d.cfg.paths.state_dir, os.path.abspath(ev.path))
            for j in jobs:
                self.train_due.pop(j.name, None)
            return
        changed = self._dataset_changed(ev)
        if changed:
            self.log.info("dataset.changed", dataset=ev.name, path=str(ev.path),
                          files=list(ev.files)[:50], changed=len(ev.files),
                          jobs=[j.name for j in jobs])
        if not jobs and changed:
            self._check_unused(ev)
        self._dataset_jobs(ev, changed)

    def _dataset_jobs(self, ev: DatasetEvent, changed: bool) -> None:
        """What a settled dataset means for the jobs on it: queue extraction once per variant,
        arm or queue training. Waits (and runs again) while a report is still being made."""
        jobs = self.jobs_for(ev.path)
        for job in jobs:
            if self.check(job, then=lambda: self._dataset_jobs(ev, changed))[0] is None:
                return
        seen_variants: set[str] = set()
        for job in jobs:
            ok, manifest = self.check(job)
            if not ok:
                self.waiting.discard(job.name)
                continue
            if job.base.variant not in seen_variants:  # one extraction per variant
                seen_variants.add(job.base.variant)
                self.d.enqueue(job.extract_run(), manifest, reason="dataset changed")
            waited = job.name in self.waiting  # loaded while the clips were still arriving
            self.waiting.discard(job.name)
            if waited and not (job.trigger.on_change and job.trigger.settle_minutes):
                self._queue_loaded(job, reason="job file created; its dataset settled")
            elif job.trigger.on_change and (changed or waited):
                self._arm(job, why="dataset changed")

    def _check_unused(self, ev: DatasetEvent) -> None:
        """Validate a dataset no job names yet (for the variant a new job would get), so its
        problems show in status and on the page before anyone writes a job for it."""
        variant = self._new_job_variant()
        try:
            manifest = self.d.dataset_manifest(ev.path, ev.name)
        except OSError:
            manifest = {"files": []}
        key = (str(ev.path), offloop.UNUSED + variant, manifest_hash(manifest))

        def validate() -> ValidationReport:
            return validate_dataset(ev.path, variant, progress=lambda done, total: self._progress(
                key, f"validating {ev.name}: {done}/{total} clips"))

        def report_later() -> None:
            report = self._reports.pop(key, None)
            if report is not None:
                self._report_unused(ev, variant, report)

        if not self._later(key, validate, manifest, report_later, ev.name):
            self._report_unused(ev, variant, validate())

    def _report_unused(self, ev: DatasetEvent, variant: str, report: ValidationReport) -> None:
        report.advice.insert(0, f"no job uses this dataset yet; write one with `selvad init-job "
                                f"NAME --dataset {ev.name}`")
        self._keep(report, str(ev.path))
        key = os.path.abspath(ev.path)
        self.watched.record("dataset", key, str(ev.path), problem=None if report.ok else (
            f"{report.error_count} error(s) for {variant}: see `selvad validate {ev.path} "
            f"--variant {variant}`"))
        self.log.info("dataset.unused", dataset=ev.name, **report_fields(report))

    def _new_job_variant(self) -> str:
        """The variant `selvad init-job` would give a new job: `[defaults] variant`, else
        large_44k when the weights can run it (or were not checked), else one they can."""
        chosen = self.d.cfg.defaults.get("variant")
        if isinstance(chosen, str):
            return chosen
        problems = self.d.weights_problems or {}
        if not problems.get("large_44k"):
            return "large_44k"
        return next((v for v, why in problems.items() if not why), "large_44k")

    def _dataset_changed(self, ev: DatasetEvent) -> bool:
        """Record the dataset's manifest hash; True unless it is the one recorded before."""
        key = os.path.abspath(ev.path)
        try:
            fingerprint = manifest_hash(self.d.dataset_manifest(ev.path, ev.name))
        except OSError:
            return True
        old = self.watched.get("dataset", key)
        self.watched.record("dataset", key, str(ev.path), fingerprint=fingerprint,
                            problem=old.problem if old else None)
        return old is None or old.fingerprint != fingerprint

    def ready_to_start(self, run: Run) -> bool:
        """Whether the queued `run` may start now. A training run that never started does
        not start while its dataset's files are still settling or while the dataset has
        errors, and it trains on the dataset as it is now: when the files changed since it
        was queued (the change's own event is still on its way), its manifest is brought
        up to date, so run.toml lists exactly the files trained."""
        if run.kind == "render":
            return self.renders.ready(run)
        job = self.d.jobs.get(run.job)
        if run.kind != "train" or run.attempts or job is None or job.dataset != run.dataset:
            return True
        if self.settling(job.dataset_dir):
            return False
        ok, manifest = self.check(job)
        if not ok:
            return False
        assert self.d.queue is not None
        if manifest_hash(manifest) != run.manifest_hash and self.d.queue.refresh_manifest(
                run.id, manifest):
            self.log.info("run.files_updated", run_id=run.id, job=run.job, dataset=run.dataset,
                          files=len(manifest.get("files", [])),
                          note="the dataset changed after the run was queued; it trains on "
                               "the files as they are now")
        return True

    def due_training(self) -> None:
        """Queue the training runs whose dataset has been quiet for their settle time."""
        now = time.monotonic()
        for name in [n for n, t in self.train_due.items() if t <= now]:
            del self.train_due[name]
            job = self.d.jobs.get(name)
            if job is not None:
                self.queue_job(job, reason="settled (trigger.settle_minutes)")


def _file_digest(path: Path) -> str:
    """sha256 of the file at `path` ("" when it cannot be read)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def _problem(job: Job, report: ValidationReport) -> str:
    """One line for `selvad status`: what is wrong with `job`'s dataset and the command."""
    first = report.errors[0] if report.errors else None
    what = f"{first.file or '(dataset)'}: {first.message}" if first else "errors"
    more = f" (and {report.error_count - 1} more)" if report.error_count > 1 else ""
    return (f"{report.error_count} error(s) for {job.base.variant}: {what}{more}; see "
            f"`selvad validate {job.dataset_dir} --variant {job.base.variant}`")
