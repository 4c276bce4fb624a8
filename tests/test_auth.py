"""AUTH (RFC 4954) with PLAIN (RFC 4616) and LOGIN: the session core, real clients, hashes.

Every protocol test runs on both twins (``wire``, or ``make_server`` which takes it). Over
real sockets AUTH runs inside STARTTLS or implicit TLS, as the server only offers it there
unless told otherwise. One test watches every log record at DEBUG for the credentials.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import shutil
import smtplib
import ssl
import subprocess
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

import aiosmtplib
import pytest
from conftest import CLIENT_TIMEOUT, RawClient

from fastsmtp import IncomingAuth, IncomingMail, SMTPServer, replies
from fastsmtp._session import CLOSE, START_TLS, AuthAttempt, SessionConfig, SessionCore
from fastsmtp._state import SessionState
from fastsmtp._wire import session_core
from fastsmtp.context import MessageContext, Session
from fastsmtp.errors import DropConnection, RejectError
from fastsmtp.passwords import PasswordFile, hash_password, verify_password

MakeServer = Callable[..., SMTPServer]
Connect = Callable[[SMTPServer], RawClient]

HOST = "mx.test"
USER = "alice"
PASSWORD = "correct horse battery staple"
SENDER = "alice@example.org"
RECIPIENT = "bob@example.com"
MESSAGE = b"From: alice@example.org\r\nSubject: authenticated\r\n\r\nHello.\r\n"
EHLO = b"EHLO client.test\r\n"

SWAKS = shutil.which("swaks")
needs_swaks = pytest.mark.skipif(
    SWAKS is None and not os.environ.get("CI"), reason="swaks is not installed"
)


def b64(data: bytes | str) -> bytes:
    """Base64 of ``data`` (a str is encoded as UTF-8), as a client sends it."""
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw)


def plain(user: str = USER, password: str = PASSWORD, authzid: str = "") -> bytes:
    """The PLAIN response for these credentials, base64-encoded."""
    return b64(f"{authzid}\0{user}\0{password}")


# The session core, without sockets


def new_core(wire: ModuleType, *, tls: bool = True, **options: Any) -> SessionCore:
    """Return a core for mx.test offering PLAIN and LOGIN; encrypted unless ``tls`` False."""
    options.setdefault("auth_mechanisms", ("PLAIN", "LOGIN"))
    return session_core(wire)(
        SessionConfig(HOST, **options), wire, Session("a1", ("192.0.2.1", 4000), None), tls=tls
    )


Decide = Callable[[SessionCore, object], None]


def accept(core: SessionCore, event: object) -> None:
    """Accept every decision."""
    core.accept()


def drive(core: SessionCore, data: bytes, decide: Decide = accept) -> tuple[bytes, list[Any]]:
    """Feed ``data``, step until input runs out or the session closes; return what came out."""
    core.feed(data)
    output = bytearray()
    events: list[Any] = []
    while True:
        event = core.step()
        output += core.take_output()
        if event is None:
            return bytes(output), events
        events.append(event)
        if event is CLOSE or event is START_TLS:
            return bytes(output), events
        decide(core, event)


def greeted(wire: ModuleType, **options: Any) -> SessionCore:
    """A core that has had its EHLO."""
    core = new_core(wire, **options)
    assert drive(core, EHLO)[0].startswith(b"250-")
    return core


def attempt(event: AuthAttempt) -> tuple[str, str, str, str | None]:
    """The comparable content of an ``AuthAttempt``."""
    return event.mechanism, event.username, event.password, event.authorization_id


def test_ehlo_offers_auth_over_tls_only(wire: ModuleType) -> None:
    assert drive(new_core(wire), EHLO)[0].endswith(b"250 AUTH PLAIN LOGIN\r\n")
    assert b"AUTH" not in drive(new_core(wire, tls=False), EHLO)[0]
    allowed = new_core(wire, tls=False, allow_plaintext_auth=True)
    assert drive(allowed, EHLO)[0].endswith(b"250 AUTH PLAIN LOGIN\r\n")
    assert b"AUTH" not in drive(new_core(wire, auth_mechanisms=()), EHLO)[0]


def test_plain_with_initial_response(wire: ModuleType) -> None:
    core = greeted(wire)
    output, events = drive(core, b"AUTH PLAIN " + plain() + b"\r\n")
    assert output == replies.AUTH_SUCCEEDED.wire
    assert [attempt(event) for event in events] == [("PLAIN", USER, PASSWORD, None)]
    assert core.session.authenticated_user == USER
    assert drive(core, b"AUTH PLAIN " + plain() + b"\r\n") == (
        replies.ALREADY_AUTHENTICATED.wire,
        [],
    )


def test_plain_after_an_empty_challenge(wire: ModuleType) -> None:
    core = greeted(wire)
    assert drive(core, b"AUTH PLAIN\r\n") == (b"334 \r\n", [])
    output, events = drive(core, plain() + b"\r\n")
    assert output == replies.AUTH_SUCCEEDED.wire
    assert [attempt(event) for event in events] == [("PLAIN", USER, PASSWORD, None)]


@pytest.mark.parametrize("initial", [False, True])
def test_login(wire: ModuleType, initial: bool) -> None:
    core = greeted(wire)
    if initial:
        assert drive(core, b"auth login " + b64(USER) + b"\r\n")[0] == (
            replies.AUTH_PASSWORD_CHALLENGE.wire
        )
    else:
        assert drive(core, b"AUTH LOGIN\r\n")[0] == b"334 VXNlcm5hbWU6\r\n"
        assert drive(core, b64(USER) + b"\r\n")[0] == b"334 UGFzc3dvcmQ6\r\n"
    output, events = drive(core, b64(PASSWORD) + b"\r\n")
    assert output == replies.AUTH_SUCCEEDED.wire
    assert [attempt(event) for event in events] == [("LOGIN", USER, PASSWORD, None)]


def test_plain_authorization_identity(wire: ModuleType) -> None:
    core = greeted(wire)
    events = drive(core, b"AUTH PLAIN " + plain(authzid="bob") + b"\r\n")[1]
    assert [attempt(event) for event in events] == [("PLAIN", USER, PASSWORD, "bob")]
    core = greeted(wire)
    events = drive(core, b"AUTH PLAIN " + plain(authzid=USER) + b"\r\n")[1]
    assert [attempt(event) for event in events] == [("PLAIN", USER, PASSWORD, None)]


def test_utf8_credentials(wire: ModuleType) -> None:
    core = greeted(wire)
    events = drive(core, b"AUTH PLAIN " + plain("zoë", "pässwörd") + b"\r\n")[1]
    assert [attempt(event) for event in events] == [("PLAIN", "zoë", "pässwörd", None)]


@pytest.mark.parametrize(
    ("lines", "reply"),
    [
        ([b"AUTH PLAIN", b"*"], replies.AUTH_CANCELLED),
        ([b"AUTH LOGIN", b"*"], replies.AUTH_CANCELLED),
        ([b"AUTH LOGIN", b64(USER), b"*"], replies.AUTH_CANCELLED),
        ([b"AUTH PLAIN not-base64!"], replies.AUTH_BAD_DATA),
        ([b"AUTH PLAIN", b"abc"], replies.AUTH_BAD_DATA),  # bad padding
        (
            [
                b"AUTH PLAIN =",
            ],
            replies.AUTH_BAD_DATA,
        ),  # empty: no user, no password
        ([b"AUTH PLAIN " + b64("alice password")], replies.AUTH_BAD_DATA),
        ([b"AUTH PLAIN " + b64("\0alice\0")], replies.AUTH_BAD_DATA),
        ([b"AUTH PLAIN " + b64("a\0b\0c\0d")], replies.AUTH_BAD_DATA),
        ([b"AUTH PLAIN " + b64(b"\0\xff\xfe\0pw")], replies.AUTH_BAD_DATA),
        ([b"AUTH LOGIN", b""], replies.AUTH_BAD_DATA),  # empty user name
        ([b"AUTH LOGIN", b64(b"\xc3")], replies.AUTH_BAD_DATA),
        ([b"AUTH LOGIN", b"MAIL FROM:<a@example.org>"], replies.AUTH_BAD_DATA),
    ],
)
def test_failed_exchanges(wire: ModuleType, lines: list[bytes], reply: replies.Reply) -> None:
    core = greeted(wire)
    output, events = drive(core, b"".join(line + b"\r\n" for line in lines))
    assert output.endswith(reply.wire)
    assert events == []
    assert core.auth_failures == 1
    assert core.session.authenticated_user is None
    # The exchange is over: the next line is a command again.
    assert drive(core, b"NOOP\r\n")[0] == replies.OK.wire


@pytest.mark.parametrize(
    ("options", "before", "line", "reply"),
    [
        ({}, b"", b"AUTH PLAIN", replies.NEED_HELO),
        ({}, EHLO + b"MAIL FROM:<a@example.org>\r\n", b"AUTH PLAIN", replies.AUTH_IN_TRANSACTION),
        ({}, EHLO, b"AUTH", replies.AUTH_SYNTAX),
        ({}, EHLO, b"AUTH CRAM-MD5", replies.AUTH_UNKNOWN_MECHANISM),
        ({}, EHLO, b"AUTH X\xffY", replies.EIGHT_BIT_COMMAND),
        ({"auth_mechanisms": ()}, EHLO, b"AUTH PLAIN", replies.UNKNOWN_COMMAND),
        ({"tls": False}, EHLO, b"AUTH PLAIN", replies.AUTH_NEEDS_TLS),
        ({"tls": False, "require_tls": True}, EHLO, b"AUTH PLAIN", replies.TLS_REQUIRED),
        (
            {"tls": False, "require_tls": True, "allow_plaintext_auth": True},
            EHLO,
            b"AUTH PLAIN",
            replies.TLS_REQUIRED,
        ),
    ],
)
def test_auth_refused(
    wire: ModuleType, options: dict[str, Any], before: bytes, line: bytes, reply: replies.Reply
) -> None:
    core = new_core(wire, **options)
    drive(core, before)
    assert drive(core, line + b"\r\n") == (reply.wire, [])
    assert core.auth_failures == 0


def test_plaintext_auth_when_allowed(wire: ModuleType) -> None:
    core = greeted(wire, tls=False, allow_plaintext_auth=True)
    assert drive(core, b"AUTH PLAIN " + plain() + b"\r\n")[0] == replies.AUTH_SUCCEEDED.wire


def reject_all(core: SessionCore, event: object) -> None:
    """Refuse every decision the way a listener's reject() does."""
    core.reject(replies.AUTH_FAILED)


