"""`selvad export DATASET DIR`: a dataset's clips as ComfyUI-SelVA's trainer reads them.

DATASET is a directory or a dataset name of the daemon config's roots (as `selvad validate`).
The weights and the extraction cache are the daemon's (`paths.weights_dir`, the cache the runs
fill), so clips a run extracted are not encoded again; `--weights` / `--cache_dir` override.
See `selva_engine.data.export` for the files written.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from selvad.datasets.validate import dataset_directory

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selvad export", description="Write every clip of a dataset as the SelVA "
                                "Feature Extractor's .npz with its audio as .flac, for ComfyUI-SelVA's trainer.")
    p.add_argument("dataset", help="dataset directory, or a dataset name of the daemon config's roots")
    p.add_argument("out_dir", help="directory to write <clip>_001.npz + <clip>_001.flac into")
    p.add_argument("--config", default=None, help="daemon config (default: $SELVAD_CONFIG or "
                   "/etc/selvad/selvad.toml, when it exists)")
    p.add_argument("--variant", default="", help="variant the features are for (default: the config's "
                   "default variant, else large_44k)")
    p.add_argument("--weights", default="", help="SelVA weights directory (default: the config's weights_dir, "
                   "else $SELVA_DIR)")
    p.add_argument("--cache_dir", default="", help="extraction cache (default: the daemon's)")
    p.add_argument("--device", default="auto", help="auto (cuda when there is one), cpu or cuda:N")
    return p


def _paths(args: argparse.Namespace) -> tuple[str, str, Path]:
    """(variant, weights dir, cache dir) from the flags, else the daemon config, else defaults."""
    from selvad.config.daemon import default_config_path, load_config

    variant, weights, cache = args.variant, args.weights, Path(args.cache_dir) if args.cache_dir else None
    path = Path(args.config) if args.config else default_config_path()
    if path.is_file():
        cfg = load_config(path)
        weights = weights or str(cfg.paths.weights_dir or "")
        cache = cache or cfg.paths.effective_cache_dir
        variant = variant or str(cfg.defaults.get("variant") or "")
    weights = weights or os.environ.get("SELVA_DIR", "")
    return variant or "large_44k", weights, cache or Path(args.out_dir) / ".cache"


def main(argv: Sequence[str] | None = None) -> int:
    """Run `selvad export`; 0 when every clip was written, 1 when some were skipped, 2 on bad input."""
    from selva_engine.data.export import export_dataset
    from selva_engine.data.extract import FeatureCache
    from selva_engine.errors import DatasetError
    from selva_engine.model.variants import get_variant
    from selva_engine.weights.locate import MissingWeightsError, resolve
    from selvad.config.schema import ConfigError

    args = _parser().parse_args(argv)
    directory = dataset_directory(args.dataset, args.config)
    if isinstance(directory, str):
        print(f"selvad export: {directory}", file=sys.stderr)
        return 2
    try:
        variant_name, weights_dir, cache_dir = _paths(args)
        variant = get_variant(variant_name)
        weights = resolve(weights_dir, variant.name)
        device = args.device if args.device != "auto" else _auto_device()
        result = export_dataset(directory, Path(args.out_dir), variant, weights=weights,
                                cache=FeatureCache(cache_dir), device=device, progress=_progress)
    except (DatasetError, MissingWeightsError, ConfigError, ValueError, OSError) as exc:
        print(f"selvad export: {exc}", file=sys.stderr)
        return 2
    for w in result.warnings:
        print(f"warning: {w}")
    for npz, flac in result.written:
        print(f"wrote {npz.name} + {flac.name}")
    for p in result.problems:
        print(f"skipped: {p}", file=sys.stderr)
    print(f"{len(result.written)} clip(s) in {args.out_dir}; train them in ComfyUI-SelVA with this folder as "
          "its data directory")
    return 1 if result.problems else 0


def _progress(event: dict) -> None:
    if event.get("event") == "extract_progress":
        print(f"encoding videos: {event['done']}/{event['total']} (ETA {event.get('eta_s', 0):.0f} s)", flush=True)


def _auto_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
