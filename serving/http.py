"""Online recommendations over HTTP/JSON (``fedrec serve``): a small ASGI application on uvicorn.

Endpoints (GET only; HTTP/1.1 keep-alive):

* ``/health`` -> ``{"status": "ok", "kind", "n_users", "n_items", "n_factors", "score_kind",
  "host_partials"}``
* ``/recommend?user=ID&k=K`` -> ``{"user", "k", "fallback", "score_kind", "items": [{"item_id",
  "score"}, ...]}`` (``k`` defaults to 10, at most ``--max-k``); ``fallback`` is ``none``,
  ``no_host_partial`` or ``unknown_user`` (ranked by the model's item scores) as in
  :mod:`serving.scorer`: an unknown user is answered, flagged. ``item_id`` is text and ``score`` is
  what ``score_kind`` says (``predicted_rating`` clipped to the rating scale, ``probability``,
  ``ranking_score``), as in the files ``fedrec recommend`` writes.
* every reply carries ``X-Server-Time-Ms`` (request parsed -> reply ready) for latency accounting.

Errors are JSON ``{"error": reason}``: 400 for a missing/duplicated/unknown parameter, a bad ``k`` or a
query that is not valid percent-encoded UTF-8, 404 for another path, 405 for another method (HEAD and
OPTIONS included), 408 for a request head not received within ``--head-timeout`` seconds, 414 for a URL
over 4096 bytes, 431 for a request head over 16 KiB, 503 beyond ``--max-connections``, 500 (logged) if
scoring fails. A request carrying a body is answered (405 or 400) and its connection closed. A bad
request never stops the server; a client that leaves before its reply is not an error.

Server: uvicorn with httptools (:mod:`serving.http_protocol` adds the head deadline and size limits),
listen backlog ``--backlog``, idle keep-alive connections closed after 5 s, graceful shutdown on
SIGINT/SIGTERM (in-flight replies finish, at most 5 s). Concurrent requests are scored together: one
scorer call per batch of waiting requests (:class:`BatchScorer`), so a burst of connections costs a
few matrix products rather than one per request. Bind to ``127.0.0.1`` (the default)
unless it sits behind an authenticating gateway: there is no authentication.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from serving.http_protocol import LimitedHttpToolsProtocol, Limits
from serving.scorer import Scorer

EPILOG = """examples:
  fedrec serve --model artifacts/bundle --port 8080
  fedrec serve --model artifacts/guest_bundle --host-partials host_partials.parquet --port 8080
  curl 'http://127.0.0.1:8080/recommend?user=42&k=5'
