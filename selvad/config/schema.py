"""Reading TOML into frozen dataclasses, with every problem reported at once.

`Problems` collects `file:key.path: problem (got X, expected Y)` lines with "did you mean"
for unknown keys; `coerce` and `parse_section` turn a TOML table into a dataclass by its type
hints. The daemon config and the job files are both read with these.
"""

from __future__ import annotations

import difflib
import math
import os
import stat
import tomllib
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

__all__ = ["MAX_TOML_BYTES", "ConfigError", "OutOfRange", "Problems", "coerce", "describe",
           "join_key", "parse_section", "read_toml"]

_MISSING = object()
MAX_TOML_BYTES = 1 << 20  # bytes; a config or job file is a few KiB
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1  # what SQLite and torch can hold


class OutOfRange(TypeError):
    """A value of the right type outside what any setting accepts; `args[0]` says what is."""


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
    """Read a TOML file; unreadable or broken files raise ConfigError naming file and line.

    Only a regular file (or a symlink to one) is opened, and without blocking: a FIFO,
    a device or a directory named `*.toml` is refused at once (reading a FIFO would wait
    for a writer forever), and so is a file over MAX_TOML_BYTES.
    """
    try:
        raw = _read_regular(path)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read file ({exc.strerror or exc})"]) from exc
    except _NotRegular as exc:
        raise ConfigError([f"{path}: {exc}"]) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The message already says "(at line L, column C)"; keep it, lead with the file.
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from exc
    except RecursionError as exc:  # tomllib recurses once per nested array or inline table
        raise ConfigError([f"{path}: nested too deeply (arrays or inline tables inside each "
                           "other hundreds of levels deep); a config or job file needs at "
                           "most a few levels"]) from exc


class _NotRegular(Exception):
    """The path is not a regular file, or too large to be a config; the message says so."""


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def _check_regular(mode: int, size: int) -> None:
    if not stat.S_ISREG(mode):
        what = next((name for test, name in _KINDS if test(mode)), "of an unknown kind")
        raise _NotRegular(f"not a regular file ({what}); replace it with a TOML file")
    if size > MAX_TOML_BYTES:
        raise _NotRegular(f"too large for a config or job file ({size} bytes, at most "
                          f"{MAX_TOML_BYTES}); is it the right file?")


def _read_regular(path: Path) -> bytes:
    """The bytes of `path` if it is a regular file: checked before opening (opening some
    devices has side effects) and again on the open descriptor (it may have been replaced
    in between); O_NONBLOCK so that even that race cannot block on a FIFO."""
    st = os.stat(path)
    _check_regular(st.st_mode, st.st_size)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        _check_regular(st.st_mode, st.st_size)
        raw = f.read(MAX_TOML_BYTES + 1)
    _check_regular(stat.S_IFREG, len(raw))  # it grew while being read
    return raw


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
        if not INT64_MIN <= value <= INT64_MAX:
            raise OutOfRange("an integer from -2^63 to 2^63-1")
        return value
    if hint is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise TypeError
        if not math.isfinite(value):  # TOML writes inf and nan; no setting means either
            raise OutOfRange("a finite number")
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
        except OutOfRange as exc:
            problems.add(join_key(prefix, key), "out of range", got=value, expected=exc.args[0])
        except TypeError:
            problems.add(join_key(prefix, key), "wrong type", got=value,
                         expected=describe(hints[key]))
    return cls(**kwargs)

