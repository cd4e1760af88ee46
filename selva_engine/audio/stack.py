"""Does the native audio stack work? torchaudio's library loads and resampling gives exact lengths.

torchaudio ships a compiled library that must match the installed torch exactly: a pair from
different releases (e.g. torch 2.11.0 with torchaudio 2.11.1) fails at import with
`undefined symbol: ...`. Clips whose rate differs from the model's need that library (the
resampler lives in `torchaudio.functional`), so the daemon, `selvad doctor` and dataset
validation ask `check_audio_stack()` once per process instead of discovering the breakage in
the middle of a run. The check really resamples: 48 kHz stereo to 16 kHz and to 44.1 kHz.
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
from dataclasses import dataclass

__all__ = ["AudioStackError", "AudioStackStatus", "check_audio_stack", "installed_version",
           "pinned_requirement"]

# (from rate, to rate): what the probe resamples; covers the 16 kHz and 44.1 kHz modes.
PROBE_RATES = ((48000, 16000), (48000, 44100))
PROBE_SECONDS = 0.5


class AudioStackError(RuntimeError):
    """The native audio stack cannot resample; the message is one sentence with the fix."""


@dataclass(frozen=True)
class AudioStackStatus:
    """Outcome of the probe: versions of the pair, and `problem` (one sentence) when broken."""

    torch_version: str
    torchaudio_version: str
    problem: str | None = None

    @property
    def ok(self) -> bool:
        """True when torchaudio loaded and every probe resample had the exact length."""
        return self.problem is None

    @property
    def pair(self) -> str:
        """'torch 2.11.0 / torchaudio 2.11.0' as installed."""
        return f"torch {self.torch_version} / torchaudio {self.torchaudio_version}"

    @property
    def fix(self) -> str:
        """How to get a working pair: the project's pinned versions through its lock file."""
        pins = " ".join(p for p in (pinned_requirement("torch"), pinned_requirement("torchaudio"))
                        if p)
        return (f"reinstall the pinned pair ({pins or 'torch and torchaudio of one release'}) "
                "with `pip install -c requirements.lock -e .` in selvad's checkout")

    def raise_if_broken(self) -> None:
        """Raise AudioStackError (problem + fix) when the stack is broken."""
        if self.problem is not None:
            raise AudioStackError(f"{self.problem}; fix: {self.fix}")


def installed_version(dist: str) -> str:
    """The installed version of distribution `dist`, or 'not installed'."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def pinned_requirement(dist: str) -> str | None:
    """The requirement selvad's own metadata pins for `dist` (e.g. 'torch==2.11.0'), if any."""
    try:
        requires = importlib.metadata.requires("selvad") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for req in requires:
        name = req.split(";")[0].strip()
        if name.lower().startswith(dist.lower() + "=="):
            return name
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _probe() -> str | None:
    """Resample a stereo 48 kHz signal to each probe rate; None when all lengths are exact."""
    try:
        import torch
        import torchaudio.functional as AF
    except Exception as exc:  # ImportError, OSError (undefined symbol), RuntimeError
        return f"torchaudio's native library does not load ({_first_line(exc)})"
    for src, dst in PROBE_RATES:
        n = int(src * PROBE_SECONDS)
        try:
            out = AF.resample(torch.zeros(2, n), src, dst)
        except Exception as exc:
            return f"resampling {src} Hz to {dst} Hz fails ({_first_line(exc)})"
        want = math.ceil(n * dst / src)
        if tuple(out.shape) != (2, want):
            return (f"resampling {src} Hz stereo to {dst} Hz gives shape {tuple(out.shape)}, "
                    f"expected (2, {want})")
    return None


@functools.cache
def check_audio_stack() -> AudioStackStatus:
    """Probe torchaudio once per process: load its library and resample 48 kHz stereo to
    16 kHz and 44.1 kHz, checking the exact output lengths. Never raises; the returned
    status names the installed torch/torchaudio pair and, when broken, the problem."""
    problem = _probe()
    status = AudioStackStatus(installed_version("torch"), installed_version("torchaudio"), None)
    if problem is not None:
        problem = f"{problem} with {status.pair}"
    return AudioStackStatus(status.torch_version, status.torchaudio_version, problem)