"""

logger = logging.getLogger(__name__)
MAX_URL = 4096
MAX_BATCH = 512
_ALLOWED_PARAMS = {"user", "k"}
_K = re.compile(r"[0-9]{1,6}")

Scope = dict[str, Any]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


class BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class BatchScorer:
    """Scores the requests that wait together: one :meth:`Scorer.recommend` per distinct ``k`` for every
    request that reached the application in the same event-loop turn.

    A request schedules a flush with ``call_soon``, which runs after every callback already queued, i.e.
    after the other connections that became readable in this turn were parsed and reached here; the
    flush scores them in one matrix product, in the event loop's thread (a scoring thread would fight
    the loop for the GIL at every torch call and lose milliseconds each time). Alone, a request is scored
    at once; a burst of 200 costs one batch of 200 rather than 200 calls."""

    def __init__(self, scorer: Scorer, max_batch: int = MAX_BATCH) -> None:
        self.scorer = scorer
        self.max_batch = max_batch
        self._pending: list[tuple[str, int, asyncio.Future[dict[str, Any]]]] = []
        self._scheduled = False

    async def recommend(self, user: str, k: int) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending.append((user, k, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), self.max_batch):
            batch = [(u, k, f) for u, k, f in pending[start:start + self.max_batch] if not f.done()]
            for (_, _, fut), res in zip(batch, self._score([(u, k) for u, k, _ in batch]), strict=True):
                if isinstance(res, Exception):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)

    def _score(self, requests: list[tuple[str, int]]) -> list[dict[str, Any] | Exception]:
        out: list[dict[str, Any] | Exception] = [{}] * len(requests)
        by_k: dict[int, list[int]] = {}
        for j, (_, k) in enumerate(requests):
            by_k.setdefault(k, []).append(j)
        for k, rows in by_k.items():
            payloads: list[dict[str, Any] | Exception]
            try:
                payloads = list(self._payloads([requests[j][0] for j in rows], k))
            except Exception:  # noqa: BLE001 - one bad request must not fail the others: alone, each
                payloads = [self._one(requests[j][0], k) for j in rows]
            for j, p in zip(rows, payloads, strict=True):
                out[j] = p
        return out

    def _one(self, user: str, k: int) -> dict[str, Any] | Exception:
        try:
            payload: dict[str, Any] | Exception = self._payloads([user], k)[0]
        except Exception as exc:  # noqa: BLE001 - reported as this request's failure
            payload = exc
        return payload

    def _payloads(self, users: list[str], k: int) -> list[dict[str, Any]]:
        rec = self.scorer.recommend(users, k)
        # item ids as text and scores as reported, exactly as `fedrec recommend` writes them (issue #13)
        assert rec.item_keys is not None
        ids, scores = rec.item_keys.tolist(), rec.reported_scores().tolist()
        return [{"user": u, "k": k, "fallback": str(fb), "score_kind": rec.score_kind,
                 "items": [{"item_id": i, "score": s} for i, s in zip(ii, ss, strict=True)
                           if s != float("-inf")]}
                for u, fb, ii, ss in zip(users, rec.fallback.tolist(), ids, scores, strict=True)]


class RecommendApp:
    """The ASGI application (no framework: two GET routes and JSON errors)."""

    def __init__(self, scorer: Scorer, max_k: int = 100) -> None:
        self.scorer = scorer
        self.max_k = min(max_k, scorer.n_items)
        self.batch = BatchScorer(scorer)
        self.n_requests = 0
        self.n_errors = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off; nothing else is served
            return
        started = time.perf_counter()
        close = _has_body(scope["headers"])
        try:
            status, body = 200, await self._route(scope, close)
        except BadRequest as exc:
            status, body = exc.status, {"error": exc.reason}
        except Exception:  # the server must survive anything a request triggers
            logger.exception("scoring failed for %s?%s", scope.get("path"),
                             scope.get("query_string", b"")[:200])
            status, body = 500, {"error": "internal error while scoring"}
        self.n_requests += 1
        self.n_errors += int(status >= 400)
        data = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data)),
                   (b"x-server-time-ms", b"%.3f" % ((time.perf_counter() - started) * 1e3))]
        if close:  # its body is not read: no keep-alive after it
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def _route(self, scope: Scope, has_body: bool) -> dict[str, Any]:
        method, path = scope["method"], scope["path"]
        if method != "GET":
            raise BadRequest(405, f"method {method} not allowed; use GET")
        if has_body:
            raise BadRequest(400, "a GET request carries no body")
        if path == "/health":
            return self._health()
        if path == "/recommend":
            user, k = self._params(scope["query_string"])
            return await self.batch.recommend(user, k)
        raise BadRequest(404, f"no endpoint {path[:100]!r}; use /recommend or /health")

    def _params(self, query: bytes) -> tuple[str, int]:
        try:
            text = query.decode("ascii")
            params = parse_qs(text, keep_blank_values=True, strict_parsing=bool(text), max_num_fields=8,
                              errors="strict")
        except (ValueError, UnicodeError) as exc:
            raise BadRequest(400, f"malformed query string: {str(exc)[:200]}") from exc
        unknown = sorted(set(params) - _ALLOWED_PARAMS)
        if unknown:
            raise BadRequest(400, f"unknown query parameter(s) {[u[:40] for u in unknown[:5]]}; "
                                  "allowed: user, k")
        for name, values in params.items():
            if len(values) > 1:
                raise BadRequest(400, f"query parameter {name!r} given {len(values)} times")
        user = params.get("user", [""])[0].strip()
        if not user:
            raise BadRequest(400, "missing query parameter 'user'")
        k_text = params.get("k", ["10"])[0].strip()
        if not _K.fullmatch(k_text):
            raise BadRequest(400, f"k must be an integer in [1, {self.max_k}], got {k_text[:20]!r}")
        k = int(k_text)
        if not 1 <= k <= self.max_k:
            raise BadRequest(400, f"k must be in [1, {self.max_k}], got {k}")
        return user, k

    def _health(self) -> dict[str, Any]:
        s = self.scorer
        return {"status": "ok", "kind": s.bundle.kind, "n_users": len(s.bundle.user_map),
                "n_items": s.n_items, "n_factors": s.bundle.n_factors, "score_kind": s.bundle.score_kind,
                "host_partials": s.host_report.get("joined", 0)}


def _quiet_malformed(record: logging.LogRecord) -> bool:
    """uvicorn logs every unparsable request at WARNING; a hostile client would fill the log with them.
    They are answered 400 (JSON) by :mod:`serving.http_protocol`; logged here at DEBUG."""
    if record.getMessage().startswith("Invalid HTTP request"):
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger("uvicorn.error").isEnabledFor(logging.DEBUG)
    return True


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"0", b"")):
            return True
    return False


class RecommendServer:
    """A bound (not yet serving) ``fedrec serve``: the listening socket, the app and the uvicorn server.

    ``serve_forever()`` runs it (graceful stop on SIGINT/SIGTERM in the main thread, or ``shutdown()``
    from another thread); ``server_address`` is the bound ``(host, port)``."""

    def __init__(self, address: tuple[str, int], scorer: Scorer, max_k: int = 100, *, backlog: int = 2048,
                 max_connections: int = 1000, keep_alive: float = 5.0, limits: Limits | None = None) -> None:
        import uvicorn

        self.app = RecommendApp(scorer, max_k)
        self.scorer = scorer
        self.max_k = self.app.max_k
        self.limits = limits or Limits(max_url=MAX_URL, max_connections=max_connections)
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.create_server((host, port), family=family, backlog=backlog)
        self.server_address: tuple[str, int] = self.socket.getsockname()[:2]
        config = uvicorn.Config(self.app, http=LimitedHttpToolsProtocol.with_limits(self.limits), ws="none",
                                lifespan="off", interface="asgi3", loop="asyncio", access_log=False,
                                log_config=None, server_header=False, backlog=backlog,
                                timeout_keep_alive=int(max(1, keep_alive)),
                                timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._stopped = threading.Event()
        logging.getLogger("uvicorn.error").addFilter(_quiet_malformed)

    @property
    def n_requests(self) -> int:
        return self.app.n_requests

    @property
    def n_errors(self) -> int:
        return self.app.n_errors

    def serve_forever(self) -> None:
        self._stopped.clear()
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting, let in-flight replies finish, return when the server has stopped."""
        self._server.should_exit = True
        self._stopped.wait(timeout)

    def server_close(self) -> None:
        self.socket.close()


