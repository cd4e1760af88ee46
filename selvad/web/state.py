"""What the web page shows, read without ever writing: the queue database (read-only
SQLite connections) and the files of known runs.

Safe by construction: a URL never becomes a path. A run is looked up by id in the queue;
its files are the entries of its run directory whose names match one of a fixed set of
artefact patterns (`ARTEFACTS`) and that are regular files, not links; the run directory
must be a real directory inside `output_root`; the audition renders are read from its
`audition/` folder only when that is a real directory too (never a link). The reference clip of a run is its
`sample_reference.wav`, written there by the trainer (with `sample_reference_prepared.wav`, the
same clip after the run's `[prepare]` steps, when any was on); nothing outside output_root is served.
The spectrogram pictures (`sample_stepNNNNN.png`, `sample_reference.png`) are the trainer's
too: runs from before it drew them show none (the page never writes into a run directory,
and drawing on request would spend the training machine's CPU in the page's thread).
A render run's directory is its job's shared `renders/` folder (a real directory inside
output_root, like a run directory), and its artefacts are only the files of its own output stem
(selvad.web.renders.render_names), never another render's.
Anything else is `None`, which the app answers with 404.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from selvad.config.daemon import DaemonConfig
from selvad.datasets.report import load_last_report
from selvad.runs.queue import ACTIVE, STATES, TERMINAL, Run
from selvad.runs.render import renders_dir
from selvad.runs.rundir import run_dir_for
from selvad.runs.watched import Watched
from selvad.web.renders import RenderView, render_names, render_view

__all__ = ["ARTEFACTS", "Checkpoint", "ReadOnlyState", "audition_video", "servable", "status_dict"]

# artefact kind -> the names a run directory may serve under it
ARTEFACTS: dict[str, re.Pattern[str]] = {
    "adapter": re.compile(
        r"adapter_(?:step\d{5,}|final|final_\d{3}|final_surgery|final_\d{3}_surgery|best)\.pt"),
    "sample": re.compile(r"sample_step\d{5,}\.wav"),
    "reference": re.compile(r"sample_reference\.wav"),
    "prepared": re.compile(r"sample_reference_prepared\.wav"),  # after the run's [prepare] steps
    "spectrogram": re.compile(r"sample_(?:step\d{5,}|reference|reference_prepared)\.png"),
    "plot": re.compile(r"(?:loss_raw|loss_smoothed|loss_validation|metrics)\.png"),
    "record": re.compile(r"(?:meta\.json|run\.toml|validation\.toml|progress\.jsonl)"),
    "log": re.compile(r"worker\.log"),
    # each checkpoint's audition renders (selva_engine.training.audition), in the run's audition/
    "audition": re.compile(r"audition/[^/\x00.][^/\x00]*_step\d{5,}\.(?:wav|png|mp4)"),
}
AUDITION_DIR = "audition"  # the run directory's folder of audition renders (not a link)
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3", ".m4a", ".opus")
PROGRESS_MAX_BYTES = 32 << 20  # progress.jsonl larger than this is not parsed for the table
STEP = re.compile(r"_step(\d{5,})\.")


@dataclass(frozen=True)
class Checkpoint:
    """One row of a run page's checkpoint table."""

    step: int
    adapter: str | None  # file name of adapter_stepNNNNN.pt, when kept
    sample: str | None  # file name of sample_stepNNNNN.wav, when written
    spectrogram: str | None  # file name of sample_stepNNNNN.png (its picture), when written
    val_loss: float | None
    metrics: dict[str, float]
    recommended: bool
    # audition video name -> {"mp4" | "wav" | "png": file name under audition/}, of this step
    auditions: dict[str, dict[str, str]] = field(default_factory=dict)


def audition_video(name: str) -> str:
    """The audition video of a render's file name: `audition/<video>_stepNNNNN.mp4` -> `<video>`."""
    return name[len(AUDITION_DIR) + 1:].rsplit("_step", 1)[0]


