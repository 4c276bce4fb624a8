"""Exceptions of fastsmtp. Protocol-level ones carry the reply the client gets."""

from __future__ import annotations

from .replies import Reply

__all__ = ["CommandError", "DropConnection", "FastSMTPError", "RejectError"]


class FastSMTPError(Exception):
    """Base class of the exceptions fastsmtp raises on purpose."""


class CommandError(FastSMTPError):
    """A command the session refuses; ``reply`` is what the client is told."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


class RejectError(FastSMTPError):
    """Raised by ``reject()`` in a listener: the command fails with ``reply``.

    Listeners may raise it themselves; it is what ``reject()`` does.
    """

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


class DropConnection(RejectError):
    """Raised by ``drop_connection()``: ``reply`` is sent, then the connection closes."""
