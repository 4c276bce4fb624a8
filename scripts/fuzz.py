"""Coverage-guided fuzzing (atheris) of the wire reader twins and of the sans-IO session.

Two targets, chosen with ``--target``; every other argument goes to libFuzzer as it is:

- ``wire``: random bytes, cut into random chunks, go through ``WireReader`` of both twins
  (``fastsmtp._wire.load("c")`` and ``load("py")``) in a session-like loop: lines, DATA on
  ``DATA``, a buffer discard on ``STARTTLS``, bodies taken mid-way. Both twins must log
  exactly the same results after every call, no exception may escape but the documented
  ones (``LineTooLong`` from ``next_line()``; ``RuntimeError`` for a call in the wrong mode,
  made on purpose at the end), buffers stay bounded, and the lines and messages must not
  change when the same bytes arrive in one piece.
- ``session``: random bytes go into the session core of both twins (``SessionCore`` of
  src/fastsmtp/_session.py with the pure wire twin, its compiled build with the compiled one),
  in random chunks, under a configuration drawn from the input (limits, decisions, TLS, AUTH,
  the bare line endings policy); decision events are accepted or rejected, STARTTLS is
  completed or failed. ``step()`` must never raise, every output line must be a well-formed
  reply, the input kept between steps stays bounded, and both twins must give the same bytes
  and events.

The first 8 bytes of an input choose the configuration and seed the chunking; the rest is
what the client sends. Unless the command line names its own, the dictionary
``fuzz/smtp.dict`` is used, and the corpus is ``$TMPDIR/fastsmtp-fuzz-TARGET`` (where new
inputs are kept) plus the seeds in ``fuzz/seeds/TARGET`` (only read). A failing input is
written by libFuzzer as ``crash-<hash>`` (see ``-artifact_prefix``); passing that file
instead of a corpus runs it once, to reproduce.

    python scripts/fuzz.py --target wire -max_total_time=180
    python scripts/fuzz.py --target session -atheris_runs=200000 /tmp/session-corpus
    python scripts/fuzz.py --target wire crash-1234abcd      # reproduce one input

Fuzz a regular install (``pip install .``): under an editable one, atheris gets no coverage
through its import hook, and libFuzzer keeps a corpus of one empty input (``corp: 1/1b``).
"""

from __future__ import annotations

import argparse
import itertools
import random
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import atheris

with atheris.instrument_imports(include=["fastsmtp"]):
    from fastsmtp import _session, _session_config, _wire, replies
    from fastsmtp.context import Session

ROOT = Path(__file__).resolve().parent.parent
FUZZ_DIR = ROOT / "fuzz"

# The wire driver of the parity tests, imported after the instrumented fastsmtp above.
sys.path.insert(0, str(ROOT / "tests"))
from wire_driver import DATA_HOLD, drive_wire

HEADER = 8  # leading input bytes that choose the configuration and the chunking

TWINS = (_wire.load("c"), _wire.load("py"))


T = TypeVar("T")

REPLY_LINE = re.compile(rb"[2-5][0-9][0-9]([ -][^\r\n]*)?\r\n")


class Header:
    """The configuration bytes at the start of an input, read one choice at a time."""

    def __init__(self, data: bytes) -> None:
        self._bytes = data[:HEADER].ljust(HEADER, b"\0")
        self._next = 0
        self.rng = random.Random(self._bytes)

    def pick(self, choices: tuple[T, ...]) -> T:
        """Take the next header byte as an index into ``choices``."""
        value = self._bytes[self._next % HEADER]
        self._next += 1
        return choices[value % len(choices)]


