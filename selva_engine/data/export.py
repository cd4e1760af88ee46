"""A dataset as ComfyUI-SelVA's LoRA trainer reads it: `<name>_NNN.npz` + `<name>_NNN.flac` per clip.

Every clip of a dataset (a node `.npz` with its audio, or a window of a video) is written as the
Feature Extractor node writes its file (`selva_engine.video.extractor.write_node_npz`: float32
features with the batch dimension, float64 `duration`, 0-d unicode `prompt` and `variant`,
first free `_001`, `_002`, … number) and its audio beside it under the same stem as 24-bit FLAC
(the trainer pairs `x.npz` with `x.flac`). The prompt stored is the clip's resolved prompt
(prompts.txt > the `.npz`'s > the directory name), so no prompts.txt is needed. Video features
come from the extraction cache, encoded when missing; nothing is written over an existing file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from selva_engine.audio.files import read_audio
from selva_engine.data.dataset import Clip, load_dataset
from selva_engine.data.extract import FeatureCache, ProgressFn
from selva_engine.data.video_extract import (
    audio_window,
    default_encoders_factory,
    video_features,
    video_identity,
)
from selva_engine.errors import DatasetError
from selva_engine.io import atomic_write
from selva_engine.model.variants import Variant
from selva_engine.video.extractor import NodeFeatures, write_node_npz

__all__ = ["ExportResult", "export_dataset"]


@dataclass
class ExportResult:
    """What `export_dataset` wrote: (npz, flac) per clip, the clips it could not write, warnings."""

    written: list[tuple[Path, Path]] = field(default_factory=list)
    problems: list[DatasetError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _write_flac(npz: Path, samples: np.ndarray, rate: int) -> Path:
    """`samples` (C, n) next to `npz` under its stem as 24-bit FLAC (clipped to [-1, 1])."""
    path = npz.with_suffix(".flac")
    data = np.clip(samples.T, -1.0, 1.0)
    atomic_write(path, lambda f: sf.write(f, data, rate, subtype="PCM_24", format="FLAC"))
    return path


def _flac_or_remove(npz: Path, samples: np.ndarray, rate: int) -> Path:
    """The clip's FLAC beside `npz`; when it cannot be written the `.npz` is removed too (the
    trainer must never find a feature file without its audio)."""
    try:
        return _write_flac(npz, samples, rate)
    except BaseException:
        npz.unlink(missing_ok=True)
        raise


def _npz_arrays(clip: Clip, variant: Variant) -> NodeFeatures:
    """A node `.npz` clip's own arrays (checked by load_dataset already; never unpickled)."""
    with np.load(clip.npz_path, allow_pickle=False) as z:
        clip_f, sync_f = z["clip_features"], z["sync_features"]
        duration = float(z["duration"]) if "duration" in z.files else clip_f.shape[-2] / 8.0
    clip_f = clip_f if clip_f.ndim == 3 else clip_f[None]
    sync_f = sync_f if sync_f.ndim == 3 else sync_f[None]
    return NodeFeatures(clip_f.astype(np.float32), sync_f.astype(np.float32), duration, clip.prompt, 0.0)


def _export_npz_clips(scan: Any, out_dir: Path, variant: Variant, result: ExportResult) -> None:
    for clip in scan.clips:
        try:
            npz = write_node_npz(_npz_arrays(clip, variant), out_dir, clip.stem, variant.name)
            raw = read_audio(clip.audio_path, root=clip.audio_path.parent)
            result.written.append((npz, _flac_or_remove(npz, raw.data.T, raw.sampling_rate)))
        except DatasetError as err:
            result.problems.append(err)


def export_dataset(directory: Path | str, out_dir: Path | str, variant: Variant, *, weights: Any,
                   cache: FeatureCache, device: Any = "cpu", progress: ProgressFn | None = None,
                   encoders_factory: Callable[[], Any] | None = None,
                   video: dict[str, Any] | None = None) -> ExportResult:
    """Write every usable clip of `directory` into `out_dir` for ComfyUI-SelVA's trainer.

    Clips with problems are skipped and listed in `ExportResult.problems` (as validation
    reports them); raises `EmptyDatasetError` when the directory holds no clips at all.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scan = load_dataset(directory, variant, collect=True, video=video)
    result = ExportResult(problems=list(scan.problems), warnings=list(scan.warnings))
    _export_npz_clips(scan, out_dir, variant, result)
    factory = encoders_factory or default_encoders_factory(weights, device)
    entries, problems, _ = video_features(scan.videos, cache=cache, identity=video_identity(weights),
                                          encoders_factory=factory, progress=progress)
    result.problems += problems
    for clip, entry in zip(scan.videos, entries, strict=True):
        if entry is None:
            continue
        try:
            samples, rate = audio_window(clip)
            feats = NodeFeatures(entry["clip_features"], entry["sync_features"], float(entry["duration"]),
                                 clip.prompt, float(entry["fps"]))
            npz = write_node_npz(feats, out_dir, clip.stem, variant.name)
            result.written.append((npz, _flac_or_remove(npz, samples, rate)))
        except (DatasetError, OSError) as err:
            result.problems.append(err if isinstance(err, DatasetError)
                                   else DatasetError(clip.video_path, f"could not be exported ({err})",
                                                     f"check that {out_dir} is writable and has free space"))
    return result

