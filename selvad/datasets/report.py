"""The dataset validation report: findings per file, advice, and its TOML/JSON/terminal forms.

A `Finding` is one problem of one file: `severity` "error" blocks training, "warning" does
not. `file` is the name relative to the dataset directory ("" for the dataset as a whole).
`code` is a short stable identifier (e.g. "missing-audio", "clipped") for tools and tests.

Repeated findings are summarised so that a flood (a 100,000-line prompts.txt) cannot flood
the report, the log or `validation.toml`: of each (severity, code) the first
`SHOWN_PER_CODE[severity]` are kept (5 warnings, 20 errors), the rest only counted and
listed as one finding "… and N more like this" right after them. The counts
(`error_count`, `warning_count`, `ok`) always cover every finding.

The daemon keeps the last report of each dataset (without its clip list) in
`<state_dir>/datasets/<hash of the dataset path>.json` (`save_last_report`), which the web
page reads to list each dataset's errors and warnings.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from selva_engine.audio.inspect import InspectThresholds

__all__ = ["ERROR", "SHOWN_PER_CODE", "WARNING", "ClipEntry", "Finding", "ValidationReport",
           "forget_last_report", "format_figures", "load_last_report", "save_last_report", "write_report"]

ERROR = "error"
WARNING = "warning"
SHOWN_PER_CODE = {ERROR: 20, WARNING: 5}  # findings of one kind listed; the rest are counted
DATASET = "(dataset)"  # how dataset-level findings are headed in the terminal output
LAST_REPORT_MAX_BYTES = 1 << 20  # a kept report larger than this is not read back
FIGURES_SHOWN = 50  # up to this many clips, the terminal lists the figures of clean ones too
LAST_REPORT_FIGURES = 2000  # clips whose inspection figures the kept report holds (~200 KB)


MAX_VIDEO_ROWS = 200  # video clips listed by name in a kept report (the count is always exact)


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
    video: str = ""  # for a clip cut from a video: "<file>, <start>-<end> s"; "" for an .npz clip


@dataclass
class ValidationReport:
    """Result of validating one dataset directory for one variant.

    `clips` are the usable clips (paired, readable, sane features). `findings` are the
    findings kept (see the module docstring); `errors`/`warnings` add the "… and N more"
    lines. `ok` is True when there is no error finding. `checked_at` is a UTC ISO-8601
    time stamp.
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
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (severity, code) -> n
    thresholds: InspectThresholds = field(default_factory=InspectThresholds)
    inspection: dict[str, dict[str, float]] = field(default_factory=dict)  # audio file -> figures
    flagged: list[str] = field(default_factory=list)  # stems the Inspector's thresholds flag
    skipped: list[str] = field(default_factory=list)  # flagged stems left out (skip_rejected)
    _left_out_file: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)

    def _listed(self, severity: str) -> list[Finding]:
        """Kept findings of `severity`, each kind followed by its "… and N more" line."""
        shown = [f for f in self.findings if f.severity == severity]
        last = {f.code: i for i, f in enumerate(shown)}
        out = []
        for i, f in enumerate(shown):
            out.append(f)
            left_out = self.counts[(severity, f.code)] - SHOWN_PER_CODE[severity]
            if last[f.code] == i and left_out > 0:
                out.append(Finding(severity, self._left_out_file.get((severity, f.code), ""),
                                   f.code, f"… and {left_out:,} more like this"))
        return out

    @property
    def errors(self) -> list[Finding]:
        return self._listed(ERROR)

    @property
    def warnings(self) -> list[Finding]:
        return self._listed(WARNING)

    @property
    def error_count(self) -> int:
        """Every error found, also those summarised away."""
        return sum(n for (sev, _), n in self.counts.items() if sev == ERROR)

    @property
    def warning_count(self) -> int:
        """Every warning found, also those summarised away."""
        return sum(n for (sev, _), n in self.counts.items() if sev == WARNING)

    @property
    def ok(self) -> bool:
        """True when nothing blocks training (warnings allowed)."""
        return self.error_count == 0

    def add(self, severity: str, file: str, code: str, message: str, fix: str = "") -> None:
        """Count one finding; keep it while few of its (severity, code) were seen."""
        key = (severity, code)
        self.counts[key] += 1
        if self.counts[key] <= SHOWN_PER_CODE[severity]:
            self.findings.append(Finding(severity, file, code, message, fix))
        elif self.counts[key] == SHOWN_PER_CODE[severity] + 1:
            self._left_out_file[key] = file
        elif self._left_out_file[key] != file:
            self._left_out_file[key] = ""  # the summary line names a file only if all share it

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
            "error_count": self.error_count,
            "warning_count": self.warning_count,
            "advice": list(self.advice),
            "clips": [{"stem": c.stem, "prompt": c.prompt, "prompt_source": c.prompt_source}
                      | ({"video": c.video} if c.video else {}) for c in self.clips],
            "video_clip_count": sum(1 for c in self.clips if c.video),
            "video_clips": [{"stem": c.stem, "video": c.video, "prompt": c.prompt}
                            for c in self.clips if c.video][:MAX_VIDEO_ROWS],
            "errors": [f.to_dict() for f in self.errors],
            "warnings": [f.to_dict() for f in self.warnings],
            "thresholds": asdict(self.thresholds),
            "inspection": [{"file": name, **figures}
                           for name, figures in sorted(self.inspection.items())],
            "flagged": sorted(self.flagged),
            "skipped": sorted(self.skipped),
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
                 f"  {len(self.clips)} usable clip(s), {self.error_count} error(s), "
                 f"{self.warning_count} warning(s)"]
        if self.skipped:
            lines.append(f"  {len(self.skipped)} flagged clip(s) left out (skip_rejected): "
                         + ", ".join(sorted(self.skipped)[:10])
                         + (" ..." if len(self.skipped) > 10 else ""))
        listed = self.errors + self.warnings
        names = {f.file for f in listed}
        if len(self.inspection) <= FIGURES_SHOWN:  # a small dataset: every clip's figures
            names |= set(self.inspection)
        for name in sorted(names, key=lambda n: (n != "", n)):
            lines.append("")
            lines.append(name or DATASET)
            if name in self.inspection:
                lines.append("  " + format_figures(self.inspection[name]))
            for f in (f for f in listed if f.file == name):
                fix = f" (fix: {f.fix})" if f.fix else ""
                lines.append(f"  {f.severity}: {f.message}{fix}")
        if self.advice:
            lines.append("")
            lines.append("Advice:")
            lines.extend(f"  - {a}" for a in self.advice)
        lines.append("")
        lines.append("OK: ready to train" if self.ok
                     else f"FAILED: {self.error_count} error(s) block training")
        return "\n".join(lines) + "\n"


