"""The conformance runner's video kinds: every shared frame_select / resize / e2e golden passes,
the e2e goldens compare the node's whole file, and a wrong result fails."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from selva_engine.conformance.runner import compare_cosine, main, run_dir, run_golden


def test_sidecars_in_subfolders_are_found(golden_dir, tmp_path):
    nested = tmp_path / "video" / "deeper"
    nested.mkdir(parents=True)
    for f in ("frame_select.json", "frame_select.npz"):
        shutil.copy(golden_dir / "video" / f, nested / f)
    (tmp_path / "video" / "tokenizer.json").write_text('["not a sidecar"]')
    results = run_dir(tmp_path)
    assert [(r.name, r.ok) for r in results] == [("frame_select", True)]


def test_cosine_rule():
    a = np.ones((2, 4), np.float32)
    assert compare_cosine("x", a * 3, a, 0.999).ok
    b = a.copy()
    b[1] = [1, -1, 1, -1]
    check = compare_cosine("x", b, a, 0.999)
    assert not check.ok and "min cosine 0.000000" in check.detail


@pytest.mark.slow
def test_every_e2e_golden_passes(golden_dir, capsys):
    assert main([str(golden_dir / "video"), "--only", "video_extractor"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "6 passed, 0 failed"
    assert all(line.startswith("PASS e2e_") for line in lines[:-1])


def test_e2e_compares_the_whole_node_file(golden_dir, tmp_path):
    folder = tmp_path / "video" / "e2e_c"
    shutil.copytree(golden_dir / "video" / "e2e_c", folder)
    for f in golden_dir.glob("video/*_tiny*"):
        if f.is_file():
            shutil.copy(f, tmp_path / "video" / f.name)
    shutil.copytree(golden_dir / "video" / "t5_tokenizer_tiny", tmp_path / "video" / "t5_tokenizer_tiny")
    result = run_golden(folder / "e2e_c.json")
    assert result.ok, result.line()
    names = {c.name for c in result.checks}
    assert {"node.clip_features", "node.sync_features", "node.duration", "node.prompt", "node.variant"} <= names
    assert {"debug.sync_input.crop16", "debug.clip_normalized.channel_sums", "debug.sync_indices"} <= names
    with np.load(folder / "e2e_c_001.npz", allow_pickle=False) as z:
        node = {k: z[k] for k in z.files}
    node["prompt"] = np.array(str(node["prompt"]).strip())  # the node keeps the spaces; a stripped prompt fails
    np.savez(folder / "e2e_c_001.npz", **node)
    bad = run_golden(folder / "e2e_c.json")
    assert not bad.ok and "node.prompt" in bad.line()
