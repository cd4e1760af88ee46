"""A render run: one video of a render folder -> its sound, the video with it, a picture, a record.

The daemon (selvad.runs.render) decides which adapter, strength and sampler settings a video
gets and writes them into a JSON spec; the child runs `python -m selva_engine.cli render --spec
FILE --json`, which calls `run_render`. The chain is `selva-sample --video`'s
(`render_video.generate_for_video`: the Feature Extractor's features, the LoRA Loader, the
Sampler); the video is first checked as a dataset's videos are (`video.probe`: a regular file
inside its folder, headers against the limits before any frame is decoded).

Outputs in `out_dir`, each written atomically: `<name>.wav`, `<name>.mp4` (the original
picture, stream copied, with the sound as AAC), `<name>.png` (its spectrogram, the run page's
colour scale) and `<name>.render.toml` (what was used: the video and its hash, the adapter and
why it was chosen, strength, CFG, steps, seed, prompts, seconds, variant, when).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import tomli_w

from selva_engine.inference.render_video import VideoRequest, generate_for_video
from selva_engine.io import atomic_write_bytes
from selva_engine.outputs.report import write_wav
from selva_engine.outputs.spectrogram import write_spectrogram
from selva_engine.video.mux import mux_audio
from selva_engine.video.probe import probe_video

__all__ = ["RenderSpec", "render_files", "run_render"]


@dataclass(frozen=True)
class RenderSpec:
    """What one render run makes (the daemon's JSON spec, key for key)."""

    video: str  # the video file
    root: str  # the render folder it must lie in
    name: str  # output stem
    out_dir: str  # <output_root>/<job>/renders
    variant: str
    selva_dir: str
    prompt: str = ""  # "" : the job's dataset prompt (its sample clip's, as the auditions use)
    data_dir: str = ""  # the job's dataset, for that prompt
    sample_clip: str = ""  # the stem of the run's sample clip (meta.json), for that prompt
    adapter: str | None = None  # None: the base model
    strength: float = 1.0
    negative_prompt: str = ""
    cfg: float = 4.5  # the Sampler node's defaults (ComfyUI-SelVA nodes/selva_sampler.py)
    steps: int = 25
    seed: int = 0
    duration: float | None = None  # None: the video's own (at most 30 s)
    device: str = "auto"
    used: dict[str, Any] = field(default_factory=dict)  # the daemon's record: job, run, step, why

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RenderSpec:
        """The spec from its JSON object; ValueError naming an unknown or missing key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"render spec: unknown key(s) {', '.join(unknown)}")
        try:
            return cls(**d)
        except TypeError as exc:
            raise ValueError(f"render spec: {exc}") from exc


def dataset_prompt(spec: RenderSpec) -> str:
    """The job's dataset prompt: its sample clip's (prompts.txt > the .npz's > the folder's
    name, as training resolves it), else its first clip's; ValueError when there is none."""
    from selva_engine.data.dataset import load_dataset
    from selva_engine.model.variants import get_variant

    if not spec.data_dir:
        raise ValueError(f"no prompt for {spec.video}: write one into prompts.txt beside it "
                         "(or `prompt = \"...\"` in render.toml)")
    scan = load_dataset(spec.data_dir, get_variant(spec.variant), collect=True)
    clips = [*scan.clips, *scan.videos]  # a video dataset's clips are its videos' windows
    chosen = next((c for c in clips if c.stem == spec.sample_clip), clips[0] if clips else None)
    if chosen is None or not chosen.prompt.strip():
        raise ValueError(f"no prompt for {spec.video}: the dataset {spec.data_dir} has no clip "
                         "with one; write one into prompts.txt beside the video")
    return chosen.prompt


def render_files(out_dir: Path, name: str) -> dict[str, Path]:
    """The files one render writes: wav, mp4, png and toml."""
    return {"wav": out_dir / f"{name}.wav", "mp4": out_dir / f"{name}.mp4",
            "png": out_dir / f"{name}.png", "toml": out_dir / f"{name}.render.toml"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _record(spec: RenderSpec, seconds: float, rate: int, files: dict[str, Path]) -> dict[str, Any]:
    """render.toml's tables: what was rendered, with what, and where the files are."""
    adapter: dict[str, Any] = {"file": spec.adapter or "", "strength": spec.strength,
                               **{k: v for k, v in spec.used.items() if v is not None}}
    if spec.adapter:
        adapter["sha256"] = _sha256(Path(spec.adapter))
    return {
        "video": {"file": spec.video, "sha256": _sha256(Path(spec.video))},
        "adapter": adapter,
        "sampler": {"variant": spec.variant, "prompt": spec.prompt,
                    "negative_prompt": spec.negative_prompt, "cfg": spec.cfg, "steps": spec.steps,
                    "seed": spec.seed, "duration_s": round(seconds, 4), "sampling_rate": rate},
        "files": {k: p.name for k, p in files.items() if k != "toml"},
        "rendered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def run_render(spec: RenderSpec, emit: Callable[[dict], None] = lambda e: None) -> dict[str, Path]:
    """Render `spec` (see the module docstring); returns the files written.

    Raises DatasetError (VideoError) for a video that cannot be used, MissingWeightsError,
    AdapterError, ValueError for bad settings: each message names the file and the fix.
    """
    video, out_dir = Path(spec.video), Path(spec.out_dir)
    if not Path(os.path.abspath(video)).is_relative_to(os.path.abspath(spec.root)):
        # probe_video would call it "a link outside the dataset directory", which it is not
        raise ValueError(f"{video} is not in the render folder {spec.root}; a render run renders "
                         "only the videos of its folder")
    info = probe_video(video, root=spec.root, folder="render folder")  # before the encoders load, as a dataset's videos
    prompt = spec.prompt.strip() or dataset_prompt(spec)
    spec = replace(spec, prompt=prompt)
    emit({"event": "render_start", "video": video.name, "adapter": spec.adapter,
          "strength": spec.strength, "seconds": round(info.duration, 3), "prompt": prompt})
    wave, rate, seconds = generate_for_video(
        req=VideoRequest(video, prompt), variant=spec.variant, selva_dir=spec.selva_dir,
        adapter=spec.adapter, strength=spec.strength, negative_prompt=spec.negative_prompt,
        cfg=spec.cfg, steps=spec.steps, seed=spec.seed, duration=spec.duration, device=spec.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = render_files(out_dir, spec.name)
    write_wav(files["wav"], wave, rate)
    mux_audio(video, wave, rate, files["mp4"])
    write_spectrogram(files["png"], wave, rate, title=f"{spec.name} (rendered)")
    atomic_write_bytes(files["toml"], tomli_w.dumps(_record(spec, seconds, rate, files)).encode())
    emit({"event": "render_done", "video": video.name, "seconds": round(seconds, 3),
          "files": {k: str(p) for k, p in files.items()}})
    return files
