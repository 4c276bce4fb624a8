"""The ``fastsmtp`` command (also ``python -m fastsmtp``): receive mail and keep every message.

Messages go to a Maildir (``./Maildir`` unless ``--maildir`` names another) or, with
``--stdout``, to standard output. Each is stored before the client is told 250. SIGTERM or
Ctrl-C stops the server gracefully: it stops accepting connections and lets transactions
in flight finish; a second signal exits at once.

With ``--tls-cert`` (and ``--tls-key``) the main port offers STARTTLS, and ``--tls-port`` adds
a port that speaks TLS from the first byte. ``--auth-users`` names a file of ``user:hash``
lines, each printed by ``fastsmtp --hash-password USER``, against which AUTH PLAIN and LOGIN
are checked. The command serves on uvloop when it is installed, unless ``--loop`` says
otherwise.

Everything the command says goes to standard error, so that ``--stdout`` output holds
nothing but messages.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import getpass
import importlib
import logging
import os
import re
import signal
import ssl
import sys
import threading
from collections.abc import Sequence
from typing import Any

from . import IMPLEMENTATION, __version__
from ._memory import MMAP_THRESHOLD, use_mmap_for_large_blocks
from .events import IncomingMail
from .maildir import MaildirSink, MessageSink
from .passwords import PasswordFile, hash_password
from .server import SMTPServer, new_event_loop, smtp_server
from .tls import CLIENT_CERT_MODES, server_tls_context

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAILDIR",
    "DEFAULT_PORT",
    "LOOPS",
    "StdoutSink",
    "build_parser",
    "default_loop",
    "main",
    "uvloop_available",
    "version_text",
]

cli_log = logging.getLogger("fastsmtp.cli")

DEFAULT_PORT = 8025
DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAILDIR = "Maildir"

#: What ``--loop`` may say; "auto" is uvloop when it can be imported, else asyncio's own loop.
LOOPS = ("auto", "uvloop", "asyncio")

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


def uvloop_available() -> bool:
    """Tell whether uvloop can be imported, and so whether ``--loop auto`` would use it."""
    try:
        importlib.import_module("uvloop")
    except ImportError:
        return False
    return True


def default_loop() -> str:
    """Name the loop the command serves on without ``--loop``: "uvloop" or "asyncio"."""
    return "uvloop" if uvloop_available() else "asyncio"


def version_text() -> str:
    """Return the ``--version`` line: version, twin of the hot path and event loop.

    ``loop`` names the loop the command serves on by default (``--loop auto``); whether
    uvloop is installed is said beside it, as it also serves ``--loop uvloop``.
    """
    loop = default_loop()
    uvloop = "yes" if loop == "uvloop" else "no"
    return (
        f"fastsmtp {__version__} (hot path: {IMPLEMENTATION}, loop: {loop}, "
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


def _user_name(text: str) -> str:
    # What one line of a password file can hold and give back unchanged (PasswordFile.parse
    # strips lines and skips those starting with #).
    if not text or text != text.strip() or not text.isprintable() or text.startswith("#"):
        raise argparse.ArgumentTypeError(
            f"not a usable user name: {text!r} (printable, no space at either end, "
            "not starting with #)"
        )
    return text


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
        help="time a client has to send its next whole command line (or, in DATA, more "
        "content) before 421 4.4.2 (default: 60)",
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
        "--max-junk-commands",
        type=int,
        metavar="N",
        help="NOOP, RSET, VRFY, EXPN and HELP allowed between two messages; past it each "
        "counts as a protocol error (default: 100)",
    )
    options.add_argument(
        "--bare-line-endings",
        choices=("keep", "reject", "normalize"),
        help="messages with a CR or LF outside CRLF: keep as received, reject with 550 "
        "5.5.2, or normalize to CRLF (default: keep)",
    )
    options.add_argument(
        "--loop",
        choices=LOOPS,
        default="auto",
        help="event loop to serve on; auto is uvloop when installed, else asyncio's own "
        f"(default: auto, here {default_loop()})",
    )

    tls = parser.add_argument_group(
        "TLS", "STARTTLS (RFC 3207) on --port, and implicit TLS (RFC 8314) on --tls-port"
    )
    tls.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="PEM file with the server's certificate followed by its chain; enables TLS",
    )
    tls.add_argument(
        "--tls-key",
        metavar="FILE",
        help="PEM file with the certificate's private key (default: read from --tls-cert)",
    )
    tls.add_argument(
        "--tls-port",
        type=_port,
        metavar="PORT",
        help="also listen on PORT, on the same addresses, with TLS from the first byte "
        "(465 by convention; 0 picks a free one)",
    )
    tls.add_argument(
        "--require-tls",
        action="store_true",
        help="refuse MAIL, RCPT, DATA and AUTH with 530 5.7.0 until the client started TLS",
    )
    tls.add_argument(
        "--client-certs",
        choices=tuple(CLIENT_CERT_MODES),
        default="none",
        help="ask clients for a certificate: not at all, optionally (verified if given), or "
        "required, failing the handshake without one (default: none)",
    )
    tls.add_argument(
        "--client-ca",
        metavar="FILE",
        help="PEM file of the authorities that sign client certificates (default: the system's)",
    )

    auth = parser.add_argument_group(
        "authentication",
        "AUTH PLAIN and LOGIN (RFC 4954), offered over TLS only unless --allow-plaintext-auth",
    )
    auth.add_argument(
        "--auth-users",
        metavar="FILE",
        help="file of user:hash lines, each printed by --hash-password; enables AUTH",
    )
    auth.add_argument(
        "--require-auth",
        action="store_true",
        help="refuse MAIL with 530 5.7.0 until the client has authenticated",
    )
    auth.add_argument(
        "--allow-plaintext-auth",
        action="store_true",
        help="offer AUTH before TLS too, letting passwords cross the network in clear",
    )
    auth.add_argument(
        "--max-auth-failures",
        type=_count,
        metavar="N",
        help="failed AUTH attempts per connection before 421 4.7.0 and a close (default: 3)",
    )
    auth.add_argument(
        "--hash-password",
        type=_user_name,
        metavar="USER",
        help="read a password (prompted for on a terminal, else one line of standard "
        "input), print the USER:hash line for --auth-users, and exit",
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
        "max_junk_commands",
        "bare_line_endings",
        "require_tls",
        "allow_plaintext_auth",
        "require_auth",
        "max_auth_failures",
    )
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _check_combinations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse flags that need a flag not given, or that contradict another (exit status 2)."""
    if (
        args.preferred_max_message_size is not None
        and args.max_message_size is not None
        and args.preferred_max_message_size > args.max_message_size
    ):
        parser.error("--preferred-max-message-size must not exceed --max-message-size")

    needs_cert = [
        ("--tls-key", args.tls_key is not None),
        ("--tls-port", args.tls_port is not None),
        ("--require-tls", args.require_tls),
        (f"--client-certs {args.client_certs}", args.client_certs != "none"),
    ]
    for flag, given in needs_cert:
        if given and args.tls_cert is None:
            parser.error(f"{flag} needs --tls-cert")
    if args.client_ca is not None and args.client_certs == "none":
        parser.error("--client-ca needs --client-certs optional or required")
    if args.tls_port is not None and args.tls_port == args.port != 0:
        parser.error("--tls-port must differ from --port")

    needs_users = [
        ("--require-auth", args.require_auth),
        ("--allow-plaintext-auth", args.allow_plaintext_auth),
        ("--max-auth-failures", args.max_auth_failures is not None),
    ]
    for flag, given in needs_users:
        if given and args.auth_users is None:
            parser.error(f"{flag} needs --auth-users")
    if args.auth_users is not None and args.tls_cert is None and not args.allow_plaintext_auth:
        parser.error(
            "--auth-users without --tls-cert offers AUTH to nobody, as AUTH is offered over "
            "TLS only: add --tls-cert (or --allow-plaintext-auth, sending passwords in clear)"
        )
    if args.allow_plaintext_auth and args.require_tls:
        parser.error("--allow-plaintext-auth contradicts --require-tls (AUTH waits for TLS)")

    if args.loop == "uvloop" and not uvloop_available():
        parser.error("--loop uvloop: uvloop is not installed (pip install 'fastsmtp[uvloop]')")


