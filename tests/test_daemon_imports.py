"""The daemon's own modules import no torch: it loads only in the run and probe children.

The e2e idle test sees the same through /proc/PID/maps of a running daemon; this one names the
import chain at once, in a second, when a new module of the daemon's reaches torch.
"""

from __future__ import annotations

import subprocess
import sys

DAEMON_MODULES = ("selvad.cli", "selvad.service.daemon", "selvad.service.offloop", "selvad.web.server",
                  "selvad.datasets.validate", "selvad.config.jobs")

PROBE = """
import builtins, importlib, sys, traceback
real = builtins.__import__
def watch(name, *args, **kwargs):
    if name.split(".")[0] in ("torch", "torchaudio") and "torch" not in sys.modules:
        sys.stderr.write("".join(traceback.format_stack(limit=12)))
        raise SystemExit(3)
    return real(name, *args, **kwargs)
builtins.__import__ = watch
for name in sys.argv[1:]:
    importlib.import_module(name)
"""


def test_importing_the_daemon_loads_no_torch() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE, *DAEMON_MODULES], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"torch imported by a daemon module:\n{done.stderr}"
