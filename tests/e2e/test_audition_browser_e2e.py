"""End-to-end: audition videos in headless Chromium, from the real daemon's training run.

The daemon trains the tiny model on a dataset whose `audition/` folder holds two videos (a
checkpoint every 2 steps); the run page then shows a column of `<video>` players per audition
video. Chromium plays one of those renders (it decodes: a picture of the video's size, the
render's length) and, in the A/B player of an audition video, switching checkpoints while it
plays goes on from the same moment.

Screenshots go to the test's temporary directory, or to `$SELVAD_SHOTS` when it is set; the
README's pictures of the audition column and of a render run were made that way:
`SELVAD_SHOTS=docs/images pytest -m slow tests/e2e/test_audition_browser_e2e.py`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.video_files import make_video

from .conftest import DaemonTree, scaled
from .test_web_e2e import _log_in, browser  # noqa: F401  (browser: the fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

VIDEOS = {"street": 3.0, "kitchen": 2.0}  # audition video -> seconds
STEPS, SAVE_EVERY = 6, 2

# the state of one <video>: what a wait or an assertion needs, read in one go
STATE_JS = """const v = arguments[0];
  return {src: v.currentSrc, t: v.currentTime, ready: v.readyState, paused: v.paused,
          seeking: v.seeking, duration: v.duration, width: v.videoWidth,
          error: v.error && v.error.code};"""


def _wait(driver: Any, video: Any, ok: Any, timeout: float, desc: str) -> dict[str, Any]:
    """Poll `video`'s state until `ok(state)` holds (the state), or fail after `timeout` s
    (stretched by the machine's slowdown) with the last state seen."""
    deadline = time.monotonic() + scaled(timeout)
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = driver.execute_script(STATE_JS, video)
        if state["error"]:
            pytest.fail(f"{desc}: the video failed to load ({state})")
        if ok(state):
            return state
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {desc}: {state}")


def _train(tree: DaemonTree) -> str:
    """Train the job `birds` on a dataset with the audition videos; the done run's id."""
    tree.add_clips("birds", 3)
    folder = tree.dataset("birds") / "audition"
    folder.mkdir()
    for name, seconds in VIDEOS.items():
        make_video(folder / f"{name}.mp4", seconds=seconds, fps=25, width=160, height=120,
                   audio_rate=16000, tone=330.0 if name == "street" else 880.0)
    tree.write_job("birds", "birds", steps=STEPS, save_every=SAVE_EVERY, log_every=2,
                   warmup_steps=1)
    tree.start()
    run = tree.wait_for(lambda: tree.runs("birds", "train"), 60, "the training run")[0]
    assert tree.wait_state(run.id, ("done", "failed"), 240).state == "done", tree.log_tail()
    return run.id


def _play_a_render(driver: Any) -> None:
    """Play the street render of the first checkpoint in the audition column."""
    from selenium.webdriver.common.by import By

    cells = driver.find_elements(By.CSS_SELECTOR, "#checkpoints tr.ckpt td.audition video")
    assert len(cells) == len(VIDEOS) * STEPS // SAVE_EVERY, len(cells)
    video = driver.find_element(By.CSS_SELECTOR, 'tr.ckpt td.audition[data-video="street"] video')
    driver.execute_script("arguments[0].play();", video)
    state = _wait(driver, video, lambda s: s["t"] > 0 and s["ready"] >= 2, 30,
                  "the street render to play")
    assert state["src"].endswith(f"/files/audition/street_step{SAVE_EVERY:05d}.mp4"), state
    assert abs(state["duration"] - VIDEOS["street"]) < 0.25, state  # the render's length
    assert state["width"] == 160, state  # the picture decodes (stream copied: its own size)
    driver.execute_script("arguments[0].pause();", video)


def _switch_keeps_the_position(driver: Any) -> None:
    """Street's A/B player: play A, switch to B while it plays; B goes on from that moment."""
    from selenium.webdriver.common.by import By

    section = driver.find_element(By.CSS_SELECTOR, 'section.ab-video[data-video="street"]')
    player = section.find_element(By.CSS_SELECTOR, "video.ab-player")
    driver.execute_script("arguments[0].play();", player)
    _wait(driver, player, lambda s: s["t"] > 0.8 and s["ready"] >= 2, 30, "A to play on")
    # the position and the click in one script: nothing moves between them
    before = driver.execute_script("const t = arguments[0].currentTime;"
                                   "arguments[1].click(); return t;", player,
                                   section.find_element(By.CSS_SELECTOR, ".ab-play-b"))
    last = f"/files/audition/street_step{STEPS:05d}.mp4"
    # playing again, not seeking, on B: app.js has set B's position and resumed it
    state = _wait(driver, player, lambda s: s["src"].endswith(last) and s["ready"] >= 2
                  and not s["paused"] and not s["seeking"], 30, "B to play on")
    assert before - 0.1 <= state["t"] <= before + scaled(1.5), (before, state)
    driver.execute_script("arguments[0].pause();", player)


def _shoot(driver: Any, shots: Path) -> Path:
    """A picture of the checkpoints table (the audition columns), each render showing a frame,
    drawn at 0.75 scale (a small file) in a viewport that holds the whole table (an element's
    screenshot stops at the viewport's edge)."""
    from selenium.webdriver.common.by import By

    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 1400, "height": 2400, "deviceScaleFactor": 0.75, "mobile": False})
    table = driver.find_element(By.ID, "checkpoints")
    driver.execute_script("arguments[0].scrollIntoView();", table)
    for video in table.find_elements(By.CSS_SELECTOR, "td.audition video"):
        driver.execute_script("arguments[0].currentTime = 0.6;", video)  # a frame, not black
        _wait(driver, video, lambda s: s["ready"] >= 2 and not s["seeking"], 30, "a frame")
    path = shots / "audition-column.png"
    table.screenshot(str(path))
    return path