class _CommandError(Exception):
    """What stops the command before it serves (a file missing or unusable, no password to
    hash), said in one line: exit status 1, no traceback."""


def _check_readable(flag: str, path: str) -> None:
    # Said before OpenSSL is asked, whose own message for a missing file is only "PEM lib".
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise _CommandError(f"cannot read {flag} {path}: {error.strerror or error}") from None


def _holds_certificate(path: str) -> bool:
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError):
        return False
    return True


def _explain_tls_failure(args: argparse.Namespace, error: ssl.SSLError) -> str:
    """Turn OpenSSL's terse reason into which file is wrong and how."""
    key_flag, key = ("--tls-key", args.tls_key) if args.tls_key else ("--tls-cert", args.tls_cert)
    if error.reason == "KEY_VALUES_MISMATCH":
        return f"the key in {key_flag} {key} is not the key of --tls-cert {args.tls_cert}"
    if not _holds_certificate(args.tls_cert):
        return f"--tls-cert {args.tls_cert} holds no PEM certificate"
    if args.client_ca is not None and not _holds_certificate(args.client_ca):
        return f"--client-ca {args.client_ca} holds no PEM certificate"
    # OpenSSL says only "PEM lib" when it finds no key, so its reason is kept for the others.
    detail = f" ({error.reason})" if error.reason else ""
    hint = "" if args.tls_key else "; name the key's own file with --tls-key"
    return f"{key_flag} {key} holds no usable PEM private key{detail}{hint}"


