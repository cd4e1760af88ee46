"""The page's guards: security headers with a strict Content-Security-Policy, the allowed
Host names on loopback (no DNS rebinding), the CSRF token of state-changing forms, and the
`[web] token` that actions need when the page is reachable from other machines."""

from __future__ import annotations

import hmac
import secrets

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from selvad.config.daemon import WebConfig

__all__ = ["CSP", "COOKIE", "Guard", "SecurityHeaders"]

# Nothing inline, nothing from elsewhere: scripts, styles, images and audio from this origin.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "media-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
       "frame-ancestors 'none'")
HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"),
           (b"cache-control", b"no-store")]
COOKIE = "selvad_token"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")


class SecurityHeaders:
    """ASGI middleware adding the security headers to every response and, when the page
    listens on loopback, refusing requests whose Host is not a loopback name."""

    def __init__(self, app: ASGIApp, web: WebConfig) -> None:
        self.app, self.web = app, web

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.web.loopback and not _loopback_host(scope):
            await PlainTextResponse("Unknown host name: open the page as http://127.0.0.1:PORT/.",
                                    400)(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _loopback_host(scope: Scope) -> bool:
    host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name in LOOPBACK_HOSTS or name == "testserver"


class Guard:
    """The CSRF token of this server's forms and the action token check."""

    def __init__(self, web: WebConfig) -> None:
        self.web = web
        self.csrf = secrets.token_urlsafe(32)  # per process: forms of an older daemon are refused

    def csrf_ok(self, value: object) -> bool:
        """Whether a form's `csrf` field is this server's token."""
        return isinstance(value, str) and hmac.compare_digest(value, self.csrf)

    def may_act(self, request: Request) -> bool:
        """Whether `request` may change state: always on loopback without a token; else it
        must carry the token (cookie set by ?token=, or `Authorization: Bearer`)."""
        if not self.web.token:
            return self.web.loopback
        given = request.cookies.get(COOKIE) or request.headers.get("authorization", "")
        given = given.removeprefix("Bearer ")
        return hmac.compare_digest(given.encode(), self.web.token.encode())

    def login(self, request: Request) -> Response | None:
        """For `?token=SECRET` on a page: remember a right token in an HttpOnly cookie and
        redirect to the page without it; None when the URL carries no token."""
        given = request.query_params.get("token")
        if given is None or not self.web.token:
            return None
        if not hmac.compare_digest(given.encode(), self.web.token.encode()):
            return PlainTextResponse("Wrong token: check [web] token in the daemon's config.", 403)
        response = Response(status_code=303, headers={"location": request.url.path})
        response.set_cookie(COOKIE, given, httponly=True, samesite="strict")
        return response
