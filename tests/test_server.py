"""The server on real sockets: options, life cycle, limits, timeouts and shutdown.

Every test that opens a socket runs once per twin through ``make_server``. Waits are
bounded by socket timeouts (``CLIENT_TIMEOUT`` in conftest) and never measure speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from types import ModuleType
from typing import Any

import aiosmtplib
import pytest

from fastsmtp import (
    DEFAULT_MAX_MESSAGE_SIZE,
    IncomingMail,
    SMTPServer,
    _wire,
    replies,
    smtp_server,
)

GREETING = b"220 mx.test ESMTP fastsmtp\r\n"
MESSAGE = b"From: alice@example.org\r\nSubject: hello\r\n\r\nHello, Bob.\r\n"
SENDER = "alice@example.org"
RECIPIENT = "bob@example.com"
CLIENT_WAIT = 10.0  # seconds a listener waits for a test's signal before giving up

MakeServer = Callable[..., SMTPServer]
Connect = Callable[[SMTPServer], Any]


def collect(server: SMTPServer) -> list[IncomingMail]:
    """Register a mail listener that keeps every message; return the list it fills."""
    received: list[IncomingMail] = []
    server.mail_listener(received.append)
    return received


def server_threads() -> list[threading.Thread]:
    """Return the live threads that serve a started server."""
    return [t for t in threading.enumerate() if t.name == "fastsmtp-server" and t.is_alive()]


def start_transaction(client: Any) -> None:
    """Greet, give a sender and a recipient, and start DATA, checking each reply."""
    assert client.command(b"HELO client.test") == b"250 mx.test\r\n"
    assert client.command(b"MAIL FROM:<alice@example.org>") == replies.SENDER_OK.wire
    assert client.command(b"RCPT TO:<bob@example.com>") == replies.RECIPIENT_OK.wire
    assert client.command(b"DATA") == replies.START_MAIL_INPUT.wire


# Options


def test_defaults() -> None:
    server = smtp_server()
    assert server.port == 25
    assert server.host is None
    assert server.max_recipients == 1000
    assert server.max_connections == 1000
    assert server.preferred_max_message_size is None
    assert server.connection_timeout == 60
    assert not server.is_running


def test_connection_timeout_as_timedelta() -> None:
    assert smtp_server(connection_timeout=timedelta(minutes=2)).connection_timeout == 120
    server = smtp_server()
    server.connection_timeout = timedelta(milliseconds=250)
    assert server.connection_timeout == 0.25


def test_options_as_attributes() -> None:
    server = smtp_server(port=2525, host="127.0.0.1", max_recipients=5)
    server.max_connections = 7
    server.preferred_max_message_size = 1024
    assert (server.port, server.host, server.max_recipients) == (2525, "127.0.0.1", 5)
    assert (server.max_connections, server.preferred_max_message_size) == (7, 1024)


def test_a_misspelt_option_is_an_error() -> None:
    server = smtp_server(port=0)
    with pytest.raises(AttributeError, match="no option 'max_recipent'"):
        server.max_recipent = 5  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        smtp_server(port=0, max_recipent=5)  # type: ignore[call-arg]
    assert server.max_recipients == 1000

    class Counting(SMTPServer):
        def __init__(self) -> None:
            super().__init__(port=0)
            self.received = 0  # a subclass may add attributes of its own

    assert Counting().received == 0


INVALID_OPTIONS = [
    ("port", -1, ValueError),
    ("port", 65536, ValueError),
    ("port", "25", TypeError),
    ("port", 25.0, TypeError),
    ("port", True, TypeError),
    ("port", None, TypeError),
    ("max_recipients", 0, ValueError),
    ("max_recipients", -1, ValueError),
    ("max_recipients", 1.5, TypeError),
    ("max_recipients", "10", TypeError),
    ("max_recipients", None, TypeError),
    ("max_connections", 0, ValueError),
    ("max_connections", False, TypeError),
    ("preferred_max_message_size", 0, ValueError),
    ("preferred_max_message_size", -5, ValueError),
    ("preferred_max_message_size", "1M", TypeError),
    ("max_message_size", 0, ValueError),
    ("connection_timeout", 0, ValueError),
    ("connection_timeout", -1, ValueError),
    ("connection_timeout", float("nan"), ValueError),
    ("connection_timeout", timedelta(0), ValueError),
    ("connection_timeout", timedelta(seconds=-1), ValueError),
    ("connection_timeout", "60", TypeError),
    ("connection_timeout", None, TypeError),
    ("connection_timeout", True, TypeError),
    ("shutdown_grace", 0, ValueError),
    ("hostname", "", ValueError),
    ("hostname", "two words", ValueError),
    ("hostname", "bad\r\nname", ValueError),
    ("hostname", 5, TypeError),
    ("host", 5, TypeError),
    ("host", [], TypeError),
    ("host", [1], TypeError),
    ("host", b"127.0.0.1", TypeError),
]


@pytest.mark.parametrize(("name", "value", "error"), INVALID_OPTIONS)
def test_invalid_option_as_keyword(name: str, value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=name):
        smtp_server(**{name: value})


@pytest.mark.parametrize(("name", "value", "error"), INVALID_OPTIONS)
def test_invalid_option_as_attribute(name: str, value: object, error: type[Exception]) -> None:
    server = smtp_server()
    before = getattr(server, name)
    with pytest.raises(error, match=name):
        setattr(server, name, value)
    assert getattr(server, name) == before


def test_preferred_size_above_the_limit_fails_at_start(make_server: MakeServer) -> None:
    server = make_server(preferred_max_message_size=2000, max_message_size=1000)
    with pytest.raises(ValueError, match="preferred_max_message_size"):
        server.start()
    assert not server.is_running
    assert server_threads() == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("port", 2525),
        ("host", "0.0.0.0"),
        ("hostname", "other.test"),
        ("max_recipients", 3),
        ("max_connections", 3),
        ("preferred_max_message_size", 100),
        ("max_message_size", 100),
        ("connection_timeout", 5),
        ("shutdown_grace", 5),
    ],
)
def test_options_cannot_change_while_running(
    make_server: MakeServer, name: str, value: object
) -> None:
    server = make_server().start()
    before = getattr(server, name)
    with pytest.raises(RuntimeError, match=name):
        setattr(server, name, value)
    assert getattr(server, name) == before
    server.stop()
    setattr(server, name, value)
    assert getattr(server, name) == value


def test_listeners_cannot_be_added_while_running(make_server: MakeServer) -> None:
    server = make_server().start()
    for register in (server.from_listener, server.recipient_listener, server.mail_listener):
        with pytest.raises(RuntimeError):
            register(lambda event: None)


def test_nothing_changes_while_the_server_binds(
    make_server: MakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The options are read as start begins; the binds that follow may yield to other code,
    # whose changes would be accepted and never used: they are refused from the start.
    server = make_server()
    bind = server._bind
    refused = []

    async def bind_and_try_changes(*args: Any) -> asyncio.Server:
        assert not server.is_running
        for change in (
            lambda: setattr(server, "max_recipients", 3),
            lambda: server.mail_listener(lambda event: None),
            lambda: server.add_endpoint(0),
        ):
            with pytest.raises(RuntimeError, match="while the server is running"):
                change()
            refused.append(change)
        return await bind(*args)

    monkeypatch.setattr(server, "_bind", bind_and_try_changes)
    server.start()
    assert len(refused) == 3
    server.stop()
    server.max_recipients = 3
    assert server.max_recipients == 3


def test_a_listener_must_be_callable() -> None:
    with pytest.raises(TypeError):
        smtp_server().mail_listener("not callable")  # type: ignore[arg-type]


# Life cycle from synchronous code


def test_port_zero_gives_a_real_port(make_server: MakeServer, raw_client: Connect) -> None:
    server = make_server()
    with pytest.raises(RuntimeError):
        server.bound_port  # noqa: B018
    server.start()
    assert server.port == 0
    assert 0 < server.bound_port < 65536
    assert server.address == ("127.0.0.1", server.bound_port)
    assert raw_client(server).greeting == GREETING


def test_start_returns_and_a_non_daemon_thread_serves(make_server: MakeServer) -> None:
    server = make_server()
    assert server.start() is server
    assert server.is_running
    threads = server_threads()
    assert len(threads) == 1
    assert not threads[0].daemon
    server.stop()
    assert not server.is_running
    assert not threads[0].is_alive()


def test_thread_is_not_a_daemon_when_started_from_a_daemon_thread(
    make_server: MakeServer,
) -> None:
    server = make_server()
    starter = threading.Thread(target=server.start, daemon=True)
    starter.start()
    starter.join(10)
    assert server.is_running
    threads = server_threads()
    assert len(threads) == 1
    assert not threads[0].daemon


def test_start_twice_raises(make_server: MakeServer) -> None:
    server = make_server().start()
    with pytest.raises(RuntimeError):
        server.start()
    assert server.is_running
    assert len(server_threads()) == 1


def test_bind_error_raises_from_start(make_server: MakeServer) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        server = make_server()
        server.port = blocker.getsockname()[1]
        with pytest.raises(OSError):
            server.start()
    assert not server.is_running
    assert server_threads() == []
    # Nothing is left fixed by the failed start: the server can be set up again and started.
    server.port = 0
    server.start()
    assert server.is_running


def test_stop_when_not_running_does_nothing(make_server: MakeServer) -> None:
    server = make_server()
    server.stop()
    server.start()
    server.stop()
    server.stop()
    assert not server.is_running


def test_restart_after_stop(make_server: MakeServer, smtp_client: Connect) -> None:
    server = make_server()
    received = collect(server)
    for round_ in range(2):
        server.start()
        client = smtp_client(server)
        assert client.sendmail(SENDER, [RECIPIENT], MESSAGE) == {}
        client.quit()
        server.stop()
        assert not server.is_running
        assert len(received) == round_ + 1
    assert server_threads() == []


def test_with_statement(make_server: MakeServer, smtp_client: Connect) -> None:
    server = make_server()
    received = collect(server)
    with server:
        assert server.is_running
        smtp_client(server).sendmail(SENDER, [RECIPIENT], MESSAGE)
    assert not server.is_running
    assert [m.data for m in received] == [MESSAGE]


def test_greeting_and_ehlo_through_smtplib(make_server: MakeServer, smtp_client: Connect) -> None:
    server = make_server().start()
    client = smtp_client(server)
    code, text = client.ehlo("client.test")
    assert code == 250
    assert text.splitlines()[0] == b"mx.test"
    for keyword in ("pipelining", "8bitmime", "smtputf8", "enhancedstatuscodes"):
        assert client.has_extn(keyword), keyword
    assert client.esmtp_features["size"] == str(DEFAULT_MAX_MESSAGE_SIZE)  # the enforced limit
    assert not client.has_extn("starttls")
    assert client.noop() == (250, b"2.0.0 Ok")
    assert client.quit() == (221, b"2.0.0 Bye")


def test_session_ids_are_unique(make_server: MakeServer, smtp_client: Connect) -> None:
    server = make_server()
    seen: list[str] = []
    server.from_listener(lambda event: seen.append(event.context.session.session_id))
    server.start()
    for _ in range(3):
        smtp_client(server).sendmail(SENDER, [RECIPIENT], MESSAGE)
    assert len(set(seen)) == 3


# Limits


def test_max_recipients(make_server: MakeServer, smtp_client: Connect) -> None:
    server = make_server(max_recipients=2)
    received = collect(server)
    server.start()
    recipients = ["a@example.com", "b@example.com", "c@example.com"]
    refused = smtp_client(server).sendmail(SENDER, recipients, MESSAGE)
    assert refused == {"c@example.com": (452, b"4.5.3 Error: too many recipients")}
    assert received[0].recipients == ("a@example.com", "b@example.com")


def test_preferred_size_is_advertised_and_checked(
    make_server: MakeServer, smtp_client: Connect
) -> None:
    server = make_server(preferred_max_message_size=len(MESSAGE))
    received = collect(server)
    server.start()
    client = smtp_client(server)
    client.ehlo()
    assert client.esmtp_features["size"] == str(len(MESSAGE))
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        client.sendmail(SENDER, [RECIPIENT], MESSAGE + b"more\r\n")
    assert refused.value.smtp_code == 552
    assert refused.value.smtp_error == b"5.3.4 Message size exceeds fixed limit"
    assert client.sendmail(SENDER, [RECIPIENT], MESSAGE) == {}
    assert [m.data for m in received] == [MESSAGE]


def test_size_parameter_accepted_without_preferred_size(
    make_server: MakeServer, raw_client: Connect
) -> None:
    client = raw_client(make_server().start())
    client.command(b"EHLO client.test")
    reply = client.command(b"MAIL FROM:<alice@example.org> SIZE=1000000")
    assert reply == replies.SENDER_OK.wire


def test_message_over_max_message_size(make_server: MakeServer, smtp_client: Connect) -> None:
    server = make_server(max_message_size=64)
    received = collect(server)
    server.start()
    client = smtp_client(server)
    # The limit is announced, and smtplib declares its size: refused at MAIL already.
    with pytest.raises(smtplib.SMTPSenderRefused) as early:
        client.sendmail(SENDER, [RECIPIENT], b"x" * 100 + b"\r\n")
    assert early.value.smtp_code == 552
    # A client that declares nothing is refused after the content, which was not kept.
    assert client.esmtp_features["size"] == "64"
    client.mail(SENDER)
    client.rcpt(RECIPIENT)
    assert client.data(b"x" * 100 + b"\r\n") == (552, b"5.3.4 Too much mail data")
    assert received == []
    assert client.sendmail(SENDER, [RECIPIENT], b"short\r\n") == {}
    assert [m.data for m in received] == [b"short\r\n"]


def test_max_connections(make_server: MakeServer, raw_client: Connect) -> None:
    server = make_server(max_connections=1).start()
    first = raw_client(server)
    assert first.greeting == GREETING
    second = raw_client(server)
    assert second.greeting == replies.TOO_MANY_CONNECTIONS.wire
    assert second.read_to_end() == b""
    assert first.command(b"NOOP") == replies.OK.wire
    assert first.command(b"QUIT") == replies.CLOSING.wire
    assert first.read_to_end() == b""
    third = raw_client(server)
    assert third.greeting == GREETING
    assert third.command(b"NOOP") == replies.OK.wire


def test_over_long_line_on_the_wire(make_server: MakeServer, raw_client: Connect) -> None:
    client = raw_client(make_server().start())
    assert client.command(b"NOOP " + b"x" * 100_000) == replies.LINE_TOO_LONG.wire
    assert client.command(b"NOOP") == replies.OK.wire


def test_pipelined_replies_come_in_order(make_server: MakeServer, raw_client: Connect) -> None:
    server = make_server()
    received = collect(server)
    client = raw_client(server.start())
    client.send(
        b"EHLO client.test\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\n"
        b"RCPT TO:<bad>\r\nRCPT TO:<carol@example.com>\r\nDATA\r\n"
    )
    assert client.reply().startswith(b"250-mx.test\r\n")
    assert [client.reply() for _ in range(5)] == [
        replies.SENDER_OK.wire,
        replies.RECIPIENT_OK.wire,
        replies.BAD_RECIPIENT.wire,
        replies.RECIPIENT_OK.wire,
        replies.START_MAIL_INPUT.wire,
    ]
    client.send(b"Subject: x\r\n\r\n..\r\n.\r\nNOOP\r\nQUIT\r\n")
    assert client.read_to_end() == (
        replies.MESSAGE_ACCEPTED.wire + replies.OK.wire + replies.CLOSING.wire
    )
    assert received[0].recipients == ("bob@example.com", "carol@example.com")
    assert received[0].data == b"Subject: x\r\n\r\n.\r\n"


def test_message_sent_byte_by_byte(make_server: MakeServer, raw_client: Connect) -> None:
    server = make_server()
    received = collect(server)
    client = raw_client(server.start())
    client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    start_transaction(client)
    for byte in b"a\r\n..b\r\n.\r\n":
        client.send(bytes([byte]))
    assert client.reply() == replies.MESSAGE_ACCEPTED.wire
    assert received[0].data == b"a\r\n.b\r\n"


# A fault of the server itself


class _FailOnClosedLine(logging.Filter):
    """A broken logging filter: raises on every "closed" line of a connection."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("%s closed"):
            raise RuntimeError("a broken filter")
        return True


