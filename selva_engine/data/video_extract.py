"""Video clips -> trainable clips: the node's features and the audio window, through the cache.

For each `VideoClip` (see `selva_engine.data.videos`) this module decodes the frames the node
would use (`selva_engine.video.extractor.prepare_frames`: one frame at a time, resized at once,
so memory is bounded by one 8-s window), encodes them with the video encoders (CLIP image tower,
T5, TextSynch; bf16 on GPU / fp32 on CPU, the node's default) and stores the node's
`clip_features` / `sync_features` in the `FeatureCache` under a content key: video bytes +
prompt + mask bytes and settings + window + encoder identity. A cached clip is never encoded
twice; a re-run, a sweep, or the trainer after an extraction run reuses it.

The clip's audio is the clean recording (from the window's start) or the video's own track
aligned to the frames (`selva_engine.video.probe.read_video_audio`). When it is not simply the
recording from its first sample, the window is written once into the cache as a float WAV,
keyed by content, so the trainer reads it like any clip's audio file.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from selva_engine.data.dataset import Clip
from selva_engine.data.extract import FeatureCache, ProgressFn, directory_fingerprint, hash_file
from selva_engine.data.videos import VideoClip
from selva_engine.errors import AudioFileError, DatasetError, open_error
from selva_engine.io import atomic_write, open_regular
from selva_engine.model.variants import Variant
from selva_engine.video.probe import VideoError, read_video_audio

__all__ = ["VideoExtractionStats", "add_video_clips", "audio_window", "default_encoders_factory",
           "extract_video_clips", "video_cache_key", "video_features", "video_identity"]


@dataclass
class VideoExtractionStats:
    """What one `extract_video_clips` call did."""

    videos_cached: int = 0
    videos_encoded: int = 0
    videos_failed: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def video_identity(weights: Any) -> str:
    """A stable key of the video encoders' weights (TextSynch file, the open_clip checkpoint whose
    image tower is used, the T5 directory when the weights name one)."""
    parts = ["video-encoders"]
    paths = [getattr(weights, "video_encoder", None), getattr(weights, "text_encoder", None), _t5_dir(weights)]
    for path in paths:
        parts.append(directory_fingerprint(path) if path is not None and Path(path).exists() else "-")
    return FeatureCache.key(*parts)


def _t5_dir(weights: Any) -> Path | None:
    """The T5 directory the encoders would load (None when it cannot be found yet)."""
    try:
        from selva_engine.weights.locate import find_t5_dir

        return Path(find_t5_dir(weights.selva_dir))
    except (ImportError, OSError, ValueError, AttributeError):
        return None


_HASHES: dict[tuple[str, int, int, int], str] = {}  # (path, size, mtime_ns, inode) -> sha256


def _content_hash(path: Path) -> str:
    """sha256 of a file, read once per version: the windows of a split video share it."""
    try:
        st = os.stat(path)
    except OSError:
        return hash_file(path)  # raises the DatasetError saying why it is not read
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _HASHES:
        if len(_HASHES) > 4096:
            _HASHES.clear()
        _HASHES[key] = hash_file(path)
    return _HASHES[key]


def _mask_digest(clip: VideoClip) -> str:
    if clip.mask_path is None:
        return "no-mask"
    return f"{_content_hash(clip.mask_path)}:{clip.mask_strength!r}:{clip.mask_clip}:{clip.mask_sync}"


def video_cache_key(clip: VideoClip, identity: str) -> str:
    """The content key of one clip's features: everything that changes what the node writes."""
    return FeatureCache.key("video-features", _content_hash(clip.video_path), clip.prompt, _mask_digest(clip),
                            repr(clip.start), repr(clip.duration), identity)


def _read_recording(path: Path, start: float, seconds: float) -> tuple[np.ndarray, int]:
    """`seconds` of a clean recording from `start`, (C, n) float32 at its own rate."""
    try:
        f = open_regular(path, path.parent)
    except OSError as exc:
        raise open_error(path, exc) from exc
    with f:
        try:
            with sf.SoundFile(f) as snd:
                rate = int(snd.samplerate)
                snd.seek(min(int(round(start * rate)), snd.frames))
                data = snd.read(frames=int(round(seconds * rate)), dtype="float32", always_2d=True)
        except Exception as exc:  # libsndfile raises several types for bad input
            raise AudioFileError(path, f"not a readable audio file ({exc})",
                                 "re-export the recording as 16/24-bit PCM WAV or FLAC") from exc
    if data.shape[0] == 0:
        raise AudioFileError(path, f"holds no audio after {start:g} s, where this clip starts",
                             "give a recording as long as the video, or turn `split` off")
    return np.ascontiguousarray(data.T), rate


