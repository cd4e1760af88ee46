"""Who may open the page: its token, kept in the state directory, and the link that carries it.

Every page, file and API call of the page needs the token (loopback included), so the page
serves exactly the people who can read the state directory (or who were given the link).
The token is `[web] token` when set, else a random secret written at first start into
`<state_dir>/web_token` with the queue database's permissions (another local user who
cannot read the database cannot read the token either). The server also writes the URL it
really serves into `<state_dir>/web_url`, which `selvad web-url` and `selvad demo` read.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from urllib.parse import quote

from selva_engine.io import atomic_write_text
from selvad.config.daemon import DaemonConfig

__all__ = ["TOKEN_FILE", "URL_FILE", "TokenError", "ensure_token", "page_link", "served_url",
           "write_served_url"]

TOKEN_FILE = "web_token"
URL_FILE = "web_url"
TOKEN_BYTES = 32  # of randomness: 43 URL-safe characters
MIN_TOKEN = 16  # characters; shorter file contents are replaced by a new token


class TokenError(OSError):
    """The token file cannot be read or written; the message names the file and the fix."""


def _mode(cfg: DaemonConfig) -> int:
    """The queue database's permission bits (0o600 before it exists), never for others."""
    try:
        return stat.S_IMODE(os.stat(cfg.paths.queue_path).st_mode) & 0o660 or 0o600
    except OSError:
        return 0o600


def _read(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TokenError(f"{path} is not a regular file; delete it and restart the daemon "
                             "(a new token is written)")
        return os.read(fd, 4096).decode("ascii", "replace").strip()
    finally:
        os.close(fd)


def _create(path: Path, mode: int) -> str:
    """Write a new token into `path` unless another process wrote one first (then read it)."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow it
        os.write(fd, (token + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        try:
            os.link(tmp, path)  # atomic, never replaces a token another process just wrote
        except FileExistsError:
            old = _read(path)
            if len(old) >= MIN_TOKEN:
                return old
            os.replace(tmp, path)  # an empty or damaged file: replaced whole
            return token
    finally:
        tmp.unlink(missing_ok=True)
    return token


def ensure_token(cfg: DaemonConfig) -> str:
    """The page's token: `[web] token` when set, else the one in `<state_dir>/web_token`,
    written there first (with the database's permissions) when missing or too short.
    Raises TokenError (one sentence naming the file and the fix) when it cannot be read
    or written."""
    if cfg.web.token:
        return cfg.web.token
    path = cfg.paths.state_dir / TOKEN_FILE
    try:
        try:
            token = _read(path)
        except FileNotFoundError:
            token = ""
        if len(token) >= MIN_TOKEN:
            return token
        path.parent.mkdir(parents=True, exist_ok=True)
        return _create(path, _mode(cfg))
    except TokenError:
        raise
    except OSError as exc:
        raise TokenError(f"cannot read or write the page's token {path} "
                         f"({exc.strerror or exc}); run this as the daemon's user "
                         "(e.g. `sudo -u selvad selvad web-url`)") from exc


def write_served_url(cfg: DaemonConfig, url: str) -> None:
    """Record the URL the page serves (the daemon's server calls this once listening)."""
    atomic_write_text(cfg.paths.state_dir / URL_FILE, url + "\n")


def served_url(cfg: DaemonConfig) -> str:
    """The URL the daemon last said it serves, else the one `[web] listen` names."""
    try:
        url = (cfg.paths.state_dir / URL_FILE).read_text().strip()
    except OSError:
        url = ""
    if url.startswith("http://"):
        return url
    host = f"[{cfg.web.host}]" if ":" in cfg.web.host else cfg.web.host
    if host in ("0.0.0.0", "[::]"):
        host = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
    return f"http://{host}:{cfg.web.port}/"


def page_link(url: str, token: str) -> str:
    """`url` with `?token=` (the page turns it into a cookie and drops it from the URL)."""
    return f"{url}?token={quote(token, safe='')}"
