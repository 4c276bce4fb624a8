"""SMTP authentication (RFC 4954): the event an ``auth_listener`` receives.

The session collects the credentials of AUTH PLAIN (RFC 4616) or AUTH LOGIN; the listener
decides. Returning accepts them (``235 2.7.0``); ``reject()`` refuses them with
``535 5.7.8``. The password is in the event for the listener alone: it is never logged and
never shown by ``repr()``.
"""

from __future__ import annotations

from typing import NoReturn

from . import replies
from .context import MessageContext
from .errors import DropConnection, RejectError
from .events import IncomingMailExchange

__all__ = ["MECHANISMS", "IncomingAuth"]

#: The mechanisms the server offers, in the order EHLO lists them.
MECHANISMS = ("PLAIN", "LOGIN")


def _auth_reply(message: str | None, code: int | None) -> replies.Reply:
    if message is None and code is None:
        return replies.AUTH_FAILED
    if code is not None and not (isinstance(code, int) and 400 <= code <= 599):
        raise ValueError(f"a refusal needs a 4xx or 5xx code, got {code!r}")
    code = 535 if code is None else code
    enhanced = "5.7.8" if code == 535 else None
    return replies.custom_reply(code, message or replies.AUTH_FAILED.text, enhanced)


class IncomingAuth(IncomingMailExchange):
    """AUTH: a client offers credentials; the listener accepts them by returning.

    Attributes:
        mechanism: "PLAIN" or "LOGIN".
        username: the user name (PLAIN's authentication identity), decoded as UTF-8.
        password: the password, decoded as UTF-8.
        authorization_id: PLAIN's authorization identity when the client gave one that
            differs from ``username`` (acting as another user), else None.
    """

    __slots__ = ("authorization_id", "mechanism", "password", "username")

    def __init__(
        self,
        context: MessageContext,
        mechanism: str,
        username: str,
        password: str,
        authorization_id: str | None = None,
    ) -> None:
        super().__init__(context)
        self.mechanism = mechanism
        self.username = username
        self.password = password
        self.authorization_id = authorization_id

    def reject(self, message: str | None = None, code: int | None = None) -> NoReturn:
        """Refuse the credentials and stop the listener; the client may try again.

        Args:
            message: the reply text; default ``Authentication credentials invalid``.
            code: the reply code; default 535 (with ``5.7.8``).
        """
        raise RejectError(_auth_reply(message, code))

    def drop_connection(self, message: str | None = None, code: int | None = None) -> NoReturn:
        """Refuse the credentials, then close the connection.

        Args:
            message: the reply text; default ``Authentication credentials invalid``.
            code: the reply code; default 535 (with ``5.7.8``).
        """
        raise DropConnection(_auth_reply(message, code))

    def __repr__(self) -> str:
        # Never the password; the user name is personal data too, so not that either.
        return f"<IncomingAuth {self.mechanism}>"
