"""A small SMTP load client on asyncio: the same dialogue as Postfix's smtp-source.

Each session connects to 127.0.0.1, reads the greeting, says EHLO, then sends messages with
MAIL, RCPT, DATA and the body, and ends with QUIT. With ``--reuse`` a session keeps its
connection for the next message (smtp-source ``-d``); without, every message has a connection
of its own. Every reply is checked against the code it must carry; the first wrong one stops
the run with a non-zero exit. No pipelining: each command waits for its reply.

``--probe`` runs one session of small messages until its standard input closes (or the time
or message bound is reached) and reports the latency of every reply: run.py uses it to see
whether large messages sent by other clients stall the server's loop.

Every run is bounded twice: by a number of messages and by a number of seconds. The result is
one JSON line on standard output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time

HOST = "127.0.0.1"
LINE = 80  # octets per body line, CRLF included, as smtp-source writes them


class ReplyMismatch(Exception):
    """The server answered a command with a code other than the expected one."""


def build_message(size: int, sequence: int = 0) -> bytes:
    """Return a message of a header block and ``size`` octets of body, in wire form.

    Body lines are ``LINE`` octets long and never start with a dot, so the wire form needs no
    dot-stuffing; the terminating ``.`` line is not included.
    """
    header = (
        "From: <load@client.example>\r\n"
        "To: <sink@server.example>\r\n"
        f"Subject: load {sequence}\r\n"
        f"Message-ID: <{sequence}.{size}@client.example>\r\n"
        "\r\n"
    ).encode()
    text = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    line = (text + text)[: LINE - 2] + b"\r\n"
    body = line * (size // LINE)
    rest = size - len(body)
    if rest >= 2:
        body += b"x" * (rest - 2) + b"\r\n"
    return header + body


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Read one (possibly multi-line) reply; return its code and its last line."""
    while True:
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise ConnectionError("the server closed the connection before replying")
        if len(line) < 4 or not line[:3].isdigit():
            raise ReplyMismatch(f"malformed reply line {line[:80]!r}")
        if line[3:4] != b"-":
            return int(line[:3]), line


async def expect(reader: asyncio.StreamReader, code: int, what: str) -> None:
    """Read a reply and fail unless it carries ``code``."""
    got, line = await read_reply(reader)
    if got != code:
        raise ReplyMismatch(f"{what}: expected {code}, got {line[:120]!r}")


class Plan:
    """Hands out messages to sessions until the count or the time is used up."""

    def __init__(self, messages: int, seconds: float) -> None:
        self.left = messages
        self.deadline = time.monotonic() + seconds
        self.sent = 0
        self.octets = 0

    def claim(self) -> bool:
        if self.left <= 0 or time.monotonic() >= self.deadline:
            return False
        self.left -= 1
        return True


async def send_message(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: bytes
) -> None:
    """One transaction: MAIL, RCPT, DATA, content; every reply checked."""
    writer.write(b"MAIL FROM:<load@client.example>\r\n")
    await expect(reader, 250, "MAIL")
    writer.write(b"RCPT TO:<sink@server.example>\r\n")
    await expect(reader, 250, "RCPT")
    writer.write(b"DATA\r\n")
    await expect(reader, 354, "DATA")
    writer.write(message)
    writer.write(b".\r\n")
    await writer.drain()
    await expect(reader, 250, "end of data")


async def open_session(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port)
    await expect(reader, 220, "greeting")
    writer.write(b"EHLO client.example\r\n")
    await expect(reader, 250, "EHLO")
    return reader, writer


async def close_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        writer.write(b"QUIT\r\n")
        await expect(reader, 221, "QUIT")
    finally:
        writer.close()
        await writer.wait_closed()


