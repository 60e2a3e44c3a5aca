"""The HTTP endpoint on a loopback port: valid answers, 4xx reasons, fallbacks, survival after garbage."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator

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
