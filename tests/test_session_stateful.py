"""A stateful model of RFC 5321 sequencing, run against the sans-IO session on both twins.

Hypothesis drives a ``SessionCore`` with rules (HELO, EHLO, MAIL, RCPT, DATA and its content,
RSET, NOOP, garbage, over-long lines, pipelined batches cut at random points) and answers
each decision event as a listener would: accept, accept with a text, reject, reject and
close. A small model, written from the RFC and the reply catalogue rather than from the
code, predicts every reply byte for byte, the decision events and where the dialogue stands.

Invariants, after every rule: the output is exactly the model's; a message that reaches the
listener holds exactly the unstuffed content the client meant, with exactly the recipients
that were accepted; nothing stays buffered; ``step()`` never raises. A second machine runs
both twins in lockstep and also feeds arbitrary bytes: from then on the model no longer
knows what to expect, but the twins must still agree on every output byte and every event.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from fastsmtp import _wire, replies
from fastsmtp._session import CLOSE, MailFrom, MessageReceived, RcptTo, SessionConfig, SessionCore
from fastsmtp._state import CLOSED, DATA, GREETED, MAIL, RCPT, READY
from fastsmtp._wire import session_core
from fastsmtp.context import Session
from fastsmtp.replies import Reply

HOST = "mx.test"
MAX_LINE = 128  # small, so that over-long command lines stay cheap to build
KNOWN_VERBS = frozenset(
    {b"HELO", b"EHLO", b"MAIL", b"RCPT", b"DATA", b"RSET", b"NOOP", b"QUIT", b"VRFY", b"EXPN"}
    | {b"HELP"}
)
# Verbs that the TLS and AUTH work may give a meaning to: never used as garbage.
RESERVED_VERBS = KNOWN_VERBS | {b"STARTTLS", b"AUTH", b"BDAT"}


# What a client sends: one command, and for DATA the content it means to deliver.


@dataclass(frozen=True)
class Command:
    """One command line (without CRLF) and what the model needs to know about it.

    ``kind`` names the rule that made it; ``address`` is the address a well-formed MAIL or
    RCPT carries, as the listener must see it; ``reply`` is the refusal a malformed command
    earns once its place in the sequence is right; ``content`` is the message of a DATA.
    """

    kind: str
    line: bytes
    address: str = ""
    reply: Reply | None = None
    content: bytes = b""
    size: int | None = None
    smtputf8: bool = False


def stuffed(content: bytes) -> bytes:
    """Return ``content`` as it goes on the wire after DATA, end marker included.

    RFC 5321 §4.5.2: a line that starts with a dot gets one more; the first line counts
    as a line start. The final CRLF before the dot is added when the content lacks it.
    """
    wire = (b"\r\n" + content).replace(b"\r\n.", b"\r\n..")[2:]
    if wire and not wire.endswith(b"\r\n"):
        wire += b"\r\n"
    return wire + b".\r\n"


def delivered(content: bytes) -> bytes:
    """Return what the listener must receive for ``content``: the lines, each CRLF-ended."""
    if content and not content.endswith(b"\r\n"):
        return content + b"\r\n"
    return content


def garbage_reply(line: bytes) -> Reply:
    """The refusal of a line whose verb means nothing (RFC 5321 §4.2.4, 500)."""
    if any(byte < 0x20 and byte != 0x09 or byte == 0x7F for byte in line):
        return replies.BAD_CHARACTERS
    if any(byte >= 0x80 for byte in line):
        return replies.EIGHT_BIT_COMMAND
    return replies.UNKNOWN_COMMAND


def verb_of(line: bytes) -> bytes:
    """The first space-separated word, upper-cased: what a server takes for the verb."""
    words = line.strip(b" ").split(b" ", 1)
    return words[0].upper()


# Strategies for commands

label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)
domains = st.lists(label, min_size=2, max_size=3).map(".".join)
locals_ = st.from_regex(r"[a-zA-Z0-9_+]{1,6}(\.[a-z0-9]{1,4})?", fullmatch=True)
addresses = st.builds(lambda local, domain: f"{local}@{domain}", locals_, domains)
mail_prefixes = st.sampled_from(["MAIL FROM:", "mail from:", "Mail From: "])
rcpt_prefixes = st.sampled_from(["RCPT TO:", "rcpt to:", "Rcpt To: "])


@st.composite
def mail_commands(draw: st.DrawFn) -> Command:
    """A well-formed MAIL: an address or the null path, sometimes SIZE, BODY, SMTPUTF8."""
    address = draw(st.one_of(st.just(""), addresses))
    size = draw(st.one_of(st.none(), st.sampled_from([0, 10, 900, 5000, 10**9])))
    smtputf8 = draw(st.booleans())
    if smtputf8 and draw(st.booleans()):
        address = "jos\u00e9@" + address.partition("@")[2] if address else ""
    params = ""
    if size is not None:
        params += f" SIZE={size}"
    if draw(st.booleans()):
        params += draw(st.sampled_from([" BODY=8BITMIME", " body=7bit"]))
    if smtputf8:
        params += " SMTPUTF8"
    line = f"{draw(mail_prefixes)}<{address}>{params}".encode()
    return Command("mail", line, address=address, size=size, smtputf8=smtputf8)


BAD_MAIL = [
    (b"MAIL", replies.MAIL_SYNTAX),
    (b"MAIL FROM:alice@example.org", replies.MAIL_SYNTAX),
    (b"MAIL TO:<alice@example.org>", replies.MAIL_SYNTAX),
    (b"MAIL FROM:<alice@example.org>x", replies.MAIL_SYNTAX),
    (b"MAIL FROM:<alice@example.org", replies.MAIL_SYNTAX),
    (b"MAIL FROM:<alice>", replies.BAD_SENDER),
    (b"MAIL FROM:<alice@>", replies.BAD_SENDER),
    (b"MAIL FROM:<a..b@example.org>", replies.BAD_SENDER),
    (b"MAIL FROM:<alice@example.org> FOO=BAR", replies.BAD_PARAMETER),
    (b"MAIL FROM:<alice@example.org> SIZE=ten", replies.BAD_PARAMETER),
    (b"MAIL FROM:<alice@example.org> BODY=9BIT", replies.BAD_PARAMETER),
    ("MAIL FROM:<\u00e9lise@example.org>".encode(), replies.NON_ASCII_ADDRESS),
]
BAD_RCPT = [
    (b"RCPT", replies.RCPT_SYNTAX),
    (b"RCPT TO:bob@example.com", replies.RCPT_SYNTAX),
    (b"RCPT FROM:<bob@example.com>", replies.RCPT_SYNTAX),
    (b"RCPT TO:<>", replies.BAD_RECIPIENT),
    (b"RCPT TO:<bob>", replies.BAD_RECIPIENT),
    (b"RCPT TO:<bob@-example.com>", replies.BAD_RECIPIENT),
    (b"RCPT TO:<bob@example.com> NOTIFY=NEVER", replies.BAD_PARAMETER),
]

bad_mail_commands = st.sampled_from(BAD_MAIL).map(lambda t: Command("bad-mail", t[0], reply=t[1]))
bad_rcpt_commands = st.sampled_from(BAD_RCPT).map(lambda t: Command("bad-rcpt", t[0], reply=t[1]))


@st.composite
def rcpt_commands(draw: st.DrawFn) -> Command:
    """A well-formed RCPT: an address, Postmaster, or an SMTPUTF8 address."""
    which = draw(st.sampled_from(["plain", "plain", "postmaster", "utf8"]))
    if which == "postmaster":
        return Command("rcpt", f"{draw(rcpt_prefixes)}<postmaster>".encode(), "Postmaster")
    address = draw(addresses)
    if which == "utf8":
        return Command("rcpt-utf8", f"{draw(rcpt_prefixes)}<\u00fc{address}>".encode())
    return Command("rcpt", f"{draw(rcpt_prefixes)}<{address}>".encode(), address)


# Content pieces: dots at line starts, bare CR and LF, NUL, 8-bit, smuggled commands, and a
# line longer than the 998 octets of RFC 5322.
CONTENT_PIECES = [
    b"Subject: test\r\n\r\n",
    b"text",
    b" ",
    b".",
    b"..",
    b"\r\n",
    b"\r\n.",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\r",
    b"\n",
    b"\x00",
    b"caf\xc3\xa9",
    b"\xff",
    b"MAIL FROM:<evil@example.net>\r\n",
    b"x" * 1500,
]
contents = st.lists(
    st.one_of(st.sampled_from(CONTENT_PIECES), st.binary(max_size=6)), max_size=12
).map(b"".join)
data_commands = st.builds(
    lambda line, content: Command("data", line, content=content),
    st.sampled_from([b"DATA", b"data", b"DATA "]),
    contents,
)

helo_commands = st.one_of(
    st.builds(lambda name: Command("helo", b"HELO " + name.encode()), domains),
    st.builds(lambda name: Command("ehlo", b"EHLO " + name.encode()), domains),
    st.sampled_from(
        [
            Command("bad-helo", b"HELO", reply=replies.HELO_SYNTAX),
            Command("bad-helo", b"EHLO  ", reply=replies.EHLO_SYNTAX),
        ]
    ),
)
simple_commands = st.sampled_from(
    [
        Command("rset", b"RSET"),
        Command("rset", b"rset "),
        Command("noop", b"NOOP"),
        Command("noop", b"NOOP whatever you like"),
        Command("fixed", b"RSET now", reply=replies.NO_ARGUMENTS),
        Command("fixed", b"DATA now", reply=replies.NO_ARGUMENTS),
        Command("fixed", b"VRFY bob", reply=replies.CANNOT_VRFY),
        Command("fixed", b"VRFY", reply=replies.VRFY_SYNTAX),
        Command("fixed", b"EXPN staff", reply=replies.EXPN_DISABLED),
        Command("fixed", b"HELP", reply=replies.HELP),
        Command("fixed", b"QUIT now", reply=replies.NO_ARGUMENTS),
    ]
)


def _is_garbage(line: bytes) -> bool:
    return verb_of(line) not in RESERVED_VERBS


garbage_commands = (
    st.one_of(
        st.sampled_from(
            [b"", b"   ", b"FOO", b"MAILFROM:<a@b.c>", b"HELOx", b"\tNOOP", b"X\x00Y"]
        ),
        st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
    )
    .filter(_is_garbage)
    .map(lambda line: Command("garbage", line, reply=garbage_reply(line)))
)
too_long_commands = st.builds(
    lambda head, extra: Command("too-long", head + b"x" * (MAX_LINE + extra)),
    st.sampled_from([b"NOOP ", b"MAIL FROM:<", b"", b"\x00"]),
    st.integers(0, 300),
)

any_command = st.one_of(
    helo_commands,
    mail_commands(),
    bad_mail_commands,
    rcpt_commands(),
    bad_rcpt_commands,
    data_commands,
    simple_commands,
    garbage_commands,
    too_long_commands,
)


# Listener decisions: what to do with the next decision event.


@dataclass(frozen=True)
class Decision:
    """``accept`` (with ``text`` for a message), ``reject`` with ``reply``, or ``drop``."""

    kind: str
    reply: Reply | None = None
    text: str | None = None

    def apply(self, core: SessionCore, event: object) -> None:
        """Answer ``event`` on ``core`` the way a listener's decision reaches it."""
        if self.kind == "accept":
            core.accept(self.text if isinstance(event, MessageReceived) else None)
        else:
            assert self.reply is not None
            core.reject(self.reply, close=self.kind == "drop")