def cut(stream: bytes, rng: random.Random) -> list[bytes]:
    """Cut ``stream`` whole, byte by byte, or at random points (CRLF.CRLF often split)."""
    how = rng.randrange(4)
    if how == 0 or not stream:
        return [stream]
    if how == 1:
        return [stream[i : i + 1] for i in range(len(stream))]
    points = {rng.randrange(len(stream) + 1) for _ in range(rng.randrange(1, 24))}
    for found in re.finditer(rb"\r\n\.\r\n", stream):
        points.add(found.start() + rng.randrange(6))
    ordered = sorted({0, len(stream), *(min(point, len(stream)) for point in points)})
    return [stream[a:b] for a, b in itertools.pairwise(ordered)]


# The wire target


def fuzz_wire(data: bytes) -> None:
    header = Header(data)
    max_line = header.pick((3, 4, 5, 8, 16, 64, 100, 4096))
    max_size = header.pick((0, 1, 5, 16, 64, 1000, 1 << 20))
    size_hint = header.pick((0, 0, 3, 64, 1 << 30))
    take_every = header.pick((0, 0, 0, 1, 2, 5))
    stream = data[HEADER:]
    chunks = cut(stream, header.rng)

    logs = [drive_wire(w, chunks, max_line, max_size, size_hint, take_every, True) for w in TWINS]
    assert logs[0] == logs[1], "the compiled and the Python twin differ"

    # The lines, errors and messages are the same whatever the chunking.
    whole = drive_wire(TWINS[1], [stream], max_line, max_size, size_hint, 0, False)
    pieces = drive_wire(TWINS[0], chunks, max_line, max_size, size_hint, 0, False)
    assert whole == pieces, "the result depends on how the input was cut"


# The session target

# A listener's answers: accept with the default text or with its own; reject; rarely reject
# and close (a 421 closes too), or few sessions would get far.
ACCEPTS = (None, "Queued as 4F2A", "2.6.0 two\r\nlines")
REJECTS = (replies.TRANSACTION_FAILED, replies.custom_reply(550, "5.1.1 No such user"))
CLOSING = replies.custom_reply(421, "4.3.2 going away")


def session_config(header: Header) -> tuple[_session.SessionConfig, bool, bool]:
    """Draw a configuration, and whether the session starts in TLS and may use STARTTLS."""
    auth: tuple[str, ...] = header.pick(((), ("PLAIN", "LOGIN"), ("LOGIN",)))
    flags = header.pick(tuple(range(256)))
    config = _session.SessionConfig(
        "mx.fuzz.test",
        max_recipients=header.pick((1, 2, 1000)),
        max_message_size=header.pick((1, 64, 2048, 1 << 25)),
        preferred_max_message_size=header.pick((None, 1000)),
        max_line_length=header.pick((16, 64, 512, 4096)),
        decide_mail_from=bool(flags & 1),
        decide_rcpt_to=bool(flags & 2),
        max_errors=header.pick((1, 3, 20)),
        bare_line_endings=header.pick(_session_config.BARE_LINE_ENDINGS),
        require_tls=bool(flags & 4),
        auth_mechanisms=auth,
        allow_plaintext_auth=bool(flags & 8),
        require_auth=bool(flags & 16) and bool(auth),
        max_auth_failures=1 + (flags >> 7),
    )
    return config, bool(flags & 32), bool(flags & 64)


def check_output(out: bytes) -> None:
    """Every line the session writes is a reply line: code, separator, text, CRLF."""
    if not out:
        return
    assert out.endswith(b"\r\n"), out[-80:]
    for line in out.splitlines(keepends=True):
        assert REPLY_LINE.fullmatch(line), line[:120]
        assert len(line) <= 512, len(line)


