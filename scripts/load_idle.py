"""Hold many idle connections open against the real ``fastsmtp`` command, and measure.

Starts ``fastsmtp`` (Maildir sink in a temporary directory) on 127.0.0.1 with
``--max-connections`` above the count and a connection timeout longer than the run, opens
``--count`` connections that each read the 220 greeting and then say nothing, and reports:

- memory per idle connection: the server's RSS after all are open, minus its RSS before
  (after one warm-up client), divided by the count;
- how long a new client waits for its greeting, and for a whole transaction (EHLO, MAIL,
  RCPT, DATA, QUIT), while they are held, beside the same figures with none held;
- that every held connection is still served at the end: each gets NOOP and must answer 250.

Bounded twice: by ``--count`` and by ``--seconds`` for the whole run; past the time the run
stops and exits non-zero. Raises its own open-file limit with ``resource.setrlimit``, and the
server's to the hard limit.

    python scripts/load_idle.py                   # 10,000 connections, asyncio's loop
    python scripts/load_idle.py --loop uvloop --count 2000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time

import soak_common
from soak_common import HOST

client = soak_common.load_client()

CONNECT_CONCURRENCY = 200  # connections being opened at once: the listen backlog is small


async def greet_time(port: int) -> float:
    """Seconds from connecting to having read the 220 greeting, then QUIT."""
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(HOST, port)
    await client.expect(reader, 220, "greeting")
    elapsed = time.perf_counter() - start
    writer.write(b"QUIT\r\n")
    await client.expect(reader, 221, "QUIT")
    writer.close()
    await writer.wait_closed()
    return elapsed


async def transaction_time(port: int, message: bytes) -> float:
    """Seconds for one whole client: greeting, EHLO, one message, QUIT, every reply checked."""
    start = time.perf_counter()
    reader, writer = await client.open_session(port)
    await client.send_message(reader, writer, message)
    await client.close_session(reader, writer)
    return time.perf_counter() - start


async def new_client_times(port: int, samples: int) -> tuple[list[float], list[float]]:
    """Greeting and whole-transaction times of ``samples`` new clients, one after another."""
    message = client.build_message(1024)
    greets = [await greet_time(port) for _ in range(samples)]
    transactions = [await transaction_time(port, message) for _ in range(samples)]
    return greets, transactions


async def open_idle(
    port: int, count: int, deadline: float
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """Open ``count`` connections that each read their greeting and then stay silent."""
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with gate:
            reader, writer = await asyncio.open_connection(HOST, port)
            await client.expect(reader, 220, "greeting")
            return reader, writer

    tasks = [asyncio.ensure_future(one()) for _ in range(count)]
    try:
        return await asyncio.wait_for(asyncio.gather(*tasks), deadline - time.monotonic())
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


async def still_served(
    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]], deadline: float
) -> int:
    """Send NOOP on every held connection; return how many answered 250."""
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        async with gate:
            writer.write(b"NOOP\r\n")
            code, _ = await client.read_reply(reader)
            return code == 250

    checks = [one(reader, writer) for reader, writer in connections]
    results = await asyncio.wait_for(
        asyncio.gather(*checks, return_exceptions=True), deadline - time.monotonic()
    )
    return sum(1 for result in results if result is True)


async def close_all(connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    for _, writer in connections:
        writer.close()
    await asyncio.gather(*(w.wait_closed() for _, w in connections), return_exceptions=True)


async def run(args: argparse.Namespace, port: int, pid: int, deadline: float) -> bool:
    """Measure with none held, hold ``args.count``, measure again; return True if all held."""
    # Warm-up: the first client pays for lazy imports and the first buffers of the loop.
    await new_client_times(port, 3)
    idle_greets, idle_transactions = await new_client_times(port, args.samples)
    rss_before = soak_common.rss_kib(pid)

    started = time.perf_counter()
    connections = await open_idle(port, args.count, deadline)
    opened_in = time.perf_counter() - started
    await asyncio.sleep(1.0)  # let the server finish what the last connections started
    rss_after = soak_common.rss_kib(pid)
    server_fds = soak_common.open_files(pid)

    loaded_greets, loaded_transactions = await new_client_times(port, args.samples)
    alive = await still_served(connections, deadline)
    await close_all(connections)

    per_connection = (rss_after - rss_before) * 1024 / args.count
    print(f"idle connections held: {args.count} (opened in {opened_in:.1f}s)")
    print(f"server open fds while held: {server_fds}")
    print(
        f"server RSS: {rss_before / 1024:.1f} MiB before, {rss_after / 1024:.1f} MiB held; "
        f"{per_connection / 1024:.2f} KiB per idle connection"
    )
    print(f"new client greeting, none held:  {soak_common.summary_ms(idle_greets)}")
    print(f"new client greeting, all held:   {soak_common.summary_ms(loaded_greets)}")
    print(f"whole transaction, none held:    {soak_common.summary_ms(idle_transactions)}")
    print(f"whole transaction, all held:     {soak_common.summary_ms(loaded_transactions)}")
    print(f"held connections answering NOOP at the end: {alive}/{args.count}")
    return alive == args.count


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="idle connections to hold")
    parser.add_argument("--samples", type=int, default=20, help="new clients timed per phase")
    parser.add_argument("--seconds", type=float, default=300.0, help="time bound of the run")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args(argv)
    if not 1 <= args.count <= 30_000:
        parser.error("--count must be between 1 and 30000 (one loopback address's ports)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = time.monotonic() + args.seconds
    limit = soak_common.raise_fd_limit(args.count + 256)
    if limit < args.count + 64:
        print(f"open-file limit {limit} is too low for {args.count} connections", file=sys.stderr)
        return 2
    print(soak_common.machine())
    print(f"loop: {args.loop}")

    port = soak_common.free_port()
    with tempfile.TemporaryDirectory(prefix="fastsmtp-idle-") as scratch:
        options = [
            "--maildir",
            f"{scratch}/Maildir",
            "--max-connections",
            str(args.count + 100),
            "--connection-timeout",
            str(args.seconds + 60),
            "--loop",
            args.loop,
            "--quiet",
        ]
        server = soak_common.start_fastsmtp(port, options, many_files=True)
        try:
            held = asyncio.run(run(args, port, server.pid, deadline))
        except TimeoutError:
            print(f"FAILED: the run did not finish within {args.seconds}s")
            return 1
        finally:
            soak_common.stop(server)
    print("OK" if held else "FAILED: some held connections were not served")
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
