"""Logging: structlog for our events, stdlib loggers routed through the same renderer.

One handler on the root logger renders every record, ours and foreign (torch, watchdog,
apscheduler, py.warnings), either as JSON lines (journald, files; the default when stdout is
not a terminal) or as readable console lines (a terminal). Processors add an ISO UTC
timestamp, the level and the logger name, replace arrays and tensors by a shape summary
(a log line must never carry a full tensor) and mask values of secret-looking keys.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

__all__ = ["get_logger", "redact_secrets", "setup_logging", "summarize_arrays"]

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


_LIBRARY_ROOTS = ("torch", "watchdog", "apscheduler")


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
        colors = bool(getattr(stream, "isatty", lambda: False)())
        final = [structlog.dev.ConsoleRenderer(colors=colors)]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = logging.StreamHandler(stream)
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
