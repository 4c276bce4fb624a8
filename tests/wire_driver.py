"""One driver of the wire reader twins, shared by the parity tests and the fuzzer.

``drive_wire`` runs chunks of client input through one twin's ``WireReader`` the way a session
would (lines, DATA on ``DATA``, a buffer discard on ``STARTTLS``, bodies taken mid-way) and
logs everything observable, asserting the bounds both twins promise on the way.
``tests/test_wire_parity.py`` compares the logs of the twins; ``scripts/fuzz.py`` imports this
module too, so the fuzzer and the tests hold the twins to the same rules.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from fastsmtp import _wire_py

__all__ = ["DATA_HOLD", "drive_wire", "misuse"]

# What DATA may leave buffered once read_data() asks for more: the scanned context and the
# held-back tail, in both twins (see _wire_py.WireReader.read_data).
DATA_HOLD = _wire_py._CONTEXT + _wire_py._HOLD_BACK


def drive_wire(
    wire: ModuleType,
    chunks: list[bytes],
    max_line: int,
    max_size: int,
    size_hint: int,
    take_every: int,
    detail: bool,
) -> list[tuple[object, ...]]:
    """Run ``chunks`` through one twin's reader and log everything observable.

    With ``detail`` the counters are logged after every call, STARTTLS discards the buffer
    and bodies may be taken mid-way (``take_every``); without it only the lines, errors and
    messages are logged, which must not depend on the chunking.
    """
    reader = wire.WireReader(max_line)
    log: list[tuple[object, ...]] = []
    reads = 0
    for chunk in chunks:
        reader.feed(chunk)
        if detail:
            log.append(("fed", reader.buffered()))
        while True:
            if reader.in_data:
                done = reader.read_data()
                reads += 1
                if detail:
                    log.append(
                        (
                            "read",
                            done,
                            reader.data_size,
                            reader.data_overflow,
                            reader.data_bare_line_endings,
                            reader.buffered(),
                            reader.in_data,
                        )
                    )
                if detail and take_every and reads % take_every == 0:
                    part = reader.take_data()
                    assert len(part) <= max_size
                    log.append(("part", part))
                if not done:
                    # Bounded memory: content is consumed as it comes, whatever its lines.
                    assert reader.buffered() <= DATA_HOLD, reader.buffered()
                    break
                body = reader.take_data()
                over = reader.data_overflow
                size = reader.data_size
                assert len(body) <= max_size, (len(body), max_size)
                assert not over or body == b"", "an overflowed message keeps no content"
                assert over == (size > max_size), (over, size, max_size)
                log.append(("message", body, size, over, reader.data_bare_line_endings))
                continue
            try:
                line = reader.next_line()
            except wire.LineTooLong as error:
                log.append(("too long", error.limit, str(error)))
                continue
            if line is None:
                # An unfinished command line never holds more than the limit.
                assert reader.buffered() < max_line, (reader.buffered(), max_line)
                break
            assert len(line) < max_line and b"\n" not in line
            verb, argument = wire.split_command(line)
            log.append(("line", line, verb, argument, wire.classify_command(line)))
            if verb == b"DATA":
                reader.start_data(max_size, size_hint)
            elif verb == b"STARTTLS" and detail:
                log.append(("discarded", reader.discard_buffered()))
    if detail:
        log.append(("misuse", misuse(reader)))
    return log


def misuse(reader: Any) -> str:
    """Call the method that the current mode forbids; it must raise ``RuntimeError``."""
    try:
        if reader.in_data:
            reader.next_line()
        else:
            reader.read_data()
    except RuntimeError as error:
        return str(error)
    raise AssertionError("a call in the wrong mode did not raise RuntimeError")
