"""Augmentation of a clip's audio: the `[augment]` variants, each encoded once like a clip.

ComfyUI-SelVA's Dataset Augmenter node makes `variants` copies of every clip, each with a
random gain within ±`gain_db`, and optionally a random pitch shift within ±`pitch_semitones`
and a random time stretch within ±`stretch` (as a fraction of the speed). Here the node's
settings and defaults are kept (2 variants, ±3 dB, no pitch shift, no stretch, seed 42,
originals kept), with two differences:

- the stretch is limited to ±0.1 (0.9x..1.1x), the range the node's research notes call
  safe: a stronger stretch breaks the audio's sync with the video and its phase-vocoder
  artefacts become part of what the adapter learns;
- every variant is drawn from its own generator, seeded by (seed, clip stem, variant
  number), so a variant is the same whichever other clips the dataset holds (the latent
  cache keeps it), and the effects come from pedalboard (`time_stretch` for the speed and the pitch, `Gain`).

A variant's length is fitted to the clip's (a faster stretch is padded with silence at the
end, a slower one cut), and a variant whose peak would exceed 1 is scaled down to 1, as the
node does. Augmented audio lives only in memory and, through its latents, in the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from selva_engine.audio.files import fit_length

__all__ = ["AUGMENT_LIMITS", "INTEGER_KEYS", "AugmentSettings", "VariantDraw", "apply_variant", "augment_variant",
           "check_augment_value", "draw_variant", "variant_stem"]

# key -> (lowest, highest) accepted value; the node's ranges, the stretch the notes' safe one.
AUGMENT_LIMITS: dict[str, tuple[float, float]] = {
    "variants": (1, 20),  # copies per clip
    "gain_db": (0.0, 12.0),  # ± dB
    "pitch_semitones": (0.0, 4.0),  # ± semitones
    "stretch": (0.0, 0.1),  # ± fraction of the speed (0.1 = 0.9x..1.1x)
    "seed": (0, 2**31 - 1),
}
INTEGER_KEYS = ("variants", "seed")
VARIANT_MARK = "@aug"  # a variant's stem: <clip stem>@aug01, @aug02, ...


@dataclass(frozen=True)
class AugmentSettings:
    """Whether variants are made, and how (defaults: the ComfyUI-SelVA Augmenter node's)."""

    enabled: bool = False  # off: the clips are trained as they are
    variants: int = 2  # augmented copies of each training clip
    gain_db: float = 3.0  # each variant's gain is drawn from ±gain_db (dB)
    pitch_semitones: float = 0.0  # pitch shift drawn from ±pitch_semitones (0 = none)
    stretch: float = 0.0  # speed drawn from 1 ± stretch, duration fitted back (0 = none)
    seed: int = 42  # with the clip's stem and the variant's number, decides each draw
    keep_originals: bool = True  # false: only the variants are trained on

    def applied(self) -> dict:
        """What is applied, for run.toml and meta.json: {"enabled": false} when off, else
        every setting."""
        return asdict(self) if self.enabled else {"enabled": False}

    def digest(self) -> str:
        """Hex sha256 of what decides a variant's audio (not `variants` nor `keep_originals`,
        so variant 1 is the same cache entry whichever count a run asks for)."""
        decides = {k: getattr(self, k) for k in ("gain_db", "pitch_semitones", "stretch", "seed")}
        return hashlib.sha256(json.dumps(decides, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AugmentSettings:
        """Settings from a {key: value} table; unknown keys and out-of-range values raise ValueError."""
        known = {f.name for f in fields(cls)}
        for key, value in data.items():
            if key not in known:
                raise ValueError(f"unknown [augment] key {key!r} (expected one of {', '.join(known)})")
            check_augment_value(key, value)
        return cls(**{k: (v if k in INTEGER_KEYS or k not in AUGMENT_LIMITS else float(v))
                       for k, v in data.items()})


def check_augment_value(key: str, value: object) -> None:
    """Raise ValueError naming the problem when `value` is not valid for `[augment] key`."""
    if key not in AUGMENT_LIMITS:
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true or false (got {value!r})")
        return
    lo, hi = AUGMENT_LIMITS[key]
    if key in INTEGER_KEYS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}: expected an integer from {lo:g} to {hi:g} (got {value!r})")
    elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key}: expected a number in [{lo:g}, {hi:g}] (got {value!r})")
    if not lo <= value <= hi:
        raise ValueError(f"{key}: out of range (got {value!r}, expected {lo:g} to {hi:g})")


def variant_stem(stem: str, index: int) -> str:
    """The stem of a clip's variant number `index` (1-based): `<stem>@aug01`."""
    return f"{stem}{VARIANT_MARK}{index:02d}"


@dataclass(frozen=True)
class VariantDraw:
    """One variant's random settings."""

    gain_db: float  # dB
    semitones: float  # pitch shift
    speed: float  # time-stretch factor (> 1: faster, shorter)


def draw_variant(settings: AugmentSettings, clip_stem: str, index: int) -> VariantDraw:
    """The settings of variant `index` of clip `clip_stem`, from a generator seeded by
    (seed, stem, index) alone: the same call always draws the same variant."""
    seed = hashlib.sha256(f"{settings.seed}\x1f{clip_stem}\x1f{index}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(seed[:8], "little"))
    gain, pitch, stretch = rng.uniform(-1.0, 1.0, size=3)  # always three draws: each stays put
    return VariantDraw(gain_db=float(gain * settings.gain_db), semitones=float(pitch * settings.pitch_semitones),
                       speed=float(1.0 + stretch * settings.stretch))


def apply_variant(wave: np.ndarray, rate: int, draw: VariantDraw) -> np.ndarray:
    """Apply `draw` to (T,) float32 at `rate` Hz with pedalboard: `time_stretch` (the speed
    with the pitch kept, and the pitch shift with the duration kept: its two independent
    arguments; it holds a tone's pitch to the cent where the PitchShift plugin misses by ~10),
    then `Gain`; the result fitted to T samples and its peak kept <= 1.
    Returns a new (T,) float32 array."""
    from pedalboard import Gain, time_stretch

    out = np.ascontiguousarray(wave, dtype=np.float32)[None, :]  # (1, T)
    if draw.speed != 1.0 or draw.semitones:
        out = time_stretch(out, float(rate), stretch_factor=draw.speed,
                           pitch_shift_in_semitones=draw.semitones)
    out = fit_length(Gain(gain_db=draw.gain_db)(out, float(rate))[0], len(wave))
    peak = float(np.abs(out).max(initial=0.0))
    return (out / peak if peak > 1.0 else out).astype(np.float32)


def augment_variant(wave: np.ndarray, rate: int, settings: AugmentSettings, clip_stem: str,
                    index: int) -> np.ndarray:
    """Variant `index` (1-based) of clip `clip_stem`: (T,) float32 at `rate` Hz in, the same
    length out, deterministic per (settings.seed, clip_stem, index)."""
    return apply_variant(wave, rate, draw_variant(settings, clip_stem, index))
