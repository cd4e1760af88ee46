"""Job files: one TOML per job in the jobs directory, resolved into fully specified runs.

Schema (every key optional except `dataset`; the job's name is the file stem)::

    dataset  = "birds"        # a dataset name (a subdirectory of a dataset root) or a path
                              # that resolves to one; nothing outside the roots is accepted
    variant  = "large_44k"    # selva_engine.model.variants name
    priority = 0              # higher runs first
    [lora]        rank, alpha ("auto" = rank), target, rslora, lora_dropout
    [train]       lr, steps, warmup_steps, batch_size, grad_accum, save_every, precision,
                  seed, timestep_sampling, logit_normal_sigma, lr_schedule, lora_plus_ratio,
                  weight_decay, grad_clip, latent_sampling, log_every
    [sample]      steps, cfg, negative_prompt, videos   (-> sample_steps, sample_cfg, ...)
    [validation]  val_clips ("auto" or an integer), overfit_patience
    [trigger]     on_change (retrain when the dataset changes), settle_minutes
    [eval]        clips (0 = off), steps, cfg: evaluate every checkpoint after the run
    [[sweep]]     id = "name" plus overrides written as sub-tables of the same sections:
                      [[sweep]]
                      id = "r8"
                      lora.rank = 8
                      train.lr = 2e-4

Precedence, applied in one place (`_merge`): job file > daemon `[defaults]` > TrainConfig
built-in defaults; a sweep entry overrides the merged job settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from selva_engine.training.options import CHOICES, TrainConfig
from selvad.config.daemon import DaemonConfig
from selvad.config.schema import ConfigError, Problems, read_toml
from selvad.config.settings import (
    DEFAULTS_KEYS,
    SETTING_SECTIONS,
    TRAIN_HINTS,
    TriggerConfig,
    check_other,
    check_top,
    read_settings,
    report_problems,
)

__all__ = [
    "HASH_EXCLUDED",
    "SAFE_NAME",
    "Job",
    "JobError",
    "RunSpec",
    "SweepEntry",
    "check_run_id",
    "config_hash",
    "job_file",
    "load_job",
    "resolve_dataset",
]

# Job names, sweep ids, dataset directory names and run ids: one path component, never a
# path (no separator, no leading dot); \Z, not $, which would also accept a final newline.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
SAFE_NAME_RULE = "letters, digits, '.', '_', '-', at most 64, starting with a letter or digit"
# TrainConfig options added after 0.1, with their defaults (see config_hash).
LATER_OPTIONS = {"init_mode": "standard", "curriculum_switch": 0.6, "latent_mixup_alpha": 0.0,
                 "latent_noise_sigma": 0.0, "spectral_surgery": "off", "video_split": None,
                 "video_mask_strength": None, "video_mask_clip": None, "video_mask_sync": None,
                 "sample_videos": [], **{f"prepare_{k}": None for k in SETTING_SECTIONS["prepare"]},
                 **{f"augment_{k}": None for k in SETTING_SECTIONS["augment"]}}
# TrainConfig fields the daemon fills itself; they never change what a run learns.
HASH_EXCLUDED = ("data_dir", "output_dir", "selva_dir", "resume", "device", "cache_dir",
                 "exclude_clips")
# Job keys of speed alone (the same numbers, faster or in less memory): not in the hash either.
SPEED_OPTIONS = ("compile", "gradient_checkpointing")
JOB_KEYS = ("dataset", *DEFAULTS_KEYS, "sweep")


class JobError(ConfigError):
    """A job file is invalid; `problems` lists every `file:key: problem` message."""


@dataclass(frozen=True)
class SweepEntry:
    """One `[[sweep]]` entry: its id and the TrainConfig fields it overrides."""

    id: str
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunSpec:
    """A fully resolved run, ready to be queued; `config.output_dir` is set by the worker."""

    job: str
    sweep_id: str  # "" when the job has no sweep
    dataset: str
    kind: str  # "train" | "extract"
    priority: int
    config: TrainConfig
    config_hash: str


@dataclass(frozen=True)
class Job:
    """A validated job file; `base` holds the merged settings before sweep overrides."""

    name: str
    path: Path
    dataset: str  # dataset name (directory name under its root)
    dataset_dir: Path
    priority: int
    trigger: TriggerConfig
    base: TrainConfig
    sweeps: tuple[SweepEntry, ...] = ()

    def resolve_runs(self) -> list[RunSpec]:
        """One RunSpec per sweep entry (or a single one), each with its config hash."""
        configs = [("", self.base)] if not self.sweeps else [
            (s.id, replace(self.base, **s.overrides)) for s in self.sweeps
        ]
        return [RunSpec(self.name, sid, self.dataset, "train", self.priority, c, config_hash(c))
                for sid, c in configs]

    def extract_run(self) -> RunSpec:
        """The extraction run of this job's dataset: keyed by what the cache depends on."""
        key: dict = {"kind": "extract", "variant": self.base.variant}
        if self.base.prepare_settings:  # prepared latents are other cache entries: another run
            key["prepare"] = self.base.prepare_settings
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        # named after the dataset, not the job, so that several jobs on the same dataset and
        # variant share one extraction run (the queue de-duplicates on the name and hashes)
        return RunSpec(f"extract-{self.dataset}", "", self.dataset, "extract", self.priority,
                       self.base, digest)


