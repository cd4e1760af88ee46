"""The benchmarks run end to end and print their figures (tiny settings; no speed asserted)."""

from __future__ import annotations

import json
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
def test_train_throughput_prints_the_report_and_ratio():
    lines = run_bench("train_throughput.py", "--device", "cpu", "--steps", "1", "--rounds", "1",
                      "--batch", "2", "--clips", "2", "--gradient_checkpointing")
    assert speedup(lines) > 0
    assert re.search(r"matmul ceiling (\d+\.\d+) TFLOP/s", lines[0] if "ceiling" in lines[0] else lines[1])
    for name in ("ours", "faithful", "ours+ckpt"):
        row = next(x for x in lines if x.startswith(f"tiny_16k@2 {name} "))
        match = re.search(r"step\s+([\d.]+) ms\s+([\d.]+) samples/s\s+([\d.]+) TFLOP/step\s+([\d.]+) TFLOP/s "
                          r"MFU\s+([\d.]+) %\s+peak \+([\d.]+) MiB RSS", row)
        assert match, row
        ms, rate, tflop, _, mfu, mem = (float(g) for g in match.groups())
        assert ms > 0 and rate > 0 and tflop > 0 and 0 < mfu <= 100 and math.isfinite(mem) and mem > 0, row
        assert rate == pytest.approx(2 / (ms / 1000), rel=0.01), row


@pytest.mark.slow
def test_generator_step_prints_ratio():
    lines = run_bench("generator_step.py", "--device", "cpu", "--variant", "tiny_16k", "--steps", "1",
                      "--rounds", "1")
    assert speedup(lines) > 0


@pytest.mark.slow
def test_extract_throughput_prints_stages_memory_and_ratio():
    lines = run_bench("extract_throughput.py", "--device", "cpu", "--clips", "2", "--seconds", "2.5",
                      "--duration", "2", "--width", "160", "--height", "96", "--rounds", "1", "--batch", "2")
    assert speedup(lines) > 0
    for name in ("node", "ours"):
        row = next(x for x in lines if x.startswith(f"{name} "))
        match = re.search(r"([\d.]+) clips/s\s+ms/clip: decode\s+([\d.]+)\s+CLIP\s+([\d.]+)\s+T5\s+([\d.]+)\s+"
                          r"TextSynch\s+([\d.]+)\s+peak RSS (\d+) MiB", row)
        assert match, row
        assert all(float(g) > 0 for g in match.groups()), row
    same = next(x for x in lines if x.startswith("same features"))
    assert float(same.split("difference| ")[1].split()[0]) < 1e-2, same


@pytest.mark.slow
def test_render_throughput_prints_stages_and_ratio():
    lines = run_bench("render_throughput.py", "--device", "cpu", "--duration", "1", "--steps", "2",
                      "--rounds", "1")
    assert speedup(lines) > 0
    for name in ("faithful", "ours"):
        row = next(x for x in lines if x.startswith(f"{name} "))
        match = re.search(r"([\d.]+) renders/s\s+ms/render: features\s+([\d.]+)\s+euler\s+([\d.]+)\s+"
                          r"vae\s+([\d.]+)\s+vocoder\s+([\d.]+)", row)
        assert match and all(float(g) > 0 for g in match.groups()), row


def test_audition_share_reads_a_runs_checkpoint_records(tmp_path):
    records = [{"time": 100.0, "event": "progress", "step": 1},
               {"time": 150.0, "event": "checkpoint", "step": 500, "audition_s": 2.5},
               "torn", {"time": 200.0, "event": "checkpoint", "step": 1000, "audition_s": 2.5}]
    (tmp_path / "progress.jsonl").write_text(
        "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    lines = run_bench("audition_share.py", str(tmp_path))
    assert lines[-1] == "audition share: 5.0 %" and lines[0].startswith("step     500")
