"""What listeners see of a connection: ``MessageContext`` and its ``Session``. Sans-IO."""

from __future__ import annotations

import ssl
from typing import Any

__all__ = ["MessageContext", "Session"]

Address = tuple[Any, ...]


class Session:
    """One client connection, as far as the server knows it.

    Attributes:
        session_id: a short id, unique within the process, also used in log lines.
        peer: the client's socket address, ``(host, port)`` (longer for IPv6).
        local: the server's socket address the client connected to.
        helo: the name the client gave in HELO or EHLO, None before it did.
        esmtp: True when the client greeted with EHLO.
        ssl_object: the ``ssl.SSLObject`` of the connection once TLS is active.
        authenticated_user: the user name of a successful AUTH, else None.
    """

    __slots__ = (
        "authenticated_user",
        "esmtp",
        "helo",
        "local",
        "messages_accepted",
        "peer",
        "session_id",
        "ssl_object",
    )

    def __init__(self, session_id: str, peer: Address | None, local: Address | None) -> None:
        self.session_id = session_id
        self.peer = peer
        self.local = local
        self.helo: str | None = None
        self.esmtp = False
        self.ssl_object: ssl.SSLObject | None = None
        self.authenticated_user: str | None = None
        self.messages_accepted = 0

    @property
    def is_tls(self) -> bool:
        """True when the connection is encrypted (STARTTLS done or implicit TLS)."""
        return self.ssl_object is not None

    @property
    def tls_version(self) -> str | None:
        """The negotiated TLS version, such as ``"TLSv1.3"``, or None without TLS."""
        return self.ssl_object.version() if self.ssl_object is not None else None

    @property
    def cipher(self) -> tuple[str, str, int] | None:
        """The negotiated cipher as ``(name, protocol, secret bits)``, or None."""
        return self.ssl_object.cipher() if self.ssl_object is not None else None

    @property
    def peer_certificate(self) -> dict[str, Any] | None:
        """The client's verified certificate, when it presented one over TLS."""
        if self.ssl_object is None:
            return None
        return self.ssl_object.getpeercert() or None

    def __repr__(self) -> str:
        return f"<Session {self.session_id} peer={self.peer!r} tls={self.is_tls}>"


class MessageContext:
    """The context every listener event carries: ``context.session`` and the server."""

    __slots__ = ("server", "session")

    def __init__(self, session: Session, server: Any) -> None:
        self.session = session
        self.server = server

    def __repr__(self) -> str:
        return f"<MessageContext {self.session!r}>"
