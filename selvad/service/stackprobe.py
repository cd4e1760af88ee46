"""The audio-stack probe (selva_engine.audio.stack) in a short-lived child process.

The probe imports torch and torchaudio; done inside the daemon it would keep ~450 MB of
libraries mapped for the daemon's whole life although the daemon itself never computes with
them (runs train in their own children). So the daemon asks a child: `python -m
selvad.service.stackprobe` prints the status as one JSON object and exits. A child that
dies, hangs or prints something else is itself a broken install, reported as such.

The same child checks which variants the configured weights directory can run (the weights
check imports torch too), so a job for a variant whose weights are missing is a problem at
load, not a failed run half an hour later.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from selva_engine.audio.stack import AudioStackStatus, installed_version

__all__ = ["PROBE_TIMEOUT", "Probe", "probe_in_child"]

PROBE_TIMEOUT = 300.0  # seconds: importing torch on a cold, loaded machine can take a minute


@dataclass(frozen=True)
class Probe:
    """What the child found: the audio stack, and for each variant why the weights
    directory cannot run it ("" when it can; None when no directory was checked or the
    check itself failed)."""

    stack: AudioStackStatus
    weights: dict[str, str] | None = None


def probe_in_child(timeout: float = PROBE_TIMEOUT, weights_dir: Path | None = None) -> Probe:
    """Run `check_audio_stack()` (and, with `weights_dir`, the weights check of every
    variant) in a child Python (same interpreter and environment). Never raises: a child
    that fails or times out gives a stack status whose problem names what happened."""
    cmd = [sys.executable, "-m", "selvad.service.stackprobe"]
    if weights_dir is not None:
        cmd += ["--weights", str(weights_dir)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Probe(_failed(f"the audio-stack probe did not finish ({type(exc).__name__}: {exc})"))
    try:
        fields = json.loads(out.stdout.strip().splitlines()[-1])
        weights = fields.pop("weights", None)
        return Probe(AudioStackStatus(**fields), weights if isinstance(weights, dict) else None)
    except (IndexError, ValueError, TypeError, AttributeError):
        tail = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        return Probe(_failed(f"the audio-stack probe crashed ({tail[:300]})"))


def _failed(problem: str) -> AudioStackStatus:
    return AudioStackStatus(installed_version("torch"), installed_version("torchaudio"), problem)


def _weights(weights_dir: Path) -> dict[str, str] | None:
    """Each variant's weights problem in `weights_dir` ("" when it can run); None when the
    check itself fails (the runs then say what is missing, as before)."""
    from selva_engine.model.variants import variant_names
    from selvad.config.jobcheck import weights_problem

    try:
        return {name: weights_problem(weights_dir, name) for name in variant_names(include_tiny=True)}
    except Exception:  # a broken file must not stop the daemon; the run reports it
        return None


def main(argv: list[str] | None = None) -> int:
    """Print check_audio_stack()'s status (and `--weights DIR`'s problems) as one JSON line
    (the child's side)."""
    from selva_engine.audio.stack import check_audio_stack

    args = sys.argv[1:] if argv is None else argv
    fields: dict = asdict(check_audio_stack())
    if args[:1] == ["--weights"] and len(args) == 2:
        fields["weights"] = _weights(Path(args[1]))
    print(json.dumps(fields), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
