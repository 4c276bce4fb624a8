"""The ``fastsmtp`` command (also ``python -m fastsmtp``): receive mail and keep every message.

Messages go to a Maildir (``./Maildir`` unless ``--maildir`` names another) or, with
``--stdout``, to standard output. Each is stored before the client is told 250. SIGTERM or
Ctrl-C stops the server gracefully: it stops accepting connections and lets transactions
in flight finish; a second signal exits at once.

Everything the command says goes to standard error, so that ``--stdout`` output holds
nothing but messages.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from . import IMPLEMENTATION, __version__
from .events import IncomingMail
from .maildir import MaildirSink, MessageSink
from .server import SMTPServer, smtp_server

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAILDIR",
    "DEFAULT_PORT",
    "StdoutSink",
    "build_parser",
    "main",
    "version_text",
]

cli_log = logging.getLogger("fastsmtp.cli")

DEFAULT_PORT = 8025
DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAILDIR = "Maildir"

_SIZE = re.compile(r"(\d+)\s*([kmg]?)(?:i?b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class StdoutSink(MessageSink):
    """Write every message to standard output, each after a separator line.

    The message bytes are written exactly as received (CRLF line endings included); a
    final newline is added when a message lacks one, so the next separator starts a line.
    """

    log = logging.getLogger("fastsmtp.cli")

    def __init__(self, stream: Any = None) -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer
        self._lock = threading.Lock()
        self._count = 0

    def __repr__(self) -> str:
        return "<StdoutSink>"

    def describe(self) -> str:
        """Say where messages go: standard output."""
        return "standard output"

    def store(self, mail: IncomingMail) -> str:
        """Write the separator line and the message, flush, and return ``stdout #N``."""
        recipients = ",".join(f"<{recipient}>" for recipient in mail.recipients)
        with self._lock:
            self._count += 1
            separator = (
                f"----- fastsmtp message {self._count}: from=<{mail.envelope_from}> "
                f"to={recipients} size={len(mail.data)} -----\n"
            )
            stream = self._stream
            stream.write(separator.encode("utf-8", "backslashreplace"))
            stream.write(mail.data)
            if not mail.data.endswith(b"\n"):
                stream.write(b"\n")
            stream.flush()
            return f"stdout #{self._count}"


def version_text() -> str:
    """Return the ``--version`` line: version, twin of the hot path and event loop.

    The command always serves on asyncio's own loop; whether uvloop is installed (for
    ``event_loop="uvloop"`` in programs that embed the server) is said beside it.
    """
    uvloop = "yes" if importlib.util.find_spec("uvloop") is not None else "no"
    return (
        f"fastsmtp {__version__} (hot path: {IMPLEMENTATION}, loop: asyncio, "
        f"uvloop available: {uvloop})"
    )


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, got {port}")
    return port


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _size(text: str) -> int:
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"not a size: {text!r} (use octets, or a K, M or G suffix: 512K, 10M)"
        )
    value = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if value < 1:
        raise argparse.ArgumentTypeError(f"size must be at least 1 octet, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"seconds must be positive and finite, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the command's argument parser."""
    parser = argparse.ArgumentParser(
        prog="fastsmtp",
        description=(
            "Receive e-mail over SMTP and keep every accepted message, stored before the "
            "client is told 250. Stop with Ctrl-C or SIGTERM: transactions in flight finish "
            "first (see --shutdown-grace); a second signal exits at once."
        ),
        epilog="Log lines and the startup line go to standard error.",
    )
    parser.add_argument(
        "--version", action="version", version=version_text(), help="show the version and exit"
    )

    listen = parser.add_argument_group("listening")
    listen.add_argument(
        "--host",
        action="append",
        metavar="ADDRESS",
        help=(
            f"address to listen on; repeat for several (default: {DEFAULT_HOST}; "
            "0.0.0.0 for every IPv4 interface, '' for every interface)"
        ),
    )
    listen.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"TCP port; 0 picks a free one, shown at startup (default: {DEFAULT_PORT})",
    )

    sinks = parser.add_argument_group("where messages go").add_mutually_exclusive_group()
    sinks.add_argument(
        "--maildir",
        metavar="DIR",
        help=(
            f"store each message in this Maildir, created if missing "
            f"(default: ./{DEFAULT_MAILDIR} when --stdout is not given)"
        ),
    )
    sinks.add_argument(
        "--stdout",
        action="store_true",
        help="write each message to standard output after a separator line instead",
    )

    options = parser.add_argument_group("server options")
    options.add_argument(
        "--hostname",
        metavar="NAME",
        help="name given in the greeting and the EHLO reply (default: this host's name)",
    )
    options.add_argument(
        "--max-recipients",
        type=_count,
        metavar="N",
        help="recipients accepted per message; more get 452 4.5.3 (default: 1000)",
    )
    options.add_argument(
        "--max-connections",
        type=_count,
        metavar="N",
        help="connections served at once; more get 421 (default: 1000)",
    )
    options.add_argument(
        "--preferred-max-message-size",
        type=_size,
        metavar="SIZE",
        help="size advertised with EHLO SIZE, such as 10M (default: none advertised)",
    )
    options.add_argument(
        "--max-message-size",
        type=_size,
        metavar="SIZE",
        help="largest message kept; larger ones get 552 5.3.4 (default: 32M)",
    )
    options.add_argument(
        "--connection-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="silence allowed from a client before 421 4.4.2 (default: 60)",
    )
    options.add_argument(
        "--shutdown-grace",
        type=_seconds,
        metavar="SECONDS",
        help="time transactions in flight get to finish on stop (default: 30)",
    )
    options.add_argument(
        "--data-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="time one message's content may take to arrive, then 421 4.4.2 (default: 600)",
    )
    options.add_argument(
        "--max-connections-per-address",
        type=int,
        metavar="N",
        help="connections at once from one client address; more get 421 (default: no limit)",
    )
    options.add_argument(
        "--max-errors",
        type=int,
        metavar="N",
        help="protocol errors tolerated per connection before 421 4.7.0 (default: 20)",
    )
    options.add_argument(
        "--bare-line-endings",
        choices=("keep", "reject", "normalize"),
        help="messages with a CR or LF outside CRLF: keep as received, reject with 550 "
        "5.5.2, or normalize to CRLF (default: keep)",
    )

    output = parser.add_argument_group("logging").add_mutually_exclusive_group()
    output.add_argument("-v", "--verbose", action="store_true", help="log debugging details too")
    output.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    return parser


