"""What a training run does at a checkpoint: evaluate, sample, save, report.

`Checkpointer.write(parts, state, final=...)` reads the pending losses back, computes the
fixed-noise losses (held-out clips and the first training clips), generates and writes the
sample `sample_stepNNNNN.wav` with its spectral metrics and its spectrogram picture
(`sample_stepNNNNN.png`, selva_engine.outputs.spectrogram), renders the audition videos
(selva_engine.training.audition: `audition/<video>_stepNNNNN.wav/.png/.mp4`, their wall time
in the record's `audition_s`, their spectral metrics in meta.json's `audition_metrics`, weighed
by the recommendation), saves `adapter_stepNNNNN.pt` (and
`adapter_best.pt` when the validation loss improved), then rewrites the loss and metric
plots and meta.json and logs the "checkpoint" record. The checkpoint file itself is
described in selva_engine.outputs.checkpoint; its content comes from trainstate.checkpoint_payload.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from selva_engine.audio.codec import load_audio_codec
from selva_engine.audio.files import load_audio
from selva_engine.audio.prepare import load_prepared_audio
from selva_engine.evaluation.metrics import compute_metrics
from selva_engine.evaluation.recommend import Candidate, recommend
from selva_engine.evaluation.sweep import system_info
from selva_engine.inference.sample import decode_to_audio, generate_latents
from selva_engine.io import require_free_space
from selva_engine.model.lora import lora_state_dict, save_adapter
from selva_engine.outputs import report
from selva_engine.outputs.checkpoint import checkpoint_name, list_checkpoints, save_checkpoint
from selva_engine.outputs.spectrogram import write_spectrogram
from selva_engine.training.audition import Auditions, read_audition_metrics
from selva_engine.training.loop import adapter_meta, overfitting
from selva_engine.training.state import (
    RunContext,
    RunState,
    TrainData,
    TrainParts,
    checkpoint_payload,
)

__all__ = ["CheckpointEval", "Checkpointer"]

PROBE_TRAIN_CLIPS = 8  # training clips whose fixed-noise loss is tracked at each checkpoint
REFERENCE_SAMPLE = "sample_reference.wav"  # the sample clip's own audio, written once
# the same clip after the [prepare] steps, as the VAE encoded it (written once, when any is on)
PREPARED_REFERENCE = "sample_reference_prepared.wav"
REPORT_FILES = ("loss_raw.png", "loss_smoothed.png", "loss_validation.png", "metrics.png", "meta.json")
REPORTS_BYTES = 256 << 10  # the report files before the first checkpoint has written them
WAV_HEADER = 44  # bytes
SPACE_SLACK = 64 << 10  # bytes: what the estimate leaves out (history, RNG states, headers)
SPECTROGRAM_BYTES = 128 << 10  # the sample's spectrogram picture (about 40 KB)


def _size(path: Path) -> int:
    """The size of `path` in bytes; 0 when it does not exist (or vanished meanwhile)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@dataclass(frozen=True)
class CheckpointEval:
    """The numbers of one checkpoint: fixed-noise losses and the sample with its metrics."""

    val_loss: float | None  # None without validation clips
    train_fixed_loss: float
    sample_path: Path
    metrics: dict[str, float]  # spectral metrics of the sample against its clip's audio
    audition: dict[str, Any] | None = None  # {"seconds", "files"} of the auditions; None without


