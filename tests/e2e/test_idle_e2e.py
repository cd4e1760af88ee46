"""The idle daemon stays small: torch (and torchaudio) never load into its process.

The daemon's audio-stack check runs in a short-lived child (selvad.service.stackprobe) and
training runs in run children, so an idle daemon maps no libtorch and its resident set stays
far below the ~530 MB it had with torch imported.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from .conftest import DaemonTree

pytestmark = pytest.mark.e2e

IDLE_RSS_LIMIT_KB = 150 * 1024


def test_idle_daemon_maps_no_torch_and_stays_under_150_mb(tree: DaemonTree) -> None:
    tree.start()
    tree.wait_for(lambda: tree.events("daemon.ready"), 60, "daemon.ready")
    time.sleep(1.0)  # a few idle ticks
    assert tree.proc is not None and tree.proc.poll() is None, tree.log_tail()
    maps = Path(f"/proc/{tree.proc.pid}/maps").read_text()
    assert "libtorch" not in maps and "torchaudio" not in maps, "torch loaded into the daemon"
    status = Path(f"/proc/{tree.proc.pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert match is not None
    assert int(match.group(1)) <= IDLE_RSS_LIMIT_KB, f"idle RSS {match.group(1)} kB"
