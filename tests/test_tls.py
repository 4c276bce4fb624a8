"""STARTTLS (RFC 3207) and implicit TLS (RFC 8314): the session core, then real sockets.

Every test runs on both twins (``wire``, or ``make_server`` which takes it). Certificates
come from a trustme CA (``tls_files`` in conftest). Clients are smtplib, aiosmtplib, swaks
and bare sockets; the bare ones check what no client library would do on its own: plaintext
injected after STARTTLS (CVE-2011-0411), garbage, half handshakes and silence.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import aiosmtplib
import pytest
from conftest import CLIENT_TIMEOUT, RawClient, TLSFiles

from fastsmtp import Endpoint, IncomingFrom, IncomingMail, SMTPServer, replies, smtp_server
from fastsmtp._session import CLOSE, START_TLS, MailFrom, SessionConfig, SessionCore
from fastsmtp._state import SessionState
from fastsmtp._wire import session_core
from fastsmtp.context import Session
from fastsmtp.tls import server_tls_context

MakeServer = Callable[..., SMTPServer]
Connect = Callable[[SMTPServer], RawClient]

HOST = "mx.test"
SENDER = "alice@example.org"
RECIPIENT = "bob@example.com"
MESSAGE = b"From: alice@example.org\r\nSubject: over TLS\r\n\r\nHello, Bob.\r\n"
EHLO = b"EHLO client.test\r\n"
EVIL = b"MAIL FROM:<evil@example.net>\r\n"
BASE_KEYWORDS = [
    HOST,
    "8BITMIME",
    "SIZE 33554432",
    "PIPELINING",
    "SMTPUTF8",
    "ENHANCEDSTATUSCODES",
]

SWAKS = shutil.which("swaks")
needs_swaks = pytest.mark.skipif(
    SWAKS is None and not os.environ.get("CI"), reason="swaks is not installed"
)


# The session core, without sockets


def new_core(wire: ModuleType, *, tls: bool = False, starttls: bool = True, **options: Any) -> Any:
    """Return a session core for mx.test that may (``starttls``) or does (``tls``) use TLS."""
    config = SessionConfig(HOST, **options)
    return session_core(wire)(
        config, wire, Session("t1", ("192.0.2.1", 4000), None), tls=tls, starttls=starttls
    )


def drive(core: SessionCore, data: bytes) -> tuple[bytes, list[object]]:
    """Feed ``data`` and step until input runs out, TLS must start or the session closes.

    Decision events are accepted; they are returned with ``START_TLS`` or ``CLOSE``.
    """
    core.feed(data)
    output = bytearray()
    events: list[object] = []
    while True:
        event = core.step()
        output += core.take_output()
        if event is None:
            return bytes(output), events
        events.append(event)
        if event is START_TLS or event is CLOSE:
            return bytes(output), events
        core.accept()


def keywords(ehlo_reply: bytes) -> list[str]:
    """Return the lines of a 250 EHLO reply without their codes."""
    return [line[4:].decode() for line in ehlo_reply.split(b"\r\n") if line]


def test_ehlo_offers_starttls_only_before_tls(wire: ModuleType) -> None:
    assert keywords(drive(new_core(wire), EHLO)[0]) == [*BASE_KEYWORDS, "STARTTLS"]
    assert keywords(drive(new_core(wire, starttls=False), EHLO)[0]) == BASE_KEYWORDS
    assert keywords(drive(new_core(wire, tls=True), EHLO)[0]) == BASE_KEYWORDS

    core = new_core(wire)
    assert drive(core, b"STARTTLS\r\n") == (replies.READY_TO_START_TLS.wire, [START_TLS])
    core.tls_established()
    assert keywords(drive(core, EHLO)[0]) == BASE_KEYWORDS


def test_starttls_drops_what_was_pipelined_after_it(wire: ModuleType) -> None:
    core = new_core(wire, decide_mail_from=True)
    output, events = drive(core, EHLO + b"STARTTLS\r\n" + EVIL + b"RCPT TO:<x@example.com>\r\n")
    assert output.endswith(replies.READY_TO_START_TLS.wire)
    assert events == [START_TLS]
    assert core.discarded_after_starttls == len(EVIL) + len(b"RCPT TO:<x@example.com>\r\n")
    assert core.buffered() == 0

    # Plaintext arriving later, before the handshake is done, is dropped as well.
    assert drive(core, EVIL + b"DATA\r\n") == (b"", [])
    assert core.buffered() == 0

    core.tls_established()
    output, events = drive(core, EHLO + b"RCPT TO:<bob@example.com>\r\n")
    assert output.endswith(replies.NEED_MAIL.wire)
    assert not any(isinstance(event, MailFrom) for event in events)


def test_starttls_injection_byte_by_byte(wire: ModuleType) -> None:
    # However the bytes are cut, nothing after STARTTLS runs before the handshake.
    core = new_core(wire, decide_mail_from=True)
    events: list[object] = []
    output = bytearray()
    for byte in EHLO + b"STARTTLS\r\n" + EVIL + b"QUIT\r\n":
        chunk_output, chunk_events = drive(core, bytes([byte]))
        output += chunk_output
        events += chunk_events
    assert events == [START_TLS]
    assert output.endswith(replies.READY_TO_START_TLS.wire)
    assert replies.CLOSING.wire not in output
    assert core.state is not SessionState.CLOSED


def test_commands_before_starttls_in_the_same_write_run(wire: ModuleType) -> None:
    core = new_core(wire)
    output, events = drive(core, b"NOOP\r\n" + EHLO + b"STARTTLS\r\n")
    assert output.startswith(replies.OK.wire)
    assert output.endswith(replies.READY_TO_START_TLS.wire)
    assert events == [START_TLS]
    assert core.discarded_after_starttls == 0


@pytest.mark.parametrize(
    ("options", "line", "reply"),
    [
        ({"starttls": False}, b"STARTTLS", replies.UNKNOWN_COMMAND),
        ({}, b"STARTTLS now", replies.NO_ARGUMENTS),
        ({"tls": True}, b"STARTTLS", replies.TLS_ALREADY_ACTIVE),
        ({"tls": True}, b"STARTTLS now", replies.NO_ARGUMENTS),
        ({"tls": True, "starttls": False}, b"STARTTLS", replies.TLS_ALREADY_ACTIVE),
    ],
)
def test_starttls_refusals(
    wire: ModuleType, options: dict[str, bool], line: bytes, reply: replies.Reply
) -> None:
    core = new_core(wire, **options)
    assert drive(core, EHLO)[0].startswith(b"250-")
    assert drive(core, line + b"\r\n") == (reply.wire, [])
    assert drive(core, b"NOOP\r\n")[0] == replies.OK.wire


def test_tls_established_forgets_everything(wire: ModuleType) -> None:
    core = new_core(wire, auth_mechanisms=("PLAIN",), allow_plaintext_auth=True)
    core.session.authenticated_user = "alice"
    drive(core, EHLO + b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\n")
    assert core.state is SessionState.RCPT
    assert drive(core, b"STARTTLS\r\n")[1] == [START_TLS]

    core.tls_established()
    assert core.tls
    assert core.state is SessionState.GREETED
    assert (core.envelope_from, core.recipients) == (None, [])
    assert (core.session.helo, core.session.esmtp) == (None, False)
    assert core.session.authenticated_user is None
    assert drive(core, b"MAIL FROM:<alice@example.org>\r\n")[0] == replies.NEED_HELO.wire


def test_tls_established_needs_starttls(wire: ModuleType) -> None:
    with pytest.raises(RuntimeError, match="without STARTTLS"):
        new_core(wire).tls_established()


@pytest.mark.parametrize(
    "line",
    [
        b"MAIL FROM:<a@example.org>",
        b"RCPT TO:<b@example.com>",
        b"DATA",
        b"AUTH PLAIN",
        b"VRFY bob",
        b"EXPN all",
        b"HELP",
    ],
)
def test_require_tls_refuses_until_tls(wire: ModuleType, line: bytes) -> None:
    core = new_core(wire, require_tls=True, auth_mechanisms=("PLAIN", "LOGIN"))
    drive(core, EHLO)
    assert drive(core, line + b"\r\n")[0] == replies.TLS_REQUIRED.wire
    for allowed, reply in [(b"NOOP", replies.OK), (b"RSET", replies.RESET_OK)]:
        assert drive(core, allowed + b"\r\n")[0] == reply.wire
    assert drive(core, b"HELO client.test\r\n")[0] == b"250 mx.test\r\n"

    assert drive(core, b"STARTTLS\r\n")[1] == [START_TLS]
    core.tls_established()
    drive(core, EHLO)
    assert drive(core, line + b"\r\n")[0] != replies.TLS_REQUIRED.wire


def test_require_tls_does_not_apply_to_implicit_tls(wire: ModuleType) -> None:
    core = new_core(wire, tls=True, starttls=False, require_tls=True)
    output, _ = drive(core, EHLO + b"MAIL FROM:<a@example.org>\r\n")
    assert output.endswith(replies.SENDER_OK.wire)


def test_quit_still_works_with_require_tls(wire: ModuleType) -> None:
    core = new_core(wire, require_tls=True)
    assert drive(core, b"QUIT\r\n") == (replies.CLOSING.wire, [CLOSE])


# Helpers for real sockets


def upgrade(client: RawClient, context: ssl.SSLContext) -> None:
    """Do the TLS handshake on the raw client's socket, after a 220 to STARTTLS."""
    assert client._buffer == b"", "the server sent something after its 220"
    client.sock = context.wrap_socket(client.sock, server_hostname="localhost")


