"""The audio-stack probe (selva_engine.audio.stack) in a short-lived child process.

The probe imports torch and torchaudio; done inside the daemon it would keep ~450 MB of
libraries mapped for the daemon's whole life although the daemon itself never computes with
them (runs train in their own children). So the daemon asks a child: `python -m
selvad.service.stackprobe` prints the status as one JSON object and exits. A child that
dies, hangs or prints something else is itself a broken install, reported as such.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict

from selva_engine.audio.stack import AudioStackStatus, installed_version

__all__ = ["PROBE_TIMEOUT", "probe_in_child"]

PROBE_TIMEOUT = 300.0  # seconds: importing torch on a cold, loaded machine can take a minute


def probe_in_child(timeout: float = PROBE_TIMEOUT) -> AudioStackStatus:
    """Run `check_audio_stack()` in a child Python (same interpreter and environment) and
    return its status. Never raises: a child that fails or times out gives a status whose
    problem names what happened."""
    cmd = [sys.executable, "-m", "selvad.service.stackprobe"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return _failed(f"the audio-stack probe did not finish ({type(exc).__name__}: {exc})")
    try:
        fields = json.loads(out.stdout.strip().splitlines()[-1])
        return AudioStackStatus(**fields)
    except (IndexError, ValueError, TypeError):
        tail = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        return _failed(f"the audio-stack probe crashed ({tail[:300]})")


def _failed(problem: str) -> AudioStackStatus:
    return AudioStackStatus(installed_version("torch"), installed_version("torchaudio"), problem)


def main() -> int:
    """Print check_audio_stack()'s status as one JSON line (the child's side)."""
    from selva_engine.audio.stack import check_audio_stack

    print(json.dumps(asdict(check_audio_stack())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
