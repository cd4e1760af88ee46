"""`<dataset>/dataset.toml`: settings that belong to a dataset rather than to one job.

One small reader shared by every section; each section is parsed by the module that uses it.
Known sections: `[inspect]` (the Inspector's thresholds, `InspectThresholds`), `[video]`
(read by the video extraction), `[prepare]` (the audio preparation steps before encoding,
applied by the engine; checked here with `prepare_problems` so a bad value is in the report)
and `[augment]` (variants of the training clips; `augment_problems`, likewise).
Any other section is an error, so a setting that nothing applies is never ignored silently. `inspect_thresholds` also takes an override table (the
`inspect` argument of `validate_dataset`), applied key by key over the dataset file's.

    [inspect]
    min_snr_db = 15.0           # flag clips whose estimated SNR is lower
    check_codec = true          # flag a codec HF shelf (15-20 kHz cut off)
    codec_shelf_db = 40.0
    max_silent_fraction = 0.5   # flag clips with more silent frames (0 = off)
    clip_peak = 0.99            # flag clips peaking above
    min_lufs = -40.0            # flag clips quieter than
    skip_rejected = false       # train without the flagged clips
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from selva_engine.audio.augment import AUGMENT_LIMITS, INTEGER_KEYS, AugmentSettings
from selva_engine.audio.inspect import InspectThresholds
from selva_engine.audio.prepare import PREPARE_LIMITS, PrepareSettings
from selva_engine.data.dataset_file import DATASET_FILE
from selva_engine.data.dataset_file import read_dataset_file as read_toml_file
from selvad.config.schema import Problems, join_key, parse_section

__all__ = ["DATASET_FILE", "SECTIONS", "augment_problems", "inspect_thresholds", "prepare_problems",
           "read_dataset_file"]

SECTIONS = ("inspect", "video", "prepare", "augment")
# field -> (lowest, highest) accepted, both inclusive
INSPECT_RANGES = {"min_snr_db": (0.0, 120.0), "codec_shelf_db": (0.0, 200.0),
                  "max_silent_fraction": (0.0, 1.0), "clip_peak": (0.0, 4.0),
                  "min_lufs": (-120.0, 0.0)}


def read_dataset_file(directory: Path | str) -> tuple[dict[str, Any], list[str]]:
    """The tables of `directory/dataset.toml` and the problems found reading it.

    No file: ({}, []). The file is read by the engine's reader (`selva_engine.data.dataset_file`:
    a regular file inside the dataset only, at most 1 MiB, UTF-8 TOML), which the video clips
    use too; a file it refuses is one problem naming the file and the fix. Keys outside
    `SECTIONS` are problems in the `file:key: problem (got X, expected Y)` format; the sections
    that could be read are returned all the same.
    """
    path = Path(directory) / DATASET_FILE
    data, error = read_toml_file(directory)
    if error is not None:
        return {}, [str(error)]
    p = Problems(path)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in SECTIONS:
            p.unknown(key, key, list(SECTIONS), what="section")
        elif not isinstance(value, dict):
            p.add(key, "expected a table", got=value, expected=f"[{key}] with keys")
        else:
            out[key] = value
    return out, p.items


def inspect_thresholds(tables: dict[str, Any], origin: Path | str,
                       job_table: dict[str, Any] | None = None,
                       job_origin: Path | str = "job") -> tuple[InspectThresholds, list[str]]:
    """`InspectThresholds` from a dataset file's `[inspect]`, overridden by `job_table`, checked.

    `tables` is what `read_dataset_file` returned (`origin`: that file); `job_table` an
    override table (`job_origin` names where it came from). A key of the wrong type, unknown, or out of range is a
    problem and keeps the default. Returns (thresholds, problems).
    """
    problems: list[str] = []
    values: dict[str, Any] = {}
    for table, where in ((tables.get("inspect"), origin), (job_table, job_origin)):
        if table is None:
            continue
        p = Problems(where)
        parsed = parse_section(InspectThresholds, table, "inspect", p)
        for key in table if isinstance(table, dict) else ():
            if not hasattr(parsed, key) or any(f"inspect.{key}:" in m for m in p.items):
                continue
            value = getattr(parsed, key)
            low, high = INSPECT_RANGES.get(key, (None, None))
            if low is not None and not (math.isfinite(value) and low <= value <= high):
                p.add(join_key("inspect", key), "out of range", got=value,
                      expected=f"a number from {low:g} to {high:g}")
                continue
            values[key] = value
        problems.extend(p.items)
    return dataclasses.replace(InspectThresholds(), **values), problems


def prepare_problems(tables: dict[str, Any], origin: Path | str) -> list[str]:
    """The problems of a dataset file's `[prepare]` table, as `file:prepare.key: problem (got X,
    expected Y)`: unknown keys, wrong types, values outside the nodes' ranges (PREPARE_LIMITS)."""
    return _table_problems("prepare", tables, origin, list(PrepareSettings.__dataclass_fields__),
                           PREPARE_LIMITS, ())


def augment_problems(tables: dict[str, Any], origin: Path | str) -> list[str]:
    """The problems of a dataset file's `[augment]` table, in the same format: unknown keys,
    wrong types, values outside AUGMENT_LIMITS (the node's ranges, the notes' safe stretch)."""
    return _table_problems("augment", tables, origin, list(AugmentSettings.__dataclass_fields__),
                           AUGMENT_LIMITS, INTEGER_KEYS)


def _table_problems(section: str, tables: dict[str, Any], origin: Path | str, known: list[str],
                    limits: dict[str, tuple[float, float]], integers: tuple[str, ...]) -> list[str]:
    """The problems of the `[section]` table: a key of `limits` takes a number in its range
    (an integer when in `integers`), any other known key true or false."""
    p = Problems(Path(origin))
    table = tables.get(section) or {}
    for key, value in table.items():
        kp = join_key(section, key)
        kind = "an integer" if key in integers else "a number"
        if key not in known:
            p.unknown(kp, key, known)
        elif key not in limits:
            if not isinstance(value, bool):
                p.add(kp, "wrong type", got=value, expected="true or false")
        elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or (
                key in integers and not isinstance(value, int)):
            p.add(kp, "wrong type", got=value, expected=kind)
        elif not limits[key][0] <= value <= limits[key][1]:
            lo, hi = limits[key]
            p.add(kp, "out of range", got=value, expected=f"{kind} from {lo:g} to {hi:g}")
    return p.items
