"""Who may use the page (issue 21.2) and what a request may cost (21.3), through the real
ASGI app: the token on every page, file and API call (loopback included), the cookie
redirect, the token file's permissions, the Host and Origin checks, a fake peer off
loopback, hardlinks, the body limit (refused before it is read), bad query values, one
shared /api/status per interval, Train now clicked thrice, a failed run's whole reason
and its worker.log."""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from starlette.testclient import TestClient

from selvad.runs.queue import RunQueue
from selvad.web.access import TOKEN_FILE, ensure_token, page_link
from selvad.web.app import create_app
from selvad.web.security import BODY_MAX_BYTES, cookie_name

from .test_app import BASE, _csrf, _tree, client_for

PATHS = ["/", "/runs/{id}", "/runs/{id}/files/meta.json", "/runs/{id}/reference",
         "/api/status", "/api/runs/{id}", "/static/app.js", "/sweeps/birds", "/api/requests/1"]


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Any, RunQueue, str]:
    return _tree(tmp_path)


@pytest.mark.parametrize("path", PATHS)
def test_nothing_is_served_without_the_token_on_loopback(tree: Any, path: str) -> None:
    cfg, _, run_id = tree
    client = TestClient(create_app(cfg), base_url=BASE)
    r = client.get(path.format(id=run_id))
    assert r.status_code == 401 and "selvad web-url" in r.text, (path, r.status_code)
    assert b"weights" not in r.content and run_id not in r.text
    wrong = client.get(path.format(id=run_id), headers={"authorization": "Bearer " + "x" * 43})
    assert wrong.status_code == 401
    client.cookies.set(cookie_name({"server": ("127.0.0.1", 8765)}), "y" * 43)
    assert client.get(path.format(id=run_id)).status_code == 401


