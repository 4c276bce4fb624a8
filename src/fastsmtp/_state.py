"""Where an SMTP dialogue stands (RFC 5321 §4.1.4), and nothing else. Sans-IO."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["CLOSED", "DATA", "GREETED", "MAIL", "RCPT", "READY", "SessionState"]


class SessionState(IntEnum):
    """The states of one connection, in the order a transaction moves through them."""

    GREETED = 0  # the 220 greeting was sent; HELO or EHLO must come first
    READY = 1  # identified by HELO/EHLO, no transaction open
    MAIL = 2  # MAIL FROM accepted, no recipient yet
    RCPT = 3  # at least one recipient accepted
    DATA = 4  # reading message content up to the end marker
    CLOSED = 5  # QUIT, a dropped connection or a fatal error: nothing more is read

    @property
    def in_transaction(self) -> bool:
        """True from MAIL FROM until the transaction ends."""
        return SessionState.MAIL <= self <= SessionState.DATA


# The members again as module globals, for the per-command path: on Python 3.11 every
# ``SessionState.X`` goes through ``EnumType.__getattr__`` (about 70 ns, some 40 times a
# message); a global is a dictionary lookup. They are the very members: ``is`` holds.
GREETED = SessionState.GREETED
READY = SessionState.READY
MAIL = SessionState.MAIL
RCPT = SessionState.RCPT
DATA = SessionState.DATA
CLOSED = SessionState.CLOSED
