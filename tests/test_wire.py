"""Unit tests of the byte-level hot path, run on both twins through the ``wire`` fixture."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from types import ModuleType

import pytest

from fastsmtp import _wire, _wire_py

END = b"\r\n.\r\n"


def drain_lines(reader) -> list[bytes]:
    """Return every complete command line the reader holds."""
    lines = []
    while (line := reader.next_line()) is not None:
        lines.append(line)
    return lines


def drain_events(wire: ModuleType, reader) -> list[bytes | str]:
    """Return the complete lines the reader holds, with "too long" for each LineTooLong."""
    events: list[bytes | str] = []
    while True:
        try:
            line = reader.next_line()
        except wire.LineTooLong:
            events.append("too long")
            continue
        if line is None:
            return events
        events.append(line)


def read_message(wire: ModuleType, data: bytes, max_size: int = 10_000, chunk: int = 0):
    """Feed ``data`` to a reader in DATA mode, ``chunk`` octets at a time (0: all at once).

    Returns whether the end marker was consumed, and the reader; octets fed after the
    marker stay buffered.
    """
    reader = wire.WireReader()
    reader.start_data(max_size)
    step = chunk or max(len(data), 1)
    done = False
    for start in range(0, len(data), step):
        reader.feed(data[start : start + step])
        if reader.in_data:
            done = reader.read_data()
    return done, reader


# Command lines


def test_lines_end_at_crlf_or_lf(wire):
    reader = wire.WireReader()
    reader.feed(b"EHLO a.example\r\nNOOP\nQUIT\r\n")
    assert drain_lines(reader) == [b"EHLO a.example", b"NOOP", b"QUIT"]
    assert reader.buffered() == 0


def test_only_one_cr_before_lf_is_removed(wire):
    reader = wire.WireReader()
    reader.feed(b"NOOP\r\r\nA\rB\r\n\r\n")
    assert drain_lines(reader) == [b"NOOP\r", b"A\rB", b""]


def test_incomplete_line_waits_for_more(wire):
    reader = wire.WireReader()
    reader.feed(b"MAIL FROM:<a@")
    assert reader.next_line() is None
    assert reader.buffered() == 13
    reader.feed(b"b>\r")
    assert reader.next_line() is None
    reader.feed(b"\nRCPT")
    assert reader.next_line() == b"MAIL FROM:<a@b>"
    assert reader.next_line() is None
    assert reader.buffered() == 4


def test_line_fed_one_byte_at_a_time(wire):
    reader = wire.WireReader()
    got = []
    for octet in b"HELO x\r\nNOOP\r\n":
        reader.feed(bytes([octet]))
        got.extend(drain_lines(reader))
    assert got == [b"HELO x", b"NOOP"]


def test_feed_accepts_bytes_like_objects(wire):
    reader = wire.WireReader()
    reader.feed(bytearray(b"NO"))
    reader.feed(memoryview(b"OP\r\n"))
    assert reader.next_line() == b"NOOP"


@pytest.mark.parametrize(
    ("line", "accepted"),
    [
        (b"a" * 9 + b"\n", True),  # 10 octets with the LF: at the limit
        (b"a" * 8 + b"\r\n", True),
        (b"a" * 9 + b"\r\n", False),  # 11 octets
        (b"a" * 10 + b"\n", False),
        (b"a" * 30 + b"\r\n", False),
    ],
)
def test_line_limit_counts_the_line_ending(wire, line, accepted):
    data = line + b"NOOP\r\n"
    for chunk in (len(data), 1):
        reader = wire.WireReader(10)
        events = []
        for start in range(0, len(data), chunk):
            reader.feed(data[start : start + chunk])
            events.extend(drain_events(wire, reader))
        if accepted:
            assert events == [line.rstrip(b"\r\n"), b"NOOP"]
        else:
            assert events == ["too long", b"NOOP"]


def test_too_long_line_raises_once_and_its_tail_is_discarded(wire):
    reader = wire.WireReader(16)
    reader.feed(b"X" * 20)
    with pytest.raises(wire.LineTooLong) as caught:
        reader.next_line()
    assert caught.value.limit == 16
    assert str(caught.value) == "command line longer than 16 octets"
    assert reader.buffered() == 0

    # The rest of the line is dropped as it arrives, without a second error.
    reader.feed(b"Y" * 100)
    assert reader.next_line() is None
    assert reader.buffered() == 0
    reader.feed(b"Z\r\nRSET\r\n")
    assert drain_lines(reader) == [b"RSET"]


def test_too_long_line_with_its_end_buffered(wire):
    reader = wire.WireReader(8)
    reader.feed(b"0123456789\r\nQUIT\r\n")
    with pytest.raises(wire.LineTooLong):
        reader.next_line()
    assert reader.buffered() == 6
    assert drain_lines(reader) == [b"QUIT"]


def test_line_too_long_is_the_python_twins_class(wire):
    assert wire.LineTooLong is _wire_py.LineTooLong
    assert issubclass(wire.LineTooLong, Exception)


def test_default_and_minimum_line_length(wire):
    assert wire.WireReader().max_line_length == wire.DEFAULT_MAX_LINE_LENGTH == 4096
    assert wire.WireReader(3).max_line_length == 3
    with pytest.raises(ValueError, match="at least 3, got 2"):
        wire.WireReader(2)


def test_discard_buffered(wire):
    reader = wire.WireReader()
    reader.feed(b"STARTTLS\r\nEHLO pipelined\r\n")
    assert reader.next_line() == b"STARTTLS"
    assert reader.discard_buffered() == 16
    assert reader.buffered() == 0
    assert reader.next_line() is None


def test_discard_buffered_ends_skipping_a_long_line(wire):
    reader = wire.WireReader(8)
    reader.feed(b"STARTTLS\r")
    with pytest.raises(wire.LineTooLong):
        reader.next_line()
    reader.feed(b"junk")
    assert reader.discard_buffered() == 4
    reader.feed(b"EHLO x\r\n")
    assert reader.next_line() == b"EHLO x"


def test_modes_guard_each_other(wire):
    reader = wire.WireReader()
    with pytest.raises(RuntimeError, match="outside DATA"):
        reader.read_data()
    reader.start_data(100)
    reader.feed(b"body\r\n")
    with pytest.raises(RuntimeError, match="during DATA"):
        reader.next_line()
    with pytest.raises(ValueError, match="must not be negative, got -1"):
        reader.start_data(-1)


# DATA: end marker


def test_simple_message(wire):
    message = b"Subject: hi\r\n\r\nhello\r\n"
    done, reader = read_message(wire, message + END[2:])
    assert done
    assert not reader.in_data
    assert reader.take_data() == message
    assert reader.data_size == len(message)
    assert not reader.data_overflow
    assert not reader.data_bare_line_endings


def test_empty_message(wire):
    done, reader = read_message(wire, b".\r\n")
    assert done
    assert reader.take_data() == b""
    assert reader.data_size == 0


@pytest.mark.parametrize("chunk", [0, 1, 2, 3, 5, 7])
def test_marker_found_however_split(wire, chunk):
    done, reader = read_message(wire, b"line one\r\nline two\r\n.\r\n", chunk=chunk)
    assert done
    assert reader.take_data() == b"line one\r\nline two\r\n"


def test_marker_split_inside_across_feeds(wire):
    for split in range(1, len(END)):
        reader = wire.WireReader()
        reader.start_data(100)
        reader.feed(b"abc" + END[:split])
        assert not reader.read_data()
        assert reader.in_data
        reader.feed(END[split:])
        assert reader.read_data()
        assert reader.take_data() == b"abc\r\n"


# Every near miss of CRLF "." CRLF is content: (raw sequence, what it becomes, bare CR/LF).
NEAR_MISSES = [
    (b"\n.\n", b"\n.\n", True),
    (b"\r.\r", b"\r.\r", True),
    (b"\n.\r\n", b"\n.\r\n", True),
    (b"\r.\r\n", b"\r.\r\n", True),
    (b"\r\n.\n", b"\r\n\n", True),  # stuffed dot removed, then a bare LF
    (b"\r\n.\r", b"\r\n\r", True),
    (b"\n.\r", b"\n.\r", True),
    (b"\r.\n", b"\r.\n", True),
    (b"\r\r\n.\n\n", b"\r\r\n\n\n", True),
    (b"\n\r\n.\r\r", b"\n\r\n\r\r", True),
    (b"\r\n\x00.\r\n", b"\r\n\x00.\r\n", False),
    (b"\r\n.\x00\r\n", b"\r\n\x00\r\n", False),
    (b"\r\n\x00\r\n", b"\r\n\x00\r\n", False),
    (b"\r\n. \r\n", b"\r\n \r\n", False),
    (b"\r\n..\r\n", b"\r\n.\r\n", False),
]


@pytest.mark.parametrize(("raw", "content", "bare"), NEAR_MISSES)
@pytest.mark.parametrize("chunk", [0, 1])
def test_malformed_terminators_are_content(wire, raw, content, bare, chunk):
    data = b"a" + raw + b"b"
    done, reader = read_message(wire, data, chunk=chunk)
    assert not done
    assert reader.in_data
    reader.feed(END)
    assert reader.read_data()
    assert reader.take_data() == b"a" + content + b"b\r\n"
    assert reader.data_bare_line_endings is bare


def test_lone_dot_line_at_start_after_bare_lf_is_content(wire):
    done, reader = read_message(wire, b"\n.\n.\r\n")
    assert not done  # the virtual CRLF before DATA is followed by LF, not by "."
    reader.feed(b".\r\n")
    assert reader.read_data()
    assert reader.take_data() == b"\n.\n.\r\n"


# DATA: dot-unstuffing and accounting


def test_dot_unstuffing(wire):
    raw = b"..leading\r\n...\r\nmid.dle\r\n..\r\n"
    done, reader = read_message(wire, raw + b".\r\n")
    assert done
    assert reader.take_data() == b".leading\r\n..\r\nmid.dle\r\n.\r\n"
    assert reader.data_size == len(raw) - 3


def test_first_line_is_stuffed_too(wire):
    done, reader = read_message(wire, b".hidden\r\n.\r\n")
    assert done
    assert reader.take_data() == b"hidden\r\n"


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 6])
def test_stuffed_dot_across_chunks(wire, chunk):
    done, reader = read_message(wire, b"a\r\n..b\r\n.c\r\n.\r\n", chunk=chunk)
    assert done
    assert reader.take_data() == b"a\r\n.b\r\nc\r\n"
    assert reader.data_size == 10


def test_overflow_counts_but_drops(wire):
    body = b"0123456789\r\n" * 3
    done, reader = read_message(wire, body + b".\r\nQUIT\r\n", max_size=20, chunk=5)
    assert done
    assert reader.data_overflow
    assert reader.data_size == len(body)
    assert reader.take_data() == b""
    assert drain_lines(reader) == [b"QUIT"]


def test_size_exactly_at_limit_is_kept(wire):
    body = b"x" * 18 + b"\r\n"
    done, reader = read_message(wire, body + b".\r\n", max_size=20)
    assert done
    assert not reader.data_overflow
    assert reader.take_data() == body


def test_limit_applies_to_unstuffed_size(wire):
    done, reader = read_message(wire, b"..\r\n.\r\n", max_size=3)
    assert done
    assert reader.data_size == 3
    assert not reader.data_overflow
    assert reader.take_data() == b".\r\n"


def test_zero_limit(wire):
    done, reader = read_message(wire, b".\r\n", max_size=0)
    assert done and not reader.data_overflow
    done, reader = read_message(wire, b"a\r\n.\r\n", max_size=0)
    assert done and reader.data_overflow and reader.data_size == 3


@pytest.mark.parametrize(
    ("chunks", "bare"),
    [
        ([b"a\r\nb\r\n.\r\n"], False),
        ([b"a\nb\r\n.\r\n"], True),
        ([b"a\rb\r\n.\r\n"], True),
        ([b"\nstarts with LF\r\n.\r\n"], True),
        ([b"ends with CR\r\r\n.\r\n"], True),
        ([b"a\r", b"\nb\r\n.\r\n"], False),
        ([b"aaaaaaa\r", b"\n", b"b\r\n.\r\n"], False),
        ([b"aaaaaaa\r", b"x\r\n.\r\n"], True),
        ([b"aaaaaaa", b"\nx\r\n.\r\n"], True),
    ],
)
def test_bare_line_endings_flag(wire, chunks, bare):
    reader = wire.WireReader()
    reader.start_data(1000)
    for chunk in chunks:
        reader.feed(chunk)
        reader.read_data()
    assert not reader.in_data
    assert reader.data_bare_line_endings is bare


def test_pipelined_commands_before_and_after_the_body(wire):
    reader = wire.WireReader()
    reader.feed(b"RCPT TO:<a@b>\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\nQUIT\r\nNO")
    assert reader.next_line() == b"RCPT TO:<a@b>"
    assert reader.next_line() == b"DATA"
    reader.start_data(1000)
    assert reader.in_data
    assert reader.read_data()
    assert reader.take_data() == b"Subject: x\r\n\r\nbody\r\n"
    assert reader.buffered() == len(b"QUIT\r\nNO")
    assert reader.next_line() == b"QUIT"
    assert reader.next_line() is None


def test_take_data_streams_the_body(wire):
    reader = wire.WireReader()
    reader.start_data(1000)
    pieces = []
    for chunk in (b"first line\r\n..sec", b"ond line\r\nthird", b"\r\n.\r\n"):
        reader.feed(chunk)
        done = reader.read_data()
        pieces.append(reader.take_data())
    assert done
    assert b"".join(pieces) == b"first line\r\n.second line\r\nthird\r\n"
    assert reader.take_data() == b""
    assert isinstance(pieces[0], bytes)


def test_next_message_starts_clean(wire):
    reader = wire.WireReader()
    reader.start_data(4)
    reader.feed(b"a\nlong body\r\n.\r\n")
    assert reader.read_data()
    assert reader.data_overflow and reader.data_bare_line_endings

    reader.start_data(100)
    reader.feed(b"ok\r\n.\r\n")
    assert reader.read_data()
    assert (reader.data_size, reader.data_overflow, reader.data_bare_line_endings) == (
        4,
        False,
        False,
    )
    assert reader.take_data() == b"ok\r\n"


def test_large_body_in_chunks(wire):
    line = b"The quick brown fox jumps over the lazy dog. 0123456789 abcdefghij\r\n"
    stuffed = b"..a line that started with a dot\r\n"
    raw = (line * 50 + stuffed) * 300
    expected = (line * 50 + stuffed[1:]) * 300
    done, reader = read_message(wire, raw + b".\r\n", max_size=len(expected), chunk=65536)
    assert done
    assert reader.data_size == len(expected)
    assert reader.take_data() == expected


@pytest.mark.parametrize("declared", [False, True])
def test_multi_mib_bodies_one_after_another(wire, declared):
    # A body whose room reaches 1 MiB moves into mapped room in the compiled twin: content
    # before and after the move, past the end of that room, a declared size, an overflow
    # after the move and each next message on the same reader all come out right.
    line = b"0123456789abcdefghijklmnopqrstuvwxyz.,;:!?0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n"
    reader = wire.WireReader()

    def send(raw: bytes, limit: int, hint: int) -> bool:
        reader.start_data(limit, hint)
        for start in range(0, len(raw), 65_521):
            reader.feed(raw[start : start + 65_521])
            assert not reader.read_data()
        reader.feed(END[2:])
        assert reader.read_data()
        return reader.data_overflow

    for copies, limit in ((40_000, 8 << 20), (14_000, 8 << 20), (500_000, 64 << 20)):
        raw = b"..dot\r\n" + line * copies
        expected = raw[1:]
        assert not send(raw, limit, len(expected) if declared else 0)
        assert reader.take_data() == expected

    # Past the limit after the move: the rest is counted, none of it kept.
    raw = line * 40_000
    assert send(raw, 2 << 20, len(raw) if declared else 0)
    assert (reader.data_size, reader.take_data()) == (len(raw), b"")

    assert not send(b"small\r\n", 1000, 0)
    assert reader.take_data() == b"small\r\n"


def run_python(code: str, *options: str, **environment: str) -> str:
    """Run ``code`` in a fresh interpreter; return what it printed, or fail with its stderr."""
    done = subprocess.run(
        [sys.executable, *options, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **environment},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def needs_compiled_twin() -> None:
    if _wire.NO_EXTENSIONS:
        pytest.skip("FASTSMTP_NO_EXTENSIONS is set: the compiled twin is not expected")


# Prints what the compiled twin decides, after setting the soft limit named in LIMIT.
_MAPPING_PAYS = """
import os, resource
if os.environ.get("LIMIT"):
    limit = getattr(resource, os.environ["LIMIT"])
    hard = resource.getrlimit(limit)[1]
    resource.setrlimit(limit, (1 << 40 if hard == resource.RLIM_INFINITY else hard, hard))
