"""Extraction: audio -> VAE posterior latents, prompts -> CLIP text features, cached.

The cache is content-addressed: an audio entry is keyed by the sha256 of the audio file's
bytes, the VAE's fingerprint and the canonical length/rate; a text entry by the prompt and
the text encoder's fingerprint. Entries are `.npz` files written atomically and read with
allow_pickle=False, so a rerun, a resumed run or a second job on the same clips performs no
encoder call at all. Encoders are loaded only when something is missing, run in batches,
and freed afterwards.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .audio_io import load_audio
from .data import Clip
from .io import atomic_write_bytes
from .text import file_fingerprint
from .variants import Variant

__all__ = [
    "ExtractedClip",
    "ExtractionStats",
    "FeatureCache",
    "directory_fingerprint",
    "extract_clips",
    "hash_file",
]

ProgressFn = Callable[[dict], None]


def hash_file(path: Path | str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def directory_fingerprint(path: Path | str) -> str:
    """Fingerprint of a weights file, or of every file directly inside a weights directory."""
    path = Path(path)
    if path.is_file():
        return file_fingerprint(path)
    h = hashlib.sha256()
    for child in sorted(p for p in path.iterdir() if p.is_file()):
        h.update(f"{child.name}:{file_fingerprint(child)};".encode())
    return h.hexdigest()


@dataclass
class ExtractedClip:
    """One clip ready for training: posterior (N, L), text (Nt, D), visual features."""

    stem: str
    audio_path: Path
    prompt: str
    latent_mean: np.ndarray  # (N, L) float32, raw VAE space
    latent_std: np.ndarray  # (N, L) float32
    text: np.ndarray  # (Nt, D) float32
    clip: np.ndarray  # (Nc, clip_dim) float32
    sync: np.ndarray  # (Ns, sync_dim) float32


@dataclass
class ExtractionStats:
    """What extraction did: encoder calls (batches) and items encoded vs cache hits."""

    audio_encoded: int = 0
    text_encoded: int = 0
    audio_cached: int = 0
    text_cached: int = 0
    encoder_batches: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "extra"}


class FeatureCache:
    """Content-addressed `.npz` store under `root` (`<root>/<kind>/<k[:2]>/<k>.npz`)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def _path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.npz"

    def get(self, kind: str, key: str) -> dict[str, np.ndarray] | None:
        """The stored arrays, or None when absent or unreadable (a broken entry is a miss)."""
        path = self._path(kind, key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError):
            return None

    def put(self, kind: str, key: str, **arrays: np.ndarray) -> Path:
        """Atomically store arrays under (kind, key)."""
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return atomic_write_bytes(self._path(kind, key), buf.getvalue())

    @staticmethod
    def key(*parts: str) -> str:
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _batches(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def extract_clips(
    clips: Sequence[Clip],
    variant: Variant,
    *,
    weights,
    cache: FeatureCache,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    extra_prompts: Sequence[str] = (),
    progress: ProgressFn | None = None,
    codec_factory: Callable[[], object] | None = None,
    text_factory: Callable[[], object] | None = None,
    stop: threading.Event | None = None,
) -> tuple[list[ExtractedClip], dict[str, np.ndarray], ExtractionStats]:
    """Fill the cache for `clips` and return them extracted, plus extra prompts' features.

    Audio is read with soundfile, mixed to mono, resampled and cut/padded to the mode's
    exact length, then encoded by the VAE (fp32) to the posterior mean/std (N, L). Prompts
    (the clips' and `extra_prompts`, e.g. a sample's negative prompt) go through the CLIP
    text encoder. `codec_factory` / `text_factory` build the encoders lazily (defaults load
    them from `weights`, a `selva_engine.weights.VariantWeights`); they are called only if
    something is missing.
    Returns (clips, {prompt: (Nt, D)}, stats). When `stop` is set, it returns after the
    current batch with an empty clip list (what was encoded so far stays in the cache).
    """
    start = time.monotonic()
    stats = ExtractionStats()
    seq = variant.sequence()
    sr, n_samples = seq.sampling_rate, seq.num_audio_frames
    vae_id = FeatureCache.key("vae", directory_fingerprint(weights.vae), variant.mode, str(n_samples))
    text_id = FeatureCache.key("text", directory_fingerprint(weights.text_encoder))

    audio_keys = [FeatureCache.key(hash_file(c.audio_path), vae_id) for c in clips]
    latents: dict[str, dict[str, np.ndarray]] = {}
    missing_audio = []
    for clip, key in zip(clips, audio_keys, strict=True):
        hit = cache.get("latent", key)
        if hit is not None and {"mean", "std"} <= set(hit):
            latents[key] = hit
            stats.audio_cached += 1
        elif key not in (k for _, k in missing_audio):
            missing_audio.append((clip, key))

    prompts = list(dict.fromkeys([c.prompt for c in clips] + list(extra_prompts)))
    text_feats: dict[str, np.ndarray] = {}
    missing_text = []
    for prompt in prompts:
        hit = cache.get("text", FeatureCache.key(prompt, text_id))
        if hit is not None and "features" in hit:
            text_feats[prompt] = hit["features"]
            stats.text_cached += 1
        else:
            missing_text.append(prompt)

    total = len(missing_audio) + len(missing_text)
    done = 0

    def report(stage: str) -> None:
        if progress:
            progress({"event": "extract_progress", "stage": stage, "done": done, "total": total})

    if missing_audio:
        codec = codec_factory() if codec_factory else _default_codec(variant, weights, device)
        try:
            for chunk in _batches(missing_audio, batch_size):
                if stop is not None and stop.is_set():
                    break
                wave = np.stack([load_audio(c.audio_path, sr, n_samples) for c, _ in chunk])
                with torch.no_grad():
                    mean, std = codec.encode(torch.from_numpy(wave).to(device))
                stats.encoder_batches += 1
                for i, (_, key) in enumerate(chunk):
                    entry = {"mean": mean[i].float().cpu().numpy(), "std": std[i].float().cpu().numpy()}
                    cache.put("latent", key, **entry)
                    latents[key] = entry
                    stats.audio_encoded += 1
                    done += 1
                report("audio")
        finally:
            _free(codec)
    if missing_text:
        encoder = text_factory() if text_factory else _default_text(weights.text_encoder, device)
        try:
            for chunk in _batches(missing_text, batch_size):
                if stop is not None and stop.is_set():
                    break
                with torch.no_grad():
                    feats = encoder.encode(list(chunk))
                stats.encoder_batches += 1
                for prompt, f in zip(chunk, feats, strict=True):
                    arr = f.float().cpu().numpy()
                    cache.put("text", FeatureCache.key(prompt, text_id), features=arr)
                    text_feats[prompt] = arr
                    stats.text_encoded += 1
                    done += 1
                report("text")
        finally:
            _free(encoder)

    if stop is not None and stop.is_set():
        stats.seconds = time.monotonic() - start
        return [], {}, stats
    out = [
        ExtractedClip(
            stem=c.stem,
            audio_path=c.audio_path,
            prompt=c.prompt,
            latent_mean=latents[key]["mean"],
            latent_std=latents[key]["std"],
            text=text_feats[c.prompt],
            clip=c.clip,
            sync=c.sync,
        )
        for c, key in zip(clips, audio_keys, strict=True)
    ]
    stats.seconds = time.monotonic() - start
    return out, {p: text_feats[p] for p in extra_prompts}, stats


def _free(obj: object) -> None:
    free = getattr(obj, "free", None)
    if callable(free):
        free()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _default_codec(variant: Variant, weights, device):
    from .audio import load_audio_codec  # heavy: only when something must be encoded

    return load_audio_codec(variant, weights, device=device, need_encoder=True, need_vocoder=False)


def _default_text(text_dir: Path, device):
    from .text import TextEncoder

    return TextEncoder.from_dir(text_dir, device=device)
