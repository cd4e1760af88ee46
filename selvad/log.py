"""Logging: structlog for our events, stdlib loggers routed through the same renderer.

One handler on the root logger renders every record, ours and foreign (torch, watchdog,
apscheduler, py.warnings), either as JSON lines (journald, files; the default when stdout is
not a terminal) or as readable console lines (a terminal: one short line per event, numbers
rounded, long values cut, and the current run's progress as a bar redrawn in place).
Processors add an ISO UTC
timestamp, the level and the logger name, replace arrays and tensors by a shape summary
(a log line must never carry a full tensor) and mask values of secret-looking keys.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from selvad.display import format_duration, format_number, progress_line

__all__ = ["ConsoleLineRenderer", "LiveConsoleHandler", "get_logger", "redact_secrets",
           "setup_logging", "summarize_arrays"]

_HANDLER_NAME = "selvad"
_SECRET_WORDS = ("password", "passwd", "secret", "token", "api_key", "apikey", "credential")
# Foreign loggers that are chatty at INFO/DEBUG: raised to WARNING unless we run at DEBUG.
_NOISY = ("watchdog", "apscheduler", "urllib3", "filelock", "matplotlib", "PIL")


def _summary(value: Any) -> Any:
    shape = getattr(value, "shape", None)
    if shape is None or not hasattr(value, "dtype") or isinstance(value, str | bytes):
        return value
    if tuple(shape) == () and hasattr(value, "item"):
        return value.item()  # a 0-d array or tensor is just a number
    device = getattr(value, "device", None)
    where = f" device={device}" if device is not None and str(device) != "cpu" else ""
    return f"<{type(value).__name__} shape={tuple(shape)} dtype={value.dtype}{where}>"


def summarize_arrays(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]
                     ) -> MutableMapping[str, Any]:
    """structlog processor: replace numpy arrays / torch tensors (anything with `shape` and
    `dtype`) by "<ndarray shape=(2, 3) dtype=float32>", also inside lists, tuples and dicts
    one level down. 0-d values become plain numbers."""
    for key, value in list(event_dict.items()):
        if isinstance(value, list | tuple):
            event_dict[key] = [_summary(v) for v in value]
        elif isinstance(value, dict):
            event_dict[key] = {k: _summary(v) for k, v in value.items()}
        else:
            event_dict[key] = _summary(value)
    return event_dict


def drop_color_extras(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]
                      ) -> MutableMapping[str, Any]:
    """structlog processor: drop the copies of a message with terminal escape codes that
    libraries attach to their records (uvicorn's `color_message`)."""
    for key in _COLOR_EXTRAS:
        event_dict.pop(key, None)
    return event_dict


def redact_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]
                   ) -> MutableMapping[str, Any]:
    """structlog processor: mask the value of any key that looks like a secret."""
    for key in event_dict:
        if any(word in key.lower() for word in _SECRET_WORDS):
            event_dict[key] = "***"
    return event_dict


def _use_json(fmt: str, stream: TextIO) -> bool:
    if fmt == "json":
        return True
    if fmt == "console":
        return False
    isatty = getattr(stream, "isatty", None)
    return not (callable(isatty) and isatty())


_COLOR_EXTRAS = ("color_message",)
_LIBRARY_ROOTS = ("torch", "watchdog", "apscheduler")
MAX_VALUE_CHARS = 160  # a console value longer than this is cut ("... (N chars)")
MAX_ITEMS = 20  # items of one list shown on their own lines (then "... and N more")
MAX_ITEM_CHARS = 400
_HIDDEN = ("timestamp", "level", "logger", "event", "exception")
# A run's live bar ends with these events (the run left training).
_BAR_ENDS = ("run.stopped", "run.child_error", "run.done", "run.interrupted")


def _short(key: str, value: Any) -> str:
    """One console value: numbers rounded, durations as 3m05s, long texts and lists cut."""
    if key == "eta_s" and isinstance(value, int | float):
        return format_duration(value)
    if isinstance(value, float | int) and not isinstance(value, bool):
        return format_number(value)
    if isinstance(value, list | tuple | dict) and len(str(value)) > MAX_VALUE_CHARS:
        return f"<{len(value)} items>"
    text = str(value).replace("\r", "").replace("\n", " | ")
    if len(text) > MAX_VALUE_CHARS:
        text = f"{text[:MAX_VALUE_CHARS - 20]}... ({len(text)} chars)"
    return text if " " not in text or text.startswith(("<", "[", "{")) else repr(text)


def _listed_below(value: Any) -> bool:
    """A list or table too long for the line: its items go on lines of their own."""
    return isinstance(value, list | tuple | dict) and len(str(value)) > MAX_VALUE_CHARS


def _item_lines(key: str, value: list | tuple | dict) -> str:
    """`value`'s items, one a line under the event's line ("    key: item"), each cut at
    MAX_ITEM_CHARS; a long list stops after MAX_ITEMS with how many are left."""
    items = [f"{k}: {v}" for k, v in value.items()] if isinstance(value, dict) else list(value)
    out = []
    for item in items[:MAX_ITEMS]:
        text = str(item).replace("\r", "").replace("\n", " | ")
        if len(text) > MAX_ITEM_CHARS:
            text = f"{text[:MAX_ITEM_CHARS - 20]}... ({len(text)} chars)"
        out.append(f"\n    {key}: {text}")
    if len(items) > MAX_ITEMS:
        out.append(f"\n    {key}: ... and {len(items) - MAX_ITEMS} more")
    return "".join(out)