def test_rejected_credentials_and_the_failure_limit(wire: ModuleType) -> None:
    core = greeted(wire)
    for _ in range(2):
        output, events = drive(core, b"AUTH PLAIN " + plain() + b"\r\n", reject_all)
        assert output == replies.AUTH_FAILED.wire
        assert len(events) == 1
    assert core.state is SessionState.READY
    output, events = drive(core, b"AUTH LOGIN\r\n" + b64(USER) + b"\r\n*\r\nNOOP\r\n")
    assert output.endswith(replies.AUTH_CANCELLED.wire + replies.TOO_MANY_AUTH_FAILURES.wire)
    assert events == [CLOSE]
    assert core.close_reason == "too many authentication failures"


def test_failure_limit_is_an_option(wire: ModuleType) -> None:
    core = greeted(wire, max_auth_failures=1)
    output, events = drive(core, b"AUTH PLAIN " + plain() + b"\r\n", reject_all)
    assert output == replies.AUTH_FAILED.wire + replies.TOO_MANY_AUTH_FAILURES.wire
    assert events[-1] is CLOSE


def test_listener_reply_and_drop(wire: ModuleType) -> None:
    temporary = replies.AUTH_TEMPORARY_FAILURE

    def later(core: SessionCore, event: object) -> None:
        core.reject(temporary)

    core = greeted(wire)
    assert drive(core, b"AUTH PLAIN " + plain() + b"\r\n", later)[0] == temporary.wire

    def drop(core: SessionCore, event: object) -> None:
        core.reject(replies.AUTH_FAILED, close=True)

    output, events = drive(core, b"AUTH PLAIN " + plain() + b"\r\n", drop)
    assert output == replies.AUTH_FAILED.wire
    assert events[-1] is CLOSE


