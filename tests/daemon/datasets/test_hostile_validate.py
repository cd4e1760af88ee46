"""Validation of hostile datasets: every bad file is one finding of its own, memory stays
bounded, nothing outside the dataset or non-regular is opened, floods are summarised."""

from __future__ import annotations

import builtins
import json
import os
import shutil
import tracemalloc
from pathlib import Path

import pytest

from selvad.datasets import validate as V
from selvad.datasets.manifest import dataset_manifest, manifest_hash
from selvad.service.events import report_fields
from tests.hostile_data import (
    deadline,
    run_unprivileged,
    world_readable_dir,
    write_npz_bomb,
    write_npz_header_bomb,
)

from .test_validate import VARIANT, codes, dataset, npz, wav

MiB = 1 << 20


def test_compressed_bomb_is_flagged_with_bounded_memory(tmp_path):
    d = dataset(tmp_path, n=3)
    write_npz_header_bomb(d / "bomb.npz", (1, 1 << 22, 1024))  # declares 16 GiB
    write_npz_bomb(d / "long.npz", (1, 65536, 1024))  # 256 MiB of rows, ~250 KB here
    wav(d / "bomb.wav")
    wav(d / "long.wav")
    tracemalloc.start()
    r = V.validate_dataset(d, VARIANT)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert ("error", "bomb.npz", "array-too-large") in codes(r)
    f = next(f for f in r.findings if f.file == "bomb.npz")
    assert "clip_features" in f.message and "(1, 4194304, 1024)" in f.message
    assert "2.0 GiB" in f.message and f.fix
    assert [c.stem for c in r.clips] == ["c0", "c1", "c2", "long"]  # trimmed to 8 s
    assert peak < 64 * MiB, f"validation allocated {peak / MiB:.0f} MiB"


def test_fifos_are_per_file_errors_and_never_opened(tmp_path):
    d = dataset(tmp_path, n=2)
    os.mkfifo(d / "pipe.npz")
    wav(d / "pipe.wav")
    npz(d / "talk.npz")
    os.mkfifo(d / "talk.wav")
    os.mkfifo(d / "prompts.txt")
    with deadline(20):
        r = V.validate_dataset(d, VARIANT)
        m = dataset_manifest(d)
    got = codes(r)
    for name in ("pipe.npz", "talk.wav", "prompts.txt"):
        assert ("error", name, "not-a-file") in got, r.format_human()
    assert [c.stem for c in r.clips] == ["c0", "c1"]
    assert ("error", "", "unreadable-directory") not in got
    refused = {f["name"]: f for f in m["files"] if f.get("problem")}
    assert sorted(refused) == ["pipe.npz", "prompts.txt", "talk.wav"]
    assert all(f["sha256"] == "" and "FIFO" in f["problem"] for f in refused.values())


def test_links_out_of_the_dataset_are_flagged_not_opened_not_hashed(tmp_path, monkeypatch):
    d = dataset(tmp_path, n=2)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    npz(outside / "secret.npz")
    wav(outside / "secret.wav")
    (d / "x.npz").symlink_to(outside / "secret.npz")
    (d / "x.wav").symlink_to(outside / "secret.wav")
    npz(d / "p.npz")
    (d / "p.wav").symlink_to("/etc/passwd")
    opened: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def spy_open(file, *a, **k):
        opened.append(os.path.realpath(file) if isinstance(file, (str, Path)) else repr(file))
        return real_open(file, *a, **k)

    def spy_os_open(path, *a, **k):
        opened.append(os.path.realpath(path))
        return real_os_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    r = V.validate_dataset(d, VARIANT)
    m = dataset_manifest(d)
    monkeypatch.undo()
    got = codes(r)
    for name in ("x.npz", "x.wav", "p.wav"):
        assert ("error", name, "outside-dataset") in got, r.format_human()
    f = next(f for f in r.findings if f.file == "x.npz")
    assert str(outside / "secret.npz") in f.message and f.fix
    assert [c.stem for c in r.clips] == ["c0", "c1"]
    leaked = [p for p in opened if p.startswith(str(outside)) or p == "/etc/passwd"]
    assert leaked == []
    by_name = {f["name"]: f for f in m["files"]}
    assert by_name["x.npz"]["sha256"] == "" and "outside" in by_name["x.npz"]["problem"]
    assert by_name["c0.npz"]["sha256"] and "problem" not in by_name["c0.npz"]


def test_manifest_hash_changes_when_a_refused_file_goes_away(tmp_path):
    d = dataset(tmp_path, n=1)
    before = manifest_hash(dataset_manifest(d))
    (d / "x.wav").symlink_to("/etc/passwd")
    with_link = manifest_hash(dataset_manifest(d))
    (d / "x.wav").unlink()
    assert with_link != before and manifest_hash(dataset_manifest(d)) == before


