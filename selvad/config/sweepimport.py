"""`selvad import-sweep`: a ComfyUI-SelVA LoRA Scheduler `experiments.json` -> a job file.

The scheduler's file is `{"name", "description", "data_dir", "output_root", "base": {...},
"experiments": [{"id", "description", <overrides>}, ...]}`; each experiment trains the
scheduler's own defaults, overridden by `base`, overridden by the experiment. The job file
written here says the same: the merged base settings in `[lora]`/`[train]`, one `[[sweep]]`
per experiment with its overrides. The scheduler's defaults differ from selvad's (PiSSA
init and rsLoRA on), so they are written out explicitly. What has no equivalent (another
scheduler's keys, `resume_path`) is an error naming the key; `data_dir`/`output_root` are
replaced by the job's dataset and the daemon's output root; `description`/`group` become
comments.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import tomli_w

from selva_engine.training.options import CHOICES
from selvad.config.jobs import SAFE_NAME

__all__ = ["SCHEDULER_DEFAULTS", "SweepImportError", "import_experiments"]

# the LoRA Scheduler's defaults (its trainer node's), which `base` and each experiment override
SCHEDULER_DEFAULTS: dict[str, Any] = {
    "alpha": 0.0, "target": "attn.qkv", "batch_size": 4, "warmup_steps": 100, "grad_accum": 1,
    "save_every": 500, "seed": 42, "timestep_mode": "uniform", "logit_normal_sigma": 1.0,
    "curriculum_switch": 0.6, "lora_dropout": 0.0, "lora_plus_ratio": 1.0,
    "lr_schedule": "constant", "init_mode": "pissa", "use_rslora": True,
    "latent_mixup_alpha": 0.0, "latent_noise_sigma": 0.0,
}
# scheduler key -> (job section, job key)
KEYS: dict[str, tuple[str, str]] = {
    "rank": ("lora", "rank"), "alpha": ("lora", "alpha"), "target": ("lora", "target"),
    "use_rslora": ("lora", "rslora"), "lora_dropout": ("lora", "lora_dropout"),
    "init_mode": ("lora", "init_mode"), "timestep_mode": ("train", "timestep_sampling"),
    **{k: ("train", k) for k in ("steps", "lr", "batch_size", "warmup_steps", "grad_accum",
                                 "save_every", "seed", "logit_normal_sigma", "curriculum_switch",
                                 "lora_plus_ratio", "lr_schedule", "latent_mixup_alpha",
                                 "latent_noise_sigma")},
}
COMMENTS = ("id", "description", "group")
MAX_BYTES = 4 << 20


class SweepImportError(ValueError):
    """The file cannot be imported; `problems` lists one sentence per problem."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.problems = [f"{path}: {p}" for p in problems]
        super().__init__("\n".join(self.problems))


def _convert(key: str, value: Any, where: str, problems: list[str]) -> Any:
    """One scheduler value as the job file's; None (and a problem) when it has no equivalent."""
    if key not in KEYS:
        problems.append(f"{where}{key}: no equivalent in selvad (a key of another scheduler, "
                        "or of ComfyUI only); remove it or set it by hand")
        return None
    if key == "alpha":
        return "auto" if value in (0, 0.0, None) else value  # 0 = alpha equals the rank
    if key == "target":
        parts = value.replace(",", " ").split() if isinstance(value, str) else value
        if not isinstance(parts, list) or not parts:
            problems.append(f"{where}target: expected module names (got {value!r})")
            return None
        return parts
    choice = {"timestep_mode": "timestep_sampling"}.get(key, key)
    if choice in CHOICES and value not in CHOICES[choice]:
        problems.append(f"{where}{key}: {value!r} has no equivalent (selvad knows "
                        f"{', '.join(CHOICES[choice])})")
        return None
    if isinstance(value, float) and not math.isfinite(value):
        problems.append(f"{where}{key}: {value!r} is not a finite number")
        return None
    return value


def _tables(settings: dict[str, Any], where: str, problems: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for key, value in settings.items():
        if key in COMMENTS:
            continue
        converted = _convert(key, value, where, problems)
        if converted is not None:
            section, job_key = KEYS[key]
            out.setdefault(section, {})[job_key] = converted
    return out


def import_experiments(path: Path | str, dataset: str, variant: str | None = None) -> str:
    """The job file text for the scheduler file at `path`, training dataset `dataset`.

    Raises SweepImportError listing every problem (unreadable or not JSON, not a LoRA
    Scheduler file, keys without an equivalent, unsafe or duplicate experiment ids).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()[:MAX_BYTES + 1]
        if len(raw) > MAX_BYTES:
            raise SweepImportError(path, ["larger than 4 MB: not an experiments file"])
        spec = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, SweepImportError):
            raise
        raise SweepImportError(path, [f"cannot be read as JSON ({exc})"]) from exc
    if not isinstance(spec, dict) or not isinstance(spec.get("experiments"), list) \
            or not spec["experiments"]:
        raise SweepImportError(path, ["not a LoRA Scheduler file: it needs a non-empty "
                                      "\"experiments\" list (an evaluator's eval_batch.json "
                                      "runs with `selva-eval --from`)"])
    problems: list[str] = []
    base = {**SCHEDULER_DEFAULTS, **(spec.get("base") or {})}
    job: dict[str, Any] = {"dataset": dataset}
    if variant:
        job["variant"] = variant
    job.update(_tables(base, "base.", problems))
    sweeps, seen = [], set()
    for i, exp in enumerate(spec["experiments"]):
        sid = exp.get("id") if isinstance(exp, dict) else None
        if not isinstance(sid, str) or not SAFE_NAME.match(sid) or sid in seen:
            problems.append(f"experiments[{i}].id: {sid!r} is missing, duplicate or not a safe "
                            "name (letters, digits, '.', '_', '-', at most 64)")
            continue
        seen.add(sid)
        sweeps.append({"id": sid, **_tables(exp, f"experiments[{i}] ({sid}).", problems)})
    if problems:
        raise SweepImportError(path, problems)
    job["sweep"] = sweeps
    head = [f"# imported from {path.name} (ComfyUI-SelVA LoRA Scheduler)"]
    for key in ("name", "description"):
        if isinstance(spec.get(key), str):
            head.append(f"# {key}: {' '.join(spec[key].split())}")
    head += [f"# sweep {e['id']}: {' '.join(str(e.get('description', '')).split())}"
             for e in spec["experiments"] if isinstance(e, dict) and e.get("description")]
    return "\n".join(head) + "\n\n" + tomli_w.dumps(job)
