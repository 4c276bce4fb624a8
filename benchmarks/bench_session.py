"""Micro benchmark of the sans-IO session core, per twin: whole messages, no sockets.

What one message on a reused connection costs in Python besides the loop and the kernel:
MAIL, RCPT, DATA and a 1 KiB body fed in, every reply taken, the message accepted. The test
asserts on the replies and the message count, so a fast wrong answer cannot pass.
"""

from __future__ import annotations

import pytest

from fastsmtp import replies
from fastsmtp._session import MessageReceived, SessionConfig
from fastsmtp._wire import session_core
from fastsmtp.context import Session

BODY = b"Subject: load\r\n\r\n" + (b"x" * 78 + b"\r\n") * 12 + b".\r\n"
MESSAGE = [
    b"MAIL FROM:<load@client.example>\r\n",
    b"RCPT TO:<sink@server.example>\r\n",
    b"DATA\r\n",
    BODY,
]
EXPECTED = (
    replies.SENDER_OK.wire
    + replies.RECIPIENT_OK.wire
    + replies.START_MAIL_INPUT.wire
    + replies.MESSAGE_ACCEPTED.wire
)


@pytest.mark.benchmark(group="session core: 100 messages of 1 KiB")
def test_session_messages(benchmark, wire):
    session = Session("bench", ("127.0.0.1", 40000), ("127.0.0.1", 25))
    core = session_core(wire)(SessionConfig("server.example"), wire, session)
    core.feed(b"EHLO client.example\r\n")
    assert core.step() is None
    core.take_output()

    def run() -> tuple[int, bool]:
        alike = True
        for _ in range(100):
            out = b""
            for chunk in MESSAGE:
                core.feed(chunk)
                while (event := core.step()) is not None:
                    assert isinstance(event, MessageReceived)
                    core.accept()
                out += core.take_output()
            alike = alike and out == EXPECTED
        return session.messages_accepted, alike

    accepted, alike = benchmark(run)
    assert alike
    assert accepted % 100 == 0 and accepted > 0