class ConsoleLineRenderer:
    """structlog renderer for a terminal: 'HH:MM:SS level    event  key=value ...', one line
    per event; `run.progress` becomes a progress line (bar, step, loss, rate, ETA). A
    traceback follows on its own lines."""

    def __init__(self, colors: bool = False) -> None:
        self.colors = colors

    def __call__(self, _logger: Any, _method: str, ev: MutableMapping[str, Any]) -> str:
        stamp = str(ev.get("timestamp", ""))[11:19]
        level = str(ev.get("level", "info"))
        name = str(ev.get("event", ""))
        if name == "run.progress":
            body = (f"run {ev.get('run_id', '?')}  " + progress_line(
                ev.get("step"), ev.get("steps"), loss=ev.get("loss"),
                smoothed=ev.get("smoothed_loss"), samples_per_s=ev.get("samples_per_s"),
                eta_s=ev.get("eta_s")))
        else:
            shown = {k: v for k, v in ev.items() if k not in _HIDDEN and v is not None}
            below = {k: v for k, v in shown.items() if _listed_below(v)}
            fields = "  ".join(f"{k}=({len(v)} below)" if k in below else f"{k}={_short(k, v)}"
                               for k, v in shown.items())
            body = f"{name}  {fields}".rstrip() + "".join(_item_lines(k, v)
                                                          for k, v in below.items())
        if self.colors and level in ("warning", "error", "critical"):
            level_text = f"\x1b[{33 if level == 'warning' else 31}m{level:<7}\x1b[0m"
        else:
            level_text = f"{level:<7}"
        line = f"{stamp} {level_text} {body}"
        exc = ev.get("exception")
        return f"{line}\n{exc}" if exc else line


class LiveConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler for a terminal that keeps the current run's progress as one bar at the
    bottom, redrawn in place (carriage return, clear line) by each `run.progress` event;
    every other line is printed above it. With `live` False it writes plain lines."""

    def __init__(self, stream: TextIO, live: bool) -> None:
        super().__init__(stream)
        self.live = live
        self._bar = ""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            ev = record.msg if isinstance(record.msg, dict) else {}
            name = ev.get("event")
            if not self.live:
                self.stream.write(text + "\n")
            elif name == "run.progress":
                self._bar = text
                self.stream.write("\r\x1b[K" + text)
            else:
                ends = name in _BAR_ENDS or (name == "run.state"
                                             and ev.get("state") not in ("training", None))
                if ends and self._bar:  # keep the last bar on screen, then the line
                    self.stream.write("\n" + text + "\n")
                    self._bar = ""
                elif self._bar:  # the line above, the bar again below it
                    self.stream.write("\r\x1b[K" + text + "\n" + self._bar)
                else:
                    self.stream.write(text + "\n")
            self.flush()
        except Exception:  # a log line must never take the daemon down
            self.handleError(record)


def setup_logging(format: str = "auto", level: str = "info",
                  stream: TextIO | None = None) -> logging.Handler:
    """Configure structlog and the stdlib root logger; safe to call again (e.g. on reload).

    `format` is "json", "console" or "auto" (console on a terminal, JSON otherwise), `level`
    a level name; output goes to `stream` (default stdout, which journald captures).
    Python warnings are captured into the "py.warnings" logger. Returns the installed
    handler (it replaces one installed by an earlier call).
    """
    stream = sys.stdout if stream is None else stream
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    as_json = _use_json(format, stream)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        summarize_arrays,
        redact_secrets,
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    renderer: Any
    if as_json:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
        final = [structlog.processors.dict_tracebacks, renderer]
    else:
        tty = bool(getattr(stream, "isatty", lambda: False)())
        final = [structlog.processors.format_exc_info, ConsoleLineRenderer(colors=tty)]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), drop_color_extras, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = (logging.StreamHandler(stream) if as_json
               else LiveConsoleHandler(stream, live=tty))
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in _NOISY:
        logging.getLogger(name).setLevel(numeric if numeric <= logging.DEBUG else logging.WARNING)
    # torch installs its own stderr handler on the "torch" logger and stops propagation
    # (torch._logging); route it through ours so its records become structured events too.
    names = [n for n in list(logging.root.manager.loggerDict)
             if n in _LIBRARY_ROOTS or n.startswith(tuple(f"{r}." for r in _LIBRARY_ROOTS))]
    for name in names:
        lib = logging.getLogger(name)
        for old in list(lib.handlers):
            lib.removeHandler(old)
        lib.propagate = True
    logging.captureWarnings(True)
    return handler


def get_logger(name: str | None = None, **context: Any) -> structlog.stdlib.BoundLogger:
    """A structlog logger named `name` (shown as `logger`), bound to `context` fields."""
    logger = structlog.get_logger(name)
    return logger.bind(**context) if context else logger