def test_require_auth(wire: ModuleType) -> None:
    core = greeted(wire, require_auth=True)
    mail = b"MAIL FROM:<alice@example.org> AUTH=<>\r\n"
    assert drive(core, mail)[0] == replies.AUTH_REQUIRED.wire
    assert drive(core, b"AUTH PLAIN " + plain() + b"\r\n")[0] == replies.AUTH_SUCCEEDED.wire
    assert drive(core, mail)[0] == replies.SENDER_OK.wire


def test_answers_to_challenges_are_never_commands(wire: ModuleType) -> None:
    core = greeted(wire)
    refused: list[tuple[bytes, replies.Reply]] = []
    core.on_refuse = lambda verb, reply: refused.append((verb, reply))
    # "QUIT" and "RSET" are valid base64: here they are a user name and a password.
    output, events = drive(core, b"AUTH LOGIN\r\nQUIT\r\nRSET\r\n", reject_all)
    assert replies.CLOSING.wire not in output and replies.RESET_OK.wire not in output
    user, password = (base64.b64decode(word).decode() for word in (b"QUIT", b"RSET"))
    assert [attempt(event) for event in events] == [("LOGIN", user, password, None)]
    # A command line in answer to PLAIN's challenge is bad data, not a MAIL.
    output, events = drive(core, b"AUTH PLAIN\r\nMAIL FROM:<a@example.org>\r\n")
    assert output == b"334 \r\n" + replies.AUTH_BAD_DATA.wire
    assert core.state is SessionState.READY
    assert refused == [(b"AUTH", replies.AUTH_FAILED), (b"AUTH", replies.AUTH_BAD_DATA)]


