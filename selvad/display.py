"""Text formatting shared by the terminal commands (`selvad status`, the demo): durations and
progress bars. Pure functions, no imports from the rest of selvad."""

from __future__ import annotations

__all__ = ["format_duration", "progress_bar"]


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

