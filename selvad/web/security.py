"""The page's gate, in front of every request: the Host check (no DNS rebinding), the token
(every page, file and API call), the Origin of actions, a bounded request body, and the
security headers with a strict Content-Security-Policy. Plus the CSRF token of forms.

The token arrives once as `?token=SECRET` (the link `selvad web-url` prints): the gate
answers with an HttpOnly, SameSite=Strict cookie and a redirect to the same URL without
it, so the token stays out of the address bar, the history and Referer headers. Scripts
may send `Authorization: Bearer SECRET` instead.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import secrets
import socket
from urllib.parse import parse_qsl, urlencode

from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from selvad.config.daemon import WebConfig, is_loopback

__all__ = ["BODY_MAX_BYTES", "BODY_TIMEOUT", "CSP", "Gate", "Guard", "cookie_name",
           "host_allowed"]

# Nothing inline, nothing from elsewhere: scripts, styles, images and audio from this origin.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "media-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
       "frame-ancestors 'none'")
# Referer only to this origin: "no-referrer" would make browsers send `Origin: null` with
# the page's own form posts (the Fetch standard ties the two), which the Origin check refuses.
# The token never is in a URL a page is shown under (the login redirect drops it).
HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"same-origin"), (b"x-frame-options", b"DENY"),
           (b"cache-control", b"no-store")]
BODY_MAX_BYTES = 4096  # the page's forms carry one CSRF field; anything larger is refused
BODY_TIMEOUT = 10.0  # seconds for the whole request body to arrive
SAFE_METHODS = ("GET", "HEAD")
NO_TOKEN = ("This page needs its token: open the link that `selvad web-url` prints (run it "
            "as the daemon's user, with the daemon's --config if it has one).")


def cookie_name(scope: Scope) -> str:
    """The token cookie's name: one per port, as two daemons on one host share cookies."""
    server = scope.get("server") or ("", 0)
    return f"selvad_token_{server[1] or 0}"


def _local_names() -> set[str]:
    names = {"localhost"}
    for name in (socket.gethostname(), socket.getfqdn()):
        if name:
            names.add(name.lower())
    return names


def host_allowed(host: str, web: WebConfig, names: set[str]) -> bool:
    """Whether a request's Host header `host` (`NAME[:PORT]`) may be answered: loopback
    names always; off loopback also any IP address (a literal address cannot be rebound
    to an attacker's name) and this machine's own host names `names`."""
    name = host.lower()
    if name.startswith("["):
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if not name:
        return False
    if is_loopback(name):
        return True
    if web.loopback:
        return False
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return name in names


def _header(scope: Scope, key: bytes) -> str:
    for k, v in scope.get("headers") or []:
        if k == key:
            return v.decode("latin-1")
    return ""


def _cookie(scope: Scope, name: str) -> str:
    for part in _header(scope, b"cookie").split(";"):
        k, _, v = part.strip().partition("=")
        if k == name:
            return v
    return ""


def _same(given: str, token: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode("utf-8", "replace"), token.encode())


class Gate:
    """ASGI middleware: refuses what the page must not answer, then adds the security
    headers to every response. `token` is the page's secret (see selvad.web.access)."""

    def __init__(self, app: ASGIApp, web: WebConfig, token: str) -> None:
        self.app, self.web, self.token = app, web, token
        self.names = _local_names()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        refusal = self.refusal(scope)
        if refusal is None and scope["method"] not in SAFE_METHODS:
            refusal, receive = await self._bounded_body(scope, receive)
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def refusal(self, scope: Scope) -> Response | None:
        """The answer to a request that goes no further (None: let it through)."""
        host = _header(scope, b"host")
        if not host_allowed(host, self.web, self.names):
            return PlainTextResponse("Unknown host name: open the page by this machine's "
                                     "address, e.g. the link `selvad web-url` prints.", 400)
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = [v for k, v in query if k == "token"]
        if given and scope["method"] in SAFE_METHODS:
            return self._login(scope, given[-1], [(k, v) for k, v in query if k != "token"])
        bearer = _header(scope, b"authorization").removeprefix("Bearer ").strip()
        if not (_same(_cookie(scope, cookie_name(scope)), self.token) or _same(bearer, self.token)):
            return PlainTextResponse(NO_TOKEN, 401, headers={"www-authenticate": "Bearer"})
        if scope["method"] not in SAFE_METHODS:
            return self._foreign_origin(scope, host)
        return None

    def _login(self, scope: Scope, given: str, rest: list[tuple[str, str]]) -> Response:
        if not _same(given, self.token):
            return PlainTextResponse("Wrong token: open the link that `selvad web-url` prints "
                                     "again (the token may have changed).", 403)
        location = scope.get("path", "/") + (f"?{urlencode(rest)}" if rest else "")
        response = Response(status_code=303, headers={"location": location})
        response.set_cookie(cookie_name(scope), self.token, httponly=True, samesite="strict",
                            path="/")
        return response

    @staticmethod
    def _foreign_origin(scope: Scope, host: str) -> Response | None:
        """A refusal when the browser says an action comes from another site: an `Origin`
        other than this one, or `Sec-Fetch-Site` other than same-origin/none. `Origin: null`
        passes only with `Sec-Fetch-Site: same-origin` (what a browser sends for the page's
        own forms under a no-referrer policy; a page cannot forge Sec-Fetch-*)."""
        origin = _header(scope, b"origin")
        site = _header(scope, b"sec-fetch-site")
        if origin == "null" and site == "same-origin":
            origin = ""
        if (origin and origin != f"{scope.get('scheme', 'http')}://{host}") or \
                site not in ("", "same-origin", "none"):
            return PlainTextResponse("Refused: this action was sent from another site; use the "
                                     "page's own buttons.", 403)
        return None

    async def _bounded_body(self, scope: Scope, receive: Receive) -> tuple[Response | None, Receive]:
        """Read the body (at most BODY_MAX_BYTES, within BODY_TIMEOUT) before the app runs;
        a larger declared length is refused before a byte of it is read."""
        too_big = PlainTextResponse(f"Request body too large (at most {BODY_MAX_BYTES} bytes).",
                                    413)
        length = _header(scope, b"content-length")
        if length and (not length.isdigit() or int(length) > BODY_MAX_BYTES):
            return too_big, receive
        body, more = b"", True
        try:
            async with asyncio.timeout(BODY_TIMEOUT):
                while more:
                    message = await receive()
                    if message["type"] != "http.request":
                        return PlainTextResponse("Client went away.", 400), receive
                    body += message.get("body", b"")
                    more = message.get("more_body", False)
                    if len(body) > BODY_MAX_BYTES:
                        return too_big, receive
        except TimeoutError:
            return PlainTextResponse("Request body too slow.", 408), receive
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return None, replay


class Guard:
    """The CSRF token of this server's forms (per process: forms of an older daemon are
    refused)."""

    def __init__(self) -> None:
        self.csrf = secrets.token_urlsafe(32)

    def csrf_ok(self, value: object) -> bool:
        """Whether a form's `csrf` field is this server's token."""
        return isinstance(value, str) and hmac.compare_digest(value, self.csrf)