def test_over_long_answer_ends_the_exchange(wire: ModuleType) -> None:
    core = greeted(wire, max_line_length=64)
    output, _ = drive(core, b"AUTH PLAIN\r\n" + b"A" * 100 + b"\r\nNOOP\r\n")
    assert output == b"334 \r\n" + replies.LINE_TOO_LONG.wire + replies.OK.wire
    assert core.auth_failures == 1


def test_auth_in_any_chunking(wire: ModuleType) -> None:
    data = (
        EHLO
        + b"AUTH LOGIN\r\n"
        + b64(USER)
        + b"\r\n*\r\nAUTH PLAIN\r\n"
        + plain()
        + b"\r\nMAIL FROM:<a@example.org>\r\n"
    )
    whole = drive(new_core(wire), data)
    core = new_core(wire)
    output, events = b"", []
    for index in range(len(data)):
        chunk_output, chunk_events = drive(core, data[index : index + 1])
        output += chunk_output
        events += chunk_events
    assert output == whole[0]
    assert [attempt(event) for event in events] == [attempt(event) for event in whole[1]]
    assert output.endswith(replies.AUTH_SUCCEEDED.wire + replies.SENDER_OK.wire)


def test_auth_attempt_repr_has_no_secret() -> None:
    event = AuthAttempt("PLAIN", USER, PASSWORD, None)
    assert PASSWORD not in repr(event) and USER not in repr(event)
    incoming = IncomingAuth(
        MessageContext(Session("x", None, None), None), "LOGIN", USER, PASSWORD
    )
    assert PASSWORD not in repr(incoming) and USER not in repr(incoming)