def drive_session(
    wire: ModuleType,
    config: _session.SessionConfig,
    tls: bool,
    starttls: bool,
    chunks: list[bytes],
    seed: int,
) -> tuple[bytes, list[str], str]:
    """Feed ``chunks`` to a ``SessionCore`` on ``wire``, answering its events by ``seed``."""
    rng = random.Random(seed)
    core = _wire.session_core(wire)(
        config, wire, Session("f1", ("192.0.2.1", 4000), None), tls=tls, starttls=starttls
    )
    output = bytearray(core.greeting())
    events: list[str] = []
    for chunk in chunks:
        core.feed(chunk)
        if rng.random() < 0.02:
            core.stop_when_idle()
        while True:
            event = core.step()
            out = core.take_output()
            check_output(out)
            output += out
            if event is None:
                bounded(core, config)
                break
            if event is _session.CLOSE:
                events.append("CLOSE")
                return bytes(output), events, core.state.name
            if event is _session.START_TLS:
                events.append("START_TLS")
                if rng.random() < 0.8:
                    core.tls_established()
                else:
                    core.close(reason="handshake failed")
                continue
            events.append(describe(event, core))
            answer(core, event, rng)
            assert core.pending is None
    return bytes(output), events, core.state.name


def bounded(core: _session.SessionCore, config: _session.SessionConfig) -> None:
    """What waits in the session's buffer once it asks for more input stays small."""
    if core.state.name == "DATA":
        assert core.buffered() <= DATA_HOLD, core.buffered()
    else:
        assert core.buffered() < config.max_line_length, core.buffered()


def describe(event: object, core: _session.SessionCore) -> str:
    if isinstance(event, _session.MessageReceived):
        limit = core.config.max_message_size
        if core.config.bare_line_endings != "normalize":
            assert len(event.data) <= limit, (len(event.data), limit)
        return f"message {len(event.data)} {event.data[:64]!r} to {core.recipients!r}"
    if isinstance(event, _session.AuthAttempt):
        return f"auth {event.mechanism} {event.username!r} {event.authorization_id!r}"
    if isinstance(event, _session.MailFrom):
        return f"mail {event.address!r}"
    assert isinstance(event, _session.RcptTo), event
    return f"rcpt {event.address!r}"


def answer(core: _session.SessionCore, event: object, rng: random.Random) -> None:
    """Decide ``event`` as a listener would: mostly accept, sometimes reject or close."""
    roll = rng.random()
    if roll < 0.7:
        text = rng.choice(ACCEPTS)
        core.accept(text if isinstance(event, _session.MessageReceived) else None)
    elif roll < 0.94:
        core.reject(rng.choice(REJECTS))
    elif roll < 0.97:
        core.reject(CLOSING)
    else:
        core.reject(replies.TRANSACTION_FAILED, close=True)


def fuzz_session(data: bytes) -> None:
    header = Header(data)
    config, tls, starttls = session_config(header)
    chunks = cut(data[HEADER:], header.rng)
    seed = header.rng.randrange(1 << 30)
    results = [drive_session(w, config, tls, starttls, chunks, seed) for w in TWINS]
    assert results[0] == results[1], "the compiled and the Python twin differ"


TARGETS: dict[str, Callable[[bytes], None]] = {"wire": fuzz_wire, "session": fuzz_session}


def with_defaults(target: str, arguments: list[str]) -> list[str]:
    """Add the dictionary and the corpus unless the command line names its own.

    libFuzzer writes what it finds into the first corpus directory: that is a directory
    under the system's temporary one, never ``fuzz/seeds``, which is only read.
    """
    extra = list(arguments)
    if not any(argument.startswith("-dict=") for argument in extra):
        extra.append(f"-dict={FUZZ_DIR / 'smtp.dict'}")
    if not any(not argument.startswith("-") for argument in extra):
        corpus = Path(tempfile.gettempdir()) / f"fastsmtp-fuzz-{target}"
        corpus.mkdir(exist_ok=True)
        extra += [str(corpus), str(FUZZ_DIR / "seeds" / target)]
    return extra


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Other arguments go to libFuzzer (-max_total_time=S, -runs=N, corpus dirs).",
    )
    parser.add_argument("--target", choices=tuple(TARGETS), required=True)
    args, rest = parser.parse_known_args()
    argv = [sys.argv[0], *with_defaults(args.target, rest)]
    print(f"fuzzing {args.target}: libFuzzer arguments {argv[1:]}", flush=True)
    atheris.Setup(argv, TARGETS[args.target])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
