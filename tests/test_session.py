"""The sans-IO session core: bytes in, replies and decision events out, on both twins.

Every conversation is checked against replies from the shared catalogue, then fed again
whole, one byte at a time and at hypothesis-chosen split points: the output and the events
must not depend on how the input was cut, nor on the twin.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastsmtp import _wire, replies
from fastsmtp._session import (
    CLOSE,
    MailFrom,
    MessageReceived,
    RcptTo,
    SessionConfig,
    SessionCore,
)
from fastsmtp._state import SessionState
from fastsmtp._wire import session_core
from fastsmtp.context import Session
from fastsmtp.replies import Reply

HOST = "mx.test"
PEER = ("192.0.2.1", 40000)
LOCAL = ("192.0.2.25", 25)

# Written out by hand on purpose: the greeting and the HELO reply are not in the catalogue.
GREETING = b"220 mx.test ESMTP fastsmtp\r\n"
HELO_OK = b"250 mx.test\r\n"

HELO = b"HELO client.test\r\n"
EHLO = b"EHLO client.test\r\n"
MAIL = b"MAIL FROM:<alice@example.org>\r\n"
RCPT = b"RCPT TO:<bob@example.com>\r\n"
DATA = b"DATA\r\n"
QUIT = b"QUIT\r\n"

Decide = Callable[[SessionCore, object], None]


def accept_all(core: SessionCore, event: object) -> None:
    """Answer every decision event positively."""
    core.accept()


class Talk:
    """Drive one ``SessionCore`` the way the transport does and record what it produced."""

    def __init__(self, wire: ModuleType, decide: Decide = accept_all, **options: object) -> None:
        config = SessionConfig(HOST, **options)  # type: ignore[arg-type]
        self.core = session_core(wire)(config, wire, Session("t1", PEER, LOCAL))
        self.decide = decide
        self.output = bytearray(self.core.greeting())
        self.events: list[object] = []
        self.closed = False

    def feed(self, chunk: bytes) -> None:
        self.core.feed(chunk)
        while True:
            event = self.core.step()
            self.output += self.core.take_output()
            if event is None:
                return
            if event is CLOSE:
                self.closed = True
                return
            self.events.append(event)
            self.decide(self.core, event)

    def feed_all(self, chunks: Iterable[bytes]) -> Talk:
        for chunk in chunks:
            self.feed(chunk)
        return self

    def summary(self) -> tuple[bytes, list[tuple[str, object]], bool]:
        """Everything observable, in a form two runs can be compared by."""
        return bytes(self.output), [describe(e) for e in self.events], self.closed


def describe(event: object) -> tuple[str, object]:
    """Reduce a decision event to comparable values."""
    if isinstance(event, MailFrom):
        args = event.arguments
        return "mail", (event.address, args.size, args.body, args.smtputf8, args.auth)
    if isinstance(event, RcptTo):
        return "rcpt", event.address
    if isinstance(event, MessageReceived):
        return "data", event.data
    raise AssertionError(f"unexpected event {event!r}")


def wire_of(*items: Reply | bytes) -> bytes:
    """Concatenate replies (catalogue entries or raw bytes) as the client would read them."""
    return b"".join(item.wire if isinstance(item, Reply) else item for item in items)


def byte_by_byte(data: bytes) -> list[bytes]:
    """Cut ``data`` into one-byte chunks."""
    return [data[i : i + 1] for i in range(len(data))]


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """Cut ``data`` at the given offsets (any order, duplicates allowed)."""
    points = sorted(set(cuts))
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def talk(wire: ModuleType, chunks: Sequence[bytes], **options: object) -> Talk:
    """Run a whole conversation with every decision accepted."""
    return Talk(wire, **options).feed_all(chunks)


# Conversations: client input, the expected output (greeting included), session options.
CONVERSATIONS: dict[str, tuple[bytes, bytes, dict[str, object]]] = {
    "one-message": (
        HELO + MAIL + RCPT + DATA + b"Subject: hi\r\n\r\nbody\r\n.\r\n" + QUIT,
        wire_of(
            GREETING,
            HELO_OK,
            replies.SENDER_OK,
            replies.RECIPIENT_OK,
            replies.START_MAIL_INPUT,
            replies.MESSAGE_ACCEPTED,
            replies.CLOSING,
        ),
        {},
    ),
    "out-of-order": (
        MAIL + RCPT + DATA + HELO + RCPT + DATA + MAIL + DATA + MAIL + RCPT + DATA + b".\r\n",
        wire_of(
            GREETING,
            replies.NEED_HELO,
            replies.NEED_MAIL,
            replies.NEED_MAIL,
            HELO_OK,
            replies.NEED_MAIL,
            replies.NEED_MAIL,
            replies.SENDER_OK,
            replies.NEED_RCPT,
            replies.SENDER_ALREADY_SPECIFIED,
            replies.RECIPIENT_OK,
            replies.START_MAIL_INPUT,
            replies.MESSAGE_ACCEPTED,
        ),
        {},
    ),
    "syntax-errors": (
        b"HELO\r\nEHLO\r\n" + HELO + b"MAIL\r\nMAIL FROM:alice@example.org\r\n"
        b"MAIL TO:<alice@example.org>\r\n" + MAIL + b"RCPT\r\nRCPT FROM:<bob@example.com>\r\n"
        b"RCPT TO:bob@example.com\r\nDATA now\r\nRSET now\r\nQUIT now\r\n",
        wire_of(
            GREETING,
            replies.HELO_SYNTAX,
            replies.EHLO_SYNTAX,
            HELO_OK,
            replies.MAIL_SYNTAX,
            replies.MAIL_SYNTAX,
            replies.MAIL_SYNTAX,
            replies.SENDER_OK,
            replies.RCPT_SYNTAX,
            replies.RCPT_SYNTAX,
            replies.RCPT_SYNTAX,
            replies.NO_ARGUMENTS,
            replies.NO_ARGUMENTS,
            replies.NO_ARGUMENTS,
        ),
        {},
    ),
    "unknown-commands": (
        b"FOO\r\n\r\n   \r\nMAILFROM:<a@example.org>\r\nHELOclient\r\nSTARTTLS\r\n" + HELO,
        wire_of(GREETING, *[replies.UNKNOWN_COMMAND] * 6, HELO_OK),
        {},
    ),
    "case-insensitive": (
        (
            b"helo client.test\r\nmail from:<alice@example.org>\r\n"
            b"RcPt To:<bob@example.com>\r\ndata\r\nhi\r\n.\r\nrset\r\nnoop\r\nquit\r\n"
        ),
        wire_of(
            GREETING,
            HELO_OK,
            replies.SENDER_OK,
            replies.RECIPIENT_OK,
            replies.START_MAIL_INPUT,
            replies.MESSAGE_ACCEPTED,
            replies.RESET_OK,
            replies.OK,
            replies.CLOSING,
        ),
        {},
    ),
    "trailing-spaces": (
        (
            b"HELO client.test   \r\nMAIL FROM:<alice@example.org>  \r\n"
            b"RCPT TO:<bob@example.com> \r\nDATA  \r\nx\r\n.\r\nRSET \r\nNOOP   \r\nQUIT \r\n"
        ),
        wire_of(
            GREETING,
            HELO_OK,
            replies.SENDER_OK,
            replies.RECIPIENT_OK,
            replies.START_MAIL_INPUT,
            replies.MESSAGE_ACCEPTED,
            replies.RESET_OK,
            replies.OK,
            replies.CLOSING,
        ),
        {},
    ),
    "other-commands": (
        b"NOOP\r\nNOOP anything at all\r\nVRFY bob\r\nEXPN staff\r\nHELP\r\nHELP MAIL\r\nRSET\r\n"
        + HELO
        + MAIL
        + b"RSET\r\n"
        + RCPT
        + QUIT
        + b"NOOP\r\n",
        wire_of(
            GREETING,
            replies.OK,
            replies.OK,
            replies.CANNOT_VRFY,
            replies.EXPN_DISABLED,
            replies.HELP,
            replies.HELP,
            replies.RESET_OK,
            HELO_OK,
            replies.SENDER_OK,
            replies.RESET_OK,
            replies.NEED_MAIL,
            replies.CLOSING,
        ),
        {},
    ),
    "bad-characters": (
        b"NOOP\x00\r\nNO\x00OP\r\nNOOP \x1b[0m\r\nNOOP \x7f\r\nNOOP\rNOOP\r\n"
        b"HELO \xc3\xa9t\xc3\xa9\r\nNOOP \xff\r\nVRFY \xe2\x82\xac\r\n" + HELO,
        wire_of(
            GREETING,
            *[replies.BAD_CHARACTERS] * 5,
            *[replies.EIGHT_BIT_COMMAND] * 3,
            HELO_OK,
        ),
        {},
    ),
    "line-too-long": (
        b"NOOP "
        + b"x" * 5000
        + b"\r\nNOOP\r\n"
        + HELO
        + b"MAIL FROM:<"
        + b"a" * 70
        + b"@example.org>\r\n"
        + MAIL,
        wire_of(
            GREETING,
            replies.LINE_TOO_LONG,
            replies.OK,
            HELO_OK,
            replies.LINE_TOO_LONG,
            replies.SENDER_OK,
        ),
        {"max_line_length": 64},
    ),
    "dot-stuffing": (
        HELO + MAIL + RCPT + DATA + b".leading\r\n..\r\n...two\r\nmid.dot\r\n.\r\n" + QUIT,
        wire_of(
            GREETING,
            HELO_OK,
            replies.SENDER_OK,
            replies.RECIPIENT_OK,
            replies.START_MAIL_INPUT,
            replies.MESSAGE_ACCEPTED,
            replies.CLOSING,
        ),
        {},
    ),
    "bare-line-endings": (
        HELO + MAIL + RCPT + DATA + b"a\n.\nb\r.\rc\n.\r\nd\r\n.\ne\r\n..\n\r\n.\r\n" + QUIT,
        wire_of(
            GREETING,
            HELO_OK,
            replies.SENDER_OK,
            replies.RECIPIENT_OK,
            replies.START_MAIL_INPUT,
            replies.MESSAGE_ACCEPTED,
            replies.CLOSING,
        ),
        {},
    ),
    "empty-message-and-second-transaction": (
        HELO + MAIL + RCPT + DATA + b".\r\n" + MAIL + RCPT + DATA + b"\r\n.\r\n",
        wire_of(
            GREETING,
            HELO_OK,
            replies.SENDER_OK,
            replies.RECIPIENT_OK,
            replies.START_MAIL_INPUT,
            replies.MESSAGE_ACCEPTED,
            replies.SENDER_OK,
            replies.RECIPIENT_OK,
            replies.START_MAIL_INPUT,
            replies.MESSAGE_ACCEPTED,
        ),
        {},
    ),
    "too-many-recipients": (
        HELO + MAIL + b"RCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
        b"RCPT TO:<c@example.com>\r\n" + DATA + b"x\r\n.\r\n",
        wire_of(
            GREETING,
            HELO_OK,
            replies.SENDER_OK,
            replies.RECIPIENT_OK,
            replies.RECIPIENT_OK,
            replies.TOO_MANY_RECIPIENTS,
            replies.START_MAIL_INPUT,
            replies.MESSAGE_ACCEPTED,
        ),
        {"max_recipients": 2},
    ),
    "declared-size": (
        HELO + b"MAIL FROM:<alice@example.org> SIZE=1001\r\n"
        b"MAIL FROM:<alice@example.org> SIZE=1000\r\n",
        wire_of(GREETING, HELO_OK, replies.SIZE_EXCEEDED, replies.SENDER_OK),
        {"preferred_max_message_size": 1000},
    ),
    "too-much-data": (
        HELO + MAIL + RCPT + DATA + b"0123456789\r\n0123456789\r\n.\r\n" + MAIL,
        wire_of(
            GREETING,
            HELO_OK,
            replies.SENDER_OK,
            replies.RECIPIENT_OK,
            replies.START_MAIL_INPUT,
            replies.TOO_MUCH_DATA,
            replies.SENDER_OK,
        ),
        {"max_message_size": 16},
    ),
    "quit-ends-reading": (
        HELO + QUIT + b"NOOP\r\n" + MAIL,
        wire_of(GREETING, HELO_OK, replies.CLOSING),
        {},
    ),
}


@pytest.fixture(params=sorted(CONVERSATIONS))
def conversation(request: pytest.FixtureRequest) -> tuple[bytes, bytes, dict[str, object]]:
    """Yield one conversation of the catalogue: input, expected output, options."""
    return CONVERSATIONS[request.param]


def reference(data: bytes, options: dict[str, object]) -> tuple[object, ...]:
    """The observable result of feeding ``data`` whole to the pure-Python twin."""
    return talk(_wire.load("py"), [data], **options).summary()


# Replies and the three ways of feeding


def test_conversation_replies(
    wire: ModuleType, conversation: tuple[bytes, bytes, dict[str, object]]
) -> None:
    data, expected, options = conversation
    assert bytes(talk(wire, [data], **options).output) == expected


def test_conversation_byte_by_byte(
    wire: ModuleType, conversation: tuple[bytes, bytes, dict[str, object]]
) -> None:
    data, expected, options = conversation
    result = talk(wire, byte_by_byte(data), **options).summary()
    assert result[0] == expected
    assert result == reference(data, options)


def test_conversation_every_two_way_split(
    wire: ModuleType, conversation: tuple[bytes, bytes, dict[str, object]]
) -> None:
    data, _, options = conversation
    whole = reference(data, options)
    for cut in range(len(data) + 1):
        assert talk(wire, split_at(data, [cut]), **options).summary() == whole, cut


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(payload=st.data())
def test_conversation_random_splits(wire: ModuleType, payload: st.DataObject) -> None:
    name = payload.draw(st.sampled_from(sorted(CONVERSATIONS)), label="conversation")
    data, expected, options = CONVERSATIONS[name]
    cuts = payload.draw(st.lists(st.integers(0, len(data)), max_size=12), label="cuts")
    result = talk(wire, split_at(data, cuts), **options).summary()
    assert result[0] == expected
    assert result == reference(data, options)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    body=st.lists(
        st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"\r\n.", b"..", b"\r\n.\r"]),
        max_size=30,
    ).map(b"".join),
    cuts=st.lists(st.integers(0, 200), max_size=8),
)
def test_data_content_any_split(wire: ModuleType, body: bytes, cuts: list[int]) -> None:
    # Content made of the risky pieces; the marker is appended so it is never ambiguous.
    data = HELO + MAIL + RCPT + DATA + body + b"\r\n.\r\n" + QUIT
    cuts = [c for c in cuts if c <= len(data)]
    result = talk(wire, split_at(data, cuts)).summary()
    assert result == reference(data, {})
    assert result[0].endswith(replies.CLOSING.wire)


# EHLO


def ehlo_lines(output: bytes) -> list[bytes]:
    """Return the text of each line of the EHLO reply (the greeting is skipped)."""
    lines = output.split(b"\r\n")[1:-1]
    assert all(line[:3] == b"250" for line in lines)
    assert all(line[3:4] == b"-" for line in lines[:-1])
    assert lines[-1][3:4] == b" "
    return [line[4:] for line in lines]


def test_ehlo_keywords(wire: ModuleType) -> None:
    result = talk(wire, [EHLO])
    lines = ehlo_lines(bytes(result.output))
    assert lines[0] == HOST.encode()
    assert set(lines[1:]) == {
        b"PIPELINING",
        b"8BITMIME",
        b"SIZE 33554432",
        b"SMTPUTF8",
        b"ENHANCEDSTATUSCODES",
    }
    assert result.core.session.helo == "client.test"
    assert result.core.session.esmtp is True


def test_ehlo_size_is_the_preferred_size_else_the_enforced_one(wire: ModuleType) -> None:
    lines = ehlo_lines(bytes(talk(wire, [EHLO], preferred_max_message_size=2048).output))
    assert b"SIZE 2048" in lines
    assert {b"PIPELINING", b"8BITMIME", b"SMTPUTF8", b"ENHANCEDSTATUSCODES"} <= set(lines)
    # Without a preferred size the enforced limit is announced: a client learns it up front.
    assert b"SIZE 33554432" in ehlo_lines(bytes(talk(wire, [EHLO]).output))
    enforced = talk(wire, [EHLO], max_message_size=4096).output
    assert b"SIZE 4096" in ehlo_lines(bytes(enforced))


def test_ehlo_case_insensitive_and_helo_turns_esmtp_off(wire: ModuleType) -> None:
    result = talk(wire, [b"ehlo first.test\r\n"])
    assert ehlo_lines(bytes(result.output))[0] == HOST.encode()
    assert result.core.session.esmtp is True
    result.feed(b"HELO second.test\r\n")
    assert result.output.endswith(HELO_OK)
    assert result.core.session.helo == "second.test"
    assert result.core.session.esmtp is False


def test_helo_resets_an_open_transaction(wire: ModuleType) -> None:
    result = talk(wire, [HELO, MAIL, RCPT, EHLO, RCPT, MAIL])
    assert result.output.endswith(wire_of(replies.NEED_MAIL, replies.SENDER_OK))
    assert result.core.recipients == []


# SIZE at MAIL FROM


def test_size_accepted_without_a_configured_size(wire: ModuleType) -> None:
    result = talk(wire, [EHLO, b"MAIL FROM:<alice@example.org> SIZE=1000000\r\n"])
    assert result.output.endswith(replies.SENDER_OK.wire)
    assert result.core.mail_arguments is not None
    assert result.core.mail_arguments.size == 1000000


def test_size_equal_to_advertised_is_accepted(wire: ModuleType) -> None:
    result = talk(
        wire,
        [EHLO, b"MAIL FROM:<alice@example.org> SIZE=4096\r\n"],
        preferred_max_message_size=4096,
    )
    assert result.output.endswith(replies.SENDER_OK.wire)


def test_size_above_advertised_is_refused_and_session_continues(wire: ModuleType) -> None:
    result = talk(
        wire,
        [EHLO, b"mail from:<alice@example.org> size=4097\r\n", RCPT, MAIL],
        preferred_max_message_size=4096,
    )
    assert result.output.endswith(
        wire_of(replies.SIZE_EXCEEDED, replies.NEED_MAIL, replies.SENDER_OK)
    )
    assert replies.SIZE_EXCEEDED.code == 552
    assert replies.SIZE_EXCEEDED.enhanced == "5.3.4"


# DATA content


def message_of(wire: ModuleType, content: bytes, **options: object) -> bytes:
    """Send one message with ``content`` (end marker included) and return what was received."""
    result = talk(wire, [HELO, MAIL, RCPT, DATA, content], **options)
    received = [e for e in result.events if isinstance(e, MessageReceived)]
    assert len(received) == 1, result.output
    return received[0].data


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b".\r\n", b""),
        (b"\r\n.\r\n", b"\r\n"),
        (b"line\r\n.\r\n", b"line\r\n"),
        (b"no final line ending.\r\n.\r\n", b"no final line ending.\r\n"),
        (b"..\r\n.\r\n", b".\r\n"),
        (b".leading\r\n.\r\n", b"leading\r\n"),
        (b"a\r\n...b\r\n.\r\n", b"a\r\n..b\r\n"),
        (b"a\r\n.b\r\n..c\r\n.\r\n", b"a\r\nb\r\n.c\r\n"),
        (b"x.y\r\n.\r\n", b"x.y\r\n"),
    ],
    ids=[
        "empty",
        "one-empty-line",
        "one-line",
        "dot-at-end-of-line",
        "stuffed-dot-line",
        "stuffed-first-line",
        "three-dots",
        "several-stuffed",
        "inner-dot",
    ],
)
def test_dot_unstuffing(wire: ModuleType, content: bytes, expected: bytes) -> None:
    assert message_of(wire, content) == expected


@pytest.mark.parametrize(
    ("fake_end", "kept"),
    [
        (b"\n.\n", b"\n.\n"),
        (b"\r.\r", b"\r.\r"),
        (b"\n.\r\n", b"\n.\r\n"),
        (b"\r.\r\n", b"\r.\r\n"),
        (b"\r\n .\r\n", b"\r\n .\r\n"),
        # A line that starts with a dot loses it (RFC 5321 4.5.2), even if LF or CR follows.
        (b"\r\n.\n", b"\r\n\n"),
        (b"\r\n.\r", b"\r\n\r"),
    ],
    ids=[
        "lf-dot-lf",
        "cr-dot-cr",
        "lf-dot-crlf",
        "cr-dot-crlf",
        "space-dot",
        "crlf-dot-lf",
        "crlf-dot-cr",
    ],
)
def test_data_ends_only_at_crlf_dot_crlf(wire: ModuleType, fake_end: bytes, kept: bytes) -> None:
    content = b"before" + fake_end + b"after\r\n.\r\n"
    assert message_of(wire, content) == b"before" + kept + b"after\r\n"


def test_dot_after_bare_lf_is_not_unstuffed(wire: ModuleType) -> None:
    assert message_of(wire, b"a\n..b\r\n.\r\n") == b"a\n..b\r\n"


def test_eight_bit_and_nul_in_data_are_content(wire: ModuleType) -> None:
    content = b"caf\xc3\xa9 \x00\xff\r\n.\r\n"
    assert message_of(wire, content) == b"caf\xc3\xa9 \x00\xff\r\n"


def test_commands_pipelined_after_the_end_marker(wire: ModuleType) -> None:
    result = talk(wire, [HELO + MAIL + RCPT + DATA + b"x\r\n.\r\nNOOP\r\n" + QUIT])
    assert result.output.endswith(wire_of(replies.MESSAGE_ACCEPTED, replies.OK, replies.CLOSING))
    assert result.closed


def test_command_words_inside_data_are_content(wire: ModuleType) -> None:
    content = b"QUIT\r\nRSET\r\nMAIL FROM:<x@example.org>\r\n.\r\n"
    assert message_of(wire, content) == b"QUIT\r\nRSET\r\nMAIL FROM:<x@example.org>\r\n"


def test_too_much_data_ends_the_transaction_without_an_event(wire: ModuleType) -> None:
    result = talk(wire, [HELO, MAIL, RCPT, DATA, b"x" * 40 + b"\r\n.\r\n"], max_message_size=32)
    assert result.output.endswith(replies.TOO_MUCH_DATA.wire)
    assert not any(isinstance(e, MessageReceived) for e in result.events)
    assert result.core.state is SessionState.READY
    assert result.core.recipients == []


def test_message_of_exactly_the_limit_is_kept(wire: ModuleType) -> None:
    assert message_of(wire, b"x" * 30 + b"\r\n.\r\n", max_message_size=32) == b"x" * 30 + b"\r\n"


# Limits and bad input


def test_max_recipients_counts_per_transaction(wire: ModuleType) -> None:
    one = b"RCPT TO:<a@example.com>\r\n"
    result = talk(wire, [HELO, MAIL, one, one, b"RSET\r\n", MAIL, one], max_recipients=1)
    assert result.output.endswith(
        wire_of(
            replies.RECIPIENT_OK,
            replies.TOO_MANY_RECIPIENTS,
            replies.RESET_OK,
            replies.SENDER_OK,
            replies.RECIPIENT_OK,
        )
    )
    assert result.core.recipients == ["a@example.com"]


def test_over_long_line_at_the_default_limit(wire: ModuleType) -> None:
    limit = _wire.DEFAULT_MAX_LINE_LENGTH
    fits = b"NOOP " + b"x" * (limit - 7) + b"\r\n"
    too_long = b"NOOP " + b"x" * (limit - 6) + b"\r\n"
    assert len(fits) == limit
    result = talk(wire, [fits, too_long, b"NOOP\r\n"])
    assert bytes(result.output) == wire_of(GREETING, replies.OK, replies.LINE_TOO_LONG, replies.OK)


def test_over_long_line_without_end_is_not_buffered(wire: ModuleType) -> None:
    result = talk(wire, [b"NOOP " + b"x" * 10000], max_line_length=64)
    assert bytes(result.output) == wire_of(GREETING, replies.LINE_TOO_LONG)
    assert result.core._reader.buffered() < 64
    result.feed(b"y" * 10000 + b"\r\nNOOP\r\n")
    assert bytes(result.output) == wire_of(GREETING, replies.LINE_TOO_LONG, replies.OK)


@pytest.mark.parametrize("byte", [*range(0x09), *range(0x0B, 0x20), 0x7F])
def test_control_characters_are_refused(wire: ModuleType, byte: int) -> None:
    result = talk(wire, [b"NOOP x" + bytes([byte]) + b"y\r\nNOOP\r\n"])
    assert bytes(result.output) == wire_of(GREETING, replies.BAD_CHARACTERS, replies.OK)


@pytest.mark.parametrize(
    "line",
    [
        b"HELO \xc3\xa9.test",
        b"EHLO \xff",
        b"NOOP \x80",
        b"VRFY \xc3\xa9",
        b"HELP \xe2\x82\xac",
        b"RSET \xc3\xa9",
        b"QUIT \xc3\xa9",
        b"DATA \xc3\xa9",
        b"\xc3\xa9HLO x",
    ],
)
def test_eight_bit_outside_mail_and_rcpt_is_refused(wire: ModuleType, line: bytes) -> None:
    result = talk(wire, [HELO + MAIL + RCPT + line + b"\r\nNOOP\r\n"])
    assert result.output.endswith(wire_of(replies.EIGHT_BIT_COMMAND, replies.OK))
    assert 500 <= replies.EIGHT_BIT_COMMAND.code < 600
    assert not result.closed


def test_eight_bit_address_needs_smtputf8(wire: ModuleType) -> None:
    result = talk(
        wire,
        [
            EHLO,
            "MAIL FROM:<élise@example.org>\r\n".encode(),
            "MAIL FROM:<élise@example.org> SMTPUTF8\r\n".encode(),
            "RCPT TO:<zoë@exämple.com>\r\n".encode(),
        ],
    )
    assert result.output.endswith(
        wire_of(replies.NON_ASCII_ADDRESS, replies.SENDER_OK, replies.RECIPIENT_OK)
    )
    assert result.core.envelope_from == "élise@example.org"
    assert result.core.recipients == ["zoë@exämple.com"]


def test_quit_closes_and_ignores_later_input(wire: ModuleType) -> None:
    result = talk(wire, [HELO, QUIT])
    assert result.closed
    assert result.output.endswith(replies.CLOSING.wire)
    assert result.core.state is SessionState.CLOSED
    result.feed(b"NOOP\r\n")
    assert result.output.endswith(replies.CLOSING.wire)
    assert result.core.step() is CLOSE


def test_quit_before_helo(wire: ModuleType) -> None:
    result = talk(wire, [QUIT])
    assert bytes(result.output) == wire_of(GREETING, replies.CLOSING)
    assert result.closed


# Decisions: what the transport asks the listeners


def test_mail_from_event_carries_the_address_and_parameters(wire: ModuleType) -> None:
    result = talk(
        wire,
        [EHLO, b"MAIL FROM:<alice@example.org> SIZE=123 BODY=8bitmime AUTH=<>\r\n"],
        decide_mail_from=True,
    )
    assert [describe(e) for e in result.events] == [
        ("mail", ("alice@example.org", 123, "8BITMIME", False, "<>"))
    ]
    assert result.output.endswith(replies.SENDER_OK.wire)
    assert result.core.envelope_from == "alice@example.org"


def test_null_sender_is_the_empty_string(wire: ModuleType) -> None:
    result = talk(wire, [EHLO, b"MAIL FROM:<>\r\n"], decide_mail_from=True)
    assert [describe(e) for e in result.events] == [("mail", ("", None, None, False, None))]
    assert result.core.envelope_from == ""


def test_pipelined_commands_wait_for_the_decision(wire: ModuleType) -> None:
    config = SessionConfig(HOST, decide_mail_from=True)
    core = session_core(wire)(config, wire, Session("t2", PEER, LOCAL))
    core.feed(HELO + MAIL + RCPT + b"NOOP\r\n")
    event = core.step()
    assert isinstance(event, MailFrom)
    assert core.take_output() == HELO_OK
    with pytest.raises(RuntimeError):
        core.step()
    core.reject(replies.TRANSACTION_FAILED)
    assert core.step() is None
    assert core.take_output() == wire_of(replies.TRANSACTION_FAILED, replies.NEED_MAIL, replies.OK)
    assert core.envelope_from is None
    assert core.state is SessionState.READY


def test_rejected_recipient_is_not_kept(wire: ModuleType) -> None:
    def decide(core: SessionCore, event: object) -> None:
        if isinstance(event, RcptTo) and event.address.startswith("no"):
            core.reject(replies.TRANSACTION_FAILED)
        else:
            core.accept()

    result = Talk(wire, decide, decide_rcpt_to=True).feed_all(
        [
            HELO,
            MAIL,
            b"RCPT TO:<yes1@example.com>\r\n",
            b"RCPT TO:<no@example.com>\r\nRCPT TO:<yes2@example.com>\r\n",
        ]
    )
    assert result.output.endswith(
        wire_of(replies.RECIPIENT_OK, replies.TRANSACTION_FAILED, replies.RECIPIENT_OK)
    )
    assert result.core.recipients == ["yes1@example.com", "yes2@example.com"]


def test_rejecting_the_only_recipient_leaves_data_refused(wire: ModuleType) -> None:
    def decide(core: SessionCore, event: object) -> None:
        core.reject(replies.TRANSACTION_FAILED)

    result = Talk(wire, decide, decide_rcpt_to=True).feed_all([HELO, MAIL, RCPT, DATA])
    assert result.output.endswith(wire_of(replies.TRANSACTION_FAILED, replies.NEED_RCPT))


def test_rejected_sender_opens_no_transaction(wire: ModuleType) -> None:
    def decide(core: SessionCore, event: object) -> None:
        if isinstance(event, MailFrom) and event.address == "bad@example.org":
            core.reject(replies.TRANSACTION_FAILED)
        else:
            core.accept()

    result = Talk(wire, decide, decide_mail_from=True).feed_all(
        [HELO, b"MAIL FROM:<bad@example.org>\r\n", RCPT, MAIL, RCPT]
    )
    assert result.output.endswith(
        wire_of(
            replies.TRANSACTION_FAILED,
            replies.NEED_MAIL,
            replies.SENDER_OK,
            replies.RECIPIENT_OK,
        )
    )


def test_message_event_carries_the_unstuffed_data(wire: ModuleType) -> None:
    result = talk(wire, [HELO, MAIL, RCPT, DATA, b"Subject: x\r\n\r\n..dot\r\n.\r\n"])
    assert [describe(e) for e in result.events] == [("data", b"Subject: x\r\n\r\n.dot\r\n")]
    assert result.core.session.messages_accepted == 1


@pytest.mark.parametrize("text", ["Queued as 4F2A", "2.6.0 Queued", "two\r\nlines"])
def test_accept_with_text(wire: ModuleType, text: str) -> None:
    def decide(core: SessionCore, event: object) -> None:
        core.accept(text if isinstance(event, MessageReceived) else None)

    result = Talk(wire, decide).feed_all([HELO, MAIL, RCPT, DATA, b"x\r\n.\r\n"])
    expected = replies.custom_reply(250, text, "2.0.0").wire
    assert result.output.endswith(expected)
    assert expected.startswith(b"250")


def test_accept_with_empty_text_sends_the_default_reply(wire: ModuleType) -> None:
    def decide(core: SessionCore, event: object) -> None:
        core.accept("")

    result = Talk(wire, decide).feed_all([HELO, MAIL, RCPT, DATA, b"x\r\n.\r\n"])
    assert result.output.endswith(replies.MESSAGE_ACCEPTED.wire)


def test_rejected_message_ends_the_transaction(wire: ModuleType) -> None:
    def decide(core: SessionCore, event: object) -> None:
        if isinstance(event, MessageReceived):
            core.reject(replies.TRANSACTION_FAILED)
        else:
            core.accept()

    result = Talk(wire, decide).feed_all([HELO, MAIL, RCPT, DATA, b"x\r\n.\r\n", MAIL])
    assert result.output.endswith(wire_of(replies.TRANSACTION_FAILED, replies.SENDER_OK))
    assert result.core.session.messages_accepted == 0


def test_reject_with_close(wire: ModuleType) -> None:
    def decide(core: SessionCore, event: object) -> None:
        core.reject(replies.TRANSACTION_FAILED, close=True)

    result = Talk(wire, decide, decide_mail_from=True).feed_all([HELO, MAIL + b"NOOP\r\n"])
    assert bytes(result.output) == wire_of(GREETING, HELO_OK, replies.TRANSACTION_FAILED)
    assert result.closed


def test_accept_and_reject_need_a_pending_decision(wire: ModuleType) -> None:
    core = session_core(wire)(SessionConfig(HOST), wire, Session("t3", PEER, LOCAL))
    with pytest.raises(RuntimeError):
        core.accept()
    with pytest.raises(RuntimeError):
        core.reject(replies.TRANSACTION_FAILED)


def test_stop_when_idle_closes_an_idle_session(wire: ModuleType) -> None:
    result = talk(wire, [HELO])
    result.core.stop_when_idle()
    result.feed(b"")
    assert result.closed
    assert bytes(result.output) == wire_of(GREETING, HELO_OK, replies.SHUTTING_DOWN)
    assert result.core.close_reason == "server shutting down"


def test_stop_when_idle_lets_the_transaction_finish(wire: ModuleType) -> None:
    result = talk(wire, [HELO, MAIL])
    result.core.stop_when_idle()
    result.feed(b"")
    assert not result.closed
    result.feed(RCPT + DATA + b"last\r\n.\r\nNOOP\r\n" + MAIL)
    assert result.closed
    assert result.output.endswith(
        wire_of(
            replies.RECIPIENT_OK,
            replies.START_MAIL_INPUT,
            replies.MESSAGE_ACCEPTED,
            replies.SHUTTING_DOWN,
        )
    )
    assert [describe(e) for e in result.events] == [("data", b"last\r\n")]


def test_close_reasons(wire: ModuleType) -> None:
    assert talk(wire, [HELO, QUIT]).core.close_reason == "QUIT"

    def drop(core: SessionCore, event: object) -> None:
        core.reject(replies.TRANSACTION_FAILED, close=True)

    dropped = Talk(wire, drop, decide_mail_from=True).feed_all([HELO, MAIL])
    assert dropped.closed
    assert dropped.core.close_reason == "dropped by a listener"


def test_refusals_are_reported_without_arguments(wire: ModuleType) -> None:
    core = session_core(wire)(SessionConfig(HOST), wire, Session("t4", PEER, LOCAL))
    seen: list[tuple[bytes, Reply]] = []
    core.on_refuse = lambda verb, reply: seen.append((verb, reply))
    core.feed(b"MAIL FROM:<secret@example.org>\r\nFROB secret\r\nEXPN secret\r\n")
    assert core.step() is None
    assert seen == [
        (b"MAIL", replies.NEED_HELO),
        (b"", replies.UNKNOWN_COMMAND),  # an unknown verb may be a password: not reported
        (b"EXPN", replies.EXPN_DISABLED),
    ]


def test_twins_agree_on_every_decision_path(wire: ModuleType) -> None:
    # Odd decisions are rejected, even ones accepted: every kind gets both answers.
    def decide(core: SessionCore, event: object) -> None:
        if len(talked.events) % 2:
            core.reject(replies.TRANSACTION_FAILED)
        else:
            core.accept("done" if isinstance(event, MessageReceived) else None)

    data = HELO + MAIL + MAIL + RCPT + RCPT + RCPT + DATA + b"a\r\n.\r\n"
    data += MAIL + MAIL + RCPT + RCPT + DATA + b"b\r\n..\r\n.\r\n"
    summaries = []
    for twin in (wire, _wire.load("py")):
        talked = Talk(twin, decide, decide_mail_from=True, decide_rcpt_to=True)
        talked.feed_all(byte_by_byte(data))
        summaries.append(talked.summary())
    assert summaries[0] == summaries[1]
    output, events, _ = summaries[0]
    kinds = ["mail", "mail", "rcpt", "rcpt", "rcpt", "data"]
    assert [kind for kind, _ in events] == kinds + kinds[:2] + kinds[3:]
    assert output.count(replies.TRANSACTION_FAILED.wire) == 6
    assert replies.custom_reply(250, "done", "2.0.0").wire in output
    assert output.endswith(replies.TRANSACTION_FAILED.wire)


# Fuzz. Invariant: whatever the bytes and however they are cut, step() never raises, and
# both twins give the same replies, events and close decision.

FRAGMENTS = [
    HELO,
    EHLO,
    MAIL,
    RCPT,
    DATA,
    QUIT,
    b"RSET\r\n",
    b"NOOP\r\n",
    b".\r\n",
    b"\r\n.\r\n",
    b"..",
    b"\r\n",
    b"\r",
    b"\n",
    b"\x00",
    b"\xc3\xa9",
    b"\xff",
    b" ",
    b"x" * 70,
    b"MAIL FROM:<a@example.org> SIZE=99\r\n",
    b"MAIL FROM:<> SMTPUTF8\r\n",
    "RCPT TO:<é@example.com>\r\n".encode(),
    b"RCPT TO:<postmaster>\r\n",
]


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    pieces=st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=20)), max_size=40),
    cuts=st.lists(st.integers(0, 2000), max_size=10),
    answers=st.lists(st.booleans(), max_size=40),
)
def test_fuzz_twins_agree(
    wire: ModuleType, pieces: list[bytes], cuts: list[int], answers: list[bool]
) -> None:
    data = b"".join(pieces)
    chunks = split_at(data, [c for c in cuts if c <= len(data)])
    options = {
        "max_line_length": 64,
        "max_message_size": 50,
        "max_recipients": 2,
        "preferred_max_message_size": 40,
        "decide_mail_from": True,
        "decide_rcpt_to": True,
    }
    summaries = []
    for twin in (wire, _wire.load("py")):
        pending = list(answers)

        def decide(core: SessionCore, event: object, pending: list[bool] = pending) -> None:
            if pending and not pending.pop(0):
                core.reject(replies.TRANSACTION_FAILED)
            else:
                core.accept()

        summaries.append(Talk(twin, decide, **options).feed_all(chunks).summary())
    assert summaries[0] == summaries[1]
    assert summaries[0][0].startswith(GREETING)
