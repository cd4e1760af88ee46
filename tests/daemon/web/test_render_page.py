"""Render runs on the page: a done render's run page plays `<name>.mp4` (the `.wav` when no
video was written) with its picture and what `<name>.render.toml` says; only the run's own
files of the job's shared renders/ folder are served (byte ranges); a malformed record is a
note; a waiting render shows its note; Render again posts a `render` request for the job."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from selvad.runs.queue import RunQueue

from .test_app import _csrf, _tree, client_for

MP4 = b"\0\0\0\x18ftypmp42" + bytes(range(256)) * 4  # served as bytes; never decoded here
RECORD = {
    "video": {"file": "/renders/birds/street.mp4", "sha256": "ab" * 32},
    "adapter": {"file": "/out/birds/20261101-000000-aaaa/adapter_step00010.pt", "strength": 0.75,
                "job": "birds", "run": "20261101-000000-aaaa", "step": 10,
                "chosen_by": "the job's recommendation", "sha256": "cd" * 32},
    "sampler": {"variant": "small_16k", "prompt": "rain on a tin roof", "negative_prompt": "",
                "cfg": 4.5, "steps": 25, "seed": 7, "duration_s": 8.0, "sampling_rate": 16000},
    "files": {"wav": "street.wav", "mp4": "street.mp4", "png": "street.png"},
    "rendered_at": "2026-12-04T13:00:00Z",
}


def _render_run(q: RunQueue, name: str = "street", *, state: str = "done") -> str:
    """A render run of job birds for video `name`, moved to `state`."""
    config = {"video": f"/renders/birds/{name}.mp4", "folder": "/renders/birds", "name": name,
              "variant": "small_16k", "data_dir": "", "prompt": "", "render": {}}
    run = q.enqueue("birds", "birds", config, {"files": [{"name": f"{name}.mp4", "size": 1, "sha256": name}]},
                    kind="render", force=True)  # forced: a second render of the same video
    assert run is not None
    if state != "queued":
        q.set_state(run.id, "extracting")
    if state not in ("queued", "extracting"):
        q.set_state(run.id, state)
    return run.id


def _write(folder: Path, name: str, *, mp4: bool = True, record: dict | None = None) -> None:
    """What a render child writes for `name` into the job's renders/ folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.wav").write_bytes(b"RIFF" + b"\0" * 40)
    (folder / f"{name}.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    if mp4:
        (folder / f"{name}.mp4").write_bytes(MP4)
    (folder / f"{name}.render.toml").write_text(tomli_w.dumps(record or RECORD))


@pytest.fixture
def site(tmp_path: Path) -> tuple[Any, RunQueue, Path]:
    cfg, q, _ = _tree(tmp_path)
    return client_for(cfg), q, cfg.paths.output_root / "birds" / "renders"


def test_a_done_render_shows_its_player_picture_and_record(site: Any) -> None:
    client, q, renders = site
    run_id = _render_run(q)
    _write(renders, "street", record={**RECORD, "adapter": {**RECORD["adapter"], "render_run": run_id}})
    page = client.get(f"/runs/{run_id}").text
    section = page.split('id="render"', 1)[1].split("</section>", 1)[0]
    assert f'<video controls preload="metadata" width="640" id="render-video" src="/runs/{run_id}/files/street.mp4">' in section
    assert f'src="/runs/{run_id}/files/street.png"' in section
    facts = dict(re.findall(r"<tr><td>([^<]+)</td><td>(.*?)</td></tr>", section))
    assert facts["adapter"] == "<code>adapter_step00010.pt</code>"  # the file's name, not its path
    assert facts["training run"] == '<a href="/runs/20261101-000000-aaaa">20261101-000000-aaaa</a>'
    assert [facts[k] for k in ("step", "strength", "CFG", "steps", "seed", "duration (s)")] == [
        f"<code>{v}</code>" for v in ("10", "0.75", "4.5", "25", "7", "8.0")]
    assert facts["chosen by"] == "<code>the job&#39;s recommendation</code>"
    assert facts["prompt"] == "<code>rain on a tin roof</code>" and "negative prompt" not in facts
    assert facts["video"] == "<code>street.mp4</code>"
    assert "render-other" not in section and "checkpoints" not in page  # no training table
    api = client.get(f"/api/runs/{run_id}").json()
    assert api["render"]["mp4"] == "street.mp4" and api["files"]["street.render.toml"] == "record"


def test_the_sound_alone_when_no_video_was_written(site: Any) -> None:
    client, q, renders = site
    run_id = _render_run(q)
    _write(renders, "street", mp4=False)
    page = client.get(f"/runs/{run_id}").text
    assert "<video" not in page
    assert f'<audio controls preload="metadata" id="render-audio" src="/runs/{run_id}/files/street.wav">' in page


def test_the_render_is_served_with_byte_ranges(site: Any) -> None:
    client, q, renders = site
    run_id = _render_run(q)
    _write(renders, "street")
    url = f"/runs/{run_id}/files/street.mp4"
    whole = client.get(url)
    assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
    assert whole.content == MP4 and "attachment" not in whole.headers.get("content-disposition", "")
    part = client.get(url, headers={"range": "bytes=4-11"})
    assert part.status_code == 206 and part.content == MP4[4:12]
    assert client.get(f"/runs/{run_id}/files/street.render.toml").headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize("name", [
    "other.mp4", "other.render.toml", "..%2Fsecret.txt", "%2e%2e%2fsecret.txt", "street.txt",
    "street.mp4%00", "linked.mp4", "street", "adapter_step00010.pt", "meta.json",
])
def test_only_the_runs_own_files_of_the_renders_folder_are_served(site: Any, name: str) -> None:
    client, q, renders = site
    run_id = _render_run(q)
    _write(renders, "street")
    _write(renders, "other")  # another video's render in the same folder
    (renders / "street.txt").write_text("secret")
    (renders / "meta.json").write_text("{}")
    (renders.parent / "secret.txt").write_text("secret")
    r = client.get(f"/runs/{run_id}/files/{name}")
    assert r.status_code == 404, (name, r.status_code)
    assert b"secret" not in r.content


def test_links_hardlinks_and_a_linked_renders_folder_give_404(site: Any, tmp_path: Path) -> None:
    client, q, renders = site
    run_id = _render_run(q)
    _write(renders, "street")
    (renders / "street.mp4").unlink()
    (renders / "street.mp4").symlink_to(tmp_path / "secret.txt")
    (renders / "street.wav").unlink()
    os.link(tmp_path / "secret.txt", renders / "street.wav")
    for name in ("street.mp4", "street.wav"):
        assert client.get(f"/runs/{run_id}/files/{name}").status_code == 404, name
    renders.rename(tmp_path / "elsewhere")
    renders.symlink_to(tmp_path / "elsewhere")
    assert client.get(f"/runs/{run_id}/files/street.png").status_code == 404
    assert "render-facts" not in client.get(f"/runs/{run_id}").text


def test_a_stem_that_is_no_file_name_serves_nothing(site: Any) -> None:
    client, q, renders = site
    run_id = _render_run(q, name="../birds/renders/street")
    _write(renders, "street")
    page = client.get(f"/runs/{run_id}")
    assert page.status_code == 200 and "<video" not in page.text
    assert client.get(f"/api/runs/{run_id}").json()["files"] == {}


@pytest.mark.parametrize("text", ["this is = not [toml", "adapter = 3\nsampler = [1, 2]\n",
                                  "\udcff"])
def test_a_malformed_record_is_a_note_never_an_error(site: Any, text: str) -> None:
    client, q, renders = site
    run_id = _render_run(q)
    _write(renders, "street")
    (renders / "street.render.toml").write_bytes(text.encode("utf-8", "surrogateescape"))
    page = client.get(f"/runs/{run_id}")
    assert page.status_code == 200 and 'id="render-video"' in page.text
    if text.startswith("adapter"):  # TOML, but of the wrong shape: nothing to show, no note
        assert "render-facts" not in page.text
    else:
        assert 'id="render-problem"' in page.text and "street.render.toml is not a readable" in page.text


def test_files_of_another_render_of_the_same_video_say_so(site: Any) -> None:
    client, q, renders = site
    old = _render_run(q)
    new = _render_run(q, state="queued")  # queued again: the files are still the old run's
    _write(renders, "street", record={**RECORD, "adapter": {**RECORD["adapter"], "render_run": old}})
    page = client.get(f"/runs/{new}").text
    assert f'render run <a href="/runs/{old}">{old}</a>' in page


def test_a_waiting_render_shows_its_note(site: Any) -> None:
    client, q, _ = site
    run_id = _render_run(q, state="extracting")
    note = "waiting: job birds has no finished training run yet; the render starts when one is done"
    q.set_state(run_id, "queued", error=note)
    page = client.get(f"/runs/{run_id}").text
    assert f'<p class="note" id="run-error">{note}</p>' in page
    assert "Nothing rendered yet" in page
    home = client.get("/").text
    row = home.split(f'<tr data-run="{run_id}">', 1)[1].split("</tr>", 1)[0]
    assert "render of street" in row and f'href="/runs/{run_id}"' in row and "waiting: job birds" in row


def test_render_again_posts_a_render_request_for_the_job(site: Any) -> None:
    client, q, renders = site
    run_id = _render_run(q)
    _write(renders, "street")
    page = client.get(f"/runs/{run_id}").text
    assert 'action="/jobs/birds/render"' in page and 'id="render-again"' in page
    assert 'action="/jobs/birds/render"' in client.get("/").text  # the job's row too
    assert client.post("/jobs/birds/render", data={"csrf": "wrong"}).status_code == 403
    csrf = _csrf(client)
    r = client.post("/jobs/birds/render", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/?request=")
    again = client.post("/jobs/birds/render", data={"csrf": csrf}, follow_redirects=False)
    assert again.headers["location"] == r.headers["location"]  # still waiting: the same request
    assert [(x.action, x.job) for x in q.pending_requests()] == [("render", "birds")]
    (req,) = q.pending_requests()
    q.mark_handled(req.id, "queued 20261204-130000-beef")
    assert "queued 20261204-130000-beef" in client.get(r.headers["location"]).text
    assert client.post("/jobs/nope/render", data={"csrf": csrf}).status_code == 404
    # pressed on the render's page: back to that page, with the daemon's answer there
    back = client.post("/jobs/birds/render", data={"csrf": csrf, "run": run_id}, follow_redirects=False)
    assert back.headers["location"].startswith(f"/runs/{run_id}?request=")
    assert "id=\"notice\"" in client.get(back.headers["location"]).text
    for other in ("../x", "20990101-000000-0000", "https://evil.example/"):  # never a page elsewhere
        away = client.post("/jobs/birds/render", data={"csrf": csrf, "run": other}, follow_redirects=False)
        assert away.headers["location"].startswith("/?request="), other


def test_a_job_without_render_runs_has_no_render_button(site: Any) -> None:
    client, *_ = site
    assert "/jobs/birds/render" not in client.get("/").text
