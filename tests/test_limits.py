"""Limits against hostile or broken clients: error budget, bare line endings, DATA deadline,
connections per address. Every test runs on both twins."""

from __future__ import annotations

import socket
import time
from types import ModuleType
from typing import Any

import pytest

from fastsmtp import replies
from fastsmtp._session import CLOSE, MessageReceived, SessionConfig, SessionCore
from fastsmtp._wire import session_core
from fastsmtp.context import Session
from fastsmtp.events import IncomingMail

BODY_WITH_BARE_ENDINGS = b"Subject: x\r\n\r\nbare LF\nbare CR\rend\r\n"


def new_core(wire: ModuleType, **options: Any) -> SessionCore:
    return session_core(wire)(SessionConfig("mx.test", **options), wire, Session("t1", None, None))


def run(core: SessionCore, data: bytes) -> tuple[bytes, list[object]]:
    """Feed ``data``, accept every decision, and return the output and the events."""
    core.feed(data)
    events: list[object] = []
    output = b""
    while True:
        event = core.step()
        output += core.take_output()
        if event is None or event is CLOSE:
            events.append(event)
            return output, events
        events.append(event)
        core.accept()


# Error budget


def test_too_many_errors_close_the_connection(wire: ModuleType) -> None:
    core = new_core(wire, max_errors=3)
    output, events = run(core, b"BOGUS\r\nBOGUS\r\nBOGUS\r\nNOOP\r\n")
    assert output == replies.UNKNOWN_COMMAND.wire * 3 + replies.TOO_MANY_ERRORS.wire
    assert events[-1] is CLOSE
    assert core.close_reason == "too many errors"


def test_errors_of_every_kind_count(wire: ModuleType) -> None:
    # Sequence, syntax, bad characters and over-long lines all use up the same budget.
    core = new_core(wire, max_errors=4, max_line_length=64)
    output, events = run(core, b"MAIL FROM:<a@b.c>\r\nHELO\r\nNO\x00OP\r\n" + b"X" * 100 + b"\r\n")
    assert output == (
        replies.NEED_HELO.wire
        + replies.HELO_SYNTAX.wire
        + replies.BAD_CHARACTERS.wire
        + replies.LINE_TOO_LONG.wire
        + replies.TOO_MANY_ERRORS.wire
    )
    assert events[-1] is CLOSE


def test_listener_decisions_and_limits_do_not_count(wire: ModuleType) -> None:
    core = new_core(wire, max_errors=2, max_recipients=1, decide_rcpt_to=True)
    core.feed(b"HELO c\r\nMAIL FROM:<a@b.c>\r\n")
    assert core.step() is None
    for _ in range(3):
        core.feed(b"RCPT TO:<x@y.z>\r\n")
        assert core.step() is not None
        core.reject(replies.TRANSACTION_FAILED)
        assert core.step() is None
    core.feed(b"RCPT TO:<x@y.z>\r\nRCPT TO:<w@y.z>\r\n")
    core.step()
    core.accept()
    assert core.step() is None
    assert core.take_output().endswith(replies.TOO_MANY_RECIPIENTS.wire)
    assert core.errors == 0


