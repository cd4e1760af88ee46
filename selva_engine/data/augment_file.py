"""A dataset's `[augment]` settings: `dataset.toml`'s table, with a job's values over it.

As `[prepare]` (selva_engine.data.prepare_file): each key of `[augment]` is a field of
`selva_engine.audio.augment.AugmentSettings`, range-checked there. A bad key is one problem
(the caller reports it as a warning) and is not used; the job's values (TrainConfig's
`augment_*` fields, already checked) always win.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from selva_engine.audio.augment import AugmentSettings
from selva_engine.data.dataset_file import DatasetFileError, read_dataset_file
from selva_engine.errors import DatasetError

__all__ = ["check_augment_table", "read_augment_settings"]


def check_augment_table(table: Any, where: Path | str) -> tuple[dict[str, Any], list[DatasetError]]:
    """The valid keys of an `[augment]` table and one problem per bad key (unknown, type, range)."""
    if not isinstance(table, dict):
        return {}, [DatasetFileError(where, "[augment] must be a table", "write `[augment]` on its own line")]
    out: dict[str, Any] = {}
    problems: list[DatasetError] = []
    for key, value in table.items():
        try:
            AugmentSettings.from_dict({key: value})
        except ValueError as exc:
            problems.append(DatasetFileError(where, f"[augment] {exc}",
                                             "see the README's \"Preparing the audio\" for the keys and ranges"))
            continue
        out[key] = value
    return out, problems


def read_augment_settings(directory: Path | str, overrides: Mapping[str, Any] | None = None
                          ) -> tuple[AugmentSettings, list[DatasetError]]:
    """`<directory>/dataset.toml`'s `[augment]` updated with `overrides` (a job's), and the problems.

    Returns the settings to apply (off when neither switches it on) and the problems of the
    dataset file's `[augment]` table (its bad keys are left out; an unreadable file is
    reported by `read_prepare_settings`, so not twice). An out-of-range or unknown override
    raises ValueError (a job's values are checked before).
    """
    data, _ = read_dataset_file(directory) if str(directory) else ({}, None)
    values: dict[str, Any] = {}
    problems: list[DatasetError] = []
    if "augment" in data:
        values, problems = check_augment_table(data["augment"], Path(directory) / "dataset.toml")
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return AugmentSettings.from_dict(values), problems
