"""The node's `.npz` layout: what write_node_npz writes loads under the trainer's reader rules."""

from __future__ import annotations

import numpy as np
import pytest

from selva_engine.data.features import load_features
from selva_engine.model.variants import get_variant
from selva_engine.video.extractor import NodeFeatures, node_file_name, sanitize_name, write_node_npz


def _features(n: int = 24, rows: int = 64, prompt: str = "a dog barking in the distance") -> NodeFeatures:
    rng = np.random.default_rng(0)
    return NodeFeatures(clip_features=rng.standard_normal((1, n, 1024), dtype=np.float32),
                        sync_features=rng.standard_normal((1, rows, 768), dtype=np.float32),
                        duration=3.0030000000000006, prompt=prompt, fps=29.970029970029966)


def test_layout_matches_the_nodes_file(golden_dir, tmp_path):
    with np.load(golden_dir / "video" / "e2e_a" / "e2e_a_001.npz", allow_pickle=False) as z:
        node = {k: z[k] for k in z.files}
    feats = NodeFeatures(node["clip_features"], node["sync_features"], float(node["duration"]),
                         str(node["prompt"]), 29.970029970029966)
    path = write_node_npz(feats, tmp_path, "e2e_a", str(node["variant"]))
    assert path.name == "e2e_a_001.npz"
    with np.load(path, allow_pickle=False) as z:
        ours = {k: z[k] for k in z.files}
    assert list(ours) == list(node)  # same keys, same order
    for key in node:
        assert ours[key].dtype == node[key].dtype and ours[key].shape == node[key].shape, key
        assert np.array_equal(ours[key], node[key]), key
    assert path.read_bytes()[:2] == b"PK"


def test_numbering_and_name_cleaning(tmp_path):
    first = write_node_npz(_features(), tmp_path, "  dog/bark\\01  ", "large_44k")
    second = write_node_npz(_features(), tmp_path, "dog/bark\\01", "large_44k")
    assert (first.name, second.name) == ("dog_bark_01_001.npz", "dog_bark_01_002.npz")
    assert node_file_name(tmp_path, "dog_bark_01").name == "dog_bark_01_003.npz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dog_bark_01_001.npz", "dog_bark_01_002.npz"]
    assert sanitize_name("a\x00b") == "a_b"
    with pytest.raises(ValueError, match="empty"):
        sanitize_name("   ")


def test_written_file_trains_with_our_loader_and_the_goldens_rules(tmp_path):
    path = write_node_npz(_features(prompt="  rain on a tin roof "), tmp_path, "rain", "large_44k")
    clip = load_features(path, get_variant("large_44k"), root=tmp_path)
    assert clip.npz_prompt == "  rain on a tin roof " and clip.variant == "large_44k"
    assert (clip.clip_frames, clip.sync_frames) == (24, 64) and clip.clip.shape == (64, 1024)
    assert clip.duration == 3.0030000000000006
    with np.load(path, allow_pickle=False) as z:  # the ComfyUI-SelVA trainer's reader rules
        assert set(z.files) == {"clip_features", "sync_features", "duration", "prompt", "variant"}
        assert z["clip_features"].dtype == np.float32 and z["clip_features"].shape == (1, 24, 1024)
        assert z["sync_features"].dtype == np.float32 and z["sync_features"].shape == (1, 64, 768)
        assert z["duration"].dtype == np.float64 and z["duration"].shape == ()
        assert z["prompt"].dtype.kind == "U" and z["prompt"].shape == () and z["variant"].shape == ()
