"""Which checkpoint to use, and at what adapter strength.

The original tool's notes say lower training loss is not better audio. Our rule: take the
checkpoint with the lowest fixed-noise validation loss (held-out clips; the training-clip
probe when no clip is held out), unless its sample or one of its audition renders (the
adapter on videos it never trained on: selva_engine.training.audition, `selva-eval --videos`)
shows the "white noise on top" symptom (high-frequency energy ratio well above the reference
audio's); then take the best one without the symptom. The renders have no reference audio of
their own, so they are held against the same reference (the sound the adapter was trained
to make). Plain adapter files carry no loss: `recommend_closest` then takes the one whose
samples are closest to the reference audio, with the same noise check. `Recommendation.used`
names the figures the pick rests on. The strength range widens when the pick is clean and
narrows toward lower strengths when the run shows overfitting or noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["Candidate", "Recommendation", "noise_symptom", "recommend", "recommend_closest"]

# A sample shows the noise symptom when its hf ratio exceeds the reference's by both margins.
NOISE_RATIO_FACTOR = 2.0
NOISE_ABS_MARGIN = 0.05
# The guide: "noticeable white noise: lower the strength to 0.6-0.7 before adjusting anything else".
NOISY_STRENGTH = (0.6, 0.7)


@dataclass
class Candidate:
    """One checkpoint or adapter: its file, step, losses and sample metrics."""

    id: str
    path: str
    step: int | None = None
    val_loss: float | None = None
    train_fixed_loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    # audition video name -> the spectral metrics of this candidate's render of it (no reference)
    audition_metrics: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class Recommendation:
    """The pick, why, and the strength range to try in the LoRA Loader."""

    id: str | None
    path: str | None
    reason: str
    strength_range: tuple[float, float]
    rejected: list[str] = field(default_factory=list)
    used: list[str] = field(default_factory=list)  # the figures the pick rests on, in words

    def to_dict(self) -> dict:
        d = asdict(self)
        d["strength_range"] = list(self.strength_range)
        return d


def noise_symptom(metrics: dict[str, float], reference_hf: float | None) -> bool:
    """True when the sample's hf_energy_ratio is far above the reference audio's."""
    hf = metrics.get("hf_energy_ratio")
    if hf is None or reference_hf is None:
        return False
    return hf > NOISE_RATIO_FACTOR * reference_hf and hf > reference_hf + NOISE_ABS_MARGIN


def _symptom(cand: Candidate, reference_hf: float | None) -> str | None:
    """Why `cand` sounds noisy (its sample, else the first audition render that does), or None."""
    if noise_symptom(cand.metrics, reference_hf):
        return (f"{cand.id}: sample shows the white-noise symptom (hf ratio "
                f"{cand.metrics['hf_energy_ratio']:.3f} vs reference {reference_hf:.3f})")
    for video, metrics in sorted(cand.audition_metrics.items()):
        if noise_symptom(metrics, reference_hf):
            return (f"{cand.id}: audition video {video} shows the white-noise symptom (hf ratio "
                    f"{metrics['hf_energy_ratio']:.3f} vs reference {reference_hf:.3f})")
    return None


def _used(loss_name: str, scored: list, reference_hf: float | None,
          sample: str = "hf energy ratio of the training-clip sample") -> list[str]:
    """The figures a recommendation over the `scored` candidates rests on, in words."""
    used = [loss_name]
    if reference_hf is not None:
        used.append(sample)
        videos = sorted({v for _, _, c in scored for v in c.audition_metrics})
        if videos:
            used.append(f"hf energy ratio of the audition renders ({', '.join(videos)})")
    return used


def _score(c: Candidate) -> float | None:
    if c.val_loss is not None and c.val_loss == c.val_loss:
        return c.val_loss
    if c.train_fixed_loss is not None and c.train_fixed_loss == c.train_fixed_loss:
        return c.train_fixed_loss
    return None


def recommend(candidates: list[Candidate], reference_hf: float | None = None,
              overfitting: bool = False) -> Recommendation:
    """Pick the lowest-loss candidate without the noise symptom (see the module docstring)."""
    scored = sorted((s, c.id, c) for c in candidates if (s := _score(c)) is not None)
    if not scored:
        return Recommendation(None, None, "no checkpoint has a validation loss yet", (0.5, 1.0))
    uses_val = any(c.val_loss is not None and c.val_loss == c.val_loss for _, _, c in scored)
    loss_name = "validation loss on held-out clips" if uses_val else "fixed-noise loss on training clips"
    rejected, used = [], _used(loss_name, scored, reference_hf)
    for score, _, cand in scored:
        if (why := _symptom(cand, reference_hf)) is not None:
            rejected.append(why)
            continue
        best = scored[0][2]
        if cand is best:
            reason = f"lowest {loss_name} ({score:.4f})"
        else:
            reason = (f"lowest {loss_name} ({score:.4f}) among checkpoints without the noise "
                      f"symptom; {best.id} scored lower ({scored[0][0]:.4f}) but sounds noisy")
        low, high = (0.5, 0.9) if overfitting or rejected else (0.7, 1.1)
        if overfitting:
            reason += "; the run overfits, so try it below full strength"
        return Recommendation(cand.id, cand.path, reason, (low, high), rejected, used)
    # the guide's first fix for white noise is strength 0.6-0.7, before retraining
    return Recommendation(None, None, "every checkpoint shows the white-noise symptom; first try "
                          "the adapter at strength 0.6-0.7 (the guide's fix for white noise), "
                          "then retrain with fewer steps or a lower lr",
                          NOISY_STRENGTH, rejected, used)


def recommend_closest(candidates: list[Candidate], distance: dict[str, float],
                      reference_hf: float | None = None) -> Recommendation:
    """When no candidate has a loss (plain adapter files): the one whose samples are closest to
    the reference audio (`distance`: id -> metric distance, lower is closer) among those whose
    samples and audition renders show no noise symptom; none, with the guide's fix, when all do."""
    ranked = sorted((distance[c.id], c.id, c) for c in candidates
                    if c.id in distance and distance[c.id] == distance[c.id])  # NaN: no distance
    name = "spectral distance of the samples to the reference audio"
    rejected = []
    used = _used(name, ranked, reference_hf, "hf energy ratio of the samples")
    for dist, _, cand in ranked:
        if (why := _symptom(cand, reference_hf)) is not None:
            rejected.append(why)
            continue
        reason = (f"closest spectral metrics to the reference audio (distance {dist:.3f}); no validation "
                  "loss was recorded in the files")
        if rejected:
            reason += f"; {len(rejected)} closer one(s) sound noisy"
        return Recommendation(cand.id, cand.path, reason, (0.5, 0.9) if rejected else (0.7, 1.1), rejected, used)
    if not ranked:
        return Recommendation(None, None, "no adapter produced samples to compare", (0.5, 1.0))
    return Recommendation(None, None, "every adapter shows the white-noise symptom; first try the adapter at "
                          "strength 0.6-0.7 (the guide's fix for white noise), then retrain with fewer steps or "
                          "a lower lr", NOISY_STRENGTH, rejected, used)
