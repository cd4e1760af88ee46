"""Typed errors of dataset loading: every one names the offending path, the problem and a fix.

The message format is always `<path>: <problem> (fix: <fix>)`, so a log line or a validation
report tells the user which file to touch and what to do. The daemon's validator turns these
into report entries; the trainer raises the first one (or collects all of them).
"""

from __future__ import annotations

import os
from pathlib import Path

from selva_engine.io import OutsideRootError, SpecialFileError

__all__ = [
    "AmbiguousAudioError",
    "ArrayTooLargeError",
    "AudioFileError",
    "DatasetError",
    "EmptyDatasetError",
    "FeatureFileError",
    "HiddenClipError",
    "LinkOutsideError",
    "MissingAudioError",
    "NotRegularFileError",
    "OrphanAudioError",
    "PairingError",
    "PickledDataError",
    "PromptEntryError",
    "PromptNameError",
    "PromptsFileError",
    "UnreadableFileError",
    "open_error",
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


class ArrayTooLargeError(FeatureFileError):
    """An `.npz` array declares a shape or string length far beyond what a clip can hold
    (e.g. a compressed bomb: 1 MB on disk, gigabytes once loaded); it is never loaded."""

    code = "array-too-large"


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


class HiddenClipError(PairingError):
    """An `.npz` whose name starts with '.' is hidden and skipped (not silently: ComfyUI's
    name sanitiser turns '../escape' into '.._escape_001.npz')."""

    code = "hidden-clip"


class AmbiguousAudioError(PairingError):
    """Several audio files share one stem; which one to train on is not guessed."""

    code = "several-audio"


class PromptsFileError(DatasetError):
    """`prompts.txt` is unreadable, has a line without ':', or names a missing `.npz`."""

    code = "prompts"


class PromptNameError(PromptsFileError):
    """A `prompts.txt` line names a path (with '/', '\\', '..', NUL or absolute), not the
    plain name of a file in the dataset; the line is never used."""

    code = "prompts-bad-name"


class NotRegularFileError(DatasetError):
    """A clip file or prompts.txt is a FIFO, socket, device or directory; never opened."""

    code = "not-a-file"


class LinkOutsideError(DatasetError):
    """A symbolic link in the dataset leads outside the dataset directory; never opened,
    hashed or trained on."""

    code = "outside-dataset"


class UnreadableFileError(DatasetError):
    """A file of the dataset cannot be read (permissions, a broken link, an I/O error)."""

    code = "unreadable-file"


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


def _link_target(path: Path | str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def open_error(path: Path | str, exc: OSError, folder: str = "dataset directory") -> DatasetError:
    """The DatasetError telling the user why `path` was not read, from the OSError that
    `selva_engine.io.open_regular` / `regular_file_stat` raised for it; `folder` names the
    root it must lie in (e.g. "render folder")."""
    if isinstance(exc, SpecialFileError):
        return NotRegularFileError(path, f"is {exc.kind}, not a regular file; it is not read",
                                   "replace it with the real file, or remove it")
    if isinstance(exc, OutsideRootError):
        return LinkOutsideError(path, f"is a link to {exc.target}, outside the {folder}; it is "
                                "not read", f"copy the file into the {folder} instead of linking "
                                "to it, or remove the link")
    if isinstance(exc, FileNotFoundError) and os.path.islink(path):
        return UnreadableFileError(path, f"is a broken symbolic link (to {_link_target(path)}, "
                                   "which does not exist)", "fix the link or remove it")
    if isinstance(exc, FileNotFoundError):
        return UnreadableFileError(path, "not found (moved or deleted while being read)",
                                   "copy the file again")
    if isinstance(exc, PermissionError):
        return UnreadableFileError(path, "cannot be read (permission denied)",
                                   "make it readable by the daemon's user (chmod a+r), or "
                                   "remove it")
    return UnreadableFileError(path, f"cannot be read ({exc.strerror or exc})",
                               "check the file and its disk, or remove it")
