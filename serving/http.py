"""Online recommendations over HTTP/JSON (``fedrec serve``), on the standard library's ThreadingHTTPServer.

Endpoints (GET only; HTTP/1.1 keep-alive):

* ``/health`` -> ``{"status": "ok", "kind", "n_users", "n_items", "n_factors", "host_partials"}``
* every reply carries ``X-Server-Time-Ms`` (request parsed -> reply ready) for latency accounting;
* ``/recommend?user=ID&k=K`` -> ``{"user", "k", "fallback", "items": [{"item_id", "score"}, ...]}``
  (``k`` defaults to 10, at most ``--max-k``); ``fallback`` is ``none``, ``no_host_partial`` or
  ``unknown_user`` (ranked by the model's item scores) as in :mod:`serving.scorer`: an unknown user
  is answered, flagged.

Errors are JSON ``{"error": reason}``: 400 for a missing/duplicated/unknown parameter or a bad ``k``,
404 for another path, 405 for another method, 414 for an over-long request line, 500 (logged) if
scoring fails. A bad request never stops the server. Bind to ``127.0.0.1`` unless it sits behind a
gateway: there is no authentication.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from serving.scorer import Scorer

EPILOG = """examples:
  fedrec serve --model artifacts/bundle --port 8080
  fedrec serve --model artifacts/guest_bundle --host-partials host_partials.parquet --port 8080
  curl 'http://127.0.0.1:8080/recommend?user=42&k=5'
"""

logger = logging.getLogger(__name__)
MAX_URL = 4096
_ALLOWED_PARAMS = {"user", "k"}


class RecommendServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that holds the :class:`Scorer` and the request limits."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], scorer: Scorer, max_k: int = 100) -> None:
        super().__init__(address, RecommendHandler)
        self.scorer = scorer
        self.max_k = min(max_k, scorer.n_items)
        self.n_requests = 0
        self.n_errors = 0
        self._lock = threading.Lock()

    def count(self, error: bool) -> None:
        with self._lock:
            self.n_requests += 1
            self.n_errors += int(error)


class BadRequest(Exception):
    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class RecommendHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # so replies to unparsable request lines carry a status line
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms delayed-ACK stall
    server: RecommendServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        logger.debug("%s %s", self.address_string(), format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level errors (garbage, bad request line, over-long headers) as JSON; then close."""
        self.close_connection = True
        status = HTTPStatus(code)
        self._send(status, {"error": message or status.phrase}, close=True)

    def _send(self, status: HTTPStatus, body: dict[str, Any], close: bool = False) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        started = getattr(self, "_started", None)
        if started is not None:  # time from parsed request to reply, for latency accounting
            self.send_header("X-Server-Time-Ms", f"{(time.perf_counter() - started) * 1e3:.3f}")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.server.count(error=status >= 400)

    def _params(self, query: str) -> tuple[str, int]:
        try:
            params = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query),
                              max_num_fields=8)
        except ValueError as exc:
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"malformed query string: {exc}") from exc
        unknown = sorted(set(params) - _ALLOWED_PARAMS)
        if unknown:
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"unknown query parameter(s) {unknown}; "
                                                     f"allowed: user, k")
        for name, values in params.items():
            if len(values) > 1:
                raise BadRequest(HTTPStatus.BAD_REQUEST,
                                 f"query parameter {name!r} given {len(values)} times")
        user = params.get("user", [""])[0].strip()
        if not user:
            raise BadRequest(HTTPStatus.BAD_REQUEST, "missing query parameter 'user'")
        k_text = params.get("k", ["10"])[0].strip()
        if not k_text.isdigit():
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"k must be an integer in [1, {self.server.max_k}], "
                                                     f"got {k_text!r}")
        k = int(k_text)
        if not 1 <= k <= self.server.max_k:
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"k must be in [1, {self.server.max_k}], got {k}")
        return user, k

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self._started = time.perf_counter()
        if len(self.path) > MAX_URL:
            self._send(HTTPStatus.REQUEST_URI_TOO_LONG, {"error": f"URL longer than {MAX_URL} bytes"})
            return
        parts = urlsplit(self.path)
        try:
            if parts.path == "/health":
                self._send(HTTPStatus.OK, self._health())
            elif parts.path == "/recommend":
                user, k = self._params(parts.query)
                self._send(HTTPStatus.OK, self._recommend(user, k))
            else:
                raise BadRequest(HTTPStatus.NOT_FOUND, f"no endpoint {parts.path!r}; use /recommend or "
                                                       "/health")
        except BadRequest as exc:
            self._send(exc.status, {"error": exc.reason})
        except Exception:  # the server must survive anything a request triggers
            logger.exception("scoring failed for %r", self.path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error while scoring"})

    def _not_allowed(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"method {self.command} not allowed; use GET"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed  # noqa: N815

    def _health(self) -> dict[str, Any]:
        s = self.server.scorer
        return {"status": "ok", "kind": s.bundle.kind, "n_users": len(s.bundle.user_map),
                "n_items": s.n_items, "n_factors": s.bundle.n_factors,
                "host_partials": s.host_report.get("joined", 0)}

    def _recommend(self, user: str, k: int) -> dict[str, Any]:
        rec = self.server.scorer.recommend([user], k)
        items = [{"item_id": _plain(i), "score": float(v)}
                 for i, v in zip(rec.item_ids[0].tolist(), rec.scores[0].tolist(), strict=True)
                 if v != float("-inf")]
        return {"user": user, "k": k, "fallback": str(rec.fallback[0]), "items": items}


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def make_server(scorer: Scorer, host: str = "127.0.0.1", port: int = 0, max_k: int = 100) -> RecommendServer:
    """A bound (not yet serving) server; ``port=0`` picks a free port (``server.server_address``)."""
    return RecommendServer((host, port), scorer, max_k=max_k)


def serve_in_thread(server: RecommendServer) -> threading.Thread:
    """Run ``server.serve_forever`` in a daemon thread (stop with ``server.shutdown()``)."""
    thread = threading.Thread(target=server.serve_forever, name="fedrec-serve", daemon=True)
    thread.start()
    return thread


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True,
                   help="serving bundle directory (serving.json) or saved fedrec model (meta.json)")
    p.add_argument("--host-partials", type=Path, default=None,
                   help="host per-user partials (CSV/Parquet) for a vertical bundle")
    p.add_argument("--port", type=int, required=True, help="TCP port (0 = any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    p.add_argument("--max-k", type=int, default=100, help="largest k a request may ask for (100)")
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch threads per request (1: one request is one small matmul; more threads only "
                        "add hand-off latency, concurrency comes from the request threads)")


def run(args: argparse.Namespace) -> int:
    import sys

    import torch

    from serving.artifacts import ArtifactError, read_host_partials
    from serving.export import load_serving_bundle

    torch.set_num_threads(max(1, args.torch_threads))
    try:
        bundle = load_serving_bundle(args.model)
        partials = None if args.host_partials is None else read_host_partials(args.host_partials,
                                                                               bundle.n_factors)
        server = make_server(Scorer(bundle, partials), args.host, args.port, args.max_k)
    except (ArtifactError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    print(f"serving {bundle.kind} bundle ({len(bundle.user_map)} users x {len(bundle.item_map)} items) on "
          f"http://{host!s}:{port} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