async def session(port: int, plan: Plan, message: bytes, reuse: bool) -> None:
    """Send messages until the plan runs out: one per connection, or many with ``reuse``."""
    while plan.claim():
        reader, writer = await open_session(port)
        try:
            while True:
                await send_message(reader, writer, message)
                plan.sent += 1
                plan.octets += len(message)
                if not (reuse and plan.claim()):
                    break
        finally:
            await close_session(reader, writer)


async def load(args: argparse.Namespace) -> dict[str, object]:
    message = build_message(args.size)
    plan = Plan(args.messages, args.seconds)
    start = time.perf_counter()
    tasks = [session(args.port, plan, message, args.reuse) for _ in range(args.sessions)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.perf_counter() - start
    errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    return {
        "sent": plan.sent,
        "octets": plan.octets,
        "elapsed": elapsed,
        "planned": args.messages,
        "errors": errors[:5],
        "error_count": len(errors),
    }


def watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Set ``stop`` when standard input reaches its end (the runner closed it)."""
    sys.stdin.buffer.read()
    loop.call_soon_threadsafe(stop.set)


async def timed(
    latencies: list[float], reader: asyncio.StreamReader, code: int, what: str
) -> None:
    start = time.perf_counter()
    await expect(reader, code, what)
    latencies.append(time.perf_counter() - start)


async def probe(args: argparse.Namespace) -> dict[str, object]:
    """One session of small messages, timing every reply, until told to stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    threading.Thread(target=watch_stdin, args=(loop, stop), daemon=True).start()
    message = build_message(args.size)
    plan = Plan(args.messages, args.seconds)
    latencies: list[float] = []
    reader, writer = await open_session(args.port)
    print("PROBING", flush=True)
    start = time.perf_counter()
    try:
        while not stop.is_set() and plan.claim():
            writer.write(b"MAIL FROM:<probe@client.example>\r\n")
            await timed(latencies, reader, 250, "MAIL")
            writer.write(b"RCPT TO:<sink@server.example>\r\n")
            await timed(latencies, reader, 250, "RCPT")
            writer.write(b"DATA\r\n")
            await timed(latencies, reader, 354, "DATA")
            writer.write(message + b".\r\n")
            await timed(latencies, reader, 250, "end of data")
            plan.sent += 1
            plan.octets += len(message)
            # A short pause keeps the probe a light load, not a competitor.
            await asyncio.sleep(args.pause)
    finally:
        await close_session(reader, writer)
    elapsed = time.perf_counter() - start
    ordered = sorted(latencies)
    return {
        "sent": plan.sent,
        "octets": plan.octets,
        "elapsed": elapsed,
        "replies": len(ordered),
        "max_ms": ordered[-1] * 1000 if ordered else None,
        "p99_ms": ordered[int(len(ordered) * 0.99)] * 1000 if ordered else None,
        "median_ms": ordered[len(ordered) // 2] * 1000 if ordered else None,
        "errors": [],
        "error_count": 0,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="server port on 127.0.0.1")
    parser.add_argument("--sessions", type=int, default=1, help="concurrent sessions")
    parser.add_argument("--messages", type=int, default=1, help="messages in all (a bound)")
    parser.add_argument("--size", type=int, default=1024, help="body octets per message")
    parser.add_argument("--reuse", action="store_true", help="many messages per connection")
    parser.add_argument("--seconds", type=float, default=60.0, help="time bound of the run")
    parser.add_argument("--probe", action="store_true", help="time replies until stdin ends")
    parser.add_argument("--pause", type=float, default=0.002, help="probe: pause per message")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    loop_factory = asyncio.new_event_loop
    if args.loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            loop_factory = uvloop.new_event_loop
    run = probe(args) if args.probe else load(args)
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            result = runner.run(run)
    except (ReplyMismatch, OSError) as error:
        result = {"sent": 0, "errors": [f"{type(error).__name__}: {error}"], "error_count": 1}
    print(json.dumps(result), flush=True)
    return 1 if result["error_count"] else 0


if __name__ == "__main__":
    sys.exit(main())
