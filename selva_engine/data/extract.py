"""Extraction: audio -> VAE posterior latents, prompts -> CLIP text features, cached.

The cache is content-addressed: an audio entry is keyed by the sha256 of the audio file's
bytes, the VAE's fingerprint and the canonical length/rate (and, when `[prepare]` steps are on,
their settings' digest: prepared and plain latents never mix; an `[augment]` variant's key adds
the augmentation's digest, the clip's stem and the variant's number); a text entry by the prompt and
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from selva_engine.audio.augment import AugmentSettings, augment_variant, variant_stem
from selva_engine.audio.files import load_audio
from selva_engine.audio.prepare import PrepareSettings, load_prepared_audio
from selva_engine.audio.spectral import spectral_target
from selva_engine.data.dataset import Clip
from selva_engine.errors import open_error
from selva_engine.io import atomic_write_bytes, file_fingerprint, open_regular
from selva_engine.model.variants import Variant

__all__ = [
    "ExtractedClip",
    "ExtractionStats",
    "FeatureCache",
    "directory_fingerprint",
    "extract_clips",
    "hash_file",
    "latent_key",
    "variant_key",
]

ProgressFn = Callable[[dict], None]


def hash_file(path: Path | str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes. Only a regular file inside its own directory is read:
    a clip swapped for a FIFO or a link out of the dataset since it was checked raises the
    DatasetError saying so (see selva_engine.errors.open_error), never blocks."""
    h = hashlib.sha256()
    try:
        f = open_regular(path, Path(path).parent)
    except OSError as exc:
        raise open_error(path, exc) from exc
    with f:
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
    origin: str = ""  # an [augment] variant: its original clip's stem ("" for an original)


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


@dataclass
class _Job:
    """One extract_clips call: where entries go, what is counted and reported, when to stop.

    `total` is the number of items (audio + prompts) missing from the cache, `done` those
    encoded so far; an "extract_progress" event follows each encoder batch.
    """

    cache: FeatureCache
    device: torch.device | str
    batch_size: int
    progress: ProgressFn | None
    stop: threading.Event | None
    stats: ExtractionStats = field(default_factory=ExtractionStats)
    total: int = 0
    done: int = 0

    def stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def batches(self, items: Sequence) -> Iterator[Sequence]:
        """`items` in batches of `batch_size`, until the stop event is set (checked before each)."""
        for i in range(0, len(items), self.batch_size):
            if self.stopped():
                return
            yield items[i : i + self.batch_size]

    def batch_done(self, stage: str, items: int) -> None:
        self.stats.encoder_batches += 1
        self.done += items
        if self.progress:
            self.progress({"event": "extract_progress", "stage": stage, "done": self.done, "total": self.total})


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
    prepare: PrepareSettings | None = None,
    augment: AugmentSettings | None = None,
    augment_clips: Sequence[Clip] = (),
) -> tuple[list[ExtractedClip], dict[str, np.ndarray], ExtractionStats]:
    """Fill the cache for `clips` and return them extracted, plus extra prompts' features.

    Audio is read with soundfile, mixed to mono, resampled and cut/padded to the mode's
    exact length, then encoded by the VAE (fp32) to the posterior mean/std (N, L). Prompts
    (the clips' and `extra_prompts`, e.g. a sample's negative prompt) go through the CLIP
    text encoder. `codec_factory` / `text_factory` build the encoders lazily (defaults load
    them from `weights`, a `selva_engine.weights.locate.VariantWeights`); they are called only if
    something is missing.
    `prepare` (the `[prepare]` steps, `selva_engine.audio.prepare`) is applied to each clip's
    audio before encoding; its digest joins the latent key, so prepared and plain latents never
    mix (with no step on the key is the plain one).
    `augment` (when enabled) makes `augment.variants` variants of each of `augment_clips`
    (the training clips: the caller decides the split first), from the prepared audio; they
    follow the clips in the result as `<stem>@aug01`... with `origin` = the clip's stem.
    Returns (clips, {prompt: (Nt, D)}, stats). When `stop` is set, it returns after the
    current batch with an empty clip list (what was encoded so far stays in the cache).
    """
    start = time.monotonic()
    job = _Job(cache, device, batch_size, progress, stop)
    seq = variant.sequence()
    vae_id = FeatureCache.key("vae", directory_fingerprint(weights.vae), variant.mode, str(seq.num_audio_frames))
    text_id = FeatureCache.key("text", directory_fingerprint(weights.text_encoder))
    items = _audio_items(clips, vae_id, prepare, augment, augment_clips)
    latents, missing_audio = _cached_latents(job, items)
    prompts = list(dict.fromkeys([c.prompt for c in clips] + list(extra_prompts)))
    text_feats, missing_text = _cached_text(job, prompts, text_id)
    job.total = len(missing_audio) + len(missing_text)

    if missing_audio:
        codec = codec_factory() if codec_factory else _default_codec(variant, weights, device)
        try:
            _encode_audio(job, codec, missing_audio, seq.sampling_rate, seq.num_audio_frames, latents,
                          prepare or PrepareSettings(), augment or AugmentSettings())
        finally:
            _free(codec)
    if missing_text:
        encoder = text_factory() if text_factory else _default_text(weights.text_encoder, device)
        try:
            _encode_text(job, encoder, missing_text, text_id, text_feats)
        finally:
            _free(encoder)

    job.stats.seconds = time.monotonic() - start
    if job.stopped():
        return [], {}, job.stats
    out = [
        ExtractedClip(stem=variant_stem(c.stem, n) if n else c.stem, audio_path=c.audio_path, prompt=c.prompt,
                      latent_mean=latents[key]["mean"], latent_std=latents[key]["std"], text=text_feats[c.prompt],
                      clip=c.clip, sync=c.sync, origin=c.stem if n else "")
        for c, key, n in items
    ]
    return out, {p: text_feats[p] for p in extra_prompts}, job.stats


