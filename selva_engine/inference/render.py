"""`selva-sample`'s core: one clip's features (+ an adapter at a strength) -> a .wav.

The ComfyUI chain LoRA Loader -> Sampler without ComfyUI, with the Sampler node's defaults
(ComfyUI-SelVA `nodes/selva_sampler.py`: steps 25, CFG 4.5, seed 0, duration 0 = the
features' own duration, prompt empty = the features' prompt).
"""

from __future__ import annotations

import sys
from pathlib import Path

from selva_engine.data.features import load_features
from selva_engine.inference.synth import MAX_DURATION, Synthesizer, adapter_variant, check_duration
from selva_engine.model.variants import get_variant
from selva_engine.outputs.report import write_wav

__all__ = ["DEFAULT_DURATION", "resolve_duration", "synthesize"]

DEFAULT_DURATION = 8.0  # seconds: a features file without a `duration` (training clips are 8 s)


def _note(message: str) -> None:
    print(f"selva-sample: note: {message}", file=sys.stderr)


def resolve_duration(npz: Path, stored: float | None, duration: float | None) -> float:
    """The duration to generate: `duration` if given (checked), else the .npz's own.

    A stored duration above MAX_DURATION is clamped to it (with a note); a stored duration
    of 0 or less is a ValueError naming the file; none stored means DEFAULT_DURATION.
    """
    if duration is not None:
        return check_duration(duration)
    if stored is None:
        return DEFAULT_DURATION
    if stored <= 0:
        raise ValueError(f"{npz}: its 'duration' is {stored:g} s, so there is nothing to generate; "
                         "pass --duration SECONDS or extract the features again")
    if stored > MAX_DURATION:
        _note(f"{npz} is {stored:g} s long; generating its first {MAX_DURATION:g} s")
        return MAX_DURATION
    return stored


def synthesize(*, npz: Path, output: Path, variant: str | None, selva_dir: str | Path,
               adapter: str | Path | None = None, strength: float = 1.0, prompt: str | None = None,
               negative_prompt: str = "", cfg: float = 4.5, steps: int = 25, seed: int = 0,
               duration: float | None = None, device: str = "auto",
               allow_other_variant: bool = False) -> Path:
    """`selva-sample --npz`: features file (+ adapter) -> .wav at `output`; returns the path.

    Like ComfyUI-SelVA's LoRA Loader + Sampler: the variant defaults to the one the adapter's
    meta names (else large_44k); the duration to the `.npz`'s own `duration` (see
    `resolve_duration`), and the generator's sequence lengths follow it; the prompt to the
    one stored in the .npz when None or blank. The waveform is written as 16-bit PCM at the
    mode's rate, clipped to [-1, 1], without normalisation.
    """
    name = variant or adapter_variant(adapter) or "large_44k"
    stored = load_features(npz, get_variant(name), MAX_DURATION).duration
    duration = resolve_duration(npz, stored, duration)
    synth = Synthesizer(name, selva_dir, device=device, duration=duration)
    feats = load_features(npz, synth.variant, duration)
    if feats.variant and feats.variant != synth.variant.name:
        _note(f"{npz} was extracted for {feats.variant}; generating with {synth.variant.name} "
              "(features are variant-independent)")
    synth.set_adapter(adapter, strength, allow_other_variant=allow_other_variant)
    text = (feats.npz_prompt or "") if prompt is None or not prompt.strip() else prompt
    wave = synth.generate(feats.clip, feats.sync, text, seed=seed, negative_prompt=negative_prompt,
                          cfg=cfg, steps=steps)
    return write_wav(output, wave, synth.sampling_rate)
