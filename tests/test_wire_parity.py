"""Property tests: both twins give identical results, and neither depends on chunking.

The invariant, as in a fuzz harness: any byte string, cut into any chunks, yields lines,
``LineTooLong`` and message bodies, never another exception; the compiled and the Python
twin yield exactly the same ones, down to ``buffered()`` and the DATA counters after every
call; and the lines, errors and messages do not change with the chunking.
"""

from __future__ import annotations

import itertools
import re
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wire_driver import drive_wire

from fastsmtp import _wire

END = b"\r\n.\r\n"

pytestmark = pytest.mark.skipif(
    _wire.NO_EXTENSIONS, reason="FASTSMTP_NO_EXTENSIONS is set: no compiled twin to compare"
)


@pytest.fixture(scope="module")
def c() -> ModuleType:
    """Return the compiled twin; its absence is an error here."""
    return _wire.load("c")


@pytest.fixture(scope="module")
def py() -> ModuleType:
    """Return the pure-Python twin."""
    return _wire.load("py")


# Inputs: pieces that make near misses of every delimiter likely, plus arbitrary bytes.
TOKENS = [
    b"\r",
    b"\n",
    b".",
    b"..",
    b"\r\n",
    b"\r\n.",
    b".\r\n",
    END,
    b"\x00",
    b" ",
    b"\t",
    b"\x80",
    b"a",
    b"mail FROM:<a@b>",
    b"DATA\r\n",
    b"data \r\n",
    b"NOOP\r\n",
]
pieces = st.one_of(st.sampled_from(TOKENS), st.binary(max_size=12))
streams = st.lists(pieces, max_size=40).map(b"".join)