def make_server(scorer: Scorer, host: str = "127.0.0.1", port: int = 0, max_k: int = 100,
                **options: Any) -> RecommendServer:
    """A bound (not yet serving) server; ``port=0`` picks a free port (``server.server_address``)."""
    return RecommendServer((host, port), scorer, max_k=max_k, **options)


def serve_in_thread(server: RecommendServer) -> threading.Thread:
    """Run ``server.serve_forever`` in a daemon thread (stop with ``server.shutdown()``)."""
    thread = threading.Thread(target=server.serve_forever, name="fedrec-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server._server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    return thread


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True,
                   help="serving bundle directory (serving.json) or saved fedrec model (meta.json)")
    p.add_argument("--host-partials", action="append", default=None, metavar="[HOST=]PATH",
                   help="host per-user partials (CSV/Parquet) for a vertical bundle; a multi-host model: "
                        "once per host as HOST=PATH")
    p.add_argument("--port", type=int, required=True, help="TCP port (0 = any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1; there is no "
                   "authentication: anything else belongs behind an authenticating gateway)")
    p.add_argument("--max-k", type=int, default=100, help="largest k a request may ask for (100)")
    p.add_argument("--backlog", type=int, default=2048, help="listen backlog (2048)")
    p.add_argument("--max-connections", type=int, default=1000,
                   help="open connections + requests in flight before answering 503 (1000)")
    p.add_argument("--head-timeout", type=float, default=5.0,
                   help="seconds to receive a request head before 408 and close (5)")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch threads for scoring (1: concurrent requests are batched instead)")


def run(args: argparse.Namespace) -> int:
    import sys

    import torch

    from serving.artifacts import ArtifactError, host_partials_arg
    from serving.export import load_serving_bundle

    torch.set_num_threads(max(1, args.torch_threads))
    try:
        if not 1 <= args.port <= 65535 and args.port != 0:
            raise ValueError(f"--port must be in [0, 65535], got {args.port}")
        bundle = load_serving_bundle(args.model)
        partials = host_partials_arg(args.host_partials, bundle.host_width)
        server = make_server(Scorer(bundle, partials), args.host, args.port, args.max_k, backlog=args.backlog,
                             max_connections=args.max_connections,
                             limits=Limits(head_timeout=args.head_timeout, max_url=MAX_URL,
                                           max_connections=args.max_connections))
    except (ArtifactError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # the model's ~10^5 id objects never die: kept out of the collector's full collections, which a burst
    # of connections triggers (bursts of 200 new connections: 200-480 ms outliers without this, none with)
    gc.collect()
    gc.freeze()
    host, port = server.server_address[:2]
    if not _loopback(str(host)):
        logger.warning("serving on %s, not a loopback address: fedrec serve has no authentication; put it "
                       "behind an authenticating gateway", host)
    print(f"serving {bundle.kind} bundle ({len(bundle.user_map)} users x {len(bundle.item_map)} items) on "
          f"http://{host!s}:{port} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
