"""The HTTP/1.1 connection of ``fedrec serve``: uvicorn's httptools protocol plus the limits it lacks.

uvicorn (an ASGI server; httptools' C parser) gives the accept loop, the listen backlog, HTTP/1.1 framing
(Content-Length and chunked bodies are consumed as the parser frames them, so an unread body is never
taken for a second request), keep-alive with an idle timeout, a concurrency limit and graceful
shutdown. It has no deadline for *receiving* a request (its keep-alive timer is reset by every byte,
so a client trickling one byte at a time holds a connection for ever) and no limit on the size of a
request head with httptools. :class:`LimitedHttpToolsProtocol` adds both, per connection:

* ``head_timeout``: from the connection's first moment (or the first byte after a reply) to the end of
  the request head; expired -> ``408`` (nothing if nothing was received) and the connection is closed;
* ``max_url`` bytes of request target -> ``414``; ``max_head`` bytes of request head -> ``431``;
  counted as the bytes arrive, before the parser buffers them;
* ``max_connections`` open connections or requests in flight -> ``503`` (uvicorn's own limit answers in
  plain text);
* every protocol-level error is a JSON ``{"error": reason}`` reply with ``Connection: close``, like the
  application's own errors (uvicorn's is plain text).

uvicorn accepts a protocol class as ``Config(http=...)``; this one overrides the parser callbacks
(``on_url``, ``on_headers_complete``) and the transport hooks (``connection_made``, ``data_received``,
``connection_lost``) of its ``HttpToolsProtocol``, and its ``send_400_response``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 414: b"URI Too Long",
            431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


@dataclass(frozen=True)
class Limits:
    """Per-connection limits (see the module docstring); defaults suit a GET-only JSON API."""

    head_timeout: float = 5.0
    max_url: int = 4096
    max_head: int = 16384
    max_connections: int = 1000  # open connections or requests in flight; beyond: 503


class _Refused(Exception):
    """Raised inside a parser callback: the parser stops and :meth:`send_400_response` replies."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with a request-head deadline and head-size limits (module docstring)."""

    limits = Limits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._refusal: tuple[int, str] | None = None

    @classmethod
    def with_limits(cls, limits: Limits) -> type[LimitedHttpToolsProtocol]:
        return type("LimitedHttpToolsProtocol", (cls,), {"limits": limits})

    # -------------------------------------------------------------- transport hooks
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio sets TCP_NODELAY only on sockets whose proto field says TCP, which a socket made by
            # socket.create_server does not; without it the reply's body waits for the client's delayed
            # ACK of its head (40 ms)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return
        if self.cycle is None or self.cycle.response_complete:  # reading a request head
            self._arm()
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_head + self.limits.max_url:
                self._refuse(431, f"request head longer than {self.limits.max_head} bytes")
                return
        super().data_received(data)

    # -------------------------------------------------------------- parser callbacks
    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > self.limits.max_url:
            self._refusal = (414, f"URL longer than {self.limits.max_url} bytes")
            raise _Refused
        super().on_url(url)

    def on_headers_complete(self) -> None:
        head, self._head_bytes = self._head_bytes, 0
        self._disarm()
        if head > self.limits.max_head + self.limits.max_url:
            self._refusal = (431, f"request head longer than {self.limits.max_head} bytes")
            raise _Refused
        limit = self.limits.max_connections
        if len(self.connections) > limit or len(self.tasks) >= limit:
            logger.warning("over %d connections or requests in flight: 503", self.limits.max_connections)
            self._refusal = (503, "server busy: too many connections; retry later")
            raise _Refused
        super().on_headers_complete()

    # -------------------------------------------------------------- replies
    def send_400_response(self, msg: str) -> None:
        status, reason = self._refusal or (400, "malformed HTTP request")
        self._refuse(status, reason)

    def _refuse(self, status: int, reason: str) -> None:
        """A JSON error reply outside the application, then close (uvicorn's request task, if any, is
        told the client is gone)."""
        self._refusal = (status, reason)
        self._disarm()
        if self.transport.is_closing():
            return
        body = json.dumps({"error": reason}).encode()
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, _REASONS[status], len(body), body))
        self.transport.close()

    # -------------------------------------------------------------- the head deadline
    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.limits.head_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or not (self.cycle is None or self.cycle.response_complete):
            return
        if self._head_bytes:
            logger.info("%s: request head not complete within %.1f s: closed", _peer(self.client),
                        self.limits.head_timeout)
            self._refuse(408, f"request head not received within {self.limits.head_timeout:g} s")
        else:
            self.transport.close()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "client"
