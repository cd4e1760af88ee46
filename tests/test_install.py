"""The install is pinned and locked: pyproject's pins, requirements.lock, the README's two
commands and .ci/run agree, this environment is the lock's, and the systemd unit verifies."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import REPO_ROOT

LOCK = REPO_ROOT / "requirements.lock"
TORCH_SET = ("torch", "torchaudio", "torchvision")


def _lock() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            name, _, version = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return [Requirement(r) for r in reqs]


def test_lock_says_how_to_regenerate_it() -> None:
    head = LOCK.read_text().splitlines()[:6]
    assert any("bash tools/relock.sh" in line for line in head), head
    assert "pip-compile" in (REPO_ROOT / "tools" / "relock.sh").read_text()


def test_torch_set_pinned_exactly_and_locked_at_the_same_versions() -> None:
    reqs = {r.name: r for r in _requirements()}
    lock = _lock()
    for name in TORCH_SET:
        spec = str(reqs[name].specifier)
        assert re.fullmatch(r"==\d+\.\d+\.\d+", spec), f"{name} must be pinned exactly, got {spec}"
        assert lock[name] == spec[2:], f"{name}: pyproject {spec}, lock {lock[name]}"
    assert lock["torch"] == lock["torchaudio"], "torch and torchaudio come from one release"


def test_every_dependency_is_locked_at_a_version_it_accepts() -> None:
    lock = _lock()
    for req in _requirements():
        name = req.name.lower().replace("_", "-")
        assert name in lock, f"{req} is not in requirements.lock: run bash tools/relock.sh"
        assert req.specifier.contains(lock[name], prereleases=True), (req, lock[name])


def test_this_environment_is_the_lock() -> None:
    """What the tests run on is exactly what requirements.lock says (CI installs it)."""
    wrong = []
    for name, version in _lock().items():
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # platform-specific (e.g. CUDA wheels on another architecture)
        if have.split("+")[0] != version:
            wrong.append(f"{name} {have} (lock {version})")
    assert not wrong, "installed versions differ from requirements.lock: " + ", ".join(wrong)


def test_readme_commands_and_ci_use_the_lock() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    commands = [ln.strip() for ln in readme.splitlines() if ln.strip().startswith("python3 -m venv")]
    assert len(commands) >= 2, commands
    assert all("-c requirements.lock" in c for c in commands), commands
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    test_cmd = next(c for c in commands if "pytest" in c)
    assert test_cmd in ci.splitlines(), "the README's test command must be .ci/run's"


def test_systemd_unit_verifies_as_installed(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt package systemd)")
    unit = (REPO_ROOT / "systemd" / "selvad.service").read_text()
    exec_start = [ln for ln in unit.splitlines() if ln.startswith("ExecStart=")]
    assert exec_start == ["ExecStart=/opt/selvad/.venv/bin/selvad run --config "
                          "/etc/selvad/selvad.toml"], exec_start
    assert "Documentation=file:///opt/selvad/README.md" in unit
    assert "RestartPreventExitStatus=78" in unit
    installed = tmp_path / "selvad.service"  # the checkout stands where /opt/selvad would be
    installed.write_text(unit.replace("/opt/selvad", str(REPO_ROOT)))
    if not (REPO_ROOT / ".venv" / "bin" / "selvad").exists():
        pytest.skip(f"no {REPO_ROOT}/.venv/bin/selvad (install with the README's command)")
    out = subprocess.run(["systemd-analyze", "verify", str(installed)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr


def test_systemd_unit_exposure_is_at_most_3() -> None:
    """`systemd-analyze security --offline=true` rates the unit's hardening (0 best, 10 worst):
    the unit must stay at or below 3.0 while keeping what the GPU and torch's JIT need."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt package systemd)")
    unit = REPO_ROOT / "systemd" / "selvad.service"
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                          str(unit)], capture_output=True, text=True, timeout=60)
    if "--offline" in out.stderr and "unrecognized" in out.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd >= 252 has it)")
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout)
    assert match, out.stdout[-2000:] + out.stderr
    assert float(match.group(1)) <= 3.0, out.stdout
    text = unit.read_text()
    # What the GPU, soundfile's cffi and torch's JIT need must stay.
    settings = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert "MemoryDenyWriteExecute=yes" not in settings
    assert "PrivateDevices=yes" not in settings
    assert "DeviceAllow=/dev/nvidiactl rw" in settings
    assert "IPAddressAllow=localhost" in text  # the local web page (127.0.0.1:8765)
