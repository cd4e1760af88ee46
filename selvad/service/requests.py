"""CLI requests (rows in the queue database) answered by the daemon's main loop.

`selvad cancel|retry|enqueue` write a request row; the daemon handles it at its next tick
and stores a one-line result the CLI prints. Actions:

- cancel RUN: a queued run becomes `cancelled`; the running one gets SIGTERM, saves a
  checkpoint and ends `cancelled`; a finished run is left alone.
- retry RUN: a `failed` or `cancelled` run goes back to `queued` (same id and directory:
  it resumes from its newest checkpoint); a done run is not retried (enqueue its job).
- enqueue JOB: the job file is (re)loaded, its dataset validated and its training runs
  queued even if the same runs exist already (an explicit request).
- skip RUN: a queued training run may start outside the training windows.

A row is not trusted: a job that is not a job name (e.g. `../elsewhere/job`, which would
read a file outside the jobs directory) and a run id that is not an id are refused with an
answer saying so; a job file that is not a regular file (a FIFO) is refused unread.
"""

from __future__ import annotations

from selvad.config.jobs import check_run_id, job_file
from selvad.runs.queue import TERMINAL, Request
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
            if req.action == "enqueue":
                job_file(self.d.cfg.paths.jobs_dir, req.job)
            else:
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
        cur = self.d.current
        if cur is not None and cur.run.id == run.id:
            cur.cancel()
            return f"cancelling {run.id}: it saves a checkpoint and stops"
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
        q.set_state(run.id, "queued")
        self.log.info("run.state", state="queued", run_id=run.id, job=run.job,
                      dataset=run.dataset, kind=run.kind, reason="retry requested")
        self.d.wake.set()
        return f"queued {run.id} again (it resumes from its newest checkpoint)"

    def _enqueue(self, req: Request) -> str:
        path = job_file(self.d.cfg.paths.jobs_dir, req.job)
        if not path.exists():
            return f"no job file {path}; write one with `selvad init-job {req.job} --dataset DIR`"
        if not path.is_file():  # a FIFO would never be read to its end
            return (f"refused: {path} is not a regular file; replace it with a job file "
                    f"(`selvad init-job {req.job} --dataset DIR`)")
        job = self.d.events.load(path)
        if job is None:
            return f"job file {path} is invalid (see the daemon log, or run `selvad validate`)"
        self.d.jobs[job.name] = job
        ids = self.d.events.queue_job(job, reason="enqueue requested", force=True)
        if ids is None:
            return (f"nothing queued: dataset {job.dataset_dir} has errors "
                    f"(`selvad validate {job.dataset_dir} --variant {job.base.variant}`)")
        if not ids:
            return "nothing queued: every run of this sweep is already done or queued"
        return "queued " + ", ".join(ids)

    def _skip(self, req: Request) -> str:
        q = self.d.queue
        assert q is not None and req.run_id
        run = q.get(req.run_id)
        if run is None or run.state != "queued":
            return f"run {req.run_id} is not queued"
        self.d.skip_window.add(run.id)
        self.d.wake.set()
        return f"{run.id} may start outside the training windows"
