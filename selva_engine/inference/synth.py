"""Generating audio from features with the real loading path: `Synthesizer` keeps the
generator, text encoder and decoder loaded and swaps adapters, so the sampler command and
the evaluator generate many clips without reloading weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from selva_engine.data.dataset import load_features
from selva_engine.device import resolve_device
from selva_engine.inference.sample import decode_to_audio, generate_latents
from selva_engine.model.generator import load_generator
from selva_engine.model.lora import apply_adapter, load_adapter, remove_lora
from selva_engine.model.variants import Variant, get_variant
from selva_engine.outputs.report import write_wav

__all__ = ["MAX_DURATION", "Synthesizer", "adapter_variant", "synthesize"]


class Synthesizer:
    """Loaded weights of one variant for repeated generation (fp32 inference).

    `set_adapter(path, strength)` applies an adapter file (None = the base model) the way
    ComfyUI-SelVA's LoRA Loader does; `generate(...)` returns a mono waveform at the mode's
    sampling rate.
    """

    def __init__(self, variant: str | Variant, selva_dir: str | Path, *, device: str = "auto",
                 duration: float = 8.0) -> None:
        from selva_engine.audio.codec import load_audio_codec
        from selva_engine.text.clip import TextEncoder
        from selva_engine.weights.locate import resolve

        self.variant = get_variant(variant) if isinstance(variant, str) else variant
        self.device = resolve_device(device)
        self.duration = duration
        self.weights = resolve(selva_dir, self.variant.name)
        self.model = load_generator(self.weights.generator, self.variant, device=self.device,
                                    duration=duration)
        self.text = TextEncoder.from_dir(self.weights.text_encoder, device=self.device)
        self.codec = load_audio_codec(self.variant, self.weights, device=self.device,
                                      need_encoder=False, need_vocoder=True)
        self._text_cache: dict[str, torch.Tensor] = {}
        self.adapter: Path | None = None

    @property
    def sampling_rate(self) -> int:
        return self.variant.audio.sampling_rate

    def set_adapter(self, path: str | Path | None, strength: float = 1.0) -> None:
        """Apply the adapter at `path` at `strength` (replacing any previous one); None removes."""
        remove_lora(self.model)
        self.adapter = None
        if path is not None:
            apply_adapter(self.model, load_adapter(path), strength=strength, variant=self.variant.name)
            self.adapter = Path(path)

    def text_features(self, prompt: str) -> torch.Tensor:
        """CLIP per-token features (1, 77, D) of a prompt (cached per prompt)."""
        if prompt not in self._text_cache:
            with torch.no_grad():
                self._text_cache[prompt] = self.text.encode([prompt]).to(self.device)
        return self._text_cache[prompt]

    def generate(self, clip: np.ndarray, sync: np.ndarray, prompt: str, *, seed: int = 42,
                 negative_prompt: str = "", cfg: float = 4.5, steps: int = 25) -> np.ndarray:
        """One waveform (T,) float32 for visual features clip (Nc, C) / sync (Ns, C)."""
        seq = self.variant.sequence(self.duration)
        noise = torch.randn(1, seq.latent_seq_len, self.variant.latent_dim,
                            generator=torch.Generator().manual_seed(seed)).to(self.device)
        neg = self.text_features(negative_prompt) if negative_prompt else None
        lat = generate_latents(
            self.model, torch.from_numpy(clip)[None].to(self.device),
            torch.from_numpy(sync)[None].to(self.device), self.text_features(prompt),
            noise=noise, negative_text=neg, cfg=cfg, steps=steps,
        )
        return decode_to_audio(self.codec, lat)[0].float().cpu().numpy()


MAX_DURATION = 8.0  # seconds: the length the SelVA generators were trained on


def adapter_variant(adapter: str | Path | None) -> str | None:
    """The variant an adapter file's meta names (None without an adapter or without meta)."""
    if adapter is None:
        return None
    value = load_adapter(adapter).meta.get("variant")
    return str(value) if value else None


def synthesize(*, npz: Path, output: Path, variant: str | None, selva_dir: str | Path,
               adapter: str | Path | None = None, strength: float = 1.0, prompt: str | None = None,
               negative_prompt: str = "", cfg: float = 4.5, steps: int = 25, seed: int = 42,
               duration: float | None = None, device: str = "auto") -> Path:
    """`selva-sample`: features file (+ adapter) -> .wav at `output`; returns the path.

    Like ComfyUI-SelVA's LoRA Loader + Sampler: the variant defaults to the one the adapter's
    meta names (else large_44k); the duration to the `.npz`'s own `duration`, clamped to 8 s
    (else 8 s); the prompt to the one stored in the .npz (empty if none). The waveform is
    written as 16-bit PCM at the mode's rate, clipped to [-1, 1], without normalisation.
    """
    name = variant or adapter_variant(adapter) or "large_44k"
    if duration is None:
        stored = load_features(npz, get_variant(name), MAX_DURATION).duration
        duration = min(stored, MAX_DURATION) if stored and stored > 0 else MAX_DURATION
    synth = Synthesizer(name, selva_dir, device=device, duration=duration)
    feats = load_features(npz, synth.variant, duration)
    if feats.variant and feats.variant != synth.variant.name:
        print(f"selva-sample: note: {npz} was extracted for {feats.variant}; generating with "
              f"{synth.variant.name} (features are variant-independent)", file=sys.stderr)
    synth.set_adapter(adapter, strength)
    wave = synth.generate(feats.clip, feats.sync, (feats.npz_prompt or "") if prompt is None else prompt,
                          seed=seed, negative_prompt=negative_prompt, cfg=cfg, steps=steps)
    return write_wav(output, wave, synth.sampling_rate)
