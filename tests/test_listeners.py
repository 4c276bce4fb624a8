"""Listeners on real sockets: what they receive, how they answer, how they fail.

Each test runs once per twin through ``make_server``. Slow listeners wait on events the
test sets, so nothing depends on how fast the machine is; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import smtplib
import threading
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

import pytest

from fastsmtp import (
    IncomingFrom,
    IncomingMail,
    IncomingRecipient,
    SMTPServer,
    events,
    replies,
)

HELO_OK = b"250 mx.test\r\n"
MESSAGE = b"From: alice@example.org\r\nSubject: hello\r\n\r\nHello, Bob.\r\n"
SENDER = "alice@example.org"
RECIPIENT = "bob@example.com"
WAIT = 10.0  # seconds a listener or a test waits for a signal before giving up

MakeServer = Callable[..., SMTPServer]
Connect = Callable[[SMTPServer], Any]


def transaction(client: Any, sender: bytes = b"alice@example.org") -> None:
    """Greet and give a sender and one recipient on a raw client, checking each reply."""
    assert client.command(b"EHLO client.test").startswith(b"250-mx.test\r\n")
    assert client.command(b"MAIL FROM:<" + sender + b">") == replies.SENDER_OK.wire
    assert client.command(b"RCPT TO:<bob@example.com>") == replies.RECIPIENT_OK.wire


def send_message(client: Any, content: bytes = b"Subject: x\r\n\r\nbody\r\n") -> bytes:
    """Send DATA and ``content`` (end marker added) on a raw client; return the final reply."""
    assert client.command(b"DATA") == replies.START_MAIL_INPUT.wire
    client.send(content + b".\r\n")
    return client.reply()  # type: ignore[no-any-return]


# What listeners receive


def test_from_listener_gets_the_sender(make_server: MakeServer, smtp_client: Connect) -> None:
    server = make_server()
    senders: list[str] = []
    server.from_listener(lambda event: senders.append(event.envelope_from))
    server.start()
    client = smtp_client(server)
    client.sendmail(SENDER, [RECIPIENT], MESSAGE)
    client.sendmail("", [RECIPIENT], MESSAGE)
    client.sendmail("<>", [RECIPIENT], MESSAGE)
    assert senders == [SENDER, "", ""]


def test_recipient_listener_gets_the_envelope(
    make_server: MakeServer, smtp_client: Connect
) -> None:
    server = make_server()
    seen: list[tuple[str, str, tuple[str, ...]]] = []

    @server.recipient_listener
    def on_recipient(event: IncomingRecipient) -> None:
        seen.append((event.envelope_from, event.recipient, tuple(event.current_recipients)))

    server.start()
    smtp_client(server).sendmail(SENDER, ["a@example.com", "b@example.com"], MESSAGE)
    assert seen == [
        (SENDER, "a@example.com", ("a@example.com",)),
        (SENDER, "b@example.com", ("a@example.com", "b@example.com")),
    ]


def test_mail_listener_gets_envelope_data_and_email(
    make_server: MakeServer, raw_client: Connect
) -> None:
    server = make_server()
    received: list[IncomingMail] = []
    parsed: list[EmailMessage] = []

    @server.mail_listener
    def on_mail(mail: IncomingMail) -> None:
        received.append(mail)
        parsed.append(mail.email)

    client = raw_client(server.start())
    assert client.command(b"EHLO client.test").startswith(b"250-")
    assert client.command(b"MAIL FROM:<alice@example.org>") == replies.SENDER_OK.wire
    assert client.command(b"RCPT TO:<bob@example.com>") == replies.RECIPIENT_OK.wire
    assert client.command(b"RCPT TO:<carol@example.com>") == replies.RECIPIENT_OK.wire
    # Exact bytes: 8-bit text, a bare CR, a bare LF and a stuffed dot all kept as sent.
    content = (
        b"From: alice@example.org\r\nSubject: caf\xc3\xa9\r\n\r\n"
        b"bare\rcr and bare\nlf\r\n..dot\r\n\x00nul\r\n"
    )
    assert send_message(client, content) == replies.MESSAGE_ACCEPTED.wire
    mail = received[0]
    assert mail.envelope_from == SENDER
    assert mail.recipients == ("bob@example.com", "carol@example.com")
    assert mail.data == content.replace(b"\r\n..dot", b"\r\n.dot")
    assert parsed[0]["Subject"] == "café"
    assert parsed[0]["From"] == SENDER


def test_email_is_parsed_lazily_and_once(
    make_server: MakeServer, smtp_client: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    parses: list[bytes] = []

    class CountingParser(events.BytesParser):  # type: ignore[misc, name-defined]
        def parsebytes(self, text: bytes, headersonly: bool = False) -> Any:
            parses.append(text)
            return super().parsebytes(text, headersonly)

    monkeypatch.setattr(events, "BytesParser", CountingParser)
    server = make_server()
    subjects: list[str] = []

    @server.mail_listener
    def on_mail(mail: IncomingMail) -> None:
        if mail.envelope_from == "reader@example.org":
            first = mail.email
            assert mail.email is first
            subjects.append(first["Subject"])

    server.start()
    client = smtp_client(server)
    client.sendmail(SENDER, [RECIPIENT], MESSAGE)
    assert parses == []
    client.sendmail("reader@example.org", [RECIPIENT], MESSAGE)
    assert parses == [MESSAGE]
    assert subjects == ["hello"]


def test_context_session(make_server: MakeServer, raw_client: Connect) -> None:
    server = make_server()
    sessions: list[Any] = []
    contexts: list[Any] = []

    @server.mail_listener
    def on_mail(mail: IncomingMail) -> None:
        contexts.append(mail.context)
        session = mail.context.session
        sessions.append(
            (
                session.peer,
                session.local,
                session.helo,
                session.esmtp,
                session.is_tls,
                session.ssl_object,
                session.session_id,
            )
        )

    client = raw_client(server.start())
    transaction(client)
    assert send_message(client) == replies.MESSAGE_ACCEPTED.wire
    peer, local, helo, esmtp, is_tls, ssl_object, session_id = sessions[0]
    assert peer == client.sock.getsockname()
    assert local == ("127.0.0.1", server.bound_port)
    assert (helo, esmtp, is_tls, ssl_object) == ("client.test", True, False, None)
    assert isinstance(session_id, str)
    assert session_id
    assert contexts[0].server is server


def test_same_session_across_transactions(make_server: MakeServer, smtp_client: Connect) -> None:
    server = make_server()
    ids: list[str] = []
    server.from_listener(lambda event: ids.append(event.context.session.session_id))
    server.mail_listener(lambda mail: ids.append(mail.context.session.session_id))
    server.start()
    client = smtp_client(server)
    client.sendmail(SENDER, [RECIPIENT], MESSAGE)
    client.sendmail(SENDER, [RECIPIENT], MESSAGE)
    assert len(ids) == 4
    assert len(set(ids)) == 1


# Several listeners, sync and async


def test_listeners_run_in_registration_order(
    make_server: MakeServer, smtp_client: Connect
) -> None:
    server = make_server()
    calls: list[str] = []

    def sync_listener(name: str) -> Callable[[Any], None]:
        return lambda event: calls.append(name)

    def async_listener(name: str) -> Callable[[Any], Any]:
        async def listener(event: Any) -> None:
            await asyncio.sleep(0)
            calls.append(name)

        return listener

    for kind, register in (
        ("from", server.from_listener),
        ("rcpt", server.recipient_listener),
        ("mail", server.mail_listener),
    ):
        register(sync_listener(f"{kind}-1"))
        register(async_listener(f"{kind}-2"))
        register(sync_listener(f"{kind}-3"))
    server.start()
    smtp_client(server).sendmail(SENDER, [RECIPIENT], MESSAGE)
    assert calls == [f"{kind}-{n}" for kind in ("from", "rcpt", "mail") for n in (1, 2, 3)]


LISTENER_VARIABLE: contextvars.ContextVar[str] = contextvars.ContextVar("listener_variable")


def test_a_listener_context_does_not_leak_into_the_next(
    make_server: MakeServer, raw_client: Connect
) -> None:
    # Each listener runs in a task of its own, so a context variable one sets is its own,
    # even for a pipelined command whose listener is started right after it decided.
    server = make_server()
    seen: list[str | None] = []

    async def sets_a_variable(event: Any) -> None:
        await asyncio.sleep(0)  # decides after waiting, then resumes the dialogue
        seen.append(LISTENER_VARIABLE.get(None))
        LISTENER_VARIABLE.set(event.envelope_from)

    async def reads_the_variable(event: Any) -> None:
        seen.append(LISTENER_VARIABLE.get(None))

    server.from_listener(sets_a_variable)
    server.recipient_listener(reads_the_variable)
    server.start()
    client = raw_client(server)
    assert client.command(b"EHLO client.test").startswith(b"250-")
    client.send(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\n")
    assert client.reply() == replies.SENDER_OK.wire
    assert client.reply() == replies.RECIPIENT_OK.wire
    client.send(b"RSET\r\nMAIL FROM:<carol@example.org>\r\n")
    assert client.reply() == replies.RESET_OK.wire
    assert client.reply() == replies.SENDER_OK.wire
    assert seen == [None, None, None]


def test_a_rejecting_listener_stops_the_later_ones(
    make_server: MakeServer, raw_client: Connect
) -> None:
    server = make_server()
    calls: list[str] = []

    def first(event: IncomingFrom) -> None:
        calls.append("first")
        event.reject()

    server.from_listener(first)
    server.from_listener(lambda event: calls.append("second"))
    client = raw_client(server.start())
    client.command(b"HELO client.test")
    assert client.command(b"MAIL FROM:<alice@example.org>") == replies.TRANSACTION_FAILED.wire
    assert calls == ["first"]


def test_async_listeners_run_on_the_loop_and_sync_ones_in_threads(
    make_server: MakeServer, smtp_client: Connect
) -> None:
    server = make_server()
    where: dict[str, str] = {}

    async def on_from(event: IncomingFrom) -> None:
        asyncio.get_running_loop()
        where["async"] = threading.current_thread().name

    def on_mail(mail: IncomingMail) -> None:
        where["sync"] = threading.current_thread().name

    server.from_listener(on_from)
    server.mail_listener(on_mail)
    server.start()
    smtp_client(server).sendmail(SENDER, [RECIPIENT], MESSAGE)
    assert where["async"] == "fastsmtp-server"
    assert where["sync"] not in ("fastsmtp-server", threading.current_thread().name)


def test_callable_object_with_async_call(make_server: MakeServer, raw_client: Connect) -> None:
    class Gate:
        """A listener object whose ``__call__`` is a coroutine function."""

        def __init__(self) -> None:
            self.seen: list[str] = []

        async def __call__(self, event: IncomingRecipient) -> None:
            self.seen.append(event.recipient)
            if event.recipient.startswith("no"):
                event.reject("No such user", 550)

    gate = Gate()
    server = make_server()
    server.recipient_listener(gate)
    client = raw_client(server.start())
    client.command(b"HELO client.test")
    client.command(b"MAIL FROM:<alice@example.org>")
    assert client.command(b"RCPT TO:<yes@example.com>") == replies.RECIPIENT_OK.wire
    assert client.command(b"RCPT TO:<no@example.com>") == b"550 5.0.0 No such user\r\n"
    assert gate.seen == ["yes@example.com", "no@example.com"]


# Rejections


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("stage", ["from", "rcpt", "mail"])
def test_default_reject(
    make_server: MakeServer, raw_client: Connect, stage: str, asynchronous: bool
) -> None:
    server = make_server()

    def refuse(event: Any) -> None:
        event.reject()

    async def refuse_async(event: Any) -> None:
        event.reject()

    listener = refuse_async if asynchronous else refuse
    {"from": server.from_listener, "rcpt": server.recipient_listener}.get(
        stage, server.mail_listener
    )(listener)
    client = raw_client(server.start())
    client.command(b"HELO client.test")
    reply = client.command(b"MAIL FROM:<alice@example.org>")
    if stage != "from":
        reply = client.command(b"RCPT TO:<bob@example.com>")
    if stage == "mail":
        reply = send_message(client)
    assert reply == replies.TRANSACTION_FAILED.wire
    assert reply == b"554 5.0.0 Transaction failed\r\n"
    assert client.command(b"NOOP") == replies.OK.wire


@pytest.mark.parametrize(
    ("message", "code", "expected"),
    [
        ("Mailbox unavailable", 550, b"550 5.0.0 Mailbox unavailable\r\n"),
        ("5.7.1 Relaying denied", 550, b"550 5.7.1 Relaying denied\r\n"),
        (None, 450, b"450 4.0.0 Transaction failed\r\n"),
        ("Try later", None, b"554 5.0.0 Try later\r\n"),
        ("Greylisted", 451, b"451 4.0.0 Greylisted\r\n"),
        (
            "first line\r\n250 injected",
            550,
            b"550-5.0.0 first line\r\n550 5.0.0 250 injected\r\n",
        ),
    ],
)
def test_custom_reject(
    make_server: MakeServer,
    raw_client: Connect,
    message: str | None,
    code: int | None,
    expected: bytes,
) -> None:
    server = make_server()

    @server.recipient_listener
    def refuse(event: IncomingRecipient) -> None:
        event.reject(message, code)

    client = raw_client(server.start())
    client.command(b"HELO client.test")
    client.command(b"MAIL FROM:<alice@example.org>")
    assert client.command(b"RCPT TO:<bob@example.com>") == expected
    assert client.command(b"NOOP") == replies.OK.wire


@pytest.mark.parametrize("code", [250, 354])
def test_reject_never_sends_a_success_code(
    make_server: MakeServer, raw_client: Connect, code: int
) -> None:
    server = make_server()
    server.recipient_listener(lambda event: event.reject("No", code))
    client = raw_client(server.start())
    client.command(b"HELO client.test")
    client.command(b"MAIL FROM:<alice@example.org>")
    reply = client.command(b"RCPT TO:<bob@example.com>")
    assert reply[:1] in (b"4", b"5"), reply


def test_rejected_recipient_is_left_out(make_server: MakeServer, smtp_client: Connect) -> None:
    server = make_server()
    current: list[tuple[str, ...]] = []
    received: list[IncomingMail] = []

    @server.recipient_listener
    def on_recipient(event: IncomingRecipient) -> None:
        current.append(tuple(event.current_recipients))
        if event.recipient.startswith("nobody"):
            event.reject("No such user", 550)

    server.mail_listener(received.append)
    server.start()
    recipients = ["a@example.com", "nobody@example.com", "c@example.com"]
    refused = smtp_client(server).sendmail(SENDER, recipients, MESSAGE)
    assert refused == {"nobody@example.com": (550, b"5.0.0 No such user")}
    assert current == [
        ("a@example.com",),
        ("a@example.com", "nobody@example.com"),
        ("a@example.com", "c@example.com"),
    ]
    assert received[0].recipients == ("a@example.com", "c@example.com")


def test_reject_at_data_ends_the_transaction(make_server: MakeServer, raw_client: Connect) -> None:
    server = make_server()
    received: list[IncomingMail] = []

    @server.mail_listener
    def on_mail(mail: IncomingMail) -> None:
        if b"spam" in mail.data:
            mail.reject("Spam", 550)
        received.append(mail)

    client = raw_client(server.start())
    transaction(client)
    assert send_message(client, b"spam\r\n") == b"550 5.0.0 Spam\r\n"
    assert client.command(b"RCPT TO:<bob@example.com>") == replies.NEED_MAIL.wire
    assert client.command(b"MAIL FROM:<carol@example.org>") == replies.SENDER_OK.wire
    assert client.command(b"RCPT TO:<dave@example.com>") == replies.RECIPIENT_OK.wire
    assert send_message(client, b"ham\r\n") == replies.MESSAGE_ACCEPTED.wire
    assert [(m.envelope_from, m.recipients, m.data) for m in received] == [
        ("carol@example.org", ("dave@example.com",), b"ham\r\n")
    ]


def test_reject_at_mail_allows_another_mail(make_server: MakeServer, raw_client: Connect) -> None:
    server = make_server()

    @server.from_listener
    def on_from(event: IncomingFrom) -> None:
        if event.envelope_from == "":
            event.reject("No bounces", 550)

    client = raw_client(server.start())
    client.command(b"HELO client.test")
    assert client.command(b"MAIL FROM:<>") == b"550 5.0.0 No bounces\r\n"
    assert client.command(b"RCPT TO:<bob@example.com>") == replies.NEED_MAIL.wire
    assert client.command(b"MAIL FROM:<alice@example.org>") == replies.SENDER_OK.wire


@pytest.mark.parametrize(
    ("message", "code", "expected"),
    [
        (None, None, replies.TRANSACTION_FAILED.wire),
        ("Go away", 421, b"421 4.0.0 Go away\r\n"),
    ],
    ids=["default", "custom"],
)
@pytest.mark.parametrize("stage", ["from", "rcpt", "mail"])
def test_drop_connection(
    make_server: MakeServer,
    raw_client: Connect,
    stage: str,
    message: str | None,
    code: int | None,
    expected: bytes,
) -> None:
    server = make_server()

    async def drop(event: Any) -> None:
        event.drop_connection(message, code)

    {"from": server.from_listener, "rcpt": server.recipient_listener}.get(
        stage, server.mail_listener
    )(drop)
    client = raw_client(server.start())
    client.command(b"HELO client.test")
    if stage == "from":
        client.send(b"MAIL FROM:<alice@example.org>\r\nNOOP\r\n")
    else:
        client.command(b"MAIL FROM:<alice@example.org>")
        if stage == "rcpt":
            client.send(b"RCPT TO:<bob@example.com>\r\nNOOP\r\n")
        else:
            client.command(b"RCPT TO:<bob@example.com>")
            client.command(b"DATA")
            client.send(b"x\r\n.\r\nNOOP\r\n")
    assert client.read_to_end() == expected
    assert raw_client(server).command(b"NOOP") == replies.OK.wire


# The DATA reply


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Queued as 4F2A9", b"250 2.0.0 Queued as 4F2A9\r\n"),
        ("2.6.0 Queued", b"250 2.6.0 Queued\r\n"),
        ("", replies.MESSAGE_ACCEPTED.wire),
        ("two\nlines", b"250-2.0.0 two\r\n250 2.0.0 lines\r\n"),
        ("x" * 600, b"250 2.0.0 " + b"x" * 500 + b"\r\n"),
    ],
    ids=["text", "own-enhanced-code", "empty", "two-lines", "too-long"],
)
def test_respond_text(
    make_server: MakeServer, raw_client: Connect, text: str, expected: bytes
) -> None:
    server = make_server()
    server.mail_listener(lambda mail: mail.respond_text(text))
    client = raw_client(server.start())
    transaction(client)
    reply = send_message(client)
    assert reply == expected
    assert all(len(line) + 2 <= 512 for line in reply.split(b"\r\n"))
    assert client.command(b"NOOP") == replies.OK.wire


def test_respond_text_through_smtplib(make_server: MakeServer, smtp_client: Connect) -> None:
    server = make_server()
    server.mail_listener(lambda mail: mail.respond_text("Queued as 12"))
    client = smtp_client(server.start())
    client.ehlo()
    client.mail(SENDER)
    client.rcpt(RECIPIENT)
    assert client.data(MESSAGE) == (250, b"2.0.0 Queued as 12")


@pytest.mark.parametrize(
    ("message", "expected"),
    [(None, replies.TOO_MUCH_DATA.wire), ("Mailbox full", b"552 5.3.4 Mailbox full\r\n")],
    ids=["default", "custom"],
)
def test_too_much_data(
    make_server: MakeServer, raw_client: Connect, message: str | None, expected: bytes
) -> None:
    server = make_server()
    server.mail_listener(lambda mail: mail.too_much_data(message))
    client = raw_client(server.start())
    transaction(client)
    assert send_message(client) == expected
    assert replies.TOO_MUCH_DATA.wire == b"552 5.3.4 Too much mail data\r\n"
    assert client.command(b"MAIL FROM:<alice@example.org>") == replies.SENDER_OK.wire


# Listeners that fail


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("stage", ["from", "rcpt", "mail"])
def test_failing_listener_gives_451_and_is_logged_once(
    make_server: MakeServer,
    raw_client: Connect,
    caplog: pytest.LogCaptureFixture,
    stage: str,
    asynchronous: bool,
) -> None:
    caplog.set_level(logging.ERROR, logger="fastsmtp.listener")
    server = make_server()

    def fail(event: Any) -> None:
        if getattr(event, "envelope_from", "") == "boom@example.org":
            raise ZeroDivisionError("secret-internal-detail")

    async def fail_async(event: Any) -> None:
        fail(event)

    {"from": server.from_listener, "rcpt": server.recipient_listener}.get(
        stage, server.mail_listener
    )(fail_async if asynchronous else fail)
    client = raw_client(server.start())
    client.command(b"HELO client.test")
    reply = client.command(b"MAIL FROM:<boom@example.org>")
    if stage != "from":
        reply = client.command(b"RCPT TO:<bob@example.com>")
    if stage == "mail":
        reply = send_message(client)
    assert reply == replies.LOCAL_ERROR.wire
    assert reply.startswith(b"451 4.3.0 ")
    assert b"secret" not in reply
    assert b"ZeroDivision" not in reply

    records = [r for r in caplog.records if r.name == "fastsmtp.listener"]
    assert len(records) == 1
    assert records[0].levelno == logging.ERROR
    assert records[0].exc_info is not None
    assert records[0].exc_info[0] is ZeroDivisionError
    others = [r for r in caplog.records if r.levelno >= logging.ERROR and r not in records]
    assert others == []

    # The same connection goes on: the transaction (if any) is still usable or was ended.
    client.command(b"RSET")
    transaction(client)
    assert send_message(client) == replies.MESSAGE_ACCEPTED.wire
    # And the server still takes new connections.
    assert raw_client(server).command(b"NOOP") == replies.OK.wire


def test_async_listener_raising_stop_iteration(
    make_server: MakeServer, raw_client: Connect
) -> None:
    server = make_server(shutdown_grace=0.5)

    async def fail(event: IncomingFrom) -> None:
        raise StopIteration

    server.from_listener(fail)
    client = raw_client(server.start())
    client.command(b"HELO client.test")
    assert client.command(b"MAIL FROM:<alice@example.org>") == replies.LOCAL_ERROR.wire


def test_sync_listener_raising_stop_iteration(
    make_server: MakeServer, raw_client: Connect
) -> None:
    server = make_server(shutdown_grace=0.5)

    def fail(event: IncomingFrom) -> None:
        raise StopIteration

    server.from_listener(fail)
    client = raw_client(server.start())
    client.command(b"HELO client.test")
    client.sock.settimeout(2.0)  # the reply takes milliseconds; only a bound for the bug
    assert client.command(b"MAIL FROM:<alice@example.org>") == replies.LOCAL_ERROR.wire


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("raised", [SystemExit, asyncio.CancelledError])
def test_listener_raising_a_base_exception_is_a_failure_too(
    make_server: MakeServer,
    raw_client: Connect,
    caplog: pytest.LogCaptureFixture,
    asynchronous: bool,
    raised: type[BaseException],
) -> None:
    # sys.exit() in a listener, or a CancelledError of its own (an awaited future that
    # something else cancelled): 451 and one log line, and the server keeps serving.
    caplog.set_level(logging.ERROR, logger="fastsmtp.listener")
    server = make_server(connection_timeout=30)

    def quit_now(event: IncomingMail) -> None:
        raise raised(3) if raised is SystemExit else raised()

    async def quit_now_async(event: IncomingMail) -> None:
        quit_now(event)

    server.mail_listener(quit_now_async if asynchronous else quit_now)
    client = raw_client(server.start())
    client.sock.settimeout(5.0)
    transaction(client)
    assert send_message(client) == replies.LOCAL_ERROR.wire

    records = [r for r in caplog.records if r.name == "fastsmtp.listener"]
    assert len(records) == 1
    assert records[0].exc_info is not None and records[0].exc_info[0] is raised
    assert "IncomingMail listener" in records[0].getMessage()
    assert "quit_now" in records[0].getMessage()
    assert raw_client(server).command(b"NOOP") == replies.OK.wire
    server.stop()
    assert not server.is_running


def test_listener_returning_a_value_is_ignored(
    make_server: MakeServer, smtp_client: Connect
) -> None:
    server = make_server()
    server.from_listener(lambda event: "ignored")
    server.mail_listener(lambda mail: False)
    server.start()
    assert smtp_client(server).sendmail(SENDER, [RECIPIENT], MESSAGE) == {}


def test_respond_text_needs_a_str(make_server: MakeServer, raw_client: Connect) -> None:
    server = make_server()
    server.mail_listener(lambda mail: mail.respond_text(250))
    client = raw_client(server.start())
    transaction(client)
    assert send_message(client) == replies.LOCAL_ERROR.wire


@pytest.mark.parametrize("waits", [False, True])
def test_an_unusable_response_text_is_a_listener_failure(
    make_server: MakeServer, raw_client: Connect, waits: bool
) -> None:
    # Set on the attribute, past respond_text()'s check: refused with 451 when the reply is
    # built, and the connection goes on.
    server = make_server()

    @server.mail_listener
    async def sets_bytes(mail: IncomingMail) -> None:
        if waits:
            await asyncio.sleep(0)
        mail.response_text = b"queued"  # type: ignore[assignment]

    client = raw_client(server.start())
    transaction(client)
    assert send_message(client) == replies.LOCAL_ERROR.wire
    assert client.command(b"NOOP") == replies.OK.wire
    transaction(client)


# Slow listeners do not stall other connections


def test_slow_sync_listener_does_not_stall_others(
    make_server: MakeServer, smtp_client: Connect
) -> None:
    server = make_server()
    other_served = threading.Event()
    waited: list[bool] = []

    @server.mail_listener
    def on_mail(mail: IncomingMail) -> None:
        if mail.envelope_from == "slow@example.org":
            # Blocks this connection until the other one got its reply.
            waited.append(other_served.wait(WAIT))

    server.start()
    slow_result: list[object] = []
    slow = threading.Thread(
        target=lambda: slow_result.append(
            smtp_client(server).sendmail("slow@example.org", [RECIPIENT], MESSAGE)
        )
    )
    slow.start()
    fast = smtp_client(server)
    assert fast.sendmail(SENDER, [RECIPIENT], MESSAGE) == {}
    assert fast.noop() == (250, b"2.0.0 Ok")
    other_served.set()
    slow.join(WAIT)
    assert waited == [True]
    assert slow_result == [{}]


def test_slow_async_listener_does_not_stall_others(
    make_server: MakeServer, raw_client: Connect
) -> None:
    server = make_server()
    other_served = threading.Event()
    waited: list[bool] = []

    @server.from_listener
    async def on_from(event: IncomingFrom) -> None:
        if event.envelope_from == "slow@example.org":
            async with asyncio.timeout(WAIT):
                while not other_served.is_set():
                    await asyncio.sleep(0.01)
            waited.append(True)

    server.start()
    slow = raw_client(server)
    slow.command(b"HELO client.test")
    slow.send(b"MAIL FROM:<slow@example.org>\r\n")
    fast = raw_client(server)
    fast.command(b"HELO client.test")
    assert fast.command(b"MAIL FROM:<alice@example.org>") == replies.SENDER_OK.wire
    other_served.set()
    assert slow.reply() == replies.SENDER_OK.wire
    assert waited == [True]


def test_many_slow_sync_listeners_do_not_stall_others(
    make_server: MakeServer, raw_client: Connect
) -> None:
    workers = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default size
    server = make_server()
    release = threading.Event()
    entered = threading.Semaphore(0)

    @server.from_listener
    def on_from(event: IncomingFrom) -> None:
        if event.envelope_from == "slow@example.org":
            entered.release()
            release.wait(WAIT)

    server.start()
    try:
        for _ in range(workers):
            slow = raw_client(server)
            slow.command(b"HELO client.test")
            slow.send(b"MAIL FROM:<slow@example.org>\r\n")
        for _ in range(workers):
            assert entered.acquire(timeout=WAIT)
        fast = raw_client(server)
        fast.command(b"HELO client.test")
        fast.sock.settimeout(2.0)  # the reply takes milliseconds; only a bound for the bug
        assert fast.command(b"MAIL FROM:<alice@example.org>") == replies.SENDER_OK.wire
    finally:
        release.set()


def test_smtplib_sees_listener_rejections(make_server: MakeServer, smtp_client: Connect) -> None:
    server = make_server()
    server.from_listener(
        lambda event: (
            event.reject("Sender blocked", 550) if "spam" in event.envelope_from else None
        )
    )
    server.start()
    client = smtp_client(server)
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        client.sendmail("spam@example.org", [RECIPIENT], MESSAGE)
    assert (refused.value.smtp_code, refused.value.smtp_error) == (550, b"5.0.0 Sender blocked")
    assert client.sendmail(SENDER, [RECIPIENT], MESSAGE) == {}
