"""The MAIL and RCPT argument grammar (RFC 5321 4.1.2) and the ESMTP parameters we take."""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fastsmtp import _commands, _wire, replies
from fastsmtp.errors import CommandError
from fastsmtp.replies import Reply

Parser = Callable[..., Any]


def _no_plain_path(argument: bytes, keyword: bytes) -> None:
    return None


@pytest.fixture(params=["c", "py", "full grammar only"])
def plain_path(request: pytest.FixtureRequest) -> Callable[[bytes, bytes], object]:
    """Each twin's fast path in turn, and none: every case must come out the same."""
    if request.param == "full grammar only":
        return _no_plain_path
    if request.param == "c" and _wire.NO_EXTENSIONS:
        pytest.skip("FASTSMTP_NO_EXTENSIONS is set: the compiled twin is not expected")
    return _wire.load(request.param).plain_path  # type: ignore[no-any-return]


@pytest.fixture
def parse_mail(plain_path: _commands.PlainPath) -> Parser:
    return functools.partial(_commands.parse_mail, plain_path=plain_path)


@pytest.fixture
def parse_rcpt(plain_path: _commands.PlainPath) -> Parser:
    return functools.partial(_commands.parse_rcpt, plain_path=plain_path)


@pytest.mark.parametrize(
    ("argument", "address"),
    [
        (b"FROM:<alice@example.org>", "alice@example.org"),
        (b"from:<Alice@Example.ORG>", "Alice@Example.ORG"),
        (b"FROM: <alice@example.org>", "alice@example.org"),
        (b"FROM:<>", ""),
        (b"FROM: <>", ""),
        (b'FROM:<"alice smith"@example.org>', '"alice smith"@example.org'),
        (b'FROM:<"a>b"@example.org>', '"a>b"@example.org'),
        (b'FROM:<"a\\"b"@example.org>', '"a\\"b"@example.org'),
        (b'FROM:<"a@b"@example.org>', '"a@b"@example.org'),
        (b"FROM:<@relay.example,@other.example:alice@example.org>", "alice@example.org"),
        (b"FROM:<alice@[192.0.2.1]>", "alice@[192.0.2.1]"),
        (b"FROM:<alice@[IPv6:2001:db8::1]>", "alice@[IPv6:2001:db8::1]"),
        (b"FROM:<alice@localhost>", "alice@localhost"),
        (b"FROM:<first.last+tag@sub-domain.example.org>", "first.last+tag@sub-domain.example.org"),
        (b"FROM:<!#$%&'*+-/=?^_`{|}~@example.org>", "!#$%&'*+-/=?^_`{|}~@example.org"),
        (b"FROM:<a@" + b"x" * 63 + b".example>", "a@" + "x" * 63 + ".example"),
    ],
)
def test_mail_addresses_accepted(parse_mail: Parser, argument: bytes, address: str) -> None:
    assert parse_mail(argument).address == address


def refused(parse: object, *args: object) -> Reply:
    """Call a parser that must fail and return the reply it fails with."""
    with pytest.raises(CommandError) as caught:
        parse(*args)  # type: ignore[operator]
    return caught.value.reply


@pytest.mark.parametrize(
    "argument",
    [
        b"",
        b"FROM:",
        b"FROM:alice@example.org",
        b"FROM :<alice@example.org>",
        b"TO:<alice@example.org>",
        b"FROM:<alice@example.org",
        b"FROM:<a<b@example.org>",
        b"FROM:<<alice@example.org>>",
        b"FROM:<alice@example.org>>",
        b"FROM:<alice@example.org>SIZE=1",
        b'FROM:<"unterminated@example.org>',
    ],
)
def test_mail_syntax_errors(parse_mail: Parser, argument: bytes) -> None:
    assert refused(parse_mail, argument) == replies.MAIL_SYNTAX