@st.composite
def chunked(draw, data: bytes) -> list[bytes]:
    """Cut ``data`` whole, byte by byte, or at random points (often inside CRLF.CRLF)."""
    how = draw(st.sampled_from(["whole", "bytes", "random"]))
    if how == "whole":
        return [data]
    if how == "bytes":
        return [data[i : i + 1] for i in range(len(data))]
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=12))
    cuts += [m.start() + draw(st.integers(0, 5)) for m in re.finditer(re.escape(END), data)]
    points = sorted({0, len(data), *(min(cut, len(data)) for cut in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def drive(
    wire: ModuleType,
    chunks: list[bytes],
    max_line: int,
    max_size: int,
    detail: bool = True,
    take_every: int = 0,
) -> list[tuple[object, ...]]:
    """Run a session-like loop over ``chunks`` and log everything observable.

    See ``wire_driver.drive_wire``, which the fuzzer shares; no SIZE= hint here.
    """
    return drive_wire(wire, chunks, max_line, max_size, 0, take_every, detail)


def oracle(stream: bytes, max_size: int) -> tuple | None:
    """Say what DATA content ``stream`` (bytes after the DATA line) must give, by the rules.

    Returns None when it holds no end marker, else (body, size, overflow, bare, leftover).
    """
    raw = b"\r\n" + stream  # the start of DATA counts as after CRLF
    marker = raw.find(END)
    if marker < 0:
        return None
    content = re.sub(rb"(?<=\r\n)\.", b"", raw[: marker + 2])[2:]
    bare = re.search(rb"\r(?!\n)|(?<!\r)\n", content) is not None
    overflow = len(content) > max_size
    body = b"" if overflow else content
    return body, len(content), overflow, bare, raw[marker + len(END) :]


def test_shared_definitions_agree(c, py):
    assert (c.CTRL, c.EIGHT_BIT) == (py.CTRL, py.EIGHT_BIT)
    assert c.DEFAULT_MAX_LINE_LENGTH == py.DEFAULT_MAX_LINE_LENGTH
    assert c.LineTooLong is py.LineTooLong


@settings(max_examples=400, deadline=None)
@given(
    data=st.data(),
    stream=streams,
    max_line=st.integers(3, 40),
    max_size=st.integers(0, 60),
    take_every=st.integers(0, 3),
)
def test_twins_agree_on_every_call(c, py, data, stream, max_line, max_size, take_every):
    chunks = data.draw(chunked(stream))
    expected = drive(py, chunks, max_line, max_size, take_every=take_every)
    assert drive(c, chunks, max_line, max_size, take_every=take_every) == expected


@settings(max_examples=300, deadline=None)
@given(data=st.data(), stream=streams, max_line=st.integers(3, 40), max_size=st.integers(0, 60))
def test_chunking_changes_nothing(c, py, data, stream, max_line, max_size):
    whole = drive(py, [stream], max_line, max_size, detail=False)
    chunks = data.draw(chunked(stream))
    bytewise = [stream[i : i + 1] for i in range(len(stream))]
    for wire in (c, py):
        assert drive(wire, chunks, max_line, max_size, detail=False) == whole
        assert drive(wire, bytewise, max_line, max_size, detail=False) == whole


@settings(max_examples=400, deadline=None)
@given(data=st.data(), stream=streams, max_size=st.integers(0, 80))
def test_data_follows_the_rules(c, py, data, stream, max_size):
    ended = oracle(stream, max_size)
    chunks = data.draw(chunked(stream))
    for wire in (c, py):
        reader = wire.WireReader()
        reader.start_data(max_size)
        done = False
        for chunk in chunks:
            reader.feed(chunk)
            if reader.in_data:
                done = reader.read_data()
        expected = ended
        if expected is None:
            # No marker yet: nothing ends, and a marker fed later ends it by the same rules.
            assert not done and reader.in_data
            reader.feed(END)
            done = reader.read_data()
            expected = oracle(stream + END, max_size)
        body, size, overflow, bare, leftover = expected
        assert done and not reader.in_data
        got = (reader.take_data(), reader.data_size, reader.data_overflow)
        assert got == (body, size, overflow)
        assert reader.data_bare_line_endings is bare
        assert reader.buffered() == len(leftover)


@settings(max_examples=300, deadline=None)
@given(garbage=st.binary(max_size=3000), data=st.data(), max_line=st.integers(3, 200))
def test_twins_agree_on_garbage(c, py, garbage, data, max_line):
    chunks = data.draw(chunked(garbage))
    assert drive(c, chunks, max_line, 500) == drive(py, chunks, max_line, 500)


@settings(max_examples=500, deadline=None)
@given(line=st.one_of(st.binary(max_size=60), st.lists(pieces, max_size=8).map(b"".join)))
def test_tokenisers_agree(c, py, line):
    assert c.split_command(line) == py.split_command(line)
    assert c.classify_command(line) == py.classify_command(line)


@settings(max_examples=200, deadline=None)
@given(stream=streams)
def test_each_splitter_feeds_the_other_tokeniser(c, py, stream):
    # Cross-check in both directions: lines cut by one twin, tokenised by the other.
    for cutter, tokeniser in ((c, py), (py, c)):
        reader = cutter.WireReader(64)
        reader.feed(stream)
        while True:
            try:
                line = reader.next_line()
            except cutter.LineTooLong:
                continue
            if line is None:
                break
            assert tokeniser.split_command(line) == cutter.split_command(line)
            assert tokeniser.classify_command(line) == cutter.classify_command(line)


# MAIL/RCPT arguments: addresses near the fast path's limits, and arbitrary bytes.
path_pieces = st.sampled_from(
    [b"FROM:", b"from:", b"TO:", b" ", b"<", b">", b"@", b".", b"-", b"a", b"+", b'"', b"[",
     b"\x80", b"x" * 63, b"x" * 64, b"SIZE=1"]
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(
    argument=st.one_of(st.binary(max_size=60), st.lists(path_pieces, max_size=12).map(b"".join))
)
def test_plain_path_agrees(c, py, argument):
    for keyword in (b"FROM:", b"TO:", b"from:", b"To:"):
        assert c.plain_path(argument, keyword) == py.plain_path(argument, keyword)


class Keyword(bytes):
    pass


@pytest.mark.parametrize("keyword", [None, "FROM:", memoryview(b"FROM:"), Keyword(b"FROM:")])
def test_plain_path_takes_only_a_bytes_keyword(c, py, keyword):
    for twin in (c, py):
        with pytest.raises(TypeError):
            twin.plain_path(b"FROM:<a@b>", keyword)
