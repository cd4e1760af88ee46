"""What the page offers for deciding by ear and by eye: each sample's spectrogram beside its
player (served only as an artefact), A/B listening between two runs of a sweep, and the
dashboard's datasets with their errors and warnings from the daemon's last validation."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import numpy as np
import soundfile as sf

from selvad.datasets.report import load_last_report, save_last_report
from selvad.datasets.validate import validate_dataset
from selvad.runs.rundir import run_dir_for
from selvad.runs.watched import WatchedTable

from .test_app import _sweep, _tree, client_for

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32


def test_checkpoint_table_shows_each_samples_spectrogram(tmp_path: Path) -> None:
    cfg, _, run_id = _tree(tmp_path)
    out = next((tmp_path / "out" / "birds").iterdir())
    client = client_for(cfg)
    old = client.get(f"/runs/{run_id}").text  # an older run: no pictures, no talk of them
    assert "<img" not in old.split('id="checkpoints"', 1)[1].split("<h2>Curves", 1)[0]
    assert "The pictures show" not in old and 'id="ab-pic-a"' not in old
    for name in ("sample_step00010.png", "sample_reference.png"):
        (out / name).write_bytes(PNG)
    (out / "sample_step00020.png").symlink_to(tmp_path / "secret.txt")  # never served
    page = client.get(f"/runs/{run_id}").text
    table = page.split('id="checkpoints"', 1)[1].split("</table>", 1)[0]
    assert f'<img src="/runs/{run_id}/files/sample_step00010.png"' in table
    assert f'<img src="/runs/{run_id}/files/sample_reference.png"' in table
    assert "sample_step00020.png" not in table and table.count("<img") == 2
    assert "The pictures show" in page and "sample and its spectrogram" in table
    ab = page.split('id="ab"', 1)[1].split("</section>", 1)[0]  # A/B shows A's and B's pictures
    assert 'id="ab-pic-a"' in ab and 'id="ab-pic-b"' in ab
    assert f'data-spectrogram="/runs/{run_id}/files/sample_step00010.png"' in ab
    png = client.get(f"/runs/{run_id}/files/sample_step00010.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert client.get(f"/runs/{run_id}/files/sample_step00020.png").status_code == 404
    api = client.get(f"/api/runs/{run_id}").json()
    assert [c["spectrogram"] for c in api["checkpoints"]] == ["sample_step00010.png", None]


def test_sweep_page_plays_two_runs_against_each_other(tmp_path: Path) -> None:
    cfg, q, ids = _sweep(tmp_path)
    for n, run_id in enumerate(ids):
        out = run_dir_for(cfg, q.get(run_id))
        sf.write(out / "sample_reference.wav", np.zeros(1600, dtype=np.float32) + 0.1, 16000)
        meta = json.loads((out / "meta.json").read_text())
        (out / "meta.json").write_text(json.dumps({**meta, "sample_clip": f"clip{n}"}))
    page = client_for(cfg).get("/sweeps/birds").text
    ab = page.split('id="ab"', 1)[1].split("</section>", 1)[0]
    a, b = (ab.split(f'id="ab-{side}"', 1)[1].split("</select>", 1)[0] for side in "ab")
    for select in (a, b):  # every checkpoint of every run, grouped by run with its settings
        assert select.count("<option") == 4 and select.count("<optgroup") == 2
        assert 'label="run lr0 · lr 0.0001"' in select
        for run_id in ids:
            assert f'data-ref="/runs/{run_id}/reference"' in select
    # A: the sweep-wide recommendation (lr0 at step 10); B: the other run's recommended one
    assert re.findall(r'<option value="([^"]+)"[^>]* selected>', a) == [
        f"/runs/{ids[0]}/files/sample_step00010.wav"]
    assert re.findall(r'<option value="([^"]+)"[^>]* selected>', b) == [
        f"/runs/{ids[1]}/files/sample_step00020.wav"]
    assert 'id="ab-play-ref"' in ab and 'id="ab-audio"' in ab
    assert "clip0, clip1" in ab  # runs that sampled different clips are said to


def test_dashboard_lists_each_datasets_errors_and_warnings(tmp_path: Path) -> None:
    cfg, q, _ = _tree(tmp_path)
    data = tmp_path / "data" / "birds"  # one .wav and no .npz: errors, and a warning
    report = validate_dataset(data, "tiny_16k")
    assert report.error_count and report.warning_count
    path = save_last_report(report, cfg.paths.state_dir, os.path.abspath(data))
    assert path.parent == cfg.paths.state_dir / "datasets"
    kept = load_last_report(cfg.paths.state_dir, os.path.abspath(data))
    assert kept is not None and "clips" not in kept and kept["warning_count"] == report.warning_count
    WatchedTable(q).record("dataset", os.path.abspath(data), "data/birds",
                           problem="1 error(s) for tiny_16k: no .npz files")
    home = client_for(cfg).get("/").text
    row = home.split('id="datasets"', 1)[1].split("</table>", 1)[0]
    assert "state failed\">invalid" in row
    assert f'data-warnings="{report.warning_count}"' in row
    errors = row.split('class="findings errors"', 1)[1].split("</ul>", 1)[0]
    warnings = row.split('class="findings warnings"', 1)[1].split("</ul>", 1)[0]
    assert "no .npz files in this directory" in errors
    assert "<b>clip0.wav</b>" in warnings and "→" in warnings  # the file, the problem, the fix
    path.write_text("[not a report")  # unreadable: the row stays, without the lists
    assert 'class="findings' not in client_for(cfg).get("/").text


def test_the_prepared_reference_plays_beside_the_original(tmp_path: Path) -> None:
    cfg, _, run_id = _tree(tmp_path)
    out = next((tmp_path / "out" / "birds").iterdir())
    client = client_for(cfg)
    plain = client.get(f"/runs/{run_id}").text  # no [prepare] step: no prepared player
    assert "sample_reference_prepared" not in plain and 'class="reference prepared"' not in plain
    tone = (0.1 * np.sin(np.arange(1600) / 3)).astype(np.float32)
    sf.write(out / "sample_reference_prepared.wav", tone, 16000)
    (out / "sample_reference_prepared.png").write_bytes(PNG)
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "prepare": {"steps": ["loudness", "hf_smooth"]}}))
    page = client.get(f"/runs/{run_id}").text
    table = page.split('id="checkpoints"', 1)[1].split("</table>", 1)[0]
    rows = table.split("<tr")
    ref = next(i for i, r in enumerate(rows) if r.startswith(' class="reference"'))
    prepared = rows[ref + 1]  # the row right after the original's
    assert prepared.startswith(' class="reference prepared"')
    assert f'<audio controls preload="metadata" src="/runs/{run_id}/files/sample_reference_prepared.wav">' in prepared
    assert "(loudness, hf_smooth)" in prepared
    assert f'<img src="/runs/{run_id}/files/sample_reference_prepared.png"' in prepared
    wav = client.get(f"/runs/{run_id}/files/sample_reference_prepared.wav")
    assert wav.status_code == 200 and wav.headers["content-type"] == "audio/wav"
    played, rate = sf.read(io.BytesIO(wav.content), dtype="float32")
    assert rate == 16000 and np.allclose(played, tone, atol=1e-4)
    (out / "sample_reference_prepared.wav").unlink()
    (out / "sample_reference_prepared.wav").symlink_to(tmp_path / "secret.txt")  # never served
    assert client.get(f"/runs/{run_id}/files/sample_reference_prepared.wav").status_code == 404
    assert 'class="reference prepared"' not in client.get(f"/runs/{run_id}").text
