"""The native audio stack: torchaudio's library loads and resamples to exact lengths; a
broken install is reported in one sentence naming the torch/torchaudio pair."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from selva_engine.audio.files import load_audio
from selva_engine.audio.stack import check_audio_stack, installed_version, pinned_requirement


def test_torchaudio_library_loads_and_resamples() -> None:
    """Fails loudly, naming the pair, when this install's torchaudio does not match torch."""
    status = check_audio_stack()
    assert status.ok, (f"the native audio stack is broken ({status.pair}): {status.problem}. "
                       f"Fix: {status.fix}")


@pytest.mark.parametrize("rate,frames", [(16000, 128000), (44100, 353280)])
def test_48k_stereo_file_resamples_to_exact_length(tmp_path, rate: int, frames: int) -> None:
    import torch
    import torchaudio.functional as AF

    stereo = torch.randn(2, 48000 * 3)
    out = AF.resample(stereo, 48000, rate)
    assert tuple(out.shape) == (2, 3 * rate), f"{installed_version('torchaudio')} resampled wrong"
    path = tmp_path / "clip.wav"
    sf.write(path, np.stack([np.ones(48000 * 9) * 0.1, np.zeros(48000 * 9)], 1), 48000)
    mono = load_audio(path, rate, frames)
    assert mono.shape == (frames,)
    assert float(np.abs(mono[1000:-1000] - 0.05).max()) < 1e-3  # both channels averaged


def test_pins_come_from_selvads_metadata() -> None:
    for dist in ("torch", "torchaudio", "torchvision"):
        pin = pinned_requirement(dist)
        assert pin is not None and pin.startswith(f"{dist}=="), pin
        assert installed_version(dist).split("+")[0] == pin.split("==")[1]


PROBE = """
import sys
from selva_engine.audio.stack import AudioStackError, check_audio_stack
from selva_engine.audio.files import resample
import numpy as np
status = check_audio_stack()
print("OK" if status.ok else "PROBLEM " + status.problem)
print("FIX " + status.fix)
try:
    resample(np.zeros(4800, np.float32), 48000, 16000)
except AudioStackError as exc:
    print("RAISED " + str(exc))
print("SAME", resample(np.zeros(10, np.float32), 16000, 16000).shape)
"""


def test_broken_library_is_one_sentence_naming_the_pair(broken_torchaudio) -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], env=broken_torchaudio, text=True,
                         capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    pair = f"torch {installed_version('torch')} / torchaudio {installed_version('torchaudio')}"
    assert lines["PROBLEM"].startswith("torchaudio's native library does not load (OSError: ")
    assert lines["PROBLEM"].endswith(f"with {pair}")
    assert "requirements.lock" in lines["FIX"] and pinned_requirement("torchaudio") in lines["FIX"]
    assert lines["RAISED"].startswith("torchaudio's native library does not load")
    assert "\n" not in lines["RAISED"]
    assert lines["SAME"] == "(10,)"  # no resampling needed: the broken library is never touched