def _load_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """Build the server's TLS context from the flags; None without ``--tls-cert``.

    Raises:
        _CommandError: if a file is missing, unreadable or not what it should be.
    """
    if args.tls_cert is None:
        return None
    for flag, path in (
        ("--tls-cert", args.tls_cert),
        ("--tls-key", args.tls_key),
        ("--client-ca", args.client_ca),
    ):
        if path is not None:
            _check_readable(flag, path)
    try:
        return server_tls_context(
            args.tls_cert, args.tls_key, client_certs=args.client_certs, cafile=args.client_ca
        )
    except ssl.SSLError as error:
        raise _CommandError(_explain_tls_failure(args, error)) from None
    except OSError as error:
        raise _CommandError(f"cannot load the TLS files: {error}") from None


def _load_users(args: argparse.Namespace) -> PasswordFile | None:
    """Read the ``--auth-users`` file; None without that flag.

    Raises:
        _CommandError: if the file is missing, unreadable, malformed or lists nobody.
    """
    path = args.auth_users
    if path is None:
        return None
    try:
        users = PasswordFile(path)
    except OSError as error:
        raise _CommandError(
            f"cannot read --auth-users {path}: {error.strerror or error}"
        ) from None
    except UnicodeDecodeError:
        raise _CommandError(f"--auth-users {path} is not UTF-8 text") from None
    except ValueError as error:
        # PasswordFile's messages give a line number, never the line: it may hold a password.
        raise _CommandError(f"--auth-users {path}: {error}") from None
    if not len(users):
        raise _CommandError(f"--auth-users {path} lists no user")
    return users


def _read_password(user: str) -> str:
    """Read the password to hash: twice at a terminal, else one line of standard input.

    Raises:
        _CommandError: if no password came, it was empty, or the two entries differ.
    """
    if sys.stdin is not None and sys.stdin.isatty():
        try:
            password = getpass.getpass(f"Password for {user}: ")
            again = getpass.getpass(f"The same password for {user} again: ")
        except (EOFError, KeyboardInterrupt):
            raise _CommandError("no password given") from None
        if password != again:
            raise _CommandError("the two passwords differ")
    else:
        line = sys.stdin.buffer.readline() if sys.stdin is not None else b""
        if not line:
            raise _CommandError("no password on standard input")
        try:
            password = line.decode("utf-8").removesuffix("\n").removesuffix("\r")
        except UnicodeDecodeError:
            raise _CommandError("the password on standard input is not UTF-8") from None
    if not password:
        raise _CommandError("an empty password is refused")
    return password


