"""The MAIL and RCPT argument grammar (RFC 5321 4.1.2) and the ESMTP parameters we take."""

from __future__ import annotations

import pytest

from fastsmtp import replies
from fastsmtp._commands import parse_mail, parse_rcpt
from fastsmtp.errors import CommandError
from fastsmtp.replies import Reply


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
def test_mail_addresses_accepted(argument: bytes, address: str) -> None:
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
def test_mail_syntax_errors(argument: bytes) -> None:
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
def test_mail_bad_addresses(mailbox: bytes) -> None:
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
    parameters: bytes, size: int | None, body: str | None, smtputf8: bool, auth: str | None
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
def test_mail_bad_parameters(parameters: bytes) -> None:
    assert refused(parse_mail, b"FROM:<alice@example.org>" + parameters) == (replies.BAD_PARAMETER)


def test_mail_non_ascii_needs_smtputf8() -> None:
    argument = "FROM:<élise@exämple.org>".encode()
    assert refused(parse_mail, argument) == replies.NON_ASCII_ADDRESS
    arguments = parse_mail(argument + b" SMTPUTF8")
    assert arguments.address == "élise@exämple.org"
    assert arguments.smtputf8


def test_mail_invalid_utf8_is_a_bad_address() -> None:
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
def test_rcpt_addresses_accepted(argument: bytes, smtputf8: bool, address: str) -> None:
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
def test_rcpt_refused(argument: bytes, reply: Reply) -> None:
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
def test_address_literals_accepted(address: str) -> None:
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
def test_malformed_literals_and_routes_are_bad_addresses(mailbox: bytes) -> None:
    assert refused(parse_mail, b"FROM:<" + mailbox + b">") == replies.BAD_SENDER


@pytest.mark.parametrize("value", [b"a b", b"a=b", b"\x01", b"\xc3\xa9"])
def test_esmtp_values_are_printable_ascii_without_equals(value: bytes) -> None:
    # RFC 5321 esmtp-value: %d33-60 / %d62-126. A space splits the word, so "a b" leaves "b"
    # as a parameter of its own, which no extension of ours knows.
    argument = b"FROM:<alice@example.org> AUTH=" + value
    assert refused(parse_mail, argument) == replies.BAD_PARAMETER