@pytest.mark.parametrize("verb", [b"NOOP", b"RSET", b"VRFY bob", b"EXPN staff", b"HELP"])
def test_junk_commands_past_the_limit_use_the_error_budget(wire: ModuleType, verb: bytes) -> None:
    core = new_core(wire, max_junk_commands=3, max_errors=2)
    output, _ = run(core, b"HELO c\r\n")
    answers, _ = run(core, (verb + b"\r\n") * 3)
    assert core.errors == 0 and b"421" not in answers
    answer = answers[: len(answers) // 3]
    # The fourth is answered as usual but costs an error; the fifth uses up the budget, and
    # the sixth is never read.
    output, events = run(core, (verb + b"\r\n") * 3)
    assert core.errors == 2
    assert output == answer * 2 + replies.TOO_MANY_ERRORS.wire
    assert events[-1] is CLOSE


def test_an_accepted_message_resets_the_junk_count(wire: ModuleType) -> None:
    core = new_core(wire, max_junk_commands=2, max_errors=1)
    message = b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nx\r\n.\r\n"
    _, events = run(core, b"HELO c\r\n" + (b"NOOP\r\n" * 2 + message) * 3 + b"NOOP\r\n")
    assert core.session.messages_accepted == 3
    assert core.errors == 0 and events[-1] is None


# Bare line endings


def deliver(wire: ModuleType, policy: str) -> tuple[bytes, list[object]]:
    core = new_core(wire, bare_line_endings=policy)
    return run(
        core,
        b"HELO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n"
        + BODY_WITH_BARE_ENDINGS
        + b".\r\nNOOP\r\n",
    )


def test_bare_line_endings_kept_by_default(wire: ModuleType) -> None:
    output, events = deliver(wire, "keep")
    [message] = [event for event in events if isinstance(event, MessageReceived)]
    assert message.data == BODY_WITH_BARE_ENDINGS
    assert output.endswith(replies.MESSAGE_ACCEPTED.wire + replies.OK.wire)


def test_bare_line_endings_rejected(wire: ModuleType) -> None:
    output, events = deliver(wire, "reject")
    assert not any(isinstance(event, MessageReceived) for event in events)
    assert output.endswith(replies.BARE_LINE_ENDINGS.wire + replies.OK.wire)
    assert replies.BARE_LINE_ENDINGS.code == 550


def test_bare_line_endings_normalized(wire: ModuleType) -> None:
    _, events = deliver(wire, "normalize")
    [message] = [event for event in events if isinstance(event, MessageReceived)]
    assert message.data == b"Subject: x\r\n\r\nbare LF\r\nbare CR\r\nend\r\n"


def test_clean_message_untouched_by_every_policy(wire: ModuleType) -> None:
    body = b"Subject: x\r\n\r\n..dot\r\nline\r\n"
    for policy in ("keep", "reject", "normalize"):
        core = new_core(wire, bare_line_endings=policy)
        _, events = run(
            core, b"HELO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n" + body + b".\r\n"
        )
        [message] = [event for event in events if isinstance(event, MessageReceived)]
        assert message.data == b"Subject: x\r\n\r\n.dot\r\nline\r\n"


# Over real sockets


def test_error_limit_over_a_socket(make_server: Any, raw_client: Any) -> None:
    server = make_server(max_errors=2).start()
    client = raw_client(server)
    assert client.command(b"FOO") == replies.UNKNOWN_COMMAND.wire
    client.send(b"BAR\r\n")
    assert client.read_to_end() == replies.UNKNOWN_COMMAND.wire + replies.TOO_MANY_ERRORS.wire
    # The server keeps serving others.
    assert raw_client(server).command(b"NOOP") == replies.OK.wire


def test_junk_limit_over_a_socket(make_server: Any, raw_client: Any) -> None:
    client = raw_client(make_server(max_junk_commands=2, max_errors=1).start())
    assert client.command(b"NOOP") == client.command(b"RSET") == replies.OK.wire
    client.send(b"NOOP\r\n")
    assert client.read_to_end() == replies.OK.wire + replies.TOO_MANY_ERRORS.wire


def test_data_deadline_evicts_a_trickling_client(make_server: Any, raw_client: Any) -> None:
    received: list[IncomingMail] = []
    server = make_server(connection_timeout=5, data_timeout=0.6)
    server.mail_listener(received.append)
    server.start()
    client = raw_client(server)
    client.command(b"HELO c")
    client.command(b"MAIL FROM:<a@b.c>")
    client.command(b"RCPT TO:<d@e.f>")
    assert client.command(b"DATA") == replies.START_MAIL_INPUT.wire
    # One byte every 0.1 s: never idle long enough for the idle timeout, but too slow.
    closed = b""
    for _ in range(60):
        try:
            client.send(b"x")
        except OSError:
            break
        client.sock.settimeout(0.1)
        try:
            closed = client.sock.recv(1024)
        except TimeoutError:
            continue
        break
    assert closed == replies.DATA_TIMEOUT.wire
    assert received == []
    assert raw_client(server).command(b"NOOP") == replies.OK.wire


def test_a_slow_but_finished_message_is_not_cut(make_server: Any, raw_client: Any) -> None:
    received: list[IncomingMail] = []
    server = make_server(data_timeout=5)
    server.mail_listener(received.append)
    server.start()
    client = raw_client(server)
    client.command(b"HELO c")
    client.command(b"MAIL FROM:<a@b.c>")
    client.command(b"RCPT TO:<d@e.f>")
    client.command(b"DATA")
    for part in (b"Subject: slow\r\n", b"\r\n", b"body\r\n"):
        client.send(part)
        time.sleep(0.1)
    assert client.command(b".") == replies.MESSAGE_ACCEPTED.wire
    assert received[0].data == b"Subject: slow\r\n\r\nbody\r\n"


def test_connections_per_address(make_server: Any, raw_client: Any) -> None:
    server = make_server(max_connections_per_address=2).start()
    first, second = raw_client(server), raw_client(server)
    with socket.create_connection(("127.0.0.1", server.bound_port), timeout=5) as third:
        assert third.recv(1024) == replies.TOO_MANY_CONNECTIONS.wire
    assert first.command(b"NOOP") == replies.OK.wire
    # A slot frees up when a connection closes.
    second.command(b"QUIT")
    second.close()
    for _ in range(50):
        with socket.create_connection(("127.0.0.1", server.bound_port), timeout=5) as again:
            greeting = again.recv(1024)
        if greeting.startswith(b"220 "):
            break
        time.sleep(0.05)
    assert greeting.startswith(b"220 ")


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("max_errors", 0, ValueError),
        ("max_errors", "5", TypeError),
        ("max_junk_commands", 0, ValueError),
        ("data_timeout", 0, ValueError),
        ("max_connections_per_address", 0, ValueError),
        ("bare_line_endings", "strip", ValueError),
    ],
)
def test_invalid_limits(make_server: Any, option: str, value: object, error: type) -> None:
    with pytest.raises(error):
        make_server(**{option: value})