@pytest.mark.parametrize(
    "mailbox",
    [
        b"alice",
        b"@example.org",
        b"alice@",
        b"a..b@example.org",
        b".alice@example.org",
        b"alice.@example.org",
        b"alice@example..org",
        b"alice@-example.org",
        b"alice@example-.org",
        b"alice@example.org.",
        b"alice@under_score.org",
        b"alice@" + b"x" * 64 + b".example",
        b"alice@" + b"a." * 128 + b"org",
        b"al ice@example.org",
        b"alice@exa mple.org",
        b"alice@[300.1.1.1]",
        b"alice@[192.0.2]",
        b"alice@[]",
        b"alice@[IPv6:zz::1]",
        b"\x00@example.org",
        b'"\x00"@example.org',
    ],
)
def test_mail_bad_addresses(parse_mail: Parser, mailbox: bytes) -> None:
    assert refused(parse_mail, b"FROM:<" + mailbox + b">") == replies.BAD_SENDER


@pytest.mark.parametrize(
    ("parameters", "size", "body", "smtputf8", "auth"),
    [
        (b" SIZE=0", 0, None, False, None),
        (b" size=12345", 12345, None, False, None),
        (b" SIZE=00042", 42, None, False, None),
        (b" BODY=8BITMIME", None, "8BITMIME", False, None),
        (b" body=7bit", None, "7BIT", False, None),
        (b" SMTPUTF8", None, None, True, None),
        (b" AUTH=<>", None, None, False, "<>"),
        (b"  SIZE=5   BODY=8BITMIME  SMTPUTF8", 5, "8BITMIME", True, None),
    ],
)
def test_mail_parameters(
    parse_mail: Parser,
    parameters: bytes,
    size: int | None,
    body: str | None,
    smtputf8: bool,
    auth: str | None,
) -> None:
    arguments = parse_mail(b"FROM:<alice@example.org>" + parameters)
    assert (arguments.size, arguments.body, arguments.smtputf8, arguments.auth) == (
        size,
        body,
        smtputf8,
        auth,
    )


@pytest.mark.parametrize(
    "parameters",
    [
        b" SIZE=",
        b" SIZE",
        b" SIZE=abc",
        b" SIZE=+5",
        b" SIZE=-1",
        b" SIZE=1 SIZE=2",
        b" SIZE=1\xc3\xa9",
        b" BODY=BINARYMIME",
        b" BODY=8BITMIME BODY=7BIT",
        b" BODY",
        b" SMTPUTF8=yes",
        b" AUTH=",
        b" AUTH",
        b" RET=FULL",
        b" =x",
        b" FOO",
    ],
)
def test_mail_bad_parameters(parse_mail: Parser, parameters: bytes) -> None:
    assert refused(parse_mail, b"FROM:<alice@example.org>" + parameters) == (replies.BAD_PARAMETER)


def test_mail_non_ascii_needs_smtputf8(parse_mail: Parser) -> None:
    argument = "FROM:<élise@exämple.org>".encode()
    assert refused(parse_mail, argument) == replies.NON_ASCII_ADDRESS
    arguments = parse_mail(argument + b" SMTPUTF8")
    assert arguments.address == "élise@exämple.org"
    assert arguments.smtputf8


def test_mail_invalid_utf8_is_a_bad_address(parse_mail: Parser) -> None:
    assert refused(parse_mail, b"FROM:<\xff@example.org> SMTPUTF8") == replies.BAD_SENDER


@pytest.mark.parametrize(
    ("argument", "smtputf8", "address"),
    [
        (b"TO:<bob@example.com>", False, "bob@example.com"),
        (b"to:<bob@example.com>", False, "bob@example.com"),
        (b"TO: <bob@example.com>", False, "bob@example.com"),
        (b"TO:<postmaster>", False, "Postmaster"),
        (b"TO:<PostMaster>", False, "Postmaster"),
        (b"TO:<postmaster@example.com>", False, "postmaster@example.com"),
        (b"TO:<@relay.example:bob@example.com>", False, "bob@example.com"),
        ("TO:<zoë@exämple.com>".encode(), True, "zoë@exämple.com"),
    ],
)
def test_rcpt_addresses_accepted(
    parse_rcpt: Parser, argument: bytes, smtputf8: bool, address: str
) -> None:
    assert parse_rcpt(argument, smtputf8) == address


