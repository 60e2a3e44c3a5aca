"""The HTTP endpoint on a loopback port: valid answers, 4xx reasons, fallbacks, survival after garbage."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedrec.models.base import FALLBACK_NONE, UNKNOWN_USER
from serving.artifacts import random_bundle
from serving.http import RecommendServer, make_server, serve_in_thread
from serving.scorer import Scorer


@pytest.fixture(scope="module")
def server() -> Iterator[RecommendServer]:
    srv = make_server(Scorer(random_bundle(50, 40, 4, seed=0)), "127.0.0.1", 0, max_k=20)
    thread = serve_in_thread(srv)
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def get(server: RecommendServer, path: str, method: str = "GET") -> tuple[int, dict[str, object]]:
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(str(host), int(port), timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_health(server: RecommendServer) -> None:
    status, body = get(server, "/health")
    assert status == 200
    assert body["status"] == "ok" and body["n_items"] == 40 and body["n_users"] == 50


def test_recommend_matches_the_scorer(server: RecommendServer) -> None:
    status, body = get(server, "/recommend?user=u3&k=5")
    assert status == 200
    rec = server.scorer.recommend(["u3"], 5)
    assert [it["item_id"] for it in body["items"]] == rec.item_ids[0].tolist()  # type: ignore[attr-defined]
    assert body["fallback"] == FALLBACK_NONE and body["k"] == 5


def test_unknown_user_gets_flagged_fallback(server: RecommendServer) -> None:
    status, body = get(server, "/recommend?user=stranger")
    assert status == 200
    assert body["fallback"] == UNKNOWN_USER and len(body["items"]) == 10  # type: ignore[arg-type]


@pytest.mark.parametrize(("path", "status", "reason"), [
    ("/recommend", 400, "missing query parameter 'user'"),
    ("/recommend?user=", 400, "missing query parameter 'user'"),
    ("/recommend?user=u1&k=abc", 400, "k must be an integer"),
    ("/recommend?user=u1&k=0", 400, "k must be in [1, 20]"),
    ("/recommend?user=u1&k=21", 400, "k must be in [1, 20]"),
    ("/recommend?user=u1&user=u2", 400, "given 2 times"),
    ("/recommend?user=u1&colour=red", 400, "unknown query parameter"),
    ("/recommend?user=u1&&&==", 400, "malformed query string"),
    ("/nope", 404, "no endpoint"),
    ("/recommend?user=" + "x" * 5000, 414, "URL longer"),
])
def test_bad_requests_get_4xx_with_a_reason(server: RecommendServer, path: str, status: int,
                                            reason: str) -> None:
    got, body = get(server, path)
    assert got == status
    assert reason in str(body["error"])


def test_other_methods_are_405(server: RecommendServer) -> None:
    status, body = get(server, "/recommend?user=u1", method="POST")
    assert status == 405 and "use GET" in str(body["error"])


def test_still_serving_after_garbage(server: RecommendServer) -> None:
    host, port = server.server_address[:2]
    for junk in (b"\x00\xff garbage\r\n\r\n", b"GET /recommend?user=u1 HTTP/9.9\r\n\r\n", b"\r\n" * 3):
        with socket.create_connection((str(host), int(port)), timeout=5) as sock:
            sock.sendall(junk)
            sock.shutdown(socket.SHUT_WR)
            reply = sock.recv(4096)
            assert reply == b"" or reply.startswith((b"HTTP/1.1 400", b"HTTP/1.1 505"))
    with socket.create_connection((str(host), int(port)), timeout=5):
        pass  # a client that connects and leaves without a word
    status, body = get(server, "/recommend?user=u2&k=3")
    assert status == 200 and len(body["items"]) == 3  # type: ignore[arg-type]


# --------------------------------------------------------------------------- hardening (issue #9, defect 5)
def raw_exchange(server: RecommendServer, data: bytes, wait: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection, half-close, read everything until the server closes."""
    host, port = server.server_address[:2]
    with socket.create_connection((str(host), int(port)), timeout=wait) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_non_ascii_digit_k_is_400_not_500(server: RecommendServer) -> None:
    status, body = get(server, "/recommend?user=u1&k=%C2%B2")  # k = '²': str.isdigit() but not int()
    assert status == 400 and "k must be an integer" in str(body["error"])


@pytest.mark.parametrize("query", ["user=%FF%FE", "user=u1&k=%00", "user=u1&k=-1", "user=u1&k=1e3",
                                   "user=u1&k=99999999999999999999", "user=u1&k=", "k=%C2%B2&user=u1"])
def test_bad_queries_are_400_json(server: RecommendServer, query: str) -> None:
    status, body = get(server, "/recommend?" + query)
    assert status == 400 and isinstance(body["error"], str)


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"])
def test_other_methods_including_head_and_options_are_405(server: RecommendServer, method: str) -> None:
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(str(host), int(port), timeout=5)
    try:
        conn.request(method, "/recommend?user=u1")
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 405
        if method != "HEAD":  # a reply to HEAD has no body
            assert "use GET" in json.loads(body)["error"]
    finally:
        conn.close()


