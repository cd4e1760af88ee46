"""CLI requests (rows in the queue database) answered by the daemon's main loop.

`selvad cancel|retry|enqueue` write a request row; the daemon handles it at its next tick
and stores a one-line result the CLI prints. Actions:

- cancel RUN: a queued run becomes `cancelled`; the running one gets SIGTERM, saves a
  checkpoint and ends `cancelled`; a finished run is left alone.
- retry RUN: a `failed` or `cancelled` run goes back to `queued` with the config it ran
  (same id and directory: it resumes from its newest checkpoint); the answer says so, and
  says when the job file has changed since. A retry row that names the run's job
  (`selvad retry RUN --current`) runs the job file's current config instead: a new run
  (the old one keeps its config), or the same run when the config is unchanged. A done run
  is not retried (enqueue its job).
- enqueue JOB: the job file is (re)loaded, its dataset validated and its training runs
  queued even if the same runs exist already (an explicit request).
- skip RUN: a queued training run may start outside the training windows.
- render JOB: every video of the job's render folder is rendered again with the adapter
  chosen now (`selvad enqueue JOB --render`, the page's button): how a newer recommendation
  reaches the renders.

A row is not trusted: a job that is not a job name (e.g. `../elsewhere/job`, which would
read a file outside the jobs directory) and a run id that is not an id are refused with an
answer saying so; a job file that is not a regular file (a FIFO) is refused unread.
"""

from __future__ import annotations

from pathlib import Path

from selvad.config.jobs import RunSpec, check_run_id, job_file
from selvad.runs.queue import JOB_ACTIONS, TERMINAL, Request, Run
from selvad.runs.rundir import run_dir_for
from selvad.service.context import DaemonContext

__all__ = ["RequestHandler"]