@pytest.mark.parametrize(
    ("argument", "reply"),
    [
        (b"", replies.RCPT_SYNTAX),
        (b"TO:", replies.RCPT_SYNTAX),
        (b"TO:bob@example.com", replies.RCPT_SYNTAX),
        (b"FROM:<bob@example.com>", replies.RCPT_SYNTAX),
        (b"TO:<postmaster", replies.RCPT_SYNTAX),
        (b"TO:<>", replies.BAD_RECIPIENT),
        (b"TO:<bob>", replies.BAD_RECIPIENT),
        (b"TO:<bob@example..com>", replies.BAD_RECIPIENT),
        (b"TO:<bob@example.com> NOTIFY=NEVER", replies.BAD_PARAMETER),
        (b"TO:<bob@example.com> ORCPT=rfc822;bob@example.com", replies.BAD_PARAMETER),
        ("TO:<zoë@example.com>".encode(), replies.NON_ASCII_ADDRESS),
    ],
)
def test_rcpt_refused(parse_rcpt: Parser, argument: bytes, reply: Reply) -> None:
    assert refused(parse_rcpt, argument, False) == reply


def test_refusal_codes_match_rfc_5321() -> None:
    # Syntax errors in parameters are 501, bad mailboxes 553, bad ESMTP parameters 555.
    assert (replies.MAIL_SYNTAX.code, replies.RCPT_SYNTAX.code) == (501, 501)
    assert (replies.BAD_SENDER.code, replies.BAD_RECIPIENT.code) == (553, 553)
    assert replies.BAD_PARAMETER.code == 555


@pytest.mark.parametrize(
    "address",
    [
        "alice@[IPv6:::1]",
        "alice@[IPv6:2001:db8:0:0:0:0:0:1]",
        "alice@[IPv6:::ffff:192.0.2.1]",
        "alice@[ipv6:FE80::1]",
        "alice@[x-tag:some.content]",
    ],
)
def test_address_literals_accepted(parse_mail: Parser, address: str) -> None:
    assert parse_mail(b"FROM:<" + address.encode() + b">").address == address


@pytest.mark.parametrize(
    "mailbox",
    [
        b"alice@[IPv6:1:2:3:4:5:6:7:8:9]",  # nine groups
        b"alice@[IPv6:1::2::3]",  # two "::"
        b"alice@[IPv6:fe80::1%eth0]",  # a scope id is no part of the grammar
        b"alice@[IPv6:12345::1]",  # a group of five digits
        b"alice@[IPv6:]",
        b"alice@[x_tag:content]",  # the tag is an Ldh-str
        b"alice@[x-:content]",  # which cannot end with a hyphen
        b"@:alice@example.org",  # an empty source route
        b"@relay.example,alice@example.org",  # no colon after the route
        b"@relay..example:alice@example.org",  # a bad domain in the route
        b"@relay.example,other.example:alice@example.org",  # a hop without its "@"
    ],
)
def test_malformed_literals_and_routes_are_bad_addresses(
    parse_mail: Parser, mailbox: bytes
) -> None:
    assert refused(parse_mail, b"FROM:<" + mailbox + b">") == replies.BAD_SENDER


@pytest.mark.parametrize("value", [b"a b", b"a=b", b"\x01", b"\xc3\xa9"])
def test_esmtp_values_are_printable_ascii_without_equals(parse_mail: Parser, value: bytes) -> None:
    # RFC 5321 esmtp-value: %d33-60 / %d62-126. A space splits the word, so "a b" leaves "b"
    # as a parameter of its own, which no extension of ours knows.
    argument = b"FROM:<alice@example.org> AUTH=" + value
    assert refused(parse_mail, argument) == replies.BAD_PARAMETER


# The fast path: each twin's plain_path() recognises the everyday address, and wherever it
# does, the full grammar gives the very same result.


DOMAIN_255 = b".".join([b"x" * 63] * 3 + [b"y" * 63])
DOMAIN_256 = b".".join([b"x" * 63] * 3 + [b"y" * 62, b"z"])


def test_everyday_paths_take_the_fast_path(wire: ModuleType) -> None:
    plain = wire.plain_path
    assert plain(b"FROM:<load@client.example>", b"FROM:") == ("load@client.example", 26)
    assert plain(b"from:  <A.b+c@x-y.Example> SIZE=10", b"FROM:") == ("A.b+c@x-y.Example", 26)
    assert plain(b"TO:<sink@server.example>", b"TO:") == ("sink@server.example", 24)
    # A domain of 255 octets, the most there may be.
    assert plain(b"TO:<a@" + DOMAIN_255 + b">", b"TO:") == ("a@" + DOMAIN_255.decode(), 262)