AudioItem = tuple[Clip, str, int]  # (clip, latent key, variant number: 0 = the clip itself)


def _audio_items(clips: Sequence[Clip], vae_id: str, prepare: PrepareSettings | None,
                 augment: AugmentSettings | None, augment_clips: Sequence[Clip]) -> list[AudioItem]:
    """Every audio entry the run needs: each clip, then each variant of each `augment_clips`
    clip when `augment` is enabled (numbered 1..variants), with its latent key."""
    hashes = {c.audio_path: hash_file(c.audio_path) for c in clips}
    items: list[AudioItem] = [(c, latent_key(hashes[c.audio_path], vae_id, prepare), 0) for c in clips]
    if augment is not None and augment.enabled:
        for c in augment_clips:
            audio_hash = hashes.get(c.audio_path) or hash_file(c.audio_path)
            items += [(c, variant_key(latent_key(audio_hash, vae_id, prepare), augment, c.stem, n), n)
                      for n in range(1, augment.variants + 1)]
    return items


def _cached_latents(job: _Job, items: list[AudioItem]
                    ) -> tuple[dict[str, dict[str, np.ndarray]], list[AudioItem]]:
    """({key: {"mean", "std"}} of the items found in the cache, the items still to encode,
    each key once: clips with identical audio share one entry). Counts the hits."""
    latents: dict[str, dict[str, np.ndarray]] = {}
    missing: list[AudioItem] = []
    for item in items:
        key = item[1]
        hit = job.cache.get("latent", key)
        if hit is not None and {"mean", "std"} <= set(hit):
            latents[key] = hit
            job.stats.audio_cached += 1
        elif key not in (k for _, k, _ in missing):
            missing.append(item)
    return latents, missing


