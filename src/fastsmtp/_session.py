"""The sans-IO SMTP session: bytes in, replies and events out.

No sockets, no asyncio, no listeners are called from here. The transport layer feeds what
it receives, calls ``step()`` until it returns None, writes ``take_output()``, and answers each
decision event (``MailFrom``, ``RcptTo``, ``MessageReceived``) with ``accept()`` or
``reject()`` before stepping again. Holding the input until then is what keeps the replies
to pipelined commands (RFC 2920) in order.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Final

from . import replies
from ._commands import MailArguments, parse_mail, parse_rcpt
from ._state import SessionState
from .context import Session
from .errors import CommandError
from .replies import Reply

__all__ = [
    "CLOSE",
    "MailFrom",
    "MessageReceived",
    "RcptTo",
    "SessionConfig",
    "SessionCore",
]


class SessionConfig:
    """Everything a session needs from the server, computed once per server start."""

    __slots__ = (
        "bare_line_endings",
        "decide_mail_from",
        "decide_rcpt_to",
        "ehlo_reply",
        "greeting",
        "helo_reply",
        "hostname",
        "max_errors",
        "max_line_length",
        "max_message_size",
        "max_recipients",
        "preferred_max_message_size",
    )

    def __init__(
        self,
        hostname: str,
        max_recipients: int = 1000,
        max_message_size: int = 32 * 1024 * 1024,
        preferred_max_message_size: int | None = None,
        max_line_length: int = 4096,
        decide_mail_from: bool = False,
        decide_rcpt_to: bool = False,
        max_errors: int = 20,
        bare_line_endings: str = "keep",
    ) -> None:
        self.hostname = hostname
        self.max_recipients = max_recipients
        self.max_message_size = max_message_size
        self.preferred_max_message_size = preferred_max_message_size
        self.max_line_length = max_line_length
        self.decide_mail_from = decide_mail_from
        self.decide_rcpt_to = decide_rcpt_to
        self.max_errors = max_errors
        if bare_line_endings not in BARE_LINE_ENDINGS:
            raise ValueError(f"bare_line_endings must be one of {BARE_LINE_ENDINGS}")
        self.bare_line_endings = bare_line_endings

        self.greeting = Reply(220, None, f"{hostname} ESMTP fastsmtp").wire
        self.helo_reply = Reply(250, None, hostname).wire
        keywords = [hostname, "8BITMIME"]
        if preferred_max_message_size:
            # RFC 1870: the SIZE keyword announces the limit a client should respect.
            keywords.append(f"SIZE {preferred_max_message_size}")
        keywords += ["PIPELINING", "SMTPUTF8", "ENHANCEDSTATUSCODES"]
        self.ehlo_reply = Reply(250, None, *keywords).wire

    @property
    def declared_size_limit(self) -> int:
        """The largest SIZE= a client may declare at MAIL FROM."""
        if self.preferred_max_message_size:
            return min(self.preferred_max_message_size, self.max_message_size)
        return self.max_message_size


# What to do with a message whose content holds a CR or LF outside a CRLF pair.
BARE_LINE_ENDINGS = ("keep", "reject", "normalize")


def normalize_line_endings(data: bytes) -> bytes:
    """Return ``data`` with every bare CR and bare LF turned into CRLF."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


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


class _Close:
    """Returned by ``step()`` once the connection must close after the pending output."""

    def __repr__(self) -> str:
        return "CLOSE"


CLOSE: Final = _Close()

Event = MailFrom | RcptTo | MessageReceived | _Close