def audio_window(clip: VideoClip) -> tuple[np.ndarray, int]:
    """The clip's audio as (C, n) float32 at its native rate: its window of the clean recording,
    or of the video's own track aligned to frame 0."""
    if clip.audio_path is not None:
        return _read_recording(clip.audio_path, clip.start, clip.duration)
    return read_video_audio(clip.video_path, start=clip.start, duration=clip.duration,
                            root=clip.video_path.parent)


def _audio_file(cache: FeatureCache, clip: VideoClip) -> Path:
    """The file the trainer reads for this clip: the recording itself, or a cached window WAV."""
    if clip.audio_path is not None and clip.start == 0.0:
        return clip.audio_path
    source = clip.audio_path or clip.video_path
    key = FeatureCache.key("audio-window", _content_hash(source), "own" if clip.audio_path is None else "file",
                           repr(clip.start), repr(clip.duration))
    path = cache.root / "audio" / key[:2] / f"{key}.wav"
    if not path.is_file():
        samples, rate = audio_window(clip)
        atomic_write(path, lambda f: sf.write(f, samples.T, rate, subtype="FLOAT", format="WAV"))
    return path


def _fit(arr: np.ndarray, seq_len: int) -> np.ndarray:
    arr = np.asarray(arr, np.float32)
    arr = arr[0] if arr.ndim == 3 else arr
    out = np.zeros((seq_len, arr.shape[1]), np.float32)
    out[: min(seq_len, arr.shape[0])] = arr[:seq_len]
    return out


@dataclass
class _Run:
    cache: FeatureCache
    identity: str
    factory: Callable[[], Any]
    progress: ProgressFn | None
    stop: threading.Event | None
    stats: VideoExtractionStats = field(default_factory=VideoExtractionStats)
    encoders: Any = None
    done: int = 0
    total: int = 0
    started: float = field(default_factory=time.monotonic)

    def get_encoders(self) -> Any:
        if self.encoders is None:
            self.encoders = self.factory()
        return self.encoders

    def report(self) -> None:
        self.done += 1
        if self.progress:
            eta = (time.monotonic() - self.started) / self.done * (self.total - self.done)
            self.progress({"event": "extract_progress", "stage": "video", "done": self.done, "total": self.total,
                           "eta_s": round(eta, 1)})


def _encode(run: _Run, batch: Sequence[tuple[VideoClip, str]], found: dict[str, dict[str, np.ndarray]],
            problems: list[DatasetError]) -> None:
    """Decode, encode and cache a batch of missing clips (a clip that fails is one problem)."""
    from selva_engine.video.extractor import extract_videos, prepare_frames

    items, keys = [], []
    for clip, key in batch:
        try:
            mask = clip.mask_path if clip.mask_path is not None else None
            items.append((prepare_frames(clip.video_path, duration=clip.duration, start=clip.start, mask=mask,
                                         mask_strength=clip.mask_strength, mask_clip=clip.mask_clip,
                                         mask_sync=clip.mask_sync), clip.prompt))
            keys.append(key)
        except (DatasetError, ValueError) as err:
            problems.append(err if isinstance(err, DatasetError) else VideoError(clip.video_path, str(err)))
            run.stats.videos_failed += 1
            run.report()
    for key, feats in zip(keys, extract_videos(items, run.get_encoders()), strict=True):
        entry = {"clip_features": feats.clip_features, "sync_features": feats.sync_features,
                 "duration": np.array(feats.duration), "fps": np.array(feats.fps)}
        run.cache.put("video", key, **entry)
        found[key] = entry
        run.stats.videos_encoded += 1
        run.report()


def _check_widths(clip: VideoClip, entry: dict[str, np.ndarray], variant: Variant) -> None:
    want = (variant.clip_dim, variant.sync_dim)
    got = (int(entry["clip_features"].shape[-1]), int(entry["sync_features"].shape[-1]))
    if got != want:
        raise VideoError(clip.video_path, f"the video encoders give {got[0]}/{got[1]}-wide features but "
                         f"{variant.name} needs {want[0]}/{want[1]}",
                         "use the video encoder weights that belong to this variant (selva-weights check)")