def _server_options(args: argparse.Namespace) -> dict[str, Any]:
    names = (
        "hostname",
        "max_recipients",
        "max_connections",
        "preferred_max_message_size",
        "max_message_size",
        "connection_timeout",
        "shutdown_grace",
        "data_timeout",
        "max_connections_per_address",
        "max_errors",
        "bare_line_endings",
    )
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _hosts(args: argparse.Namespace) -> str | list[str]:
    hosts: list[str] = args.host or [DEFAULT_HOST]
    return hosts[0] if len(hosts) == 1 else hosts


def _format_address(address: tuple[Any, ...]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _configure_logging(args: argparse.Namespace) -> logging.Handler:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    return handler


class _SignalStop:
    """Stop the server on the first SIGTERM or SIGINT; exit at once on the second."""

    def __init__(self, server: SMTPServer) -> None:
        self._server = server
        self._stopping: asyncio.Task[None] | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self._on_signal, signum)
        except (NotImplementedError, RuntimeError):
            # No loop signal handlers here (Windows): Ctrl-C cancels asyncio.run instead,
            # which stops the server just as gracefully.
            pass

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._stopping is None:
            cli_log.info(
                "received %s: stopping, transactions in flight may take up to %gs",
                name,
                self._server.shutdown_grace,
            )
            self._stopping = asyncio.get_running_loop().create_task(self._server.stop_async())
            return

        # Nothing acknowledged is lost: a message is stored before its 250, and clients
        # retry those that never got one.
        cli_log.warning("received %s again: exiting without waiting", name)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        os._exit(128 + signum)

    async def finished(self) -> None:
        # serve_forever() may return while the stop a signal started is still finishing
        # (concurrent stop_async() calls return early): let it end before the loop does.
        if self._stopping is not None:
            await self._stopping


async def _serve(server: SMTPServer, sink: MessageSink) -> None:
    async with server:
        stopper = _SignalStop(server)
        stopper.install(asyncio.get_running_loop())
        addresses = ", ".join(_format_address(address) for address in server.addresses)
        print(
            f"fastsmtp {__version__} listening on {addresses}, "
            f"storing messages in {sink.describe()} "
            f"(hot path: {server.implementation}); Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        await server.serve_forever()
        await stopper.finished()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fastsmtp`` command until it is stopped; return its exit status.

    Args:
        argv: the arguments, without the program name; None reads ``sys.argv``.

    Returns:
        0 after a graceful stop, 1 if the server could not start (address in use,
        Maildir not creatable). Invalid arguments exit with status 2, as argparse does.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if (
        args.preferred_max_message_size is not None
        and args.max_message_size is not None
        and args.preferred_max_message_size > args.max_message_size
    ):
        parser.error("--preferred-max-message-size must not exceed --max-message-size")

    try:
        server = smtp_server(args.port, _hosts(args), **_server_options(args))
    except (TypeError, ValueError) as error:
        parser.error(str(error))

    handler = _configure_logging(args)
    try:
        sink: MessageSink
        if args.stdout:
            sink = StdoutSink()
        else:
            maildir = args.maildir if args.maildir is not None else DEFAULT_MAILDIR
            try:
                sink = MaildirSink(maildir)
            except OSError as error:
                cli_log.error("cannot use %s as a Maildir: %s", maildir, error)
                return 1
        server.mail_listener(sink)

        try:
            asyncio.run(_serve(server, sink))
        except OSError as error:
            cli_log.error("cannot listen on port %d: %s", args.port, error)
            return 1
        except KeyboardInterrupt:
            # Only where the loop has no signal handlers: asyncio.run has already let the
            # server stop gracefully before raising this.
            pass
        return 0
    finally:
        logging.getLogger().removeHandler(handler)
