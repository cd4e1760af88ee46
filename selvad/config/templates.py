"""`selvad init-job`: a new job file with every key documented and commented out.

Only `dataset` and `variant` are set, so the daemon's `[defaults]` keep applying to every
other key until the user uncomments it. Values are rendered with tomli_w.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import tomli_w

from selva_engine.model.variants import VARIANTS
from selva_engine.training.options import TrainConfig
from selvad.config.daemon import DaemonConfig
from selvad.config.jobs import SAFE_NAME, JobError, load_job
from selvad.config.settings import SETTING_SECTIONS, TriggerConfig

__all__ = ["init_job_text", "start_note", "write_job_file"]


# One line of documentation per job key, used by init_job_text.
_DOCS: dict[str, str] = {
    "rank": "LoRA rank r: 16 for most datasets; 32-64 only with 100+ varied clips",
    "alpha": 'LoRA alpha; "auto" = rank (scale 1)',
    "target": 'module-name suffixes to wrap; add "linear1" only with 150+ clips',
    "rslora": "scale alpha/sqrt(r) instead of alpha/r (helps at high ranks)",
    "lora_dropout": "dropout on the LoRA input while training (0.05-0.1 against overfitting)",
    "init_mode": "standard (B = 0) | pissa (start from the base's principal directions; faster)",
    "lr": "peak learning rate",
    "steps": "micro-batches to train (7 clips: 2000-4000; 50+ clips: 4000-8000)",
    "warmup_steps": "linear warm-up in optimizer steps",
    "batch_size": "clips per micro-batch",
    "grad_accum": "micro-batches per optimizer step (raise when VRAM is short)",
    "save_every": "checkpoint + sample + validation every N steps",
    "precision": "bf16 | fp16 | fp32",
    "seed": "random seed of the run",
    "timestep_sampling": "uniform | logit_normal (mid timesteps) | curriculum (logit_normal, then uniform)",
    "curriculum_switch": "curriculum: fraction of the run trained logit_normal before uniform",
    "logit_normal_sigma": "spread of logit_normal timestep sampling",
    "lr_schedule": "constant | cosine (after warm-up)",
    "lora_plus_ratio": "LoRA+: learning rate of lora_B relative to lora_A",
    "weight_decay": "AdamW weight decay",
    "grad_clip": "global gradient-norm clip",
    "latent_sampling": "mode (posterior mean) | posterior (mean + std * noise)",
    "latent_mixup_alpha": "0 = off; 0.2-0.4 mixes clips' latents (small datasets overfit less)",
    "latent_noise_sigma": "0 = off; 0.01-0.05 adds noise to the latents (regularises)",
    "spectral_surgery": "off | smooth_abs | hard: also write adapter_final_surgery.pt to compare",
    "log_every": "steps per progress line",
    "compile": "true: torch.compile the transformer blocks (faster GPU steps; falls back if it fails)",
    "gradient_checkpointing": "true: recompute activations in backward (less memory, slower step)",
    "sample_steps": "Euler steps of each checkpoint sample",
    "sample_cfg": "classifier-free guidance strength of the samples",
    "sample_negative_prompt": "negative prompt of the samples",
    "sample_videos": "audition videos (paths in the dataset) rendered at every checkpoint, besides the "
                     "dataset's audition/ folder",
    "val_clips": 'held-out clips for validation loss; "auto" = 1 when >= 8 clips, else 0',
    "overfit_patience": "warn after N checkpoints of rising validation loss",
    "eval_clips": "after the run, compare every checkpoint on N clips by samples and metrics (0 = off)",
    "eval_steps": "Euler steps of the evaluation samples",
    "eval_cfg": "classifier-free guidance strength of the evaluation samples",
    "video_split": 'videos over 8 s: true = consecutive 8-s clips, false = the first 8 s; "auto" = the '
                   "dataset's dataset.toml [video] value (default false)",
    "video_mask_strength": 'how strongly <clip>.mask.png / .mask.mp4 grey out the background (0..1); '
                           '"auto" = dataset.toml, else 1',
    "video_mask_clip": 'apply the mask to the CLIP frames; "auto" = dataset.toml, else true',
    "video_mask_sync": 'apply the mask to the sync frames; "auto" = dataset.toml, else true',
    # [prepare]: "auto" = the dataset.toml [prepare] value, else the ComfyUI-SelVA node's default
    "prepare_resample": 'step 1: resample to the model\'s rate with soxr VHQ; "auto" = dataset.toml, else off',
    "prepare_loudness": 'step 2: BS.1770 loudness to target_lufs, then the true-peak ceiling; "auto" = '
                        "dataset.toml, else off",
    "prepare_target_lufs": 'integrated loudness in LUFS (-40..-6); "auto" = dataset.toml, else -23',
    "prepare_true_peak_dbtp": 'true-peak ceiling in dBTP after the gain (-6..0); "auto" = dataset.toml, else -1',
    "prepare_compress": 'step 3: parallel compression (pedalboard); "auto" = dataset.toml, else off',
    "prepare_threshold_db": 'compressor threshold in dBFS (-40..-6); "auto" = dataset.toml, else -18',
    "prepare_ratio": 'compressor ratio (1.5..4); "auto" = dataset.toml, else 2.5',
    "prepare_attack_ms": 'compressor attack in ms (1..100); "auto" = dataset.toml, else 10',
    "prepare_release_ms": 'compressor release in ms (20..500); "auto" = dataset.toml, else 100',
    "prepare_mix": 'compressed share of the mix (0 = dry .. 1); "auto" = dataset.toml, else 0.4',
    "prepare_spectral_match": 'step 4: per-band EQ towards the VAE\'s training mel means; "auto" = dataset.toml, else off',
    "prepare_match_strength": 'how far towards the VAE\'s means (0..1); "auto" = dataset.toml, else 0.8',
    "prepare_match_max_gain_db": 'largest change of one band in dB (1..30); "auto" = dataset.toml, else 12',
    "prepare_hf_smooth": 'step 5: blend a low-pass in (soft HF cut); "auto" = dataset.toml, else off',
    "prepare_cutoff_hz": 'low-pass cutoff in Hz (2000..20000); "auto" = dataset.toml, else 12000',
    "prepare_blend": 'low-passed share (0 = original .. 1); "auto" = dataset.toml, else 0.7',
    # [augment]: "auto" = the dataset.toml [augment] value, else the Augmenter node's default
    "augment_enabled": 'variants of each training clip, encoded once after [prepare], never validated on; '
                       '"auto" = dataset.toml, else off',
    "augment_variants": 'augmented copies of each training clip (1..20); "auto" = dataset.toml, else 2',
    "augment_gain_db": 'each variant\'s gain drawn from +-dB (0..12); "auto" = dataset.toml, else 3',
    "augment_pitch_semitones": 'pitch shift drawn from +-semitones (0..4, 0 = none); "auto" = dataset.toml, '
                               'else 0',
    "augment_stretch": 'speed drawn from 1 +- this, duration fitted back (0..0.1: beyond, the sync with the '
                       'video breaks); "auto" = dataset.toml, else 0',
    "augment_seed": 'with the clip and the variant number, decides each variant; "auto" = dataset.toml, '
                    'else 42',
    "augment_keep_originals": 'false: train on the variants only; "auto" = dataset.toml, else true',
}


def _toml_line(key: str, value: Any) -> str:
    # tomli_w writes arrays over several lines; fold them so the line can be commented out.
    text = tomli_w.dumps({key: "auto" if value is None else value})
    return " ".join(part.strip() for part in text.splitlines()).replace(", ]", " ]")


def init_job_text(name: str, dataset: str, variant: str = "large_44k") -> str:
    """A complete, commented job file for job `name` training on `dataset` with `variant`.

    Only `dataset` and `variant` are set; every other key is written commented out at its
    built-in default, so the daemon's `[defaults]` still apply until a line is uncommented.
    Values are rendered with tomli_w. The result parses with `load_job`.
    """
    t = TrainConfig()
    lines = [
        f"# selvad job {name!r}: one LoRA training job (the job name is the file name).",
        "# Lines starting with '#' show built-in defaults; uncomment a line to override it.",
        "# Precedence: this file > [defaults] of the daemon config > built-in defaults.",
        "",
        "# Dataset: a subdirectory name of a dataset root, or a path inside one.",
        _toml_line("dataset", dataset),
        "# Model variant: " + ", ".join(VARIANTS),
        _toml_line("variant", variant),
        "# Higher priority runs first among queued runs.",
        "# " + _toml_line("priority", 0),
    ]
    for sec, keys in SETTING_SECTIONS.items():
        lines += ["", f"[{sec}]"]
        for key, fname in keys.items():
            lines += [f"# {_DOCS[fname]}", "# " + _toml_line(key, getattr(t, fname))]
    tr = TriggerConfig()
    lines += ["", "[trigger]",
              "# Retrain automatically when the dataset's clips (or this file) change;",
              f"# false: train only on `selvad enqueue {name}`.",
              "# " + _toml_line("on_change", tr.on_change),
              "# Minutes without changes before a training run is queued.",
              "# " + _toml_line("settle_minutes", tr.settle_minutes),
              "", "# Sweeps: several runs from this job, each overriding some keys.",
              "# [[sweep]]", '# id = "rank8"', "# lora.rank = 8", "# train.lr = 2e-4",
              "# [[sweep]]", '# id = "rank32"', "# lora.rank = 32", ""]
    return "\n".join(lines)


def write_job_file(jobs_dir: Path | str, name: str, dataset: str,
                   variant: str = "large_44k") -> Path:
    """Write `init_job_text(...)` to `<jobs_dir>/<name>.toml` atomically; never overwrite.

    The text goes to a temp file that is fsync'ed and then hard-linked to the final name,
    which fails with FileExistsError if a job of that name exists (no race with a second
    writer). Raises ValueError for an unsafe name or unknown variant. Returns the path.
    """
    if not SAFE_NAME.match(name):
        raise ValueError(f"job name {name!r} is not a safe name (letters, digits, . _ -)")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    jobs_dir = Path(jobs_dir)
    jobs_dir.mkdir(parents=True, exist_ok=True)
    target = jobs_dir / f"{name}.toml"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=jobs_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(init_job_text(name, dataset, variant).encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, target)  # atomic, and refuses to replace an existing file
    finally:
        os.unlink(tmp)
    return target


def start_note(path: Path, cfg: DaemonConfig) -> str:
    """When a running daemon starts training the new job file at `path`: its settle time
    after the last save (trigger.settle_minutes), or only on `selvad enqueue`."""
    try:
        job = load_job(path, cfg)
    except (JobError, OSError, ValueError):
        return "the daemon reports what is wrong with it in `selvad status`"
    name = path.stem
    if not job.trigger.on_change:
        return f"training starts only on `selvad enqueue {name}` (trigger.on_change = false)"
    minutes = job.trigger.settle_minutes
    wait = (f"{minutes * 60:.0f} s" if minutes < 1 else
            f"{minutes:g} minute{'s' if minutes != 1 else ''}")
    return (f"a running daemon queues its training {wait} after your last save "
            f"(trigger.settle_minutes; each save restarts the wait), so edit it now; "
            f"`selvad status` shows the run")
