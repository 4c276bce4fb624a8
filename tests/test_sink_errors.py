"""The command's message sinks: the exact bytes in a Maildir, and storage failures answered
with a 4xx, never 250."""

from __future__ import annotations

import errno
import stat
from pathlib import Path

import pytest

from fastsmtp.context import MessageContext, Session
from fastsmtp.errors import RejectError
from fastsmtp.events import IncomingMail
from fastsmtp.maildir import MaildirSink, MessageSink


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


def test_maildir_is_created_with_its_parents_and_keeps_the_exact_bytes(tmp_path: Path) -> None:
    # Every kind of octet a message may hold: CRLF, bare LF and CR, a lone dot line (already
    # unstuffed), NUL, 8-bit text, a long line, and no final line ending.
    data = b"Subject: exact\r\n\r\nline\r\nbare\nlf\rcr\r\n.\r\n\x00caf\xc3\xa9\r\n" + b"L" * 3000
    path = tmp_path / "a" / "b" / "Maildir"
    sink = MaildirSink(path)
    for subdirectory in ("tmp", "new", "cur"):
        assert stat.S_IMODE((path / subdirectory).stat().st_mode) == 0o700

    context = MessageContext(Session("s2", None, None), None)
    sink(IncomingMail(context, "a@example.org", ("b@example.com",), data))

    stored = list((path / "new").iterdir())
    assert [file.read_bytes() for file in stored] == [data]
    assert list((path / "tmp").iterdir()) == []


def test_maildir_made_empty_beforehand_is_completed(tmp_path: Path) -> None:
    # An existing empty directory (made with mkdir) gets its tmp, new and cur.
    sink = MaildirSink(tmp_path)
    sink(mail())
    assert sorted(child.name for child in tmp_path.iterdir()) == ["cur", "new", "tmp"]
    assert [file.read_bytes() for file in (tmp_path / "new").iterdir()] == [mail().data]
