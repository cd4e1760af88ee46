"""The Starlette application of the web page (see docs/ARCHITECTURE.md and the README).

Pages: `/` (queue, current run with a live progress bar, jobs, datasets and job files with
their problems), `/runs/<id>` (config, loss plots, checkpoint table with sample and reference
audio, A/B listening, downloads), `/sweeps/<job>` (the sweep's runs side by side). API:
`/api/status` (what `selvad status --json` prints), `/api/runs/<id>`, `/api/sweeps/<job>`. Actions are POST
forms with the CSRF token that write request rows into the queue, as the CLI does; the main
loop answers them. Reads go through selvad.web.state (read-only); files only as artefacts.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
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
from selvad.runs.queue import RunQueue
from selvad.web.security import Guard, SecurityHeaders
from selvad.web.state import ReadOnlyState
from selvad.web.sweeps import SWEEP_FILES, SweepView, ab_pair

__all__ = ["create_app"]

HERE = Path(__file__).parent
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
MEDIA = {".pt": "application/octet-stream", ".wav": "audio/wav", ".png": "image/png",
         ".json": "application/json", ".toml": "text/plain", ".jsonl": "text/plain"}
ACTIONS = ("cancel", "retry")
FORM_MAX_BYTES = 4096



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

class WebApp:
    """The handlers, sharing the read-only state, the guard and the templates."""

    def __init__(self, cfg: DaemonConfig) -> None:
        self.cfg, self.state, self.guard = cfg, ReadOnlyState(cfg), Guard(cfg.web)
        self.sweeps = SweepView(self.state)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.filters["duration"] = format_duration
        self.templates.env.filters["when"] = _when
        self.static = {name: (HERE / "static" / name).read_bytes() for name in STATIC}
        self._queue: RunQueue | None = None

    def page(self, request: Request, name: str, **ctx: Any) -> Response:
        return self.templates.TemplateResponse(request, name, {"csrf": self.guard.csrf, **ctx})

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
        login = self.guard.login(request)
        if login is not None:
            return login
        runs = self.state.runs()
        last = {}
        for r in runs:
            last[r.job] = r
        watched = self.state.watched()
        return self.page(request, "index.html", status=self.state.status(), runs=runs[::-1][:50],
                         jobs=[(j, last.get(j)) for j in self.jobs()],
                         sweeps={r.job for r in runs if r.sweep_id},
                         datasets=[(w, self.state.dataset_report(w.name)) for w in watched
                                   if w.kind == "dataset"],
                         bad_jobs=[w for w in watched if w.kind == "job" and w.problem],
                         notice=self._notice(request), may_act=self.guard.may_act(request))

    def run_page(self, request: Request) -> Response:
        login = self.guard.login(request)
        if login is not None:
            return login
        run = self._run(request)
        if run is None:
            return self.not_found("run")
        files = self.state.files(run)
        meta = self.state.meta(run)
        return self.page(request, "run.html", run=run, files=files, meta=meta,
                         checkpoints=self.state.checkpoints(run, files, meta),
                         reference=self.state.reference(run) is not None,
                         rec=meta.get("recommendation") or {}, notice=self._notice(request),
                         may_act=self.guard.may_act(request))

    def sweep_page(self, request: Request) -> Response:
        login = self.guard.login(request)
        if login is not None:
            return login
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

    def _notice(self, request: Request) -> str | None:
        raw = request.query_params.get("request", "")
        if not raw.isdigit():
            return None
        result = self.state.request_result(int(raw))
        return result if result is not None else "request sent; the daemon answers within a second"

    def _run(self, request: Request) -> Any:
        try:
            return self.state.run(check_run_id(request.path_params["run_id"]))
        except ValueError:
            return None

    # -- files --------------------------------------------------------------------------

    def run_file(self, request: Request) -> Response:
        name = request.path_params["name"]
        path = self.state.artefact(request.path_params["run_id"], name)
        if path is None:
            return self.not_found("file")
        download = path.suffix == ".pt"
        return FileResponse(path, media_type=MEDIA[path.suffix], filename=name if download else None,
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
        return JSONResponse(self.state.status())

    def api_run(self, request: Request) -> Response:
        run = self._run(request)
        if run is None:
            return JSONResponse({"error": "No such run."}, 404)
        files = self.state.files(run)
        meta = self.state.meta(run)
        return JSONResponse({**run.to_dict(), "files": files, "meta": meta,
                             "checkpoints": [vars(c) for c in self.state.checkpoints(run, files, meta)]})

    def api_sweep(self, request: Request) -> Response:
        job = request.path_params["job"]
        if job not in self.sweeps.jobs():
            return JSONResponse({"error": "No such sweep."}, 404)
        summary = self.sweeps.summary(job)
        return JSONResponse({"job": job, "summary": summary,
                             "runs": [vars(r) for r in self.sweeps.rows(job, summary)]})

    # -- actions ------------------------------------------------------------------------

    async def act(self, request: Request) -> Response:
        body = await request.body()  # a urlencoded form of one field: parsed here, no multipart
        form = parse_qs(body[:FORM_MAX_BYTES].decode("latin-1"), max_num_fields=4)
        if not self.guard.csrf_ok((form.get("csrf") or [""])[0]):
            return PlainTextResponse("This form has expired: reload the page and try again.", 403)
        if not self.guard.may_act(request):
            return PlainTextResponse("Actions need the token: open the page as /?token=SECRET "
                                     "([web] token in the daemon's config).", 403)
        action = request.path_params["action"]
        if "job" in request.path_params:
            if action != "enqueue":
                return self.not_found("action")
            job = request.path_params["job"]
            try:
                path = job_file(self.cfg.paths.jobs_dir, job)
            except ValueError:
                return self.not_found("job")
            if job not in self.jobs() or not path.is_file():
                return self.not_found("job")
            req = self.queue().request("enqueue", job=job)
            return RedirectResponse(f"/?request={req}", 303)
        run = self._run(request)
        if run is None or action not in ACTIONS:
            return self.not_found("run")
        req = self.queue().request(action, run_id=run.id)
        return RedirectResponse(f"/runs/{run.id}?request={req}", 303)

    def queue(self) -> RunQueue:
        if self._queue is None:
            self._queue = RunQueue(self.cfg.paths.queue_path)
        return self._queue


def create_app(cfg: DaemonConfig) -> Starlette:
    """The ASGI application serving the page for the daemon config `cfg`."""
    web = WebApp(cfg)
    routes = [
        Route("/", web.index),
        Route("/runs/{run_id}", web.run_page),
        Route("/runs/{run_id}/files/{name}", web.run_file),
        Route("/runs/{run_id}/reference", web.reference),
        Route("/runs/{run_id}/{action}", web.act, methods=["POST"]),
        Route("/jobs/{job}/{action}", web.act, methods=["POST"]),
        Route("/sweeps/{job}", web.sweep_page),
        Route("/sweeps/{job}/files/{name}", web.sweep_file),
        Route("/static/{name}", web.static_file),
        Route("/api/status", web.api_status),
        Route("/api/runs/{run_id}", web.api_run),
        Route("/api/sweeps/{job}", web.api_sweep),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(SecurityHeaders, web=cfg.web)
    return app
