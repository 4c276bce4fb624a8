"""The sans-IO SMTP session: bytes in, replies and events out.

No sockets, no asyncio, no listeners are called from here. The transport layer feeds what
it receives, calls ``step()`` until it returns None, writes ``take_output()``, and answers each
decision event (``MailFrom``, ``RcptTo``, ``MessageReceived``, ``AuthAttempt``) with
``accept()`` or ``reject()`` before stepping again. Holding the input until then is what keeps
the replies to pipelined commands (RFC 2920) in order.

``START_TLS`` from ``step()`` asks the transport to write the output, run the TLS handshake
and call ``tls_established()`` (or ``close()`` if it fails). From STARTTLS until then nothing
received is kept: plaintext pipelined after STARTTLS must never run inside the TLS session.

This file is both twins of the core: the pure one runs it as it is, and the build compiles it
into ``fastsmtp._session_c`` with ``fastsmtp_ext/_session_c.pxd``, which makes ``SessionCore``
an extension type. So an attribute added to ``SessionCore`` goes into the .pxd too.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from types import ModuleType

from . import replies
from ._commands import MailArguments, parse_mail, parse_rcpt
from ._session_config import SessionConfig
from ._session_events import (
    CLOSE,
    START_TLS,
    AuthAttempt,
    Event,
    MailFrom,
    MessageReceived,
    RcptTo,
)
from ._state import CLOSED, DATA, GREETED, MAIL, RCPT, READY
from .context import Session
from .errors import CommandError
from .replies import Reply

__all__ = [
    "CLOSE",
    "START_TLS",
    "AuthAttempt",
    "MailFrom",
    "MessageReceived",
    "RcptTo",
    "SessionConfig",
    "SessionCore",
    "normalize_line_endings",
]


def normalize_line_endings(data: bytes) -> bytes:
    """Return ``data`` with every bare CR and bare LF turned into CRLF."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


class _AuthExchange:
    """An AUTH exchange waiting for the client's next line (RFC 4954 §4)."""

    __slots__ = ("mechanism", "username")

    def __init__(self, mechanism: str) -> None:
        self.mechanism = mechanism
        self.username: str | None = None  # LOGIN: the user name, once given