from fastsmtp import _wire
print(_wire.load("c").mapping_pays())
"""

# The environment of a plain interpreter: no debug or foreign allocator.
_PLAIN = {"PYTHONMALLOC": "", "LD_PRELOAD": ""}


@functools.cache
def maps_when_plain() -> bool:
    """Whether a plain interpreter on this machine maps large bodies up front."""
    return run_python(_MAPPING_PAYS, **_PLAIN) == "True"


def needs_mapping_when_plain() -> None:
    needs_compiled_twin()
    if sys.platform != "linux":
        pytest.skip("mapping up front is for Linux with glibc only")
    if not maps_when_plain():
        pytest.skip("this machine does not map bodies up front (limits, strict overcommit)")


@pytest.mark.parametrize(
    ("options", "environment", "named"),
    [
        (["-X", "dev"], {}, {}),
        ([], {"PYTHONMALLOC": "debug"}, {}),
        ([], {"PYTHONMALLOC": "malloc_debug"}, {}),
        ([], {"LIMIT": "RLIMIT_AS"}, {}),
        ([], {"LIMIT": "RLIMIT_DATA"}, {}),
        # Only named, not in force: Python 3.11 knows no mimalloc, and this machine may
        # have no jemalloc. The check reads the names.
        ([], {}, {"PYTHONMALLOC": "mimalloc"}),
        ([], {}, {"LD_PRELOAD": "libjemalloc.so.2"}),
    ],
)
def test_no_mapped_room_where_it_would_cost_memory(options, environment, named):
    # The debug allocator writes every octet of a block; another malloc may copy where glibc
    # moves pages; a finite address-space or data limit counts the whole room. Each turns
    # the mapping off, where a plain interpreter on the same machine has it on.
    needs_mapping_when_plain()
    code = f"import os\nos.environ.update({named!r})\n{_MAPPING_PAYS}"
    assert run_python(code, *options, **{**_PLAIN, **environment}) == "False"


def test_mapped_room_on_a_plain_64_bit_glibc_linux():
    needs_compiled_twin()
    if not (sys.platform == "linux" and platform.libc_ver()[0] == "glibc"):
        pytest.skip("mapping up front is for glibc only")
    if sys.maxsize < 2**32 or sys.flags.dev_mode or hasattr(sys, "gettotalrefcount"):
        pytest.skip("a 32-bit or debug interpreter runs these tests")
    with open("/proc/sys/vm/overcommit_memory", "rb") as setting:
        if setting.read().strip() == b"2":
            pytest.skip("this machine commits memory strictly")
    resource = pytest.importorskip("resource")
    for limit in (resource.RLIMIT_AS, resource.RLIMIT_DATA):
        if resource.getrlimit(limit)[0] != resource.RLIM_INFINITY:
            pytest.skip("these tests run under an address-space or data limit")
    assert maps_when_plain()


# A limit set after import leaves the module decided to map: the room is refused
# (MemoryError), and the body grows as content comes, as it does without the move.
_NO_ROOM_FOR_MAPPING = """
import resource
from fastsmtp import _wire

