"""The events listeners receive: ``IncomingFrom``, ``IncomingRecipient``, ``IncomingMail``.

Each carries the ``context`` of its connection and may end the listener with ``reject()`` or
``drop_connection()``, as SimpleKotlinMail's exchanges do.
"""

from __future__ import annotations

import email.policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import NoReturn, cast

from . import replies
from .context import MessageContext
from .errors import DropConnection, RejectError

__all__ = ["IncomingFrom", "IncomingMail", "IncomingMailExchange", "IncomingRecipient"]

_DEFAULT_REJECT_TEXT = "Transaction failed"


def _decision_reply(message: str | None, code: int | None) -> replies.Reply:
    if message is None and code is None:
        return replies.TRANSACTION_FAILED
    if code is not None and not (isinstance(code, int) and 400 <= code <= 599):
        # A refusal told as a success would make the client believe the opposite.
        raise ValueError(f"a refusal needs a 4xx or 5xx code, got {code!r}")
    return replies.custom_reply(554 if code is None else code, message or _DEFAULT_REJECT_TEXT)


class IncomingMailExchange:
    """What every listener event has: the ``context`` and the two ways to say no."""

    __slots__ = ("context",)

    def __init__(self, context: MessageContext) -> None:
        self.context = context

    def reject(self, message: str | None = None, code: int | None = None) -> NoReturn:
        """Refuse this command and stop the listener; the connection stays open.

        Args:
            message: the reply text; default ``Transaction failed``.
            code: the reply code; default 554. A 4xx code asks the client to retry later.
        """
        raise RejectError(_decision_reply(message, code))

    def drop_connection(self, message: str | None = None, code: int | None = None) -> NoReturn:
        """Refuse this command with a reply, then close the connection.

        Args:
            message: the reply text; default ``Transaction failed``.
            code: the reply code; default 554.
        """
        raise DropConnection(_decision_reply(message, code))


class IncomingFrom(IncomingMailExchange):
    """MAIL FROM: ``envelope_from`` is the reverse-path, ``""`` for the null sender ``<>``."""

    __slots__ = ("envelope_from",)

    def __init__(self, context: MessageContext, envelope_from: str) -> None:
        super().__init__(context)
        self.envelope_from = envelope_from

    def __repr__(self) -> str:
        return f"<IncomingFrom {self.envelope_from!r}>"


class IncomingRecipient(IncomingMailExchange):
    """RCPT TO: ``recipient`` and every recipient accepted so far including it."""

    __slots__ = ("current_recipients", "envelope_from", "recipient")

    def __init__(
        self,
        context: MessageContext,
        envelope_from: str,
        recipient: str,
        current_recipients: tuple[str, ...],
    ) -> None:
        super().__init__(context)
        self.envelope_from = envelope_from
        self.recipient = recipient
        self.current_recipients = current_recipients

    def __repr__(self) -> str:
        return f"<IncomingRecipient {self.recipient!r}>"


class IncomingMail(IncomingMailExchange):
    """End of DATA: the envelope and the message, exactly as received.

    Attributes:
        envelope_from: the reverse-path, ``""`` for ``<>``.
        recipients: the accepted recipients, in order.
        data: the message bytes, dot-unstuffed, with their original line endings.
    """

    __slots__ = ("_email", "data", "envelope_from", "recipients", "response_text")

    def __init__(
        self,
        context: MessageContext,
        envelope_from: str,
        recipients: tuple[str, ...],
        data: bytes,
    ) -> None:
        super().__init__(context)
        self.envelope_from = envelope_from
        self.recipients = recipients
        self.data = data
        self.response_text: str | None = None
        self._email: EmailMessage | None = None

    @property
    def email(self) -> EmailMessage:
        """The message parsed with ``email.policy.default``, on first access only."""
        if self._email is None:
            parser = BytesParser(policy=email.policy.default)
            self._email = cast(EmailMessage, parser.parsebytes(self.data))
        return self._email

    def respond_text(self, text: str) -> None:
        """Answer the accepted message with ``250 <text>`` instead of ``250 Ok``."""
        if not isinstance(text, str):
            raise TypeError(f"respond_text() takes a str, got {type(text).__name__}")
        self.response_text = text

    def too_much_data(self, message: str | None = None) -> NoReturn:
        """Refuse the message as too large: ``552 5.3.4``, a permanent failure."""
        if message is None:
            raise RejectError(replies.TOO_MUCH_DATA)
        raise RejectError(replies.custom_reply(552, message, "5.3.4"))

    def __repr__(self) -> str:
        return f"<IncomingMail from={self.envelope_from!r} size={len(self.data)}>"