def test_an_unread_body_is_not_a_second_request(server: RecommendServer) -> None:
    smuggled = b"GET /recommend?user=u1&k=2 HTTP/1.1\r\nHost: x\r\n\r\n"
    reply = raw_exchange(server, b"POST /recommend?user=u1 HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(smuggled), smuggled))
    assert reply.count(b"HTTP/1.1 ") == 1 and reply.startswith(b"HTTP/1.1 405")


def test_a_get_with_a_body_is_refused_and_closed(server: RecommendServer) -> None:
    reply = raw_exchange(server, b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                         b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.count(b"HTTP/1.1 ") == 1 and reply.startswith(b"HTTP/1.1 400")


def test_oversized_head_is_431_and_server_lives(server: RecommendServer) -> None:
    reply = raw_exchange(server, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 431") and b'"error"' in reply
    assert get(server, "/health")[0] == 200


def test_slow_request_head_times_out_with_408() -> None:
    from serving.http_protocol import Limits

    srv = make_server(Scorer(random_bundle(5, 5, 2, seed=1)), limits=Limits(head_timeout=0.3))
    thread = serve_in_thread(srv)
    try:
        host, port = srv.server_address[:2]
        with socket.create_connection((str(host), int(port)), timeout=5) as slow, \
                socket.create_connection((str(host), int(port)), timeout=5) as idle:
            slow.sendall(b"GET /health HTTP/1.1\r\n")  # ... and never the end of the head
            assert slow.recv(4096).startswith(b"HTTP/1.1 408")
            assert idle.recv(4096) == b""  # a connection that says nothing is closed, silently
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def test_a_client_that_leaves_is_not_a_scoring_failure(server: RecommendServer,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    errors = server.n_errors
    for _ in range(5):
        host, port = server.server_address[:2]
        with socket.create_connection((str(host), int(port)), timeout=5) as sock:
            sock.sendall(b"GET /recommend?user=u1&k=5 HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    assert get(server, "/health")[0] == 200
    assert server.n_errors == errors
    assert not [r for r in caplog.records if r.levelno >= 40]


def test_200_simultaneous_new_connections_are_all_answered(server: RecommendServer) -> None:
    import threading

    host, port = server.server_address[:2]
    socks = [socket.create_connection((str(host), int(port)), timeout=10) for _ in range(200)]
    replies: list[bytes] = [b""] * len(socks)

    def talk(j: int) -> None:
        socks[j].sendall(b"GET /recommend?user=u%d&k=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                         % (j % 60))
        data = b""
        while chunk := socks[j].recv(65536):
            data += chunk
        replies[j] = data

    threads = [threading.Thread(target=talk, args=(j,)) for j in range(len(socks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    for s in socks:
        s.close()
    assert all(r.startswith(b"HTTP/1.1 200") for r in replies)


def test_shutdown_lets_the_server_stop_and_frees_the_port() -> None:
    srv = make_server(Scorer(random_bundle(5, 5, 2, seed=1)))
    thread = serve_in_thread(srv)
    assert get(srv, "/health")[0] == 200
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)
    assert not thread.is_alive()
    host, port = srv.server_address[:2]
    with pytest.raises(OSError):
        socket.create_connection((str(host), int(port)), timeout=1)


def test_fedrec_serve_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    model = random_bundle(20, 10, 2, seed=3).save(tmp_path / "bundle")
    proc = subprocess.Popen([sys.executable, "-m", "training.cli", "serve", "--model", str(model), "--port",
                             "0"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = int(line.split("http://127.0.0.1:")[1].split()[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/recommend?user=u1&k=2")
        assert conn.getresponse().status == 200
        conn.close()
        proc.send_signal(signal.SIGTERM)  # uvicorn drains, then re-raises the signal: the usual exit status
        assert proc.wait(timeout=10) in (0, -signal.SIGTERM)
        assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
    finally:
        proc.kill()
        proc.wait()


def test_over_max_connections_is_503_json() -> None:
    from serving.http_protocol import Limits

    srv = make_server(Scorer(random_bundle(5, 5, 2, seed=1)), limits=Limits(max_connections=2))
    thread = serve_in_thread(srv)
    try:
        host, port = srv.server_address[:2]
        with socket.create_connection((str(host), int(port)), timeout=5), \
                socket.create_connection((str(host), int(port)), timeout=5):
            time.sleep(0.2)  # both accepted
            reply = raw_exchange(srv, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 503") and b'"error"' in reply
        assert get(srv, "/health")[0] == 200  # the others gone: served again
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def test_garbage_is_not_logged_as_a_warning(server: RecommendServer,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    for _ in range(3):
        assert raw_exchange(server, b"\x00\x01garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
