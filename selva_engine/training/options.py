"""Training options: one frozen dataclass shared by `selva-train`, job files and the daemon.

Field names are exactly the flag names of the original `train_lora.py` (plus our additions),
so a job file's `[train]` keys, the command line and `meta.json` all speak the same words.
Defaults are the original CLI's unless a comment says otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from selva_engine.audio.augment import check_augment_value
from selva_engine.audio.prepare import check_prepare_value

__all__ = ["CHOICES", "TrainConfig"]

# Options whose value must be one of a fixed set.
CHOICES: dict[str, tuple[str, ...]] = {
    "precision": ("bf16", "fp16", "fp32"),
    "timestep_sampling": ("uniform", "logit_normal", "curriculum"),
    "init_mode": ("standard", "pissa"),
    "spectral_surgery": ("off", "smooth_abs", "hard"),
    "lr_schedule": ("constant", "cosine"),
    "latent_sampling": ("mode", "posterior"),
    "device": ("auto", "cpu", "cuda"),
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything one LoRA training run needs (see each field's comment)."""

    data_dir: str = ""  # directory of stem.npz + stem.<audio> pairs (+ prompts.txt)
    output_dir: str = "lora_output"  # adapters, samples, plots, progress.jsonl
    variant: str = "large_44k"  # generator variant (selva_engine.model.variants)
    selva_dir: str = ""  # weights directory in the ComfyUI models/selva layout
    rank: int = 16  # LoRA rank r
    alpha: float | None = None  # LoRA alpha; None = rank (scale 1)
    target: tuple[str, ...] = ("attn.qkv",)  # module-name suffixes to wrap (nn.Linear only)
    rslora: bool = False  # scale alpha/sqrt(r) instead of alpha/r
    lora_dropout: float = 0.0  # dropout on the LoRA input path while training (0 with pissa)
    # standard: A Kaiming-uniform, B = 0 | pissa: A, B from the base weight's top-r SVD (the
    # base keeps the residual; adapters then carry it). ComfyUI-SelVA's newest node: pissa.
    init_mode: str = "standard"
    lr: float = 1e-4  # peak learning rate of lora_A (lora_B: lr * lora_plus_ratio)
    steps: int = 2000  # micro-batches to train
    warmup_steps: int = 100  # linear warm-up in optimizer steps (first step has LR 0)
    batch_size: int = 4  # clips per micro-batch (drawn without replacement per epoch)
    grad_accum: int = 1  # micro-batches per optimizer step
    save_every: int = 500  # checkpoint (+ sample, + validation) every N steps
    resume: str = ""  # a step checkpoint path, "latest", or "" for a fresh run
    precision: str = "bf16"  # bf16 autocast with fp32 LoRA weights | fp16 + grad scaler | fp32
    seed: int = 42
    # t ~ U[0,1) | sigmoid(N(0, sigma)) | curriculum: logit_normal until curriculum_switch of
    # the run (counted from the start or resume step), uniform after
    timestep_sampling: str = "uniform"
    logit_normal_sigma: float = 1.0
    curriculum_switch: float = 0.6  # fraction of the remaining steps trained logit-normal
    lr_schedule: str = "constant"  # after warm-up: constant or cosine to ~0
    lora_plus_ratio: float = 1.0  # LoRA+: lr of lora_B relative to lora_A
    weight_decay: float = 1e-2  # AdamW weight decay (original CLI: 1e-2)
    grad_clip: float = 1.0  # global grad-norm clip of the LoRA parameters
    latent_sampling: str = "mode"  # x1 = posterior mean, or mean + std*eps as MMAudio trained
    latent_mixup_alpha: float = 0.0  # > 0: x1 mixed with a permutation, lambda ~ Beta(a, a)
    latent_noise_sigma: float = 0.0  # > 0: x1 += eps * sigma * std(x1)
    spectral_surgery: str = "off"  # after training: off | smooth_abs | hard (adapter_final_surgery.pt)
    val_clips: int | None = None  # held-out clips; None = 1 when >= 8 clips, else 0
    overfit_patience: int = 3  # warn after N checkpoints of rising val loss, falling train loss
    log_every: int = 50  # steps per progress line / loss-history point
    sample_steps: int = 25  # Euler steps of the checkpoint sample
    sample_cfg: float = 4.5  # CFG strength of the checkpoint sample (<1 = conditional only)
    sample_negative_prompt: str = ""  # negative prompt of the checkpoint sample
    # audition videos besides the dataset's audition/ folder: paths relative to the dataset,
    # rendered at every checkpoint with the sample settings (selva_engine.training.audition)
    sample_videos: tuple[str, ...] = ()
    eval_clips: int = 0  # after the run, evaluate every checkpoint on N clips (0 = off)
    eval_steps: int = 25  # Euler steps of the evaluation samples
    eval_cfg: float = 4.5  # CFG strength of the evaluation samples
    device: str = "auto"  # auto = cuda when available, else cpu
    cache_dir: str = ""  # extraction cache; "" = <output_dir>/.cache
    # torch.compile the transformer blocks (fused kernels; a GPU gains most). The first step
    # compiles (a "compile" event gives the seconds); if compiling fails the run warns and
    # goes on without it
    compile: bool = False
    # recompute each transformer block's activations in the backward pass: far less memory
    # for larger batches, at the cost of about one more forward pass per step
    gradient_checkpointing: bool = False
    # clip stems left out of training: the daemon's child fills it with the clips the
    # dataset Inspector flags when the dataset says `[inspect] skip_rejected = true`
    exclude_clips: tuple[str, ...] = ()
    # videos of the dataset (None: the dataset.toml [video] value, else the node's default)
    video_split: bool | None = None  # cut videos longer than 8 s into consecutive 8-s clips
    video_mask_strength: float | None = None  # the node's mask_strength (0..1)
    video_mask_clip: bool | None = None  # apply the mask to the CLIP frames
    video_mask_sync: bool | None = None  # apply the mask to the sync frames
    # [prepare]: the audio preparation steps before encoding (selva_engine.audio.prepare;
    # None: the dataset.toml [prepare] value, else the ComfyUI-SelVA node's default, steps off)
    prepare_resample: bool | None = None  # soxr VHQ to the model's rate
    prepare_loudness: bool | None = None  # BS.1770 gain to prepare_target_lufs + true-peak ceiling
    prepare_target_lufs: float | None = None  # LUFS (-40..-6; node: -23)
    prepare_true_peak_dbtp: float | None = None  # dBTP (-6..0; node: -1)
    prepare_compress: bool | None = None  # parallel compression (pedalboard Compressor)
    prepare_threshold_db: float | None = None  # dBFS (-40..-6; node: -18)
    prepare_ratio: float | None = None  # :1 (1.5..4; node: 2.5)
    prepare_attack_ms: float | None = None  # ms (1..100; node: 10)
    prepare_release_ms: float | None = None  # ms (20..500; node: 100)
    prepare_mix: float | None = None  # 0 dry .. 1 compressed (node: 0.4)
    prepare_spectral_match: bool | None = None  # per-band EQ towards the VAE's mel means
    prepare_match_strength: float | None = None  # 0 none .. 1 the full way (node: 0.8)
    prepare_match_max_gain_db: float | None = None  # dB per band at most (1..30; node: 12)
    prepare_hf_smooth: bool | None = None  # low-pass blend
    prepare_cutoff_hz: float | None = None  # Hz (2000..20000; node: 12000)
    prepare_blend: float | None = None  # 0 original .. 1 low-passed (node: 0.7)
    # [augment]: variants of the training clips, encoded once after [prepare] (selva_engine.
    # audio.augment; None: the dataset.toml [augment] value, else the Augmenter node's default)
    augment_enabled: bool | None = None  # make variants (default off)
    augment_variants: int | None = None  # copies per training clip (1..20; node: 2)
    augment_gain_db: float | None = None  # gain drawn from ±dB (0..12; node: 3)
    augment_pitch_semitones: float | None = None  # pitch shift drawn from ±semitones (0..4; node: 0)
    augment_stretch: float | None = None  # speed drawn from 1 ± this (0..0.1, the safe range; node: 0)
    augment_seed: int | None = None  # with the clip and variant number, decides each draw (node: 42)
    augment_keep_originals: bool | None = None  # false: train on the variants only (node: true)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def video_settings(self) -> dict[str, Any]:
        """The `[video]` settings this config sets (keys of selva_engine.data.videos.VideoSettings)."""
        values = {"split": self.video_split, "mask_strength": self.video_mask_strength,
                  "mask_clip": self.video_mask_clip, "mask_sync": self.video_mask_sync}
        return {k: v for k, v in values.items() if v is not None}

    @property
    def prepare_settings(self) -> dict[str, Any]:
        """The `[prepare]` settings this config sets (keys of selva_engine.audio.prepare.PrepareSettings)."""
        return {f.name[len("prepare_"):]: getattr(self, f.name) for f in fields(self)
                if f.name.startswith("prepare_") and getattr(self, f.name) is not None}

    @property
    def augment_settings(self) -> dict[str, Any]:
        """The `[augment]` settings this config sets (keys of selva_engine.audio.augment.AugmentSettings)."""
        return {f.name[len("augment_"):]: getattr(self, f.name) for f in fields(self)
                if f.name.startswith("augment_") and getattr(self, f.name) is not None}

    @property
    def effective_alpha(self) -> float:
        """Alpha actually used (alpha defaults to the rank)."""
        return float(self.rank if self.alpha is None else self.alpha)

    def problems(self) -> list[tuple[str, str]]:
        """Validate values; returns (field, message) pairs, empty when all is well."""
        out: list[tuple[str, str]] = []
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                out.append((name, f"got {value!r}, expected one of {', '.join(allowed)}"))
        positive_ints = ("rank", "steps", "batch_size", "grad_accum", "save_every",
                         "log_every", "sample_steps", "eval_steps")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                out.append((name, f"got {value!r}, expected an integer >= 1"))
        for name in ("warmup_steps", "overfit_patience", "eval_clips"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                out.append((name, f"got {value!r}, expected an integer >= 0"))
        if self.val_clips is not None and (not isinstance(self.val_clips, int) or self.val_clips < 0):
            out.append(("val_clips", f"got {self.val_clips!r}, expected an integer >= 0"))
        for name in ("lr", "lora_plus_ratio", "logit_normal_sigma"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0:
                out.append((name, f"got {value!r}, expected a number > 0"))
        if not 0.0 <= float(self.curriculum_switch) <= 1.0:
            out.append(("curriculum_switch", f"got {self.curriculum_switch!r}, expected 0..1"))
        for name in ("weight_decay", "grad_clip", "sample_cfg", "eval_cfg", "latent_mixup_alpha",
                     "latent_noise_sigma"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0:
                out.append((name, f"got {value!r}, expected a number >= 0"))
        if not 0.0 <= float(self.lora_dropout) < 1.0:
            out.append(("lora_dropout", f"got {self.lora_dropout!r}, expected 0 <= p < 1"))
        if self.video_mask_strength is not None and not 0.0 <= float(self.video_mask_strength) <= 1.0:
            out.append(("video_mask_strength", f"got {self.video_mask_strength!r}, expected 0..1"))
        for key, value in self.prepare_settings.items():
            try:
                check_prepare_value(key, value)
            except ValueError as exc:
                out.append((f"prepare_{key}", str(exc).split(": ", 1)[1]))
        for key, value in self.augment_settings.items():
            try:
                check_augment_value(key, value)
            except ValueError as exc:
                out.append((f"augment_{key}", str(exc).split(": ", 1)[1]))
        if self.alpha is not None and not float(self.alpha) > 0:
            out.append(("alpha", f"got {self.alpha!r}, expected a number > 0"))
        out += [("sample_videos", f"got {rel!r}, expected a path relative to the dataset, inside it")
                for rel in self.sample_videos if not _inside_relative(rel)]
        if not self.target or not all(isinstance(t, str) and t for t in self.target):
            out.append(("target", f"got {list(self.target)!r}, expected non-empty module suffixes"))
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (lists, no tuples) for JSON / TOML."""
        d = asdict(self)
        d["target"] = list(self.target)
        d["exclude_clips"] = list(self.exclude_clips)
        d["sample_videos"] = list(self.sample_videos)
        d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from plain data; unknown keys raise KeyError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise KeyError(f"unknown training option(s): {', '.join(unknown)}")
        data = dict(data)
        if "target" in data:
            t = data["target"]
            data["target"] = (t,) if isinstance(t, str) else tuple(t)
        if "exclude_clips" in data:
            data["exclude_clips"] = tuple(str(stem) for stem in data["exclude_clips"])
        if "sample_videos" in data:
            v = data["sample_videos"]
            data["sample_videos"] = (v,) if isinstance(v, str) else tuple(v)
        return cls(**data)


def _inside_relative(rel: Any) -> bool:
    """A non-empty relative path that never climbs out (no leading slash, no '..' part)."""
    if not isinstance(rel, str) or not rel.strip() or rel.startswith(("/", "\\")):
        return False
    return ".." not in rel.replace("\\", "/").split("/")


def option_names() -> list[str]:
    """All training option names, in declaration order."""
    return [f.name for f in fields(TrainConfig) if f.name != "extra"]


