"""The web page's API and pages with Starlette's TestClient: every endpoint, the artefact
rules (traversal, encoded tricks, absolute paths, symlinks: 404), the CSRF token and the
action token off loopback."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from starlette.testclient import TestClient

from selvad.config.daemon import parse_config
from selvad.runs.queue import RunQueue
from selvad.runs.rundir import run_dir_for
from selvad.runs.sweeps import update_sweep_summary
from selvad.runs.watched import WatchedTable
from selvad.web.access import ensure_token
from selvad.web.app import create_app
from selvad.web.security import CSP

BASE = "http://127.0.0.1:8765"


def client_for(cfg: Any, **kw: Any) -> TestClient:
    """A client of the page for `cfg` that logged in with the token link."""
    client = TestClient(create_app(cfg), base_url=kw.pop("base_url", BASE), **kw)
    assert client.get("/?token=" + ensure_token(cfg), follow_redirects=False).status_code == 303
    return client


def _tree(tmp_path: Path, **web: Any) -> tuple[Any, RunQueue, str]:
    cfg = parse_config({"paths": {"dataset_roots": ["data"], "jobs_dir": "jobs",
                                  "output_root": "out", "state_dir": "state"}, "web": web},
                       tmp_path / "selvad.toml")
    data = tmp_path / "data" / "birds"
    data.mkdir(parents=True)
    sf.write(data / "clip0.wav", np.zeros(1600, dtype=np.float32) + 0.1, 16000)
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "birds.toml").write_text('dataset = "birds"\n')
    q = RunQueue(cfg.paths.queue_path)
    manifest = {"files": [{"name": "clip0.wav", "size": 1, "mtime_ns": 1, "sha256": "ab"}]}
    run = q.enqueue("birds", str(data), {"data_dir": str(data), "steps": 20}, manifest)
    assert run is not None
    out = cfg.paths.output_root / "birds" / run.id
    out.mkdir(parents=True)
    sf.write(out / "sample_reference.wav", np.zeros(1600, dtype=np.float32) + 0.1, 16000)
    for step in (10, 20):
        sf.write(out / f"sample_step{step:05d}.wav", np.zeros(1600, dtype=np.float32), 16000)
        (out / f"adapter_step{step:05d}.pt").write_bytes(b"weights")
    (out / "loss_raw.png").write_bytes(b"\x89PNG")
    (out / "meta.json").write_text(json.dumps({
        "sample_clip": "clip0", "metrics": {"10": {"log_spectral_distance_db": 3.5}},
        "recommendation": {"id": "adapter_step00010.pt", "reason": "lowest held-out loss",
                           "strength_range": [0.6, 0.9]}}))
    (out / "progress.jsonl").write_text(json.dumps({"event": "checkpoint", "step": 10,
                                                    "val_loss": 0.25}) + "\n")
    (tmp_path / "secret.txt").write_text("secret")
    (out / "sample_step00030.wav").symlink_to(tmp_path / "secret.txt")
    return cfg, q, run.id


@pytest.fixture
def site(tmp_path: Path) -> tuple[TestClient, RunQueue, str, Path]:
    cfg, q, run_id = _tree(tmp_path)
    return client_for(cfg), q, run_id, tmp_path


def _csrf(client: TestClient, url: str = "/") -> str:
    html = client.get(url).text
    return html.split('<meta name="csrf" content="', 1)[1].split('"', 1)[0]


def test_status_api_is_selvad_status_json(site: Any) -> None:
    client, q, run_id, _ = site
    data = client.get("/api/status").json()
    assert data["counts"]["queued"] == 1 and data["queued"][0]["id"] == run_id
    assert set(data) == {"config", "counts", "current", "queued", "recent", "problems"}
    assert "manifest" not in data["queued"][0]


def test_run_api_lists_checkpoints_and_files(site: Any) -> None:
    client, _, run_id, _ = site
    data = client.get(f"/api/runs/{run_id}").json()
    assert data["files"]["adapter_step00010.pt"] == "adapter"
    assert "sample_step00030.wav" not in data["files"]  # a symlink is never an artefact
    steps = [(c["step"], c["val_loss"], c["recommended"]) for c in data["checkpoints"]]
    assert steps == [(10, 0.25, True), (20, None, False)]
    assert client.get("/api/runs/20990101-000000-ffff").status_code == 404


def test_pages_render_with_strict_csp(site: Any) -> None:
    client, _, run_id, _ = site
    home = client.get("/")
    assert home.status_code == 200 and run_id in home.text and "birds" in home.text
    assert home.headers["content-security-policy"] == CSP
    page = client.get(f"/runs/{run_id}")
    assert page.status_code == 200
    assert page.text.count("<audio") == 4  # reference, two checkpoints, the A/B player
    assert "Recommended: adapter_step00010.pt" in page.text and "0.6–0.9" in page.text
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")


def test_artefacts_are_served(site: Any) -> None:
    client, _, run_id, root = site
    wav = client.get(f"/runs/{run_id}/files/sample_step00010.wav")
    assert wav.status_code == 200 and wav.headers["content-type"] == "audio/wav"
    part = client.get(f"/runs/{run_id}/files/sample_step00010.wav", headers={"range": "bytes=0-9"})
    assert part.status_code == 206 and len(part.content) == 10  # seekable for A/B switching
    pt = client.get(f"/runs/{run_id}/files/adapter_step00010.pt")
    assert pt.content == b"weights" and "attachment" in pt.headers["content-disposition"]
    ref = client.get(f"/runs/{run_id}/reference")
    assert ref.status_code == 200 and ref.content[:4] == b"RIFF"
    # the reference comes from the run directory, never from the dataset (outside output_root)
    run_dir = next((root / "out" / "birds").iterdir())
    (run_dir / "sample_reference.wav").unlink()
    assert client.get(f"/runs/{run_id}/reference").status_code == 404


@pytest.mark.parametrize("path", [
    "/runs/{id}/files/..%2F..%2Fsecret.txt", "/runs/{id}/files/../../secret.txt",
    "/runs/{id}/files/%2e%2e%2fsecret.txt", "/runs/{id}/files/sample_step00030.wav",
    "/runs/{id}/files/%2Fetc%2Fpasswd", "/runs/{id}/files//etc/passwd",
    "/runs/{id}/files/run.toml", "/runs/..%2F..%2Fsecret.txt/files/meta.json",
    "/runs/{id}/files/meta.json%00.wav", "/runs/{id}/files/%252e%252e%252fsecret.txt",
    "/static/..%2Fapp.py", "/static/app.py", "/runs/nope/reference",
])
def test_path_tricks_give_404(site: Any, path: str) -> None:
    client, _, run_id, _ = site
    r = client.get(path.format(id=run_id))
    assert r.status_code == 404, (path, r.status_code)
    assert b"secret" not in r.content


def test_cancel_needs_csrf_and_writes_a_request(site: Any) -> None:
    client, q, run_id, _ = site
    assert client.post(f"/runs/{run_id}/cancel", data={"csrf": "wrong"}).status_code == 403
    assert q.pending_requests() == []
    r = client.post(f"/runs/{run_id}/cancel", data={"csrf": _csrf(client)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith(f"/runs/{run_id}?request=")
    (req,) = q.pending_requests()
    assert (req.action, req.run_id) == ("cancel", run_id)
    page = client.get(r.headers["location"]).text  # app.js then polls the answer
    assert 'data-waiting="1"' in page and "waiting for the daemon" in page


def test_retry_and_enqueue(site: Any) -> None:
    client, q, run_id, _ = site
    csrf = _csrf(client)
    assert client.post(f"/runs/{run_id}/retry", data={"csrf": csrf},
                       follow_redirects=False).status_code == 303
    assert client.post("/jobs/birds/enqueue", data={"csrf": csrf},
                       follow_redirects=False).status_code == 303
    assert [(r.action, r.job) for r in q.pending_requests()] == [("retry", None), ("enqueue", "birds")]
    for bad in ("/jobs/nope/enqueue", "/jobs/..%2Fbirds/enqueue", "/jobs/birds/delete",
                f"/runs/{run_id}/delete"):
        assert client.post(bad, data={"csrf": csrf}).status_code == 404, bad
    assert len(q.pending_requests()) == 2


def test_foreign_host_is_refused_on_loopback(site: Any) -> None:
    client, *_ = site
    for host in ("evil.example:8765", "testserver", "127.0.0.1.evil.example"):
        assert client.get("/", headers={"host": host}).status_code == 400, host


def test_dashboard_shows_datasets_and_invalid_job_files(site: Any) -> None:
    client, q, _, root = site
    watched = WatchedTable(q)
    watched.record("dataset", str(root / "data" / "birds"), "data/birds", fingerprint="f" * 64)
    watched.record("dataset", str(root / "data" / "cats"), "data/cats", fingerprint="",
                   problem="clip3.wav: not a sound file (RIFF header missing)")
    watched.record("job", "broken", str(root / "jobs" / "broken.toml"),
                   problem="broken.toml:train.steps: must be a positive integer (got -1)")
    home = client.get("/").text
    datasets = home.split('id="datasets"', 1)[1].split("</table>", 1)[0]
    assert datasets.count("<details>") == 2 and "state done\">valid" in datasets
    assert "state failed\">invalid" in datasets and "clip3.wav: not a sound file" in datasets
    bad = home.split('id="bad-jobs"', 1)[1].split("</ul>", 1)[0]
    assert "<details>" in bad and "train.steps: must be a positive integer" in bad
    problems = client.get("/api/status").json()["problems"]  # as `selvad status --json`
    assert [(p["kind"], p["name"]) for p in problems] == [
        ("job", "broken"), ("dataset", str(root / "data" / "cats"))]


def test_dashboard_shows_every_active_run_with_its_device(site: Any) -> None:
    """Two slots training at once: one live section each (app.js refreshes each by its id)."""
    client, q, first, root = site
    data = root / "data" / "birds"
    second = q.enqueue("birds", str(data), {"data_dir": str(data), "steps": 30},
                       {"files": [{"name": "clip0.wav", "size": 2, "mtime_ns": 2, "sha256": "cd"}]})
    assert second is not None
    for run_id, device in ((first, "cpu#0"), (second.id, "cpu#1")):
        assert q.claim(run_id, device=device) is not None
        q.set_state(run_id, "training")
    home = client.get("/").text
    live = home.split('<div id="live"', 1)[1].split("</div>", 1)[0]
    assert f'data-runs="{first} {second.id}"' in live or f'data-runs="{second.id} {first}"' in live
    for run_id, device in ((first, "cpu#0"), (second.id, "cpu#1")):
        section = live.split(f'<section class="current" data-run="{run_id}">', 1)[1].split("</section>", 1)[0]
        assert f'<b class="device">{device}</b>' in section and 'data-field="step"' in section
        assert f'action="/runs/{run_id}/cancel"' in section
    assert home.count('id="') == len(set(x.split('"', 1)[0] for x in home.split('id="')[1:]))  # ids unique


def _sweep(tmp_path: Path) -> tuple[Any, RunQueue, list[str]]:
    """The tree plus a finished two-run sweep of job "birds" with its real summary."""
    cfg, q, _ = _tree(tmp_path)
    data = tmp_path / "data" / "birds"
    manifest = {"files": [{"name": "clip0.wav", "size": 1, "mtime_ns": 1, "sha256": "ab"}]}
    ids = []
    for n, lr in enumerate((1e-4, 3e-4)):
        run = q.enqueue("birds", str(data), {"data_dir": str(data), "steps": 20, "lr": lr},
                        manifest, sweep_id=f"lr{n}")
        assert run is not None
        out = run_dir_for(cfg, run)
        out.mkdir(parents=True)
        q.set_state(run.id, "extracting")
        q.set_state(run.id, "training", output_dir=str(out))
        lines = [{"step": s, "loss": 1.0 / s + n} for s in (5, 10, 15, 20)]
        lines += [{"event": "checkpoint", "step": s, "val_loss": 0.3 + n, "metrics": {},
                   "path": str(out / f"adapter_step{s:05d}.pt")} for s in (10, 20)]
        (out / "progress.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        for s in (10, 20):
            sf.write(out / f"sample_step{s:05d}.wav", np.zeros(1600, dtype=np.float32), 16000)
            (out / f"adapter_step{s:05d}.pt").write_bytes(b"weights")
        (out / "meta.json").write_text(json.dumps({"recommendation": {
            "id": "adapter_step00020.pt", "reason": f"run {n}: lowest held-out loss",
            "strength_range": [0.5, 0.8]}}))
        q.set_state(run.id, "done")
        update_sweep_summary(cfg, q, q.get(run.id))
        ids.append(run.id)
    return cfg, q, ids


def test_sweep_page_shows_runs_side_by_side(tmp_path: Path) -> None:
    cfg, q, ids = _sweep(tmp_path)
    client = client_for(cfg)
    assert 'href="/sweeps/birds"' in client.get("/").text
    assert 'href="/sweeps/birds"' in client.get(f"/runs/{ids[0]}").text
    page = client.get("/sweeps/birds")
    assert page.status_code == 200 and page.headers["content-security-policy"] == CSP
    table = page.text.split('id="sweep"', 1)[1].split("</table>", 1)[0]
    assert table.count('class="sweep-run"') == 2 and "<th>lr</th>" in table
    for run_id in ids:  # each run's recommended checkpoint's sample, and a link to the run
        assert f'href="/runs/{run_id}"' in table
        assert f'src="/runs/{run_id}/files/sample_step00020.wav"' in table
    assert "run 1: lowest held-out loss" in table and "<th>steps</th>" not in table
    updated = page.text.split("Summary updated ", 1)[1].split(".", 1)[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", updated), updated  # local time, not raw ISO
    assert 'src="/sweeps/birds/files/loss_comparison.png"' in page.text
    best = page.text.split('id="sweep-recommendation"', 1)[1].split("</section>", 1)[0]
    assert "run lr0 at step 10" in best  # the summary's "lr0@10", lowest held-out loss
    assert f'src="/runs/{ids[0]}/files/sample_step00010.wav"' in best
    png = client.get("/sweeps/birds/files/loss_comparison.png")
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    summary = client.get("/sweeps/birds/files/sweep_summary.json").json()
    assert [e["run_id"] for e in summary["experiments"]] == ids
    api = client.get("/api/sweeps/birds").json()
    assert [(r["sweep_id"], r["sample"], r["config"]) for r in api["runs"]] == [
        ("lr0", "sample_step00020.wav", {"lr": 1e-4}), ("lr1", "sample_step00020.wav", {"lr": 3e-4})]
    assert client.get(f"/runs/{ids[0]}/files/sample_step00020.wav").status_code == 200


@pytest.mark.parametrize("path", [
    "/sweeps/nope", "/api/sweeps/nope", "/sweeps/..%2Fbirds", "/sweeps/birds/files/secret.txt",
    "/sweeps/birds/files/..%2F..%2F..%2Fsecret.txt", "/sweeps/birds/files/../../secret.txt",
    "/sweeps/birds/files/%2e%2e%2fsecret.txt", "/sweeps/birds/files/%252e%252e%252fsecret.txt",
    "/sweeps/birds/files/%2Fetc%2Fpasswd", "/sweeps/birds/files/sweep_summary.json%00.png",
    "/sweeps/..%2F..%2Fsecret.txt/files/sweep_summary.json", "/sweeps/nope/files/sweep_summary.json",
    "/sweeps/birds/files/linked.png", "/sweeps/birds/files/loss_raw.png",
])
def test_sweep_path_tricks_give_404(tmp_path: Path, path: str) -> None:
    cfg, _, _ = _sweep(tmp_path)
    (tmp_path / "out" / "birds" / "sweep" / "linked.png").symlink_to(tmp_path / "secret.txt")
    r = client_for(cfg).get(path)
    assert r.status_code == 404, (path, r.status_code)
    assert b"secret" not in r.content


def test_sweep_files_behind_a_symlinked_directory_give_404(tmp_path: Path) -> None:
    cfg, _, _ = _sweep(tmp_path)
    sweep = tmp_path / "out" / "birds" / "sweep"
    sweep.rename(tmp_path / "elsewhere")
    sweep.symlink_to(tmp_path / "elsewhere")
    client = client_for(cfg)
    assert client.get("/sweeps/birds/files/sweep_summary.json").status_code == 404
    page = client.get("/sweeps/birds")  # the job still has a sweep: its runs from the queue
    assert page.status_code == 200 and page.text.count('class="sweep-run"') == 2


def test_the_live_progress_says_what_is_left_at_100_percent(site: Any, monkeypatch) -> None:
    """At the last step the checkpoint and its sample still take minutes: the page says so
    instead of "about 0s left"."""
    import selvad.web.app as web_app

    monkeypatch.setattr(web_app, "STATUS_INTERVAL", 0.0)  # no shared answer between the views
    client, q, run_id, _ = site
    q.claim(run_id)
    q.set_state(run_id, "training")
    q.update_progress(run_id, step=10, total_steps=20, loss=0.5, samples_per_s=3.0, eta_s=65.0)
    live = client.get("/").text.split('class="current"', 1)[1].split("</section>", 1)[0]
    assert "about 1m05s left" in live and "train loss (smoothed) <b" in live
    q.update_progress(run_id, step=20, eta_s=0.0)
    live = client.get("/").text.split('class="current"', 1)[1].split("</section>", 1)[0]
    assert "last checkpoint and sample next" in live and "0s left" not in live
