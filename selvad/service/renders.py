"""The render folders: `<render_root>/<job>/` videos -> queued render runs (selvad.runs.render).

A settled change in a job's render folder queues one render run per video that has not been
rendered with these settings (`render.toml`, the prompt) yet; a loaded job queues what its folder
already holds. A folder named after no job, a broken `render.toml` or prompts.txt is a
`render` problem in `selvad status` and the log, with the fix; the daemon goes on. The
adapter is chosen when the run starts (`ready` holds a render while its job has no finished
training run), so a new recommendation re-renders only on request: `selvad enqueue JOB
--render` (the `render` request) or the page's button.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selvad.config.jobs import Job
from selvad.config.render import folder_prompts, read_render_settings
from selvad.config.schema import ConfigError
from selvad.datasets.watch import DatasetEvent
from selvad.runs.queue import Run
from selvad.runs.render import (
    RenderProblem,
    choose_adapter,
    folder_videos,
    output_names,
    render_folder,
)
from selvad.runs.watched import WatchedTable

__all__ = ["RenderEvent", "RenderHandler", "WAITING_FOR_ADAPTER"]

WAITING_FOR_ADAPTER = "waiting: job {job} has no finished training run yet; the render starts when one is done"


@dataclass(frozen=True)
class RenderEvent:
    """A render folder settled (or went away): the watcher's DatasetEvent of `render_root`."""

    folder: DatasetEvent


class RenderHandler:
    """Queues the render runs of `daemon`'s render folders and says when one may start."""

    def __init__(self, daemon: Any) -> None:
        self.d = daemon
        self.log = daemon.log

    @property
    def watched(self) -> WatchedTable:
        assert self.d.queue is not None
        return WatchedTable(self.d.queue)

    def on_folder(self, ev: RenderEvent) -> None:
        """A render folder settled: queue its videos for the job of the same name."""
        folder, name = ev.folder.path, ev.folder.name
        if ev.folder.change == "removed":
            self.watched.forget("render", str(folder))
            self.log.info("render.folder_removed", job=name, path=str(folder))
            return
        job = self.d.jobs.get(name)
        if job is None:
            problem = (f"no job named {name}: a render folder is named after a job file "
                       f"({self.d.cfg.paths.jobs_dir}/{name}.toml); rename the folder or write the job")
            self.watched.record("render", str(folder), str(folder), problem=problem)
            self.log.warning("render.no_job", job=name, path=str(folder), problem=problem)
            return
        self.queue_folder(job, reason="render folder changed")

    def job_loaded(self, job: Job) -> None:
        """A job file was (re)loaded: queue what its render folder holds, if it has one."""
        folder = render_folder(self.d.cfg, job.name)
        if folder is not None and folder.is_dir():
            self.queue_folder(job, reason="job loaded")

    def queue_folder(self, job: Job, reason: str, force: bool = False) -> list[str] | str:
        """Queue a render run for each video of `job`'s render folder (not for one already
        rendered, queued or running with the same settings unless `force`); returns the new
        run ids, or the problem (one sentence) when nothing can be queued."""
        folder = render_folder(self.d.cfg, job.name)
        if folder is None:
            return "no render folder: set [paths] render_root in the daemon config"
        if not folder.is_dir():
            return f"no render folder {folder}; create it and drop videos into it"
        try:
            settings = read_render_settings(folder)
            default_prompt, prompts = folder_prompts(folder)
        except ConfigError as exc:
            problem = f"not rendered: {'; '.join(exc.problems)}"
            self.watched.record("render", str(folder), str(folder), problem=problem)
            self.log.warning("render.bad_settings", job=job.name, path=str(folder), problems=exc.problems)
            return problem
        self.watched.forget("render", str(folder))
        entries = {f["name"]: f for f in self.d.dataset_manifest(folder, f"renders of {job.name}")["files"]}
        ids = []
        videos = folder_videos(folder)
        for video, name in output_names(videos).items():
            prompt = prompts.get(video.name) or settings.prompt or default_prompt  # the video's own line first
            run = self._queue_video(job, folder, (video, name), settings, prompt,
                                    entries.get(video.name), reason, force)
            if run is not None:
                ids.append(run.id)
        return ids

    def _queue_video(self, job: Job, folder: Path, named: tuple[Path, str], settings: Any, prompt: str,
                     entry: dict | None, reason: str, force: bool) -> Run | None:
        video, name = named  # the video and its output stem
        if entry is None or entry.get("problem"):
            self.log.warning("render.unreadable", job=job.name, video=str(video),
                             problem=(entry or {}).get("problem", "not readable"))
            return None
        config = {"video": str(video), "folder": str(folder), "name": name,
                  "variant": job.base.variant, "data_dir": str(job.dataset_dir), "prompt": prompt,
                  "render": settings.to_dict()}
        assert self.d.queue is not None
        run = self.d.queue.enqueue(job.name, job.dataset, config, {"files": [entry]},
                                   priority=settings.priority, kind="render", force=force,
                                   rerun_states=("failed", "cancelled") if force else ())
        if run is not None:
            self.log.info("run.state", state="queued", run_id=run.id, job=run.job, dataset=run.dataset,
                          kind="render", video=video.name, reason=reason)
            self.d.wake.set()
        return run

    def ready(self, run: Run) -> bool:
        """Whether the queued render `run` may start: its job has an adapter to use (else the
        run waits with a note); a problem with its settings lets it start, to fail saying so."""
        assert self.d.queue is not None
        try:
            waiting = choose_adapter(self.d.cfg, self.d.queue, run) is None
        except RenderProblem:
            waiting = False
        note = WAITING_FOR_ADAPTER.format(job=run.job) if waiting else None
        if (run.error or None) != note and (note or (run.error or "").startswith("waiting: job")):
            self.d.queue.note_queued(run.id, note)  # set_note would skip it: it is not active yet
        return not waiting
