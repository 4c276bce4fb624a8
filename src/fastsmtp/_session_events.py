"""What the sans-IO session core returns from ``step()``: decisions and requests. Sans-IO.

A module of their own so that both twins of the core (``_session``, and ``_session_c``
compiled from the same source) return instances of these very classes: the transport tells
them apart with ``isinstance``.
"""

from __future__ import annotations

from typing import Final

from ._commands import MailArguments

__all__ = [
    "CLOSE",
    "START_TLS",
    "AuthAttempt",
    "Event",
    "MailFrom",
    "MessageReceived",
    "RcptTo",
]


class MailFrom:
    """Decision event: MAIL FROM was well formed; accept or reject the reverse-path."""

    __slots__ = ("address", "arguments")

    def __init__(self, arguments: MailArguments) -> None:
        self.address = arguments.address
        self.arguments = arguments


class RcptTo:
    """Decision event: RCPT TO was well formed; accept or reject the recipient."""

    __slots__ = ("address",)

    def __init__(self, address: str) -> None:
        self.address = address


class MessageReceived:
    """Decision event: the message content arrived in full; accept or reject it."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class AuthAttempt:
    """Decision event: AUTH brought credentials; accept or reject them.

    ``password`` is for the decision alone: ``repr()`` leaves it out, and nothing logs it.
    """

    __slots__ = ("authorization_id", "mechanism", "password", "username")

    def __init__(
        self, mechanism: str, username: str, password: str, authorization_id: str | None
    ) -> None:
        self.mechanism = mechanism
        self.username = username
        self.password = password
        self.authorization_id = authorization_id

    def __repr__(self) -> str:
        return f"<AuthAttempt {self.mechanism}>"


class _Close:
    """Returned by ``step()`` once the connection must close after the pending output."""

    def __repr__(self) -> str:
        return "CLOSE"


class _StartTLS:
    """Returned by ``step()`` after STARTTLS: write the output, then do the TLS handshake."""

    def __repr__(self) -> str:
        return "START_TLS"


CLOSE: Final = _Close()
START_TLS: Final = _StartTLS()

Event = MailFrom | RcptTo | MessageReceived | AuthAttempt | _Close | _StartTLS
