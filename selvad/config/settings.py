"""The settings schema shared by job files and the daemon's `[defaults]`: sections, keys, types.

A job file and `[defaults]` set the same TrainConfig fields through the same sections
(`[lora]`, `[train]`, `[sample]`, `[validation]`, `[eval]`, `[video]`) plus `variant`, `priority` and
`[trigger]`. This module reads and checks those keys; selvad.config.jobs merges them into runs
and selvad.config.daemon checks `[defaults]` with `check_defaults`.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from selva_engine.model.variants import VARIANTS
from selva_engine.training.options import TrainConfig
from selvad.config.schema import Problems, coerce, describe, join_key, parse_section

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
               "negative_prompt": "sample_negative_prompt"},
    "validation": {"val_clips": "val_clips", "overfit_patience": "overfit_patience"},
    "eval": {"clips": "eval_clips", "steps": "eval_steps", "cfg": "eval_cfg"},
    "video": {k: f"video_{k}" for k in ("split", "mask_strength", "mask_clip", "mask_sync")},
}

FIELD_KEY = {f: f"{s}.{k}" for s, keys in SETTING_SECTIONS.items() for k, f in keys.items()}
FIELD_KEY["variant"] = "variant"

DEFAULTS_KEYS = ("variant", "priority", *SETTING_SECTIONS, "trigger")

TRAIN_HINTS = typing.get_type_hints(TrainConfig)


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
    for sec, keys in SETTING_SECTIONS.items():
        if sec not in data:
            continue
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
            try:
                out[name] = (coerce(value, TRAIN_HINTS[name]), kp)
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


def check_top(data: dict[str, Any], allowed: Sequence[str], p: Problems, prefix: str) -> None:
    for key in data:
        if key not in allowed:
            p.unknown(join_key(prefix, key), key, list(allowed))


def check_other(data: dict, p: Problems, prefix: str) -> tuple[int | None, dict]:
    priority = data.get("priority")
    if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool)):
        p.add(join_key(prefix, "priority"), "wrong type", got=priority, expected="an integer")
        priority = None
    trigger = _read_table(TriggerConfig, data, "trigger", p, prefix)
    if trigger.get("settle_minutes", 0) < 0:
        p.add(join_key(prefix, "trigger.settle_minutes"), "must not be negative",
              got=trigger.pop("settle_minutes"), expected="a number >= 0")
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

