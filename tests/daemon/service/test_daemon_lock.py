"""One daemon per state directory: a second one refuses before it touches any run."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from selva_engine.training.options import TrainConfig
from selvad.runs.queue import RunQueue
from selvad.runs.statelock import StateLock
from selvad.service.daemon import EXIT_LOCKED, Daemon


def test_second_daemon_refuses_before_requeueing_or_stopping_anything(
        make_config: Callable[[str], Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    daemon = Daemon(make_config('[logging]\nformat = "json"\n'))
    queue = RunQueue(daemon.cfg.paths.queue_path)
    run = queue.enqueue("birds", "birds", TrainConfig(variant="tiny_16k").to_dict(), {})
    assert run is not None and queue.claim(run.id) is not None
    queue.set_state(run.id, "training")  # the first daemon's run, training right now
    first = StateLock.acquire(daemon.cfg.paths.state_dir)  # the first daemon holds it
    try:
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(daemon.run()), daemon=True)
        thread.start()
        thread.join(20)
        if thread.is_alive():  # (it started: stop it, the assertions below say why)
            daemon.request_stop()
            thread.join(60)
        assert queue.get(run.id).state == "training"  # not requeued behind the first's back
        assert result == [EXIT_LOCKED]
    finally:
        first.release()
    out = capsys.readouterr().out
    assert "daemon.already_running" in out and f'"pid": {os.getpid()}' in out
    assert "daemon.ready" not in out and "daemon.starting" not in out