def format_figures(figures: dict[str, float]) -> str:
    """One line of a clip's inspection figures, e.g. 'SNR 23.1 dB, -18.2 LUFS, ...'."""
    parts = [f"SNR {figures['snr_db']:.1f} dB"]
    if "lufs" in figures:
        parts.append(f"{figures['lufs']:.1f} LUFS")
    if "true_peak_dbtp" in figures:
        parts.append(f"true peak {figures['true_peak_dbtp']:+.1f} dBTP")
    parts.append(f"silent {figures['silent_fraction']:.0%}")
    if "hf_shelf_db" in figures:
        parts.append(f"HF shelf {figures['hf_shelf_db']:.1f} dB")
    return ", ".join(parts)


def write_report(report: ValidationReport, path: Path | str) -> Path:
    """Atomically write `report` to `path`: JSON when it ends in `.json`, TOML otherwise.

    Creates parent directories; returns the path written.
    """
    from selva_engine.io import atomic_write_text  # imports torch: only when writing

    path = Path(path)
    text = report.to_json() if path.suffix.lower() == ".json" else report.to_toml()
    return atomic_write_text(path, text)


def _last_report_path(state_dir: Path, dataset_dir: str) -> Path:
    digest = hashlib.sha256(dataset_dir.encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return Path(state_dir) / "datasets" / f"{digest}.json"


def save_last_report(report: ValidationReport, state_dir: Path, dataset_dir: str) -> Path:
    """Keep `report` as the last one of the dataset at absolute path `dataset_dir` (what the
    web page lists: counts, errors, warnings, advice; not the clip list) in
    `state_dir/datasets/<hash of the path>.json`, atomically; returns the path."""
    from selva_engine.io import atomic_write_text  # imports torch: only when writing

    data = {k: v for k, v in report.to_dict().items() if k != "clips"}
    if len(data["inspection"]) > LAST_REPORT_FIGURES:  # the page lists the first ones
        data["inspection_left_out"] = len(data["inspection"]) - LAST_REPORT_FIGURES
        data["inspection"] = data["inspection"][:LAST_REPORT_FIGURES]
    return atomic_write_text(_last_report_path(state_dir, dataset_dir),
                             json.dumps(data, ensure_ascii=False))


def load_last_report(state_dir: Path, dataset_dir: str) -> dict[str, Any] | None:
    """The report `save_last_report` kept for `dataset_dir`; None when there is none, or it
    is not a regular file, too large or unreadable."""
    path = _last_report_path(state_dir, dataset_dir)
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > LAST_REPORT_MAX_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def forget_last_report(state_dir: Path, dataset_dir: str) -> None:
    """Delete the report kept for `dataset_dir` (a removed dataset); none is fine."""
    _last_report_path(state_dir, dataset_dir).unlink(missing_ok=True)
