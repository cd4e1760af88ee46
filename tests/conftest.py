"""Shared fixtures: where the reference goldens live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def golden_path() -> Path:
    """SELVA_GOLDEN_DIR, default ../shared/golden next to the repository."""
    return Path(os.environ.get("SELVA_GOLDEN_DIR", REPO_ROOT.parent / "shared" / "golden")).resolve()


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    path = golden_path()
    if not path.is_dir():
        pytest.skip(f"golden directory {path} does not exist (set SELVA_GOLDEN_DIR)")
    return path
