"""Logging: JSON and console output, stdlib and warnings routed, arrays summarised."""

from __future__ import annotations

import io
import json
import logging
import warnings

import numpy as np
import pytest

from selvad.log import get_logger, setup_logging


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    logging.captureWarnings(False)


def lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def test_json_lines_with_context_and_array_summary(restore_logging) -> None:
    buf = io.StringIO()
    setup_logging("json", "info", stream=buf)
    log = get_logger("selvad.test", run_id="r1")
    log.info("run state changed", state="training", latents=np.zeros((2, 3), np.float32),
             loss=np.float32(0.25), batch=[np.ones(4)], api_token="hunter2")
    log.debug("hidden at info")
    (rec,) = lines(buf)
    assert rec["event"] == "run state changed" and rec["level"] == "info"
    assert rec["logger"] == "selvad.test" and rec["run_id"] == "r1" and "timestamp" in rec
    assert rec["latents"] == "<ndarray shape=(2, 3) dtype=float32>"
    assert rec["loss"] == 0.25
    assert rec["batch"] == ["<ndarray shape=(4,) dtype=float64>"]
    assert rec["api_token"] == "***"


def test_stdlib_and_warnings_are_routed(restore_logging) -> None:
    buf = io.StringIO()
    setup_logging("json", "info", stream=buf)
    logging.getLogger("torch.distributed").warning("hello %s", "world")
    logging.getLogger("apscheduler.scheduler").info("chatty")  # raised to WARNING
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("old thing", DeprecationWarning, stacklevel=1)
    recs = lines(buf)
    assert {"event": "hello world", "logger": "torch.distributed", "level": "warning"}.items() \
        <= recs[0].items()
    assert recs[1]["logger"] == "py.warnings" and "old thing" in recs[1]["event"]
    assert len(recs) == 2


def test_exceptions_are_structured(restore_logging) -> None:
    buf = io.StringIO()
    setup_logging("json", "info", stream=buf)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger("x").exception("run failed")
    (rec,) = lines(buf)
    assert rec["exception"][0]["exc_type"] == "RuntimeError"


def test_console_format_and_auto(restore_logging) -> None:
    buf = io.StringIO()
    setup_logging("console", "debug", stream=buf)
    get_logger("x").debug("dataset changed", dataset="birds")
    out = buf.getvalue()
    assert "dataset changed" in out and "dataset=birds" in out and not out.startswith("{")
    buf2 = io.StringIO()  # not a terminal -> JSON
    setup_logging("auto", "info", stream=buf2)
    get_logger("x").info("ready")
    assert lines(buf2)[0]["event"] == "ready"
    assert "ready" not in buf.getvalue()  # the earlier handler was replaced
    with pytest.raises(ValueError):
        setup_logging("json", "loud")