def test_a_log_filter_that_raises_does_not_keep_a_connection_counted(
    make_server: MakeServer, raw_client: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    # With room for one connection, each next one is served only if the last was forgotten.
    server = make_server(max_connections=1).start()
    broken = _FailOnClosedLine()
    session_logger = logging.getLogger("fastsmtp.session")
    session_logger.addFilter(broken)
    try:
        with caplog.at_level(logging.INFO, logger="fastsmtp.session"):
            for _ in range(3):
                deadline = time.monotonic() + 5
                while (client := raw_client(server)).greeting != GREETING:
                    assert time.monotonic() < deadline, client.greeting
                    client.close()
                    time.sleep(0.01)
                assert client.command(b"QUIT").startswith(b"221 ")
                assert client.read_to_end() == b""
    finally:
        session_logger.removeFilter(broken)
    server.stop()
    assert not server.is_running


def test_a_fault_of_ours_costs_one_connection_not_the_server(
    make_server: MakeServer,
    raw_client: Connect,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(core: object, argument: bytes) -> None:
        raise ValueError("a fault in the session core")

    server = make_server()
    # The dispatch table of the session core this server runs: compiled or pure.
    core_module = sys.modules[_wire.session_core(server._wire).__module__]
    monkeypatch.setitem(core_module._HANDLERS, b"NOOP", broken)
    server.start()
    client = raw_client(server)
    assert client.command(b"EHLO client.test").startswith(b"250")
    with caplog.at_level(logging.ERROR, logger="fastsmtp.session"):
        client.send(b"NOOP\r\n")
        assert client.reply() == replies.LOCAL_ERROR_CLOSING.wire
        assert client.read_to_end() == b""
    assert "internal error" in caplog.text and "ValueError" in caplog.text

    other = raw_client(server)
    assert other.command(b"EHLO client.test").startswith(b"250")
    assert other.command(b"QUIT") == replies.CLOSING.wire


# Idle timeout


@pytest.mark.parametrize("timeout", [0.5, timedelta(milliseconds=500)], ids=["float", "timedelta"])
def test_idle_client_is_closed(
    make_server: MakeServer, raw_client: Connect, timeout: float | timedelta
) -> None:
    client = raw_client(make_server(connection_timeout=timeout).start())
    assert client.reply() == replies.TIMEOUT.wire
    assert client.read_to_end() == b""


def test_idle_client_in_data_is_closed(make_server: MakeServer, raw_client: Connect) -> None:
    server = make_server(connection_timeout=0.5)
    received = collect(server)
    client = raw_client(server.start())
    start_transaction(client)
    client.send(b"Subject: unfinished\r\n")
    assert client.reply() == replies.TIMEOUT.wire
    assert client.read_to_end() == b""
    assert received == []


def test_activity_keeps_the_connection_open(make_server: MakeServer, raw_client: Connect) -> None:
    client = raw_client(make_server(connection_timeout=1.0).start())
    for _ in range(6):
        time.sleep(0.25)
        assert client.command(b"NOOP") == replies.OK.wire
    assert client.reply() == replies.TIMEOUT.wire


@pytest.mark.parametrize(
    "prefix", [b"NOOP ", b"NOOP " + b"x" * 5000], ids=["short line", "after 500 for its length"]
)
def test_a_command_trickled_byte_by_byte_does_not_hold_the_connection(
    make_server: MakeServer, raw_client: Connect, prefix: bytes
) -> None:
    # Bytes that never complete a line are no activity: the line has connection_timeout to
    # arrive whole, however steadily it trickles (a slowloris between commands).
    client = raw_client(make_server(connection_timeout=0.8).start())
    client.send(prefix)
    if len(prefix) > 4096:
        assert client.reply() == replies.LINE_TOO_LONG.wire
    started = time.monotonic()
    client.sock.settimeout(0.1)
    reply = b""
    while not reply and time.monotonic() - started < 5.0:
        client.send(b"y")
        try:
            reply = client.reply()
        except TimeoutError:
            continue
    assert reply == replies.TIMEOUT.wire
    assert 0.7 < time.monotonic() - started < 2.0


def test_a_slow_listener_is_not_an_idle_client(
    make_server: MakeServer, raw_client: Connect
) -> None:
    server = make_server(connection_timeout=0.3)
    server.mail_listener(lambda mail: time.sleep(1.0))
    client = raw_client(server.start())
    start_transaction(client)
    client.send(b"x\r\n.\r\n")
    assert client.reply() == replies.MESSAGE_ACCEPTED.wire
    assert client.reply() == replies.TIMEOUT.wire


def test_new_connections_after_timeouts(make_server: MakeServer, raw_client: Connect) -> None:
    server = make_server(connection_timeout=0.5).start()
    first = raw_client(server)
    second = raw_client(server)
    assert first.reply() == replies.TIMEOUT.wire
    assert second.reply() == replies.TIMEOUT.wire
    fresh = raw_client(server)
    assert fresh.command(b"NOOP") == replies.OK.wire


# Shutdown


def test_stop_lets_a_transaction_finish(make_server: MakeServer, raw_client: Connect) -> None:
    server = make_server(shutdown_grace=10)
    received = collect(server)
    server.start()
    port = server.bound_port
    busy = raw_client(server)
    assert busy.command(b"HELO client.test") == b"250 mx.test\r\n"
    assert busy.command(b"MAIL FROM:<alice@example.org>") == replies.SENDER_OK.wire
    idle = raw_client(server)
    assert idle.command(b"HELO client.test") == b"250 mx.test\r\n"

    stopper = threading.Thread(target=server.stop)
    stopper.start()
    assert idle.reply() == replies.SHUTTING_DOWN.wire
    assert idle.read_to_end() == b""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert stopper.is_alive()

    assert busy.command(b"RCPT TO:<bob@example.com>") == replies.RECIPIENT_OK.wire
    assert busy.command(b"DATA") == replies.START_MAIL_INPUT.wire
    busy.send(b"Subject: last\r\n\r\nstill delivered\r\n.\r\n")
    assert busy.reply() == replies.MESSAGE_ACCEPTED.wire
    assert busy.reply() == replies.SHUTTING_DOWN.wire
    assert busy.read_to_end() == b""
    stopper.join(10)
    assert not stopper.is_alive()
    assert not server.is_running
    assert [m.data for m in received] == [b"Subject: last\r\n\r\nstill delivered\r\n"]


def test_stop_closes_a_stuck_transaction_after_the_grace(
    make_server: MakeServer, raw_client: Connect
) -> None:
    server = make_server(shutdown_grace=0.5)
    received = collect(server)
    client = raw_client(server.start())
    start_transaction(client)
    client.send(b"Subject: never finished\r\n")
    server.stop()
    assert not server.is_running
    assert client.reply() == replies.SHUTTING_DOWN.wire
    assert client.read_to_end() == b""
    assert received == []
    assert server_threads() == []


def test_stop_waits_for_a_listener_in_progress(
    make_server: MakeServer, raw_client: Connect
) -> None:
    server = make_server(shutdown_grace=10)
    entered = threading.Event()
    release = threading.Event()

    def slow(mail: IncomingMail) -> None:
        entered.set()
        release.wait(CLIENT_WAIT)

    server.mail_listener(slow)
    client = raw_client(server.start())
    start_transaction(client)
    client.send(b"x\r\n.\r\n")
    assert entered.wait(CLIENT_WAIT)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    release.set()
    assert client.reply() == replies.MESSAGE_ACCEPTED.wire
    assert client.reply() == replies.SHUTTING_DOWN.wire
    stopper.join(10)
    assert not stopper.is_alive()


def test_stop_returns_once_every_connection_is_closed(
    make_server: MakeServer, raw_client: Connect
) -> None:
    server = make_server().start()
    clients = [raw_client(server) for _ in range(5)]
    assert clients[0].command(b"HELO client.test") == b"250 mx.test\r\n"
    server.stop()
    for client in clients:
        client.sock.settimeout(1.0)  # closed already: only a bound, should it hang
        assert client.read_to_end() == replies.SHUTTING_DOWN.wire


def flood_without_reading(client: Any) -> None:
    """Pipeline NOOPs and never read the replies, until the server stops reading too."""
    client.sock.setblocking(False)
    chunk = b"NOOP\r\n" * 10_000
    stalled = 0
    deadline = time.monotonic() + 20
    while stalled < 20 and time.monotonic() < deadline:
        try:
            client.sock.send(chunk)
            stalled = 0
        except BlockingIOError:
            stalled += 1
            time.sleep(0.05)
        except (ConnectionResetError, BrokenPipeError):
            return  # the server already gave up on this client (its idle timeout ran out)
    assert stalled == 20, "the server kept reading a client that never reads"


def test_client_that_never_reads_is_closed_after_the_timeout(
    make_server: MakeServer, raw_client: Connect
) -> None:
    server = make_server(connection_timeout=0.5, max_connections=1).start()
    greedy = raw_client(server)
    try:
        flood_without_reading(greedy)
        # Once the greedy connection is gone, a new one is admitted again.
        greetings = []
        for _ in range(25):
            with socket.create_connection(("127.0.0.1", server.bound_port), timeout=5) as new:
                greetings.append(new.recv(1024))
            if greetings[-1] == GREETING:
                break
            time.sleep(0.2)
        assert greetings[-1] == GREETING
    finally:
        greedy.close()


def test_stop_is_not_blocked_by_a_client_that_never_reads(
    make_server: MakeServer, raw_client: Connect
) -> None:
    server = make_server(shutdown_grace=0.5).start()
    greedy = raw_client(server)
    stopper = threading.Thread(target=server.stop)
    try:
        flood_without_reading(greedy)
        stopper.start()
        stopper.join(5)  # the grace is 0.5 s: 5 s is only a bound
        assert not stopper.is_alive()
    finally:
        greedy.close()
        if stopper.is_alive():
            stopper.join(10)


STOP_FROM_A_LISTENER = """
import asyncio, smtplib, sys
from fastsmtp import _wire, smtp_server

server = smtp_server(port=0, host="127.0.0.1", hostname="mx.test", shutdown_grace=0.5)
server._wire = _wire.load(sys.argv[1])
outcome = []

if sys.argv[2] == "sync":
    @server.mail_listener
    def on_mail(mail):
        try:
            server.stop()
            outcome.append("returned")
        except RuntimeError:
            outcome.append("refused")
else:
    @server.mail_listener
    async def on_mail(mail):
        try:
            await server.stop_async()
            outcome.append("returned")
        except RuntimeError:
            outcome.append("refused")

server.start()
client = smtplib.SMTP("127.0.0.1", server.bound_port, timeout=5)
try:
    client.sendmail("alice@example.org", ["bob@example.com"], b"x\\r\\n")
except smtplib.SMTPException:
    pass
if outcome == ["refused"]:
    server.stop()
server.stop()
server.start()
server.stop()
print("done", outcome, server.is_running)
"""


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_stop_from_a_listener(wire: ModuleType, kind: str) -> None:
    # In a child process: a hung server leaves a non-daemon thread that would hang pytest.
    twin = wire.__name__.rsplit("_", 1)[1]
    try:
        child = subprocess.run(
            [sys.executable, "-c", STOP_FROM_A_LISTENER, twin, kind],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the process never ended: stopping from a listener hung the server")
    assert child.returncode == 0, child.stderr
    assert child.stdout.startswith(b"done ")
    assert child.stdout.rstrip().endswith(b"False")


# Life cycle on the caller's event loop


def test_async_with_and_aiosmtplib(make_server: MakeServer) -> None:
    server = make_server()
    received: list[tuple[str, tuple[str, ...], bytes]] = []

    @server.mail_listener
    async def on_mail(mail: IncomingMail) -> None:
        received.append((mail.envelope_from, mail.recipients, mail.data))

    async def main() -> None:
        async with server:
            assert server.is_running
            smtp = aiosmtplib.SMTP(
                hostname="127.0.0.1", port=server.bound_port, timeout=5, start_tls=False
            )
            async with smtp:
                errors, response = await smtp.sendmail(SENDER, [RECIPIENT], MESSAGE)
            assert errors == {}
            assert response == "2.0.0 Ok"
        assert not server.is_running

    asyncio.run(main())
    assert received == [(SENDER, (RECIPIENT,), MESSAGE)]


def test_async_with_a_sync_listener(make_server: MakeServer) -> None:
    server = make_server()
    threads: list[str] = []
    server.mail_listener(lambda mail: threads.append(threading.current_thread().name))

    async def main() -> None:
        async with server:
            await aiosmtplib.send(
                MESSAGE,
                sender=SENDER,
                recipients=[RECIPIENT],
                hostname="127.0.0.1",
                port=server.bound_port,
                timeout=5,
                start_tls=False,
            )

    asyncio.run(main())
    assert len(threads) == 1
    assert threads[0] != threading.current_thread().name


def test_serve_forever_and_stop_async(make_server: MakeServer) -> None:
    server = make_server()
    received = collect(server)

    async def main() -> None:
        serving = asyncio.create_task(server.serve_forever())
        async with asyncio.timeout(10):
            while not server.is_running:
                await asyncio.sleep(0.01)
        smtp = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=server.bound_port, timeout=5, start_tls=False
        )
        await smtp.connect()
        await smtp.sendmail(SENDER, [RECIPIENT], MESSAGE)
        port = server.bound_port
        await server.stop_async()
        assert not server.is_running
        await asyncio.wait_for(serving, 10)
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        smtp.close()

    asyncio.run(main())
    assert [m.data for m in received] == [MESSAGE]


def test_cancelling_serve_forever_stops_the_server(make_server: MakeServer) -> None:
    server = make_server()

    async def main() -> None:
        serving = asyncio.create_task(server.serve_forever())
        async with asyncio.timeout(10):
            while not server.is_running:
                await asyncio.sleep(0.01)
        port = server.bound_port
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        assert not server.is_running
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)

    asyncio.run(main())


def test_stop_from_another_thread_while_serving_on_a_loop(make_server: MakeServer) -> None:
    server = make_server()

    async def main() -> None:
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_port)
            assert await reader.readline() == GREETING
            await asyncio.to_thread(server.stop)
            assert not server.is_running
            assert await reader.read() == replies.SHUTTING_DOWN.wire
            writer.close()

    asyncio.run(main())


