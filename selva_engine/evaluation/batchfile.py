"""ComfyUI-SelVA's LoRA Evaluator file (`eval_batch.json`) read for `selva-eval --from FILE`.

Their node (`nodes/selva_lora_evaluator.py`) takes a JSON object: `name`, `data_dir`,
`output_dir`, `steps` (25), `seed` (42) and `adapters`, a list of `{"id", "path"}` where a
missing or empty path is the base model. The same file runs here with the same meaning. What
has no equivalent is an error naming the key; relative paths are taken from the file's own
folder (the node puts them under ComfyUI's output directory, which selva-eval does not know).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EvalBatch", "MAX_BATCH_BYTES", "read_eval_batch"]

MAX_BATCH_BYTES = 1 << 20  # a list of adapters: 1 MiB is far beyond any real one
TOP_KEYS = ("name", "data_dir", "output_dir", "steps", "seed", "adapters")
ADAPTER_KEYS = ("id", "path")


@dataclass(frozen=True)
class EvalBatch:
    """What an eval_batch.json asks for, as selva-eval's options."""

    name: str
    data_dir: Path
    output_dir: Path
    steps: int
    seed: int
    adapters: list[tuple[str, Path | None]]  # (id, file); None: the base model


def read_eval_batch(path: Path | str) -> EvalBatch:
    """Read `path` (ValueError naming the file, the key and the fix when it cannot be run)."""
    path = Path(path)
    spec = _load(path)
    unknown = sorted(set(spec) - set(TOP_KEYS))
    if unknown:
        raise ValueError(f"{path}: {', '.join(map(repr, unknown))} has no selva-eval equivalent "
                         f"(it reads {', '.join(TOP_KEYS)}); remove it")
    for key in ("data_dir", "output_dir"):
        if not isinstance(spec.get(key), str) or not spec[key].strip():
            raise ValueError(f"{path}: {key!r} is required (a folder path)")
    steps, seed = _integer(path, spec, "steps", 25, 1), _integer(path, spec, "seed", 42, 0)
    entries = spec.get("adapters")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: 'adapters' must be a non-empty list of {{\"id\", \"path\"}} "
                         "entries (an entry without a path is the base model)")
    adapters = [_adapter(path, i, e) for i, e in enumerate(entries)]
    ids = [ident for ident, _ in adapters]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: adapter ids must differ (each names its output folder)")
    return EvalBatch(str(spec.get("name") or path.stem), _where(path, spec["data_dir"]),
                     _where(path, spec["output_dir"]), steps, seed, adapters)


def _load(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BATCH_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if len(data) > MAX_BATCH_BYTES:
        raise ValueError(f"{path}: larger than {MAX_BATCH_BYTES >> 20} MiB; is it an eval_batch.json?")
    try:
        spec = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: not a JSON file ({exc}); write it as the LoRA Evaluator's "
                         "eval_batch.json") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: expected a JSON object with data_dir, output_dir and adapters")
    return spec


def _integer(path: Path, spec: dict, key: str, default: int, low: int) -> int:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 1_000_000:
        raise ValueError(f"{path}: {key!r} must be a whole number from {low} to 1000000 (got {value!r})")
    return value


def _adapter(path: Path, i: int, entry: object) -> tuple[str, Path | None]:
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry["id"].strip():
        raise ValueError(f"{path}: adapters[{i}] needs an 'id' (a name for its output folder)")
    unknown = sorted(set(entry) - set(ADAPTER_KEYS))
    if unknown:
        raise ValueError(f"{path}: adapters[{i}] key {', '.join(map(repr, unknown))} has no "
                         "selva-eval equivalent (an entry has id and path); remove it")
    ident, where = entry["id"].strip(), entry.get("path") or ""
    if not isinstance(where, str):
        raise ValueError(f"{path}: adapters[{i}] 'path' must be a file path or empty (the base model)")
    if ident == "reference":
        raise ValueError(f"{path}: adapters[{i}] id 'reference' is the folder of the clips' own "
                         "audio; give the adapter another id")
    if any(ch in ident for ch in '/\\:*?"<>|') or ident in (".", ".."):
        raise ValueError(f"{path}: adapters[{i}] id {ident!r} is not a folder name; use letters, "
                         "digits, '-' and '_'")
    return ident, (_where(path, where) if where.strip() else None)


def _where(batch: Path, value: str) -> Path:
    """`value` as a path: absolute as it is, relative from the batch file's folder."""
    p = Path(value.strip()).expanduser()
    return p if p.is_absolute() else batch.parent / p