ACCEPT = Decision("accept")
ANSWERS = [
    *[ACCEPT] * 6,
    Decision("accept", text="Queued as 4F2A"),
    Decision("accept", text="2.6.0 two\r\nlines"),
    Decision("reject", replies.TRANSACTION_FAILED),
    Decision("reject", replies.custom_reply(550, "5.1.1 No such user here")),
    Decision("reject", replies.custom_reply(451, "try later")),
]
# Answers that end the connection are rare, or few sessions would get far.
CLOSING_ANSWERS = [
    Decision("drop", replies.TRANSACTION_FAILED),
    Decision("reject", replies.LOCAL_ERROR_CLOSING),
]
decisions = st.sampled_from(ANSWERS * 4 + CLOSING_ANSWERS)

# Replies to commands that are well formed and in sequence: they cost no error budget.
NOT_ERRORS = frozenset({replies.CANNOT_VRFY, replies.EXPN_DISABLED, replies.HELP})


# The model


class Model:
    """RFC 5321 sequencing as the catalogue phrases it; knows nothing of the implementation."""

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        # RFC 1870: a declared SIZE above what EHLO advertised, or above the hard limit.
        self.size_limit = config.preferred_max_message_size or config.max_message_size
        self.state = GREETED
        self.errors = 0
        self.sender: str | None = None
        self.smtputf8 = False
        self.recipients: list[str] = []
        self.accepted: list[tuple[str, list[str], bytes]] = []
        self.events: list[tuple[str, object]] = []
        self._decisions: Sequence[Decision] = ()

    def run(self, commands: Sequence[Command], answers: Sequence[Decision]) -> tuple[bytes, bytes]:
        """Return what the client sends for ``commands`` and the replies it must read."""
        self.events = []
        self._decisions = answers
        sent = bytearray()
        expected = bytearray()
        for command in commands:
            sent += command.line + b"\r\n"
            expected += self.command(command)
            if self.state is DATA:
                sent += stuffed(command.content)
                expected += self.end_of_data(delivered(command.content))
        return bytes(sent), bytes(expected)

    def decide(self, kind: str, value: object) -> Decision:
        index = len(self.events)
        self.events.append((kind, value))
        return self._decisions[index] if index < len(self._decisions) else ACCEPT

    def refused(self, decision: Decision) -> bytes:
        assert decision.reply is not None
        if decision.kind == "drop" or decision.reply.code == 421:
            self.state = CLOSED
        return decision.reply.wire

    def error(self, reply: Reply) -> bytes:
        """Refuse a command the client got wrong: syntax, sequence or an unknown verb.

        Like Postfix's hard error limit, the error that reaches ``max_errors`` is followed by
        a 421 and the end of the connection; listener decisions and limits do not count.
        """
        self.errors += 1
        if self.errors < self.config.max_errors:
            return reply.wire
        self.state = CLOSED
        return reply.wire + replies.TOO_MANY_ERRORS.wire

    def end_transaction(self) -> None:
        self.sender = None
        self.smtputf8 = False
        self.recipients = []
        if self.state not in (GREETED, CLOSED):
            self.state = READY

    @property
    def in_transaction(self) -> bool:
        return self.state in (MAIL, RCPT, DATA)

    def command(self, command: Command) -> bytes:
        """Apply one command line; return the reply (empty once closed)."""
        if self.state is CLOSED:
            return b""
        kind = command.kind
        if kind in ("helo", "ehlo"):
            self.end_transaction()
            self.state = READY
            return ehlo_reply(self.config) if kind == "ehlo" else b"250 mx.test\r\n"
        if kind in ("bad-helo", "fixed", "garbage"):
            assert command.reply is not None
            if command.reply in NOT_ERRORS:
                return command.reply.wire
            return self.error(command.reply)
        if kind == "too-long":
            return self.error(replies.LINE_TOO_LONG)
        if kind == "noop":
            return replies.OK.wire
        if kind == "quit":
            self.state = CLOSED
            return replies.CLOSING.wire
        if kind == "rset":
            self.end_transaction()
            return replies.RESET_OK.wire
        if kind in ("mail", "bad-mail"):
            return self.mail(command)
        if kind in ("rcpt", "rcpt-utf8", "bad-rcpt"):
            return self.rcpt(command)
        assert kind == "data", kind
        if not self.in_transaction:
            return self.error(replies.NEED_MAIL)
        if not self.recipients:
            return self.error(replies.NEED_RCPT)
        self.state = DATA
        return replies.START_MAIL_INPUT.wire

    def mail(self, command: Command) -> bytes:
        if self.state is GREETED:
            return self.error(replies.NEED_HELO)
        if self.in_transaction:
            return self.error(replies.SENDER_ALREADY_SPECIFIED)
        if command.reply is not None:
            return self.error(command.reply)
        if command.size is not None and command.size > self.size_limit:
            return replies.SIZE_EXCEEDED.wire
        if self.config.decide_mail_from:
            decision = self.decide("mail", command.address)
            if decision.kind != "accept":
                return self.refused(decision)
        self.state = MAIL
        self.sender = command.address
        self.smtputf8 = command.smtputf8
        self.recipients = []
        return replies.SENDER_OK.wire

    def rcpt(self, command: Command) -> bytes:
        if not self.in_transaction:
            return self.error(replies.NEED_MAIL)
        if len(self.recipients) >= self.config.max_recipients:
            return replies.TOO_MANY_RECIPIENTS.wire
        if command.reply is not None:
            return self.error(command.reply)
        address = command.address
        if command.kind == "rcpt-utf8":
            if not self.smtputf8:
                return self.error(replies.NON_ASCII_ADDRESS)
            address = command.line.decode().partition("<")[2][:-1]
        if self.config.decide_rcpt_to:
            decision = self.decide("rcpt", address)
            if decision.kind != "accept":
                return self.refused(decision)
        self.recipients.append(address)
        self.state = RCPT
        return replies.RECIPIENT_OK.wire

    def end_of_data(self, data: bytes) -> bytes:
        if len(data) > self.config.max_message_size:
            self.end_transaction()
            return replies.TOO_MUCH_DATA.wire
        decision = self.decide("data", (data, self.sender, tuple(self.recipients)))
        if decision.kind != "accept":
            self.end_transaction()
            return self.refused(decision)
        assert self.sender is not None
        self.accepted.append((self.sender, list(self.recipients), data))
        self.end_transaction()
        if decision.text:
            return replies.custom_reply(250, decision.text, "2.0.0").wire
        return replies.MESSAGE_ACCEPTED.wire


