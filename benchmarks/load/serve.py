"""One SMTP server under load, in a process of its own: fastsmtp (either twin), aiosmtpd, or
the bare reference Protocol.

run.py starts one of these per measured run, so the CPU time and the peak RSS of this process
belong to that server and that run alone. The loop runs in the main thread; a second thread
waits on standard input, which carries the runner's requests, one per line:

- ``stats``: print a JSON line with the messages and octets the listener counted, this
  process's CPU time from ``resource.getrusage`` (user and system, every thread) and, with
  ``--lag-monitor``, the longest time the loop was late for a timer;
- ``quit``, or the end of input: stop the server and exit.

Once listening it prints ``READY <port>``. The listener of either server is a no-op
coroutine that only counts, so what is measured is the server's own work.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import resource
import sys
import threading
from collections.abc import Callable
from typing import Any

HOST = "127.0.0.1"
HOSTNAME = "server.example"  # given to both servers, so neither looks its name up


class Counter:
    """What the listener saw; read by the stdin thread, which is harmless under the GIL."""

    def __init__(self) -> None:
        self.messages = 0
        self.octets = 0
        self.worst_lag = 0.0


LAG_TICK = 0.001  # seconds between the lag monitor's timers


async def monitor_lag(counter: Counter) -> None:
    """Wake up every millisecond and remember how late the loop was: a blocked loop shows."""
    loop = asyncio.get_running_loop()
    while True:
        expected = loop.time() + LAG_TICK
        await asyncio.sleep(LAG_TICK)
        counter.worst_lag = max(counter.worst_lag, loop.time() - expected)


async def serve_fastsmtp(
    twin: str, counter: Counter, ready: Callable[[int], None], stop: asyncio.Event
) -> None:
    from fastsmtp import _wire, smtp_server

    server = smtp_server(port=0, host=HOST, hostname=HOSTNAME, shutdown_grace=2.0)
    server._wire = _wire.load(twin)  # the twin under test, whatever the import chose

    @server.mail_listener
    async def on_mail(mail: Any) -> None:
        counter.messages += 1
        counter.octets += len(mail.data)

    async with server:
        if server.implementation != twin:
            raise RuntimeError(f"asked for twin {twin!r}, server runs {server.implementation!r}")
        ready(server.bound_port)
        await stop.wait()


class BareProtocol(asyncio.Protocol):
    """The floor: splits lines, says 250 (354 to DATA), makes each body one bytes object.

    Not an SMTP server (no grammar, no states, no dot-unstuffing, no limits): the least any
    Python receiver on this loop must do per message, to read the other rows against.
    """

    GREETING = b"220 server.example ESMTP\r\n"
    OK = b"250 2.0.0 Ok\r\n"
    GO_AHEAD = b"354 End data with <CR><LF>.<CR><LF>\r\n"
    BYE = b"221 2.0.0 Bye\r\n"

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.transport: Any = None
        self.pending = bytearray()
        self.in_data = False
        self.scanned = 0  # how far the body was searched for its end marker

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(self.GREETING)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        pending = self.pending
        pending += data
        start = 0
        while True:
            if self.in_data:
                # Keeps the CRLF before the marker in view, so a marker split across reads shows.
                end = pending.find(b"\r\n.\r\n", max(self.scanned - 4, start - 2, 0))
                if end < 0:
                    self.scanned = len(pending)
                    break
                self.counter.messages += 1
                self.counter.octets += len(bytes(pending[start : end + 2]))
                self.in_data = False
                start = end + 5
                self.transport.write(self.OK)
                continue
            end = pending.find(b"\r\n", start)
            if end < 0:
                break
            verb = bytes(pending[start : start + 4]).upper()
            start = end + 2
            if verb == b"DATA":
                self.in_data = True
                self.scanned = start - 2  # a body that is only "." ends at once
                self.transport.write(self.GO_AHEAD)
            elif verb == b"QUIT":
                self.transport.write(self.BYE)
                self.transport.close()
                pending.clear()  # nothing after QUIT is read
                return
            else:
                self.transport.write(self.OK)
        del pending[:start]
        self.scanned = max(self.scanned - start, 0)


async def serve_bare(counter: Counter, ready: Callable[[int], None], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: BareProtocol(counter), host=HOST, port=0)
    async with server:
        ready(server.sockets[0].getsockname()[1])
        await stop.wait()


async def serve_aiosmtpd(
    counter: Counter, ready: Callable[[int], None], stop: asyncio.Event
) -> None:
    from aiosmtpd.smtp import SMTP

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            counter.messages += 1
            counter.octets += len(envelope.content)
            return "250 OK"

    handler = Handler()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname=HOSTNAME, loop=loop), host=HOST, port=0
    )
    async with server:
        ready(server.sockets[0].getsockname()[1])
        await stop.wait()


def answer_requests(
    loop: asyncio.AbstractEventLoop, counter: Counter, stop: asyncio.Event
) -> None:
    """Serve the runner's requests from standard input until ``quit`` or its end."""
    for line in sys.stdin:
        request = line.strip()
        if request == "stats":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            stats = {
                "messages": counter.messages,
                "octets": counter.octets,
                "utime": usage.ru_utime,
                "stime": usage.ru_stime,
                "worst_lag": counter.worst_lag,
            }
            print(json.dumps(stats), flush=True)
        elif request == "quit":
            break
    loop.call_soon_threadsafe(stop.set)


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=("fastsmtp", "aiosmtpd", "bare"), required=True)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), required=True)
    parser.add_argument("--twin", choices=("c", "py"), default="c", help="fastsmtp's hot path")
    parser.add_argument("--cprofile", metavar="PATH", help="profile the loop, dump stats here")
    parser.add_argument("--lag-monitor", action="store_true", help="measure how late timers run")
    args = parser.parse_args()

    loop = new_loop(args.loop)
    asyncio.set_event_loop(loop)
    counter = Counter()
    stop = asyncio.Event()
    monitors: list[asyncio.Task[None]] = []

    def ready(port: int) -> None:
        if args.lag_monitor:
            monitors.append(loop.create_task(monitor_lag(counter)))
        print(f"READY {port}", flush=True)
        thread = threading.Thread(target=answer_requests, args=(loop, counter, stop), daemon=True)
        thread.start()

    if args.server == "fastsmtp":
        serving = serve_fastsmtp(args.twin, counter, ready, stop)
    elif args.server == "bare":
        serving = serve_bare(counter, ready, stop)
    else:
        serving = serve_aiosmtpd(counter, ready, stop)

    profiler = cProfile.Profile() if args.cprofile else None
    if profiler is not None:
        profiler.enable()
    try:
        loop.run_until_complete(serving)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.cprofile)
        for monitor in monitors:
            monitor.cancel()
        loop.run_until_complete(asyncio.gather(*monitors, return_exceptions=True))
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