class RequestHandler:
    """Answers pending CLI requests for `daemon`; each answer is one short line."""

    def __init__(self, daemon: DaemonContext) -> None:
        self.d = daemon
        self.log = daemon.log

    def handle_pending(self) -> None:
        """Handle every pending request, oldest first, and mark each handled."""
        assert self.d.queue is not None
        for req in self.d.queue.pending_requests():
            try:
                result = self._refusal(req) or getattr(self, f"_{req.action}")(req)
            except Exception as exc:  # answer the CLI instead of leaving it waiting
                self.log.exception("request.failed", action=req.action, run_id=req.run_id,
                                   job=req.job)
                result = f"error: {exc}"
            self.d.queue.mark_handled(req.id, result)
            self.log.info("request.handled", action=req.action, run_id=req.run_id, job=req.job,
                          result=result)

    def _refusal(self, req: Request) -> str:
        """Why `req` is refused before acting on it ("" when it is not): the row may have
        been written by anything that can write the database, so a job must be a job name
        (never a path) and a run id must be an id."""
        try:
            if req.action in JOB_ACTIONS or req.job is not None:
                job_file(self.d.cfg.paths.jobs_dir, req.job)
            if req.action not in JOB_ACTIONS:
                check_run_id(req.run_id)
        except ValueError as exc:
            return f"refused: {exc}"
        return ""

    def _cancel(self, req: Request) -> str:
        q = self.d.queue
        assert q is not None and req.run_id
        run = q.get(req.run_id)
        if run is None:
            return f"no run with id {req.run_id!r} (see `selvad runs JOB`)"
        cur = self.d.running.get(run.id)
        if cur is not None:
            cur.cancel()
            return f"cancelling {run.id} on {cur.slot.label}: it saves a checkpoint and stops"
        if run.state in TERMINAL:
            return f"run {run.id} is already {run.state}"
        q.set_state(run.id, "cancelled")
        self.log.info("run.state", state="cancelled", run_id=run.id, job=run.job,
                      dataset=run.dataset, kind=run.kind, reason="cancel requested")
        return f"cancelled {run.id}"

    def _retry(self, req: Request) -> str:
        q = self.d.queue
        assert q is not None and req.run_id
        run = q.get(req.run_id)
        if run is None:
            return f"no run with id {req.run_id!r} (see `selvad runs JOB`)"
        if run.state == "done":
            return f"run {run.id} is done; `selvad enqueue {run.job}` trains the job again"
        if run.state not in ("failed", "cancelled"):
            return f"run {run.id} is {run.state}; only failed or cancelled runs can be retried"
        spec, problem = self._current_spec(run)
        moved = self._clips_moved(run)
        if req.job is not None and spec is not None and (spec.config_hash != run.config_hash
                                                         or moved):
            return self._retry_current(run, spec)
        if req.job is not None and problem:
            return f"not retried: {problem}"
        if moved:
            return (f"not retried: the clips of dataset {run.dataset} changed since {run.id} "
                    f"saved its last checkpoint ({moved}), so it cannot resume; `selvad retry "
                    f"{run.id} --current` starts a fresh run on the current clips")
        q.set_state(run.id, "queued")
        self.log.info("run.state", state="queued", run_id=run.id, job=run.job,
                      dataset=run.dataset, kind=run.kind, reason="retry requested")
        self.d.wake.set()
        resumes = self._resume_phrase(run)
        if req.job is not None:
            return (f"queued {run.id} again: the job file's current config is the one it ran "
                    f"({resumes})")
        changed = spec is not None and spec.config_hash != run.config_hash
        return (f"queued {run.id} again with the config it ran ({resumes})"
                + (f"; the job file has changed since: `selvad retry {run.id} "
                   "--current` runs its current config" if changed else ""))

    def _clips_moved(self, run: Run) -> str:
        """For a training run that would resume: which clips were added or removed since it
        was queued ("" when none, or when it starts from step 0 anyway). A resume needs the
        checkpoint's clips (the trainer refuses others, after minutes of extraction)."""
        job = self.d.jobs.get(run.job)
        if run.kind != "train" or job is None or not self._resume_phrase(run).startswith("it resumes"):
            return ""
        try:
            now = _clip_stems(self.d.manifest(job))
        except OSError:
            return ""
        then = _clip_stems(run.manifest)
        added, removed = len(now - then), len(then - now)
        return ", ".join(part for part in (f"{added} added" if added else "",
                                           f"{removed} removed" if removed else "") if part)

    def _resume_phrase(self, run: Run) -> str:
        """Where a retried run starts: from its newest step checkpoint, or from step 0 when
        its run directory (or every checkpoint in it) is gone."""
        if run.kind != "train":
            return "it extracts again; features already cached are kept"
        out = Path(run.output_dir) if run.output_dir else run_dir_for(self.d.cfg, run)
        if not out.is_dir():
            return f"it starts from step 0: its run directory {out} is gone"
        if not any(out.glob("adapter_step*.pt")):
            return f"it starts from step 0: {out} holds no adapter_stepNNNNN.pt checkpoint"
        return "it resumes from its newest checkpoint"

    def _current_spec(self, run: Run) -> tuple[RunSpec | None, str]:
        """The job file's current spec for `run` (same sweep id) and, when there is none,
        why."""
        try:
            path = job_file(self.d.cfg.paths.jobs_dir, run.job)
        except ValueError as exc:
            return None, str(exc)
        if not path.is_file():
            return None, f"no job file {path} (`selvad init-job {run.job} --dataset DIR`)"
        job = self.d.events.load(path)
        if job is None:
            return None, f"job file {path} is invalid (see `selvad status`)"
        self.d.jobs[job.name] = job
        for spec in job.resolve_runs():
            if spec.sweep_id == run.sweep_id:
                return spec, ""
        return None, (f"job file {path} has no sweep entry {run.sweep_id!r} now; "
                      f"`selvad enqueue {run.job}` queues its current runs")

    def _retry_current(self, run: Run, spec: RunSpec) -> str:
        job = self.d.jobs[spec.job]
        ok, manifest = self.d.events.check(job)
        if ok is None:
            return (f"nothing queued yet: dataset {job.dataset_dir} is being validated (a large "
                    f"dataset, off the main loop); run the retry again when the daemon's log says "
                    f"dataset.valid for it")
        if not ok:
            return (f"nothing queued: dataset {job.dataset_dir} has errors "
                    f"(`selvad validate {job.dataset_dir} --variant {job.base.variant}`)")
        new = self.d.enqueue(spec, manifest, reason=f"retry of {run.id} with the current config",
                             force=True, explicit=True)
        if new is None:  # forced, so only a queued or running twin stops it
            return (f"nothing queued: a run with the job file's current config on the same "
                    f"clips is already queued or running (`selvad runs {run.job}`)")
        return (f"queued {new.id} with the job file's current config ({job.path}); {run.id} "
                f"keeps the config it ran")

    def _enqueue(self, req: Request) -> str:
        path = job_file(self.d.cfg.paths.jobs_dir, req.job)
        if not path.exists():
            return f"no job file {path}; write one with `selvad init-job {req.job} --dataset DIR`"
        if not path.is_file():  # a FIFO would never be read to its end
            return (f"refused: {path} is not a regular file; replace it with a job file "
                    f"(`selvad init-job {req.job} --dataset DIR`)")
        job = self.d.events.load(path)
        if job is None:
            return (f"job file {path} is invalid (`selvad check-job {path} --config "
                    f"{self.d.cfg.path}` lists every problem; so does `selvad status`)")
        missing = self.d.events.weights_problem(job)
        if missing:
            return f"nothing queued: {missing}; then reload the daemon (SIGHUP)"
        self.d.jobs[job.name] = job
        ids = self.d.events.queue_job(job, reason="enqueue requested", force=True)
        if ids is None and self.d.events.validating(job):
            return (f"dataset {job.dataset_dir} is being validated (a large dataset, off the "
                    f"main loop); {req.job}'s runs are queued as soon as it is valid")
        if ids is None:
            return (f"nothing queued: dataset {job.dataset_dir} has errors "
                    f"(`selvad validate {job.dataset_dir} --variant {job.base.variant}`)")
        if not ids:
            return ("nothing queued: an identical run is already queued or running"
                    + (" (or done, for a sweep)" if job.sweeps else "")
                    + f"; `selvad runs {job.name}` lists them")
        return "queued " + ", ".join(ids)

    def _render(self, req: Request) -> str:
        job = self.d.jobs.get(str(req.job))
        if job is None:
            return (f"no job {req.job} is loaded (`selvad status` says why); its render folder is "
                    "rendered once the job file is valid")
        result = self.d.events.renders.queue_folder(job, reason="render requested", force=True)
        if isinstance(result, str):
            return f"nothing queued: {result}"
        if not result:
            return (f"nothing queued: no video in the render folder of {job.name}, or each is "
                    "already queued or rendering")
        return "queued " + ", ".join(result)

    def _skip(self, req: Request) -> str:
        q = self.d.queue
        assert q is not None and req.run_id
        run = q.get(req.run_id)
        if run is None or run.state != "queued":
            return f"run {req.run_id} is not queued"
        self.d.skip_window.add(run.id)
        self.d.wake.set()
        return f"{run.id} may start outside the training windows"


def _clip_stems(manifest: dict) -> set[str]:
    """The clips a manifest names, as paths without their suffix (dog.wav -> dog): a changed
    audio format or prompts.txt leaves a resume possible, an added or removed clip does not."""
    names = (str(f.get("name", "")) for f in manifest.get("files", []))
    return {str(Path(n).with_suffix("")) for n in names
            if Path(n).suffix.lower() not in (".txt", ".toml") and not n.startswith("audition/")}