class Checkpointer:
    """Writes checkpoints of one run. Holds what its checkpoints share and nothing of the
    training state: the audio codec (loaded at the first sample, freed by `close()`), the
    sample clip's own metrics (computed with the first sample; the reference of the
    recommendation) and the system facts recorded in meta.json."""

    def __init__(self, ctx: RunContext, data: TrainData, auditions: Auditions | None = None) -> None:
        self.ctx, self.data, self.auditions = ctx, data, auditions
        self.init_mode = ctx.cfg.init_mode  # after a resume: the checkpoint's (reconcile_resume)
        self.codec: Any = None
        self.reference_metrics: dict[str, float] | None = None
        self.audition_metrics: dict[int, dict[str, dict[str, float]]] = {}  # step -> video -> metrics
        self.system = system_info()

    def write(self, parts: TrainParts, state: RunState, *, final: bool) -> Path:
        """Everything due at a checkpoint of step `state.step`; returns the step checkpoint.

        Reads the losses still on the device first (a diverged run saves nothing: TrainError),
        then checks the output directory has room for everything it writes (DiskFullError
        before the first write when not: the previous checkpoint stays the newest). Writes
        state.history (checkpoint columns), state.best, state.overfitting and
        state.recommendation; emits a warning when the adapter overfits, then "checkpoint".
        """
        ctx, step = self.ctx, state.step
        state.drain(parts.runner)
        require_free_space(ctx.out_dir, self.space_needed(parts, final), "a checkpoint")
        meta = self.meta(step)
        ev = self.evaluate(parts, step)
        if ev.audition is not None:
            self.audition_metrics[step] = ev.audition["metrics"]
        state.add_checkpoint(step, ev.val_loss, ev.train_fixed_loss, ev.metrics)
        path = self._save(parts, state, meta, ev.val_loss)
        self._judge(state)
        self._write_reports(state, meta, final)
        record = {"event": "checkpoint", "step": step, "path": str(path), "sample": str(ev.sample_path),
                  "val_loss": ev.val_loss, "train_fixed_loss": ev.train_fixed_loss, "metrics": ev.metrics}
        if ev.audition is not None:  # seconds the auditions took: their share of the run's time
            record["audition_s"] = ev.audition["seconds"]
            ctx.log.emit({"event": "audition", "step": step, **ev.audition})
        ctx.log.append(record)
        report.write_metric_plot(ctx.out_dir / "metrics.png", state.history["ckpt_step"],
                                 [json.loads(m) for m in state.history["metrics"]],
                                 reference=self.reference_metrics)
        ctx.log.emit(record)
        return path

    def space_needed(self, parts: TrainParts, final: bool) -> int:
        """Bytes a checkpoint may write (estimated): the step checkpoint (as large as the
        previous one, or the LoRA weights and their two Adam moments), the sample (as the
        previous one, or 16-bit PCM of the clip length), adapter_best.pt with validation
        clips, adapter_final.pt when `final`, and the plots and meta.json it rewrites."""
        out_dir = self.ctx.out_dir
        lora = sum(p.numel() * p.element_size() for p in parts.params)
        checkpoints = list_checkpoints(out_dir)
        ckpt = _size(checkpoints[-1][1]) if checkpoints else 3 * lora
        samples = sorted(out_dir.glob("sample_step*.wav"))
        seq = self.ctx.variant.sequence()
        sample = _size(samples[-1]) if samples else WAV_HEADER + 2 * int(seq.duration * seq.sampling_rate)
        reports = sum(_size(out_dir / name) for name in REPORT_FILES) or REPORTS_BYTES
        adapters = lora * ((1 if self.data.val_idx else 0) + (1 if final else 0))
        auditions = self.auditions.space_needed() if self.auditions is not None else 0
        return ckpt + sample + SPECTROGRAM_BYTES + reports + adapters + auditions + SPACE_SLACK

    def meta(self, step: int) -> dict[str, Any]:
        """The adapter meta (ComfyUI-SelVA keys plus ours) of this run at `step`."""
        ctx, data = self.ctx, self.data
        return adapter_meta(ctx.cfg, ctx.variant.name, step, ctx.precision, len(data.train_idx),
                            len(data.val_idx), init_mode=self.init_mode)

    def evaluate(self, parts: TrainParts, step: int) -> CheckpointEval:
        """Fixed-noise losses, the sample and the auditions of the model as it is at `step` (in
        eval mode, back in train mode after). Draws no number from the global RNG."""
        data, model = self.data, parts.model
        model.eval()
        with torch.no_grad(), parts.autocast:
            val_loss = (parts.probe.loss(model, parts.conditions, data.lat_mean, data.val_idx)
                        if data.val_idx else None)
            train_fixed = parts.probe.loss(model, parts.conditions, data.lat_mean,
                                           data.train_idx[:PROBE_TRAIN_CLIPS])
        sample_path, metrics = self._sample(parts, step)
        audition = (self.auditions.render(model, self.codec, parts.autocast, data.negative_text, step)
                    if self.auditions is not None else None)
        model.train()
        return CheckpointEval(val_loss, train_fixed, sample_path, metrics, audition)

    def _sample(self, parts: TrainParts, step: int) -> tuple[Path, dict[str, float]]:
        """Generate the sample clip from fixed noise (seed + 3), decode, loudness-normalise and
        write it; its metrics are measured against the clip's own audio."""
        ctx, cfg, data = self.ctx, self.ctx.cfg, self.data
        if self.codec is None:
            self.codec = load_audio_codec(ctx.variant, ctx.weights, device=ctx.device,
                                          need_encoder=False, need_vocoder=True)
        i = torch.tensor([data.sample_idx], device=ctx.device)
        noise = torch.randn(1, *data.lat_mean.shape[1:], generator=torch.Generator().manual_seed(cfg.seed + 3))
        with parts.autocast:
            lat = generate_latents(parts.model, data.clip_f[i], data.sync_f[i], data.text_f[i],
                                   noise=noise.to(ctx.device), negative_text=data.negative_text,
                                   cfg=cfg.sample_cfg, steps=cfg.sample_steps)
        wave = decode_to_audio(self.codec, lat)[0].float().cpu().numpy()
        wave = report.loudness_normalize(wave)
        seq = ctx.variant.sequence()
        path = report.write_wav(ctx.out_dir / f"sample_step{step:05d}.wav", wave, seq.sampling_rate)
        write_spectrogram(path.with_suffix(".png"), wave, seq.sampling_rate, f"sample at step {step}")
        ref = load_audio(data.clips[data.sample_idx].audio_path, seq.sampling_rate, seq.num_audio_frames)
        metrics = compute_metrics(wave, seq.sampling_rate, reference=ref).to_dict()
        if self.reference_metrics is None:
            self.reference_metrics = compute_metrics(ref, seq.sampling_rate).to_dict()
            self._write_references(ref)
        return path, metrics

    def _write_references(self, ref: Any) -> None:
        """Write the sample clip's own audio as the model hears it (mono, its rate, 8 s), at the
        samples' loudness: what every sample is listened against (the web page's reference);
        and, when a [prepare] step is on, the same clip prepared as it was encoded, at that
        loudness too (so what is heard beside the original is the steps' change of sound)."""
        ctx, seq = self.ctx, self.ctx.variant.sequence()
        loud = report.loudness_normalize(ref)
        ref_path = report.write_wav(ctx.out_dir / REFERENCE_SAMPLE, loud, seq.sampling_rate)
        write_spectrogram(ref_path.with_suffix(".png"), loud, seq.sampling_rate, "reference clip")
        if not ctx.prepare.any():
            return
        target = None
        if ctx.prepare.spectral_match:
            from selva_engine.audio.spectral import spectral_target

            target = spectral_target(self.codec)  # the decoder's VAE keeps its data_mean
        prepared = load_prepared_audio(self.data.clips[self.data.sample_idx].audio_path, seq.sampling_rate,
                                       seq.num_audio_frames, ctx.prepare, target=target)
        loud = report.loudness_normalize(prepared)
        path = report.write_wav(ctx.out_dir / PREPARED_REFERENCE, loud, seq.sampling_rate)
        write_spectrogram(path.with_suffix(".png"), loud, seq.sampling_rate,
                          "reference clip, prepared (" + ", ".join(ctx.prepare.steps()) + ")")

    def _save(self, parts: TrainParts, state: RunState, meta: dict, val_loss: float | None) -> Path:
        """Save adapter_best.pt when `val_loss` is the best yet (updating state.best), then
        the step checkpoint of state.step."""
        out_dir = self.ctx.out_dir
        lora_state = lora_state_dict(parts.model)
        if val_loss is not None and (not state.best or val_loss < state.best["val_loss"]):
            state.best.update({"step": state.step, "val_loss": val_loss, "file": "adapter_best.pt"})
            save_adapter(out_dir / "adapter_best.pt", lora_state, {**meta, "best_val_loss": val_loss})
        return save_checkpoint(out_dir / checkpoint_name(state.step),
                               checkpoint_payload(self.ctx, self.data, parts, state, lora_state, meta))

    def _judge(self, state: RunState) -> None:
        """Update state.overfitting (a warning each time the rule holds) and
        state.recommendation from the checkpoint history."""
        cfg, hist = self.ctx.cfg, state.history
        if overfitting(hist["val_loss"], hist["train_fixed_loss"], cfg.overfit_patience):
            state.overfitting = True
            self.ctx.log.warn(f"validation loss rose for {cfg.overfit_patience} checkpoints in a row "
                              "while the training loss fell: the adapter is overfitting; prefer adapter_best.pt")
        state.recommendation = recommend(
            [Candidate(checkpoint_name(s), str(self.ctx.out_dir / checkpoint_name(s)), s,
                       None if v != v else v, tf, json.loads(m), self._audition_metrics(s))
             for s, v, tf, m in zip(hist["ckpt_step"], hist["val_loss"], hist["train_fixed_loss"],
                                    hist["metrics"], strict=True)],
            reference_hf=(self.reference_metrics or {}).get("hf_energy_ratio"),
            overfitting=state.overfitting,
        ).to_dict()

    def _audition_metrics(self, step: int) -> dict[str, dict[str, float]]:
        """The audition renders' metrics at `step`: this run's, or measured from the `.wav`
        files a run before a resume wrote (kept for the next checkpoints)."""
        if step not in self.audition_metrics and self.auditions is not None:
            names = [v.name for v in self.auditions.videos]
            self.audition_metrics[step] = read_audition_metrics(self.ctx.out_dir, names, step)
        return self.audition_metrics.get(step, {})

    def _write_reports(self, state: RunState, meta: dict, final: bool) -> None:
        """Rewrite the loss plots and meta.json: the adapter meta plus best, recommendation,
        the sample clip and its metrics, the system, the split and every checkpoint with its
        sample metrics."""
        data, hist = self.data, state.history
        stems = data.stems
        # no validation plot without held-out clips: a train-clips-only curve reads as one
        report.write_loss_plots(self.ctx.out_dir, hist["step"], hist["loss"], {
            "train clips (fixed noise)": (hist["ckpt_step"], hist["train_fixed_loss"]),
            "held-out clips": (hist["ckpt_step"], hist["val_loss"]),
        } if data.val_idx else None, total_steps=self.ctx.cfg.steps)
        report.write_meta(self.ctx.out_dir, {
            **meta, "best": state.best or None, "final": final, "recommendation": state.recommendation,
            "sample_clip": stems[data.sample_idx], "system": self.system,
            "prepare": self.ctx.prepare.applied(),
            "augment": self.ctx.augment.applied(),
            "sample_reference_metrics": self.reference_metrics,
            "val_clip_stems": [stems[i] for i in data.val_idx],
            "checkpoints": [checkpoint_name(s) for s in hist["ckpt_step"]],
            "metrics": {str(s): json.loads(m) for s, m in zip(hist["ckpt_step"], hist["metrics"], strict=True)},
            "audition_metrics": {str(s): self.audition_metrics[s] for s in hist["ckpt_step"]
                                 if self.audition_metrics.get(s)},
        })

    def close(self) -> None:
        """Free the audio codec (if one was loaded)."""
        codec, self.codec = self.codec, None
        if codec is not None and hasattr(codec, "free"):
            codec.free()
