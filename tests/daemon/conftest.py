"""Fixtures for the daemon tests: a temporary tree with a daemon config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from selvad.config.daemon import DaemonConfig, load_config


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[[str], Path]:
    """Factory writing `tmp_path/selvad.toml` (relative paths + `extra` text); returns its path."""

    def make(extra: str = "") -> Path:
        for d in ("datasets", "jobs", "out", "state"):
            (tmp_path / d).mkdir(exist_ok=True)
        path = tmp_path / "selvad.toml"
        path.write_text(
            '[paths]\ndataset_roots = ["datasets"]\njobs_dir = "jobs"\n'
            'output_root = "out"\nstate_dir = "state"\n' + extra
        )
        return path

    return make


@pytest.fixture
def daemon_cfg(make_config: Callable[[str], Path], tmp_path: Path) -> DaemonConfig:
    """A valid daemon config whose dataset root holds one dataset, `birds`."""
    path = make_config("")
    (tmp_path / "datasets" / "birds").mkdir()
    return load_config(path)
