"""Daemon configuration: one TOML file, one frozen dataclass per section, validated at once.

Every problem is collected (not just the first) and reported as
``path/to/selvad.toml:section.key: problem (got X, expected Y)``; unknown sections and keys
are errors with a "did you mean". Relative paths are resolved against the directory of the
config file. Whether the directories exist is checked when the daemon starts, not here, so
a config can be validated on another machine. The `[defaults]` table has the schema of a job
file (see selvad.jobs) and is checked by the same code.
"""

from __future__ import annotations

import difflib
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from selvad.schedule import WindowError, parse_window

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ConfigError",
    "DaemonConfig",
    "DeviceConfig",
    "LoggingConfig",
    "PathsConfig",
    "Problems",
    "RetentionConfig",
    "ScheduleConfig",
    "WatchConfig",
    "load_config",
    "parse_config",
    "parse_section",
]

DEFAULT_CONFIG_PATH = Path("/etc/selvad/selvad.toml")
_MISSING = object()


class ConfigError(ValueError):
    """A config or job file is invalid; `problems` lists every message, one per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class Problems:
    """Collects `file:key.path: problem (got X, expected Y)` messages for one file."""

    def __init__(self, file: Path | str) -> None:
        self.file = str(file)
        self.items: list[str] = []

    def add(self, key: str, problem: str, got: Any = _MISSING, expected: str = "") -> None:
        """Record one problem at `key` (a dotted path); `got`/`expected` are optional."""
        detail = []
        if got is not _MISSING:
            detail.append(f"got {got!r}")
        if expected:
            detail.append(f"expected {expected}")
        suffix = f" ({', '.join(detail)})" if detail else ""
        self.items.append(f"{self.file}:{key}: {problem}{suffix}")

    def unknown(self, key: str, name: str, known: list[str], what: str = "key") -> None:
        """Record an unknown key `name` under `key` with a difflib "did you mean"."""
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(known))}"
        self.items.append(f"{self.file}:{key}: unknown {what} ({hint})")

    def raise_if_any(self) -> None:
        """Raise ConfigError carrying all recorded problems, if there are any."""
        if self.items:
            raise ConfigError(self.items)


def join_key(prefix: str, key: str) -> str:
    """Dotted key path `prefix.key` (just `key` when the prefix is empty)."""
    return f"{prefix}.{key}" if prefix else key


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file; unreadable or broken files raise ConfigError naming file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read file ({exc.strerror or exc})"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The message already says "(at line L, column C)"; keep it, lead with the file.
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from exc


def describe(hint: Any) -> str:
    """Human words for a type hint, used in "expected ..." parts of messages."""
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if hint is Path:
        return "a path string"
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        return f"a list of {describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if isinstance(hint, types.UnionType):
        inner = [a for a in args if a is not type(None)][0]
        empty = '""' if inner is Path else '"auto"'
        return f"{describe(inner)} or {empty}"
    return str(hint)


def coerce(value: Any, hint: Any, base_dir: Path | None = None) -> Any:
    """Convert a TOML value to the annotated type `hint`; raise TypeError when it does not fit.

    Supported hints: str, int, float (ints accepted), bool, Path (relative paths joined to
    `base_dir`, `~` expanded), tuple[X, ...] (a list, or a single scalar), and `X | None`
    where None is written as "" for paths and "auto" for numbers.
    """
    if isinstance(hint, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)][0]
        if value == ("" if inner is Path else "auto"):
            return None
        return coerce(value, inner, base_dir)
    if typing.get_origin(hint) is tuple:
        items = [value] if isinstance(value, str | int | float) else value
        if not isinstance(items, list):
            raise TypeError
        return tuple(coerce(v, typing.get_args(hint)[0], base_dir) for v in items)
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError
        return value
    if hint is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise TypeError
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise TypeError
        p = Path(value).expanduser()
        return p if p.is_absolute() or base_dir is None else (base_dir / p)
    raise TypeError(f"unsupported hint {hint!r}")


def parse_section(cls: type, table: Any, prefix: str, problems: Problems,
                  base_dir: Path | None = None) -> Any:
    """Build dataclass `cls` from TOML `table`, recording problems under key path `prefix`.

    Unknown keys and values of the wrong type are recorded; those fields keep their
    defaults so that checking can go on. Range checks are the caller's (see `check`).
    """
    if not isinstance(table, dict):
        problems.add(prefix, "expected a table", got=table, expected=f"[{prefix}]")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls) if f.init]
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key not in names:
            problems.unknown(join_key(prefix, key), key, names)
            continue
        try:
            kwargs[key] = coerce(value, hints[key], base_dir)
        except TypeError:
            problems.add(join_key(prefix, key), "wrong type", got=value,
                         expected=describe(hints[key]))
    return cls(**kwargs)


@dataclass(frozen=True)
class PathsConfig:
    """Where datasets, job files, outputs, state and weights live."""

    dataset_roots: tuple[Path, ...] = (Path("/var/lib/selvad/datasets"),)  # each subdir = a dataset
    jobs_dir: Path = Path("/etc/selvad/jobs")  # one <job>.toml per job
    output_root: Path = Path("/var/lib/selvad/output")  # <output_root>/<job>/<run-id>/
    state_dir: Path = Path("/var/lib/selvad/state")  # queue.sqlite3 lives here
    weights_dir: Path | None = None  # SelVA weights (ComfyUI models/selva layout); None = tiny
    cache_dir: Path | None = None  # extraction cache; None = <state_dir>/cache

    @property
    def queue_path(self) -> Path:
        """The SQLite queue database."""
        return self.state_dir / "queue.sqlite3"

    @property
    def hash_cache_path(self) -> Path:
        """The SQLite file of dataset file hashes (selvad.hashcache), kept across restarts."""
        return self.state_dir / "file_hashes.sqlite3"

    @property
    def effective_cache_dir(self) -> Path:
        """The extraction cache directory actually used."""
        return self.cache_dir if self.cache_dir is not None else self.state_dir / "cache"


@dataclass(frozen=True)
class DeviceConfig:
    """Which device training runs on: "auto", "cpu", "cuda" or "cuda:N"."""

    name: str = "auto"


@dataclass(frozen=True)
class WatchConfig:
    """How dataset roots and the jobs directory are watched."""

    settle_seconds: float = 10.0  # a file counts once size+mtime are unchanged this long
    use_polling: bool = False  # PollingObserver (NFS/SMB/sshfs) instead of inotify
    poll_interval: float = 5.0  # seconds between polls when use_polling is true
    rescan_minutes: float = 15.0  # full rescan interval; 0 = never
    ignore: tuple[str, ...] = ()  # extra glob patterns ignored besides the built-in ones


@dataclass(frozen=True)
class ScheduleConfig:
    """When new training runs may start (see selvad.schedule for the window syntax)."""

    training_windows: tuple[str, ...] = ()  # empty = any time


@dataclass(frozen=True)
class RetentionConfig:
    """What old outputs are pruned, and how often."""

    keep_last_checkpoints: int = 3  # step checkpoints kept per run (final/best always kept)
    keep_runs_per_job: int = 0  # finished run directories kept per job; 0 = keep all
    interval_minutes: float = 60.0  # how often retention runs; 0 = never


@dataclass(frozen=True)
class LoggingConfig:
    """Log format and level."""

    format: str = "auto"  # auto = console on a terminal, JSON lines otherwise
    level: str = "info"


@dataclass(frozen=True)
class DaemonConfig:
    """The whole daemon configuration; `defaults` holds job settings with the job schema."""

    path: Path | None = None  # the file it was read from
    paths: PathsConfig = field(default_factory=PathsConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    defaults: dict[str, Any] = field(default_factory=dict)


SECTIONS: dict[str, type] = {
    "paths": PathsConfig,
    "device": DeviceConfig,
    "watch": WatchConfig,
    "schedule": ScheduleConfig,
    "retention": RetentionConfig,
    "logging": LoggingConfig,
}
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _check_values(cfg: DaemonConfig, p: Problems) -> None:
    dev = cfg.device.name
    if dev not in ("auto", "cpu", "cuda") and not (
        dev.startswith("cuda:") and dev[5:].isdigit()
    ):
        p.add("device.name", "unknown device", got=dev, expected='"auto", "cpu", "cuda" or "cuda:N"')
    w = cfg.watch
    if w.settle_seconds < 0:
        p.add("watch.settle_seconds", "must not be negative", got=w.settle_seconds,
              expected="a number >= 0")
    if w.poll_interval <= 0:
        p.add("watch.poll_interval", "must be positive", got=w.poll_interval, expected="a number > 0")
    if w.rescan_minutes < 0:
        p.add("watch.rescan_minutes", "must not be negative", got=w.rescan_minutes,
              expected="a number >= 0 (0 = never)")
    for i, text in enumerate(cfg.schedule.training_windows):
        try:
            parse_window(text)
        except WindowError as exc:
            p.add(f"schedule.training_windows[{i}]", str(exc), got=text,
                  expected='"[DAYS ]HH:MM-HH:MM", e.g. "mon-fri 22:00-07:00"')
    r = cfg.retention
    for key in ("keep_last_checkpoints", "keep_runs_per_job"):
        if getattr(r, key) < 0:
            p.add(f"retention.{key}", "must not be negative", got=getattr(r, key),
                  expected="an integer >= 0")
    if r.interval_minutes < 0:
        p.add("retention.interval_minutes", "must not be negative", got=r.interval_minutes,
              expected="a number >= 0 (0 = never)")
    if cfg.logging.format not in LOG_FORMATS:
        p.add("logging.format", "unknown format", got=cfg.logging.format,
              expected=" | ".join(LOG_FORMATS))
    if cfg.logging.level.lower() not in LOG_LEVELS:
        p.add("logging.level", "unknown level", got=cfg.logging.level,
              expected=" | ".join(LOG_LEVELS))
    if not cfg.paths.dataset_roots:
        p.add("paths.dataset_roots", "needs at least one directory", got=[],
              expected="a list of directories")


def parse_config(data: dict[str, Any], path: Path | str) -> DaemonConfig:
    """Validate already-parsed TOML `data` read from `path`; raise ConfigError on problems.

    Relative paths are resolved against `path`'s directory. `[defaults]` is checked with
    the job schema (selvad.jobs.check_defaults) and kept as a plain nested dict.
    """
    from selvad.jobs import check_defaults  # jobs imports this module; import late

    path = Path(path)
    base = path.parent.absolute()
    p = Problems(path)
    sections: dict[str, Any] = {}
    for name, table in data.items():
        if name == "defaults":
            continue
        if name not in SECTIONS:
            p.unknown(name, name, [*SECTIONS, "defaults"], what="section")
            continue
        sections[name] = parse_section(SECTIONS[name], table, name, p, base)
    defaults = check_defaults(data.get("defaults", {}), p)
    cfg = DaemonConfig(path=path, defaults=defaults, **sections)
    _check_values(cfg, p)
    p.raise_if_any()
    return cfg


def load_config(path: Path | str = DEFAULT_CONFIG_PATH) -> DaemonConfig:
    """Read and validate the daemon config at `path` (default /etc/selvad/selvad.toml).

    Raises ConfigError listing every problem (broken TOML names the line and column).
    Directories are not required to exist here; the daemon checks them when it starts.
    """
    path = Path(path)
    return parse_config(read_toml(path), path)
