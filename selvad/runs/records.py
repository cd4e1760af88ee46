"""The queue's records and the run state machine (selvad.runs.queue stores them).

States and the only legal moves (`transition` enforces them)::

    queued -> extracting -> training -> done | failed | cancelled
    extracting -> done                  (an extraction or render run ends after extracting)
    queued -> cancelled
    extracting | training -> queued     (daemon shutdown, or resume after a crash)
    failed | cancelled -> queued        (retry)

`Run` is one row of `runs`, `Request` one row of `requests`; run ids sort by time.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["ACTIONS", "ACTIVE", "KINDS", "STATES", "SUPERSEDED", "TERMINAL", "WAITING",
           "IllegalTransition", "Request", "Run", "canonical_json", "config_digest", "new_run_id",
           "transition"]

STATES = ("queued", "extracting", "training", "done", "failed", "cancelled")
ACTIVE = ("extracting", "training")
TERMINAL = ("done", "failed", "cancelled")
KINDS = ("train", "extract", "render")
ACTIONS = ("cancel", "retry", "enqueue", "skip", "render")
# the note (`error` column) of a queued run held back because its dataset has errors, and
# the note of a queued run that a newer config or dataset replaced ("superseded by RUN")
WAITING = "waiting: dataset has errors"
SUPERSEDED = "superseded by"
_LEGAL: dict[str, tuple[str, ...]] = {
    "queued": ("extracting", "cancelled"),
    "extracting": ("training", "done", "failed", "cancelled", "queued"),
    "training": ("done", "failed", "cancelled", "queued"),
    "done": (),
    "failed": ("queued",),
    "cancelled": ("queued",),
}



class IllegalTransition(ValueError):
    """A run state change that the state machine does not allow."""

    def __init__(self, old: str, new: str) -> None:
        self.old, self.new = old, new
        allowed = ", ".join(_LEGAL.get(old, ())) or "nothing (final state)"
        super().__init__(f"illegal run state change {old} -> {new} (from {old}: {allowed})")


def transition(old: str, new: str) -> str:
    """Check the state change `old` -> `new`; return `new` or raise IllegalTransition."""
    if old not in _LEGAL or new not in _LEGAL or new not in _LEGAL[old]:
        raise IllegalTransition(old, new)
    return new


@dataclass(frozen=True)
class Run:
    """One row of `runs`; `config` and `manifest` are the decoded JSON columns."""

    id: str
    job: str
    sweep_id: str
    dataset: str
    kind: str
    state: str
    priority: int
    config: dict[str, Any]
    config_hash: str
    manifest: dict[str, Any]
    manifest_hash: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    output_dir: str | None = None
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    samples_per_s: float | None = None
    eta_s: float | None = None
    updated_at: float | None = None
    attempts: int = 0
    pid: int | None = None
    not_before: float | None = None
    auto_retries: int = 0
    device: str | None = None  # the slot ("cuda:1", "cpu#0") or Ray node it runs (ran) on

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Run:
        """Decode a database row (JSON columns parsed; columns of a newer version that
        this one does not know are ignored)."""
        d = {k: row[k] for k in row.keys() if k in _RUN_COLUMNS}
        d["config"] = json.loads(d.pop("config_json"))
        d["manifest"] = json.loads(d.pop("manifest_json"))
        return cls(**d)

    def to_dict(self, with_manifest: bool = False) -> dict[str, Any]:
        """Plain data for `--json` output; the (large) manifest only when asked for."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        if not with_manifest:
            d.pop("manifest")
        return d


_RUN_COLUMNS = {f.name for f in fields(Run)} | {"config_json", "manifest_json"}


@dataclass(frozen=True)
class Request:
    """One row of `requests`: something the CLI asked the daemon to do."""

    id: int
    action: str
    run_id: str | None
    job: str | None
    created_at: float
    handled_at: float | None = None
    result: str | None = None


def new_run_id(now: float | None = None) -> str:
    """A sortable, unique run id like "20261125-081500-ab12" (UTC time + random hex)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(2)}"


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no spaces: equal data, equal text (what hashes are taken of)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_digest(config: dict[str, Any]) -> str:
    """The default config hash of a run: sha256 of the canonical JSON of `config`."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()
