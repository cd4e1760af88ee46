"""The benchmarks run end to end and print their figures (tiny settings; no speed asserted)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_bench(script: str, *args: str) -> list[str]:
    out = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], capture_output=True,
                         text=True, cwd=REPO, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()


def speedup(lines: list[str]) -> float:
    match = re.fullmatch(r"speedup: (\d+\.\d\d)", lines[-1])
    assert match, lines[-1]
    return float(match.group(1))


@pytest.mark.slow
def test_train_throughput_prints_rates_memory_and_ratio():
    lines = run_bench("train_throughput.py", "--device", "cpu", "--steps", "2", "--rounds", "1",
                      "--batch", "2", "--clips", "4")
    assert speedup(lines) > 0
    for name in ("ours", "baseline"):
        row = next(x for x in lines if x.startswith(name + " "))
        rate, mem = re.search(r"([\d.]+) samples/s\s+peak \+\s*([-\d.na]+) MiB", row).groups()
        assert float(rate) > 0 and math.isfinite(float(mem)) and float(mem) > 0, row


@pytest.mark.slow
def test_generator_step_prints_ratio():
    lines = run_bench("generator_step.py", "--device", "cpu", "--variant", "tiny_16k", "--steps", "1",
                      "--rounds", "1")
    assert speedup(lines) > 0