class SessionCore:
    """One connection's SMTP dialogue, independent of any transport."""

    def __init__(self, config: SessionConfig, wire: ModuleType, session: Session) -> None:
        self.config = config
        self.session = session
        self.state = SessionState.GREETED
        self.envelope_from: str | None = None
        self.mail_arguments: MailArguments | None = None
        self.recipients: list[str] = []
        self.pending: MailFrom | RcptTo | MessageReceived | None = None
        self.close_reason = ""
        self.errors = 0
        self.data_phases = 0  # how many DATA phases began, so a transport can time each
        self._stop_when_idle = False

        self._wire = wire
        self._reader = wire.WireReader(config.max_line_length)
        self._split = wire.split_command
        self._classify = wire.classify_command
        self._out: list[bytes] = []
        self._verb = b""
        # Told of every refused command (verb and reply, never arguments), if set.
        self.on_refuse: Callable[[bytes, Reply], None] | None = None

    def __repr__(self) -> str:
        return f"<SessionCore {self.session.session_id} {self.state.name}>"

    # Transport-facing API

    def greeting(self) -> bytes:
        """Return the 220 greeting to send when the connection opens."""
        return self.config.greeting

    def feed(self, data: bytes) -> None:
        """Take bytes received from the client; nothing is parsed until ``step()``."""
        if self.state is not SessionState.CLOSED:
            self._reader.feed(data)

    def step(self) -> Event | None:
        """Process buffered input until a decision is needed, input runs out or it closes.

        Returns None when more input is needed, ``CLOSE`` when the connection must close
        once the output is written, or a decision event to answer with ``accept()`` or
        ``reject()``. Replies produced along the way wait in ``take_output()``.
        """
        if self.pending is not None:
            raise RuntimeError(f"step() with {type(self.pending).__name__} undecided")
        reader = self._reader
        while True:
            if self.state is SessionState.CLOSED:
                return CLOSE
            if self._stop_when_idle and self.state < SessionState.MAIL:
                self.close(replies.SHUTTING_DOWN, "server shutting down")
                return CLOSE

            if self.state is SessionState.DATA:
                if not reader.read_data():
                    return None
                event = self._on_data_end()
            else:
                try:
                    line = reader.next_line()
                except self._wire.LineTooLong:
                    self._verb = b""
                    self._protocol_error(replies.LINE_TOO_LONG)
                    continue
                if line is None:
                    return None
                event = self._on_line(line)

            if event is not None:
                return event

    def buffered(self) -> int:
        """Return how many received octets wait to be processed."""
        return self._reader.buffered()

    def take_output(self) -> bytes:
        """Return the replies produced so far, in order, and forget them."""
        out = self._out
        if not out:
            return b""
        self._out = []
        return out[0] if len(out) == 1 else b"".join(out)

    def accept(self, text: str | None = None) -> None:
        """Resolve the pending decision positively; ``text`` replaces the default 250 text."""
        event = self.pending
        self.pending = None
        if isinstance(event, MailFrom):
            self._open_transaction(event.arguments)
            self._out.append(replies.SENDER_OK.wire)
        elif isinstance(event, RcptTo):
            self.recipients.append(event.address)
            self.state = SessionState.RCPT
            self._out.append(replies.RECIPIENT_OK.wire)
        elif isinstance(event, MessageReceived):
            self.session.messages_accepted += 1
            self._end_transaction()
            if text:
                self._out.append(replies.custom_reply(250, text, "2.0.0").wire)
            else:
                self._out.append(replies.MESSAGE_ACCEPTED.wire)
        else:
            raise RuntimeError("accept() without a pending decision")  # noqa: TRY004

    def reject(self, reply: Reply, close: bool = False) -> None:
        """Resolve the pending decision negatively with ``reply``; optionally close after it.

        A rejected recipient is not added; a rejected message ends its transaction, so the
        next MAIL needs no RSET.
        """
        event = self.pending
        self.pending = None
        if event is None:
            raise RuntimeError("reject() without a pending decision")
        if isinstance(event, MessageReceived):
            self._end_transaction()
            self._verb = b"DATA"
        else:
            self._verb = b"MAIL" if isinstance(event, MailFrom) else b"RCPT"
        self._refuse(reply)
        # RFC 5321 §3.8: 421 means the server closes the channel, whoever chose the code.
        if close or reply.code == 421:
            self.close(reason="dropped by a listener")

    def close(self, reply: Reply | None = None, reason: str = "closed by the server") -> None:
        """Stop the dialogue: ``reply`` (if any) is the last output, nothing more is read."""
        if self.state is SessionState.CLOSED:
            return
        if reply is not None:
            self._out.append(reply.wire)
        self.state = SessionState.CLOSED
        self.pending = None
        self.close_reason = reason

    def stop_when_idle(self) -> None:
        """Close with ``421`` at the next point where no transaction is open.

        A transaction in progress may finish; a command after it gets the 421 instead.
        """
        self._stop_when_idle = True

    # Command dispatch

    def _on_line(self, line: bytes) -> Event | None:
        verb, argument = self._split(line)
        self._verb = verb
        flags = self._classify(line)
        if flags:
            if flags & self._wire.CTRL:
                return self._protocol_error(replies.BAD_CHARACTERS)
            # 8-bit text is only meaningful in SMTPUTF8 addresses (RFC 6531 §3.3).
            if verb != b"MAIL" and verb != b"RCPT":
                return self._protocol_error(replies.EIGHT_BIT_COMMAND)
        handler = _HANDLERS.get(verb)
        if handler is None:
            return self._protocol_error(replies.UNKNOWN_COMMAND)
        try:
            return handler(self, argument)
        except CommandError as error:
            return self._protocol_error(error.reply)

    def _refuse(self, reply: Reply) -> Event | None:
        """Send a refusal; returns None so handlers can ``return self._refuse(...)``."""
        self._out.append(reply.wire)
        if self.on_refuse is not None:
            self.on_refuse(self._verb, reply)
        return None

    def _protocol_error(self, reply: Reply) -> Event | None:
        """Refuse a command the client got wrong; too many of them end the connection.

        Counts syntax, sequence and unknown-command errors, not listener decisions: like
        Postfix's hard error limit, it stops a client that is not speaking SMTP.
        """
        self._refuse(reply)
        self.errors += 1
        if self.errors >= self.config.max_errors:
            self.close(replies.TOO_MANY_ERRORS, "too many errors")
        return None

    def _on_helo(self, argument: bytes) -> Event | None:
        if not argument:
            return self._protocol_error(replies.HELO_SYNTAX)
        self._greeted(argument, esmtp=False)
        self._out.append(self.config.helo_reply)
        return None

    def _on_ehlo(self, argument: bytes) -> Event | None:
        if not argument:
            return self._protocol_error(replies.EHLO_SYNTAX)
        self._greeted(argument, esmtp=True)
        self._out.append(self.config.ehlo_reply)
        return None

    def _greeted(self, argument: bytes, esmtp: bool) -> None:
        # RFC 5321 §4.1.4: HELO/EHLO resets any transaction in progress.
        self._end_transaction()
        self.session.helo = argument.decode("utf-8", "replace")
        self.session.esmtp = esmtp
        self.state = SessionState.READY

    def _on_mail(self, argument: bytes) -> Event | None:
        if self.state is SessionState.GREETED:
            return self._protocol_error(replies.NEED_HELO)
        if SessionState.MAIL <= self.state <= SessionState.DATA:
            return self._protocol_error(replies.SENDER_ALREADY_SPECIFIED)
        arguments = parse_mail(argument)
        if arguments.size is not None and arguments.size > self.config.declared_size_limit:
            return self._refuse(replies.SIZE_EXCEEDED)
        if self.config.decide_mail_from:
            self.pending = MailFrom(arguments)
            return self.pending
        self._open_transaction(arguments)
        self._out.append(replies.SENDER_OK.wire)
        return None

    def _on_rcpt(self, argument: bytes) -> Event | None:
        if not SessionState.MAIL <= self.state <= SessionState.DATA:
            return self._protocol_error(replies.NEED_MAIL)
        if len(self.recipients) >= self.config.max_recipients:
            return self._refuse(replies.TOO_MANY_RECIPIENTS)
        assert self.mail_arguments is not None
        address = parse_rcpt(argument, self.mail_arguments.smtputf8)
        if self.config.decide_rcpt_to:
            self.pending = RcptTo(address)
            return self.pending
        self.recipients.append(address)
        self.state = SessionState.RCPT
        self._out.append(replies.RECIPIENT_OK.wire)
        return None

    def _on_data(self, argument: bytes) -> Event | None:
        if argument:
            return self._protocol_error(replies.NO_ARGUMENTS)
        if not SessionState.MAIL <= self.state <= SessionState.DATA:
            return self._protocol_error(replies.NEED_MAIL)
        if not self.recipients:
            return self._protocol_error(replies.NEED_RCPT)
        self._out.append(replies.START_MAIL_INPUT.wire)
        self._reader.start_data(self.config.max_message_size)
        self.state = SessionState.DATA
        self.data_phases += 1
        return None

    def _on_data_end(self) -> Event | None:
        reader = self._reader
        data = reader.take_data()
        if reader.data_overflow:
            # RFC 5321 §4.2.5: the content was read to its end marker before answering.
            self._end_transaction()
            return self._refuse(replies.TOO_MUCH_DATA)
        if reader.data_bare_line_endings:
            policy = self.config.bare_line_endings
            if policy == "reject":
                self._end_transaction()
                return self._refuse(replies.BARE_LINE_ENDINGS)
            if policy == "normalize":
                data = normalize_line_endings(data)
        self.pending = MessageReceived(data)
        return self.pending

    def _on_rset(self, argument: bytes) -> Event | None:
        if argument:
            return self._protocol_error(replies.NO_ARGUMENTS)
        self._end_transaction()
        self._out.append(replies.RESET_OK.wire)
        return None

    def _on_noop(self, argument: bytes) -> Event | None:
        # RFC 5321 §4.1.1.9: NOOP may carry a string, which is ignored.
        self._out.append(replies.OK.wire)
        return None

    def _on_quit(self, argument: bytes) -> Event | None:
        if argument:
            return self._protocol_error(replies.NO_ARGUMENTS)
        self.close(replies.CLOSING, "QUIT")
        return None

    def _on_vrfy(self, argument: bytes) -> Event | None:
        return self._refuse(replies.VRFY_DISABLED)

    def _on_expn(self, argument: bytes) -> Event | None:
        return self._refuse(replies.EXPN_DISABLED)

    def _on_help(self, argument: bytes) -> Event | None:
        self._out.append(replies.HELP.wire)
        return None

    # Transaction bookkeeping

    def _open_transaction(self, arguments: MailArguments) -> None:
        self.envelope_from = arguments.address
        self.mail_arguments = arguments
        self.recipients = []
        self.state = SessionState.MAIL

    def _end_transaction(self) -> None:
        self.envelope_from = None
        self.mail_arguments = None
        self.recipients = []
        if self.state is not SessionState.GREETED and self.state is not SessionState.CLOSED:
            self.state = SessionState.READY


# Verb dispatch, built once: an explicit table rather than a scan for methods by name.
_HANDLERS: dict[bytes, Callable[[SessionCore, bytes], Event | None]] = {
    b"HELO": SessionCore._on_helo,
    b"EHLO": SessionCore._on_ehlo,
    b"MAIL": SessionCore._on_mail,
    b"RCPT": SessionCore._on_rcpt,
    b"DATA": SessionCore._on_data,
    b"RSET": SessionCore._on_rset,
    b"NOOP": SessionCore._on_noop,
    b"QUIT": SessionCore._on_quit,
    b"VRFY": SessionCore._on_vrfy,
    b"EXPN": SessionCore._on_expn,
    b"HELP": SessionCore._on_help,
}
