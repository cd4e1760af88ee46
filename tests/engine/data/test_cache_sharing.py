"""The extraction cache shared by concurrent runs (several slots, several Ray nodes): two
processes filling the same entry at once never leave a torn or mixed file behind."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np

from selva_engine.data.extract import FeatureCache

KEY = FeatureCache.key("audio-sha", "vae-id")


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)  # the same content in every writer, as for one clip
    return {"mean": rng.standard_normal((1, 250, 64)).astype(np.float32),
            "std": rng.standard_normal((1, 250, 64)).astype(np.float32)}


def _fill(root: str, times: int) -> None:
    cache = FeatureCache(root)
    arrays = _arrays()
    for _ in range(times):
        cache.put("latents", KEY, **arrays)


def test_two_writers_of_one_entry_never_corrupt_it(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    writers = [ctx.Process(target=_fill, args=(str(tmp_path), 60)) for _ in range(2)]
    for w in writers:
        w.start()
    cache, want, reads = FeatureCache(tmp_path), _arrays(), 0
    while any(w.is_alive() for w in writers):
        got = cache.get("latents", KEY)
        if got is not None:  # absent before the first rename, whole after it
            reads += 1
            assert set(got) == set(want)
            for k in want:
                np.testing.assert_array_equal(got[k], want[k])
    for w in writers:
        w.join(30)
        assert w.exitcode == 0
    assert reads > 0
    got = cache.get("latents", KEY)
    assert got is not None and np.array_equal(got["mean"], want["mean"])
    entry_dir = tmp_path / "latents" / KEY[:2]
    assert [p.name for p in entry_dir.iterdir()] == [f"{KEY}.npz"]  # no temp file left
