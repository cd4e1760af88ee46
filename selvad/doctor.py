"""`selvad doctor`: is this machine ready to train? One line per check, one line per problem.

Checks: Python; the torch / torchaudio / torchvision versions against the pins in selvad's
own metadata; whether torchaudio's native library loads and resamples (the same probe the
daemon runs before it reports READY, see `selva_engine.audio.stack`); CUDA (device name,
compute capability, bf16) or the CPU's native bf16; soundfile's libsndfile and its formats;
and, given a config file, its validity, the device slots of `[device]` on this machine
(or, with `[executor] kind = "ray"`, whether Ray is installed), the weights of each variant
(as `selva-weights check`) and the free disk space of the configured roots. Nothing is
written anywhere.
"""

from __future__ import annotations

import platform
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from selva_engine.audio.stack import check_audio_stack, installed_version, pinned_requirement
from selvad.config.daemon import DaemonConfig, load_config
from selvad.config.schema import ConfigError
from selvad.runs.slots import DeviceError, resolve_slots

__all__ = ["Check", "format_checks", "run_checks"]

MIN_FREE_BYTES = 2 * 1024**3  # one large_44k checkpoint + samples + cache entries, with room
PY_MIN = (3, 11)


@dataclass(frozen=True)
class Check:
    """One finding: `status` is "ok", "info" (not a problem) or "problem" (with a `fix`)."""

    name: str
    status: str
    detail: str
    fix: str = ""


def _python() -> list[Check]:
    ok = sys.version_info[:2] >= PY_MIN
    detail = f"{platform.python_version()} ({sys.executable})"
    return [Check("python", "ok" if ok else "problem", detail,
                  "" if ok else f"use Python {PY_MIN[0]}.{PY_MIN[1]} or newer")]


def _versions() -> list[Check]:
    """Installed torch/torchaudio/torchvision against the exact pins of selvad's metadata."""
    out = []
    for dist in ("torch", "torchaudio", "torchvision"):
        have, pin = installed_version(dist), pinned_requirement(dist)
        matches = pin is None or have.split("+")[0] == pin.split("==")[1]
        detail = have + (f" (pinned {pin.split('==')[1]})" if pin else "")
        out.append(Check(dist, "ok" if matches else "problem", detail, "" if matches else
                         "install the pinned version: `pip install -c requirements.lock -e .`"))
    return out


def _audio_stack() -> list[Check]:
    status = check_audio_stack()
    if status.ok:
        return [Check("audio stack", "ok", f"torchaudio's library loads; 48 kHz stereo resamples "
                      f"to 16 kHz and 44.1 kHz at exact lengths ({status.pair})")]
    return [Check("audio stack", "problem", status.problem or "", status.fix)]


def _compute() -> list[Check]:
    import torch

    if not torch.cuda.is_available():
        from selva_engine.training.loop import cpu_has_native_bf16

        bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16: training runs fp32"
        return [Check("cuda", "info", f"no CUDA device: training runs on the CPU ({bf16})")]
    out = []
    for i in range(torch.cuda.device_count()):
        cap = ".".join(map(str, torch.cuda.get_device_capability(i)))
        name = torch.cuda.get_device_name(i)
        bf16 = "bf16" if torch.cuda.is_bf16_supported() else "no bf16 (fp16 or fp32 only)"
        out.append(Check(f"cuda:{i}", "ok", f"{name}, compute capability {cap}, {bf16}, "
                         f"CUDA {torch.version.cuda}"))
    return out


def _soundfile() -> list[Check]:
    try:
        import soundfile as sf
    except Exception as exc:  # libsndfile missing or broken
        return [Check("soundfile", "problem", f"does not load ({exc})",
                      "install libsndfile (apt-get install libsndfile1) or reinstall soundfile")]
    formats = ", ".join(sorted(sf.available_formats()))
    return [Check("soundfile", "ok", f"libsndfile {sf.__libsndfile_version__}; formats: {formats}")]


