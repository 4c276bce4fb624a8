"""Pure-Python twin of the byte-level hot path: the reference for ``fastsmtp._wire_c``.

One job: turn the bytes a client sends into command lines and message bodies.
It knows nothing of replies, states or listeners, and it never does I/O.

Both twins expose the same names and give identical results for identical input,
however the input is split into chunks; ``tests/test_wire_parity.py`` holds them to it.
"""

from __future__ import annotations

import functools
import io
import re

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

# RFC 5321 §4.5.3.1.4 allows 512 octets per command line; ESMTP parameters and AUTH initial
# responses (RFC 4954 §4) legitimately run longer, so the default is generous but bounded.
DEFAULT_MAX_LINE_LENGTH = 4096

# Bits returned by classify_command().
CTRL = 1  # a C0 control character (NUL, bare CR, ...), or DEL
EIGHT_BIT = 2  # a byte >= 0x80

# The end-of-data marker (RFC 5321 §4.1.1.4) and the dot-stuffed line start (§4.5.2).
_END_MARKER = b"\r\n.\r\n"
_STUFFED = b"\r\n."
_CRLF = b"\r\n"

# Bytes of already-scanned DATA kept ahead of new data, so that a marker or a stuffed dot that
# straddles two chunks is still seen. The marker is 5 bytes: 2 behind and up to 4 ahead suffice.
_CONTEXT = 2
_HOLD_BACK = 4

# Horizontal tab is let through: some clients separate parameters with it.
_CONTROL_BYTES = bytes(range(0x09)) + bytes(range(0x0A, 0x20)) + b"\x7f"
_HIGH_BYTES = bytes(range(0x80, 0x100))

# RFC 1035 §2.3.4 (RFC 5321 §4.5.3.1.2 agrees): the longest domain name and label.
MAX_DOMAIN_LENGTH = 255
MAX_LABEL_LENGTH = 63

# plain_path()'s shape: spaces, "<", a dot-atom of RFC 5322 atext, "@", LDH labels (neither
# starting nor ending with a hyphen), ">", then the end or a space.
_ATOM = rb"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+"
_LABEL = rb"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,%d}[A-Za-z0-9])?" % (MAX_LABEL_LENGTH - 2)
_PLAIN_PATH = rb" *<(%s(?:\.%s)*@(%s(?:\.%s)*))>(?= |\Z)" % (_ATOM, _ATOM, _LABEL, _LABEL)


@functools.lru_cache(maxsize=8)
def _plain_path_pattern(keyword: bytes) -> re.Pattern[bytes]:
    return re.compile(re.escape(keyword) + _PLAIN_PATH, re.IGNORECASE)


