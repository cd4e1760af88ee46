"""The ETA follows the pace of recent steps: one slow window (a checkpoint's sample and
evaluation) moves it a little instead of swinging it, and the warm-up of the first window
does not linger."""

from __future__ import annotations

from selva_engine.training.state import RunState
from selva_engine.training.trainer import _smoothed_pace


def test_one_slow_window_does_not_swing_the_eta() -> None:
    state = RunState()
    _smoothed_pace(state, 5.0, 50)  # the warm-up window (here as fast as the rest)
    paces = [_smoothed_pace(state, 5.0, 50) for _ in range(5)]  # 0.1 s per step
    assert paces[-1] == 0.1
    slow = _smoothed_pace(state, 20.0, 50)  # a checkpoint window: 4x slower
    assert 0.1 < slow < 0.2  # the raw pace (0.4) would have quadrupled the ETA
    back = [_smoothed_pace(state, 5.0, 50) for _ in range(12)]
    assert abs(back[-1] - 0.1) < 0.01  # and it settles back within ~600 steps


def test_the_first_window_warm_up_does_not_inflate_the_eta() -> None:
    state = RunState()
    assert _smoothed_pace(state, 10.0, 10) == 1.0  # first window: warm-up, 10x slower
    assert _smoothed_pace(state, 1.0, 10) == 0.1  # the second replaces it outright
    assert abs(_smoothed_pace(state, 1.0, 10) - 0.1) < 1e-12
