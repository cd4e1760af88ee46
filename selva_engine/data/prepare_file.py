"""A dataset's `[prepare]` settings: `dataset.toml`'s table, with a job's values over it.

`dataset.toml` is read through the one shared reader (`selva_engine.data.dataset_file`); each
key of `[prepare]` is a field of `selva_engine.audio.prepare.PrepareSettings`, range-checked
there. A bad key is one problem (the caller reports it as a warning) and is not used; the
job's values (TrainConfig's `prepare_*` fields, already checked) always win.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from selva_engine.audio.prepare import PrepareSettings
from selva_engine.data.dataset_file import DatasetFileError, read_dataset_file
from selva_engine.errors import DatasetError

__all__ = ["check_prepare_table", "read_prepare_settings"]


def check_prepare_table(table: Any, where: Path | str) -> tuple[dict[str, Any], list[DatasetError]]:
    """The valid keys of a `[prepare]` table and one problem per bad key (unknown, type, range)."""
    if not isinstance(table, dict):
        return {}, [DatasetFileError(where, "[prepare] must be a table", "write `[prepare]` on its own line")]
    out: dict[str, Any] = {}
    problems: list[DatasetError] = []
    for key, value in table.items():
        try:
            PrepareSettings.from_dict({key: value})
        except ValueError as exc:
            problems.append(DatasetFileError(where, f"[prepare] {exc}",
                                             "see the README's \"Preparing the audio\" for the keys and ranges"))
            continue
        out[key] = value
    return out, problems


def read_prepare_settings(directory: Path | str, overrides: Mapping[str, Any] | None = None
                          ) -> tuple[PrepareSettings, list[DatasetError]]:
    """`<directory>/dataset.toml`'s `[prepare]` updated with `overrides` (a job's), and the problems.

    Returns the settings to apply (all steps off when neither sets any) and the problems of
    the dataset file (its bad keys are left out; an unusable file counts as no `[prepare]`).
    An out-of-range or unknown override raises ValueError (a job's values are checked before).
    """
    # no directory (a config without data_dir): no dataset file, never the working directory's
    data, err = read_dataset_file(directory) if str(directory) else ({}, None)
    problems: list[DatasetError] = [err] if err is not None else []
    values: dict[str, Any] = {}
    if "prepare" in data:
        values, found = check_prepare_table(data["prepare"], Path(directory) / "dataset.toml")
        problems += found
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return PrepareSettings.from_dict(values), problems
