"""`selvad doctor` on the `[device]` and `[executor]` sections (the rest: test_install_e2e)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from selvad.doctor import run_checks


def _found(path: Path, name: str) -> list:
    return [c for c in run_checks(path) if c.name == name]


def test_device_slots_and_a_gpu_the_machine_lacks(make_config: Callable[[str], Path]) -> None:
    [ok] = _found(make_config('[device]\nname = ["cpu", "cpu"]\n'), "devices")
    assert ok.status == "ok" and ok.detail.endswith("cpu#0, cpu#1")
    path = make_config('[device]\nname = ["cuda:0", "cuda:99"]\n')
    [bad] = _found(path, "devices")
    assert bad.status == "problem" and bad.detail.startswith(f"{path}:device.name names")
    assert "'cuda:99'" in bad.detail


def test_ray_executor_says_whether_ray_is_installed(make_config: Callable[[str], Path]) -> None:
    [ray] = _found(make_config('[executor]\nkind = "ray"\n'), "executor")
    assert ray.status == "ok" and ray.detail.startswith("Ray ")