def _weights(cfg: DaemonConfig) -> list[Check]:
    from selva_engine.model.variants import get_variant, variant_names
    from selva_engine.weights.locate import check_variant

    wdir = cfg.paths.weights_dir
    if wdir is None or str(wdir) in ("", "."):
        return [Check("weights", "info", "paths.weights_dir is empty: only the tiny demo "
                      "variants can train")]
    out, runnable = [], []
    for name in variant_names(include_tiny=True):
        bad = [c for c in check_variant(wdir, name) if c.required and c.status != "ok"]
        if bad:
            out.append(Check(f"weights {name}", "info", "cannot run: " + "; ".join(
                c.describe() for c in bad[:2]), f"`selva-weights check {wdir} --variant {name}`"))
        else:
            runnable.append(name)
            out.append(Check(f"weights {name}", "ok", f"all files present in {wdir}"))
    if not runnable:
        out.append(Check("weights", "problem", f"no variant can run from {wdir}",
                         f"run `selva-weights check {wdir}` and download what it lists"))
    elif all(get_variant(n).tiny for n in runnable):
        out.append(Check("weights", "info", "only the tiny test variants can run (the demo); "
                         f"real variants need the SelVA checkpoints in {wdir}"))
    return out


def _devices(cfg: DaemonConfig) -> list[Check]:
    """The slots runs get on this machine, or whether Ray can be used."""
    where = f"{cfg.path}:" if cfg.path else ""
    if cfg.executor.kind == "ray":
        try:
            import ray
        except ImportError as exc:
            return [Check("executor", "problem", f'{where}executor.kind = "ray" but Ray is not '
                          f"installed ({exc})", "pip install 'selvad[ray]' here and on every "
                          'node, or write kind = "local"')]
        return [Check("executor", "ok", f"Ray {ray.__version__} installed; the daemon joins "
                      f"{cfg.executor.address} and checks every node's storage at start")]
    try:
        slots = resolve_slots(cfg.device.name)
    except DeviceError as exc:
        return [Check("devices", "problem", f"{where}{exc}", "edit [device] name")]
    return [Check("devices", "ok", "one run at a time on each of " + ", ".join(
        s.label for s in slots))]


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _disk(cfg: DaemonConfig) -> list[Check]:
    p = cfg.paths
    roots = [("output_root", p.output_root), ("state_dir", p.state_dir),
             ("cache_dir", p.effective_cache_dir)]
    roots += [(f"dataset_roots[{i}]", r) for i, r in enumerate(p.dataset_roots)]
    out = []
    for key, path in roots:
        free = shutil.disk_usage(_existing_parent(path)).free
        ok = free >= MIN_FREE_BYTES or key.startswith("dataset_roots")
        out.append(Check(f"disk {key}", "ok" if ok else "problem",
                         f"{free / 1024**3:.1f} GiB free at {path}",
                         "" if ok else "free space or point the path at a larger disk"))
    return out


def _config(path: Path | None) -> tuple[list[Check], DaemonConfig | None]:
    if path is None:
        return [Check("config", "info", "no config file given or found at /etc/selvad/selvad.toml "
                      "(weights and disk checks skipped)", "`selvad doctor --config FILE`")], None
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        return [Check("config", "problem", p, "edit the file as the line says (etc/selvad.toml in "
                      "selvad's checkout documents every key)") for p in exc.problems], None
    except OSError as exc:
        return [Check("config", "problem", f"{path}: {exc}", "check the path")], None
    return [Check("config", "ok", f"{path} is valid")], cfg


def run_checks(config_path: Path | None) -> list[Check]:
    """Every check, in the order they are printed; `config_path` None skips the config,
    weights and disk checks. Never raises for a broken environment: that is a problem."""
    checks: list[Check] = []
    steps: list[Callable[[], list[Check]]] = [_python, _versions, _audio_stack, _compute,
                                              _soundfile]
    for step in steps:
        try:
            checks += step()
        except Exception as exc:  # a check that crashes is itself the finding
            checks.append(Check(step.__name__.strip("_"), "problem", f"check failed: {exc!r}",
                                "reinstall with `pip install -c requirements.lock -e .`"))
    found, cfg = _config(config_path)
    checks += found
    if cfg is not None:
        checks += _devices(cfg) + _weights(cfg) + _disk(cfg)
    return checks


def format_checks(checks: list[Check]) -> str:
    """Terminal text: one line per check, then one line per problem with its fix."""
    mark = {"ok": "ok     ", "info": "info   ", "problem": "PROBLEM"}
    lines = [f"{mark[c.status]} {c.name}: {c.detail}" for c in checks]
    problems = [c for c in checks if c.status == "problem"]
    lines.append("")
    if not problems:
        lines.append("selvad doctor: no problems found")
    else:
        lines.append(f"selvad doctor: {len(problems)} problem(s):")
        lines += [f"  {c.name}: {c.detail}; fix: {c.fix}" for c in problems]
    return "\n".join(lines) + "\n"
