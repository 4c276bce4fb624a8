"""Many slow clients trickling bytes at the real ``fastsmtp`` command: all must be evicted on time.

Starts ``fastsmtp`` (Maildir sink in a temporary directory) on 127.0.0.1 with a short
``--connection-timeout`` and ``--data-timeout``, then runs ``--clients`` slow clients at once,
in three kinds taken in turn:

- ``command-stall``: sends part of a command a byte at a time, then nothing more. It must be
  evicted ``connection_timeout`` after the server's last reply (its greeting): bytes that
  never complete a command line are no activity.
- ``data-trickle``: gets to DATA, then sends one byte of content every ``--gap`` seconds
  (faster than the idle timeout, so only the DATA deadline can stop it). It must be evicted
  ``data_timeout`` after its 354.
- ``command-trickle``: sends an endless command line a byte every ``--gap`` seconds (faster
  than the idle timeout). A command line must arrive whole within ``connection_timeout``, so
  it must be evicted then, counted from the greeting, like ``command-stall``.

Evicted means a ``421 4.4.2`` reply and then the end of the connection. Lateness is measured
at the client: the time it read the 421 minus the time it was due, counted from the greeting
it read or the DATA line it sent; so lateness includes the round trip. An eviction is early
if it comes before the server can have waited its full time: ``connection_timeout`` after the
client began to connect, or ``data_timeout`` after it sent DATA. Meanwhile one normal
client sends small messages one after another and every reply it waits for is timed; the same
is done first with no slow client, for comparison.

Bounded by ``--clients`` and by ``--seconds`` for the whole run; a slow client still
connected at the end is counted as not evicted. Exits non-zero if a due eviction was late
(beyond ``--tolerance``), early, missing, or answered with another reply, or if the normal
client saw a wrong reply.

    python scripts/load_slow.py                      # 1,000 slow clients, timeouts 2s and 6s
    python scripts/load_slow.py --clients 200 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
import time

import soak_common

client = soak_common.load_client()

KINDS = ("command-stall", "data-trickle", "command-trickle")
CONNECT_CONCURRENCY = 100
EVICTION = b"421 4.4.2"


@dataclasses.dataclass
class Outcome:
    """What became of one slow client."""

    kind: str
    started: float = 0.0  # when its slow part began: after the greeting, or sending DATA
    due: float | None = None  # monotonic time it should be evicted at; None: not due
    earliest: float = 0.0  # an eviction before this time is early
    evicted_at: float | None = None  # when it read its 421 (or other final reply)
    reply: bytes = b""
    closed: bool = False  # the server ended the connection after the reply
    ended: float = 0.0  # when the client gave up waiting or was evicted
    error: str = ""

    @property
    def lateness(self) -> float | None:
        if self.due is None or self.evicted_at is None:
            return None
        return self.evicted_at - self.due


async def watch_for_eviction(reader: asyncio.StreamReader, outcome: Outcome) -> None:
    """Wait for the server's unsolicited reply and the end of the connection."""
    line = await reader.readline()
    outcome.evicted_at = time.monotonic()
    outcome.reply = line.rstrip(b"\r\n")
    # What follows the 421 must be the end of the connection, not more dialogue.
    outcome.closed = line.endswith(b"\n") and await reader.read(1) == b""


async def trickle(
    writer: asyncio.StreamWriter,
    watcher: asyncio.Task[None],
    data: bytes,
    gap: float,
    stop_at: float,
) -> float:
    """Write ``data`` a byte every ``gap`` seconds until it runs out, the server speaks or
    ``stop_at`` passes; return the time of the last byte written."""
    last = time.monotonic()
    for index in range(len(data)):
        if watcher.done() or time.monotonic() >= stop_at:
            break
        try:
            writer.write(data[index : index + 1])
            await writer.drain()
        except ConnectionError:
            break
        last = time.monotonic()
        await asyncio.wait([watcher], timeout=gap)
    return last


