"""A queued render waits, with its note in the queue, while its job has no finished training
run; the note goes once one is done (selvad.service.renders.RenderHandler.ready)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from selvad.config.daemon import parse_config
from selvad.runs.queue import RunQueue
from selvad.service.renders import WAITING_FOR_ADAPTER, RenderHandler


def test_a_render_waits_with_a_note_until_its_job_has_trained(tmp_path: Path) -> None:
    cfg = parse_config({"paths": {"dataset_roots": ["data"], "jobs_dir": "jobs", "output_root": "out",
                                  "state_dir": "state"}}, tmp_path / "selvad.toml")
    q = RunQueue(cfg.paths.queue_path)
    handler = RenderHandler(SimpleNamespace(cfg=cfg, queue=q, log=None))
    files = {"files": [{"name": "street.mp4", "size": 1, "sha256": "ab"}]}
    render = q.enqueue("birds", "birds", {"name": "street", "folder": str(tmp_path), "render": {}},
                       files, kind="render")
    assert render is not None
    assert handler.ready(render) is False
    waiting = q.get(render.id)
    assert waiting is not None and waiting.error == WAITING_FOR_ADAPTER.format(job="birds")
    train = q.enqueue("birds", "birds", {"steps": 1}, files)
    assert train is not None
    q.set_state(train.id, "extracting")
    q.set_state(train.id, "training")
    q.set_state(train.id, "done")
    run_dir = cfg.paths.output_root / "birds" / train.id
    run_dir.mkdir(parents=True)
    (run_dir / "adapter_final.pt").write_bytes(b"weights")
    assert handler.ready(waiting) is True
    started = q.get(render.id)
    assert started is not None and started.error is None


def test_videos_sharing_a_stem_render_to_names_of_their_own(tmp_path: Path) -> None:
    from selvad.runs.render import folder_videos, output_names

    for name in ("street.mp4", "street.mov", "door.mkv", ".hidden.mp4", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    names = {v.name: n for v, n in output_names(folder_videos(tmp_path)).items()}
    assert names == {"door.mkv": "door", "street.mov": "street", "street.mp4": "street_2"}