def test_token_link_sets_a_strict_cookie_and_drops_the_token_from_the_url(tree: Any) -> None:
    cfg, _, run_id = tree
    token = ensure_token(cfg)
    client = TestClient(create_app(cfg), base_url=BASE)
    assert client.get("/?token=wrong").status_code == 403
    r = client.get(f"/runs/{run_id}?request=3&token={token}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/runs/{run_id}?request=3"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert cookie.startswith("selvad_token_8765=")  # one cookie per port: two daemons, two tokens
    assert r.headers["referrer-policy"] == "same-origin"  # no-referrer: Origin null on forms
    assert client.get("/api/status").status_code == 200  # the cookie is enough from now on
    bearer = TestClient(create_app(cfg), base_url=BASE)
    assert bearer.get("/api/status", headers={"authorization": f"Bearer {token}"}).status_code == 200
    assert page_link("http://127.0.0.1:8765/", token) == f"http://127.0.0.1:8765/?token={token}"


def test_token_file_has_the_databases_permissions_and_stays(tree: Any) -> None:
    cfg, _, _ = tree
    os.chmod(cfg.paths.queue_path, 0o640)
    token = ensure_token(cfg)
    path = cfg.paths.state_dir / TOKEN_FILE
    assert len(token) >= 40 and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert ensure_token(cfg) == token and path.read_text().strip() == token
    path.write_text("short\n")  # damaged: replaced by a new one
    assert ensure_token(cfg) not in (token, "short")
    other = cfg.paths.state_dir / "x"
    other.mkdir()
    path.unlink()
    path.symlink_to(other / "elsewhere")
    with pytest.raises(OSError) as err:  # never follows a link
        ensure_token(cfg)
    assert str(path) in str(err.value) and "daemon's user" in str(err.value)


def test_a_token_in_the_config_wins(tmp_path: Path) -> None:
    cfg, _, _ = _tree(tmp_path, token="t" * 20)
    assert ensure_token(cfg) == "t" * 20 and not (cfg.paths.state_dir / TOKEN_FILE).exists()
    client = TestClient(create_app(cfg), base_url=BASE)
    assert client.get("/?token=" + "t" * 20, follow_redirects=False).status_code == 303


def test_off_loopback_a_fake_peer_needs_the_token_and_a_real_host(tmp_path: Path) -> None:
    cfg, q, run_id = _tree(tmp_path, listen="0.0.0.0:8765")
    peer = ("192.0.2.7", 40000)  # another machine on the LAN
    anon = TestClient(create_app(cfg), base_url="http://192.0.2.1:8765", client=peer)
    for path in PATHS:
        assert anon.get(path.format(id=run_id)).status_code == 401, path
    client = client_for(cfg, base_url="http://192.0.2.1:8765", client=peer)
    assert client.get("/api/status").status_code == 200
    for host, code in (("192.0.2.1:8765", 200), ("[2001:db8::1]:8765", 200),
                       ("evil.example:8765", 400), ("testserver", 400)):
        assert client.get("/api/status", headers={"host": host}).status_code == code, host
    csrf = _csrf(client)
    r = client.post(f"/runs/{run_id}/cancel", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and [x.action for x in q.pending_requests()] == ["cancel"]


def test_actions_check_the_origin(tree: Any) -> None:
    cfg, q, run_id = tree
    client = client_for(cfg)
    csrf = _csrf(client)
    for headers in ({"origin": "http://evil.example"}, {"origin": "http://127.0.0.1:9999"},
                    {"origin": "null"}, {"sec-fetch-site": "cross-site"}):
        r = client.post(f"/runs/{run_id}/cancel", data={"csrf": csrf}, headers=headers)
        assert r.status_code == 403 and "another site" in r.text, headers
    assert q.pending_requests() == []
    for n, headers in enumerate(({"origin": BASE, "sec-fetch-site": "same-origin"},
                                 {"origin": "null", "sec-fetch-site": "same-origin"}), 1):
        ok = client.post(f"/runs/{run_id}/cancel", data={"csrf": csrf}, follow_redirects=False,
                         headers=headers)
        assert ok.status_code == 303 and len(q.pending_requests()) == n, headers


def test_a_hardlink_in_a_run_directory_is_not_served(tree: Any, tmp_path: Path) -> None:
    cfg, _, run_id = tree
    out = next((tmp_path / "out" / "birds").iterdir())
    os.link(tmp_path / "secret.txt", out / "run.toml")
    client = client_for(cfg)
    assert client.get(f"/runs/{run_id}/files/run.toml").status_code == 404
    assert "run.toml" not in client.get(f"/api/runs/{run_id}").json()["files"]
    assert client.get(f"/runs/{run_id}/files/meta.json").status_code == 200


def _asgi(app: Any, scope: dict[str, Any], chunks: list[bytes]) -> tuple[int, int]:
    """Run one request through `app`: (status, how many body chunks the app pulled)."""
    pulled, status = [0], [0]

    async def receive() -> dict[str, Any]:
        n = pulled[0]
        pulled[0] += 1
        if n < len(chunks):
            return {"type": "http.request", "body": chunks[n], "more_body": n + 1 < len(chunks)}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status[0] = message["status"]

    asyncio.run(app(scope, receive, send))
    return status[0], pulled[0]


def test_a_large_body_is_refused_before_it_is_read(tree: Any) -> None:
    cfg, q, run_id = tree
    app, token = create_app(cfg), ensure_token(cfg)
    headers = [(b"host", b"127.0.0.1:8765"), (b"cookie", f"selvad_token_8765={token}".encode())]
    scope = {"type": "http", "method": "POST", "path": f"/runs/{run_id}/cancel", "raw_path": b"",
             "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
             "server": ("127.0.0.1", 8765), "client": ("127.0.0.1", 5000)}
    declared = {**scope, "headers": [*headers, (b"content-length", str(300 << 20).encode())]}
    assert _asgi(app, declared, [b"x" * 65536] * 10) == (413, 0)  # not a byte read
    chunked = {**scope, "headers": [*headers, (b"transfer-encoding", b"chunked")]}
    status, pulled = _asgi(app, chunked, [b"x" * 1024] * 1000)
    assert status == 413 and pulled <= BODY_MAX_BYTES // 1024 + 1  # stops at the limit
    assert q.pending_requests() == []


@pytest.mark.parametrize("query", ["request=" + "9" * 40, "request=%C2%B2", "request=-1",
                                   "request=1e3", "request=", "request=%00"])
def test_bad_query_values_are_400(tree: Any, query: str) -> None:
    cfg, _, run_id = tree
    client = client_for(cfg)
    for path in ("/", f"/runs/{run_id}"):
        r = client.get(f"{path}?{query}")
        assert r.status_code == 400 and "request id" in r.text, (path, query, r.status_code)
    assert client.get("/api/requests/" + "9" * 40).status_code == 400
    assert client.get("/api/requests/%C2%B2").status_code == 400


def test_concurrent_status_calls_share_one_answer(tree: Any, monkeypatch: Any) -> None:
    cfg, _, _ = tree
    client = client_for(cfg)
    from selvad.web.state import ReadOnlyState

    calls, real = [0], ReadOnlyState.status

    def counted(self: ReadOnlyState) -> dict[str, Any]:
        calls[0] += 1
        return real(self)

    monkeypatch.setattr(ReadOnlyState, "status", counted)
    codes: list[int] = []
    threads = [threading.Thread(target=lambda: codes.append(client.get("/api/status").status_code))
               for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert codes == [200] * 40 and 1 <= calls[0] <= 2, calls  # one per second at most


def test_train_now_thrice_is_one_request(tree: Any) -> None:
    cfg, q, _ = tree
    client = client_for(cfg)
    csrf = _csrf(client)
    ids = {client.post("/jobs/birds/enqueue", data={"csrf": csrf},
                       follow_redirects=False).headers["location"] for _ in range(3)}
    assert len(ids) == 1 and [r.action for r in q.pending_requests()] == ["enqueue"]
    (req,) = q.pending_requests()
    q.mark_handled(req.id, "queued 20990101-000000-aaaa")
    answer = client.get(f"/api/requests/{req.id}").json()
    assert answer == {"id": req.id, "handled": True, "result": "queued 20990101-000000-aaaa"}
    assert "queued 20990101-000000-aaaa" in client.get(f"/?request={req.id}").text
    client.post("/jobs/birds/enqueue", data={"csrf": csrf})  # answered: a new click is new
    assert len(q.pending_requests()) == 1


def test_identical_forced_runs_are_not_queued_twice(tree: Any, tmp_path: Path) -> None:
    cfg, q, run_id = tree
    run = q.get(run_id)
    assert run is not None
    again = {"job": run.job, "dataset": run.dataset, "config": run.config,
             "manifest": run.manifest}
    assert q.enqueue(**again, force=True) is None  # queued: Train now twice is one run
    q.claim(run_id, device="cpu")
    q.set_state(run_id, "training")
    assert q.enqueue(**again, force=True) is None  # running
    q.set_state(run_id, "done")
    assert q.enqueue(**again, force=True) is not None  # done: an explicit request trains again


def test_a_failed_runs_page_shows_its_whole_reason_and_worker_log(tree: Any,
                                                                   tmp_path: Path) -> None:
    cfg, q, run_id = tree
    out = next((tmp_path / "out" / "birds").iterdir())
    (out / "worker.log").write_text("Traceback (most recent call last):\nValueError: boom\n")
    reason = ("variant 'large_44k' cannot run: " + "missing weight file; " * 30
              + "fix: run `selva-weights check --variant large_44k`")
    q.claim(run_id, device="cpu")
    q.set_state(run_id, "failed", error=reason)
    client = client_for(cfg)
    page = client.get(f"/runs/{run_id}").text
    shown = page.split('id="run-error">', 1)[1].split("</p>", 1)[0]
    assert "selva-weights check --variant large_44k" in shown and len(shown) > 600
    assert f'href="/runs/{run_id}/files/worker.log"' in page
    log = client.get(f"/runs/{run_id}/files/worker.log")
    assert log.status_code == 200 and "ValueError: boom" in log.text
    assert log.headers["content-type"].startswith("text/plain")


# -- the real server: uvicorn on a free loopback port, raw sockets -------------------------

HEAD_S, IDLE_S, CAP = 1.0, 1, 6  # the server's bounds, made small for the tests (seconds, count)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str, str, Path]]:
    """The daemon's WebServer for a tree, on `127.0.0.1:0`: (cfg, url, run id, tree root)."""
    from selvad.web import server

    root = tmp_path_factory.mktemp("served")
    cfg, _, run_id = _tree(root, listen="127.0.0.1:0")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(server, "HEAD_TIMEOUT", HEAD_S)
        mp.setattr(server, "KEEP_ALIVE", IDLE_S)
        mp.setattr(server, "MAX_CONNECTIONS", CAP)
        web = server.WebServer(cfg)
        web.start()
        try:
            yield cfg, web.url, run_id, root
        finally:
            web.stop()


def _http(url: str, path: str, method: str = "GET", headers: dict[str, str] | None = None,
          body: bytes = b"") -> http.client.HTTPResponse:
    """One request to the real server (a fresh connection); the response, body read."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request(method, path, body=body or None, headers=headers or {})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def _auth(cfg: Any) -> dict[str, str]:
    return {"cookie": f"selvad_token_{_port(cfg)}={ensure_token(cfg)}"}


def _port(cfg: Any) -> int:
    url = (cfg.paths.state_dir / "web_url").read_text().strip()
    return urlsplit(url).port or 0


def _closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closed `sock` (it sends nothing first); fails after `seconds`."""
    t0 = time.monotonic()
    sock.settimeout(seconds)
    try:
        assert sock.recv(1) == b""
    except ConnectionResetError:
        pass
    return time.monotonic() - t0


def test_real_server_needs_the_token_and_logs_in_with_a_strict_cookie(served: Any) -> None:
    cfg, url, run_id, _ = served
    for path in ("/", f"/runs/{run_id}", f"/runs/{run_id}/files/meta.json", "/api/status",
                 "/static/app.js"):
        r = _http(url, path.format(id=run_id))
        assert r.status == 401, (path, r.status)
    r = _http(url, f"/runs/{run_id}?token={ensure_token(cfg)}")
    assert r.status == 303 and r.headers["location"] == f"/runs/{run_id}"
    cookie = r.headers["set-cookie"]
    assert f"={ensure_token(cfg)};" in cookie and "httponly" in cookie.lower()
    assert "samesite=strict" in cookie.lower()
    name, value = r.headers["set-cookie"].split(";", 1)[0].split("=", 1)
    for path in ("/", f"/runs/{run_id}/files/meta.json", "/api/status", "/static/app.js"):
        assert _http(url, path, headers={"cookie": f"{name}={value}"}).status == 200, path
    assert _http(url, "/api/status", headers={**_auth(cfg), "host": "evil.example"}).status == 400


def test_real_server_refuses_foreign_origins_and_hardlinks(served: Any) -> None:
    cfg, url, run_id, root = served
    q = RunQueue(cfg.paths.queue_path)
    form = {**_auth(cfg), "content-type": "application/x-www-form-urlencoded"}
    page = _http(url, "/", headers=_auth(cfg))
    assert page.status == 200
    r = _http(url, f"/runs/{run_id}/cancel", "POST", {**form, "origin": "http://evil.example"},
              b"csrf=x")
    assert r.status == 403 and q.pending_requests() == []
    out = next((root / "out" / "birds").iterdir())
    os.link(root / "secret.txt", out / "progress_copy.json")
    assert _http(url, f"/runs/{run_id}/files/progress_copy.json", headers=_auth(cfg)).status == 404


def test_real_server_refuses_a_large_body_before_reading_it(served: Any) -> None:
    cfg, url, run_id, _ = served
    parts = urlsplit(url)
    head = (f"POST /runs/{run_id}/cancel HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Cookie: selvad_token_{parts.port}={ensure_token(cfg)}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n")
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(f"{head}Content-Length: {300 << 20}\r\n\r\n".encode() + b"x" * 1024)
        assert sock.recv(4096).startswith(b"HTTP/1.1 413 ")  # 1 KiB of the 300 MiB sent
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
        chunk, sent, answer = b"400\r\n" + b"x" * 1024 + b"\r\n", 0, b""
        try:
            while not answer and sent < 1 << 20:  # 1 KiB chunks until the server answers
                sock.sendall(chunk)
                sent += 1024
                sock.settimeout(0.05)
                try:
                    answer = sock.recv(4096)
                except TimeoutError:
                    pass
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(10)
        answer = answer or sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 413 ") and sent <= 64 * 1024, (answer[:40], sent)


def test_real_server_closes_silent_slow_and_idle_connections(served: Any) -> None:
    cfg, url, _, _ = served
    parts = urlsplit(url)
    address = (parts.hostname, parts.port)
    with socket.create_connection(address) as silent:  # never sends a byte
        assert _closed_within(silent, HEAD_S + 3) >= HEAD_S * 0.9
    with socket.create_connection(address) as slow:  # a byte every 0.2 s: the head's deadline
        t0 = time.monotonic()
        with pytest.raises(OSError):
            for byte in b"GET / HTTP/1.1\r\nHost: " + b"x" * 1000:
                slow.sendall(bytes([byte]))
                time.sleep(0.2)
                assert time.monotonic() - t0 < HEAD_S + 3, "a slow head is held open"
    idle = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    idle.request("GET", "/api/status", headers=_auth(cfg))  # one request, kept alive, then none
    assert idle.getresponse().read() and idle.sock is not None
    assert _closed_within(idle.sock, IDLE_S + HEAD_S + 3) < IDLE_S + HEAD_S + 3
    idle.close()


def test_real_server_caps_open_connections(served: Any) -> None:
    cfg, url, _, _ = served
    parts = urlsplit(url)
    address = (parts.hostname, parts.port)
    held = [socket.create_connection(address) for _ in range(CAP)]
    try:
        time.sleep(0.1)  # all accepted
        extra = [socket.create_connection(address) for _ in range(3)]
        for sock in extra:  # closed at once, without an answer (long before the head timeout)
            assert _closed_within(sock, HEAD_S / 2) < HEAD_S / 2
            sock.close()
        held[0].settimeout(0.05)
        with pytest.raises(TimeoutError):  # the first ones are still open
            held[0].recv(1)
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    assert _http(url, "/api/status", headers=_auth(cfg)).status == 200  # served again
