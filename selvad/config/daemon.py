"""Daemon configuration: one TOML file, one frozen dataclass per section, validated at once.

Every problem is collected (not just the first) and reported as
``path/to/selvad.toml:section.key: problem (got X, expected Y)``; unknown sections and keys
are errors with a "did you mean". Relative paths are resolved against the directory of the
config file. Whether the directories exist is checked when the daemon starts, not here, so
a config can be validated on another machine. The `[defaults]` table has the schema of a job
file (see selvad.config.jobs) and is checked by the same code.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selvad.config.schema import Problems, parse_section, read_toml
from selvad.config.settings import check_defaults
from selvad.config.windows import WindowError, parse_window

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "default_config_path",
    "DaemonConfig",
    "DeviceConfig",
    "ExecutorConfig",
    "LoggingConfig",
    "PathsConfig",
    "RetentionConfig",
    "ScheduleConfig",
    "WatchConfig",
    "WebConfig",
    "load_config",
    "parse_config",
]

DEFAULT_CONFIG_PATH = Path("/etc/selvad/selvad.toml")


@dataclass(frozen=True)
class PathsConfig:
    """Where datasets, job files, outputs, state and weights live."""

    dataset_roots: tuple[Path, ...] = (Path("/var/lib/selvad/datasets"),)  # each subdir = a dataset
    jobs_dir: Path = Path("/etc/selvad/jobs")  # one <job>.toml per job
    output_root: Path = Path("/var/lib/selvad/output")  # <output_root>/<job>/<run-id>/
    state_dir: Path = Path("/var/lib/selvad/state")  # queue.sqlite3 lives here
    weights_dir: Path | None = None  # SelVA weights (ComfyUI models/selva layout); None = tiny
    cache_dir: Path | None = None  # extraction cache; None = <state_dir>/cache
    render_root: Path | None = None  # <render_root>/<job>/: videos rendered with the job's adapter

    @property
    def queue_path(self) -> Path:
        """The SQLite queue database."""
        return self.state_dir / "queue.sqlite3"

    @property
    def hash_cache_path(self) -> Path:
        """The SQLite file of dataset file hashes (selvad.datasets.hashcache), kept across restarts."""
        return self.state_dir / "file_hashes.sqlite3"

    @property
    def effective_cache_dir(self) -> Path:
        """The extraction cache directory actually used."""
        return self.cache_dir if self.cache_dir is not None else self.state_dir / "cache"


@dataclass(frozen=True)
class DeviceConfig:
    """Where runs execute on this machine (selvad.runs.slots): "auto", "cpu", "cuda",
    "cuda:N", "all" (every GPU), or a list of slots (`["cuda:0", "cuda:1"]`; `["cpu",
    "cpu"]` runs two CPU runs at once), one run per slot at a time."""

    name: tuple[str, ...] = ("auto",)

    @property
    def text(self) -> str:
        """The setting as one string for logs ("auto", "cuda:0,cuda:1")."""
        return ",".join(self.name)


SINGLE_DEVICE_NAMES = ("auto", "cpu", "cuda", "all")  # names that stand alone (not in a list)


def is_gpu_name(name: str) -> bool:
    """Whether `name` is an indexed GPU ("cuda:N")."""
    return name.startswith("cuda:") and name[5:].isdigit()


def device_name_problem(names: tuple[str, ...]) -> str | None:
    """The syntax problem of `[device] name` (None when fine): one of SINGLE_DEVICE_NAMES
    or "cuda:N" alone, or a list of "cpu" / "cuda:N" entries naming no GPU twice."""
    if not names:
        return "is empty"
    if len(names) == 1:
        name = names[0]
        ok = name in SINGLE_DEVICE_NAMES or is_gpu_name(name)
        return None if ok else "unknown device"
    for name in names:
        if name != "cpu" and not is_gpu_name(name):
            return f"a list may only hold \"cpu\" and \"cuda:N\" entries, not {name!r}"
    gpus = [n for n in names if n != "cpu"]
    if len(set(gpus)) != len(gpus):
        return "names a GPU twice (one run per GPU at a time)"
    return None


@dataclass(frozen=True)
class ExecutorConfig:
    """Where runs execute: "local" (the `[device]` slots of this machine) or "ray" (a Ray
    cluster places each run on a node with a free `resource`; `pip install 'selvad[ray]'`,
    see the README's "Several machines (Ray)")."""

    kind: str = "local"  # "local" | "ray"
    address: str = "auto"  # ray: "auto" (this machine is a cluster node), "HOST:PORT", "ray://HOST:PORT"
    resource: str = "GPU"  # ray: what each run needs one of: "GPU"; "CPU" for tests without GPUs


EXECUTOR_KINDS = ("local", "ray")
RAY_RESOURCES = ("GPU", "CPU")


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
    """When new training runs may start (see selvad.runs.schedule for the window syntax)."""

    training_windows: tuple[str, ...] = ()  # empty = any time


@dataclass(frozen=True)
class RetentionConfig:
    """What old outputs are pruned, and how often."""

    keep_last_checkpoints: int = 3  # step checkpoints kept per run (final/best always kept)
    # also keep the first step checkpoint and those nearest steps 500, 1000 and 2000 (the
    # guide's marks to audition); false: only the newest keep_last_checkpoints (+ best, ...)
    keep_spread: bool = True
    keep_runs_per_job: int = 0  # finished run directories kept per job; 0 = keep all
    interval_minutes: float = 60.0  # how often retention runs; 0 = never


@dataclass(frozen=True)
class LoggingConfig:
    """Log format and level."""

    format: str = "auto"  # auto = console on a terminal, JSON lines otherwise
    level: str = "info"


@dataclass(frozen=True)
class WebConfig:
    """The web page (selvad.web): where it listens and the token every request needs."""

    enabled: bool = True  # serve the page beside the main loop
    listen: str = "127.0.0.1:8765"  # HOST:PORT ([::1]:PORT for IPv6); port 0 = any free port
    token: str = ""  # every request needs it; "" = the one written into <state_dir>/web_token

    @property
    def host(self) -> str:
        """The address part of `listen` (brackets of an IPv6 address removed)."""
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        """The port part of `listen`."""
        return split_listen(self.listen)[1]

    @property
    def loopback(self) -> bool:
        """Whether only this machine can reach the page (127.0.0.0/8, ::1, localhost)."""
        return is_loopback(self.host)


def split_listen(listen: str) -> tuple[str, int]:
    """`"HOST:PORT"` -> (host, port); ValueError saying what is wrong otherwise."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8765")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address or "localhost"."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class DaemonConfig:
    """The whole daemon configuration; `defaults` holds job settings with the job schema."""

    path: Path | None = None  # the file it was read from
    paths: PathsConfig = field(default_factory=PathsConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    web: WebConfig = field(default_factory=WebConfig)
    defaults: dict[str, Any] = field(default_factory=dict)


SECTIONS: dict[str, type] = {
    "paths": PathsConfig,
    "device": DeviceConfig,
    "executor": ExecutorConfig,
    "watch": WatchConfig,
    "schedule": ScheduleConfig,
    "retention": RetentionConfig,
    "logging": LoggingConfig,
    "web": WebConfig,
}
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _check_values(cfg: DaemonConfig, p: Problems) -> None:
    problem = device_name_problem(cfg.device.name)
    if problem:
        got = cfg.device.name[0] if len(cfg.device.name) == 1 else list(cfg.device.name)
        p.add("device.name", problem, got=got, expected='"auto", "cpu", "cuda", "cuda:N", '
              '"all" or a list such as ["cuda:0", "cuda:1"] or ["cpu", "cpu"]')
    _check_executor(cfg.executor, p)
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
    _check_web(cfg.web, p)
    if not cfg.paths.dataset_roots:
        p.add("paths.dataset_roots", "needs at least one directory", got=[],
              expected="a list of directories")


def _check_executor(ex: ExecutorConfig, p: Problems) -> None:
    if ex.kind not in EXECUTOR_KINDS:
        p.add("executor.kind", "unknown executor", got=ex.kind, expected=" | ".join(EXECUTOR_KINDS))
    if ex.resource not in RAY_RESOURCES:
        p.add("executor.resource", "unknown resource", got=ex.resource,
              expected=" | ".join(RAY_RESOURCES))
    addr = ex.address
    if addr != "auto" and not addr.startswith("ray://"):
        try:
            split_listen(addr)
        except ValueError:
            p.add("executor.address", "not a Ray address", got=addr,
                  expected='"auto", "HOST:PORT" or "ray://HOST:PORT"')


def _check_web(web: WebConfig, p: Problems) -> None:
    try:
        split_listen(web.listen)
    except ValueError as exc:
        p.add("web.listen", "not an address", got=web.listen, expected=str(exc)[9:])
        return
    if web.token and (len(web.token) < 16 or not web.token.isprintable() or " " in web.token):
        p.add("web.token", "too short to keep the page private", got=web.token,
              expected='a secret of at least 16 characters without spaces, or "" to use the '
              "one the daemon writes into the state directory")


def parse_config(data: dict[str, Any], path: Path | str) -> DaemonConfig:
    """Validate already-parsed TOML `data` read from `path`; raise ConfigError on problems.

    Relative paths are resolved against `path`'s directory. `[defaults]` is checked with
    the job settings schema (selvad.config.settings.check_defaults), kept as a nested dict.
    """

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


def default_config_path() -> Path:
    """The config file used when none is given: $SELVAD_CONFIG, or /etc/selvad/selvad.toml."""
    return Path(os.environ.get("SELVAD_CONFIG") or DEFAULT_CONFIG_PATH)


def load_config(path: Path | str = DEFAULT_CONFIG_PATH) -> DaemonConfig:
    """Read and validate the daemon config at `path` (default /etc/selvad/selvad.toml).

    Raises ConfigError listing every problem (broken TOML names the line and column).
    Directories are not required to exist here; the daemon checks them when it starts.
    """
    path = Path(path)
    return parse_config(read_toml(path), path)
