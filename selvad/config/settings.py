"""The settings schema shared by job files and the daemon's `[defaults]`: sections, keys, types.

A job file and `[defaults]` set the same TrainConfig fields through the same sections
(`[lora]`, `[train]`, `[sample]`, `[validation]`, `[eval]`, `[video]`, `[prepare]`, `[augment]`) plus `variant`, `priority` and
`[trigger]`. This module reads and checks those keys; selvad.config.jobs merges them into runs
and selvad.config.daemon checks `[defaults]` with `check_defaults`.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from selva_engine.audio.augment import AUGMENT_LIMITS, AugmentSettings
from selva_engine.audio.prepare import PREPARE_LIMITS, PrepareSettings
from selva_engine.model.variants import VARIANTS
from selva_engine.training.options import TrainConfig
from selvad.config.schema import (
    OutOfRange,
    Problems,
    coerce,
    describe,
    join_key,
    parse_section,
)

__all__ = ["DEFAULTS_KEYS", "FIELD_KEY", "SETTING_SECTIONS", "TriggerConfig", "check_defaults",
           "TRAIN_HINTS", "TRAIN_KEYS", "check_other", "check_top", "read_settings",
           "report_problems"]

TRAIN_KEYS = ("lr", "steps", "warmup_steps", "batch_size", "grad_accum", "save_every",
              "precision", "seed", "timestep_sampling", "logit_normal_sigma", "lr_schedule",
              "lora_plus_ratio", "weight_decay", "grad_clip", "latent_sampling", "log_every",
              "curriculum_switch", "latent_mixup_alpha", "latent_noise_sigma", "spectral_surgery",
              "compile", "gradient_checkpointing")

# job section -> {job key: TrainConfig field}
SETTING_SECTIONS: dict[str, dict[str, str]] = {
    "lora": {k: k for k in ("rank", "alpha", "target", "rslora", "lora_dropout", "init_mode")},
    "train": {k: k for k in TRAIN_KEYS},
    "sample": {"steps": "sample_steps", "cfg": "sample_cfg",
               "negative_prompt": "sample_negative_prompt", "videos": "sample_videos"},
    "validation": {"val_clips": "val_clips", "overfit_patience": "overfit_patience"},
    "eval": {"clips": "eval_clips", "steps": "eval_steps", "cfg": "eval_cfg"},
    "video": {k: f"video_{k}" for k in ("split", "mask_strength", "mask_clip", "mask_sync")},
    # the audio preparation steps (selva_engine.audio.prepare), over dataset.toml's [prepare]
    "prepare": {k: f"prepare_{k}" for k in PrepareSettings.__dataclass_fields__},
    # variants of the training clips (selva_engine.audio.augment), over dataset.toml's [augment]
    "augment": {k: f"augment_{k}" for k in AugmentSettings.__dataclass_fields__},
}

# Other names of a key, accepted as the key itself: timestep_mode is ComfyUI-SelVA's and
# meta.json's name of timestep_sampling (selva-train takes both flags too).
ALIASES: dict[str, dict[str, str]] = {"train": {"timestep_mode": "timestep_sampling"}}

FIELD_KEY = {f: f"{s}.{k}" for s, keys in SETTING_SECTIONS.items() for k, f in keys.items()}
FIELD_KEY["variant"] = "variant"

DEFAULTS_KEYS = ("variant", "priority", *SETTING_SECTIONS, "trigger")

TRAIN_HINTS = typing.get_type_hints(TrainConfig)

# The largest value of each numeric setting that is still a run someone means (a typo of a
# few digits is refused here, in the file's words, before it fails or runs for months). The
# lower bounds are TrainConfig.problems()'s; the upper ones are far above any useful value.
LIMITS: dict[str, float] = {
    "rank": 1024, "alpha": 1e5, "lora_dropout": 1, "lr": 10, "steps": 10_000_000,
    "warmup_steps": 10_000_000, "batch_size": 4096, "grad_accum": 10_000,
    "save_every": 10_000_000, "seed": 2**32 - 1, "logit_normal_sigma": 100,
    "curriculum_switch": 1, "lora_plus_ratio": 1000, "weight_decay": 10, "grad_clip": 1e6,
    "latent_mixup_alpha": 100, "latent_noise_sigma": 100, "val_clips": 100_000,
    "overfit_patience": 10_000, "log_every": 10_000_000, "sample_steps": 1000,
    "sample_cfg": 100, "eval_clips": 100_000, "eval_steps": 1000, "eval_cfg": 100,
}
SEED_MIN = 0  # torch and numpy generators take 0 .. 2^32-1 alike
PRIORITY_RANGE = (-1_000_000, 1_000_000)
SETTLE_MAX_MINUTES = 7 * 24 * 60  # a week


def limit_problem(name: str, value: Any) -> str:
    """"" when `value` of TrainConfig field `name` is within its LIMITS, else the expected
    range in words (the lower bound checks stay TrainConfig.problems()'s)."""
    if name.startswith("prepare_") and name[len("prepare_"):] in PREPARE_LIMITS and value is not None:
        lo, hi = PREPARE_LIMITS[name[len("prepare_"):]]
        return "" if lo <= value <= hi else f"a number from {lo:g} to {hi:g}"
    if name.startswith("augment_") and name[len("augment_"):] in AUGMENT_LIMITS and value is not None:
        lo, hi = AUGMENT_LIMITS[name[len("augment_"):]]
        kind = "an integer" if isinstance(value, int) else "a number"
        return "" if lo <= value <= hi else f"{kind} from {lo:g} to {hi:g}"
    hi = LIMITS.get(name)
    if hi is None or value is None or isinstance(value, str | bool | tuple):
        return ""
    if name == "seed" and value < SEED_MIN:
        return f"an integer from 0 to {hi:,}"
    if value > hi:
        kind = "an integer" if isinstance(value, int) else "a number"
        return f"{kind} at most {hi:,g}" if isinstance(hi, float) else f"{kind} at most {hi:,}"
    return ""


@dataclass(frozen=True)
class TriggerConfig:
    """When a dataset change queues a training run (extraction is always queued)."""

    on_change: bool = True  # retrain when the dataset's files or the job file change;
    # false: training only on `selvad enqueue` (extraction is queued all the same)
    settle_minutes: float = 5.0  # quiet time after the last change before training is queued


def read_settings(data: dict[str, Any], p: Problems, prefix: str) -> dict[str, tuple[Any, str]]:
    """TrainConfig fields set by the setting sections of `data` -> (value, key path)."""
    out: dict[str, tuple[Any, str]] = {}
    if "variant" in data:
        v, kp = data["variant"], join_key(prefix, "variant")
        if v not in VARIANTS:
            p.add(kp, "unknown variant", got=v, expected=" | ".join(VARIANTS))
        else:
            out["variant"] = (v, kp)
    for sec in SETTING_SECTIONS:
        if sec not in data:
            continue
        keys = {**SETTING_SECTIONS[sec], **ALIASES.get(sec, {})}
        table, sp = data[sec], join_key(prefix, sec)
        if not isinstance(table, dict):
            p.add(sp, "expected a table", got=table, expected=f"[{sec}] with keys")
            continue
        for key, value in table.items():
            kp = join_key(sp, key)
            if key not in keys:
                other = [s for s, k in SETTING_SECTIONS.items() if key in k and s != sec]
                if other:
                    p.add(kp, f"this key belongs in [{other[0]}]", expected=f"{other[0]}.{key}")
                else:
                    p.unknown(kp, key, list(keys))
                continue
            name = keys[key]
            if name in out and out[name][1].startswith(sp + "."):
                p.add(kp, f"sets the same option as {out[name][1]}", expected="one of the two")
                continue
            try:
                out[name] = (coerce(value, TRAIN_HINTS[name]), kp)
                if limit := limit_problem(name, out[name][0]):
                    del out[name]
                    p.add(kp, "out of range", got=value, expected=limit)
            except OutOfRange as exc:
                p.add(kp, "out of range", got=value, expected=exc.args[0])
            except TypeError:
                p.add(kp, "wrong type", got=value, expected=describe(TRAIN_HINTS[name]))
    return out


def _read_table(cls: type, data: dict[str, Any], key: str, p: Problems, prefix: str) -> dict:
    """Keys explicitly set in the `[key]` table of `data`, type-checked via `cls`."""
    if key not in data:
        return {}
    parsed = parse_section(cls, data[key], join_key(prefix, key), p)
    table = data[key] if isinstance(data[key], dict) else {}
    return {k: getattr(parsed, k) for k in table if hasattr(parsed, k)}


def section_of(key: str) -> str:
    """The setting section a key of that name belongs in ("" when none has it)."""
    for sec, keys in SETTING_SECTIONS.items():
        if key in keys or key in ALIASES.get(sec, {}):
            return "trigger" if key in ("on_change", "settle_minutes") else sec
    return "trigger" if key in ("on_change", "settle_minutes") else ""


def check_top(data: dict[str, Any], allowed: Sequence[str], p: Problems, prefix: str) -> None:
    """Record each key of `data` that is not in `allowed`; a key of a section says which."""
    for key in data:
        if key in allowed:
            continue
        sec = section_of(key)
        if sec and sec in allowed:
            p.add(join_key(prefix, key), f"{key} belongs in [{sec}]",
                  expected=f"the line under [{sec}], or {sec}.{key} = ...")
        else:
            p.unknown(join_key(prefix, key), key, list(allowed))


def check_other(data: dict, p: Problems, prefix: str) -> tuple[int | None, dict]:
    """`priority` and the `[trigger]` table of `data`, checked; bad values become problems."""
    priority = data.get("priority")
    lo, hi = PRIORITY_RANGE
    if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool)):
        p.add(join_key(prefix, "priority"), "wrong type", got=priority, expected="an integer")
        priority = None
    elif priority is not None and not lo <= priority <= hi:
        p.add(join_key(prefix, "priority"), "out of range", got=priority,
              expected=f"an integer from {lo:,} to {hi:,} (higher runs first)")
        priority = None
    trigger = _read_table(TriggerConfig, data, "trigger", p, prefix)
    settle = trigger.get("settle_minutes", 0)
    if settle < 0:
        p.add(join_key(prefix, "trigger.settle_minutes"), "must not be negative",
              got=trigger.pop("settle_minutes"), expected="a number >= 0")
    elif settle > SETTLE_MAX_MINUTES:
        p.add(join_key(prefix, "trigger.settle_minutes"), "out of range",
              got=trigger.pop("settle_minutes"),
              expected=f"a number of minutes from 0 to {SETTLE_MAX_MINUTES:,} (a week)")
    return priority, trigger


def report_problems(cfg: TrainConfig, origin: dict[str, tuple[Any, str]], p: Problems,
            fallback: str, only: set[str] | None = None) -> None:
    """Record TrainConfig.problems() under the key path each bad value came from."""
    for name, message in cfg.problems():
        if only is not None and name not in only:
            continue
        kp = origin[name][1] if name in origin else join_key(fallback, FIELD_KEY.get(name, name))
        p.add(kp, f"invalid value: {message}")


def check_defaults(table: Any, p: Problems) -> dict[str, Any]:
    """Validate a daemon `[defaults]` table with the job schema; returns it unchanged.

    Problems are recorded in `p` under `defaults.<key>`; `dataset` and `[[sweep]]` are
    refused because they only make sense per job.
    """
    if not isinstance(table, dict):
        p.add("defaults", "expected a table", got=table, expected="[defaults] with job keys")
        return {}
    check_top(table, DEFAULTS_KEYS, p, "defaults")
    settings = read_settings(table, p, "defaults")
    check_other(table, p, "defaults")
    cfg = TrainConfig(**{k: v for k, (v, _) in settings.items()})
    report_problems(cfg, settings, p, "defaults", only=set(settings))
    return table