def _hostile_dataset_as_seen_by_nobody(d: str) -> dict:
    m = dataset_manifest(d)
    r = V.validate_dataset(d, VARIANT)
    return {"manifest": m, "errors": [f.to_dict() for f in r.errors],
            "clips": [c.stem for c in r.clips]}


@pytest.fixture
def shared_tmp() -> Path:
    path = world_readable_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_one_unreadable_file_is_one_more_per_file_error(shared_tmp):
    """An unreadable clip used to make the manifest raise, so the daemon logged only
    `dataset.unreadable` for it; every other problem stayed hidden. Root reads any file
    whatever its mode, so the check runs as `nobody` in a forked child."""
    d = dataset(shared_tmp, n=4)
    d.chmod(0o755)
    (d / "c1.npz").chmod(0o000)  # unreadable
    (d / "c2.wav").unlink()  # missing audio
    (d / "c3.wav").write_text("not audio")  # bad audio
    wav(d / "c0.flac", fmt="FLAC")  # several audio files
    out = run_unprivileged(_hostile_dataset_as_seen_by_nobody, str(d))
    errors = {(e["file"], e["code"]) for e in out["errors"]}
    assert ("c1.npz", "unreadable-file") in errors, out["errors"]
    assert {("c2.npz", "missing-audio"), ("c3.wav", "bad-audio"), ("c0", "several-audio")} <= errors
    f = next(e for e in out["errors"] if e["file"] == "c1.npz")
    assert "permission" in f["message"].lower() and "chmod" in f["fix"]
    listed = {f["name"]: f for f in out["manifest"]["files"]}
    assert listed["c1.npz"]["sha256"] == "" and "permission" in listed["c1.npz"]["problem"].lower()
    assert listed["c0.npz"]["sha256"]


def test_prompts_flood_is_summarised(tmp_path):
    d = dataset(tmp_path, n=2)
    lines = [f"ghost{i}.npz: a dog" for i in range(100_000)]
    (d / "prompts.txt").write_text("\n".join(lines) + "\n")
    r = V.validate_dataset(d, VARIANT)
    assert r.ok and r.warning_count == 100_000 and len(r.clips) == 2
    shown = [f for f in r.warnings if f.code == "prompts-unknown-file"]
    assert len(shown) == 6 and "ghost4.npz" in shown[4].message
    assert shown[5].message == "… and 99,995 more like this" and shown[5].file == "prompts.txt"
    data = r.to_dict()
    assert data["warning_count"] == 100_000 and len(data["warnings"]) == 6
    assert len(r.to_toml()) < 8_000 and len(r.format_human()) < 8_000
    assert len(json.dumps(report_fields(r))) < 8_000
    assert report_fields(r)["warning_count"] == 100_000


def test_repeated_errors_are_summarised_too(tmp_path):
    d = dataset(tmp_path, n=1)
    (d / "prompts.txt").write_text("".join(f"c0 line {i}\n" for i in range(500)))
    r = V.validate_dataset(d, VARIANT)
    assert r.error_count == 500 and not r.ok
    shown = [f for f in r.errors if f.code == "prompts"]
    assert len(shown) == 21 and shown[-1].message == "… and 480 more like this"
    assert r.to_dict()["error_count"] == 500 and "FAILED: 500 error(s)" in r.format_human()


@pytest.mark.parametrize("name", ["../../outside/secret.npz", "sub/c0.npz", "/etc/c0.npz",
                                  "sub\\c0.npz", "c0\x00.npz"])
def test_prompt_names_that_are_paths_are_errors(tmp_path, name):
    d = dataset(tmp_path, n=1)
    (tmp_path / "outside").mkdir()
    npz(tmp_path / "outside" / "secret.npz")
    (d / "prompts.txt").write_text(f"{name}: stolen\nc0.npz: a dog\n")
    r = V.validate_dataset(d, VARIANT)
    assert ("error", "prompts.txt", "prompts-bad-name") in codes(r), r.format_human()
    assert [c.prompt for c in r.clips] == ["a dog"]
    f = next(f for f in r.findings if f.code == "prompts-bad-name")
    assert f.message.startswith("line 1: ") and f.fix


def test_help_states_the_error_and_warning_rules(capsys):
    with pytest.raises(SystemExit) as exc:
        V.main(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "audio file without its .npz is a warning" in text
    assert "silent clip is an error" in text
    assert "links out of the dataset" in text and "more like this" in text


def test_validator_docstring_agrees_with_the_rules():
    doc = " ".join((V.__doc__ or "").split())
    assert "audio without `.npz` (ignored" in doc.split("Warnings")[1]
    assert "silent" in doc.split("Warnings")[0]