def status_dict(cfg: DaemonConfig, runs: list[Run], problems: list[Watched]) -> dict[str, Any]:
    """The data of `selvad status --json` from the queue's runs (oldest first) and the
    `watched` rows with a problem."""
    return {"config": str(cfg.path), "counts": {s: sum(r.state == s for r in runs) for s in STATES},
            "current": [r.to_dict() for r in runs if r.state in ACTIVE],
            "queued": [r.to_dict() for r in runs if r.state == "queued"],
            "recent": [r.to_dict() for r in runs if r.state in TERMINAL][-5:],
            "problems": [vars(p) for p in problems]}


def servable(st: os.stat_result) -> bool:
    """Whether a file with lstat `st` may be served: a regular file with one name. A
    hardlink placed in a run directory (st_nlink > 1) may name a file from anywhere."""
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1


def _regular(path: Path) -> bool:
    try:
        return servable(os.lstat(path))
    except OSError:
        return False


def _scan(folder: Path, prefix: str) -> dict[str, str]:
    """{prefix + name: artefact kind} of the servable regular files directly in `folder`."""
    out = {}
    with os.scandir(folder) as entries:
        for e in entries:
            name = prefix + e.name
            kind = next((k for k, rx in ARTEFACTS.items() if rx.fullmatch(name)), None)
            if kind and _regular(Path(e.path)):
                out[name] = kind
    return out


