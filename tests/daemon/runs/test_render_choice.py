"""Which adapter a render run uses: the job's recommendation (meta.json, or the sweep summary's),
adapter_final.pt when the recommended checkpoint is gone, render.toml's run/step or adapter file
(inside the render folder or the output root, never a link); None while no run is done."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from selva_engine.inference.render_job import RenderSpec
from selvad.config.daemon import DaemonConfig
from selvad.config.render import read_render_settings
from selvad.runs.queue import Run, RunQueue
from selvad.runs.render import RenderProblem, choose_adapter, render_spec, renders_dir


@pytest.fixture
def q(tmp_path: Path) -> Iterator[RunQueue]:
    queue = RunQueue(tmp_path / "state" / "queue.sqlite3")
    yield queue
    queue.close()


@pytest.fixture
def folder(daemon_cfg: DaemonConfig) -> Path:
    path = daemon_cfg.paths.output_root.parent / "renders" / "j"
    path.mkdir(parents=True)
    return path


def trained(cfg: DaemonConfig, q: RunQueue, files: tuple[str, ...] = ("adapter_final.pt",),
            meta: dict | None = None, state: str = "done", n: int = 0) -> Run:
    """A training run of job `j` that ended in `state`, its run directory holding `files`
    and meta.json (when `meta`)."""
    run = q.enqueue("j", "birds", {"n": n}, {"files": []})
    assert run is not None and q.claim(run.id) is not None
    q.set_state(run.id, "training")
    run = q.set_state(run.id, state)
    out = cfg.paths.output_root / "j" / run.id
    out.mkdir(parents=True)
    for name in files:
        (out / name).write_bytes(b"adapter")
    if meta is not None:
        (out / "meta.json").write_text(json.dumps(meta))
    return run


def render(q: RunQueue, folder: Path, toml: str = "") -> Run:
    """A queued render run of `folder/clip.mp4` with `folder`'s render.toml (`toml`)."""
    if toml:
        (folder / "render.toml").write_text(toml)
    config = {"video": str(folder / "clip.mp4"), "folder": str(folder), "name": "clip", "variant": "tiny_16k",
              "data_dir": "", "prompt": "a door", "render": read_render_settings(folder).to_dict()}
    run = q.enqueue("j", "birds", config, {"files": []}, kind="render", priority=100)
    assert run is not None
    return run


REC = {"id": "adapter_step00004.pt", "reason": "lowest validation loss", "strength_range": [0.6, 1.0]}


def test_no_finished_training_run_means_waiting(daemon_cfg: DaemonConfig, q: RunQueue, folder: Path) -> None:
    r = render(q, folder)
    assert choose_adapter(daemon_cfg, q, r) is None
    trained(daemon_cfg, q, state="failed")
    trained(daemon_cfg, q, state="cancelled", n=1)
    assert choose_adapter(daemon_cfg, q, r) is None


def test_the_recommended_checkpoint_at_the_middle_strength(daemon_cfg: DaemonConfig, q: RunQueue,
                                                           folder: Path) -> None:
    run = trained(daemon_cfg, q, ("adapter_step00004.pt", "adapter_final.pt"),
                  {"recommendation": REC, "sample_clip": "clip01"})
    r = render(q, folder)
    choice = choose_adapter(daemon_cfg, q, r)
    assert choice is not None
    assert choice.adapter == daemon_cfg.paths.output_root / "j" / run.id / "adapter_step00004.pt"
    assert choice.strength == 0.8
    assert choice.used == {"run": run.id, "chosen_by": "the job's recommendation",
                           "reason": "lowest validation loss", "step": 4}
    spec = render_spec(daemon_cfg, r, choice, "cpu")
    assert spec["adapter"] == str(choice.adapter) and spec["strength"] == 0.8 and spec["prompt"] == "a door"
    assert spec["out_dir"] == str(renders_dir(daemon_cfg, "j")) and spec["used"]["render_run"] == r.id
    assert spec["sample_clip"] == "clip01"  # the run's sample clip names the dataset prompt
    assert RenderSpec.from_dict(json.loads(json.dumps(spec))).adapter == str(choice.adapter)  # the child's spec


def test_the_newest_finished_run_is_used(daemon_cfg: DaemonConfig, q: RunQueue, folder: Path) -> None:
    trained(daemon_cfg, q, meta={"recommendation": REC})
    newer = trained(daemon_cfg, q, n=1)
    choice = choose_adapter(daemon_cfg, q, render(q, folder))
    assert choice is not None and choice.adapter.parent.name == newer.id


def test_a_missing_recommended_checkpoint_falls_back_to_the_final_adapter(
        daemon_cfg: DaemonConfig, q: RunQueue, folder: Path) -> None:
    run = trained(daemon_cfg, q, meta={"recommendation": REC})
    choice = choose_adapter(daemon_cfg, q, render(q, folder))
    assert choice is not None
    assert choice.adapter == daemon_cfg.paths.output_root / "j" / run.id / "adapter_final.pt"
    assert choice.used["chosen_by"].startswith("the final adapter") and choice.used["step"] is None
    assert choice.strength == 0.8  # the range is still the recommendation's


def test_no_recommendation_is_the_final_adapter_at_full_strength(daemon_cfg: DaemonConfig, q: RunQueue,
                                                                 folder: Path) -> None:
    trained(daemon_cfg, q)
    choice = choose_adapter(daemon_cfg, q, render(q, folder))
    assert choice is not None and choice.adapter.name == "adapter_final.pt" and choice.strength == 1.0


def test_a_run_without_any_adapter_is_a_problem(daemon_cfg: DaemonConfig, q: RunQueue, folder: Path) -> None:
    trained(daemon_cfg, q, files=())
    with pytest.raises(RenderProblem, match="has no adapter file"):
        choose_adapter(daemon_cfg, q, render(q, folder))