def video_features(videos: Sequence[VideoClip], *, cache: FeatureCache, identity: str,
                   encoders_factory: Callable[[], Any], batch_size: int = 2, progress: ProgressFn | None = None,
                   stop: threading.Event | None = None,
                   ) -> tuple[list[dict[str, np.ndarray] | None], list[DatasetError], VideoExtractionStats]:
    """The node's arrays (`clip_features` (1, N, D), `sync_features` (1, 8S, D), `duration`, `fps`)
    of each clip, from the cache or encoded now (None for a clip that failed or when stopped)."""
    run = _Run(cache, identity, encoders_factory, progress, stop)
    keys = [video_cache_key(c, identity) for c in videos]
    found: dict[str, dict[str, np.ndarray]] = {}
    missing: list[tuple[VideoClip, str]] = []
    for clip, key in zip(videos, keys, strict=True):
        hit = cache.get("video", key)
        if hit is not None and {"clip_features", "sync_features"} <= set(hit):
            found[key] = hit
            run.stats.videos_cached += 1
        elif key not in found and all(k != key for _, k in missing):
            missing.append((clip, key))
    run.total = len(missing)
    problems: list[DatasetError] = []
    try:
        for i in range(0, len(missing), batch_size):
            if stop is not None and stop.is_set():
                return [None] * len(videos), problems, run.stats
            _encode(run, missing[i:i + batch_size], found, problems)
    finally:
        if run.encoders is not None and callable(getattr(run.encoders, "free", None)):
            run.encoders.free()
    return [found.get(k) for k in keys], problems, run.stats


def extract_video_clips(videos: Sequence[VideoClip], variant: Variant, *, cache: FeatureCache, identity: str,
                        encoders_factory: Callable[[], Any], batch_size: int = 2,
                        progress: ProgressFn | None = None, stop: threading.Event | None = None,
                        ) -> tuple[list[Clip], list[DatasetError], VideoExtractionStats]:
    """Trainable `Clip`s for `videos`: features from the cache or encoded now, audio windows.

    `encoders_factory()` builds the `VideoEncoders`; it is called only when a clip is missing
    from the cache. Returns (clips, problems of clips that failed, stats); when `stop` is set
    it returns after the current batch with no clips (what was encoded stays cached).
    """
    seq = variant.sequence()
    entries, problems, stats = video_features(videos, cache=cache, identity=identity,
                                              encoders_factory=encoders_factory, batch_size=batch_size,
                                              progress=progress, stop=stop)
    if stop is not None and stop.is_set():
        return [], problems, stats
    clips: list[Clip] = []
    for clip, entry in zip(videos, entries, strict=True):
        if entry is None:
            continue
        try:
            _check_widths(clip, entry, variant)
            audio = _audio_file(cache, clip)
        except DatasetError as err:
            problems.append(err)
            continue
        clips.append(Clip(clip.stem, clip.video_path, audio, clip.prompt,
                          _fit(entry["clip_features"], seq.clip_seq_len),
                          _fit(entry["sync_features"], seq.sync_seq_len)))
    return clips, problems, stats


def default_encoders_factory(weights: Any, device: Any) -> Callable[[], Any]:
    """Build the video encoders from `weights.selva_dir` on `device` (node's dtype) when called."""
    def build() -> Any:
        try:
            from selva_engine.video.encoders import load_video_encoders
        except ImportError as exc:
            raise VideoError(weights.selva_dir, f"the video encoders are not available ({exc})",
                             "install selvad from a release that includes them") from exc
        return load_video_encoders(weights.selva_dir, device=device)
    return build



def add_video_clips(scan: Any, variant: Variant, *, weights: Any, cache: FeatureCache, device: Any,
                    progress: ProgressFn | None = None, stop: threading.Event | None = None,
                    encoders_factory: Callable[[], Any] | None = None) -> VideoExtractionStats | None:
    """Extract a `DatasetScan`'s videos into `scan.clips` (failures into `scan.problems`).

    Emits "video_extract_start" / "video_extract_done" around it; None when there are no videos.
    """
    if not scan.videos:
        return None
    if progress:
        progress({"event": "video_extract_start", "clips": len(scan.videos)})
    factory = encoders_factory or default_encoders_factory(weights, device)
    clips, problems, stats = extract_video_clips(scan.videos, variant, cache=cache, identity=video_identity(weights),
                                                 encoders_factory=factory, progress=progress, stop=stop)
    scan.clips.extend(clips)
    scan.problems.extend(problems)
    if progress:
        progress({"event": "video_extract_done", **stats.to_dict()})
    return stats