def _render_page(driver: Any, tree: DaemonTree, url: str, shots: Path) -> None:
    """A video dropped into the job's render folder renders; its run page plays it (the
    video's picture, its length) and Render again queues it anew."""
    from selenium.webdriver.common.by import By

    assert tree.render_root is not None
    make_video(tree.render_root / "birds" / "porch.mp4", seconds=2.0, fps=25, width=160, height=120)
    runs = tree.wait_for(lambda: [r for r in tree.runs("birds", "render") if r.state in ("done", "failed")],
                         120, "the render run")
    assert runs[0].state == "done", runs[0].error
    driver.get(f"{url}runs/{runs[0].id}")
    video = driver.find_element(By.ID, "render-video")
    driver.execute_script("arguments[0].play();", video)
    state = _wait(driver, video, lambda s: s["t"] > 0 and s["ready"] >= 2, 30, "the render to play")
    assert state["src"].endswith("/files/porch.mp4") and state["width"] == 160, state
    assert abs(state["duration"] - 2.0) < 0.25, state
    driver.execute_script("arguments[0].pause(); arguments[0].currentTime = 0.6;", video)
    facts = driver.find_element(By.ID, "render-facts").text
    assert "adapter_final.pt" in facts and "4.5" in facts, facts
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 1000, "height": 1400, "deviceScaleFactor": 0.75, "mobile": False})
    driver.find_element(By.ID, "render").screenshot(str(shots / "render-run.png"))
    driver.find_element(By.ID, "render-again").click()
    tree.wait_for(lambda: len(tree.runs("birds", "render")) == 2, 60, "the render queued again")


def test_audition_renders_play_and_ab_keeps_the_position(tree: DaemonTree, browser: Any,  # noqa: F811
                                                          tmp_path: Path) -> None:
    (tree.watch_renders() / "birds").mkdir(parents=True)
    run_id = _train(tree)
    url = _log_in(browser, tree)
    browser.get(f"{url}runs/{run_id}")
    _play_a_render(browser)
    _switch_keeps_the_position(browser)
    shots = Path(os.environ.get("SELVAD_SHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    shot = _shoot(browser, shots)
    assert shot.stat().st_size > 0
    _render_page(browser, tree, url, shots)