def test_blocking_stop_on_the_servers_own_loop_raises(make_server: MakeServer) -> None:
    server = make_server()

    async def main() -> None:
        async with server:
            with pytest.raises(RuntimeError, match="stop_async"):
                server.stop()
            assert server.is_running

    asyncio.run(main())
    assert not server.is_running


def test_restart_on_a_new_loop(make_server: MakeServer) -> None:
    server = make_server()
    received = collect(server)

    async def one_round() -> None:
        async with server:
            await aiosmtplib.send(
                MESSAGE,
                sender=SENDER,
                recipients=[RECIPIENT],
                hostname="127.0.0.1",
                port=server.bound_port,
                timeout=5,
                start_tls=False,
            )

    asyncio.run(one_round())
    asyncio.run(one_round())
    server.start()
    server.stop()
    assert len(received) == 2


def test_smtputf8_through_aiosmtplib(make_server: MakeServer) -> None:
    server = make_server()
    received: list[tuple[str, tuple[str, ...], bytes]] = []
    server.mail_listener(
        lambda mail: received.append((mail.envelope_from, mail.recipients, mail.data))
    )
    body = "Subject: café\r\n\r\nÜnïcode\r\n".encode()

    async def main() -> None:
        async with server:
            smtp = aiosmtplib.SMTP(
                hostname="127.0.0.1", port=server.bound_port, timeout=5, start_tls=False
            )
            async with smtp:
                errors, _ = await smtp.sendmail(
                    "élise@exämple.org", ["zoë@example.com"], body, mail_options=["SMTPUTF8"]
                )
            assert errors == {}

    asyncio.run(main())
    assert received == [("élise@exämple.org", ("zoë@example.com",), body)]


