"""The web page's dataset table lists the clips cut from videos."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

from selvad.datasets.report import save_last_report
from selvad.datasets.validate import validate_dataset
from selvad.runs.watched import WatchedTable
from tests.video_files import make_video

from .test_app import _tree, client_for


def test_dataset_table_lists_video_clips(tmp_path: Path) -> None:
    cfg, q, _ = _tree(tmp_path)
    data = tmp_path / "data" / "cars"
    data.mkdir(parents=True)
    make_video(data / "long.mp4", seconds=17.0, fps=2, width=32, height=32)
    sf.write(data / "long.wav", np.full(17 * 16000, 0.1, np.float32), 16000)
    (data / "dataset.toml").write_text("[video]\nsplit = true\n")
    report = validate_dataset(data, "tiny_16k")
    save_last_report(report, cfg.paths.state_dir, os.path.abspath(data))
    WatchedTable(q).record("dataset", os.path.abspath(data), "data/cars")
    row = client_for(cfg).get("/").text.split('id="datasets"', 1)[1].split("</table>", 1)[0]
    assert "3 clips (3 from videos)" in row
    videos = row.split('class="findings videos"', 1)[1].split("</ul>", 1)[0]
    assert "<b>long_part02</b>: long.mp4, 8-16 s" in videos
