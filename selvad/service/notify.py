"""sd_notify over the NOTIFY_SOCKET datagram socket, without a systemd library.

systemd (Type=notify) passes the socket path in NOTIFY_SOCKET: a filesystem path, or an
abstract-namespace name written with a leading '@'. Every function here is a no-op that
returns False when NOTIFY_SOCKET is unset (running by hand, in tests, under another
supervisor), and never raises on a send error: notification is best effort and must not
take the daemon down.
"""

from __future__ import annotations

import os
import socket
import time

__all__ = [
    "notify",
    "ready",
    "reloading",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
]


def _address(value: str) -> str | bytes:
    # "@name" is the abstract namespace: the address starts with a NUL byte instead.
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def notify(_unset_environment: bool = False, **fields: object) -> bool:
    """Send `KEY=value` lines (e.g. READY=1, STATUS=...) to systemd in one datagram.

    Field names are upper-cased; values are converted with str(). Returns True when the
    datagram was sent, False without NOTIFY_SOCKET or on an error. With
    `_unset_environment` the variable is removed afterwards (children do not inherit it).
    """
    target = os.environ.get("NOTIFY_SOCKET")
    if not target or not fields:
        return False
    message = "".join(f"{key.upper()}={value}\n" for key, value in fields.items())
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # a receiver that stops reading must not hang the daemon's main loop
            sock.settimeout(1.0)
            sock.connect(_address(target))
            sock.sendall(message.encode("utf-8"))
        return True
    except OSError:
        return False
    finally:
        if _unset_environment:
            os.environ.pop("NOTIFY_SOCKET", None)


def ready(status_text: str | None = None) -> bool:
    """READY=1 (optionally with STATUS=): start-up is done, watches are armed."""
    if status_text is None:
        return notify(READY=1)
    return notify(READY=1, STATUS=status_text)


def status(text: str) -> bool:
    """STATUS=<text>: one line shown by `systemctl status` (queue length, current step)."""
    return notify(STATUS=text.replace("\n", " "))


def watchdog() -> bool:
    """WATCHDOG=1: the main loop is alive; send at least every watchdog_interval() / 2."""
    return notify(WATCHDOG=1)


def stopping() -> bool:
    """STOPPING=1: shutdown has begun (a checkpoint is being written)."""
    return notify(STOPPING=1)


def reloading() -> bool:
    """RELOADING=1 with MONOTONIC_USEC (required by systemd >= 253 for Type=notify-reload).

    Send `ready()` again once the new configuration is in effect.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(RELOADING=1, MONOTONIC_USEC=usec)


def watchdog_interval() -> float | None:
    """The watchdog timeout in seconds from WATCHDOG_USEC, or None when it is not enabled
    for this process (unset, unparsable, zero, or WATCHDOG_PID names another process)."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec:
        return None
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None
