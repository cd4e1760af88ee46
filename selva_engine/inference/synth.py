"""Generating audio from features with the real loading path: `Synthesizer` keeps the
generator, text encoder and decoder loaded and swaps adapters, so the sampler command and
the evaluator generate many clips without reloading weights.

Duration handling follows ComfyUI-SelVA's Sampler node (`nodes/selva_sampler.py`,
`SelvaSampler.generate`): the clip's duration sets the latent length and the feature
lengths follow it (`SequenceConfig`), so a 0.5-s or a one-frame clip generates as in ComfyUI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from selva_engine.device import resolve_device
from selva_engine.inference.sample import decode_to_audio, generate_latents
from selva_engine.model.generator import load_generator
from selva_engine.model.lora import apply_adapter, load_adapter, remove_lora
from selva_engine.model.variants import Variant, get_variant

__all__ = ["MAX_DURATION", "Clip", "Synthesizer", "adapter_variant", "check_duration"]

MAX_DURATION = 30.0  # seconds: the Sampler node's largest duration (the models were trained on 8 s)


def check_duration(duration: float, what: str = "--duration") -> float:
    """`duration` as a float if it is finite, > 0 and at most MAX_DURATION; else ValueError.

    Any positive duration generates at least one latent frame (about 23-32 ms of audio), one
    CLIP frame and one sync segment, as ComfyUI's Feature Extractor and Sampler do.
    """
    d = float(duration)
    if not math.isfinite(d) or d <= 0 or d > MAX_DURATION:
        raise ValueError(f"{what} must be more than 0 and at most {MAX_DURATION:g} seconds (got "
                         f"{duration}); pass a duration in that range")
    return d


@dataclass(frozen=True)
class Clip:
    """One clip to generate: features fitted to its duration, its prompt and noise seed.

    clip (Nc, clip_dim) and sync (Ns, sync_dim) float32 must have the sequence config's
    lengths at `duration` seconds (as `load_features(..., duration)` returns them).
    """

    clip: np.ndarray
    sync: np.ndarray
    prompt: str
    seed: int = 0
    duration: float = 8.0


class Synthesizer:
    """Loaded weights of one variant for repeated generation (fp32 inference).

    `set_adapter(path, strength)` applies an adapter file (None = the base model) the way
    ComfyUI-SelVA's LoRA Loader does; `generate(...)` returns a mono waveform at the mode's
    sampling rate, `generate_batch(...)` several clips of one duration in one batch.
    """

    def __init__(self, variant: str | Variant, selva_dir: str | Path, *, device: str = "auto",
                 duration: float = 8.0) -> None:
        from selva_engine.audio.codec import load_audio_codec
        from selva_engine.text.clip import TextEncoder
        from selva_engine.weights.locate import resolve

        self.variant = get_variant(variant) if isinstance(variant, str) else variant
        self.device = resolve_device(device)
        self.duration = check_duration(duration, "duration")
        self.weights = resolve(selva_dir, self.variant.name)
        self.model = load_generator(self.weights.generator, self.variant, device=self.device,
                                    duration=self.duration)
        self.text = TextEncoder.from_dir(self.weights.text_encoder, device=self.device)
        self.codec = load_audio_codec(self.variant, self.weights, device=self.device,
                                      need_encoder=False, need_vocoder=True)
        self._text_cache: dict[str, torch.Tensor] = {}
        self.adapter: Path | None = None

    @property
    def sampling_rate(self) -> int:
        return self.variant.audio.sampling_rate

    def set_adapter(self, path: str | Path | None, strength: float = 1.0, *,
                    allow_other_variant: bool = False) -> None:
        """Apply the adapter at `path` at `strength` (replacing any previous one); None removes.
        An adapter whose meta names another variant is refused unless `allow_other_variant`."""
        remove_lora(self.model)
        self.adapter = None
        if path is not None:
            apply_adapter(self.model, load_adapter(path), strength=strength, variant=self.variant.name,
                          allow_other_variant=allow_other_variant)
            self.adapter = Path(path)

    def set_duration(self, duration: float) -> None:
        """Set the generator's sequence lengths (and RoPE tables) for `duration` seconds."""
        duration = check_duration(duration, "duration")
        if duration != self.duration:
            seq = self.variant.sequence(duration)
            self.model.update_seq_lengths(seq.latent_seq_len, seq.clip_seq_len, seq.sync_seq_len)
            self.duration = duration

    def text_features(self, prompt: str) -> torch.Tensor:
        """CLIP per-token features (1, 77, D) of a prompt (cached per prompt)."""
        if prompt not in self._text_cache:
            with torch.no_grad():
                self._text_cache[prompt] = self.text.encode([prompt]).to(self.device)
        return self._text_cache[prompt]

    def noise(self, seed: int, duration: float | None = None) -> torch.Tensor:
        """The initial noise (1, N, latent_dim) fp32 of `seed`, drawn on the device as the
        Sampler node draws it (on the CPU for MPS, which has no device generator)."""
        seq = self.variant.sequence(self.duration if duration is None else duration)
        gen_device = torch.device("cpu") if self.device.type == "mps" else self.device
        g = torch.Generator(device=gen_device).manual_seed(int(seed))
        x0 = torch.randn(1, seq.latent_seq_len, self.variant.latent_dim, generator=g,
                         device=gen_device)
        return x0.to(self.device)

    def generate(self, clip: np.ndarray, sync: np.ndarray, prompt: str, *, seed: int = 0,
                 negative_prompt: str = "", cfg: float = 4.5, steps: int = 25,
                 duration: float | None = None) -> np.ndarray:
        """One waveform (T,) float32 for visual features clip (Nc, C) / sync (Ns, C) of a clip
        of `duration` seconds (default: the current one)."""
        d = self.duration if duration is None else duration
        return self.generate_batch([Clip(clip, sync, prompt, seed, d)],
                                   negative_prompt=negative_prompt, cfg=cfg, steps=steps)[0]

    def generate_batch(self, clips: list[Clip], *, negative_prompt: str = "", cfg: float = 4.5,
                       steps: int = 25) -> list[np.ndarray]:
        """Waveforms (T,) float32 of several clips of one duration, sampled as one batch.

        Each clip keeps the noise of its own seed, so a clip sounds the same (within float
        tolerance) alone or in a batch; the VAE decoder and vocoder run once for the batch.
        """
        if not clips:
            return []
        durations = {c.duration for c in clips}
        if len(durations) > 1:
            raise ValueError(f"one batch holds clips of one duration (got {sorted(durations)})")
        self.set_duration(durations.pop())
        dev = self.device
        clip_f = torch.stack([torch.from_numpy(np.asarray(c.clip, np.float32)) for c in clips]).to(dev)
        sync_f = torch.stack([torch.from_numpy(np.asarray(c.sync, np.float32)) for c in clips]).to(dev)
        text_f = torch.cat([self.text_features(c.prompt) for c in clips])
        noise = torch.cat([self.noise(c.seed) for c in clips])
        neg = self.text_features(negative_prompt) if negative_prompt.strip() else None
        lat = generate_latents(self.model, clip_f, sync_f, text_f, noise=noise, negative_text=neg,
                               cfg=cfg, steps=steps)
        waves = decode_to_audio(self.codec, lat).float().cpu().numpy()
        return [w for w in waves]


def adapter_variant(adapter: str | Path | None) -> str | None:
    """The variant an adapter file's meta names (None without an adapter or without meta)."""
    if adapter is None:
        return None
    value = load_adapter(adapter).meta.get("variant")
    return str(value) if value else None
