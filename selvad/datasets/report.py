"""The dataset validation report: findings per file, advice, and its TOML/JSON/terminal forms.

A `Finding` is one problem of one file: `severity` "error" blocks training, "warning" does
not. `file` is the name relative to the dataset directory ("" for the dataset as a whole).
`code` is a short stable identifier (e.g. "missing-audio", "clipped") for tools and tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

__all__ = ["ERROR", "WARNING", "ClipEntry", "Finding", "ValidationReport", "write_report"]

ERROR = "error"
WARNING = "warning"
DATASET = "(dataset)"  # how dataset-level findings are headed in the terminal output


@dataclass(frozen=True)
class Finding:
    """One problem: severity, file (relative name, "" = whole dataset), code, message, fix."""

    severity: str
    file: str
    code: str
    message: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        """Plain dict (all strings; TOML-safe)."""
        return {"severity": self.severity, "file": self.file, "code": self.code,
                "message": self.message, "fix": self.fix}


@dataclass(frozen=True)
class ClipEntry:
    """A usable clip: stem, resolved prompt and where the prompt came from."""

    stem: str
    prompt: str
    prompt_source: str  # "prompts.txt" | "npz" | "directory"


@dataclass
class ValidationReport:
    """Result of validating one dataset directory for one variant.

    `clips` are the usable clips (paired, readable, sane features). `ok` is True when there
    is no error finding. `checked_at` is a UTC ISO-8601 time stamp.
    """

    dataset: str
    variant: str
    sampling_rate: int  # Hz, the model's
    duration: float  # seconds per training clip
    num_audio_frames: int  # samples per training clip at sampling_rate
    checked_at: str = ""
    clips: list[ClipEntry] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    @property
    def ok(self) -> bool:
        """True when nothing blocks training (warnings allowed)."""
        return not self.errors

    def add(self, severity: str, file: str, code: str, message: str, fix: str = "") -> None:
        """Append one finding."""
        self.findings.append(Finding(severity, file, code, message, fix))

    def for_file(self, file: str) -> list[Finding]:
        """Findings of one file (relative name; "" for dataset-level ones)."""
        return [f for f in self.findings if f.file == file]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (no None values) for TOML and JSON."""
        return {
            "dataset": self.dataset,
            "variant": self.variant,
            "sampling_rate": self.sampling_rate,
            "duration": self.duration,
            "num_audio_frames": self.num_audio_frames,
            "checked_at": self.checked_at,
            "ok": self.ok,
            "clip_count": len(self.clips),
            "error_count": len(self.errors),
            "warning_count": len(self.warnings),
            "advice": list(self.advice),
            "clips": [{"stem": c.stem, "prompt": c.prompt, "prompt_source": c.prompt_source}
                      for c in self.clips],
            "errors": [f.to_dict() for f in self.errors],
            "warnings": [f.to_dict() for f in self.warnings],
        }

    def to_toml(self) -> str:
        """TOML text (the `validation.toml` written next to each run)."""
        return tomli_w.dumps(self.to_dict())

    def to_json(self) -> str:
        """Indented JSON text (for `selvad validate --json`)."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def format_human(self) -> str:
        """Terminal text: a header, findings grouped per file, advice, and the verdict."""
        lines = [f"Dataset {self.dataset}",
                 f"  variant {self.variant}: {self.sampling_rate} Hz, {self.duration:g} s clips "
                 f"({self.num_audio_frames} samples)",
                 f"  {len(self.clips)} usable clip(s), {len(self.errors)} error(s), "
                 f"{len(self.warnings)} warning(s)"]
        files = sorted({f.file for f in self.findings}, key=lambda n: (n != "", n))
        for name in files:
            lines.append("")
            lines.append(name or DATASET)
            group = sorted(self.for_file(name), key=lambda f: f.severity != ERROR)
            for f in group:
                fix = f" (fix: {f.fix})" if f.fix else ""
                lines.append(f"  {f.severity}: {f.message}{fix}")
        if self.advice:
            lines.append("")
            lines.append("Advice:")
            lines.extend(f"  - {a}" for a in self.advice)
        lines.append("")
        lines.append("OK: ready to train" if self.ok
                     else f"FAILED: {len(self.errors)} error(s) block training")
        return "\n".join(lines) + "\n"


def write_report(report: ValidationReport, path: Path | str) -> Path:
    """Atomically write `report` to `path`: JSON when it ends in `.json`, TOML otherwise.

    Creates parent directories; returns the path written.
    """
    from selva_engine.io import atomic_write_text  # imports torch: only when writing

    path = Path(path)
    text = report.to_json() if path.suffix.lower() == ".json" else report.to_toml()
    return atomic_write_text(path, text)
