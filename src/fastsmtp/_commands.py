"""Argument grammar of MAIL and RCPT (RFC 5321 §4.1.2) and their ESMTP parameters.

Sans-IO: bytes in, values or a ``CommandError`` out. The everyday ``<local@domain>`` is
recognised first by the wire twin's ``plain_path()`` (one C call in the compiled twin); the
hand-written grammar below decides everything else, with the same results.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from . import _wire, replies
from ._wire_py import MAX_DOMAIN_LENGTH, MAX_LABEL_LENGTH
from .errors import CommandError

__all__ = ["MailArguments", "parse_mail", "parse_rcpt"]

# RFC 5322 atext, the characters of a Dot-string atom (RFC 5321 §4.1.2), and those of a
# domain label. Validation deletes the allowed bytes in one C call and looks at what is left.
_ATEXT = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
_LET_DIG_HYPHEN = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"
_UTF8_BYTES = bytes(range(0x80, 0x100))  # RFC 6531: allowed in addresses under SMTPUTF8
_DOT_STRING = (_ATEXT + b".", _ATEXT + b"." + _UTF8_BYTES)
_DOMAIN = (_LET_DIG_HYPHEN + b".", _LET_DIG_HYPHEN + b"." + _UTF8_BYTES)
_IPV6_CHARACTERS = b"0123456789abcdefABCDEF:."
# RFC 5321 §4.1.2: esmtp-value is printable US-ASCII without "=" (xtext encodes one as +3D).
_ESMTP_VALUE = bytes(range(0x21, 0x7F)).replace(b"=", b"")
_BODY_TYPES = frozenset({"7BIT", "8BITMIME"})


class MailArguments:
    """What MAIL FROM carried: the reverse-path and the ESMTP parameters that matter."""

    __slots__ = ("address", "auth", "body", "size", "smtputf8")

    def __init__(self, address: str) -> None:
        self.address = address
        self.size: int | None = None
        self.body: str | None = None
        self.smtputf8 = False
        self.auth: str | None = None


# The twin's recogniser of the everyday path (``_wire_py.plain_path`` or its compiled twin).
PlainPath = Callable[[bytes, bytes], tuple[str, int] | None]


def parse_mail(argument: bytes, plain_path: PlainPath = _wire.plain_path) -> MailArguments:
    """Parse the argument of MAIL: ``FROM:<path> [parameters]``.

    ``plain_path`` is the wire twin's fast recogniser of a plain ``<local@domain>``; what it
    does not recognise gets the full grammar, with the same results.

    Raises:
        CommandError: 501 for bad syntax, 553 for a bad address, 555 for a bad parameter.
    """
    plain = plain_path(argument, b"FROM:")
    if plain is not None:
        address, end = plain
        result = MailArguments(address)
        if end < len(argument):
            _apply_mail_parameters(result, _parameters(argument[end:]))
        return result

    path, tail = _split_path(argument, b"FROM:", replies.MAIL_SYNTAX)
    result = MailArguments("")
    _apply_mail_parameters(result, _parameters(tail))
    if path != b"<>":
        result.address = _parse_mailbox(path, result.smtputf8, replies.BAD_SENDER)
    return result


def _apply_mail_parameters(result: MailArguments, params: list[tuple[str, str | None]]) -> None:
    for name, value in params:
        if name == "SIZE":
            if value is None or not value.isdigit() or result.size is not None:
                raise CommandError(replies.BAD_PARAMETER)
            result.size = int(value)
        elif name == "BODY":
            if value is None or value.upper() not in _BODY_TYPES or result.body is not None:
                raise CommandError(replies.BAD_PARAMETER)
            result.body = value.upper()
        elif name == "SMTPUTF8":
            if value is not None or result.smtputf8:
                raise CommandError(replies.BAD_PARAMETER)
            result.smtputf8 = True
        elif name == "AUTH":
            # RFC 4954 §5: accepted and passed on; it asserts nothing by itself.
            if not value:
                raise CommandError(replies.BAD_PARAMETER)
            result.auth = value
        else:
            raise CommandError(replies.BAD_PARAMETER)


def parse_rcpt(argument: bytes, smtputf8: bool, plain_path: PlainPath = _wire.plain_path) -> str:
    """Parse the argument of RCPT: ``TO:<path>``; no RCPT parameter is supported.

    ``plain_path`` is as for ``parse_mail()``.

    Raises:
        CommandError: 501 for bad syntax, 553 for a bad address, 555 for any parameter.
    """
    plain = plain_path(argument, b"TO:")
    if plain is not None and plain[1] == len(argument):
        return plain[0]

    path, tail = _split_path(argument, b"TO:", replies.RCPT_SYNTAX)
    if _parameters(tail):
        raise CommandError(replies.BAD_PARAMETER)
    if path == b"<>":
        raise CommandError(replies.BAD_RECIPIENT)
    # RFC 5321 §4.5.1: <Postmaster> without a domain must be accepted.
    if path[1:-1].lower() == b"postmaster":
        return "Postmaster"
    return _parse_mailbox(path, smtputf8, replies.BAD_RECIPIENT)


def _split_path(argument: bytes, keyword: bytes, syntax: replies.Reply) -> tuple[bytes, bytes]:
    """Split ``KEYWORD:<path> params`` into the bracketed path and what follows it."""
    if argument[: len(keyword)].upper() != keyword:
        raise CommandError(syntax)
    rest = argument[len(keyword) :].lstrip(b" ")
    if not rest.startswith(b"<"):
        raise CommandError(syntax)
    close = _closing_bracket(rest)
    if close < 0:
        raise CommandError(syntax)
    tail = rest[close + 1 :]
    if tail and not tail.startswith(b" "):
        raise CommandError(syntax)
    return rest[: close + 1], tail


def _parameters(tail: bytes) -> list[tuple[str, str | None]]:
    """Split what follows a path into ESMTP parameters: ``(NAME, value or None)``."""
    params = []
    for word in tail.split():
        name, equals, value = word.partition(b"=")
        if not name or (equals and (not value or value.translate(None, _ESMTP_VALUE))):
            raise CommandError(replies.BAD_PARAMETER)
        try:
            params.append(
                (
                    name.decode("ascii").upper(),
                    value.decode("ascii") if equals else None,
                )
            )
        except UnicodeDecodeError:
            raise CommandError(replies.BAD_PARAMETER) from None
    return params


def _closing_bracket(rest: bytes) -> int:
    """Return the index of the ``>`` closing the path, skipping quoted strings."""
    if b'"' not in rest:
        close = rest.find(b">")
        return -1 if close < 0 or b"<" in rest[1:close] else close

    quoted = False
    index = 1
    end = len(rest)
    while index < end:
        byte = rest[index]
        if quoted:
            if byte == 0x5C:  # backslash escapes the next character (quoted-pairSMTP)
                index += 1
            elif byte == 0x22:
                quoted = False
        elif byte == 0x22:
            quoted = True
        elif byte == 0x3E:
            return index
        elif byte == 0x3C:
            return -1
        index += 1
    return -1


def _parse_mailbox(path: bytes, smtputf8: bool, invalid: replies.Reply) -> str:
    """Validate ``<[source-route:]local@domain>`` and return ``local@domain``."""
    mailbox = path[1:-1]
    if mailbox.startswith(b"@"):
        # RFC 5321 §4.1.2 / Appendix C: a source route (A-d-l) is accepted and ignored, but
        # only a well-formed one: "@" domain, comma-separated, then a colon.
        colon = mailbox.find(b":")
        if colon < 0 or not _valid_source_route(mailbox[:colon], smtputf8):
            raise CommandError(invalid)
        mailbox = mailbox[colon + 1 :]

    at = mailbox.rfind(b"@")
    if at <= 0 or at == len(mailbox) - 1:
        raise CommandError(invalid)
    local, domain = mailbox[:at], mailbox[at + 1 :]

    if not mailbox.isascii():
        if not smtputf8:
            raise CommandError(replies.NON_ASCII_ADDRESS)
        try:
            text = mailbox.decode("utf-8")
        except UnicodeDecodeError:
            raise CommandError(invalid) from None
    else:
        text = mailbox.decode("ascii")

    if not (_valid_local_part(local, smtputf8) and _valid_domain(domain, smtputf8)):
        raise CommandError(invalid)
    return text


def _valid_source_route(route: bytes, smtputf8: bool) -> bool:
    """True if ``route`` is ``@domain`` or several of them separated by commas."""
    return all(
        hop.startswith(b"@") and _valid_domain(hop[1:], smtputf8) for hop in route.split(b",")
    )


def _valid_local_part(local: bytes, smtputf8: bool) -> bool:
    if local.startswith(b'"'):
        return _valid_quoted_string(local, smtputf8)
    return _dotted(local, _DOT_STRING[smtputf8])


def _dotted(text: bytes, allowed: bytes) -> bool:
    """True if ``text`` is dot-separated, non-empty runs of ``allowed`` bytes."""
    return (
        bool(text)
        and not text.translate(None, allowed)
        and not text.startswith(b".")
        and not text.endswith(b".")
        and b".." not in text
    )


def _valid_quoted_string(text: bytes, smtputf8: bool) -> bool:
    if len(text) < 2 or not text.endswith(b'"'):
        return False
    index = 1
    end = len(text) - 1
    while index < end:
        byte = text[index]
        if byte == 0x5C:
            if index + 1 >= end or not 0x20 <= text[index + 1] <= 0x7E:
                return False
            index += 2
            continue
        if byte == 0x22 or (byte < 0x20 or byte == 0x7F) or (byte >= 0x80 and not smtputf8):
            return False
        index += 1
    return True


def _valid_domain(domain: bytes, smtputf8: bool) -> bool:
    if domain.startswith(b"["):
        return _valid_address_literal(domain)
    if len(domain) > MAX_DOMAIN_LENGTH or not _dotted(domain, _DOMAIN[smtputf8]):
        return False
    # Labels neither start nor end with a hyphen and are not too long (RFC 1035 §2.3.4).
    if domain.startswith(b"-") or domain.endswith(b"-") or b"-." in domain or b".-" in domain:
        return False
    longest = MAX_LABEL_LENGTH
    return len(domain) <= longest or all(len(label) <= longest for label in domain.split(b"."))


def _valid_address_literal(literal: bytes) -> bool:
    """RFC 5321 §4.1.3: ``[IPv4]``, ``[IPv6:...]`` or ``[tag:content]``."""
    if not literal.endswith(b"]") or len(literal) < 3:
        return False
    inner = literal[1:-1]
    if inner[:5].upper() == b"IPV6:":
        return _valid_ipv6(inner[5:])
    if b":" in inner:
        # General-address-literal: Standardized-tag (an Ldh-str) ":" 1*dcontent.
        tag, _, content = inner.partition(b":")
        return (
            bool(tag)
            and not tag.translate(None, _LET_DIG_HYPHEN)
            and not tag.endswith(b"-")
            and bool(content)
            and all(0x21 <= c <= 0x7E and c not in b"[]\\" for c in content)
        )
    parts = inner.split(b".")
    return len(parts) == 4 and all(p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts)


def _valid_ipv6(text: bytes) -> bool:
    """RFC 5321 IPv6-addr, full or compressed, with or without a trailing IPv4 part."""
    # Only hex digits, colons and dots: this keeps out the "%scope" ipaddress would allow.
    if not text or text.translate(None, _IPV6_CHARACTERS):
        return False
    try:
        ipaddress.IPv6Address(text.decode("ascii"))
    except ValueError:
        return False
    return True
