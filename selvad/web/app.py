"""The Starlette application of the web page (see docs/ARCHITECTURE.md and the README).

Pages: `/` (queue, current run with a live progress bar, jobs, datasets and job files with
their problems), `/runs/<id>` (config, loss plots, checkpoint table with sample and reference
audio and a column of audition video players per audition video, A/B listening on the sample
and on each audition video, downloads; a render run's player, picture and render.toml instead), `/sweeps/<job>` (the sweep's runs side by side). API:
`/api/status` (what `selvad status --json` prints), `/api/runs/<id>`, `/api/sweeps/<job>`. Actions are POST
forms with the CSRF token that write request rows into the queue, as the CLI does; the main
loop answers them. Reads go through selvad.web.state (read-only); files only as artefacts.
"""

from __future__ import annotations

import re
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from selvad.config.daemon import DaemonConfig
from selvad.config.jobs import SAFE_NAME, check_run_id, job_file
from selvad.display import format_duration
from selvad.runs.queue import JOB_ACTIONS, RunQueue  # job actions: Train now, Render again
from selvad.web.access import ensure_token
from selvad.web.security import BODY_MAX_BYTES, Gate, Guard
from selvad.web.state import ReadOnlyState
from selvad.web.sweeps import SWEEP_FILES, SweepView, ab_pair

__all__ = ["create_app"]

HERE = Path(__file__).parent
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
MEDIA = {".pt": "application/octet-stream", ".wav": "audio/wav", ".png": "image/png", ".mp4": "video/mp4",
         ".json": "application/json", ".toml": "text/plain", ".jsonl": "text/plain",
         ".log": "text/plain; charset=utf-8"}
ACTIONS = ("cancel", "retry")
REQUEST_ID = re.compile(r"[0-9]{1,18}")  # a request row id (SQLite integers are 64-bit)
STATUS_INTERVAL = 1.0  # seconds one computed /api/status answer is shared by every caller
WAITING = "request sent; waiting for the daemon's answer…"


def _when(t: float | str | None) -> str:
    """Local "YYYY-MM-DD HH:MM" of epoch seconds or an ISO 8601 time ("-" when unknown)."""
    if not t:
        return "-"
    if isinstance(t, str):
        try:
            t = datetime.fromisoformat(t).timestamp()
        except ValueError:
            return t
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _what(run: Any) -> str:
    """What a run (a Run or its dict) does, in words: training, preparing clips, a render."""
    kind = run["kind"] if isinstance(run, dict) else run.kind
    config = (run["config"] if isinstance(run, dict) else run.config) or {}
    if kind == "render":
        return f"render of {config.get('name') or 'a video'}"
    return "training" if kind == "train" else "preparing clips"

