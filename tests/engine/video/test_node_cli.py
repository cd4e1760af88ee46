"""`selva-extract` as a user runs it: bad input gets one sentence and exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from selva_engine.video.cli import build_parser, main
from tests.engine.video.node_fixtures import write_video


def test_every_flag_has_help():
    parser = build_parser()
    for action in parser._actions:
        assert action.help, action.option_strings
    assert "(default: 0.0)" in parser.format_help()  # --duration 0 = the whole video, like the node


@pytest.mark.parametrize("problem", ["missing", "text", "strength", "name"])
def test_bad_input_is_one_sentence_and_exit_2(tmp_path, capsys, problem):
    video = write_video(tmp_path / "ok.mp4", frames=10)
    args = ["--video", str(video), "--prompt", "rain", "--output", str(tmp_path / "out"), "--device", "cpu"]
    if problem == "missing":
        args[1] = str(tmp_path / "nope.mp4")
    elif problem == "text":
        (tmp_path / "notes.mp4").write_text("not a video\n" * 50)
        args[1] = str(tmp_path / "notes.mp4")
    elif problem == "strength":
        args += ["--mask_strength", "1.5"]
    else:
        args = ["--video", str(video), str(video), *args[2:], "--name", "x"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("selva-extract: error: "), err
    assert not (tmp_path / "out").exists()


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "selva_engine.cli", "extract-video", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--mask_strength" in out.stdout