def ehlo_reply(config: SessionConfig) -> bytes:
    """The EHLO reply, written out: the name, then one extension per line (RFC 5321 §4.1.1.1)."""
    # RFC 1870: SIZE tells the preferred size, else the enforced one.
    size = config.preferred_max_message_size or config.max_message_size
    lines = [HOST, "8BITMIME", f"SIZE {size}", "PIPELINING", "SMTPUTF8", "ENHANCEDSTATUSCODES"]
    last = len(lines) - 1
    text = "".join(f"250{' ' if i == last else '-'}{line}\r\n" for i, line in enumerate(lines))
    return text.encode()


def cut(data: bytes, points: Sequence[int]) -> list[bytes]:
    """Cut ``data`` at ``points`` (clamped, any order, duplicates allowed)."""
    bounds = sorted({0, len(data), *(min(p, len(data)) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# The machine


class Driven:
    """One ``SessionCore`` and everything it produced, fed the way the transport feeds it."""

    def __init__(self, wire: ModuleType, config: SessionConfig) -> None:
        self.core = session_core(wire)(config, wire, Session("s1", ("192.0.2.1", 4000), None))
        self.closed = False

    def run(
        self, chunks: Sequence[bytes], answers: Sequence[Decision]
    ) -> tuple[bytes, list[tuple[str, object]]]:
        """Feed ``chunks``; answer decision events in order; return output and events."""
        core = self.core
        output = bytearray()
        seen: list[tuple[str, object]] = []
        for chunk in chunks:
            core.feed(chunk)
            while True:
                event = core.step()
                output += core.take_output()
                if event is None:
                    break
                if event is CLOSE:
                    self.closed = True
                    break
                index = len(seen)
                seen.append(describe(event, core))
                answer = answers[index] if index < len(answers) else ACCEPT
                answer.apply(core, event)
                assert core.pending is None
        return bytes(output), seen


def describe(event: object, core: SessionCore) -> tuple[str, object]:
    """Reduce a decision event to what the model predicts about it."""
    if isinstance(event, MailFrom):
        return "mail", event.address
    if isinstance(event, RcptTo):
        return "rcpt", event.address
    assert isinstance(event, MessageReceived), event
    return "data", (event.data, core.envelope_from, tuple(core.recipients))


class SessionMachine(RuleBasedStateMachine):
    """Drive one core per twin given, all fed the same bytes and the same decisions."""

    def __init__(self, twins: Sequence[ModuleType]) -> None:
        super().__init__()
        self.twins = twins
        self.driven: list[Driven] = []
        self.model: Model | None = None
        self.synced = True  # False once arbitrary bytes were fed: only parity is checked

    @initialize(
        greet=st.sampled_from([b"", b"HELO client.test", b"EHLO client.test", b"EHLO x.y"]),
        decide_mail_from=st.booleans(),
        decide_rcpt_to=st.booleans(),
        max_recipients=st.integers(1, 4),
        max_message_size=st.sampled_from([64, 2048, 32 * 1024 * 1024]),
        preferred=st.sampled_from([None, 1000]),
        max_errors=st.sampled_from([3, 20]),
    )
    def connect(
        self,
        greet: bytes,
        decide_mail_from: bool,
        decide_rcpt_to: bool,
        max_recipients: int,
        max_message_size: int,
        preferred: int | None,
        max_errors: int,
    ) -> None:
        config = SessionConfig(
            HOST,
            max_recipients=max_recipients,
            max_message_size=max(max_message_size, preferred or 0),
            preferred_max_message_size=preferred,
            max_line_length=MAX_LINE,
            decide_mail_from=decide_mail_from,
            decide_rcpt_to=decide_rcpt_to,
            max_errors=max_errors,
        )
        self.model = Model(config)
        self.driven = [Driven(twin, config) for twin in self.twins]
        for driven in self.driven:
            assert driven.core.greeting() == b"220 mx.test ESMTP fastsmtp\r\n"
        if greet:
            self.exchange([Command(greet[:4].lower().decode(), greet)], [])

    def exchange(
        self,
        commands: Sequence[Command],
        answers: Sequence[Decision],
        points: Sequence[int] = (),
    ) -> None:
        """Send ``commands`` (one write, or cut at ``points``) and check every core's answer."""
        assert self.model is not None
        sent, expected = self.model.run(commands, answers)
        self.feed(sent, answers, points, expected)

    def feed(
        self,
        sent: bytes,
        answers: Sequence[Decision],
        points: Sequence[int],
        expected: bytes | None,
    ) -> None:
        assert self.model is not None
        chunks = cut(sent, points)
        results = []
        for driven in self.driven:
            output, seen = driven.run(chunks, answers)
            results.append((output, seen, driven.closed, driven.core.state))
            if not self.synced or expected is None:
                continue
            assert output == expected, (sent, output, expected)
            # The events carry the addresses and the content the client meant, and a message
            # arrives with exactly the sender and the recipients that were accepted.
            assert seen == self.model.events
        # Byte-identical twins, whatever was fed.
        assert all(result == results[0] for result in results[1:]), results

    # Rules

    @rule(command=helo_commands)
    def helo(self, command: Command) -> None:
        self.exchange([command], [])

    @rule(command=st.one_of(mail_commands(), bad_mail_commands), answer=decisions)
    def mail(self, command: Command, answer: Decision) -> None:
        self.exchange([command], [answer])

    @rule(command=st.one_of(rcpt_commands(), bad_rcpt_commands), answer=decisions)
    def rcpt(self, command: Command, answer: Decision) -> None:
        self.exchange([command], [answer])

    @rule(
        command=data_commands,
        answer=decisions,
        points=st.lists(st.integers(0, 2000), max_size=6),
    )
    def data(self, command: Command, answer: Decision, points: list[int]) -> None:
        self.exchange([command], [answer], points)

    @rule(command=st.one_of(simple_commands, garbage_commands, too_long_commands))
    def other(self, command: Command) -> None:
        self.exchange([command], [])

    @rule(
        commands=st.lists(any_command, min_size=2, max_size=10),
        answers=st.lists(decisions, max_size=10),
        points=st.lists(st.integers(0, 3000), max_size=8),
    )
    def pipelined(
        self, commands: list[Command], answers: list[Decision], points: list[int]
    ) -> None:
        self.exchange(commands, answers, points)

    @rule(
        reset_first=st.booleans(),
        mail=mail_commands(),
        rcpts=st.lists(st.one_of(rcpt_commands(), bad_rcpt_commands), max_size=5),
        rcpt=rcpt_commands(),
        data=data_commands,
        answers=st.lists(decisions, max_size=8),
        points=st.lists(st.integers(0, 3000), max_size=8),
        then_quit=st.sampled_from([False] * 9 + [True]),
    )
    def transaction(
        self,
        reset_first: bool,
        mail: Command,
        rcpt: Command,
        rcpts: list[Command],
        data: Command,
        answers: list[Decision],
        points: list[int],
        then_quit: bool,
    ) -> None:
        # What a pipelining client sends in one go (RFC 2920 §3.1), QUIT included or not.
        commands = [mail, rcpt, *rcpts, data]
        if reset_first:
            commands.insert(0, Command("rset", b"RSET"))
        if then_quit:
            commands.append(Command("quit", b"QUIT"))
        self.exchange(commands, answers, points)

    # Invariants

    @invariant()
    def agrees_with_the_model(self) -> None:
        model = self.model
        if model is None or not self.synced:
            return
        for driven in self.driven:
            core = driven.core
            assert core.state is model.state
            assert driven.closed == (model.state is CLOSED)
            if model.state is CLOSED:
                continue
            assert core.envelope_from == model.sender
            assert core.recipients == model.recipients
            assert core.buffered() == 0
            assert core.session.messages_accepted == len(model.accepted)


class ParityMachine(SessionMachine):
    """The same rules plus arbitrary bytes; after those, the twins are only compared."""

    @precondition(lambda self: len(self.driven) > 1)
    @rule(
        data=st.lists(
            st.one_of(st.sampled_from(CONTENT_PIECES + [b"DATA\r\n", b".\r\n"]), st.binary()),
            max_size=12,
        ).map(b"".join),
        answers=st.lists(decisions, max_size=4),
        points=st.lists(st.integers(0, 3000), max_size=6),
    )
    def raw_bytes(self, data: bytes, answers: list[Decision], points: list[int]) -> None:
        self.synced = False
        self.feed(data, answers, points, None)


STATEFUL = settings(
    max_examples=150,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_session_follows_the_model(wire: ModuleType) -> None:
    run_state_machine_as_test(lambda: SessionMachine([wire]), settings=STATEFUL)


@pytest.mark.skipif(
    _wire.NO_EXTENSIONS, reason="FASTSMTP_NO_EXTENSIONS is set: no compiled twin to compare"
)
def test_twins_are_byte_identical_in_lockstep() -> None:
    twins = [_wire.load("c"), _wire.load("py")]
    run_state_machine_as_test(lambda: ParityMachine(twins), settings=STATEFUL)
