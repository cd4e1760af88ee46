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


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _progress(log, step: int, loss: float) -> None:
    log.info("run.progress", step=step, steps=20, loss=loss, smoothed_loss=loss + 0.01234567,
             lr=1e-4, samples_per_s=3.14159, eta_s=130.7)


def test_console_lines_are_short_and_rounded(restore_logging) -> None:
    buf = io.StringIO()
    setup_logging("console", "info", stream=buf)
    log = get_logger("selvad.runs.worker", run_id="r1", job="dogs")
    _progress(log, 5, 0.612345678)
    log.info("run.files_updated", files=[f"clip_{i:04d}.wav" for i in range(300)],
             message="x " * 800)
    out = buf.getvalue().splitlines()
    assert len(out) == 2 + 20 + 1 and all(len(line) < 400 for line in out), out
    assert "step 5/20" in out[0] and "train loss (smoothed) 0.6247" in out[0] and "0.6123" not in out[0]
    assert "3.1 samples/s" in out[0] and "ETA 2m10s" in out[0] and "0.612345678" not in out[0]
    assert "files=(300 below)" in out[1] and "(1600 chars)" in out[1]
    assert out[2] == "    files: clip_0000.wav" and out[21] == "    files: clip_0019.wav"
    assert out[22] == "    files: ... and 280 more"


def test_console_lines_show_the_items_of_a_list(restore_logging) -> None:
    buf = io.StringIO()
    setup_logging("console", "info", stream=buf)
    problems = [f"/jobs/x.toml:train.key{i}: out of range (got {i}, expected 0 to 1)"
                for i in range(3)]
    get_logger("selvad.service.events").error("job.invalid", job="x", problems=problems)
    out = buf.getvalue().splitlines()
    assert "problems=(3 below)" in out[0] and "<3 items>" not in out[0]
    assert out[1:] == [f"    problems: {p}" for p in problems]


def test_terminal_redraws_the_progress_bar_in_place(restore_logging) -> None:
    buf = _Tty()
    setup_logging("auto", "info", stream=buf)  # a terminal: console with the live bar
    log = get_logger("selvad.runs.worker", run_id="r1")
    log.info("run.state", state="training", step=0, steps=20)
    _progress(log, 5, 0.9)
    log.info("run.checkpoint", step=10, path="/o/adapter_step00010.pt")
    _progress(log, 20, 0.5)
    log.info("run.state", state="done")
    out = buf.getvalue()
    # the checkpoint line is printed above the bar, which is drawn again below it
    assert "\r\x1b[K" in out and out.count("step 5/20") == 2
    assert "run.checkpoint" in out.split("step 5/20")[1]
    # the last bar stays on screen and the run's end starts a fresh line
    assert out.endswith("\n") and "100% step 20/20" in out.split("\n")[-3]
    assert "state=done" in out.split("\n")[-2]


def test_uvicorn_records_carry_no_color_message(restore_logging) -> None:
    for fmt in ("json", "console"):
        buf = io.StringIO()
        setup_logging(fmt, "info", stream=buf)
        logging.getLogger("uvicorn.error").info(
            "Started server process [%d]", 42,
            extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"})
        out = buf.getvalue()
        assert "Started server process [42]" in out, out
        assert "color_message" not in out and "\x1b" not in out and "\\u001b" not in out, out
