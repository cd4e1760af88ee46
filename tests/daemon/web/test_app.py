"""The web page's API and pages with Starlette's TestClient: every endpoint, the artefact
rules (traversal, encoded tricks, absolute paths, symlinks: 404), the CSRF token and the
action token off loopback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from starlette.testclient import TestClient

from selvad.config.daemon import parse_config
from selvad.runs.queue import RunQueue
from selvad.web.app import create_app
from selvad.web.security import CSP


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
    return TestClient(create_app(cfg)), q, run_id, tmp_path


def _csrf(client: TestClient, url: str = "/") -> str:
    html = client.get(url).text
    return html.split('<meta name="csrf" content="', 1)[1].split('"', 1)[0]


def test_status_api_is_selvad_status_json(site: Any) -> None:
    client, q, run_id, _ = site
    data = client.get("/api/status").json()
    assert data["counts"]["queued"] == 1 and data["queued"][0]["id"] == run_id
    assert set(data) == {"config", "counts", "current", "queued", "recent"}
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
    "/runs/{id}/files/worker.log", "/runs/..%2F..%2Fsecret.txt/files/meta.json",
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
    assert "request sent" in client.get(r.headers["location"]).text


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
    assert client.get("/", headers={"host": "evil.example:8765"}).status_code == 400


def test_actions_off_loopback_need_the_token(tmp_path: Path) -> None:
    cfg, q, run_id = _tree(tmp_path, listen="0.0.0.0:8765", token="t" * 20)
    client = TestClient(create_app(cfg))
    csrf = _csrf(client, f"/runs/{run_id}")
    assert client.post(f"/runs/{run_id}/cancel", data={"csrf": csrf}).status_code == 403
    assert client.get("/?token=wrong").status_code == 403
    login = client.get("/?token=" + "t" * 20, follow_redirects=False)
    assert login.status_code == 303 and "httponly" in login.headers["set-cookie"].lower()
    client.cookies.set("selvad_token", "t" * 20)
    assert client.post(f"/runs/{run_id}/cancel", data={"csrf": csrf},
                       follow_redirects=False).status_code == 303
    assert [r.action for r in q.pending_requests()] == ["cancel"]