class LineTooLong(Exception):
    """A command line grew past the reader's limit; the rest of it is being discarded."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"command line longer than {limit} octets")
        self.limit = limit


class WireReader:
    """Buffer one connection's input and cut it into command lines or DATA content.

    In command mode, ``next_line()`` yields one line at a time. After ``start_data()``,
    ``read_data()`` consumes message content up to ``CRLF . CRLF``, unstuffing dots and
    counting octets as it goes; whatever follows the marker stays buffered for commands.
    """

    def __init__(self, max_line_length: int = DEFAULT_MAX_LINE_LENGTH) -> None:
        if max_line_length < 3:
            raise ValueError(f"max_line_length must be at least 3, got {max_line_length}")
        self.max_line_length = max_line_length
        self._buf = bytearray()
        self._scan_from = 0  # where the search for LF resumes in command mode
        self._discarding = False  # inside the tail of an over-long command line

        self._in_data = False
        self._data_limit = 0
        # BytesIO, not bytearray: getvalue() hands over its buffer without copying it.
        self._body = io.BytesIO()
        self._data_size = 0
        self._data_overflow = False
        self._data_bare_eol = False

    # Command mode

    def feed(self, data: bytes) -> None:
        """Append bytes received from the client."""
        self._buf += data

    def next_line(self) -> bytes | None:
        """Return the next command line without its line ending, or None if incomplete.

        A line ends at LF; one CR before it is removed too. A line that reaches
        ``max_line_length`` octets without ending raises ``LineTooLong`` once, and its
        remainder is dropped as it arrives instead of being buffered. Between
        ``start_data()`` and the end marker the buffer holds message content, so asking
        for a line then raises ``RuntimeError``.
        """
        if self._in_data:
            raise RuntimeError("next_line() called during DATA")
        buf = self._buf
        while self._discarding:
            lf = buf.find(b"\n")
            if lf < 0:
                del buf[:]
                return None
            del buf[: lf + 1]
            self._discarding = False

        lf = buf.find(b"\n", self._scan_from)
        if lf < 0 or lf >= self.max_line_length:
            if len(buf) < self.max_line_length:
                self._scan_from = len(buf)
                return None
            # Over the limit: drop what we hold and skip the rest of the line.
            if 0 <= lf:
                del buf[: lf + 1]
            else:
                del buf[:]
                self._discarding = True
            self._scan_from = 0
            raise LineTooLong(self.max_line_length)

        end = lf - 1 if lf > 0 and buf[lf - 1] == 0x0D else lf
        line = bytes(buf[:end])
        del buf[: lf + 1]
        self._scan_from = 0
        return line

    def buffered(self) -> int:
        """Return how many received octets are waiting to be read."""
        return len(self._buf)

    def discard_buffered(self) -> int:
        """Drop every buffered octet (STARTTLS must not run plaintext pipelined after it)."""
        count = len(self._buf)
        del self._buf[:]
        self._scan_from = 0
        self._discarding = False
        return count

    # DATA mode

    def start_data(self, max_size: int, size_hint: int = 0) -> None:
        """Switch to reading message content, keeping at most ``max_size`` octets of it.

        ``size_hint`` is the size the client declared (RFC 1870 ``SIZE=``), 0 if none: room
        for that much content, up to ``max_size``, is then made once instead of grown.
        """
        if max_size < 0:
            raise ValueError(f"max_size must not be negative, got {max_size}")
        if size_hint < 0:
            raise ValueError(f"size_hint must not be negative, got {size_hint}")
        # BytesIO has no way to make room ahead, so this twin lets the hint go unused.
        self._in_data = True
        self._data_limit = max_size
        # The start of DATA counts as a line start (RFC 5321 §4.1.1.4): a virtual CRLF of
        # context makes an immediate "." line the end marker and a leading dot stuffed.
        self._body = io.BytesIO()
        self._data_size = 0
        self._data_overflow = False
        self._data_bare_eol = False
        self._buf[0:0] = _CRLF
        self._scan_from = 0

    def read_data(self) -> bool:
        """Consume buffered DATA content; return True once the end marker was consumed.

        How the scan works: the buffer always starts with ``_CONTEXT`` octets that were
        already accounted for (at first the virtual CRLF), so a marker or ``CRLF .`` that
        began in an earlier chunk is still matched. When no marker is found, everything but
        the last ``_HOLD_BACK`` octets is unstuffed and kept, and those octets wait for more.
        """
        if not self._in_data:
            raise RuntimeError("read_data() called outside DATA")
        buf = self._buf
        marker = buf.find(_END_MARKER)
        if marker >= 0:
            cut = marker + 2  # the CRLF before the dot belongs to the message
        else:
            cut = len(buf) - _HOLD_BACK
            if cut <= _CONTEXT:
                return False

        self._account(buf, cut)

        if marker >= 0:
            del buf[: marker + len(_END_MARKER)]
            self._in_data = False
            return True
        del buf[: cut - _CONTEXT]
        return False

    def _account(self, buf: bytearray, cut: int) -> None:
        """Unstuff ``buf[_CONTEXT:cut]`` into the body, counting octets and bare CR or LF."""
        # A bare LF is an LF not preceded by CR; a bare CR is a CR not followed by LF. The
        # context byte before and the held-back bytes after the segment decide the edges: a
        # CRLF starting in the context pairs an LF of the segment but none of its CRs, and a
        # CRLF ending in the held-back bytes pairs a CR of the segment but none of its LFs.
        if not self._data_bare_eol:
            lf_paired = buf.count(_CRLF, _CONTEXT - 1, cut)
            cr_paired = lf_paired - (buf[1:3] == _CRLF) + (buf[cut - 1 : cut + 1] == _CRLF)
            self._data_bare_eol = (
                buf.count(b"\n", _CONTEXT, cut) != lf_paired
                or buf.count(b"\r", _CONTEXT, cut) != cr_paired
            )

        if self._data_overflow:
            # Past the limit only the size matters, and "\r\n." cannot overlap itself, so
            # counting the stuffed dots agrees with replace().
            self._data_size += cut - _CONTEXT - buf.count(_STUFFED, 0, cut)
            return

        # Most segments hold no stuffed dot: those go into the body straight from buf. The
        # views are released before returning, as read_data() resizes buf next.
        if buf.find(_STUFFED, 0, cut) < 0:
            self._data_size += cut - _CONTEXT
            if self._data_size <= self._data_limit:
                with memoryview(buf) as view, view[_CONTEXT:cut] as part:
                    self._body.write(part)
        else:
            content = buf[:cut].replace(_STUFFED, _CRLF)
            self._data_size += len(content) - _CONTEXT
            if self._data_size <= self._data_limit:
                with memoryview(content) as view, view[_CONTEXT:] as part:
                    self._body.write(part)
        if self._data_size > self._data_limit:
            self._data_overflow = True
            self._body = io.BytesIO()

    @property
    def in_data(self) -> bool:
        """True between ``start_data()`` and the end marker."""
        return self._in_data

    @property
    def data_size(self) -> int:
        """Octets of unstuffed content counted so far, including any past the limit."""
        return self._data_size

    @property
    def data_overflow(self) -> bool:
        """True once the content outgrew ``max_size``; it is then counted, not kept."""
        return self._data_overflow

    @property
    def data_bare_line_endings(self) -> bool:
        """True if the content holds a CR or LF that is not part of a CRLF pair."""
        return self._data_bare_eol

    def take_data(self) -> bytes:
        """Return the unstuffed content read so far (empty after an overflow) and forget it."""
        # getvalue() trims the buffer in place and shares it, so the content is not copied.
        body = self._body.getvalue()
        self._body = io.BytesIO()
        return body


def split_command(line: bytes) -> tuple[bytes, bytes]:
    """Split a command line into its upper-cased verb and its argument, spaces trimmed.

    ``b"mail FROM:<a@b>  "`` gives ``(b"MAIL", b"FROM:<a@b>")``. Only spaces separate
    (RFC 5321 §4.1.1); a line with no space is all verb.
    """
    line = line.strip(b" ")
    space = line.find(b" ")
    if space < 0:
        return line.upper(), b""
    return line[:space].upper(), line[space + 1 :].lstrip(b" ")


def plain_path(argument: bytes, keyword: bytes) -> tuple[str, int] | None:
    """Recognise the everyday MAIL/RCPT argument: ``KEYWORD:<local@domain>`` in plain ASCII.

    ``keyword`` (``bytes``, such as ``b"FROM:"``) is matched in any case. Returns the address
    and the index just past ``>`` when the path is a dot-atom local part, ``@`` and a domain
    of letter-digit-hyphen labels, followed by the end or a space (the parameters). Returns
    None for anything else (quoted local parts, address literals, source routes, ``<>``,
    UTF-8, any flaw): the full grammar in ``fastsmtp._commands`` decides those.
    """
    if type(keyword) is not bytes:  # as the compiled twin's signature demands
        raise TypeError(f"keyword must be bytes, not {type(keyword).__name__}")
    pattern = _plain_path_pattern(keyword)
    match = pattern.match(argument)
    if match is None or match.end(2) - match.start(2) > MAX_DOMAIN_LENGTH:
        return None
    return match.group(1).decode("ascii"), match.end()


def classify_command(line: bytes) -> int:
    """Return ``CTRL`` and/or ``EIGHT_BIT`` bits for what a command line holds besides text.

    Horizontal tab does not count as a control character.
    """
    flags = 0
    if len(line.translate(None, _CONTROL_BYTES)) != len(line):
        flags |= CTRL
    if len(line.translate(None, _HIGH_BYTES)) != len(line):
        flags |= EIGHT_BIT
    return flags
