"""`<dataset>/dataset.toml`: per-dataset settings, one small shared reader.

The file is optional. Each feature reads its own table (`[video]` for video clips, `[inspect]`
for audio inspection, ...) through `read_dataset_file`, which opens the file only when it is a
regular file inside the dataset (never a link out of it), at most 1 MiB, UTF-8 TOML. A file that
cannot be used is one `DatasetFileError` naming `dataset.toml` and the fix; the callers then use
their defaults and report it.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from selva_engine.errors import DatasetError, open_error
from selva_engine.io import open_regular

__all__ = ["DATASET_FILE", "DatasetFileError", "read_dataset_file"]

DATASET_FILE = "dataset.toml"
MAX_BYTES = 1 << 20


class DatasetFileError(DatasetError):
    """`dataset.toml` is unreadable, not TOML, or holds a setting with a wrong value."""

    code = "dataset-toml"


def read_dataset_file(directory: Path | str) -> tuple[dict[str, Any], DatasetError | None]:
    """The parsed `<directory>/dataset.toml` ({} when absent) and the problem reading it, if any.

    Returns ({}, error) when the file exists but is not used: not a regular file or a link out
    of the dataset, over 1 MiB, not UTF-8, not valid TOML or nested absurdly deep.
    """
    path = Path(directory) / DATASET_FILE
    if not os.path.lexists(path):
        return {}, None
    try:
        with open_regular(path, directory) as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        return {}, open_error(path, exc)
    if len(data) > MAX_BYTES:
        return {}, DatasetFileError(path, "is larger than 1 MiB", "keep only the settings tables in it")
    try:
        return tomllib.loads(data.decode("utf-8-sig")), None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return {}, DatasetFileError(path, f"invalid TOML: {exc}",
                                    "fix the line it names, e.g. `[video]` then `split = true`")
    except RecursionError:  # tomllib recurses once per nested array or inline table
        return {}, DatasetFileError(path, "nested too deeply (arrays or inline tables hundreds of "
                                    "levels deep)", "keep only the settings tables in it")