def test_incoming_auth_refusals() -> None:
    incoming = IncomingAuth(MessageContext(Session("x", None, None), None), "PLAIN", USER, "pw")
    with pytest.raises(RejectError) as default:
        incoming.reject()
    assert default.value.reply == replies.AUTH_FAILED
    with pytest.raises(RejectError) as custom:
        incoming.reject("Try again later", 454)
    assert custom.value.reply.wire == b"454 4.0.0 Try again later\r\n"
    with pytest.raises(RejectError) as text_only:
        incoming.reject("No such user")
    assert text_only.value.reply.wire == b"535 5.7.8 No such user\r\n"
    with pytest.raises(DropConnection) as dropped:
        incoming.drop_connection()
    assert dropped.value.reply == replies.AUTH_FAILED
    with pytest.raises(ValueError):
        incoming.reject("fine", 250)


# Real clients, over TLS


def tls_server(make_server: MakeServer, server_tls: ssl.SSLContext, **options: Any) -> Any:
    """A server with TLS and an auth listener that knows USER with PASSWORD.

    Returns the server and the list of users whose messages arrived.
    """
    server = make_server(tls=server_tls, **options)
    users: list[str | None] = []

    @server.auth_listener
    def check(event: IncomingAuth) -> None:
        if (event.username, event.password) != (USER, PASSWORD):
            event.reject()

    @server.mail_listener
    def on_mail(mail: IncomingMail) -> None:
        users.append(mail.context.session.authenticated_user)

    return server, users


@pytest.mark.parametrize(
    ("mechanism", "initial"),
    [("PLAIN", True), ("PLAIN", False), ("LOGIN", True), ("LOGIN", False)],
)
def test_smtplib_login(
    make_server: MakeServer,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    mechanism: str,
    initial: bool,
) -> None:
    server, users = tls_server(make_server, server_tls, require_auth=True)
    server.start()
    with smtplib.SMTP("127.0.0.1", server.bound_port, timeout=CLIENT_TIMEOUT) as client:
        client.starttls(context=client_tls)
        client.ehlo()
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        client.user, client.password = USER, PASSWORD
        method = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        code, text = client.auth(mechanism, method, initial_response_ok=initial)
        assert (code, text) == (235, b"2.7.0 Authentication successful")
        assert client.sendmail(SENDER, [RECIPIENT], MESSAGE) == {}
    assert users == [USER]