def wake_and_join(server: SMTPServer, thread: threading.Thread) -> None:
    """Wake the server's loop so a thread left waiting by a bug can finish; then join it."""
    if thread.is_alive() and server._loop is not None and not server._loop.is_closed():
        server._loop.call_soon_threadsafe(lambda: None)
    thread.join(10)


def test_serve_forever_while_serving_in_a_thread(make_server: MakeServer) -> None:
    server = make_server(shutdown_grace=0.5).start()
    [thread] = server_threads()
    try:
        with pytest.raises(RuntimeError):
            asyncio.run(asyncio.wait_for(server.serve_forever(), 10))
        assert server.is_running
        assert thread.is_alive()
        server.stop()
        assert not thread.is_alive()
    finally:
        wake_and_join(server, thread)


def test_stop_async_from_another_loop(make_server: MakeServer) -> None:
    server = make_server(shutdown_grace=0.5).start()
    [thread] = server_threads()
    try:
        with contextlib.suppress(RuntimeError):
            asyncio.run(asyncio.wait_for(server.stop_async(), 10))
        if server.is_running:
            server.stop()
        thread.join(3)
        assert not thread.is_alive()
    finally:
        wake_and_join(server, thread)


def test_port_zero_on_every_interface_is_one_port(make_server: MakeServer) -> None:
    server = make_server()
    server.host = None  # every interface: IPv6 and IPv4 sockets where both exist
    server.start()
    if len(server.addresses) < 2:
        pytest.skip("only one address family here: nothing to compare")
    assert {address[1] for address in server.addresses} == {server.bound_port}
    with socket.create_connection(("127.0.0.1", server.bound_port), timeout=5) as client:
        assert client.recv(1024) == GREETING