@pytest.mark.parametrize(
    "argument",
    [
        b"FROM:<>",
        b'FROM:<"quoted"@example.org>',
        b"FROM:<@route.example:a@example.org>",
        b"FROM:<a@[192.0.2.1]>",
        b"FROM:<postmaster>",
        "FROM:<élise@example.org>".encode(),
        b"FROM:<a@" + b"x" * 64 + b".example>",  # a label over 63 octets
        b"FROM:<a@" + DOMAIN_256 + b">",  # a domain over 255 octets
        b"FROM:<a@-x.example>",
        b"FROM:<a@x-.example>",
        b"FROM:<a..b@example.org>",
        b"FROM:<a@example.org>SIZE=1",
        b"FROM:<a@example.org",
        b"TO:<a@example.org>",
    ],
)
def test_anything_else_is_left_to_the_full_grammar(wire: ModuleType, argument: bytes) -> None:
    assert wire.plain_path(argument, b"FROM:") is None


def outcome(parse: Parser, *args: object) -> object:
    """What a parser made of its input: the values it returned, or the reply it refused with."""
    try:
        result = parse(*args)
    except CommandError as error:
        return ("refused", error.reply)
    if isinstance(result, str):
        return ("ok", result)
    return ("ok", result.address, result.size, result.body, result.smtputf8, result.auth)


ADDRESS_PIECES = [
    b"FROM:", b"from:", b"TO:", b"to:", b" ", b"<", b">", b"@", b".", b"-", b"a", b"Z", b"9",
    b"x" * 62, b"x" * 63, b"+", b'"', b"[", b"]", b"\\", b"\x80", b"\xc3\xa9", b"=", b":",
    b",", b"SIZE=10", b"BODY=8BITMIME", b"SMTPUTF8", b"IPv6:", b"1.2.3.4", b"postmaster",
    b"a@example.org", b"<a@b.c>",
]  # fmt: skip
# Near misses of the fast path's limits: atoms, labels of 62 to 64 octets, domains about 255.
LOCAL_PIECES = [b"a", b"Z", b".", b"+", b"-", b'"', b"\x80", b"@", b"(", b" "]
LABELS = [b"x" * 62, b"x" * 63, b"x" * 64, b"-x", b"x-", b"a-b", b"9", b"", b"[1.2.3.4]"]
paths = st.tuples(
    st.sampled_from([b"FROM:", b"from: ", b"TO:", b"To:  ", b"FROM :"]),
    st.lists(st.sampled_from(LOCAL_PIECES), min_size=1, max_size=5).map(b"".join),
    st.lists(st.sampled_from(LABELS), min_size=1, max_size=5).map(b".".join),
    st.sampled_from([b"", b" SIZE=10", b" BODY=8BITMIME SMTPUTF8", b"x", b" ", b">"]),
).map(lambda parts: parts[0] + b"<" + parts[1] + b"@" + parts[2] + b">" + parts[3])
arguments = st.one_of(
    st.binary(max_size=40),
    st.lists(st.sampled_from(ADDRESS_PIECES), max_size=16).map(b"".join),
    paths,
)


@pytest.mark.parametrize("twin", ["c", "py"])
@settings(max_examples=1500, deadline=None)
@given(argument=arguments, smtputf8=st.booleans())
@example(argument=b"<a@" + DOMAIN_255 + b">", smtputf8=False)
@example(argument=b"<a@" + DOMAIN_256 + b">", smtputf8=False)
def test_fast_path_never_changes_a_result(twin: str, argument: bytes, smtputf8: bool) -> None:
    if twin == "c" and _wire.NO_EXTENSIONS:
        pytest.skip("FASTSMTP_NO_EXTENSIONS is set: the compiled twin is not expected")
    fast, full = _wire.load(twin).plain_path, _no_plain_path
    # As drawn (it may hold its own keyword), and after each keyword, as clients send it.
    for candidate in (argument, b"FROM:" + argument, b"TO:" + argument):
        mail = _commands.parse_mail
        assert outcome(mail, candidate, fast) == outcome(mail, candidate, full)
        rcpt = _commands.parse_rcpt
        assert outcome(rcpt, candidate, smtputf8, fast) == outcome(rcpt, candidate, smtputf8, full)