def _cached_text(job: _Job, prompts: list[str], text_id: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """({prompt: (Nt, D)} found in the cache, prompts still to encode). Counts the hits."""
    feats: dict[str, np.ndarray] = {}
    missing: list[str] = []
    for prompt in prompts:
        hit = job.cache.get("text", FeatureCache.key(prompt, text_id))
        if hit is not None and "features" in hit:
            feats[prompt] = hit["features"]
            job.stats.text_cached += 1
        else:
            missing.append(prompt)
    return feats, missing


def latent_key(audio_hash: str, vae_id: str, prepare: PrepareSettings | None = None) -> str:
    """The latent cache key of one clip's audio: its hash, the VAE's identity and, when any
    `[prepare]` step is on, the steps' digest (with none, the key every earlier cache holds)."""
    if prepare is None or not prepare.any():
        return FeatureCache.key(audio_hash, vae_id)
    return FeatureCache.key(audio_hash, vae_id, "prepare", prepare.digest())


def variant_key(clip_key: str, augment: AugmentSettings, stem: str, number: int) -> str:
    """The latent cache key of variant `number` of the clip `stem` whose own (prepared) key
    is `clip_key`: the variant is made from that audio, drawn by the augmentation's digest,
    the stem and the number."""
    return FeatureCache.key(clip_key, "augment", augment.digest(), stem, str(number))


def _encode_audio(job: _Job, codec, missing: list[AudioItem], sampling_rate: int, n_samples: int,
                  latents: dict[str, dict[str, np.ndarray]], prepare: PrepareSettings,
                  augment: AugmentSettings) -> None:
    """Encode the missing items' audio (`n_samples` at `sampling_rate` Hz, prepared as `prepare`
    says, then a variant's augmentation) in batches into the cache and into `latents` (by key),
    until done or stopped."""
    target = spectral_target(codec) if prepare.spectral_match else None

    def load(clip: Clip, number: int) -> np.ndarray:
        if prepare.any():
            wave = load_prepared_audio(clip.audio_path, sampling_rate, n_samples, prepare, target=target)
        else:
            wave = load_audio(clip.audio_path, sampling_rate, n_samples)
        return augment_variant(wave, sampling_rate, augment, clip.stem, number) if number else wave

    for chunk in job.batches(missing):
        wave = np.stack([load(c, n) for c, _, n in chunk])  # (B, T)
        with torch.no_grad():
            mean, std = codec.encode(torch.from_numpy(wave).to(job.device))  # (B, N, L) each
        for i, (_, key, _) in enumerate(chunk):
            entry = {"mean": mean[i].float().cpu().numpy(), "std": std[i].float().cpu().numpy()}
            job.cache.put("latent", key, **entry)
            latents[key] = entry
            job.stats.audio_encoded += 1
        job.batch_done("audio", len(chunk))


def _encode_text(job: _Job, encoder, missing: list[str], text_id: str, feats: dict[str, np.ndarray]) -> None:
    """Encode the missing prompts in batches into the cache and into `feats` (by prompt),
    until done or stopped."""
    for chunk in job.batches(missing):
        with torch.no_grad():
            encoded = encoder.encode(list(chunk))  # (B, Nt, D)
        for prompt, f in zip(chunk, encoded, strict=True):
            arr = f.float().cpu().numpy()
            job.cache.put("text", FeatureCache.key(prompt, text_id), features=arr)
            feats[prompt] = arr
            job.stats.text_encoded += 1
        job.batch_done("text", len(chunk))


def _free(obj: object) -> None:
    free = getattr(obj, "free", None)
    if callable(free):
        free()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _default_codec(variant: Variant, weights, device):
    from selva_engine.audio.codec import (
        load_audio_codec,  # heavy: only when something must be encoded
    )

    return load_audio_codec(variant, weights, device=device, need_encoder=True, need_vocoder=False)


def _default_text(text_dir: Path, device):
    from selva_engine.text.clip import TextEncoder

    return TextEncoder.from_dir(text_dir, device=device)
