"""`exclude_clips` (what `[inspect] skip_rejected` leaves out) keeps clips out of training."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from selva_engine.audio.augment import AugmentSettings
from selva_engine.audio.prepare import PrepareSettings
from selva_engine.model.variants import get_variant
from selva_engine.training import setup as S
from selva_engine.training.options import TrainConfig
from selva_engine.training.state import EventLog

from .test_dataset import make_clip


def test_excluded_clips_are_not_extracted_and_each_is_named(tmp_path, monkeypatch):
    for stem in ("a", "b", "c"):
        make_clip(tmp_path, stem)
    seen: list[str] = []

    def fake_extract(clips, *args, **kwargs):
        seen.extend(c.stem for c in clips)
        return [], {}, SimpleNamespace(to_dict=dict)

    monkeypatch.setattr(S, "extract_clips", fake_extract)
    events: list[dict] = []
    cfg = TrainConfig(data_dir=str(tmp_path), variant="tiny_16k", exclude_clips=("b",))
    ctx = SimpleNamespace(cfg=cfg, log=EventLog(events.append, tmp_path / "progress.jsonl"),
                          out_dir=tmp_path, variant=get_variant("tiny_16k"), weights=None,
                          device="cpu", prepare=PrepareSettings(),
                          augment=AugmentSettings())
    S.extract_data(ctx, threading.Event(), None, None)
    assert seen == ["a", "c"]
    warnings = [e["message"] for e in events if e.get("event") == "warning"]
    assert any("b.wav" in w and "Inspector" in w for w in warnings), events
    assert TrainConfig.from_dict(cfg.to_dict()).exclude_clips == ("b",)
