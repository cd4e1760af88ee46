"""A render folder's settings: `<render_root>/<job>/render.toml` and `prompts.txt`.

Every key is optional; without the file a video is rendered with the job's recommended
checkpoint at its recommended strength and the Sampler node's defaults::

    run = "20261204-101500-ab12"   # one of the job's runs (default: the recommended one)
    step = 500                     # that run's adapter_step00500.pt (default: its recommendation)
    adapter = "my_adapter.pt"      # or an adapter file (in this folder or the output root)
    strength = 0.8                 # default: the middle of the recommended strength range
    cfg = 4.5                      # the Sampler node's defaults (ComfyUI-SelVA nodes/selva_sampler.py)
    steps = 25
    seed = 0
    negative_prompt = ""
    duration = 8.0                 # seconds (default: the video's own, at most 30)
    priority = 100                 # queue priority (training jobs default to 0)
    prompt = "rain on a tin roof"  # default: prompts.txt here, else the job's dataset prompt

prompts.txt here: `clip.mp4: a door slams` for one video, a line without a file name for the
others.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from selvad.config.schema import ConfigError, Problems, parse_section, read_toml

__all__ = ["RENDER_FILE", "RENDER_PRIORITY", "RenderSettings", "folder_prompts", "read_render_settings"]

RENDER_FILE = "render.toml"
PROMPTS_FILE = "prompts.txt"
RENDER_PRIORITY = 100  # above any training job's default (0): a render waits for no training run
MAX_PROMPT_BYTES = 64 << 10


@dataclass(frozen=True)
class RenderSettings:
    """One render folder's `render.toml` (see the module docstring); None = the default."""

    run: str = ""
    step: int | None = None
    adapter: Path | None = None
    strength: float | None = None
    cfg: float = 4.5
    steps: int = 25
    seed: int = 0
    negative_prompt: str = ""
    duration: float | None = None
    priority: int = RENDER_PRIORITY
    prompt: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the run's config): paths as strings."""
        d = asdict(self)
        d["adapter"] = str(self.adapter) if self.adapter is not None else None
        return d


def _check(s: RenderSettings, p: Problems) -> None:
    if s.strength is not None and not 0.0 <= s.strength <= 2.0:
        p.add("strength", "out of range", got=s.strength, expected="a number from 0 to 2")
    if s.cfg < 1.0:
        p.add("cfg", "out of range", got=s.cfg, expected="a number >= 1 (1 = no guidance)")
    if not 1 <= s.steps <= 1000:
        p.add("steps", "out of range", got=s.steps, expected="an integer from 1 to 1000")
    if s.step is not None and s.step < 1:
        p.add("step", "out of range", got=s.step, expected="a checkpoint step >= 1")
    if s.duration is not None and not (math.isfinite(s.duration) and 0 < s.duration <= 30):
        p.add("duration", "out of range", got=s.duration, expected="seconds, more than 0 and at most 30")
    if s.adapter is not None and (s.run or s.step is not None):
        p.add("adapter", "names a file and a run/step at once", expected="either adapter or run/step")
    if s.run and any(not (c.isalnum() or c == "-") for c in s.run):
        p.add("run", "not a run id", got=s.run, expected='an id such as "20261204-101500-ab12"')


def read_render_settings(folder: Path) -> RenderSettings:
    """`folder/render.toml` checked (defaults when there is none); ConfigError lists every
    problem as `file:key: problem (got, expected)`."""
    path = folder / RENDER_FILE
    if not path.exists() and not path.is_symlink():
        return RenderSettings()
    p = Problems(path)
    settings = parse_section(RenderSettings, read_toml(path), "", p, base_dir=folder)
    _check(settings, p)
    p.raise_if_any()
    return settings


def folder_prompts(folder: Path) -> tuple[str, dict[str, str]]:
    """`folder/prompts.txt`: (the folder's prompt, {video file name: its own prompt}).

    A line `clip.mp4: a door slams` (a file name of the folder, with its suffix) is that video's
    prompt; the first other non-empty line is every other video's. ("", {}) without the file.
    """
    path = folder / PROMPTS_FILE
    try:
        if not path.is_file():
            return "", {}
        with open(path, "rb") as f:
            text = f.read(MAX_PROMPT_BYTES).decode("utf-8", "replace")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read file ({exc.strerror or exc}); make it readable"]) from exc
    default, own = "", {}
    for line in (ln.strip() for ln in text.splitlines()):
        name, sep, rest = line.partition(":")
        if sep and name.strip() and "/" not in name and (folder / name.strip()).is_file():
            if rest.strip():  # `clip.mp4:` alone gives that video no prompt, the others none either
                own[name.strip()] = rest.strip()
        elif line and not default:
            default = line
    return default, own