class SessionCore:
    """One connection's SMTP dialogue, independent of any transport."""

    def __init__(
        self,
        config: SessionConfig,
        wire: ModuleType,
        session: Session,
        *,
        tls: bool = False,
        starttls: bool = False,
    ) -> None:
        """Start a dialogue; ``tls`` if it is encrypted from the start (implicit TLS),
        ``starttls`` if STARTTLS may upgrade it."""
        self.config = config
        self.session = session
        self.state = GREETED
        self.envelope_from: str | None = None
        self.mail_arguments: MailArguments | None = None
        self.recipients: list[str] = []
        self.pending: MailFrom | RcptTo | MessageReceived | AuthAttempt | None = None
        self.tls = tls
        self.auth_failures = 0
        self.discarded_after_starttls = 0  # plaintext octets dropped at STARTTLS
        self._starttls = starttls
        self._tls_pending = False
        self._tls_required = config.require_tls and not tls
        self._auth: _AuthExchange | None = None
        self.close_reason = ""
        self.errors = 0
        self.junk_commands = 0  # NOOP, RSET, VRFY, EXPN, HELP since the last accepted message
        self.data_phases = 0  # how many DATA phases began, so a transport can time each
        self._stop_when_idle = False

        self._wire = wire
        self._reader = wire.WireReader(config.max_line_length)
        self._split = wire.split_command
        self._classify = wire.classify_command
        self._plain_path = wire.plain_path
        self._out: list[bytes] = []
        self._verb = b""
        # Told of every refused command (its verb if known, else b""; the reply), if set.
        self.on_refuse: Callable[[bytes, Reply], None] | None = None

    def __repr__(self) -> str:
        return f"<SessionCore {self.session.session_id} {self.state.name}>"

    # Transport-facing API

    def greeting(self) -> bytes:
        """Return the 220 greeting to send when the connection opens."""
        return self.config.greeting

    def feed(self, data: bytes) -> None:
        """Take bytes received from the client; nothing is parsed until ``step()``.

        Between STARTTLS and ``tls_established()`` the bytes are dropped: they can only be
        plaintext sent before the handshake, and must never be run inside it.
        """
        if self.state is not CLOSED and not self._tls_pending:
            self._reader.feed(data)

    def step(self) -> Event | None:
        """Process buffered input until a decision is needed, input runs out or it closes.

        Returns None when more input is needed, ``CLOSE`` when the connection must close
        once the output is written, ``START_TLS`` when the TLS handshake must start, or a
        decision event to answer with ``accept()`` or ``reject()``. Replies produced along
        the way wait in ``take_output()``.
        """
        if self.pending is not None:
            raise RuntimeError(f"step() with {type(self.pending).__name__} undecided")
        reader = self._reader
        while True:
            if self.state is CLOSED:
                return CLOSE
            if self._tls_pending:
                return None
            if self._stop_when_idle and self.state < MAIL:
                self.close(replies.SHUTTING_DOWN, "server shutting down")
                return CLOSE

            if self.state is DATA:
                if not reader.read_data():
                    return None
                event = self._on_data_end()
            else:
                try:
                    line = reader.next_line()
                except self._wire.LineTooLong:
                    if self._auth is not None:
                        self._auth = None
                        self._auth_failed(replies.LINE_TOO_LONG)
                        continue
                    self._verb = b""
                    self._protocol_error(replies.LINE_TOO_LONG)
                    continue
                if line is None:
                    return None
                # Answers to a 334 challenge are read as lines but are never commands.
                event = self._on_line(line) if self._auth is None else self._on_auth_line(line)

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
        # Built first: a text that cannot be sent raises before anything has changed.
        custom = None if text is None or text == "" else replies.custom_reply(250, text, "2.0.0")
        event = self.pending
        self.pending = None
        if isinstance(event, MailFrom):
            self._open_transaction(event.arguments)
            self._out.append(replies.SENDER_OK.wire)
        elif isinstance(event, RcptTo):
            self.recipients.append(event.address)
            self.state = RCPT
            self._out.append(replies.RECIPIENT_OK.wire)
        elif isinstance(event, MessageReceived):
            self.session.messages_accepted += 1
            self.junk_commands = 0
            self._end_transaction()
            self._out.append((custom or replies.MESSAGE_ACCEPTED).wire)
        elif isinstance(event, AuthAttempt):
            self.session.authenticated_user = event.username
            self._out.append(replies.AUTH_SUCCEEDED.wire)
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
        elif isinstance(event, AuthAttempt):
            self._verb = b"AUTH"
            if not close and reply.code != 421:
                self._auth_failed(reply)
                return
        else:
            self._verb = b"MAIL" if isinstance(event, MailFrom) else b"RCPT"
        self._refuse(reply)
        # RFC 5321 §3.8: 421 means the server closes the channel, whoever chose the code.
        if close or reply.code == 421:
            self.close(reason="dropped by a listener")

    def tls_established(self) -> None:
        """Go on after a successful STARTTLS handshake, as from a new greeting.

        RFC 3207 §4.2: everything learnt before TLS is forgotten, so the client must send
        EHLO again; a transaction in progress and an earlier AUTH are gone too.

        Raises:
            RuntimeError: if ``step()`` did not ask for the handshake.
        """
        if not self._tls_pending:
            raise RuntimeError("tls_established() without STARTTLS")
        self._tls_pending = False
        self.tls = True
        self._tls_required = False
        self._end_transaction()
        if self.state is not CLOSED:
            self.state = GREETED
        self.session.helo = None
        self.session.esmtp = False
        self.session.authenticated_user = None

    def close(self, reply: Reply | None = None, reason: str = "closed by the server") -> None:
        """Stop the dialogue: ``reply`` (if any) is the last output, nothing more is read."""
        if self.state is CLOSED:
            return
        if reply is not None:
            self._out.append(reply.wire)
        self.state = CLOSED
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
        if self._tls_required and verb not in _ALLOWED_BEFORE_TLS:
            # RFC 3207 §4: with TLS required, only these commands work until it is up.
            return self._protocol_error(replies.TLS_REQUIRED)
        try:
            return handler(self, argument)
        except CommandError as error:
            return self._protocol_error(error.reply)

    def _refuse(self, reply: Reply) -> Event | None:
        """Send a refusal; returns None so handlers can ``return self._refuse(...)``."""
        self._out.append(reply.wire)
        if self.on_refuse is not None:
            # Only a known verb: an unknown "command" may be a password sent out of turn.
            verb = self._verb
            self.on_refuse(verb if verb in _HANDLERS else b"", reply)
        return None

    def _protocol_error(self, reply: Reply) -> Event | None:
        """Refuse a command the client got wrong; too many of them end the connection.

        Counts syntax, sequence and unknown-command errors, not listener decisions: like
        Postfix's hard error limit, it stops a client that is not speaking SMTP.
        """
        self._refuse(reply)
        return self._count_error()

    def _count_error(self) -> Event | None:
        self.errors += 1
        if self.errors >= self.config.max_errors:
            self.close(replies.TOO_MANY_ERRORS, "too many errors")
        return None

    def _count_junk(self) -> Event | None:
        """Count a command that moves no mail; past the junk limit each also costs an error.

        Like Postfix's smtpd_junk_command_limit: NOOP and the like, sent just inside the
        timeout, must not hold a connection forever.
        """
        self.junk_commands += 1
        if self.junk_commands > self.config.max_junk_commands:
            return self._count_error()
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
        offers = (self._starttls and not self.tls, self._auth_offered())
        self._out.append(self.config.ehlo_replies[offers])
        return None

    def _greeted(self, argument: bytes, esmtp: bool) -> None:
        # RFC 5321 §4.1.4: HELO/EHLO resets any transaction in progress.
        self._end_transaction()
        self.session.helo = argument.decode("utf-8", "replace")
        self.session.esmtp = esmtp
        self.state = READY

    def _on_mail(self, argument: bytes) -> Event | None:
        if self.state is GREETED:
            return self._protocol_error(replies.NEED_HELO)
        if MAIL <= self.state <= DATA:
            return self._protocol_error(replies.SENDER_ALREADY_SPECIFIED)
        if self.config.require_auth and self.session.authenticated_user is None:
            return self._refuse(replies.AUTH_REQUIRED)
        arguments = parse_mail(argument, self._plain_path)
        if arguments.size is not None and arguments.size > self.config.declared_size_limit:
            return self._refuse(replies.SIZE_EXCEEDED)
        if self.config.decide_mail_from:
            self.pending = MailFrom(arguments)
            return self.pending
        self._open_transaction(arguments)
        self._out.append(replies.SENDER_OK.wire)
        return None

    def _on_rcpt(self, argument: bytes) -> Event | None:
        if not MAIL <= self.state <= DATA:
            return self._protocol_error(replies.NEED_MAIL)
        if len(self.recipients) >= self.config.max_recipients:
            return self._refuse(replies.TOO_MANY_RECIPIENTS)
        assert self.mail_arguments is not None
        address = parse_rcpt(argument, self.mail_arguments.smtputf8, self._plain_path)
        if self.config.decide_rcpt_to:
            self.pending = RcptTo(address)
            return self.pending
        self.recipients.append(address)
        self.state = RCPT
        self._out.append(replies.RECIPIENT_OK.wire)
        return None

    def _on_data(self, argument: bytes) -> Event | None:
        if argument:
            return self._protocol_error(replies.NO_ARGUMENTS)
        if not MAIL <= self.state <= DATA:
            return self._protocol_error(replies.NEED_MAIL)
        if not self.recipients:
            return self._protocol_error(replies.NEED_RCPT)
        self._out.append(replies.START_MAIL_INPUT.wire)
        self._reader.start_data(self.config.max_message_size)
        self.state = DATA
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
        return self._count_junk()

    def _on_noop(self, argument: bytes) -> Event | None:
        # RFC 5321 §4.1.1.9: NOOP may carry a string, which is ignored.
        self._out.append(replies.OK.wire)
        return self._count_junk()

    def _on_quit(self, argument: bytes) -> Event | None:
        if argument:
            return self._protocol_error(replies.NO_ARGUMENTS)
        self.close(replies.CLOSING, "QUIT")
        return None

    def _on_vrfy(self, argument: bytes) -> Event | None:
        if not argument:
            return self._protocol_error(replies.VRFY_SYNTAX)
        self._out.append(replies.CANNOT_VRFY.wire)
        return self._count_junk()

    def _on_expn(self, argument: bytes) -> Event | None:
        self._refuse(replies.EXPN_DISABLED)
        return self._count_junk()

    def _on_help(self, argument: bytes) -> Event | None:
        self._out.append(replies.HELP.wire)
        return self._count_junk()

    # STARTTLS (RFC 3207)

    def _on_starttls(self, argument: bytes) -> Event | None:
        if self.tls:
            return self._protocol_error(
                replies.NO_ARGUMENTS if argument else replies.TLS_ALREADY_ACTIVE
            )
        if not self._starttls:
            return self._protocol_error(replies.UNKNOWN_COMMAND)
        if argument:
            return self._protocol_error(replies.NO_ARGUMENTS)
        self._out.append(replies.READY_TO_START_TLS.wire)
        # CVE-2011-0411: whatever the client pipelined after STARTTLS is plaintext that an
        # attacker may have injected; it is dropped, never run inside the TLS session.
        self.discarded_after_starttls = self._reader.discard_buffered()
        self._tls_pending = True
        return START_TLS

    # AUTH (RFC 4954) with PLAIN (RFC 4616) and LOGIN

    def _auth_offered(self) -> bool:
        return bool(self.config.auth_mechanisms) and (
            self.tls or (self.config.allow_plaintext_auth and not self._tls_required)
        )

    def _on_auth(self, argument: bytes) -> Event | None:
        if not self.config.auth_mechanisms:
            return self._protocol_error(replies.UNKNOWN_COMMAND)
        if not self._auth_offered():
            return self._protocol_error(replies.AUTH_NEEDS_TLS)
        if self.state is GREETED:
            return self._protocol_error(replies.NEED_HELO)
        if self.session.authenticated_user is not None:
            return self._protocol_error(replies.ALREADY_AUTHENTICATED)
        if self.state.in_transaction:
            return self._protocol_error(replies.AUTH_IN_TRANSACTION)
        name, _, initial = argument.partition(b" ")
        if not name:
            return self._protocol_error(replies.AUTH_SYNTAX)
        mechanism = name.upper().decode("ascii", "replace")
        if mechanism not in self.config.auth_mechanisms:
            return self._protocol_error(replies.AUTH_UNKNOWN_MECHANISM)

        exchange = _AuthExchange(mechanism)
        initial = initial.strip(b" ")
        if initial:
            # RFC 4954 §4: "=" stands for an initial response of zero length.
            return self._auth_response(exchange, b"" if initial == b"=" else initial)
        self._auth = exchange
        if mechanism == "LOGIN":
            self._out.append(replies.AUTH_USERNAME_CHALLENGE.wire)
        else:
            self._out.append(replies.AUTH_EMPTY_CHALLENGE)
        return None

    def _on_auth_line(self, line: bytes) -> Event | None:
        exchange = self._auth
        assert exchange is not None
        self._auth = None
        self._verb = b"AUTH"
        if line == b"*":
            return self._auth_failed(replies.AUTH_CANCELLED)
        return self._auth_response(exchange, line)

    def _auth_response(self, exchange: _AuthExchange, encoded: bytes) -> Event | None:
        """Take one base64 response of the client; ask for more or return ``AuthAttempt``."""
        self._verb = b"AUTH"
        try:
            decoded = base64.b64decode(encoded, validate=True)
            if exchange.mechanism == "PLAIN":
                return self._auth_plain(decoded)
            text = decoded.decode("utf-8")
        except (binascii.Error, ValueError):
            # Never say more than the reply: the data may hold a password, even malformed.
            return self._auth_failed(replies.AUTH_BAD_DATA)

        if exchange.username is None:
            if not text:
                return self._auth_failed(replies.AUTH_BAD_DATA)
            exchange.username = text
            self._auth = exchange
            self._out.append(replies.AUTH_PASSWORD_CHALLENGE.wire)
            return None
        self.pending = AuthAttempt("LOGIN", exchange.username, text, None)
        return self.pending

    def _auth_plain(self, decoded: bytes) -> Event | None:
        # RFC 4616 §2: [authzid] NUL authcid NUL passwd, in UTF-8. Raises ValueError if not.
        parts = decoded.split(b"\0")
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise ValueError("malformed PLAIN response")
        authzid, username, password = (part.decode("utf-8") for part in parts)
        acting_as = authzid if authzid and authzid != username else None
        self.pending = AuthAttempt("PLAIN", username, password, acting_as)
        return self.pending

    def _auth_failed(self, reply: Reply) -> Event | None:
        """Refuse an AUTH exchange; close once a client has failed too often."""
        self._verb = b"AUTH"
        self._refuse(reply)
        self.auth_failures += 1
        if self.auth_failures >= self.config.max_auth_failures:
            self.close(replies.TOO_MANY_AUTH_FAILURES, "too many authentication failures")
        return None

    # Transaction bookkeeping

    def _open_transaction(self, arguments: MailArguments) -> None:
        self.envelope_from = arguments.address
        self.mail_arguments = arguments
        self.recipients = []
        self.state = MAIL

    def _end_transaction(self) -> None:
        self.envelope_from = None
        self.mail_arguments = None
        self.recipients = []
        if self.state is not GREETED and self.state is not CLOSED:
            self.state = READY


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
    b"STARTTLS": SessionCore._on_starttls,
    b"AUTH": SessionCore._on_auth,
}

# RFC 3207 §4: what a client may do before TLS when the server requires it.
_ALLOWED_BEFORE_TLS = frozenset({b"EHLO", b"HELO", b"STARTTLS", b"NOOP", b"RSET", b"QUIT"})
