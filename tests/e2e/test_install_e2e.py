"""A broken install (torchaudio's library does not load) as a user meets it: the daemon
refuses to start, `selvad doctor` says what is wrong, validation does not say "ready"."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import write_clip
from tests.e2e.conftest import DaemonTree, scaled

pytestmark = pytest.mark.e2e


def test_daemon_refuses_to_start_without_a_working_resampler(
        tree: DaemonTree, broken_torchaudio: dict[str, str]) -> None:
    tree.start(notify=True, env=broken_torchaudio)
    code = tree.wait_exit(120)
    assert code == 78, tree.log_tail()
    assert tree.notify is not None
    time.sleep(0.3)  # the reader thread picks up the last datagram
    messages = tree.notify.drain()
    assert not any("READY=1" in m for m in messages), messages
    assert any(m.startswith("STATUS=not started: torchaudio's native library") for m in messages)
    broken = tree.events("daemon.audio_stack_broken")
    assert broken and "requirements.lock" in broken[0]["fix"], tree.log_tail()
    assert not tree.events("daemon.ready")


def _doctor(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "selvad.cli", "doctor", "--config", str(config)],
                          capture_output=True, text=True, timeout=scaled(120), env=env)


def test_doctor_reports_a_working_setup(tree: DaemonTree) -> None:
    out = _doctor(tree.config)
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("python", "torch", "torchaudio", "torchvision", "audio stack", "soundfile",
                 "config", "weights", "disk output_root"):
        assert any(line.split(":")[0].split()[-1] == name.split()[-1]
                   for line in out.stdout.splitlines()), (name, out.stdout)
    assert "libsndfile" in out.stdout and "WAV" in out.stdout
    assert out.stdout.rstrip().endswith("selvad doctor: no problems found")


def test_doctor_names_the_broken_library_and_the_fix(
        tree: DaemonTree, broken_torchaudio: dict[str, str]) -> None:
    out = _doctor(tree.config, broken_torchaudio)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    problem = [ln for ln in out.stdout.splitlines() if ln.startswith("PROBLEM audio stack")]
    assert problem and "torchaudio's native library does not load" in problem[0]
    assert "selvad doctor: 1 problem(s):" in out.stdout
    summary = out.stdout.split("problem(s):")[1]
    assert "fix: reinstall the pinned pair" in summary and "requirements.lock" in summary


def test_doctor_flags_an_invalid_config(tmp_path: Path) -> None:
    bad = tmp_path / "selvad.toml"
    bad.write_text('[paths]\ndataset_roots = ["d"]\noutput_rot = "o"\n')
    out = _doctor(bad)
    assert out.returncode == 1
    assert "PROBLEM config:" in out.stdout and "output_rot" in out.stdout


def _clips_48k(directory: Path) -> None:
    for i in range(2):
        write_clip(directory, f"c{i}", freq=440.0, sr=16000, seed=i)
        sr = 48000
        t = np.arange(8 * sr) / sr
        (directory / f"c{i}.wav").unlink()
        sf.write(directory / f"c{i}.wav", 0.3 * np.sin(2 * np.pi * 440 * t)[:, None]
                 .repeat(2, 1).astype(np.float32), sr)


def test_validate_is_not_ready_when_clips_need_a_broken_resampler(
        tmp_path: Path, broken_torchaudio: dict[str, str]) -> None:
    data = tmp_path / "birds"
    _clips_48k(data)
    cmd = [sys.executable, "-m", "selvad.cli", "validate", str(data), "--variant", "tiny_16k"]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=scaled(120))
    assert ok.returncode == 0 and "OK: ready to train" in ok.stdout, ok.stdout + ok.stderr
    broken = subprocess.run(cmd, capture_output=True, text=True, timeout=scaled(120),
                            env=broken_torchaudio)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "ready to train" not in broken.stdout
    assert "needs resampling from 48000 Hz to 16000 Hz, but torchaudio's native library does " \
           "not load" in broken.stdout
    assert "FAILED: 2 error(s) block training" in broken.stdout
