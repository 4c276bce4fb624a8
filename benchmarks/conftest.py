"""Fixtures for the micro benchmarks: the twin fixture and realistic input builders.

Run with ``pytest benchmarks/bench_wire.py --benchmark-only``; each benchmark exists once
per twin, ``[c]`` and ``[py]``, in the same group so they print side by side.
"""

from __future__ import annotations

from types import ModuleType

import pytest

from fastsmtp import _wire

MIB = 1024 * 1024
CHUNK = 64 * 1024  # what one data_received() call typically hands over


@pytest.fixture(params=["c", "py"])
def wire(request: pytest.FixtureRequest) -> ModuleType:
    """Yield one twin of the wire module; a missing compiled twin is an error, not a skip."""
    if request.param == "c" and _wire.NO_EXTENSIONS:
        pytest.skip("FASTSMTP_NO_EXTENSIONS is set: the compiled twin is not expected")
    return _wire.load(request.param)


def build_transaction(index: int, recipients: int) -> list[bytes]:
    """Return the command lines of one pipelined transaction, without line endings."""
    lines = [f"MAIL FROM:<sender{index}@example.org> SIZE=20480 BODY=8BITMIME".encode()]
    lines += [f"RCPT TO:<user{index}.{n}@example.net>".encode() for n in range(recipients)]
    lines += [b"DATA"]
    return lines


def build_body(size: int, stuff_every: int) -> tuple[bytes, bytes]:
    """Return (wire form, unstuffed content) of a body of about ``size`` octets.

    Every ``stuff_every``-th line starts with a dot, so the wire form carries it doubled.
    """
    header = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: benchmark\r\n\r\n"
    text = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor\r\n"
    dotted = b".signature line starting with a dot\r\n"
    block = text * (stuff_every - 1) + dotted
    content = header + block * (size // len(block))
    wire_form = header + (text * (stuff_every - 1) + b"." + dotted) * (size // len(block))
    return wire_form + b".\r\n", content


@pytest.fixture(scope="session")
def pipelined_batch() -> tuple[bytes, int]:
    """Return 200 pipelined transactions of 20 recipients as one buffer, and its line count."""
    lines = [b"EHLO client.example.org"]
    for index in range(200):
        lines += build_transaction(index, 20)
        lines += [b"RSET"]
    lines += [b"QUIT"]
    return b"".join(line + b"\r\n" for line in lines), len(lines)


@pytest.fixture(scope="session")
def command_lines() -> list[bytes]:
    """Return the command lines of 200 transactions, as a session would tokenise them."""
    lines = []
    for index in range(200):
        lines += build_transaction(index, 20)
    return lines


@pytest.fixture(scope="session")
def large_body() -> tuple[list[bytes], bytes]:
    """Return a 10 MiB body in 64 KiB chunks (every 20th line dot-stuffed) and its content."""
    wire_form, content = build_body(10 * MIB, stuff_every=20)
    chunks = [wire_form[start : start + CHUNK] for start in range(0, len(wire_form), CHUNK)]
    return chunks, content