async def slow_client(
    kind: str, port: int, args: argparse.Namespace, stop_at: float, gate: asyncio.Semaphore
) -> Outcome:
    """Run one slow client of ``kind`` until it is evicted or the run ends."""
    outcome = Outcome(kind)
    async with gate:
        connecting = time.monotonic()
        reader, writer = await client.open_session(port)
        if kind == "data-trickle":
            writer.write(b"MAIL FROM:<slow@client.example>\r\n")
            await client.expect(reader, 250, "MAIL")
            writer.write(b"RCPT TO:<sink@server.example>\r\n")
            await client.expect(reader, 250, "RCPT")
            # The server cannot start the DATA deadline before this: lateness counts from it.
            outcome.started = time.monotonic()
            writer.write(b"DATA\r\n")
            await client.expect(reader, 354, "DATA")
        else:
            outcome.started = time.monotonic()
    started = outcome.started
    watcher = asyncio.ensure_future(watch_for_eviction(reader, outcome))
    try:
        if kind == "data-trickle":
            outcome.due = outcome.earliest = started + args.data_timeout
            content = b"Subject: slow\r\n\r\n" + b"x" * 100_000
            await trickle(writer, watcher, content, args.gap, stop_at)
        else:
            outcome.due = started + args.connection_timeout
            outcome.earliest = connecting + args.connection_timeout
            endless = kind == "command-trickle"
            line = b"NOOP " + b"y" * 100_000 if endless else b"MAIL FROM:<sta"
            await trickle(writer, watcher, line, args.gap, stop_at)
        await asyncio.wait([watcher], timeout=max(0.0, stop_at - time.monotonic()))
    finally:
        outcome.ended = time.monotonic()
        watcher.cancel()
        writer.close()
    return outcome


async def normal_client(port: int, stop: asyncio.Event, latencies: list[float]) -> int:
    """Send small messages one after another until ``stop``; time every awaited reply."""
    message = client.build_message(1024)
    reader, writer = await client.open_session(port)
    sent = 0
    try:
        while not stop.is_set():
            writer.write(b"MAIL FROM:<normal@client.example>\r\n")
            await client.timed(latencies, reader, 250, "MAIL")
            writer.write(b"RCPT TO:<sink@server.example>\r\n")
            await client.timed(latencies, reader, 250, "RCPT")
            writer.write(b"DATA\r\n")
            await client.timed(latencies, reader, 354, "DATA")
            writer.write(message + b".\r\n")
            await client.timed(latencies, reader, 250, "end of data")
            sent += 1
            await asyncio.sleep(0.005)  # a steady light load, not a competitor
    finally:
        await client.close_session(reader, writer)
    return sent


async def baseline(port: int, seconds: float) -> tuple[int, list[float]]:
    """The normal client alone for ``seconds``."""
    stop = asyncio.Event()
    latencies: list[float] = []
    asyncio.get_running_loop().call_later(seconds, stop.set)
    sent = await normal_client(port, stop, latencies)
    return sent, latencies


async def run(args: argparse.Namespace, port: int) -> bool:
    """Baseline, then the slow clients with the normal one; print the figures; True if held."""
    base_sent, base_latencies = await baseline(port, 2.0)

    stop_at = time.monotonic() + args.seconds - 5.0
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    stop_normal = asyncio.Event()
    latencies: list[float] = []
    normal = asyncio.ensure_future(normal_client(port, stop_normal, latencies))
    slow = [
        slow_client(KINDS[index % len(KINDS)], port, args, stop_at, gate)
        for index in range(args.clients)
    ]
    outcomes = await asyncio.gather(*slow, return_exceptions=True)
    stop_normal.set()
    normal_error = ""
    try:
        sent = await normal
    except (OSError, client.ReplyMismatch) as error:
        sent, normal_error = 0, f"{type(error).__name__}: {error}"

    print(f"normal client alone:      {base_sent} messages, replies {summary(base_latencies)}")
    print(f"normal client under load: {sent} messages, replies {summary(latencies)}")
    if normal_error:
        print(f"normal client FAILED: {normal_error}")
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    for failure in failures[:3]:
        print(f"slow client failed to start: {type(failure).__name__}: {failure}")
    good = report([o for o in outcomes if isinstance(o, Outcome)], args)
    return good and not failures and not normal_error