def test_step_and_strength_in_render_toml(daemon_cfg: DaemonConfig, q: RunQueue, folder: Path) -> None:
    run = trained(daemon_cfg, q, ("adapter_step00002.pt", "adapter_step00004.pt"), {"recommendation": REC})
    choice = choose_adapter(daemon_cfg, q, render(q, folder, "step = 2\nstrength = 0.3\n"))
    assert choice is not None and choice.adapter.name == "adapter_step00002.pt" and choice.strength == 0.3
    assert choice.used["chosen_by"] == "render.toml: step 2" and choice.used["step"] == 2
    assert choice.used["run"] == run.id
    with pytest.raises(RenderProblem, match="no checkpoint at step 3"):
        choose_adapter(daemon_cfg, q, render(q, folder, "step = 3\n"))


def test_run_in_render_toml(daemon_cfg: DaemonConfig, q: RunQueue, folder: Path) -> None:
    older = trained(daemon_cfg, q, ("adapter_step00004.pt",), {"recommendation": REC})
    trained(daemon_cfg, q, n=1)
    choice = choose_adapter(daemon_cfg, q, render(q, folder, f'run = "{older.id}"\n'))
    assert choice is not None and choice.adapter.parent.name == older.id
    assert choice.adapter.name == "adapter_step00004.pt"
    with pytest.raises(RenderProblem, match="names run 20990101-000000-zzzz, which is no finished training"):
        choose_adapter(daemon_cfg, q, render(q, folder, 'run = "20990101-000000-zzzz"\n'))


def test_an_adapter_file_in_the_folder_or_the_output_root(daemon_cfg: DaemonConfig, q: RunQueue,
                                                          folder: Path) -> None:
    (folder / "mine.pt").write_bytes(b"adapter")
    choice = choose_adapter(daemon_cfg, q, render(q, folder, 'adapter = "mine.pt"\nstrength = 0.5\n'))
    assert choice is not None and choice.adapter == folder / "mine.pt" and choice.strength == 0.5
    assert choice.used == {"chosen_by": "render.toml: adapter file", "step": None}  # no run needed
    (daemon_cfg.paths.output_root / "adapter_step00007.pt").write_bytes(b"adapter")
    choice = choose_adapter(daemon_cfg, q, render(
        q, folder, f'adapter = "{daemon_cfg.paths.output_root / "adapter_step00007.pt"}"\n'))
    assert choice is not None and choice.strength == 1.0 and choice.used["step"] == 7


def test_an_adapter_file_outside_the_roots_is_refused(daemon_cfg: DaemonConfig, q: RunQueue, folder: Path,
                                                      tmp_path: Path) -> None:
    (tmp_path / "elsewhere.pt").write_bytes(b"adapter")
    for where in (str(tmp_path / "elsewhere.pt"), "../../elsewhere.pt"):
        with pytest.raises(RenderProblem, match="lies outside the render folder"):
            choose_adapter(daemon_cfg, q, render(q, folder, f'adapter = "{where}"\n'))
    with pytest.raises(RenderProblem, match="is not a regular file"):
        choose_adapter(daemon_cfg, q, render(q, folder, 'adapter = "missing.pt"\n'))


def test_an_adapter_link_is_refused(daemon_cfg: DaemonConfig, q: RunQueue, folder: Path, tmp_path: Path) -> None:
    (folder / "real.pt").write_bytes(b"adapter")
    (folder / "inside.pt").symlink_to(folder / "real.pt")
    (tmp_path / "elsewhere.pt").write_bytes(b"adapter")
    (folder / "outside.pt").symlink_to(tmp_path / "elsewhere.pt")
    with pytest.raises(RenderProblem, match="inside.pt is not a regular file"):
        choose_adapter(daemon_cfg, q, render(q, folder, 'adapter = "inside.pt"\n'))
    with pytest.raises(RenderProblem, match="outside.pt lies outside"):
        choose_adapter(daemon_cfg, q, render(q, folder, 'adapter = "outside.pt"\n'))


def test_the_sweep_summary_picks_the_run_and_step(daemon_cfg: DaemonConfig, q: RunQueue, folder: Path) -> None:
    picked = trained(daemon_cfg, q, ("adapter_step00002.pt", "adapter_final.pt"))
    newer = trained(daemon_cfg, q, ("adapter_step00004.pt",), {"recommendation": REC}, n=1)
    sweep = daemon_cfg.paths.output_root / "j" / "sweep"
    sweep.mkdir()
    summary = {"experiments": [{"id": "lr-low", "run_id": picked.id}, {"id": "lr-high", "run_id": newer.id}],
               "recommendation": {"id": "lr-low@2", "reason": "best of the sweep", "strength_range": [0.4, 0.6]}}
    (sweep / "sweep_summary.json").write_text(json.dumps(summary))
    r = render(q, folder)
    choice = choose_adapter(daemon_cfg, q, r)
    assert choice is not None
    assert choice.adapter == daemon_cfg.paths.output_root / "j" / picked.id / "adapter_step00002.pt"
    assert choice.strength == 0.5 and choice.used["reason"] == "best of the sweep"
    # render.toml's run wins over the sweep's pick
    choice = choose_adapter(daemon_cfg, q, render(q, folder, f'run = "{newer.id}"\n'))
    assert choice is not None and choice.adapter.parent.name == newer.id and choice.strength == 0.8
    # a summary naming a run that is not done is no pick: the newest run's own recommendation
    summary["experiments"][0]["run_id"] = "20990101-000000-zzzz"
    (sweep / "sweep_summary.json").write_text(json.dumps(summary))
    choice = choose_adapter(daemon_cfg, q, r)
    assert choice is not None and choice.adapter.parent.name == newer.id