def test_smtplib_wrong_password(
    make_server: MakeServer, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    server, users = tls_server(make_server, server_tls, require_auth=True)
    server.start()
    with smtplib.SMTP("127.0.0.1", server.bound_port, timeout=CLIENT_TIMEOUT) as client:
        client.starttls(context=client_tls)
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            client.login(USER, "wrong")
        assert failed.value.smtp_code == 535
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail(SENDER, [RECIPIENT], MESSAGE)
        assert refused.value.smtp_code == 530
    assert users == []


def test_failures_end_the_connection_on_the_wire(
    make_server: MakeServer,
    raw_client: Connect,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
) -> None:
    server, _ = tls_server(make_server, server_tls)
    server.start()
    client = raw_client(server)
    assert client.command(b"STARTTLS") == replies.READY_TO_START_TLS.wire
    client.sock = client_tls.wrap_socket(client.sock, server_hostname="localhost")
    assert client.command(b"EHLO client.test").endswith(b"250 AUTH PLAIN LOGIN\r\n")
    bad = b"AUTH PLAIN " + plain(password="wrong")
    assert client.command(bad) == replies.AUTH_FAILED.wire
    assert client.command(b"AUTH PLAIN =") == replies.AUTH_BAD_DATA.wire
    client.send(bad + b"\r\n")
    assert client.read_to_end() == replies.AUTH_FAILED.wire + replies.TOO_MANY_AUTH_FAILURES.wire


def test_auth_hidden_and_refused_before_tls(
    make_server: MakeServer,
    raw_client: Connect,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
) -> None:
    server, _ = tls_server(make_server, server_tls)
    server.start()
    client = raw_client(server)
    ehlo = client.command(b"EHLO client.test")
    assert b"AUTH" not in ehlo and ehlo.endswith(b"250 STARTTLS\r\n")
    assert client.command(b"AUTH PLAIN " + plain()) == replies.AUTH_NEEDS_TLS.wire
    assert client.command(b"STARTTLS") == replies.READY_TO_START_TLS.wire
    client.sock = client_tls.wrap_socket(client.sock, server_hostname="localhost")
    assert client.command(b"EHLO client.test").endswith(b"250 AUTH PLAIN LOGIN\r\n")
    assert client.command(b"AUTH PLAIN " + plain()) == replies.AUTH_SUCCEEDED.wire
    assert client.command(b"MAIL FROM:<alice@example.org> AUTH=<>") == replies.SENDER_OK.wire


def test_plaintext_auth_allowed(make_server: MakeServer, smtp_client: Any) -> None:
    server = make_server(allow_plaintext_auth=True)
    seen: list[str] = []
    server.auth_listener(lambda event: seen.append(event.mechanism))
    server.start()
    client = smtp_client(server)
    assert client.login(USER, PASSWORD) == (235, b"2.7.0 Authentication successful")
    assert seen == ["PLAIN"]


def test_aiosmtplib_login(
    make_server: MakeServer, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    server, users = tls_server(make_server, server_tls, require_auth=True)
    smtps = server.add_endpoint(0, "127.0.0.1", implicit_tls=True)

    async def main() -> None:
        async with server:
            for port, implicit in [(server.bound_port, False), (smtps.bound_port, True)]:
                smtp = aiosmtplib.SMTP(
                    hostname="127.0.0.1",
                    port=port,
                    timeout=CLIENT_TIMEOUT,
                    use_tls=implicit,
                    start_tls=not implicit,
                    tls_context=client_tls,
                )
                async with smtp:
                    response = await smtp.login(USER, PASSWORD)
                    assert response.code == 235
                    errors, _ = await smtp.sendmail(SENDER, [RECIPIENT], MESSAGE)
                    assert errors == {}
                    again = await smtp.execute_command(b"AUTH", b"PLAIN", plain())
                    assert again.code == 503

    asyncio.run(main())
    assert users == [USER, USER]


@needs_swaks
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_auth(
    make_server: MakeServer, server_tls: ssl.SSLContext, mechanism: str, password: str = PASSWORD
) -> None:
    server, users = tls_server(make_server, server_tls, require_auth=True)
    server.start()
    assert SWAKS is not None
    command = [
        SWAKS, "--tls", "--server", f"127.0.0.1:{server.bound_port}",
        "--from", SENDER, "--to", RECIPIENT, "--timeout", "10",
        "--auth", mechanism, "--auth-user", USER, "--auth-password",
    ]  # fmt: skip
    good = subprocess.run(
        [*command, password],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
        check=False,
    )
    assert good.returncode == 0, good.stdout
    assert "235 2.7.0 Authentication successful" in good.stdout
    bad = subprocess.run(
        [*command, "wrong"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode != 0
    assert "535 5.7.8" in bad.stdout
    assert users == [USER]


def test_listeners_sync_in_a_worker_async_on_the_loop(
    make_server: MakeServer, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    server = make_server(tls=server_tls)
    threads: list[str] = []

    @server.auth_listener
    def sync_check(event: IncomingAuth) -> None:
        threads.append(threading.current_thread().name)

    @server.auth_listener
    async def async_check(event: IncomingAuth) -> None:
        threads.append(threading.current_thread().name)
        if event.password != PASSWORD:
            event.reject("5.7.8 Nope")

    server.start()
    with smtplib.SMTP("127.0.0.1", server.bound_port, timeout=CLIENT_TIMEOUT) as client:
        client.starttls(context=client_tls)
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            client.login(USER, "wrong")
        assert failed.value.smtp_error == b"5.7.8 Nope"
        assert client.login(USER, PASSWORD)[0] == 235
    assert threads[0].startswith("fastsmtp-listener")
    assert threads[1] == "fastsmtp-server"


def test_credentials_never_logged(
    make_server: MakeServer,
    raw_client: Connect,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "Tr0ub4dor&3-secret"
    server = make_server(tls=server_tls, allow_plaintext_auth=True, max_auth_failures=10)

    @server.auth_listener
    def check(event: IncomingAuth) -> None:
        if event.password == "explode" + secret:
            raise RuntimeError(f"backend down while checking {event.password}")
        if event.password != secret:
            event.reject()

    caplog.set_level(logging.DEBUG)
    server.start()
    forms = [
        secret,
        f"explode{secret}",
        b64(secret).decode(),
        plain(USER, secret).decode(),
        plain(USER, "explode" + secret).decode(),
        b64(secret[:-1]).decode(),
        plain(USER, "x" + secret).decode(),
    ]

    # Over plaintext (allowed here) and then over TLS: every kind of exchange.
    client = raw_client(server)
    client.command(b"EHLO client.test")
    for line in [
        b"AUTH PLAIN " + secret.encode(),  # not base64: the raw password as a "response"
        b"AUTH PLAIN " + plain(USER, "x" + secret),  # wrong password
        b"AUTH PLAIN " + plain(USER, "explode" + secret),  # the listener raises
    ]:
        assert client.command(line)[:1] in (b"4", b"5")
    assert client.command(b"AUTH LOGIN") == replies.AUTH_USERNAME_CHALLENGE.wire
    assert client.command(b64(USER)) == replies.AUTH_PASSWORD_CHALLENGE.wire
    assert client.command(secret.encode() + b"!") == replies.AUTH_BAD_DATA.wire
    assert client.command(b"AUTH LOGIN " + b64(USER)) == replies.AUTH_PASSWORD_CHALLENGE.wire
    assert client.command(b64(secret[:-1])) == replies.AUTH_FAILED.wire
    # A client that goes on after its exchange failed: its password lines arrive as commands.
    assert client.command(b"AUTH LOGIN") == replies.AUTH_USERNAME_CHALLENGE.wire
    assert client.command(base64.b64encode(b"\xff\xfe")) == replies.AUTH_BAD_DATA.wire
    assert client.command(b64(secret)) == replies.UNKNOWN_COMMAND.wire
    assert client.command(secret.encode()) == replies.UNKNOWN_COMMAND.wire
    assert client.command(b"STARTTLS") == replies.READY_TO_START_TLS.wire
    client.sock = client_tls.wrap_socket(client.sock, server_hostname="localhost")
    client.command(b"EHLO client.test")
    assert client.command(b"AUTH PLAIN") == b"334 \r\n"
    assert client.command(plain(USER, secret)) == replies.AUTH_SUCCEEDED.wire
    assert client.command(b"QUIT") == replies.CLOSING.wire
    server.stop()

    assert "authenticated with PLAIN" in caplog.text
    assert "auth listener failed: RuntimeError" in caplog.text
    assert "refused AUTH: 535 5.7.8" in caplog.text
    assert "refused (unknown or no verb): 500 5.5.2" in caplog.text
    for record in caplog.records:
        text = (record.getMessage() + repr(record.args) + str(record.exc_info)).lower()
        for form in forms:
            # Not even a part of one, in any letter case.
            assert form[:8].lower() not in text, f"{record.name} logged a credential: {text!r}"
        assert USER.lower() not in text


# Password hashes


def test_hash_format_and_verification() -> None:
    stored = hash_password(PASSWORD)
    scheme, n, r, p, salt, digest = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt)) == 16 and len(base64.b64decode(digest)) == 32
    assert PASSWORD not in stored
    assert verify_password(PASSWORD, stored)
    assert not verify_password(PASSWORD + " ", stored)
    assert not verify_password("", stored)
    # A fresh salt each time: equal passwords never give equal lines.
    assert hash_password(PASSWORD) != stored


def test_cheaper_parameters_are_recorded() -> None:
    stored = hash_password("pw", n=2**4, r=2, p=1)
    assert stored.startswith("scrypt$16$2$1$")
    assert verify_password("pw", stored)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plaintext-password",
        "bcrypt$1$2$3$YQ==$YQ==",
        "scrypt$16384$8$1$not base64$YWJj",
        "scrypt$1000$8$1$YWJjZA==$" + "A" * 44,  # N not a power of two
        "scrypt$16384$8$1$$" + "A" * 44,  # no salt
        "scrypt$16384$8$1$YWJjZA==$YWJj",  # hash too short
        "scrypt$2097152$8$1$YWJjZA==$" + "A" * 44,  # N too large
    ],
)
def test_malformed_hashes(stored: str) -> None:
    with pytest.raises(ValueError) as error:
        verify_password("pw", stored)
    if stored:
        assert stored not in str(error.value)


def test_hash_password_argument_checks() -> None:
    with pytest.raises(TypeError):
        hash_password(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        hash_password("pw", n=3)


def test_password_file(tmp_path: Any) -> None:
    path = tmp_path / "users"
    path.write_text(
        f"# users of the test\n\n{USER}:{hash_password(PASSWORD, n=16)}\n"
        f"bob@example.com:{hash_password('hunter2', n=16)}\n",
        encoding="utf-8",
    )
    users = PasswordFile(path)
    assert len(users) == 2
    assert users.check(USER, PASSWORD)
    assert users.check("bob@example.com", "hunter2")
    assert not users.check(USER, "hunter2")
    assert not users.check("mallory", PASSWORD)
    assert "users=2" in repr(users)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice\n", "line 1: expected user:hash"),
        (":scrypt$16$8$1$YWJjZA==$" + "A" * 44, "line 1: expected user:hash"),
        ("# fine\nalice:hunter2\n", "line 2: not a scrypt hash"),
    ],
)
def test_password_file_errors_never_quote_the_line(text: str, message: str) -> None:
    with pytest.raises(ValueError) as error:
        PasswordFile.parse(text)
    assert str(error.value).startswith(message)
    assert "hunter2" not in str(error.value)


def test_password_file_refuses_duplicates() -> None:
    line = f"{USER}:{hash_password('a', n=16)}\n"
    with pytest.raises(ValueError, match="line 2: user listed twice"):
        PasswordFile.parse(line + line)


def test_password_file_as_auth_listener(
    make_server: MakeServer,
    raw_client: Connect,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    tmp_path: Any,
) -> None:
    path = tmp_path / "users"
    path.write_text(f"{USER}:{hash_password(PASSWORD, n=16)}\n", encoding="utf-8")
    server = make_server(tls=server_tls, implicit_tls=True, max_auth_failures=5)
    server.auth_listener(PasswordFile(path))
    server.start()
    client = RawClient(server.bound_port)
    client.sock = client_tls.wrap_socket(client.sock, server_hostname="localhost")
    try:
        assert client.reply().startswith(b"220 ")
        client.command(b"EHLO client.test")
        for wrong in [plain(USER, "nope"), plain("mallory", PASSWORD), plain(authzid="bob")]:
            assert client.command(b"AUTH PLAIN " + wrong) == replies.AUTH_FAILED.wire
        assert client.command(b"AUTH PLAIN " + plain()) == replies.AUTH_SUCCEEDED.wire
    finally:
        client.close()
