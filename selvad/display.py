"""Text formatting shared by the terminal commands (`selvad status`, `selvad run` on a
terminal, the demo): durations, rounded numbers, progress bars and lines. Pure functions, no
imports from the rest of selvad."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["eta_text", "follow", "format_duration", "format_number", "progress_bar", "progress_line"]


def format_duration(seconds: float | None) -> str:
    """'1h02m', '3m05s', '42s' ('?' for None)."""
    if seconds is None:
        return "?"
    s = int(max(seconds, 0))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def progress_bar(step: int | None, total: int | None, width: int = 30) -> str:
    """A text bar like '[#########.....................]  30%' for step/total."""
    if not step or not total:
        return "[" + "." * width + "]   0%"
    frac = min(max(step / total, 0.0), 1.0)
    filled = int(round(frac * width))
    return "[" + "#" * filled + "." * (width - filled) + f"] {frac:4.0%}"



def format_number(value: float | int | None) -> str:
    """A number as a person reads it: 4 significant digits ('0.6123', '1.234e-05', '3.1e+04'
    only when it is that large), integers as they are, '?' for None."""
    if value is None:
        return "?"
    if isinstance(value, bool | int):
        return str(value)
    if value != value:  # NaN
        return "nan"
    return f"{value:.4g}"


def eta_text(step: int | None, total: int | None, eta_s: float | None) -> str:
    """'ETA 4m10s', or, once the last step is trained, what still takes time (the last
    checkpoint and its sample: minutes on a big model, never "ETA 0s")."""
    if step is not None and total and step >= total:
        return "last checkpoint and sample next"
    return f"ETA {format_duration(eta_s)}"


def progress_line(step: int | None, total: int | None, *, loss: float | None = None,
                  smoothed: float | None = None, samples_per_s: float | None = None,
                  eta_s: float | None = None, width: int = 24) -> str:
    """One line for a training run's progress, like kohya's or ai-toolkit's bars:
    '[######..................]  25% step 500/2000  train loss (smoothed) 0.6412
    3.1 samples/s  ETA 4m10s'; fields that are None are left out (except the ETA: '?')."""
    parts = [f"{progress_bar(step, total, width)} step {step or 0}/{total or '?'}"]
    if smoothed is not None:  # the one loss figure shown everywhere (status, page, sweeps)
        parts.append(f"train loss (smoothed) {format_number(smoothed)}")
    elif loss is not None:
        parts.append(f"train loss {format_number(loss)}")
    if samples_per_s:
        parts.append(f"{samples_per_s:.1f} samples/s")
    parts.append(eta_text(step, total, eta_s))
    return "  ".join(parts)


CLEAR_SCREEN = "\x1b[H\x1b[2J"  # cursor home, erase the screen


def follow(render: Callable[[], tuple[int, str]], stream: TextIO, interval: float = 2.0,
           tty: bool | None = None) -> int:
    """Show `render()`'s text again every `interval` seconds until Ctrl-C (then 0) or a
    render fails (its exit status, its text shown once). On a terminal the text replaces the
    previous one in place, like `watch`; elsewhere the texts follow each other, a blank line
    apart. `render` returns (exit status, text)."""
    tty = bool(getattr(stream, "isatty", lambda: False)()) if tty is None else tty
    try:
        while True:
            rc, text = render()
            stream.write((CLEAR_SCREEN if tty else "") + text + ("" if tty else "\n"))
            stream.flush()
            if rc != 0:
                return rc
            time.sleep(interval)
    except KeyboardInterrupt:
        stream.write("\n")
        return 0