def job_file(jobs_dir: Path | str, name: Any) -> Path:
    """The job file `<jobs_dir>/<name>.toml` of the job called `name`.

    A name from the command line or a request row is a job name, never a path: anything
    that is not a safe name raises ValueError saying so, so that no file outside the jobs
    directory is ever read as a job. The file itself may not exist.
    """
    if not isinstance(name, str) or not SAFE_NAME.match(name):
        raise ValueError(f"{name!r} is not a job name ({SAFE_NAME_RULE}; the job file is "
                         f"{Path(jobs_dir) / 'NAME.toml'})")
    return Path(jobs_dir) / f"{name}.toml"


def check_run_id(value: Any) -> str:
    """`value` if it has the form of a run id (a safe name); ValueError otherwise."""
    if not isinstance(value, str) or not SAFE_NAME.match(value):
        raise ValueError(f"{value!r} is not a run id (ids look like 20261125-081500-ab12; "
                         "`selvad status` and `selvad runs JOB` list them)")
    return value


def config_hash(cfg: TrainConfig) -> str:
    """sha256 of the canonical JSON of `cfg`'s options, without paths and the device.

    Options added after 0.1 count only when set to something else than their default, so an
    upgrade does not make every finished run look changed (and queue it again).
    """
    d = cfg.to_dict()
    for key in (*HASH_EXCLUDED, *SPEED_OPTIONS):
        d.pop(key, None)
    for key, default in LATER_OPTIONS.items():
        if d.get(key) == default:
            d.pop(key, None)
    for key, value in d.items():  # lr = 1 and lr = 1.0 are the same run
        if "float" in str(TRAIN_HINTS[key]) and isinstance(value, int) and not isinstance(value, bool):
            d[key] = float(value)
    text = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def resolve_dataset(value: Any, roots: Sequence[Path]) -> tuple[str, Path]:
    """Map a job's `dataset` value to (name, directory) inside one of the dataset `roots`.

    A plain name is looked up in every root (it may not exist yet: it then belongs to the
    first root); a path (absolute, or relative to a root) must resolve, symlinks followed,
    to a direct subdirectory of a root. Raises ValueError saying why otherwise.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a dataset name or path")
    if not roots:
        raise ValueError("no dataset roots are configured")
    cand = Path(value).expanduser()
    if not cand.is_absolute():
        found = [r / value for r in roots if (r / value).exists()]
        if len(found) > 1:
            raise ValueError(f"found in several roots ({', '.join(map(str, found))}); "
                             "give the full path")
        cand = found[0] if found else roots[0] / value
    real = Path(os.path.realpath(cand))
    for root in roots:
        if real.parent == Path(os.path.realpath(root)):
            if not SAFE_NAME.match(real.name):
                raise ValueError(f"dataset directory name {real.name!r} is not a safe name")
            return real.name, root / real.name
    raise ValueError(f"resolves to {real}, which is not a direct subdirectory of a dataset "
                     f"root ({', '.join(map(str, roots))})")


def _merge(*layers: dict[str, tuple[Any, str]]) -> dict[str, tuple[Any, str]]:
    """Precedence, written once: later layers win (built-in < [defaults] < job < sweep)."""
    out: dict[str, tuple[Any, str]] = {}
    for layer in layers:
        out.update(layer)
    return out


def load_job(path: Path | str, cfg: DaemonConfig) -> Job:
    """Read and validate the job file at `path` against daemon config `cfg`.

    The job name is the file stem and must be a safe name. Raises JobError listing every
    problem as `file:key.path: problem (got X, expected Y)`; a problem caused by a value
    from the daemon `[defaults]` names the daemon config file instead.
    """
    path = Path(path)
    p = Problems(path)
    if not SAFE_NAME.match(path.stem):
        p.add("(file name)", "job name is not a safe name", got=path.stem,
              expected="letters, digits, '.', '_', '-', starting with a letter or digit")
    try:
        data = read_toml(path)
    except ConfigError as exc:
        raise JobError(exc.problems) from exc
    check_top(data, JOB_KEYS, p, "")
    dp = Problems(cfg.path or "selvad.toml")  # [defaults] was validated at config load
    d_settings = read_settings(cfg.defaults, dp, "defaults")
    d_priority, d_trigger = check_other(cfg.defaults, dp, "defaults")
    settings = read_settings(data, p, "")
    priority, trigger = check_other(data, p, "")
    dataset, dataset_dir = "", Path()
    if "dataset" not in data:
        p.add("dataset", "missing required key", expected="a dataset name or path")
    else:
        try:
            dataset, dataset_dir = resolve_dataset(data["dataset"], cfg.paths.dataset_roots)
        except ValueError as exc:
            p.add("dataset", str(exc), got=data["dataset"])
    merged = _merge(d_settings, settings)
    names = cfg.device.name  # the worker sets each run's device from its slot
    dev = names[0] if len(names) == 1 and names[0] in CHOICES["device"] else (
        "cpu" if set(names) == {"cpu"} else "cuda")
    base = TrainConfig(
        **{k: v for k, (v, _) in merged.items()},
        data_dir=str(dataset_dir) if dataset else "",
        output_dir="",
        selva_dir=str(cfg.paths.weights_dir or ""),
        cache_dir=str(cfg.paths.effective_cache_dir),
        device=dev,
    )
    report_problems(base, settings, p, "", only=set(settings))
    for name, message in base.problems():  # bad values inherited from [defaults]
        if name not in settings and name in d_settings:
            p.items.append(f"{dp.file}:{d_settings[name][1]}: invalid value: {message}")
    sweeps = _read_sweeps(data.get("sweep", []), base, p)
    p.items.extend(dp.items)
    if p.items:
        raise JobError(p.items)
    return Job(
        name=path.stem,
        path=path,
        dataset=dataset,
        dataset_dir=dataset_dir,
        priority=priority if priority is not None else (d_priority or 0),
        trigger=TriggerConfig(**{**d_trigger, **trigger}),
        base=base,
        sweeps=sweeps,
    )


def _read_sweeps(entries: Any, base: TrainConfig, p: Problems) -> tuple[SweepEntry, ...]:
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        p.add("sweep", "expected [[sweep]] tables", got=entries)
        return ()
    out: list[SweepEntry] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        prefix = f"sweep[{i}]"
        check_top(entry, ("id", *SETTING_SECTIONS), p, prefix)
        sid = entry.get("id")
        if not isinstance(sid, str) or not SAFE_NAME.match(sid):
            p.add(f"{prefix}.id", "missing or unsafe sweep id", got=sid,
                  expected="a name of letters, digits, '.', '_', '-'")
            continue
        if sid in seen:
            p.add(f"{prefix}.id", "duplicate sweep id", got=sid, expected="unique ids")
        seen.add(sid)
        overrides = read_settings({k: v for k, v in entry.items() if k != "id"}, p, prefix)
        cfg = replace(base, **{k: v for k, (v, _) in overrides.items()})
        report_problems(cfg, overrides, p, prefix, only=set(overrides))
        out.append(SweepEntry(sid, {k: v for k, (v, _) in overrides.items()}))
    return tuple(out)