class WebApp:
    """The handlers, sharing the read-only state, the guard and the templates."""

    def __init__(self, cfg: DaemonConfig) -> None:
        self.cfg, self.state, self.guard = cfg, ReadOnlyState(cfg), Guard()
        self.sweeps = SweepView(self.state)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.filters["duration"] = format_duration
        self.templates.env.filters["when"] = _when
        self.templates.env.filters["what"] = _what
        self.static = {name: (HERE / "static" / name).read_bytes() for name in STATIC}
        self._queue: RunQueue | None = None
        self._status_lock = threading.Lock()
        self._status: tuple[float, dict[str, Any]] = (-STATUS_INTERVAL, {})

    def status(self) -> dict[str, Any]:
        """`selvad status --json`, computed at most once per STATUS_INTERVAL however many
        callers ask at once (a burst of polls must not slow training)."""
        with self._status_lock:
            at, value = self._status
            if time.monotonic() - at >= STATUS_INTERVAL:
                value = self.state.status()
                self._status = (time.monotonic(), value)
            return value

    def page(self, request: Request, name: str, **ctx: Any) -> Response:
        return self.templates.TemplateResponse(request, name, {"csrf": self.guard.csrf,
                                                              "waiting": WAITING, **ctx})

    def not_found(self, what: str = "page") -> Response:
        return PlainTextResponse(f"No such {what}.", 404)

    def jobs(self) -> list[str]:
        """Job names of the jobs directory (regular `NAME.toml` files with safe names)."""
        try:
            paths = sorted(self.cfg.paths.jobs_dir.glob("*.toml"))
        except OSError:
            return []
        return [p.stem for p in paths if SAFE_NAME.match(p.stem) and p.is_file() and not p.is_symlink()]

    # -- pages --------------------------------------------------------------------------

    def index(self, request: Request) -> Response:
        runs = self.state.runs()
        last = {}
        for r in runs:
            last[r.job] = r
        watched = self.state.watched()
        return self.page(request, "index.html", status=self.status(), runs=runs[::-1][:50],
                         jobs=[(j, last.get(j)) for j in self.jobs()],
                         sweeps={r.job for r in runs if r.sweep_id},
                         datasets=[(w, self.state.dataset_report(w.name)) for w in watched
                                   if w.kind == "dataset"],
                         bad_jobs=[w for w in watched if w.kind == "job" and w.problem],
                         renders={r.job for r in runs if r.kind == "render"},
                         notice=self._notice(request))

    def run_page(self, request: Request) -> Response:
        run = self._run(request)
        if run is None:
            return self.not_found("run")
        files = self.state.files(run)
        meta = self.state.meta(run)
        return self.page(request, "run.html", run=run, files=files, meta=meta,
                         checkpoints=self.state.checkpoints(run, files, meta),
                         videos=self.state.audition_videos(files),
                         reference=self.state.reference(run) is not None,
                         rec=meta.get("recommendation") or {}, render=self.state.render(run, files),
                         notice=self._notice(request))

    def sweep_page(self, request: Request) -> Response:
        job = request.path_params["job"]
        if job not in self.sweeps.jobs():
            return self.not_found("sweep")
        summary = self.sweeps.summary(job)
        rows = self.sweeps.rows(job, summary)
        best = self.sweeps.best(summary, rows)
        samples = self.sweeps.samples(rows)
        return self.page(request, "sweep.html", job=job, summary=summary, rows=rows, best=best,
                         samples=samples, pair=ab_pair(samples, best),
                         clips=sorted({s.clip for s in samples if s.clip}),
                         plot=self.sweeps.file(job, "loss_comparison.png") is not None,
                         rec=summary.get("recommendation") or {})

    def _notice(self, request: Request) -> tuple[int, str] | None:
        """(request id, the daemon's answer or WAITING) for `?request=ID`; 400 for a value
        that is not a request id."""
        raw = request.query_params.get("request")
        if raw is None:
            return None
        if not REQUEST_ID.fullmatch(raw):
            raise HTTPException(400, "Bad request id: expected ?request=NUMBER.")
        result = self.state.request_result(int(raw))
        return int(raw), result if result is not None else WAITING

    def _run(self, request: Request) -> Any:
        try:
            return self.state.run(check_run_id(request.path_params["run_id"]))
        except ValueError:
            return None

    # -- files --------------------------------------------------------------------------

    def run_file(self, request: Request) -> Response:
        return self._serve(request.path_params["run_id"], request.path_params["name"])

    def audition_file(self, request: Request) -> Response:
        """`/runs/<id>/files/audition/<name>`: a render in the run directory's audition/ folder."""
        return self._serve(request.path_params["run_id"], f"audition/{request.path_params['name']}")

    def _serve(self, run_id: str, name: str) -> Response:
        """Artefact `name` of run `run_id` (404 for anything else). FileResponse answers
        `Range` requests with 206, which a `<video>` element needs to seek."""
        path = self.state.artefact(run_id, name)
        if path is None:
            return self.not_found("file")
        download = path.suffix == ".pt"
        return FileResponse(path, media_type=MEDIA[path.suffix], filename=path.name if download else None,
                            content_disposition_type="attachment" if download else "inline")

    def reference(self, request: Request) -> Response:
        run = self._run(request)
        path = self.state.reference(run) if run is not None else None
        if path is None:
            return self.not_found("file")
        return FileResponse(path, media_type=MEDIA.get(path.suffix.lower(), "application/octet-stream"))

    def sweep_file(self, request: Request) -> Response:
        name = request.path_params["name"]
        path = self.sweeps.file(request.path_params["job"], name)
        if path is None:
            return self.not_found("file")
        return FileResponse(path, media_type=SWEEP_FILES[name])

    def static_file(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return self.not_found("file")
        return Response(self.static[name], media_type=STATIC[name])

    # -- API ----------------------------------------------------------------------------

    def api_status(self, request: Request) -> Response:
        return JSONResponse(self.status())

    def api_request(self, request: Request) -> Response:
        raw = request.path_params["request_id"]
        if not REQUEST_ID.fullmatch(raw):
            return JSONResponse({"error": "Bad request id."}, 400)
        result = self.state.request_result(int(raw))
        return JSONResponse({"id": int(raw), "handled": result is not None, "result": result})

    def api_run(self, request: Request) -> Response:
        run = self._run(request)
        if run is None:
            return JSONResponse({"error": "No such run."}, 404)
        files = self.state.files(run)
        meta = self.state.meta(run)
        render = self.state.render(run, files)
        return JSONResponse({**run.to_dict(), "files": files, "meta": meta,
                             "checkpoints": [vars(c) for c in self.state.checkpoints(run, files, meta)],
                             **({"render": vars(render)} if render is not None else {})})

    def api_sweep(self, request: Request) -> Response:
        job = request.path_params["job"]
        if job not in self.sweeps.jobs():
            return JSONResponse({"error": "No such sweep."}, 404)
        summary = self.sweeps.summary(job)
        return JSONResponse({"job": job, "summary": summary,
                             "runs": [vars(r) for r in self.sweeps.rows(job, summary)]})

    # -- actions ------------------------------------------------------------------------

    async def act(self, request: Request) -> Response:
        body = await request.body()  # the Gate read it (at most BODY_MAX_BYTES): one field
        form = parse_qs(body[:BODY_MAX_BYTES].decode("latin-1"), max_num_fields=4)
        if not self.guard.csrf_ok((form.get("csrf") or [""])[0]):
            return PlainTextResponse("This form has expired: reload the page and try again.", 403)
        action = request.path_params["action"]
        if "job" in request.path_params:
            if action not in JOB_ACTIONS:
                return self.not_found("action")
            job = request.path_params["job"]
            try:
                path = job_file(self.cfg.paths.jobs_dir, job)
            except ValueError:
                return self.not_found("job")
            if job not in self.jobs() or not path.is_file():
                return self.not_found("job")
            req = self._job_request(action, job)
            back = self._back_to((form.get("run") or [""])[0], job)
            return RedirectResponse(f"/runs/{back}?request={req}" if back else f"/?request={req}", 303)
        run = self._run(request)
        if run is None or action not in ACTIONS:
            return self.not_found("run")
        req = self.queue().request(action, run_id=run.id)
        return RedirectResponse(f"/runs/{run.id}?request={req}", 303)

    def _back_to(self, run_id: str, job: str) -> str | None:
        """The run page a job's button was pressed on (a run of that job), to return to."""
        try:
            run = self.state.run(check_run_id(run_id)) if run_id else None
        except ValueError:
            return None
        return run.id if run is not None and run.job == job else None

    def _job_request(self, action: str, job: str) -> int:
        """The id of an `action` request (enqueue, render) for `job`: the one still waiting
        for the daemon when there is one (three clicks on Train now are one request), else a
        new one."""
        with self._status_lock:  # one writer at a time: two clicks never both miss the other
            q = self.queue()
            waiting = [r for r in q.pending_requests() if r.action == action and r.job == job]
            return waiting[0].id if waiting else q.request(action, job=job)

    def queue(self) -> RunQueue:
        if self._queue is None:
            self._queue = RunQueue(self.cfg.paths.queue_path)
        return self._queue


def create_app(cfg: DaemonConfig, token: str | None = None) -> Starlette:
    """The ASGI application serving the page for the daemon config `cfg`, open to requests
    that carry `token` (default: `ensure_token(cfg)`, which may raise TokenError)."""
    token = token or ensure_token(cfg)
    web = WebApp(cfg)
    routes = [
        Route("/", web.index),
        Route("/runs/{run_id}", web.run_page),
        Route("/runs/{run_id}/files/{name}", web.run_file),
        Route("/runs/{run_id}/files/audition/{name}", web.audition_file),
        Route("/runs/{run_id}/reference", web.reference),
        Route("/runs/{run_id}/{action}", web.act, methods=["POST"]),
        Route("/jobs/{job}/{action}", web.act, methods=["POST"]),
        Route("/sweeps/{job}", web.sweep_page),
        Route("/sweeps/{job}/files/{name}", web.sweep_file),
        Route("/static/{name}", web.static_file),
        Route("/api/status", web.api_status),
        Route("/api/runs/{run_id}", web.api_run),
        Route("/api/sweeps/{job}", web.api_sweep),
        Route("/api/requests/{request_id}", web.api_request),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(Gate, web=cfg.web, token=token)
    return app