def _print_password_line(user: str) -> int:
    """``--hash-password``: print the ``user:hash`` line for a password file; exit status."""
    try:
        password = _read_password(user)
    except _CommandError as error:
        print(f"fastsmtp: {error}", file=sys.stderr)
        return 1
    print(f"{user}:{hash_password(password)}", flush=True)
    return 0


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


def _describe_endpoints(server: SMTPServer) -> str:
    """Say where the running server listens and how: ``127.0.0.1:465 (implicit TLS)``."""
    described = []
    for endpoint in server.endpoints:
        if endpoint.implicit_tls:
            mode = " (implicit TLS)"
        elif server.tls is not None and endpoint.starttls:
            mode = " (STARTTLS)"
        else:
            mode = ""
        described += [_format_address(address) + mode for address in endpoint.addresses]
    return ", ".join(described)


def _loop_name(loop: asyncio.AbstractEventLoop) -> str:
    # uvloop.Loop lives in uvloop, asyncio's loops in asyncio.unix_events and the like.
    return type(loop).__module__.partition(".")[0]


async def _serve(server: SMTPServer, sink: MessageSink) -> None:
    async with server:
        loop = asyncio.get_running_loop()
        stopper = _SignalStop(server)
        stopper.install(loop)
        print(
            f"fastsmtp {__version__} listening on {_describe_endpoints(server)}, "
            f"storing messages in {sink.describe()} "
            f"(hot path: {server.implementation}), loop: {_loop_name(loop)}; Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        await server.serve_forever()
        await stopper.finished()


def _settings(args: argparse.Namespace) -> str:
    """The flags in force, for the DEBUG log: file names, never what the files hold."""
    files = ("tls_cert", "tls_key", "tls_port", "client_certs", "client_ca", "auth_users")
    shown = {**_server_options(args), "loop": args.loop}
    shown.update((name, getattr(args, name)) for name in files)
    return ", ".join(f"{name}={value}" for name, value in shown.items() if value is not None)


def _ports(args: argparse.Namespace) -> str:
    return f"port {args.port}" + (f" or {args.tls_port}" if args.tls_port is not None else "")


def _log_auth(users: PasswordFile, args: argparse.Namespace) -> None:
    where = "before and after TLS" if args.allow_plaintext_auth else "over TLS only"
    required = ", required before MAIL" if args.require_auth else ""
    cli_log.info(
        "AUTH PLAIN and LOGIN for %d user(s) from %s, %s%s",
        len(users),
        users.path,
        where,
        required,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fastsmtp`` command until it is stopped; return its exit status.

    Args:
        argv: the arguments, without the program name; None reads ``sys.argv``.

    Returns:
        0 after a graceful stop (or a printed ``--hash-password`` line), 1 if the server
        could not start (address in use, Maildir not creatable, a TLS or users file missing
        or unusable) or no password came for ``--hash-password``. Invalid arguments and
        inconsistent combinations exit with status 2, as argparse does.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.hash_password is not None:
        return _print_password_line(args.hash_password)
    _check_combinations(parser, args)

    try:
        server = smtp_server(args.port, _hosts(args), **_server_options(args))
        if args.tls_port is not None:
            server.add_endpoint(args.tls_port, _hosts(args), implicit_tls=True)
    except (TypeError, ValueError) as error:
        parser.error(str(error))

    handler = _configure_logging(args)
    try:
        cli_log.debug("settings: %s", _settings(args))
        if use_mmap_for_large_blocks():
            cli_log.debug("malloc: blocks of %d octets and more from mmap", MMAP_THRESHOLD)
        try:
            server.tls = _load_tls(args)
            users = _load_users(args)
        except _CommandError as error:
            cli_log.error("%s", error)
            return 1
        if users is not None:
            server.auth_listener(users)
            _log_auth(users, args)

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

        # asyncio.run() takes no loop factory before Python 3.12; its Runner does.
        loop_factory = functools.partial(new_event_loop, args.loop)
        try:
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                runner.run(_serve(server, sink))
        except OSError as error:
            cli_log.error("cannot listen on %s: %s", _ports(args), error)
            return 1
        except KeyboardInterrupt:
            # Only where the loop has no signal handlers: the runner has already let the
            # server stop gracefully before raising this.
            pass
        return 0
    finally:
        logging.getLogger().removeHandler(handler)
