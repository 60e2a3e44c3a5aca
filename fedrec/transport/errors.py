"""Exceptions of the transport layer.

Every error names what it can: the peer, the protocol step, the field, and what was expected. Peer
failures are exceptions the protocol loop can catch and turn into data (a failed client in a round).
"""

from __future__ import annotations

from typing import Any


class TransportError(Exception):
    """Base class of every transport error."""


class WireError(TransportError, ValueError):
    """A message is malformed or fails validation (bad header, field, dtype, shape, frame or range).

    ``header`` is the message's :class:`~fedrec.transport.wire.Header` when the envelope itself was
    readable (so the receiver can say which step was rejected and answer with an error), else None.
    """

    header: Any = None


class MessageTooLargeError(WireError):
    """A message (or one of its parts) exceeds the configured size limits."""


class ProtocolError(TransportError):
    """A well-formed message arrived that the protocol did not expect at this step."""


class PeerError(TransportError):
    """A failure attributed to one peer during one protocol step."""

    def __init__(self, peer: str, step: str | None, detail: str) -> None:
        where = f" during step {step!r}" if step else ""
        super().__init__(f"peer {peer!r}{where}: {detail}")
        self.peer = peer
        self.step = step
        self.detail = detail


class PeerTimeoutError(PeerError, TimeoutError):
    """The peer did not send the expected message before the deadline (it may still be alive)."""


class PeerDiedError(PeerError):
    """The peer stopped sending heartbeats, closed its channel, or became unreachable."""


class RemoteError(PeerError):
    """The peer rejected a message we sent and told us why."""


class AuthenticationError(TransportError):
    """The CURVE handshake failed: the server refused our key, or the server's key is not the expected one."""


class InsecureConfigurationError(TransportError):
    """The transport would accept connections it must refuse (an allow-list that fails open)."""


class KeyFileError(TransportError):
    """A key file is missing, malformed, or has unsafe permissions."""
