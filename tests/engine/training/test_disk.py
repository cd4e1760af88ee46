"""The trainer and its output directory: stale temp files, progress.jsonl on resume, disk full.

Disk-full tests write the run into a real small tmpfs (tests.tmpfs) and fill it with a
ballast file at a chosen moment; the feature cache lives outside it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from selva_engine.io import DiskFullError
from selva_engine.outputs.checkpoint import find_latest
from selva_engine.training.options import TrainConfig
from selva_engine.training.setup import open_run
from selva_engine.training.trainer import train
from tests.tmpfs import fill, small_tmpfs

REPO = Path(__file__).resolve().parents[3]


def disk_full(out: Path, detail: bool | None = None) -> str:
    """The disk-full sentence about `out` as a regex; `detail`: with the "(N free, ...)"
    part (True), without it (False) or either (None)."""
    part = {True: r" \(.* free, a checkpoint needs about .*\)", False: "", None: r"( \(.*\))?"}[detail]
    return rf"^disk full in {re.escape(str(out))}{part}: free space or lower retention$"


@pytest.fixture(scope="module")
def clips(tmp_path_factory, make_clips) -> Path:
    return make_clips(tmp_path_factory.mktemp("data"), 4)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")  # shared: the clips are encoded once


def config(data: Path, out: Path, weights: Path, cache: Path, **kw) -> TrainConfig:
    base = dict(data_dir=str(data), output_dir=str(out), variant="tiny_16k", selva_dir=str(weights),
                steps=12, save_every=6, log_every=2, batch_size=2, lr=1e-3, warmup_steps=2,
                sample_steps=2, precision="fp32", device="cpu", cache_dir=str(cache))
    base.update(kw)
    return TrainConfig(**base)


def _records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "progress.jsonl").read_text().splitlines()]


def _steps(out: Path, kind: str = "progress") -> list[int]:
    return [r["step"] for r in _records(out) if r["event"] == kind]


def _temp(directory: Path, target: str, age_s: float) -> Path:
    """A temp file named as the atomic writer names it (as a kill -9 leaves it)."""
    fd, path = tempfile.mkstemp(prefix=f".{target}.", suffix=".tmp", dir=directory)
    os.write(fd, b"\0" * 1000)
    os.close(fd)
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return Path(path)


def test_run_start_removes_temp_files_of_killed_writes(tmp_path, clips, cache, tiny_weights) -> None:
    out = tmp_path / "run"
    out.mkdir()
    stale = [_temp(out, "adapter_step00120.pt", 3600), _temp(out, "sample_step00120.wav", 1)]
    later = _temp(out, "meta.json", -60)  # newer than the run's start: not this run's to judge
    (out / "notes.tmp").write_text("a user's file")
    open_run(config(clips, out, tiny_weights, cache), None)
    assert not any(p.exists() for p in stale)
    assert later.exists() and (out / "notes.tmp").exists()


def test_resume_trims_progress_after_the_resumed_step(tmp_path, clips, cache, tiny_weights) -> None:
    out = tmp_path / "run"
    assert train(config(clips, out, tiny_weights, cache)).status == "done"
    # as after a kill -9 between step 12's progress line and its checkpoint, mid-append
    (out / "adapter_step00012.pt").unlink()
    with (out / "progress.jsonl").open("a") as f:
        f.write('{"time": 1, "event": "progress", "st')
    events: list[dict] = []
    result = train(config(clips, out, tiny_weights, cache, resume="latest"), events=events.append)
    assert result.status == "done"
    assert [e["step"] for e in events if e["event"] == "resumed"] == [6]
    assert _steps(out) == [2, 4, 6, 8, 10, 12]  # one line per step
    assert _steps(out, "checkpoint") == [6, 12]


def test_disk_full_fails_with_one_sentence_and_resumes(tmp_path, clips, cache, tiny_weights) -> None:
    """The disk fills up after the step-6 checkpoint: the step-8 progress line cannot be
    written (ENOSPC). The run fails with the sentence; step 6 stays the resume point; after
    the ballast is deleted the resumed run finishes."""
    with small_tmpfs(tmp_path / "fs", 8 << 20) as fs:
        out = fs / "run"
        ballast: list[Path] = []

        def on_event(e: dict) -> None:
            if e["event"] == "checkpoint" and e["step"] == 6:
                ballast.append(fill(fs))

        with pytest.raises(DiskFullError, match=disk_full(out)):
            train(config(clips, out, tiny_weights, cache), events=on_event)
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
        assert find_latest(out)[1]["step"] == 6
        ballast[0].unlink()
        result = train(config(clips, out, tiny_weights, cache, resume="latest"))
        assert result.status == "done" and result.step == 12
        assert _steps(out) == [2, 4, 6, 8, 10, 12] and _steps(out, "checkpoint") == [6, 12]


def test_too_little_space_for_a_checkpoint_fails_before_writing(tmp_path, clips, cache,
                                                                tiny_weights) -> None:
    """With less free space than a checkpoint and its sample need, the run stops before
    the checkpoint's first write: no sample, no checkpoint, no temp file."""
    with small_tmpfs(tmp_path / "fs", 384 << 10) as fs:
        out = fs / "run"
        with pytest.raises(DiskFullError, match=disk_full(out, detail=True)):
            train(config(clips, out, tiny_weights, cache))
        assert sorted(p.name for p in out.iterdir()) == ["progress.jsonl"]
        assert _steps(out) == [2, 4, 6]


def test_cli_reports_disk_full_as_its_error_event(tmp_path, clips, cache, tiny_weights) -> None:
    """`selva_engine.cli train --json` on a full disk whose stderr log is on that disk too
    (the daemon's worker.log lies in the run directory): the last event is the error, one
    sentence."""
    with small_tmpfs(tmp_path / "fs", 1 << 20) as fs:
        out = fs / "run"
        out.mkdir()
        cfg = config(clips, out, tiny_weights, cache)
        (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
        log = (out / "worker.log").open("ab")
        fill(fs)
        done = subprocess.run([sys.executable, "-m", "selva_engine.cli", "train", "--config_json",
                               str(tmp_path / "cfg.json"), "--json"], stdout=subprocess.PIPE,
                              stderr=log, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})
        log.close()
        events = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
        assert done.returncode not in (0, 3)
        assert events and events[-1]["event"] == "error", done.stdout[-2000:]
        assert events[-1]["message"] == f"disk full in {out}: free space or lower retention"