def summary(latencies: list[float]) -> str:
    return soak_common.summary_ms(latencies)


def report(outcomes: list[Outcome], args: argparse.Namespace) -> bool:
    """Print one line per kind of slow client; return True if every due eviction held."""
    good = True
    for kind in KINDS:
        mine = [o for o in outcomes if o.kind == kind]
        if not mine:
            continue
        evicted = [o for o in mine if o.reply.startswith(EVICTION) and o.closed]
        other = [o for o in mine if o.evicted_at is not None and o not in evicted]
        held = [o for o in mine if o.evicted_at is None]
        due = [o for o in mine if o.due is not None]
        late = [o for o in due if o.lateness is None or o.lateness > args.tolerance]
        early = [o for o in due if o.evicted_at is not None and o.evicted_at < o.earliest]
        lateness = sorted(o.lateness for o in evicted if o.lateness is not None)
        line = (
            f"{kind:16} {len(mine):5} clients: {len(evicted)} evicted with 421 4.4.2, "
            f"{len(other)} other replies, {len(held)} still connected at the end"
        )
        if due:
            line += f"; {len(late)} late (> {args.tolerance}s), {len(early)} early"
        if lateness:
            line += (
                f"; lateness median {soak_common.percentile(lateness, 0.5) * 1000:.0f}ms "
                f"p99 {soak_common.percentile(lateness, 0.99) * 1000:.0f}ms "
                f"max {lateness[-1] * 1000:.0f}ms"
            )
        print(line)
        for odd in other[:3]:
            print(f"    other reply: {odd.reply[:80]!r} closed={odd.closed}")
        if due and (late or early or other):
            good = False
    return good


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000, help="slow clients at once")
    parser.add_argument("--connection-timeout", type=float, default=2.0, help="server's, s")
    parser.add_argument("--data-timeout", type=float, default=6.0, help="server's, s")
    parser.add_argument("--gap", type=float, default=0.5, help="seconds between bytes")
    parser.add_argument("--tolerance", type=float, default=1.0, help="allowed lateness, s")
    parser.add_argument("--seconds", type=float, default=40.0, help="time bound of the run")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= 10_000:
        parser.error("--clients must be between 1 and 10000")
    if args.gap >= args.connection_timeout:
        parser.error("--gap must be shorter than --connection-timeout, or nobody trickles")
    if args.seconds < args.data_timeout + 10:
        parser.error("--seconds must leave time for the DATA deadline and 10s more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    soak_common.raise_fd_limit(args.clients + 256)
    print(soak_common.machine())
    print(
        f"loop: {args.loop}; connection_timeout={args.connection_timeout}s "
        f"data_timeout={args.data_timeout}s gap={args.gap}s"
    )
    port = soak_common.free_port()
    with tempfile.TemporaryDirectory(prefix="fastsmtp-slow-") as scratch:
        options = [
            "--maildir",
            f"{scratch}/Maildir",
            "--max-connections",
            str(args.clients + 100),
            "--connection-timeout",
            str(args.connection_timeout),
            "--data-timeout",
            str(args.data_timeout),
            "--loop",
            args.loop,
            "--quiet",
        ]
        server = soak_common.start_fastsmtp(port, options, many_files=True)
        try:
            good = asyncio.run(asyncio.wait_for(run(args, port), args.seconds + 10))
        except TimeoutError:
            print(f"FAILED: the run did not finish within {args.seconds + 10}s")
            return 1
        finally:
            soak_common.stop(server)
    print("OK" if good else "FAILED")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
