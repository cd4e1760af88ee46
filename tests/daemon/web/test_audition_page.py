"""The run page's audition videos: a column of `<video>` players per audition video beside the
training-clip sample (one per checkpoint), the renders served only as artefacts of the run's
real `audition/` folder (video/mp4, byte ranges), and an A/B player per audition video."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.video_files import make_video

from .test_app import _tree, client_for

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32


def _renders(out: Path, video: str, steps: tuple[int, ...], *, mp4: bool = True) -> None:
    """What a checkpoint writes for audition video `video` at each of `steps`."""
    folder = out / "audition"
    folder.mkdir(exist_ok=True)
    for step in steps:
        stem = folder / f"{video}_step{step:05d}"
        sf.write(stem.with_suffix(".wav"), np.zeros(1600, dtype=np.float32) + 0.01 * step, 16000)
        stem.with_suffix(".png").write_bytes(PNG)
        if mp4:
            make_video(stem.with_suffix(".mp4"), seconds=0.5, audio_rate=16000)


def _site(tmp_path: Path):
    cfg, q, run_id = _tree(tmp_path)
    out = next((tmp_path / "out" / "birds").iterdir())
    return client_for(cfg), run_id, out


def _table(page: str) -> str:
    return page.split('id="checkpoints"', 1)[1].split("</table>", 1)[0]


def test_each_audition_video_is_a_column_of_players_beside_the_sample(tmp_path: Path) -> None:
    client, run_id, out = _site(tmp_path)
    assert "audition video" not in client.get(f"/runs/{run_id}").text  # none rendered: no column
    _renders(out, "street", (10, 20))
    _renders(out, "rain walk", (10,), mp4=False)  # its .mp4 could not be written: the sound alone
    page = client.get(f"/runs/{run_id}").text
    table = _table(page)
    heads = re.findall(r"<th[^>]*>([^<]*)</th>", table)
    assert heads[1:4] == ["sample", "audition video: rain walk", "audition video: street"]
    rows = table.split('<tr class="ckpt')[1:]
    assert len(rows) == 2
    for step, row in zip((10, 20), rows, strict=True):
        assert f'data-step="{step}"' in row
        cells = re.findall(r'<td class="audition" data-video="([^"]+)">(.*?)</td>', row, re.S)
        assert [v for v, _ in cells] == ["rain walk", "street"]
        assert f'<video controls preload="metadata" width="320" src="/runs/{run_id}/files/audition/street_step{step:05d}.mp4">' in cells[1][1]
    assert f'src="/runs/{run_id}/files/audition/rain%20walk_step00010.wav"' in rows[0]
    assert "no render" in rows[1]  # rain walk has no render at step 20
    api = client.get(f"/api/runs/{run_id}").json()
    assert api["checkpoints"][1]["auditions"] == {"street": {
        "wav": "audition/street_step00020.wav", "png": "audition/street_step00020.png",
        "mp4": "audition/street_step00020.mp4"}}


def test_audition_renders_are_served_as_video_with_ranges(tmp_path: Path) -> None:
    client, run_id, out = _site(tmp_path)
    _renders(out, "street", (10,))
    url = f"/runs/{run_id}/files/audition/street_step00010.mp4"
    whole = client.get(url)
    assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
    assert whole.content == (out / "audition" / "street_step00010.mp4").read_bytes()
    assert "attachment" not in whole.headers.get("content-disposition", "")
    part = client.get(url, headers={"range": "bytes=4-11"})
    assert part.status_code == 206 and part.content == whole.content[4:12]  # a <video> seeks
    wav = client.get(f"/runs/{run_id}/files/audition/street_step00010.wav")
    assert wav.status_code == 200 and wav.headers["content-type"] == "audio/wav"
    client.cookies.clear()
    assert client.get(url).status_code == 401  # the token is needed for the renders too


@pytest.mark.parametrize("path", [
    "audition/..%2Fmeta.json", "audition/%2e%2e%2fmeta.json", "audition/street_step00010.txt",
    "audition/secret_step00010.mp4", "audition/linked_step00010.mp4", "audition/street_step00010.wav%00.mp4",
    "other/street_step00010.mp4", "audition/.hidden_step00010.mp4",
])
def test_audition_path_tricks_links_and_hardlinks_give_404(tmp_path: Path, path: str) -> None:
    client, run_id, out = _site(tmp_path)
    _renders(out, "street", (10,))
    folder = out / "audition"
    (folder / "street_step00010.txt").write_text("no")
    (folder / "secret_step00010.mp4").symlink_to(tmp_path / "secret.txt")
    os.link(tmp_path / "secret.txt", folder / "linked_step00010.mp4")  # a hardlink names any file
    (folder / ".hidden_step00010.mp4").write_bytes(b"hidden")
    r = client.get(f"/runs/{run_id}/files/{path}")
    assert r.status_code == 404, (path, r.status_code)
    assert b"secret" not in r.content and b"hidden" not in r.content


def test_a_linked_audition_folder_is_never_read(tmp_path: Path) -> None:
    client, run_id, out = _site(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _renders(elsewhere, "street", (10,))
    (out / "audition").symlink_to(elsewhere / "audition")
    assert client.get(f"/runs/{run_id}/files/audition/street_step00010.mp4").status_code == 404
    assert "audition video" not in client.get(f"/runs/{run_id}").text


def test_ab_player_per_audition_video_offers_each_checkpoint(tmp_path: Path) -> None:
    client, run_id, out = _site(tmp_path)
    _renders(out, "street", (10, 20))
    _renders(out, "rain", (10,), mp4=False)  # no video to A/B: no section
    page = client.get(f"/runs/{run_id}").text
    sections = re.findall(r'<section class="ab ab-video" data-video="([^"]+)">(.*?)</section>', page, re.S)
    assert [v for v, _ in sections] == ["street"]
    body = sections[0][1]
    for side, step in (("a", 10), ("b", 20)):  # A: the first checkpoint, B: the last
        select = body.split(f'class="ab-{side}"', 1)[1].split("</select>", 1)[0]
        assert select.count("<option") == 2
        assert re.findall(r'<option value="([^"]+)" selected>', select) == [
            f"/runs/{run_id}/files/audition/street_step{step:05d}.mp4"]
    assert '<video class="ab-player"' in body and 'class="ab-play-b"' in body
    js = client.get("/static/app.js").text
    assert "setupVideoAB" in js and "switchSource(player" in js


def test_the_recommendation_says_which_metrics_it_used(tmp_path: Path) -> None:
    client, run_id, out = _site(tmp_path)
    _renders(out, "street", (10, 20))
    meta = json.loads((out / "meta.json").read_text())
    used = ["validation loss on held-out clips", "hf energy ratio of the training-clip sample",
            "hf energy ratio of the audition renders (street)"]
    meta["recommendation"]["used"] = used
    meta["audition_metrics"] = {"20": {"street": {"hf_energy_ratio": 0.4321}}}
    (out / "meta.json").write_text(json.dumps(meta))
    page = client.get(f"/runs/{run_id}").text
    rec = page.split('id="recommendation"', 1)[1].split("</section>", 1)[0]
    assert f'id="rec-used">Based on: {"; ".join(used)}.</p>' in rec
    rows = _table(page).split('<tr class="ckpt')[1:]
    assert "energy above 4 kHz: 0.432" in rows[1] and "energy above 4 kHz" not in rows[0]
