"""One SMTP server under load, in a process of its own: fastsmtp (either twin) or aiosmtpd.

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
    parser.add_argument("--server", choices=("fastsmtp", "aiosmtpd"), required=True)
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