def starttls(client: RawClient, context: ssl.SSLContext) -> None:
    """Send STARTTLS, expect 220 and do the handshake."""
    assert client.command(b"STARTTLS") == replies.READY_TO_START_TLS.wire
    upgrade(client, context)


def read_until_closed(sock: socket.socket) -> bytes:
    """Read until the server closes (a reset counts as closed); return what came."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    return data


def wait_for_no_connections(server: SMTPServer) -> None:
    """Wait (bounded) until the server has let go of every connection."""
    deadline = time.monotonic() + CLIENT_TIMEOUT
    while server._connections:
        assert time.monotonic() < deadline, f"connections left open: {server._connections}"
        time.sleep(0.01)


def client_hello(context: ssl.SSLContext) -> bytes:
    """Return the bytes a TLS client sends first: its ClientHello."""
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname="x")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def senders(server: SMTPServer) -> list[str]:
    """Register a from_listener that keeps every sender; return its list."""
    seen: list[str] = []
    server.from_listener(lambda event: seen.append(event.envelope_from))
    return seen


def collect(server: SMTPServer) -> list[IncomingMail]:
    """Register a mail_listener that keeps every message; return its list."""
    received: list[IncomingMail] = []
    server.mail_listener(received.append)
    return received


def send_over_starttls(server: SMTPServer, context: ssl.SSLContext) -> dict[str, Any]:
    """Deliver MESSAGE with smtplib over STARTTLS; return what smtplib reported."""
    with smtplib.SMTP("127.0.0.1", server.bound_port, timeout=CLIENT_TIMEOUT) as client:
        client.starttls(context=context)
        refused = client.sendmail(SENDER, [RECIPIENT], MESSAGE)
    return refused


# STARTTLS with real clients


async def live_aborts() -> int:
    """Count the timers of the running asyncio loop still due to abort a transport."""
    scheduled = asyncio.get_running_loop()._scheduled  # type: ignore[attr-defined]
    return sum(
        1
        for handle in scheduled
        if not handle.cancelled() and getattr(handle._callback, "__name__", "") == "abort"
    )


def test_a_closed_tls_connection_leaves_no_flush_timer(
    make_server: MakeServer, client_tls: ssl.SSLContext, server_tls: ssl.SSLContext
) -> None:
    # A TLS connection arms a timer when it closes, to abort it should the client never
    # answer close_notify; once the connection is gone, the timer must go too, or a busy
    # server piles them up in its loop.
    server = make_server(tls=server_tls, event_loop="asyncio").start()
    for _ in range(3):
        client = RawClient(server.bound_port)
        try:
            assert client.reply().startswith(b"220 ")
            assert client.command(b"EHLO client.test").startswith(b"250-")
            starttls(client, client_tls)
            assert client.command(b"QUIT") == replies.CLOSING.wire
            read_until_closed(client.sock)
        finally:
            client.close()
    wait_for_no_connections(server)
    loop = server._loop
    assert loop is not None
    assert asyncio.run_coroutine_threadsafe(live_aborts(), loop).result(CLIENT_TIMEOUT) == 0


def test_smtplib_starttls(
    make_server: MakeServer, client_tls: ssl.SSLContext, server_tls: ssl.SSLContext
) -> None:
    server = make_server(tls=server_tls)
    seen: list[tuple[Any, ...]] = []

    @server.mail_listener
    def on_mail(mail: IncomingMail) -> None:
        session = mail.context.session
        seen.append(
            (
                session.is_tls,
                session.tls_version,
                session.cipher,
                session.helo,
                session.peer_certificate,
                mail.data,
            )
        )

    server.start()
    with smtplib.SMTP("127.0.0.1", server.bound_port, timeout=CLIENT_TIMEOUT) as client:
        code, text = client.ehlo("before.test")
        assert code == 250 and b"STARTTLS" in text.split(b"\n")
        assert client.starttls(context=client_tls)[0] == 220
        code, text = client.ehlo("after.test")
        assert b"STARTTLS" not in text.split(b"\n")
        assert client.sendmail(SENDER, [RECIPIENT], MESSAGE) == {}

    [(is_tls, version, cipher, helo, certificate, data)] = seen
    assert is_tls and version in ("TLSv1.2", "TLSv1.3")
    assert cipher is not None and cipher[1] == version
    assert helo == "after.test"
    assert certificate is None
    assert data == MESSAGE


def test_raw_starttls_resets_the_dialogue(
    make_server: MakeServer,
    raw_client: Connect,
    client_tls: ssl.SSLContext,
    server_tls: ssl.SSLContext,
) -> None:
    server = make_server(tls=server_tls)
    received = collect(server)
    server.start()
    client = raw_client(server)
    assert client.command(b"EHLO client.test").endswith(b"250 STARTTLS\r\n")
    assert client.command(b"MAIL FROM:<alice@example.org>") == replies.SENDER_OK.wire
    starttls(client, client_tls)

    # The transaction opened before TLS is gone, and so is the greeting.
    assert client.command(b"RCPT TO:<bob@example.com>") == replies.NEED_MAIL.wire
    assert client.command(b"MAIL FROM:<alice@example.org>") == replies.NEED_HELO.wire
    assert client.command(b"EHLO client.test").endswith(b"250 ENHANCEDSTATUSCODES\r\n")
    assert client.command(b"STARTTLS") == replies.TLS_ALREADY_ACTIVE.wire
    assert client.command(b"STARTTLS x") == replies.NO_ARGUMENTS.wire
    assert client.command(b"MAIL FROM:<alice@example.org>") == replies.SENDER_OK.wire
    assert client.command(b"RCPT TO:<bob@example.com>") == replies.RECIPIENT_OK.wire
    assert client.command(b"DATA") == replies.START_MAIL_INPUT.wire
    client.send(MESSAGE + b".\r\n")
    assert client.reply() == replies.MESSAGE_ACCEPTED.wire
    assert client.command(b"QUIT") == replies.CLOSING.wire
    assert [mail.data for mail in received] == [MESSAGE]


def test_starttls_without_tls_configured(make_server: MakeServer, raw_client: Connect) -> None:
    server = make_server().start()
    client = raw_client(server)
    assert b"STARTTLS" not in client.command(b"EHLO client.test")
    assert client.command(b"STARTTLS") == replies.UNKNOWN_COMMAND.wire
    assert client.command(b"NOOP") == replies.OK.wire


def test_endpoint_without_starttls(
    make_server: MakeServer, raw_client: Connect, server_tls: ssl.SSLContext
) -> None:
    server = make_server(tls=server_tls)
    plain = server.add_endpoint(0, "127.0.0.1", starttls=False)
    server.start()
    client = RawClient(plain.bound_port)
    try:
        assert client.reply().startswith(b"220 ")
        assert b"STARTTLS" not in client.command(b"EHLO client.test")
        assert client.command(b"STARTTLS") == replies.UNKNOWN_COMMAND.wire
    finally:
        client.close()
    assert b"STARTTLS" in raw_client(server).command(b"EHLO client.test")


def test_aiosmtplib_start_tls(
    make_server: MakeServer, client_tls: ssl.SSLContext, server_tls: ssl.SSLContext
) -> None:
    server = make_server(tls=server_tls)
    received = collect(server)

    async def main() -> None:
        async with server:
            smtp = aiosmtplib.SMTP(
                hostname="127.0.0.1",
                port=server.bound_port,
                timeout=CLIENT_TIMEOUT,
                start_tls=True,
                tls_context=client_tls,
            )
            async with smtp:
                await smtp.ehlo()
                assert "starttls" not in smtp.esmtp_extensions
                errors, response = await smtp.sendmail(SENDER, [RECIPIENT], MESSAGE)
            assert errors == {}
            assert response == "2.0.0 Ok"

    asyncio.run(main())
    assert [(m.data, m.context.session.is_tls) for m in received] == [(MESSAGE, True)]


@needs_swaks
@pytest.mark.parametrize("verify", [True, False], ids=["verify", "no-verify"])
@pytest.mark.parametrize("mode", ["--tls", "--tls-on-connect"])
def test_swaks(
    make_server: MakeServer,
    tls_files: TLSFiles,
    server_tls: ssl.SSLContext,
    mode: str,
    verify: bool,
) -> None:
    server = make_server(tls=server_tls)
    implicit = server.add_endpoint(0, "127.0.0.1", implicit_tls=True)
    received = collect(server)
    server.start()
    port = implicit.bound_port if mode == "--tls-on-connect" else server.bound_port
    assert SWAKS is not None
    checks = ["--tls-verify", "--tls-ca-path", str(tls_files.ca_file)] if verify else []
    result = subprocess.run(
        [
            SWAKS,
            mode,
            *checks,
            "--server",
            f"127.0.0.1:{port}",
            "--from",
            SENDER,
            "--to",
            RECIPIENT,
            "--timeout",
            "10",
            "--header",
            "Subject: swaks over TLS",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout
    assert "TLS started" in result.stdout
    assert len(received) == 1
    assert received[0].context.session.is_tls
    assert received[0].email["Subject"] == "swaks over TLS"


def test_pipelined_ehlo_and_starttls(
    make_server: MakeServer,
    raw_client: Connect,
    client_tls: ssl.SSLContext,
    server_tls: ssl.SSLContext,
) -> None:
    # STARTTLS may end a pipelined group (RFC 2920 §3.1); what precedes it is answered.
    server = make_server(tls=server_tls).start()
    client = raw_client(server)
    client.send(b"EHLO client.test\r\nSTARTTLS\r\n")
    assert client.reply().startswith(b"250-mx.test\r\n")
    assert client.reply() == replies.READY_TO_START_TLS.wire
    upgrade(client, client_tls)
    assert client.command(b"EHLO client.test").startswith(b"250-mx.test\r\n")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_client_data_in_the_handshake_flight(
    make_server: MakeServer,
    raw_client: Connect,
    client_tls: ssl.SSLContext,
    server_tls: ssl.SSLContext,
    loop: str,
) -> None:
    # A TLS 1.3 client may send EHLO with its Finished message, in one write: the server
    # meets it while the handshake completes, and must keep it, not drop it.
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    server = make_server(tls=server_tls, event_loop=loop).start()
    client = raw_client(server)
    assert client.command(b"STARTTLS") == replies.READY_TO_START_TLS.wire
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = client_tls
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            client.sock.sendall(outgoing.read())
            chunk = client.sock.recv(65536)
            assert chunk, "the server closed during the handshake"
            incoming.write(chunk)
    tls.write(b"EHLO client.test\r\nNOOP\r\n")
    client.sock.sendall(outgoing.read())  # client Finished and the commands together

    received = b""
    while not received.endswith(replies.OK.wire):
        try:
            received += tls.read(65536)
        except ssl.SSLWantReadError:
            chunk = client.sock.recv(65536)
            assert chunk, f"the server closed; got {received!r}"
            incoming.write(chunk)
    assert received.startswith(b"250-mx.test\r\n")


# Implicit TLS


def test_implicit_tls_endpoint_beside_a_plain_one(
    make_server: MakeServer, client_tls: ssl.SSLContext, server_tls: ssl.SSLContext
) -> None:
    server = make_server(tls=server_tls)
    smtps = server.add_endpoint(0, "127.0.0.1", implicit_tls=True)
    assert isinstance(smtps, Endpoint) and smtps.implicit_tls
    received = collect(server)
    server.start()

    assert server.endpoints[1] is smtps
    assert server.addresses == [*server.endpoints[0].addresses, *smtps.addresses]
    assert smtps.bound_port != server.bound_port
    assert server.address[1] == server.bound_port

    with smtplib.SMTP_SSL(
        "127.0.0.1", smtps.bound_port, timeout=CLIENT_TIMEOUT, context=client_tls
    ) as client:
        code, text = client.ehlo("implicit.test")
        assert code == 250 and b"STARTTLS" not in text
        assert client.sendmail(SENDER, [RECIPIENT], MESSAGE) == {}
    assert send_over_starttls(server, client_tls) == {}

    assert received[0].context.session.helo == "implicit.test"
    assert [m.context.session.is_tls for m in received] == [True, True]
    assert received[0].context.session.local[1] == smtps.bound_port
    server.stop()
    assert smtps.addresses == []
    with pytest.raises(RuntimeError):
        smtps.bound_port  # noqa: B018


def test_implicit_tls_primary_with_aiosmtplib(
    make_server: MakeServer, client_tls: ssl.SSLContext, server_tls: ssl.SSLContext
) -> None:
    server = make_server(tls=server_tls, implicit_tls=True)
    received = collect(server)

    async def main() -> None:
        async with server:
            smtp = aiosmtplib.SMTP(
                hostname="127.0.0.1",
                port=server.bound_port,
                timeout=CLIENT_TIMEOUT,
                use_tls=True,
                tls_context=client_tls,
            )
            async with smtp:
                await smtp.ehlo()
                assert "starttls" not in smtp.esmtp_extensions
                errors, _ = await smtp.sendmail(SENDER, [RECIPIENT], MESSAGE)
            assert errors == {}

    asyncio.run(main())
    assert [(m.data, m.context.session.tls_version is not None) for m in received] == [
        (MESSAGE, True)
    ]


def test_starttls_on_implicit_tls(
    make_server: MakeServer, client_tls: ssl.SSLContext, server_tls: ssl.SSLContext
) -> None:
    server = make_server(tls=server_tls, implicit_tls=True).start()
    client = RawClient(server.bound_port)
    client.sock = client_tls.wrap_socket(client.sock, server_hostname="localhost")
    try:
        assert client.reply() == b"220 mx.test ESMTP fastsmtp\r\n"
        assert client.command(b"EHLO client.test").startswith(b"250-mx.test\r\n")
        assert client.command(b"STARTTLS") == replies.TLS_ALREADY_ACTIVE.wire
    finally:
        client.close()


# Injection (CVE-2011-0411, aiosmtpd CVE-2024-34083) and broken handshakes


def test_injection_in_the_same_write(
    make_server: MakeServer,
    raw_client: Connect,
    client_tls: ssl.SSLContext,
    server_tls: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = make_server(tls=server_tls)
    seen = senders(server)
    server.start()
    client = raw_client(server)
    assert client.command(b"EHLO client.test").startswith(b"250-")
    with caplog.at_level(logging.INFO, logger="fastsmtp.session"):
        client.send(b"STARTTLS\r\n" + EVIL)
        assert client.reply() == replies.READY_TO_START_TLS.wire
        upgrade(client, client_tls)

        assert client.command(b"EHLO client.test").startswith(b"250-")
        assert client.command(b"RCPT TO:<bob@example.com>") == replies.NEED_MAIL.wire
        assert client.command(b"MAIL FROM:<alice@example.org>") == replies.SENDER_OK.wire
    assert seen == [SENDER]
    assert f"dropped {len(EVIL)} octet(s) sent after STARTTLS" in caplog.text


def test_injection_in_a_later_plaintext_write(
    make_server: MakeServer,
    raw_client: Connect,
    client_tls: ssl.SSLContext,
    server_tls: ssl.SSLContext,
) -> None:
    # The plaintext comes after the 220, in its own write. Either the session drops it
    # (it came before the handshake began), and the handshake then runs out of time, or it
    # reaches the TLS layer as a broken ClientHello: no reply either way, and never a MAIL.
    server = make_server(tls=server_tls, tls_handshake_timeout=1)
    seen = senders(server)
    server.start()
    client = raw_client(server)
    client.command(b"EHLO client.test")
    assert client.command(b"STARTTLS") == replies.READY_TO_START_TLS.wire
    client.send(EVIL + b"RCPT TO:<bob@example.com>\r\nDATA\r\n")
    assert b"250" not in read_until_closed(client.sock)
    assert seen == []
    wait_for_no_connections(server)
    assert send_over_starttls(server, client_tls) == {}
    assert seen == [SENDER]


@pytest.mark.parametrize(
    "garbage",
    [b"\x16\x03\x01\x00\x05hello", b"\x00" * 64, b"GET / HTTP/1.0\r\n\r\n", b"\xff" * 3000],
    ids=["bad-record", "zeros", "http", "long"],
)
def test_garbage_instead_of_a_handshake(
    make_server: MakeServer,
    raw_client: Connect,
    client_tls: ssl.SSLContext,
    server_tls: ssl.SSLContext,
    garbage: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = make_server(tls=server_tls, tls_handshake_timeout=5)
    received = collect(server)
    server.start()
    with caplog.at_level(logging.INFO, logger="fastsmtp.session"):
        client = raw_client(server)
        assert client.command(b"STARTTLS") == replies.READY_TO_START_TLS.wire
        client.send(garbage)
        assert b"250" not in read_until_closed(client.sock)
        wait_for_no_connections(server)
    assert "TLS handshake failed" in caplog.text
    assert send_over_starttls(server, client_tls) == {}
    assert len(received) == 1


@pytest.mark.parametrize("sent", ["nothing", "half-hello"])
def test_client_closing_mid_handshake(
    make_server: MakeServer,
    raw_client: Connect,
    client_tls: ssl.SSLContext,
    server_tls: ssl.SSLContext,
    sent: str,
) -> None:
    server = make_server(tls=server_tls)
    received = collect(server)
    server.start()
    client = raw_client(server)
    assert client.command(b"STARTTLS") == replies.READY_TO_START_TLS.wire
    if sent == "half-hello":
        hello = client_hello(client_tls)
        client.send(hello[: len(hello) // 2])
    client.close()
    wait_for_no_connections(server)
    assert send_over_starttls(server, client_tls) == {}
    assert len(received) == 1


def test_handshake_timeout(
    make_server: MakeServer,
    raw_client: Connect,
    client_tls: ssl.SSLContext,
    server_tls: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = make_server(tls=server_tls, tls_handshake_timeout=0.2, connection_timeout=60)
    smtps = server.add_endpoint(0, "127.0.0.1", implicit_tls=True)
    received = collect(server)
    server.start()
    with caplog.at_level(logging.INFO, logger="fastsmtp.session"):
        # STARTTLS, then silence: closed without a reply (there is no channel to send one).
        client = raw_client(server)
        assert client.command(b"STARTTLS") == replies.READY_TO_START_TLS.wire
        assert read_until_closed(client.sock) == b""
        wait_for_no_connections(server)
    assert "TLS handshake failed" in caplog.text

    # Implicit TLS, and silence from the first byte.
    with socket.create_connection(("127.0.0.1", smtps.bound_port), CLIENT_TIMEOUT) as sock:
        assert read_until_closed(sock) == b""

    assert send_over_starttls(server, client_tls) == {}
    with smtplib.SMTP_SSL(
        "127.0.0.1", smtps.bound_port, timeout=CLIENT_TIMEOUT, context=client_tls
    ) as client_ssl:
        assert client_ssl.sendmail(SENDER, [RECIPIENT], MESSAGE) == {}
    assert len(received) == 2


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_implicit_tls_handshakes_however_early_the_client_hello(
    make_server: MakeServer, client_tls: ssl.SSLContext, server_tls: ssl.SSLContext, loop: str
) -> None:
    # uvloop reads the ClientHello before the handshake task runs: it must reach TLS intact.
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    server = make_server(tls=server_tls, implicit_tls=True, event_loop=loop).start()
    for _ in range(10):
        with smtplib.SMTP_SSL(
            "127.0.0.1", server.bound_port, timeout=CLIENT_TIMEOUT, context=client_tls
        ) as client:
            assert client.noop()[0] == 250


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_implicit_tls_connections_count_before_their_handshake(
    make_server: MakeServer, client_tls: ssl.SSLContext, server_tls: ssl.SSLContext, loop: str
) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    server = make_server(
        tls=server_tls,
        implicit_tls=True,
        max_connections=2,
        tls_handshake_timeout=30,
        shutdown_grace=10,
        event_loop=loop,
    ).start()
    silent = [socket.create_connection(("127.0.0.1", server.bound_port)) for _ in range(2)]
    deadline = time.monotonic() + CLIENT_TIMEOUT
    while len(server._connections) < 2:
        assert time.monotonic() < deadline, "the silent connections were never counted"
        time.sleep(0.01)

    # Over the limit: closed at once, with no handshake (nor a plaintext 421 it cannot read).
    over = socket.create_connection(("127.0.0.1", server.bound_port), timeout=CLIENT_TIMEOUT)
    over.sendall(client_hello(client_tls))
    assert read_until_closed(over) == b""
    over.close()

    # stop() ends unfinished handshakes at once: no transaction waits, whatever the grace.
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 5
    for sock in silent:
        sock.settimeout(CLIENT_TIMEOUT)
        assert read_until_closed(sock) == b""
        sock.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_stop_before_the_handshake_task_has_run(
    wire: ModuleType, server_tls: ssl.SSLContext, loop: str
) -> None:
    # stop() in the very loop iteration that made the connection: its handshake task has
    # not started, and cancelling it alone would run none of its code.
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")

    async def scenario() -> tuple[float, bytes]:
        server = smtp_server(
            port=0,
            host="127.0.0.1",
            hostname="mx.test",
            tls=server_tls,
            implicit_tls=True,
            shutdown_grace=0.5,
            tls_handshake_timeout=30,
        )
        server._wire = wire
        await server.__aenter__()
        sock = socket.create_connection(("127.0.0.1", server.bound_port))
        sock.setblocking(False)
        deadline = time.monotonic() + CLIENT_TIMEOUT
        while not any(
            c._task is not None and inspect.getcoroutinestate(c._task.get_coro()) == "CORO_CREATED"
            for c in server._connections
        ):
            assert time.monotonic() < deadline, "never saw the handshake task before its start"
            await asyncio.sleep(0)
        started = time.monotonic()
        async with asyncio.timeout(CLIENT_TIMEOUT):  # inline: stop() runs in this iteration
            await server.stop_async()
        took = time.monotonic() - started
        loop_ = asyncio.get_running_loop()
        received = await asyncio.wait_for(loop_.sock_recv(sock, 100), CLIENT_TIMEOUT)
        sock.close()
        return took, received

    runner = uvloop.run if loop == "uvloop" else asyncio.run
    took, received = runner(scenario())
    assert took < 2.0
    assert received == b""  # closed, with nothing said


def test_stop_during_a_handshake(
    make_server: MakeServer, raw_client: Connect, server_tls: ssl.SSLContext
) -> None:
    server = make_server(tls=server_tls, shutdown_grace=0.2)
    server.start()
    client = raw_client(server)
    assert client.command(b"STARTTLS") == replies.READY_TO_START_TLS.wire
    server.stop()
    assert not server.is_running
    assert read_until_closed(client.sock) == b""


# Client certificates


def client_certificate_context(tls_files: TLSFiles) -> ssl.SSLContext:
    """A client context with a certificate for client.test issued by the test CA."""
    cert, key = tls_files.issue("client", "client.test")
    context = tls_files.client_context()
    context.load_cert_chain(cert, key)
    return context


@pytest.mark.parametrize("mode", ["optional", "required"])
def test_client_certificate_is_seen(
    make_server: MakeServer, tls_files: TLSFiles, mode: str
) -> None:
    context = server_tls_context(
        tls_files.cert_file, tls_files.key_file, client_certs=mode, cafile=tls_files.ca_file
    )
    server = make_server(tls=context)
    certificates: list[Any] = []
    server.mail_listener(lambda mail: certificates.append(mail.context.session.peer_certificate))
    server.start()
    assert send_over_starttls(server, client_certificate_context(tls_files)) == {}
    [certificate] = certificates
    subject = dict(item for rdn in certificate["subject"] for item in rdn)
    assert subject["commonName"] == "client.test"


def test_optional_client_certificate_may_be_missing(
    make_server: MakeServer, tls_files: TLSFiles, client_tls: ssl.SSLContext
) -> None:
    context = server_tls_context(
        tls_files.cert_file,
        tls_files.key_file,
        client_certs="optional",
        cafile=tls_files.ca_file,
    )
    server = make_server(tls=context)
    certificates = []
    server.mail_listener(lambda mail: certificates.append(mail.context.session.peer_certificate))
    server.start()
    assert send_over_starttls(server, client_tls) == {}
    assert certificates == [None]


def test_required_client_certificate_missing(
    make_server: MakeServer, tls_files: TLSFiles, client_tls: ssl.SSLContext
) -> None:
    context = server_tls_context(
        tls_files.cert_file,
        tls_files.key_file,
        client_certs="required",
        cafile=tls_files.ca_file,
    )
    server = make_server(tls=context)
    received = collect(server)
    server.start()
    # TLS 1.3 reports the refusal after the client's side of the handshake: at once or at
    # the next read.
    with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
        send_over_starttls(server, client_tls)
    assert received == []
    wait_for_no_connections(server)
    assert send_over_starttls(server, client_certificate_context(tls_files)) == {}
    assert len(received) == 1


# require_tls on the wire


def test_require_tls(
    make_server: MakeServer,
    raw_client: Connect,
    client_tls: ssl.SSLContext,
    server_tls: ssl.SSLContext,
) -> None:
    server = make_server(tls=server_tls, require_tls=True)
    received = collect(server)
    server.start()
    client = raw_client(server)
    assert client.command(b"EHLO client.test").endswith(b"250 STARTTLS\r\n")
    assert client.command(b"MAIL FROM:<alice@example.org>") == replies.TLS_REQUIRED.wire
    assert client.command(b"NOOP") == replies.OK.wire

    with smtplib.SMTP("127.0.0.1", server.bound_port, timeout=CLIENT_TIMEOUT) as plain:
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            plain.sendmail(SENDER, [RECIPIENT], MESSAGE)
        assert refused.value.smtp_code == 530
    assert send_over_starttls(server, client_tls) == {}
    assert len(received) == 1


# uvloop


def test_tls_on_uvloop(
    wire: ModuleType, raw_client: Connect, client_tls: ssl.SSLContext, server_tls: ssl.SSLContext
) -> None:
    pytest.importorskip("uvloop")
    server = smtp_server(
        port=0,
        host="127.0.0.1",
        hostname=HOST,
        tls=server_tls,
        event_loop="uvloop",
        tls_handshake_timeout=1,
    )
    server._wire = wire
    smtps = server.add_endpoint(0, "127.0.0.1", implicit_tls=True)
    seen = senders(server)
    received = collect(server)
    server.start()
    try:
        # STARTTLS with a pipelined injection.
        client = raw_client(server)
        client.send(b"EHLO client.test\r\nSTARTTLS\r\n" + EVIL)
        assert client.reply().startswith(b"250-")
        assert client.reply() == replies.READY_TO_START_TLS.wire
        upgrade(client, client_tls)
        assert client.command(b"EHLO client.test").startswith(b"250-")
        assert client.command(b"RCPT TO:<bob@example.com>") == replies.NEED_MAIL.wire
        client.close()

        # A broken handshake, then implicit TLS and STARTTLS with smtplib.
        broken = raw_client(server)
        assert broken.command(b"STARTTLS") == replies.READY_TO_START_TLS.wire
        broken.send(b"\x00" * 64)
        assert read_until_closed(broken.sock) == b""
        with smtplib.SMTP_SSL(
            "127.0.0.1", smtps.bound_port, timeout=CLIENT_TIMEOUT, context=client_tls
        ) as client_ssl:
            assert client_ssl.sendmail(SENDER, [RECIPIENT], MESSAGE) == {}
        assert send_over_starttls(server, client_tls) == {}
        wait_for_no_connections(server)
    finally:
        server.stop()
    assert seen == [SENDER, SENDER]
    assert [m.context.session.is_tls for m in received] == [True, True]


# Options and the helper


def test_tls_options_are_validated(server_tls: ssl.SSLContext) -> None:
    with pytest.raises(TypeError, match="tls must be an ssl.SSLContext"):
        smtp_server(tls="cert.pem")
    with pytest.raises(TypeError, match="require_tls must be True or False"):
        smtp_server(require_tls=1)
    with pytest.raises(ValueError, match="tls_handshake_timeout"):
        smtp_server(tls_handshake_timeout=0)
    server = smtp_server(tls=server_tls)
    assert (server.tls, server.implicit_tls, server.require_tls) == (server_tls, False, False)
    assert server.tls_handshake_timeout == 30
    with pytest.raises(ValueError):
        server.add_endpoint(70000)
    with pytest.raises(TypeError):
        server.add_endpoint(465, implicit_tls="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "endpoint", "message"),
    [
        ({"implicit_tls": True}, None, "implicit TLS needs the tls option"),
        ({}, {"implicit_tls": True}, "implicit TLS needs the tls option"),
        ({"require_tls": True}, None, "require_tls needs the tls option"),
        ({"require_tls": True, "tls": "ctx"}, {"starttls": False}, "offers no STARTTLS"),
        ({"require_auth": True}, None, "require_auth needs an auth_listener"),
    ],
)
def test_inconsistent_options_fail_at_start(
    make_server: MakeServer,
    server_tls: ssl.SSLContext,
    options: dict[str, Any],
    endpoint: dict[str, bool] | None,
    message: str,
) -> None:
    if options.get("tls") == "ctx":
        options["tls"] = server_tls
    server = make_server(**options)
    if endpoint is not None:
        server.add_endpoint(0, "127.0.0.1", **endpoint)
    with pytest.raises(ValueError, match=message):
        server.start()
    assert not server.is_running


def test_endpoints_cannot_be_added_while_running(make_server: MakeServer) -> None:
    server = make_server().start()
    with pytest.raises(RuntimeError, match="while the server is running"):
        server.add_endpoint(0)
    assert [endpoint.addresses for endpoint in server.endpoints] == [server.addresses]


def test_server_tls_context_settings(tls_files: TLSFiles) -> None:
    context = server_tls_context(tls_files.cert_file, tls_files.key_file)
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.verify_mode == ssl.CERT_NONE
    for mode, verify in [("optional", ssl.CERT_OPTIONAL), ("required", ssl.CERT_REQUIRED)]:
        context = server_tls_context(
            tls_files.cert_file,
            tls_files.key_file,
            client_certs=mode,  # type: ignore[arg-type]
            cafile=tls_files.ca_file,
        )
        assert context.verify_mode == verify
    with pytest.raises(ValueError, match="client_certs must be one of"):
        server_tls_context(
            tls_files.cert_file,
            tls_files.key_file,
            client_certs="always",  # type: ignore[arg-type]
        )
    with pytest.raises(ssl.SSLError):
        server_tls_context(tls_files.ca_file)  # a certificate without its key


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_1_1_is_refused(
    make_server: MakeServer,
    raw_client: Connect,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # so that the refusal is the server's, not ours
    try:
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    except ValueError:
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    server = make_server(tls=server_tls).start()
    client = raw_client(server)
    assert client.command(b"STARTTLS") == replies.READY_TO_START_TLS.wire
    with pytest.raises((ssl.SSLError, ConnectionError)):
        upgrade(client, old)
    wait_for_no_connections(server)
    assert send_over_starttls(server, client_tls) == {}


def test_incoming_from_sees_tls(
    make_server: MakeServer, client_tls: ssl.SSLContext, server_tls: ssl.SSLContext
) -> None:
    server = make_server(tls=server_tls)
    flags: list[bool] = []

    @server.from_listener
    async def on_from(event: IncomingFrom) -> None:
        flags.append(event.context.session.is_tls)

    server.start()
    assert send_over_starttls(server, client_tls) == {}
    with smtplib.SMTP("127.0.0.1", server.bound_port, timeout=CLIENT_TIMEOUT) as plain:
        plain.sendmail(SENDER, [RECIPIENT], MESSAGE)
    assert flags == [True, False]