class ReadOnlyState:
    """Read-only views of the daemon's state for `cfg`; one SQLite connection per thread,
    opened `mode=ro` (the page can never lock or change the queue)."""

    def __init__(self, cfg: DaemonConfig) -> None:
        self.cfg = cfg
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection | None:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            path = self.cfg.paths.queue_path
            if not path.exists():
                return None  # the daemon has not created it yet
            conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=2.0,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    def runs(self, job: str | None = None) -> list[Run]:
        """Every run (of `job`), oldest first."""
        conn = self._conn()
        if conn is None:
            return []
        sql, args = "SELECT * FROM runs", ()
        if job is not None:
            sql, args = sql + " WHERE job=?", (job,)
        rows = conn.execute(sql + " ORDER BY created_at, id", args).fetchall()
        return [Run.from_row(r) for r in rows]

    def run(self, run_id: str) -> Run | None:
        """The run with id `run_id`, or None."""
        conn = self._conn()
        row = conn.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone() if conn else None
        return Run.from_row(row) if row else None

    def request_result(self, request_id: int) -> str | None:
        """The daemon's answer to request `request_id` (None while it is pending)."""
        conn = self._conn()
        row = conn.execute("SELECT result, handled_at FROM requests WHERE id=?",
                           (request_id,)).fetchone() if conn else None
        return None if row is None or row["handled_at"] is None else (row["result"] or "done")

    def watched(self) -> list[Watched]:
        """What the daemon last saw of each job file and dataset (the `watched` table): job
        files first, then datasets, by name; `problem` is None when it does not block."""
        conn = self._conn()
        try:
            rows = conn.execute("SELECT * FROM watched ORDER BY kind DESC, name").fetchall() if conn else []
        except sqlite3.OperationalError:  # a database older than the table
            return []
        return [Watched(**dict(r)) for r in rows]

    def dataset_report(self, dataset_dir: str) -> dict[str, Any]:
        """The last validation report the daemon kept of the dataset at `dataset_dir` (the
        name of a `watched` row, never a URL): counts, errors, warnings, advice; {} if none."""
        return load_last_report(self.cfg.paths.state_dir, dataset_dir) or {}

    def status(self) -> dict[str, Any]:
        """What `selvad status --json` prints."""
        return status_dict(self.cfg, self.runs(), [w for w in self.watched() if w.problem])

    # -- files of runs ------------------------------------------------------------------

    def _dir_path(self, run: Run) -> Path:
        """Where the run's files are: its run directory, or a render's job `renders/` folder."""
        return renders_dir(self.cfg, run.job) if run.kind == "render" else run_dir_for(self.cfg, run)

    def run_dir(self, run: Run) -> Path | None:
        """The run's directory when it is a real directory inside output_root, else None."""
        root = self.cfg.paths.output_root
        path = self._dir_path(run)
        try:
            for part in (path.parent, path):
                if not stat.S_ISDIR(os.lstat(part).st_mode):
                    return None
            inside = path.resolve().is_relative_to(root.resolve())
        except OSError:
            return None
        return path if inside else None

    def files(self, run: Run) -> dict[str, str]:
        """{file name: artefact kind} of the servable files of `run` (see ARTEFACTS)."""
        path = self.run_dir(run)
        if path is None:
            return {}
        if run.kind == "render":  # its own output stem's files only, in the shared folder
            return {n: k for n, k in render_names(run.config.get("name")).items() if _regular(path / n)}
        out = _scan(path, "")
        try:
            if stat.S_ISDIR(os.lstat(path / AUDITION_DIR).st_mode):  # a real folder, never a link
                out.update(_scan(path / AUDITION_DIR, AUDITION_DIR + "/"))
        except OSError:
            pass
        return dict(sorted(out.items()))

    def artefact(self, run_id: str, name: str) -> Path | None:
        """The path of file `name` of run `run_id` when it is one of its artefacts."""
        run = self.run(run_id)
        if run is None or name not in self.files(run):
            return None
        path = self._dir_path(run) / name
        return path if _regular(path) else None

    def render(self, run: Run, files: dict[str, str]) -> RenderView | None:
        """The render section of render run `run` with artefacts `files` (None for other kinds)."""
        if run.kind != "render":
            return None
        name = str(run.config.get("name") or "")
        record = self.artefact(run.id, name + ".render.toml") if name + ".render.toml" in files else None
        return render_view(name, files, record)

    def meta(self, run: Run) -> dict[str, Any]:
        """The run's meta.json ({} when absent or unreadable)."""
        path = self.artefact(run.id, "meta.json")
        try:
            data = json.loads(path.read_text()) if path else {}
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def reference(self, run: Run) -> Path | None:
        """The audio of the run's sample clip as the trainer wrote it into the run directory
        (`sample_reference.wav`: mono, the model's rate, the samples' loudness). Nothing
        outside output_root is served, so a run older than that file has no reference."""
        return self.artefact(run.id, "sample_reference.wav")

    def checkpoints(self, run: Run, files: dict[str, str], meta: dict[str, Any]) -> list[Checkpoint]:
        """The checkpoint table: one row per step with a kept adapter or a sample."""
        steps: dict[int, dict[str, str]] = {}
        renders: dict[int, dict[str, dict[str, str]]] = {}
        for name, kind in files.items():
            m = STEP.search(name)
            if m and kind in ("adapter", "sample", "spectrogram"):
                steps.setdefault(int(m.group(1)), {})[kind] = name
            elif m and kind == "audition":
                video, step = audition_video(name), int(m.group(1))
                steps.setdefault(step, {})
                renders.setdefault(step, {}).setdefault(video, {})[name.rsplit(".", 1)[1]] = name
        val = self._val_losses(run, files)
        metrics = meta.get("metrics") or {}
        picked = (meta.get("recommendation") or {}).get("id")
        return [Checkpoint(step, d.get("adapter"), d.get("sample"), d.get("spectrogram"),
                           val.get(step), metrics.get(str(step)) or {},
                           picked is not None and picked == f"adapter_step{step:05d}.pt",
                           renders.get(step, {}))
                for step, d in sorted(steps.items())]

    def audition_videos(self, files: dict[str, str]) -> list[str]:
        """The names of the run's audition videos (sorted): one column each on the run page."""
        return sorted({audition_video(n) for n, kind in files.items() if kind == "audition"})

    def _val_losses(self, run: Run, files: dict[str, str]) -> dict[int, float]:
        path = self.artefact(run.id, "progress.jsonl") if "progress.jsonl" in files else None
        out: dict[int, float] = {}
        try:
            if path is None or path.stat().st_size > PROGRESS_MAX_BYTES:
                return out
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            return out
        for line in lines:
            if '"checkpoint"' not in line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") == "checkpoint" and isinstance(rec.get("val_loss"), float):
                out[int(rec["step"])] = rec["val_loss"]
        return out
