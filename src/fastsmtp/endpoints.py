"""Where a server listens: ``Endpoint``, one port on one or more addresses, and its TLS mode.

A server always has its primary endpoint (the ``port`` and ``host`` options) and may have
more (``SMTPServer.add_endpoint``), such as port 465 with implicit TLS beside port 25 or 587
with STARTTLS. All of them share the server's listeners, options and connection limits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

__all__ = ["Endpoint"]


class Endpoint:
    """One listening port of a server, on one or more addresses.

    ("Listener" in fastsmtp means a function that decides on MAIL, RCPT, DATA or AUTH, so the
    places a server listens on are called endpoints.)

    Attributes:
        port: the TCP port; 0 picks a free one, shared by every address of the endpoint.
        host: the address or addresses to bind; None binds every interface.
        implicit_tls: True when TLS starts with the first byte (RFC 8314, port 465).
        starttls: whether a plain endpoint offers STARTTLS when the server has ``tls``.
    """

    __slots__ = ("_servers", "host", "implicit_tls", "port", "starttls")

    def __init__(
        self,
        port: int,
        host: str | Sequence[str] | None = None,
        *,
        implicit_tls: bool = False,
        starttls: bool = True,
    ) -> None:
        self.port = port
        self.host: str | tuple[str, ...] | None = (
            host if host is None or isinstance(host, str) else tuple(host)
        )
        self.implicit_tls = implicit_tls
        self.starttls = starttls
        self._servers: list[asyncio.Server] = []

    def __repr__(self) -> str:
        mode = "implicit TLS" if self.implicit_tls else "STARTTLS" if self.starttls else "plain"
        return f"<Endpoint port={self.port} host={self.host!r} {mode}>"

    def hosts(self) -> Sequence[str | None]:
        """The addresses to bind, one by one (``(None,)`` for every interface)."""
        host = self.host
        return (host,) if host is None or isinstance(host, str) else host

    @property
    def addresses(self) -> list[tuple[Any, ...]]:
        """Every socket address this endpoint listens on while the server runs."""
        return [sock.getsockname() for srv in self._servers for sock in srv.sockets]

    @property
    def bound_port(self) -> int:
        """The port this endpoint listens on (the one picked when ``port`` was 0).

        Raises:
            RuntimeError: if the server is not running.
        """
        addresses = self.addresses
        if not addresses:
            raise RuntimeError("the server is not running")
        port: int = addresses[0][1]
        return port
