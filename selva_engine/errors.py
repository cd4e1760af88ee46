"""Typed errors of dataset loading: every one names the offending path, the problem and a fix.

The message format is always `<path>: <problem> (fix: <fix>)`, so a log line or a validation
report tells the user which file to touch and what to do. The daemon's validator turns these
into report entries; the trainer raises the first one (or collects all of them).
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "AmbiguousAudioError",
    "AudioFileError",
    "DatasetError",
    "EmptyDatasetError",
    "FeatureFileError",
    "MissingAudioError",
    "OrphanAudioError",
    "PairingError",
    "PickledDataError",
    "PromptEntryError",
    "PromptsFileError",
]


class DatasetError(ValueError):
    """A problem with one file (or the directory) of a clip dataset.

    `path` is the offending file or directory, `problem` says what is wrong in plain words,
    `fix` says what the user should do. `code` is a short stable identifier used by reports
    and tests (e.g. "missing-audio").
    """

    code = "dataset"

    def __init__(self, path: Path | str, problem: str, fix: str) -> None:
        self.path = Path(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem} (fix: {fix})")

    def __reduce__(self):  # keep pickling/copying working with the 3-argument constructor
        return (type(self), (self.path, self.problem, self.fix))


class EmptyDatasetError(DatasetError):
    """The directory is missing or holds no `.npz` feature files."""

    code = "empty-dataset"


class FeatureFileError(DatasetError):
    """An `.npz` feature file is corrupt, truncated, or has missing/ill-shaped/non-finite keys."""

    code = "bad-features"


class PickledDataError(FeatureFileError):
    """An `.npz` holds pickled Python objects; it is refused, never unpickled."""

    code = "pickled-data"


class AudioFileError(DatasetError):
    """An audio file is unreadable, not audio, or empty."""

    code = "bad-audio"


class PairingError(DatasetError):
    """`stem.npz` and `stem.<audio>` do not pair up one to one."""

    code = "pairing"


class MissingAudioError(PairingError):
    """An `.npz` has no audio file with the same stem (the clip cannot be trained on)."""

    code = "missing-audio"


class OrphanAudioError(PairingError):
    """An audio file has no `.npz` with the same stem (it is ignored)."""

    code = "missing-features"


class AmbiguousAudioError(PairingError):
    """Several audio files share one stem; which one to train on is not guessed."""

    code = "several-audio"


class PromptsFileError(DatasetError):
    """`prompts.txt` is unreadable, has a line without ':', or names a missing `.npz`."""

    code = "prompts"


class PromptEntryError(PromptsFileError):
    """A `prompts.txt` line names a file that is not an `.npz` of the dataset.

    `entry` is the name as written; `suggestion` is the `.npz` name the user probably meant
    (e.g. "dog_001.npz" for "dog_001" or "dog_001.wav"), or None for a stale line.
    """

    code = "prompts-unknown-file"

    def __init__(self, path: Path | str, problem: str, fix: str, entry: str = "",
                 suggestion: str | None = None) -> None:
        super().__init__(path, problem, fix)
        self.entry = entry
        self.suggestion = suggestion

    def __reduce__(self):
        return (type(self), (self.path, self.problem, self.fix, self.entry, self.suggestion))
