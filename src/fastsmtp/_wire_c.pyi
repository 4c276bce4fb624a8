"""Compiled twin of ``fastsmtp._wire_py``: the byte-level hot path, scanned in C.

One job: turn the bytes a client sends into command lines and message bodies. It knows
nothing of replies, states or listeners, and it never does I/O.

The Python twin is the reference and owns the shared definitions (``LineTooLong``, the
default line limit); this module imports them. Both give identical results for identical
input however it is chunked, and ``tests/test_wire_parity.py`` holds them to it.
"""

from typing import Final

from fastsmtp._wire_py import DEFAULT_MAX_LINE_LENGTH as DEFAULT_MAX_LINE_LENGTH
from fastsmtp._wire_py import MAX_DOMAIN_LENGTH as MAX_DOMAIN_LENGTH
from fastsmtp._wire_py import MAX_LABEL_LENGTH as MAX_LABEL_LENGTH
from fastsmtp._wire_py import LineTooLong as LineTooLong

__all__ = [
    "CTRL",
    "DEFAULT_MAX_LINE_LENGTH",
    "EIGHT_BIT",
    "MAX_DOMAIN_LENGTH",
    "MAX_LABEL_LENGTH",
    "LineTooLong",
    "WireReader",
    "classify_command",
    "plain_path",
    "split_command",
]

CTRL: Final[int]
"""Bit of ``classify_command()``: a C0 control character (NUL, bare CR, ...), or DEL."""

EIGHT_BIT: Final[int]
"""Bit of ``classify_command()``: a byte >= 0x80."""

def mapping_pays() -> bool:
    """True if this process maps large bodies' room up front (glibc, 64-bit, no limits)."""

class WireReader:
    """Buffer one connection's input and cut it into command lines or DATA content.

    In command mode, ``next_line()`` yields one line at a time. After ``start_data()``,
    ``read_data()`` consumes message content up to ``CRLF . CRLF``, unstuffing dots and
    counting octets as it goes; whatever follows the marker stays buffered for commands.
    """

    max_line_length: int
    """Longest command line accepted, in octets including its line ending."""

    def __init__(self, max_line_length: int = ...) -> None: ...
    def feed(self, data: bytes) -> None:
        """Append bytes received from the client."""

    def next_line(self) -> bytes | None:
        """Return the next command line without its line ending, or None if incomplete.

        A line ends at LF; one CR before it is removed too. A line that reaches
        ``max_line_length`` octets without ending raises ``LineTooLong`` once, and its
        remainder is dropped as it arrives instead of being buffered. Between
        ``start_data()`` and the end marker the buffer holds message content, so asking
        for a line then raises ``RuntimeError``.
        """

    def buffered(self) -> int:
        """Return how many received octets are waiting to be read."""

    def discard_buffered(self) -> int:
        """Drop every buffered octet (STARTTLS must not run plaintext pipelined after it)."""

    def start_data(self, max_size: int, size_hint: int = 0) -> None:
        """Switch to reading message content, keeping at most ``max_size`` octets of it.

        ``size_hint`` is the size the client declared (RFC 1870 ``SIZE=``), 0 if none: room
        for that much content, up to ``max_size``, is then made once instead of grown.
        """

    def read_data(self) -> bool:
        """Consume buffered DATA content; return True once the end marker was consumed.

        The buffer always starts with ``_CONTEXT`` octets that were already accounted for
        (at first the virtual CRLF), so a marker or ``CRLF .`` that began in an earlier
        chunk is still matched. When no marker is found, everything but the last
        ``_HOLD_BACK`` octets is unstuffed and kept, and those octets wait for more.
        """

    @property
    def in_data(self) -> bool:
        """True between ``start_data()`` and the end marker."""

    @property
    def data_size(self) -> int:
        """Octets of unstuffed content counted so far, including any past the limit."""

    @property
    def data_overflow(self) -> bool:
        """True once the content outgrew ``max_size``; it is then counted, not kept."""

    @property
    def data_bare_line_endings(self) -> bool:
        """True if the content holds a CR or LF that is not part of a CRLF pair."""

    def take_data(self) -> bytes:
        """Return the unstuffed content read so far (empty after an overflow) and forget it."""

def split_command(line: bytes) -> tuple[bytes, bytes]:
    """Split a command line into its upper-cased verb and its argument, spaces trimmed.

    ``b"mail FROM:<a@b>  "`` gives ``(b"MAIL", b"FROM:<a@b>")``. Only spaces separate
    (RFC 5321 §4.1.1); a line with no space is all verb.
    """

def plain_path(argument: bytes, keyword: bytes) -> tuple[str, int] | None:
    """Recognise the everyday MAIL/RCPT argument: ``KEYWORD:<local@domain>`` in plain ASCII.

    ``keyword`` (``bytes``, such as ``b"FROM:"``) is matched in any case. Returns the address
    and the index just past ``>`` when the path is a dot-atom local part, ``@`` and a domain
    of letter-digit-hyphen labels, followed by the end or a space (the parameters). Returns
    None for anything else (quoted local parts, address literals, source routes, ``<>``,
    UTF-8, any flaw): the full grammar in ``fastsmtp._commands`` decides those.
    """

def classify_command(line: bytes) -> int:
    """Return ``CTRL`` and/or ``EIGHT_BIT`` bits for what a command line holds besides text.

    Horizontal tab does not count as a control character.
    """
