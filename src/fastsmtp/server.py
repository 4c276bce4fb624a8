"""The server object: options set like a builder, listeners, and its life cycle.

``smtp_server(port=...)`` returns an ``SMTPServer``. It serves either from a thread of its own
(``start()`` / ``stop()``, as SimpleKotlinMail does) or on the caller's event loop
(``async with server:`` / ``await server.serve_forever()``). Besides its primary address it
may listen on more endpoints (``add_endpoint``), each plain, with STARTTLS or implicit TLS.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, Generic, ParamSpec, Self, TypeVar, overload

from . import _wire
from ._accept_errors import AcceptErrorReporter
from ._protocol import Listener, SMTPProtocol, TaskStarter, is_coroutine_listener, task_starter
from ._session import SessionCore
from ._session_config import BARE_LINE_ENDINGS, SessionConfig
from ._session_events import AuthAttempt, MailFrom, MessageReceived, RcptTo
from .auth import MECHANISMS
from .endpoints import Endpoint
from .log import server_log

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "SMTPServer", "new_event_loop", "smtp_server"]

T = TypeVar("T")
S = TypeVar("S")
P = ParamSpec("P")
F = TypeVar("F", bound=Callable[..., Any])

# As much as asyncio's selector loop reads at once.
_RECEIVE_BUFFER_SIZE = 256 * 1024

# Enforced unless set otherwise; RFC 5321 §4.5.3.1.7 asks servers to take at least 64 KiB.
DEFAULT_MAX_MESSAGE_SIZE = 32 * 1024 * 1024


def _positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


def _optional_positive_int(name: str, value: object) -> int | None:
    return None if value is None else _positive_int(name, value)


def _port(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value <= 65535:
        raise ValueError(f"{name} must be between 0 and 65535, got {value}")
    return value


def _host(name: str, value: object) -> str | tuple[str, ...] | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Sequence) and value and all(isinstance(h, str) for h in value):
        return tuple(value)
    raise TypeError(f"{name} must be a str, a sequence of str or None, got {value!r}")


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _tls_context(name: str, value: object) -> ssl.SSLContext | None:
    if value is not None and not isinstance(value, ssl.SSLContext):
        raise TypeError(f"{name} must be an ssl.SSLContext or None, got {type(value).__name__}")
    return value


def _hostname(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value or not value.isprintable() or " " in value:
        raise ValueError(f"{name} must be a non-empty name without spaces, got {value!r}")
    return value


_EVENT_LOOPS = ("asyncio", "uvloop", "auto")


def _event_loop(name: str, value: object) -> str:
    if value not in _EVENT_LOOPS:
        raise ValueError(f"{name} must be one of {', '.join(_EVENT_LOOPS)}, got {value!r}")
    assert isinstance(value, str)
    return value


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """Create an event loop of ``kind``: "asyncio", "uvloop", or "auto" (uvloop if installed).

    Raises:
        ImportError: for "uvloop" when uvloop is not installed.
    """
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()


def _bare_line_endings(name: str, value: object) -> str:
    if value not in BARE_LINE_ENDINGS:
        raise ValueError(f"{name} must be one of {', '.join(BARE_LINE_ENDINGS)}, got {value!r}")
    assert isinstance(value, str)
    return value


def _seconds(name: str, value: object) -> float:
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"{name} must be seconds or a timedelta, got {type(value).__name__}")
    if not seconds > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return seconds


class _Option(Generic[T, S]):
    """A validated server option that cannot change while the server runs.

    ``T`` is the type it is read as, ``S`` what may be assigned (a timeout takes a
    ``timedelta`` too and is read in seconds), so type checkers catch a wrong assignment.
    """

    def __init__(self, validate: Callable[[str, S], T]) -> None:
        self._validate = validate
        self._name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> _Option[T, S]: ...

    @overload
    def __get__(self, obj: SMTPServer, objtype: type | None = None) -> T: ...

    def __get__(self, obj: SMTPServer | None, objtype: type | None = None) -> T | _Option[T, S]:
        if obj is None:
            return self
        value: T = obj._options[self._name]
        return value

    def __set__(self, obj: SMTPServer, value: S) -> None:
        if obj._frozen:
            raise RuntimeError(f"cannot change {self._name} while the server is running")
        obj._options[self._name] = self._validate(self._name, value)


class SMTPServer:
    """An SMTP server, configured like a builder, serving until stopped.

    Options can be passed as keyword arguments or set as attributes before the server
    starts; invalid values raise ``TypeError`` or ``ValueError`` at once.

    Args:
        port: TCP port to listen on; 0 picks a free one (read it from ``bound_port`` once
            started).
        host: address or addresses to bind; None binds every interface.
        hostname: the name the server gives in its greeting and EHLO reply.
        max_recipients: recipients accepted per message; more get ``452 4.5.3``.
        max_connections: connections served at once; more get ``421`` and are closed.
        preferred_max_message_size: advertised with EHLO ``SIZE``; a larger ``SIZE=`` at
            MAIL FROM gets ``552 5.3.4``. None advertises ``max_message_size`` instead.
        max_message_size: the largest message kept; past it the content is read to its end
            and answered with ``552 5.3.4``. None: 32 MiB, or the preferred size if larger.
        connection_timeout: seconds (or a ``timedelta``) the server waits for the client's
            next command before ``421 4.4.2`` and a close. Only a whole command line (or
            message content, in DATA) counts: a line trickled a byte at a time must still
            arrive within it.
        shutdown_grace: seconds ``stop()`` lets transactions in flight finish.
        data_timeout: seconds one message's content may take to arrive, however steadily a
            client trickles it; then ``421 4.4.2`` and a close.
        max_connections_per_address: connections at once from one client address; more get
            ``421`` and are closed. None: no limit besides ``max_connections``.
        max_errors: protocol errors (bad syntax, bad sequence, unknown commands) tolerated on
            one connection; the last one is answered ``421 4.7.0`` and the connection closes.
        max_junk_commands: NOOP, RSET, VRFY, EXPN and HELP commands allowed between two
            accepted messages; past it each is answered as usual and also counts as a
            protocol error (Postfix's junk command limit), so none can hold a connection
            forever.
        bare_line_endings: what to do with a message holding a CR or LF outside a CRLF pair:
            "keep" it as received (the default: nothing is altered, and only CRLF.CRLF ends
            DATA here anyway), "reject" it with ``550 5.5.2`` after its end, or "normalize"
            it to CRLF (for listeners that relay mail to servers less strict than this one).
        event_loop: the loop ``start()`` runs in its thread: "asyncio", "uvloop", or "auto"
            (uvloop when installed). The asynchronous forms use the caller's loop.
        tls: an ``ssl.SSLContext`` (see ``fastsmtp.server_tls_context``) that enables
            STARTTLS (RFC 3207) on plain endpoints and serves implicit-TLS ones. None: no TLS.
        implicit_tls: True to speak TLS from the first byte on the primary address
            (RFC 8314, usually port 465); needs ``tls``.
        require_tls: refuse MAIL, RCPT, DATA, AUTH, VRFY, EXPN and HELP with ``530 5.7.0``
            until TLS is active; needs ``tls``.
        tls_handshake_timeout: seconds a TLS handshake may take before the connection closes.
        allow_plaintext_auth: offer AUTH before TLS too (it is offered over TLS only, as
            RFC 4954 §4 advises for PLAIN and LOGIN, and answered ``538 5.7.11`` before).
        require_auth: refuse MAIL with ``530 5.7.0`` until AUTH succeeded; needs an
            ``auth_listener``.
        max_auth_failures: failed AUTH attempts on one connection before ``421 4.7.0`` and a
            close.
    """

    port: _Option[int, int] = _Option(_port)
    host: _Option[str | tuple[str, ...] | None, str | Sequence[str] | None] = _Option(_host)
    hostname: _Option[str, str] = _Option(_hostname)
    max_recipients: _Option[int, int] = _Option(_positive_int)
    max_connections: _Option[int, int] = _Option(_positive_int)
    preferred_max_message_size: _Option[int | None, int | None] = _Option(_optional_positive_int)
    max_message_size: _Option[int | None, int | None] = _Option(_optional_positive_int)
    connection_timeout: _Option[float, float | timedelta] = _Option(_seconds)
    shutdown_grace: _Option[float, float | timedelta] = _Option(_seconds)
    data_timeout: _Option[float, float | timedelta] = _Option(_seconds)
    max_connections_per_address: _Option[int | None, int | None] = _Option(_optional_positive_int)
    max_errors: _Option[int, int] = _Option(_positive_int)
    max_junk_commands: _Option[int, int] = _Option(_positive_int)
    bare_line_endings: _Option[str, str] = _Option(_bare_line_endings)
    event_loop: _Option[str, str] = _Option(_event_loop)
    tls: _Option[ssl.SSLContext | None, ssl.SSLContext | None] = _Option(_tls_context)
    implicit_tls: _Option[bool, bool] = _Option(_flag)
    require_tls: _Option[bool, bool] = _Option(_flag)
    tls_handshake_timeout: _Option[float, float | timedelta] = _Option(_seconds)
    allow_plaintext_auth: _Option[bool, bool] = _Option(_flag)
    require_auth: _Option[bool, bool] = _Option(_flag)
    max_auth_failures: _Option[int, int] = _Option(_positive_int)

    def __setattr__(self, name: str, value: object) -> None:
        # A misspelt option (server.max_recipent = 5) must fail, not be quietly ignored.
        # Only on this class: a subclass may add attributes of its own.
        if type(self) is SMTPServer and not name.startswith("_") and not hasattr(SMTPServer, name):
            raise AttributeError(f"{type(self).__name__} has no option {name!r}")
        super().__setattr__(name, value)

    def __init__(
        self,
        port: int = 25,
        host: str | Sequence[str] | None = None,
        *,
        hostname: str | None = None,
        max_recipients: int = 1000,
        max_connections: int = 1000,
        preferred_max_message_size: int | None = None,
        max_message_size: int | None = None,
        connection_timeout: float | timedelta = 60.0,
        shutdown_grace: float | timedelta = 30.0,
        data_timeout: float | timedelta = 600.0,
        max_connections_per_address: int | None = None,
        max_errors: int = 20,
        max_junk_commands: int = 100,
        bare_line_endings: str = "keep",
        event_loop: str = "asyncio",
        tls: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        require_tls: bool = False,
        tls_handshake_timeout: float | timedelta = 30.0,
        allow_plaintext_auth: bool = False,
        require_auth: bool = False,
        max_auth_failures: int = 3,
    ) -> None:
        self._options: dict[str, Any] = {}
        self._running = False
        # Options, listeners and endpoints are read once as the server starts: they stay
        # fixed from then on, the binds included, until it has stopped.
        self._frozen = False
        self.port = port
        self.host = host
        self.hostname = hostname if hostname is not None else socket.gethostname()
        self.max_recipients = max_recipients
        self.max_connections = max_connections
        self.preferred_max_message_size = preferred_max_message_size
        self.max_message_size = max_message_size
        self.connection_timeout = connection_timeout
        self.shutdown_grace = shutdown_grace
        self.data_timeout = data_timeout
        self.max_connections_per_address = max_connections_per_address
        self.max_errors = max_errors
        self.max_junk_commands = max_junk_commands
        self.bare_line_endings = bare_line_endings
        self.event_loop = event_loop
        self.tls = tls
        self.implicit_tls = implicit_tls
        self.require_tls = require_tls
        self.tls_handshake_timeout = tls_handshake_timeout
        self.allow_plaintext_auth = allow_plaintext_auth
        self.require_auth = require_auth
        self.max_auth_failures = max_auth_failures

        self._from_listeners: list[Listener] = []
        self._recipient_listeners: list[Listener] = []
        self._mail_listeners: list[Listener] = []
        self._auth_listeners: list[Listener] = []
        # The primary endpoint is made from port, host and implicit_tls when serving starts.
        self._primary: Endpoint | None = None
        self._extra_endpoints: list[Endpoint] = []

        # The twin of the hot path this server uses; tests set it to run on both.
        self._wire = _wire.load(_wire.IMPLEMENTATION)

        # Filled in when serving starts.
        self._config: SessionConfig | None = None
        # Tests may swap _wire for the other twin until start, which pairs the core with it.
        self._session_core: type[SessionCore] = SessionCore
        # Options read per connection or per message, copied here: an option is a descriptor,
        # a Python call per read. They cannot change while the server runs.
        self._timeout_seconds = 60.0
        self._data_timeout = 600.0
        self._max_connections = 1000
        self._per_address_limit: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start_task: TaskStarter  # starts listener tasks on _loop, set with it
        self._listeners: dict[type, list[Listener]] = {}
        self._servers: list[asyncio.Server] = []
        self._accept_errors: AcceptErrorReporter | None = None
        self._connections: set[SMTPProtocol] = set()
        self._per_address: dict[object, int] = {}
        self._closing = False
        self._all_closed: asyncio.Event | None = None
        self._stopped: asyncio.Event | None = None
        self._stop_requested: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._listener_threads: set[int] = set()
        self._stopping: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        # Every connection's reads land here first; one loop thread, so one buffer serves all.
        self._receive_buffer = memoryview(bytearray(_RECEIVE_BUFFER_SIZE))
        self._session_ids = itertools.count(1)
        self._session_prefix = ""

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<SMTPServer {self.hostname} port={self.port} {state}>"

    # Listeners

    def from_listener(self, listener: F) -> F:
        """Register a listener for MAIL FROM; it gets an ``IncomingFrom``. Usable as decorator."""
        return self._register(self._from_listeners, listener)

    def recipient_listener(self, listener: F) -> F:
        """Register a listener for RCPT TO; it gets an ``IncomingRecipient``."""
        return self._register(self._recipient_listeners, listener)

    def mail_listener(self, listener: F) -> F:
        """Register a listener for the end of DATA; it gets an ``IncomingMail``."""
        return self._register(self._mail_listeners, listener)

    def auth_listener(self, listener: F) -> F:
        """Register a listener for AUTH; it gets an ``IncomingAuth`` and accepts by returning.

        Registering one makes the server offer AUTH PLAIN and LOGIN (over TLS only, unless
        ``allow_plaintext_auth``). ``reject()`` refuses the credentials with ``535 5.7.8``; a
        listener that raises anything else gets the client ``454 4.7.0``. Plain functions run
        in a worker thread, so a slow password hash never stalls other connections.
        """
        return self._register(self._auth_listeners, listener)

    def _register(self, listeners: list[Listener], listener: F) -> F:
        if not callable(listener):
            raise TypeError(f"a listener must be callable, got {type(listener).__name__}")
        if self._frozen:
            raise RuntimeError("cannot add a listener while the server is running")
        listeners.append((listener, is_coroutine_listener(listener)))
        return listener

    # Life cycle from synchronous code

    @property
    def is_running(self) -> bool:
        """True from a successful start until the server has stopped."""
        return self._running

    def start(self) -> Self:
        """Bind now and serve from a background thread; return at once.

        The thread is not a daemon: the process stays alive until ``stop()``.

        Raises:
            OSError: if the address cannot be bound.
            RuntimeError: if the server is already running.
        """
        if self._running:
            raise RuntimeError("the server is already running")
        ready = threading.Event()
        failure: list[BaseException] = []
        # Not a daemon, even when started from one: the server keeps the process alive.
        thread = threading.Thread(
            target=self._thread_main, args=(ready, failure), name="fastsmtp-server", daemon=False
        )
        thread.start()
        ready.wait()
        if failure:
            thread.join()
            raise failure[0]
        self._thread = thread
        return self

    def stop(self) -> None:
        """Stop accepting, let transactions finish within ``shutdown_grace``, close the rest
        with ``421``, and return when every connection is closed."""
        loop = self._loop
        if not self._running or loop is None:
            return
        if self._thread is None:
            if _running_loop() is loop:
                raise RuntimeError("stop() would block the server's own loop; use stop_async()")
            stopping = asyncio.run_coroutine_threadsafe(self.stop_async(), loop)
            if threading.get_ident() not in self._listener_threads:
                stopping.result()
            return
        if threading.current_thread() is self._thread:
            raise RuntimeError("stop() cannot be called from the server's own thread")
        assert self._stop_requested is not None
        loop.call_soon_threadsafe(self._stop_requested.set)
        if threading.get_ident() in self._listener_threads:
            # Waiting here would wait for this very listener's transaction: just ask.
            return
        self._thread.join()
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _thread_main(self, ready: threading.Event, failure: list[BaseException]) -> None:
        try:
            loop = new_event_loop(self.event_loop)
        except BaseException as error:  # noqa: BLE001 - re-raised by start()
            failure.append(error)
            ready.set()
            return
        try:
            loop.run_until_complete(self._serve_in_thread(ready, failure))
        finally:
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    async def _serve_in_thread(self, ready: threading.Event, failure: list[BaseException]) -> None:
        try:
            await self._open()
        except BaseException as error:  # noqa: BLE001 - re-raised by start()
            failure.append(error)
            ready.set()
            return
        ready.set()
        await self.serve_forever()

    # Life cycle on the caller's event loop

    async def __aenter__(self) -> Self:
        await self._open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop_async()

    async def serve_forever(self) -> None:
        """Serve on the running loop until ``stop()``, ``stop_async()`` or cancellation.

        Raises:
            RuntimeError: if the server already runs on another event loop.
        """
        if not self._running:
            await self._open()
        elif self._loop is not asyncio.get_running_loop():
            raise RuntimeError("the server already runs on another event loop")
        assert self._stop_requested is not None
        try:
            await self._stop_requested.wait()
        finally:
            await self.stop_async()

    async def stop_async(self) -> None:
        """The awaitable form of ``stop()``, for code running on the server's loop."""
        if not self._running:
            return
        loop = self._loop
        assert loop is not None
        if loop is not asyncio.get_running_loop():
            # The server runs elsewhere (its own thread, say): stop it there, wait here.
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.stop_async(), loop))
            if self._thread is not None and self._thread is not threading.current_thread():
                await asyncio.to_thread(self._thread.join)
            return
        if self._is_listener_task(asyncio.current_task()):
            # Awaiting the stop would wait for this listener's own transaction: start it only.
            if not self._closing:
                self._stopping = asyncio.get_running_loop().create_task(self._shutdown())
            return
        if self._closing:
            assert self._stopped is not None
            await self._stopped.wait()
            return
        await self._shutdown()

    @property
    def implementation(self) -> str:
        """Which twin of the hot path this server runs: ``"c"`` or ``"py"``."""
        return "c" if self._wire.__name__.endswith("_c") else "py"

    # Endpoints and bound addresses

    def add_endpoint(
        self,
        port: int,
        host: str | Sequence[str] | None = None,
        *,
        implicit_tls: bool = False,
        starttls: bool = True,
    ) -> Endpoint:
        """Listen on one more port besides the primary ``port`` and ``host``.

        Every endpoint shares the server's listeners, options and connection limits.

        >>> server = smtp_server(port=587, tls=context)
        >>> smtps = server.add_endpoint(465, implicit_tls=True)

        Args:
            port: TCP port; 0 picks a free one (read it back from the endpoint's
                ``bound_port`` once the server runs).
            host: address or addresses to bind; None binds every interface.
            implicit_tls: TLS from the first byte (RFC 8314); needs the ``tls`` option.
            starttls: whether a plain endpoint offers STARTTLS when ``tls`` is set; False
                makes it plain only.

        Raises:
            TypeError, ValueError: for an invalid port or host.
            RuntimeError: if the server is running.
        """
        if self._frozen:
            raise RuntimeError("cannot add an endpoint while the server is running")
        endpoint = Endpoint(
            _port("port", port),
            _host("host", host),
            implicit_tls=_flag("implicit_tls", implicit_tls),
            starttls=_flag("starttls", starttls),
        )
        self._extra_endpoints.append(endpoint)
        return endpoint

    @property
    def endpoints(self) -> list[Endpoint]:
        """Every endpoint, the primary one (``port``, ``host``, ``implicit_tls``) first."""
        primary = self._primary
        if primary is None or not self._running:
            primary = Endpoint(self.port, self.host, implicit_tls=self.implicit_tls)
        return [primary, *self._extra_endpoints]

    @property
    def addresses(self) -> list[tuple[Any, ...]]:
        """Every socket address the running server listens on."""
        return [sock.getsockname() for srv in self._servers for sock in srv.sockets]

    @property
    def address(self) -> tuple[Any, ...]:
        """The first address the running server listens on, such as ``("127.0.0.1", 8025)``."""
        addresses = self.addresses
        if not addresses:
            raise RuntimeError("the server is not running")
        return addresses[0]

    @property
    def bound_port(self) -> int:
        """The port the running server listens on (the one picked when ``port`` was 0)."""
        port: int = self.address[1]
        return port

    # Internals shared with SMTPProtocol

    async def _open(self) -> None:
        if self._frozen:
            raise RuntimeError("the server is already running")
        self._frozen = True
        try:
            await self._open_frozen()
        except BaseException:
            self._frozen = False
            raise

    async def _open_frozen(self) -> None:
        self._config = self._session_config()
        self._session_core = _wire.session_core(self._wire)
        # By the type of the event a session asks about: one lookup per decision.
        self._listeners = {
            MailFrom: self._from_listeners,
            RcptTo: self._recipient_listeners,
            MessageReceived: self._mail_listeners,
            AuthAttempt: self._auth_listeners,
        }
        endpoints = self.endpoints
        self._check_security(endpoints)
        self._timeout_seconds = self.connection_timeout
        self._data_timeout = self.data_timeout
        self._max_connections = self.max_connections
        self._per_address_limit = self.max_connections_per_address
        self._loop = asyncio.get_running_loop()
        self._start_task = task_starter(self._loop)
        self._closing = False
        self._all_closed = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._session_prefix = secrets.token_hex(2)
        # One worker per connection at most, since a connection waits for its listener: so a
        # slow plain-function listener can never hold up another connection's.
        self._executor = ThreadPoolExecutor(
            max_workers=self.max_connections, thread_name_prefix="fastsmtp-listener"
        )
        try:
            for endpoint in endpoints:
                port = endpoint.port
                for host in endpoint.hosts():
                    server = await self._bind(endpoint, host, port)
                    endpoint._servers.append(server)
                    self._servers.append(server)
                    # With port 0, every address shares the port the first bind picked.
                    port = server.sockets[0].getsockname()[1]
        except BaseException:
            for server in self._servers:
                server.close()
            self._servers = []
            for endpoint in endpoints:
                endpoint._servers = []
            raise
        self._primary = endpoints[0]
        self._accept_errors = AcceptErrorReporter(self._loop, self._listening_fds)
        self._accept_errors.install()
        self._running = True
        if not self._mail_listeners:
            server_log.warning("no mail_listener registered: messages are accepted and dropped")
        server_log.info(
            "listening on %s (hot path: %s, loop: %s)",
            ", ".join(self._describe(endpoint) for endpoint in endpoints),
            self.implementation,
            type(self._loop).__module__.split(".")[0],
        )

    async def _bind(self, endpoint: Endpoint, host: str | None, port: int) -> asyncio.Server:
        loop = self._loop
        assert loop is not None
        starttls = self._offers_starttls(endpoint)  # the same for every connection
        # Implicit TLS too is accepted as plain TCP: the protocol runs the handshake itself,
        # after the connection limits, so an unfinished handshake holds a counted slot.
        server = await loop.create_server(
            lambda: SMTPProtocol(self, loop, endpoint, starttls), host=host, port=port
        )
        ports = {sock.getsockname()[1] for sock in server.sockets}
        if port == 0 and len(ports) > 1:
            # Every interface got its own free port: bind them all again to the first one.
            first = server.sockets[0].getsockname()[1]
            server.close()
            await server.wait_closed()
            return await self._bind(endpoint, host, first)
        return server

    def _describe(self, endpoint: Endpoint) -> str:
        """Say where ``endpoint`` listens and how: ``127.0.0.1:465 (implicit TLS)``."""
        where = ", ".join(_format_address(address) for address in endpoint.addresses)
        if endpoint.implicit_tls:
            return f"{where} (implicit TLS)"
        return f"{where} (STARTTLS)" if self._offers_starttls(endpoint) else where

    def _check_security(self, endpoints: list[Endpoint]) -> None:
        """Refuse at start the TLS and AUTH settings that cannot work together."""
        if self.tls is None:
            if any(endpoint.implicit_tls for endpoint in endpoints):
                raise ValueError("implicit TLS needs the tls option (an ssl.SSLContext)")
            if self.require_tls:
                raise ValueError("require_tls needs the tls option (an ssl.SSLContext)")
        if self.require_tls and any(
            not endpoint.implicit_tls and not endpoint.starttls for endpoint in endpoints
        ):
            raise ValueError("require_tls with a plain endpoint that offers no STARTTLS")
        if self.require_auth and not self._auth_listeners:
            raise ValueError("require_auth needs an auth_listener")

    def _offers_starttls(self, endpoint: Endpoint | None) -> bool:
        """True if connections to ``endpoint`` may use STARTTLS."""
        if self.tls is None:
            return False
        return endpoint is None or (endpoint.starttls and not endpoint.implicit_tls)

    def _session_config(self) -> SessionConfig:
        preferred = self.preferred_max_message_size
        limit = self.max_message_size
        if limit is None:
            limit = max(DEFAULT_MAX_MESSAGE_SIZE, preferred or 0)
        elif preferred is not None and preferred > limit:
            raise ValueError(
                f"preferred_max_message_size ({preferred}) exceeds max_message_size ({limit})"
            )
        return SessionConfig(
            hostname=self.hostname,
            max_recipients=self.max_recipients,
            max_message_size=limit,
            preferred_max_message_size=preferred,
            decide_mail_from=bool(self._from_listeners),
            decide_rcpt_to=bool(self._recipient_listeners),
            max_errors=self.max_errors,
            max_junk_commands=self.max_junk_commands,
            bare_line_endings=self.bare_line_endings,
            require_tls=self.require_tls,
            auth_mechanisms=MECHANISMS if self._auth_listeners else (),
            allow_plaintext_auth=self.allow_plaintext_auth,
            require_auth=self.require_auth,
            max_auth_failures=self.max_auth_failures,
        )

    async def _shutdown(self) -> None:
        self._closing = True
        assert self._all_closed is not None and self._stop_requested is not None
        self._stop_requested.set()
        for server in self._servers:
            server.close()
        if not self._connections:
            self._all_closed.set()
        for connection in list(self._connections):
            connection.shutdown(force=False)

        try:
            await asyncio.wait_for(self._all_closed.wait(), self.shutdown_grace)
        except TimeoutError:
            server_log.info("grace period over: closing %d connection(s)", len(self._connections))
            for connection in list(self._connections):
                connection.shutdown(force=True)
            await self._all_closed.wait()

        for server in self._servers:
            await server.wait_closed()
        self._servers = []
        if self._accept_errors is not None:
            self._accept_errors.uninstall()
            self._accept_errors = None
        for endpoint in self.endpoints:
            endpoint._servers = []
        if self._executor is not None:
            # Listeners still running in threads finish on their own; nothing waits for them.
            self._executor.shutdown(wait=False)
            self._executor = None
        self._running = False
        self._frozen = False
        assert self._stopped is not None
        self._stopped.set()
        server_log.info("stopped")

    def _next_session_id(self) -> str:
        return f"{self._session_prefix}{next(self._session_ids):x}"

    def _listening_fds(self) -> set[int]:
        """The file descriptors of every listening socket, for the accept error reports."""
        return {sock.fileno() for server in self._servers for sock in server.sockets}

    def _admit(self, connection: SMTPProtocol, peer_host: object) -> bool:
        reporter = self._accept_errors
        if reporter is not None and reporter.failures:
            reporter.accepted()
        if self._closing or len(self._connections) >= self._max_connections:
            return False
        per_address = self._per_address_limit
        if per_address is not None:
            count = self._per_address.get(peer_host, 0)
            if count >= per_address:
                return False
            self._per_address[peer_host] = count + 1
        self._connections.add(connection)
        return True

    def _forget(self, connection: SMTPProtocol, peer_host: object) -> None:
        if connection not in self._connections:
            return
        self._connections.discard(connection)
        if self._per_address_limit is not None:
            count = self._per_address.pop(peer_host, 1) - 1
            if count > 0:
                self._per_address[peer_host] = count
        if self._closing and not self._connections and self._all_closed is not None:
            self._all_closed.set()

    def _is_listener_task(self, task: asyncio.Task[Any] | None) -> bool:
        """True if ``task`` runs the listeners of one of this server's connections."""
        return task is not None and any(c._task is task for c in self._connections)

    def _run_in_worker(self, listener: Callable[[Any], Any], event: Any) -> Any:
        """Call a plain-function listener in a worker thread, known as such to ``stop()``."""
        ident = threading.get_ident()
        self._listener_threads.add(ident)
        try:
            return listener(event)
        except StopIteration as error:
            # A future cannot carry StopIteration: it would leave the decision hanging.
            raise RuntimeError("listener raised StopIteration") from error
        finally:
            self._listener_threads.discard(ident)

    async def _call_in_worker(self, listener: Callable[[Any], Any], event: Any) -> Any:
        """Run a plain-function listener in this server's worker threads and await it."""
        assert self._loop is not None and self._executor is not None
        return await self._loop.run_in_executor(
            self._executor, self._run_in_worker, listener, event
        )


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _format_address(address: tuple[Any, ...]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _with_the_signature_of(
    cls: Callable[P, SMTPServer],
) -> Callable[[Callable[..., SMTPServer]], Callable[P, SMTPServer]]:
    """Give a factory the parameters of ``cls`` for type checkers (one list, not two)."""

    def same(factory: Callable[..., SMTPServer]) -> Callable[P, SMTPServer]:
        return factory

    return same


@_with_the_signature_of(SMTPServer)
def smtp_server(*args: Any, **options: Any) -> SMTPServer:
    """Create an ``SMTPServer``: ``smtp_server(port=25, host=None, **options)``.

    Takes exactly the parameters of ``SMTPServer``; see its documentation for the options.

    >>> server = smtp_server(port=0, host="127.0.0.1", max_recipients=100)
    """
    return SMTPServer(*args, **options)