def test_uvloop_in_the_server_thread(make_server: MakeServer, raw_client: Connect) -> None:
    pytest.importorskip("uvloop")
    server = make_server(event_loop="uvloop", connection_timeout=0.5, shutdown_grace=10)
    received: list[IncomingMail] = []

    @server.mail_listener
    async def on_mail(mail: IncomingMail) -> None:
        if b"reject" in mail.data:
            mail.reject("No", 550)
        received.append(mail)

    server.start()
    client = raw_client(server)
    start_transaction(client)
    client.send(b"reject\r\n.\r\nMAIL FROM:<alice@example.org>\r\n")
    assert client.reply() == b"550 5.0.0 No\r\n"
    assert client.reply() == replies.SENDER_OK.wire
    assert client.command(b"RCPT TO:<bob@example.com>") == replies.RECIPIENT_OK.wire
    assert client.command(b"DATA") == replies.START_MAIL_INPUT.wire
    client.send(b"..kept\r\n.\r\n")
    assert client.reply() == replies.MESSAGE_ACCEPTED.wire
    assert [m.data for m in received] == [b".kept\r\n"]
    assert raw_client(server).reply() == replies.TIMEOUT.wire
    busy = raw_client(server)
    assert busy.command(b"HELO client.test") == b"250 mx.test\r\n"
    server.stop()
    assert busy.read_to_end() == replies.SHUTTING_DOWN.wire
    assert not server.is_running
