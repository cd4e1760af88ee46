"""What the run page shows of a render run (selvad.runs.render): its player, picture and record.

A render run's files lie in the job's shared `<output_root>/<job>/renders/` folder, beside
every other render of the job; the run owns exactly the four names of its output stem
(`run.config["name"]`): `<name>.mp4`, `<name>.wav`, `<name>.png` and `<name>.render.toml`
(`render_names`). Nothing else in that folder is an artefact of the run, so another render's
file is never served under this run's id. The stem comes from the queue database and is
checked like a file name (one path component, no dotfile, no NUL) before it names anything.

`<name>.render.toml` is the child's record of what was used. The page reads it with tomllib
but trusts none of it: a file too large, not TOML, or with tables of the wrong shape becomes a
one-line note (`RenderView.problem`), and only scalar values are shown, cut to a length.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from selvad.config.jobs import check_run_id

__all__ = ["RECORD_MAX_BYTES", "RenderView", "read_record", "render_names", "render_view"]

RECORD_MAX_BYTES = 64 << 10  # a render.toml larger than this is not parsed (it is ~1 KiB)
TEXT_MAX = 300  # characters of one shown value (a prompt may be long; the page stays readable)
# suffix of each file a render writes (selva_engine.inference.render_job.render_files) -> kind
SUFFIXES = {".mp4": "render", ".wav": "render", ".png": "render", ".render.toml": "record"}
# (label, table, key) of the facts shown from render.toml, in order
FACTS = (("adapter", "adapter", "file"), ("training run", "adapter", "run"), ("step", "adapter", "step"),
         ("strength", "adapter", "strength"), ("chosen by", "adapter", "chosen_by"),
         ("why", "adapter", "reason"), ("prompt", "sampler", "prompt"),
         ("negative prompt", "sampler", "negative_prompt"), ("CFG", "sampler", "cfg"),
         ("steps", "sampler", "steps"), ("seed", "sampler", "seed"),
         ("duration (s)", "sampler", "duration_s"), ("video", "video", "file"),
         ("rendered at", "", "rendered_at"))


@dataclass(frozen=True)
class RenderView:
    """The render section of a run page: file names (None when not written), the facts of
    render.toml as (label, text, run id to link or None), and a note when it is unreadable."""

    name: str
    mp4: str | None = None
    wav: str | None = None
    png: str | None = None
    facts: list[tuple[str, str, str | None]] = field(default_factory=list)
    problem: str | None = None
    by_run: str | None = None  # the render run that wrote the files, when render.toml names one


def render_names(name: Any) -> dict[str, str]:
    """{file name: artefact kind} a render with output stem `name` may serve ({} when `name`
    is not a plain file name: empty, a path, a dotfile, with NUL or a backslash)."""
    if (not isinstance(name, str) or not name or name != PurePosixPath(name).name
            or name.startswith(".") or any(c in name for c in "\x00\\")):
        return {}
    return {name + suffix: kind for suffix, kind in SUFFIXES.items()}


def _text(value: Any) -> str | None:
    """A scalar of render.toml as the page shows it; None for tables, lists and the like."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = str(value)
    return text if len(text) <= TEXT_MAX else text[:TEXT_MAX] + "…"


def _facts(doc: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    out = []
    for label, table, key in FACTS:
        section = doc.get(table) if table else doc
        text = _text(section.get(key)) if isinstance(section, dict) else None
        if key == "file" and text is not None:  # a name, not where the daemon keeps it
            text = PurePosixPath(text).name or ("none (the base model)" if table == "adapter" else "")
        if text is None or text == "":
            continue
        link = None
        if label == "training run":
            try:
                link = check_run_id(text)
            except ValueError:
                pass
        out.append((label, text, link))
    return out


def read_record(path: Path) -> tuple[dict[str, Any], str | None]:
    """render.toml at `path` as (document, None), or ({}, the note saying why it cannot be
    shown): larger than RECORD_MAX_BYTES, unreadable, not UTF-8 or not TOML."""
    try:
        with open(path, "rb") as f:
            raw = f.read(RECORD_MAX_BYTES + 1)
    except OSError as exc:
        return {}, f"{path.name} cannot be read ({exc.strerror or exc})"
    if len(raw) > RECORD_MAX_BYTES:
        return {}, f"{path.name} is larger than {RECORD_MAX_BYTES >> 10} KiB; it is not shown"
    try:
        return tomllib.loads(raw.decode("utf-8")), None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return {}, f"{path.name} is not a readable render record ({exc}); its facts are not shown"


def render_view(name: str, files: dict[str, str], record: Path | None) -> RenderView:
    """The render section for output stem `name`, from the run's artefacts `files` (see
    render_names) and the path of its render.toml when that is one of them."""
    have = {suffix: name + suffix if name + suffix in files else None for suffix in SUFFIXES}
    doc, problem = read_record(record) if record is not None else ({}, None)
    used = doc.get("adapter")
    by_run = _text(used.get("render_run")) if isinstance(used, dict) else None
    try:
        by_run = check_run_id(by_run) if by_run else None
    except ValueError:
        by_run = None
    return RenderView(name, have[".mp4"], have[".wav"], have[".png"], _facts(doc), problem, by_run)
