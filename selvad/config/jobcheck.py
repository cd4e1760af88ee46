"""`selvad check-job FILE`, and which variants the configured weights can run.

`check-job` reads a job file (a path, or the name of a job in the jobs directory) exactly as
the daemon would, with the daemon config's `[defaults]`, and prints every problem in the
schema's `file:key: problem (got X, expected Y)` form, then whether the configured weights
directory has every file the job's variant needs. `init-job` uses `choose_variant` so that
the job file it writes names a variant that can run here.

The weight checks import the engine (torch), so they run in these short-lived commands,
never in the daemon process.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from selvad.config.daemon import DaemonConfig, load_config
from selvad.config.jobs import JobError, job_file, load_job
from selvad.config.schema import ConfigError

__all__ = ["PREFERRED", "choose_variant", "cmd_check_job", "runnable_variants", "weights_problem"]

PREFERRED = "large_44k"  # init-job's variant when the weights can run it


def runnable_variants(weights_dir: Path) -> list[str]:
    """Variants (real ones first, then the tiny test ones) whose required files are all in
    `weights_dir` (or, for real variants, the Hugging Face cache)."""
    from selva_engine.model.variants import get_variant, variant_names
    from selva_engine.weights.locate import check_variant

    names = variant_names(include_tiny=True)
    names = [n for n in names if not get_variant(n).tiny] + [n for n in names if get_variant(n).tiny]
    return [n for n in names
            if all(c.status == "ok" for c in check_variant(weights_dir, n) if c.required)]


def weights_problem(weights_dir: Path | None, variant: str) -> str:
    """Why `variant` cannot run from `weights_dir` (the missing files and the command that
    lists them), or "" when it can."""
    from selva_engine.weights.locate import check_variant

    if weights_dir is None:
        return ("paths.weights_dir is not set in the daemon config; set it to the SelVA "
                "weights directory (`selva-weights check DIR` says what a directory can run)")
    bad = [c for c in check_variant(weights_dir, variant) if c.required and c.status != "ok"]
    if not bad:
        return ""
    files = "; ".join(c.describe() for c in bad)
    return (f"variant {variant} cannot run from {weights_dir}: {files}; "
            f"`selva-weights check {weights_dir} --variant {variant}` lists what to download")


def choose_variant(cfg: DaemonConfig, requested: str | None) -> tuple[str, str]:
    """(variant, note) for a new job file: `requested` when given (the note warns when the
    weights cannot run it); else PREFERRED when they can, else the first variant they can
    run. ValueError when the weights directory is set and can run no variant."""
    wdir = cfg.paths.weights_dir
    if requested:
        return requested, weights_problem(wdir, requested) if wdir else ""
    if wdir is None:
        return PREFERRED, ("paths.weights_dir is not set: check the variant against your "
                           "weights (`selva-weights check DIR`)")
    runnable = runnable_variants(wdir)
    if PREFERRED in runnable:
        return PREFERRED, ""
    if not runnable:
        raise ValueError(f"no variant can run from {wdir} (paths.weights_dir in {cfg.path}); "
                         f"`selva-weights check {wdir}` lists the files each one needs")
    return runnable[0], (f"variant {runnable[0]}: the weights in {wdir} cannot run "
                         f"{PREFERRED} (can run: {', '.join(runnable)}); pass --variant to "
                         "choose another")


def _job_path(cfg: DaemonConfig, value: str) -> Path:
    """A job file path as given, or the file of the job named `value` in the jobs dir."""
    path = Path(value).expanduser()
    if path.suffix == ".toml" or path.exists():
        return path
    return job_file(cfg.paths.jobs_dir, value)


def cmd_check_job(args: argparse.Namespace) -> int:
    """`selvad check-job FILE|NAME`: every problem of a job file, and its variant's weights;
    exit 0 when the daemon would train it, 1 otherwise."""
    try:
        cfg = load_config(args.config)
        path = _job_path(cfg, args.job)
    except ConfigError as exc:
        print("selvad check-job: invalid daemon configuration:\n" + "\n".join(
            f"  {p}" for p in exc.problems))
        return 2
    except ValueError as exc:
        print(f"selvad check-job: {exc}")
        return 2
    try:
        job = load_job(path, cfg)
    except JobError as exc:
        count = len(exc.problems)
        print(f"{path}: {count} problem{'s' if count != 1 else ''}; fix the file (a running "
              "daemon reads it again when it is saved):")
        print("\n".join(f"  {p}" for p in exc.problems))
        return 1
    runs = job.resolve_runs()
    print(f"{path}: valid job {job.name!r}: dataset {job.dataset} ({job.dataset_dir}), "
          f"variant {job.base.variant}, {len(runs)} run{'s' if len(runs) != 1 else ''}, "
          f"{job.base.steps} steps")
    problem = weights_problem(cfg.paths.weights_dir, job.base.variant)
    if problem:
        print(f"problem: {problem}")
        return 1
    print(f"weights: {job.base.variant} can run from {cfg.paths.weights_dir}")
    return 0
