"""Micro benchmarks of the byte-level hot path, per twin: split, unstuff, tokenise.

Each measured call processes a whole batch and the test asserts on what it returned, so
a fast wrong answer cannot pass.
"""

from __future__ import annotations

import pytest

from fastsmtp._commands import parse_mail, parse_rcpt


@pytest.mark.benchmark(group="split pipelined lines")
def test_split_pipelined_lines(benchmark, wire, pipelined_batch):
    batch, expected_lines = pipelined_batch

    def split() -> int:
        reader = wire.WireReader()
        reader.feed(batch)
        count = 0
        while reader.next_line() is not None:
            count += 1
        return count

    assert benchmark(split) == expected_lines


@pytest.mark.benchmark(group="read 10 MiB body in 64 KiB chunks")
def test_read_large_body(benchmark, wire, large_body):
    chunks, content = large_body

    def read() -> tuple[bool, int, bytes]:
        reader = wire.WireReader()
        reader.start_data(len(content))
        done = False
        for chunk in chunks:
            reader.feed(chunk)
            done = reader.read_data()
        return done, reader.data_size, reader.take_data()

    done, size, body = benchmark(read)
    assert done
    assert size == len(content)
    assert body == content


@pytest.mark.benchmark(group="tokenise commands")
def test_tokenise_commands(benchmark, wire, command_lines):
    split_command = wire.split_command
    classify_command = wire.classify_command

    def tokenise() -> tuple[int, int]:
        recipients = flagged = 0
        for line in command_lines:
            verb, _argument = split_command(line)
            recipients += verb == b"RCPT"
            flagged += classify_command(line) != 0
        return recipients, flagged

    assert benchmark(tokenise) == (200 * 20, 0)


@pytest.mark.benchmark(group="parse MAIL and RCPT paths")
def test_parse_paths(benchmark, wire, command_lines):
    # The whole argument parse as the session runs it, with this twin's fast path.
    plain_path = wire.plain_path
    arguments = [wire.split_command(line) for line in command_lines]
    # Every path here is an everyday one: the fast path must be what is measured.
    assert all(plain_path(argument, b"FROM:") or plain_path(argument, b"TO:")
               for verb, argument in arguments if verb != b"DATA")  # fmt: skip

    def parse() -> tuple[int, int]:
        senders = recipients = 0
        for verb, argument in arguments:
            if verb == b"MAIL":
                senders += parse_mail(argument, plain_path).size == 20480
            elif verb == b"RCPT":
                recipients += parse_rcpt(argument, False, plain_path).endswith("@example.net")
        return senders, recipients

    assert benchmark(parse) == (200, 200 * 20)
