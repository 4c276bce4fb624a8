"""How the command's message sink answers storage failures: never 250, always a 4xx."""

from __future__ import annotations

import errno

import pytest

from fastsmtp.context import MessageContext, Session
from fastsmtp.errors import RejectError
from fastsmtp.events import IncomingMail
from fastsmtp.maildir import MessageSink


class FailingSink(MessageSink):
    """A sink whose storage always fails with the given errno."""

    def __init__(self, code: int) -> None:
        self.code = code

    def store(self, mail: IncomingMail) -> str:
        raise OSError(self.code, "simulated")

    def describe(self) -> str:
        return "nowhere"


def mail() -> IncomingMail:
    context = MessageContext(Session("s1", None, None), None)
    return IncomingMail(context, "a@example.org", ("b@example.com",), b"Subject: x\r\n\r\nx\r\n")


@pytest.mark.parametrize(
    ("code", "reply"),
    [
        (errno.ENOSPC, b"452 4.3.1 Error: insufficient storage for the message\r\n"),
        (errno.EDQUOT, b"452 4.3.1 Error: insufficient storage for the message\r\n"),
        (errno.EACCES, b"451 4.3.0 Error: could not store message\r\n"),
        (errno.EIO, b"451 4.3.0 Error: could not store message\r\n"),
    ],
)
def test_storage_errors_are_temporary_failures(code: int, reply: bytes) -> None:
    with pytest.raises(RejectError) as rejected:
        FailingSink(code)(mail())
    assert rejected.value.reply.wire == reply
