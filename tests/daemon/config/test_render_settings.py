"""A render folder's settings: render.toml (defaults, every key, errors naming file:key) and
prompts.txt (the folder's line and each video's own)."""

from __future__ import annotations

from pathlib import Path

import pytest

from selvad.config.render import (
    RENDER_PRIORITY,
    RenderSettings,
    folder_prompts,
    read_render_settings,
)
from selvad.config.schema import ConfigError


def test_no_render_toml_is_the_defaults(tmp_path: Path) -> None:
    s = read_render_settings(tmp_path)
    assert s == RenderSettings()
    assert (s.run, s.step, s.adapter, s.strength, s.duration, s.prompt) == ("", None, None, None, None, "")
    assert (s.cfg, s.steps, s.seed, s.negative_prompt, s.priority) == (4.5, 25, 0, "", RENDER_PRIORITY)
    assert s.to_dict()["adapter"] is None


def test_every_key_is_read(tmp_path: Path) -> None:
    (tmp_path / "render.toml").write_text(
        'strength = 0.8\ncfg = 3\nsteps = 10\nseed = 7\nnegative_prompt = "music"\nduration = 4.5\n'
        'priority = 5\nprompt = "rain on a tin roof"\nadapter = "mine.pt"\n')
    s = read_render_settings(tmp_path)
    assert s == RenderSettings(adapter=tmp_path / "mine.pt", strength=0.8, cfg=3.0, steps=10, seed=7,
                               negative_prompt="music", duration=4.5, priority=5, prompt="rain on a tin roof")
    assert s.to_dict()["adapter"] == str(tmp_path / "mine.pt")  # relative to the render folder
    (tmp_path / "render.toml").write_text('run = "20261204-101500-ab12"\nstep = 500\nduration = "auto"\n')
    s = read_render_settings(tmp_path)
    assert (s.run, s.step, s.adapter, s.duration) == ("20261204-101500-ab12", 500, None, None)


@pytest.mark.parametrize("text,key,words", [
    ('steps = "ten"', "steps", "wrong type (got 'ten', expected an integer)"),
    ("strength = true", "strength", "wrong type"),
    ("prompt = 3", "prompt", "wrong type (got 3, expected a string)"),
    ("adapter = 1", "adapter", "wrong type"),
    ("strenght = 0.5", "strenght", "unknown key (did you mean 'strength'?)"),
    ("strength = 2.5", "strength", "out of range (got 2.5"),
    ("cfg = 0.5", "cfg", "out of range"),
    ("steps = 0", "steps", "out of range"),
    ("step = 0", "step", "out of range"),
    ("duration = 31.0", "duration", "out of range"),
    ('run = "../other"', "run", "not a run id"),
    ('adapter = "a.pt"\nstep = 5', "adapter", "names a file and a run/step at once"),
])
def test_a_bad_value_names_the_file_and_the_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    (tmp_path / "render.toml").write_text(text + "\n")
    with pytest.raises(ConfigError) as err:
        read_render_settings(tmp_path)
    (problem,) = err.value.problems
    assert problem.startswith(f"{tmp_path / 'render.toml'}:{key}: ") and words in problem


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    (tmp_path / "render.toml").write_text('steps = "x"\nseed = 1.5\nbogus = 1\n')
    with pytest.raises(ConfigError) as err:
        read_render_settings(tmp_path)
    keys = sorted(p.removeprefix(f"{tmp_path / 'render.toml'}:").split(":")[0] for p in err.value.problems)
    assert keys == ["bogus", "seed", "steps"]


def test_a_broken_render_toml_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "render.toml").write_text("steps = = 3\n")
    with pytest.raises(ConfigError, match="render.toml"):
        read_render_settings(tmp_path)


def test_folder_prompts_default_and_per_video_lines(tmp_path: Path) -> None:
    assert folder_prompts(tmp_path) == ("", {})
    for name in ("door.mp4", "rain.mov"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "prompts.txt").write_text(
        "\n  door.mp4: a door slams  \nfootsteps on gravel\nrain.mov:heavy rain\nsecond default line\n"
        "gone.mp4: a file that is not here\n")
    default, own = folder_prompts(tmp_path)
    assert default == "footsteps on gravel"  # the first line that names no video of the folder
    assert own == {"door.mp4": "a door slams", "rain.mov": "heavy rain"}


def test_a_prompt_with_a_colon_is_the_folder_prompt(tmp_path: Path) -> None:
    (tmp_path / "prompts.txt").write_text("ambience: wind and birds\n")
    assert folder_prompts(tmp_path) == ("ambience: wind and birds", {})


def test_a_video_line_without_a_prompt_is_no_folder_prompt(tmp_path: Path) -> None:
    (tmp_path / "door.mp4").write_bytes(b"x")
    (tmp_path / "prompts.txt").write_text("door.mp4:\nwind\n")
    assert folder_prompts(tmp_path) == ("wind", {})