wire = _wire.load("c")
if not wire.mapping_pays():
    raise SystemExit(print("not mapped"))
with open("/proc/self/status") as status:
    size = next(int(line.split()[1]) for line in status if line.startswith("VmSize"))
headroom = 24 * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (size * 1024 + headroom, resource.RLIM_INFINITY))
try:
    bytearray(33 * 1024 * 1024)
except MemoryError:
    pass
else:
    raise SystemExit("the limit leaves room for a mapping: the test would prove nothing")
body = b"x" * 78 + b"\\r\\n"
reader = wire.WireReader()
reader.start_data(4 * 1024 * 1024)
for _ in range(2 * 1024 * 1024 // len(body)):
    reader.feed(body)
    assert not reader.read_data()
reader.feed(b".\\r\\n")
assert reader.read_data()
assert reader.take_data() == body * (2 * 1024 * 1024 // len(body))
print("whole")
"""


def test_body_without_room_for_a_mapping_grows_as_before():
    needs_mapping_when_plain()
    assert run_python(_NO_ROOM_FOR_MAPPING, **_PLAIN) == "whole"


# Command tokenising


@pytest.mark.parametrize(
    ("line", "verb", "argument"),
    [
        (b"mail FROM:<a@b>  ", b"MAIL", b"FROM:<a@b>"),
        (b"QUIT", b"QUIT", b""),
        (b"  rcpt   TO:<x@y> NOTIFY=NEVER ", b"RCPT", b"TO:<x@y> NOTIFY=NEVER"),
        (b"AUTH PLAIN  abc", b"AUTH", b"PLAIN  abc"),
        (b"", b"", b""),
        (b"   ", b"", b""),
        (b"MAIL\tFROM:<>", b"MAIL\tFROM:<>", b""),
        (b"\xe9hlo d\xe9", b"\xe9HLO", b"d\xe9"),
        (b"ehlo ", b"EHLO", b""),
        (b"x-Verb_1 a", b"X-VERB_1", b"a"),
    ],
)
def test_split_command(wire, line, verb, argument):
    result = wire.split_command(line)
    assert result == (verb, argument)
    assert all(type(part) is bytes for part in result)


@pytest.mark.parametrize(
    ("line", "flags"),
    [
        (b"MAIL FROM:<a@b> SIZE=100", 0),
        (b"", 0),
        (b"a\tb ~", 0),
        (b"a\x00b", "CTRL"),
        (b"a\rb", "CTRL"),
        (b"\x1f", "CTRL"),
        (b"\x7f", "CTRL"),
        (b"caf\xc3\xa9", "EIGHT_BIT"),
        (b"\x80", "EIGHT_BIT"),
        (b"\x01\xff", "BOTH"),
    ],
)
def test_classify_command(wire, line, flags):
    expected = {0: 0, "CTRL": wire.CTRL, "EIGHT_BIT": wire.EIGHT_BIT}.get(
        flags, wire.CTRL | wire.EIGHT_BIT
    )
    assert wire.classify_command(line) == expected
    assert wire.classify_command(bytearray(line)) == expected


def test_classify_every_octet(wire):
    for octet in range(256):
        flags = wire.classify_command(bytes([octet]))
        assert bool(flags & wire.CTRL) == (octet < 0x20 and octet != 0x09 or octet == 0x7F)
        assert bool(flags & wire.EIGHT_BIT) == (octet >= 0x80)
