"""The asyncio glue of one connection: transport in, session core, listeners, transport out.

Everything SMTP is decided in ``_session``; this module moves bytes, keeps time, calls the
listeners (coroutines on the loop, plain functions in a worker thread) and reports back. It
also runs the TLS handshakes, with ``loop.start_tls()``: the one the session asks for with
STARTTLS, and on an implicit-TLS endpoint the one before the greeting.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from . import replies
from ._session_events import AuthAttempt, MailFrom, MessageReceived, RcptTo, _Close, _StartTLS
from ._state import CLOSED, DATA
from .auth import IncomingAuth
from .context import MessageContext, Session
from .errors import DropConnection, RejectError
from .events import IncomingFrom, IncomingMail, IncomingRecipient
from .log import listener_log, session_log

if TYPE_CHECKING:
    from ._session import SessionCore
    from .endpoints import Endpoint
    from .server import SMTPServer

__all__ = ["Listener", "SMTPProtocol", "task_starter"]

# How long a closing connection may take to flush its last replies before it is aborted.
_FLUSH_SECONDS = 10.0

# A listener and whether it is a coroutine function (run on the loop) or not (in a thread).
Listener = tuple[Callable[[Any], Any], bool]

# What a listener is handed.
Exchange = IncomingFrom | IncomingRecipient | IncomingMail | IncomingAuth


# The clock of idle times and deadlines. Not loop.time(): uvloop's is cached per loop
# iteration, and a deadline reckoned from a stale start would fall due early.
_clock = time.monotonic

# Input a connection may pile up while its listener decides, before it stops reading.
_MAX_PENDING_INPUT = 256 * 1024


class SMTPProtocol(asyncio.BufferedProtocol):
    """One client connection.

    A buffered protocol: the loop reads straight into the server's one receive buffer
    (``get_buffer``), and ``buffer_updated`` hands the bytes to the session, which copies
    them once into its own buffer. That saves the loop's per-read allocation.
    """

    def __init__(
        self,
        server: SMTPServer,
        loop: asyncio.AbstractEventLoop,
        endpoint: Endpoint | None = None,
        starttls: bool = False,
    ) -> None:
        self._server = server
        self._endpoint = endpoint
        self._starttls = starttls  # whether this connection may offer STARTTLS
        # While the STARTTLS handshake runs: decrypted bytes that arrive before the handshake
        # task resumes. None otherwise, when everything received goes to the session.
        self._tls_early: bytearray | None = None
        self._finished = False
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._core: SessionCore | None = None
        self._context: MessageContext | None = None
        self._task: asyncio.Task[None] | None = None
        # True while _advance starts a listener task (which may run eagerly, 3.12+).
        self._starting = False
        # Where _go_on() runs when a listener task resumes the dialogue (see _decide).
        self._callback_context = contextvars.copy_context()
        self._timer: asyncio.TimerHandle | None = None
        # Set while a closing connection flushes its last replies: aborts it if that stalls.
        self._flush_timer: asyncio.TimerHandle | None = None
        self._last_activity = 0.0
        self._opened = 0.0
        self._reading_paused = False
        self._writing_paused = False
        self._close_reason = "client closed the connection"
        self._peer_host: object = None
        # The DATA phase being timed (the session counts them) and when it must end.
        self._data_phase = 0
        self._data_deadline = 0.0

    def __repr__(self) -> str:
        core = self._core
        return f"<SMTPProtocol {core.session!r}>" if core is not None else "<SMTPProtocol>"

    # asyncio callbacks

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # A stream transport, always: uvloop's are not asyncio.Transport subclasses, only alike.
        self._transport = transport
        server = self._server
        session = Session(
            server._next_session_id(),
            transport.get_extra_info("peername"),
            transport.get_extra_info("sockname"),
        )
        self._opened = time.monotonic()
        implicit_tls = self._endpoint is not None and self._endpoint.implicit_tls

        # Refuse before any work when over the limit; the others keep being served.
        peer = session.peer
        self._peer_host = peer[0] if peer else None
        if not server._admit(self, self._peer_host):
            reply = replies.SHUTTING_DOWN if server._closing else replies.TOO_MANY_CONNECTIONS
            session_log.info("%s refused %r: %s", session.session_id, session.peer, reply.text)
            if not implicit_tls:
                # An implicit-TLS client could read the reply only after a handshake: the
                # very work the limit exists to spare. It gets the close alone.
                transport.write(reply.wire)
            transport.close()
            return

        assert server._config is not None
        core = server._session_core(
            server._config,
            server._wire,
            session,
            tls=implicit_tls,
            starttls=self._starttls,
        )
        self._core = core
        self._context = MessageContext(session, server)
        if session_log.isEnabledFor(logging.INFO):
            core.on_refuse = self._log_refusal
            session_log.info(
                "%s open peer=%r local=%r tls=%s",
                session.session_id,
                session.peer,
                session.local,
                "implicit" if implicit_tls else "no",
            )
        self._last_activity = _clock()
        self._timer = self._loop.call_later(server._timeout_seconds, self._check_idle)
        if implicit_tls:
            # The greeting follows the handshake (RFC 8314 §3.3), which has its own timeout.
            self._tls_early = bytearray()
            self._task = self._loop.create_task(self._handshake(implicit=True))
        else:
            transport.write(core.greeting())

    def get_buffer(self, sizehint: int) -> memoryview:
        # Safe to share: the loop fills it and calls buffer_updated() before any other read.
        return self._server._receive_buffer

    def buffer_updated(self, nbytes: int) -> None:
        core = self._core
        if core is None:
            return
        if core.state is DATA:
            # Content keeps a client alive (the DATA deadline bounds it); between commands
            # only a whole command does, in _advance, so no line can be trickled forever.
            self._last_activity = _clock()
        if self._tls_early is not None:
            self._tls_early += self._server._receive_buffer[:nbytes]
            return
        core.feed(self._server._receive_buffer[:nbytes])  # type: ignore[arg-type]
        if self._task is None:
            self._advance()
        elif core.buffered() > _MAX_PENDING_INPUT:
            # The client keeps sending while its listener decides: wait for the decision.
            self._pause_reading()

    def data_received(self, data: bytes) -> None:
        """Take received bytes (for transports that do not support buffered reads)."""
        core = self._core
        if core is None:
            return
        if core.state is DATA:
            self._last_activity = _clock()  # as in buffer_updated()
        if self._tls_early is not None:
            self._tls_early += data
            return
        core.feed(data)
        if self._task is None:
            self._advance()
        elif core.buffered() > _MAX_PENDING_INPUT:
            self._pause_reading()

    def eof_received(self) -> bool:
        self._close_reason = "client closed the connection"
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        # Also called by a failed STARTTLS handshake, which the loop may report again later.
        if self._finished:
            return
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
        if self._flush_timer is not None:
            # Not left to expire: at thousands of connections a second, timers kept for
            # _FLUSH_SECONDS each pile up in the loop (tens of MiB, a slower timer heap).
            self._flush_timer.cancel()
        if self._task is not None:
            self._task.cancel()
        core = self._core
        if core is None:
            return
        # After our own close an error is no news (a TLS client that leaves without
        # answering close_notify resets the connection): the reason stays ours.
        if exc is not None and core.state is not CLOSED:
            self._close_reason = f"connection error: {exc}"
        try:
            session_log.info(
                "%s closed: %s, %.3fs, %d message(s) accepted",
                core.session.session_id,
                self._close_reason,
                time.monotonic() - self._opened,
                core.session.messages_accepted,
            )
        finally:
            # Last, so whoever sees the connection gone (a stop, a test) finds its line
            # logged; and whatever a logging filter raises, or a stop would wait forever.
            self._server._forget(self, self._peer_host)

    def pause_writing(self) -> None:
        # The client does not read its replies: stop reading its commands until it does.
        self._writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._task is None:
            self._resume_reading()

    # Driving the session

    def _advance(self) -> None:
        """Step the session until it needs input, a listener's decision, or closes."""
        core = self._core
        transport = self._transport
        assert core is not None and transport is not None
        try:
            while True:
                event = core.step()
                out = core.take_output()
                if out:
                    # A reply means a whole command (or message) arrived: the client is active.
                    self._last_activity = _clock()
                    transport.write(out)
                if event is None:
                    if core.state is DATA and self._data_phase != core.data_phases:
                        self._data_phase = core.data_phases
                        self._data_deadline = _clock() + self._server._data_timeout
                    return
                if isinstance(event, _Close):
                    self._close(None, core.close_reason)
                    return
                if isinstance(event, _StartTLS):
                    self._start_tls()
                    return
                listeners = self._server._listeners[type(event)]
                if not listeners:
                    # Unchecked credentials are refused; AUTH is not offered without a listener.
                    if isinstance(event, AuthAttempt):
                        core.reject(replies.AUTH_FAILED)
                    else:
                        core.accept()
                    continue
                # Input arriving while the listeners decide is only buffered (buffer_updated).
                self._starting = True
                try:
                    task = self._server._start_task(self._decide(event, listeners))
                finally:
                    self._starting = False
                if task.done():
                    # Decided without suspending (Python 3.12+ runs the first step eagerly).
                    self._task = None
                    continue
                self._task = task
                return
        except Exception:  # noqa: BLE001 - logged with its traceback right below
            # A bug of ours must cost one connection, never the server.
            session_log.exception("%s internal error", core.session.session_id)
            self._close(replies.LOCAL_ERROR_CLOSING, "internal error")

    def _go_on(self) -> None:
        """Go on with the dialogue once listeners that had to wait have decided."""
        self._task = None
        if self._transport is None or self._transport.is_closing():
            return
        self._last_activity = _clock()
        self._advance()
        if self._reading_paused and self._task is None and not self._writing_paused:
            self._resume_reading()

    async def _decide(
        self, event: MailFrom | RcptTo | MessageReceived | AuthAttempt, listeners: list[Listener]
    ) -> None:
        core = self._core
        assert core is not None
        if self._starting:
            # Started eagerly (3.12+): known as this connection's listener task from its first
            # step, which may call stop_async(). Otherwise _advance already set it.
            self._task = asyncio.current_task()
        exchange = self._exchange_for(event)
        ending = False  # our own cancellation, or the coroutine being closed
        try:
            try:
                for listener, is_coroutine in listeners:
                    if is_coroutine:
                        await listener(exchange)
                    else:
                        result = await self._server._call_in_worker(listener, exchange)
                        if inspect.isawaitable(result):
                            await result
                # A text a listener set is checked here: if it is unusable, the listener failed.
                text = exchange.response_text if isinstance(exchange, IncomingMail) else None
                core.accept(text)
            except DropConnection as drop:
                core.reject(drop.reply, close=True)
            except RejectError as rejection:
                core.reject(rejection.reply)
            except (KeyboardInterrupt, GeneratorExit):
                ending = True
                raise
            except BaseException as error:
                # Only our own cancellation (stop, a lost connection) ends the task. A
                # listener's CancelledError or SystemExit is its failure: left to rise, it
                # would leave the client without a reply, or end the loop while the port
                # stays bound.
                task = asyncio.current_task()
                if isinstance(error, asyncio.CancelledError) and task and task.cancelling():
                    ending = True
                    self._task = None
                    raise
                self._listener_failed(exchange, listener, error)
            else:
                if isinstance(exchange, IncomingAuth):
                    # Not the user name: it is half of the credentials.
                    session_log.info(
                        "%s authenticated with %s", core.session.session_id, exchange.mechanism
                    )
        finally:
            if not ending and not self._starting:
                # Decided after waiting: go on from this task, not from a done callback, which
                # costs a trip through the loop per message; even after a failure of ours, so
                # the connection is never left waiting. In the connection's own context: what
                # a listener set in its context must not leak into the next listener's.
                self._callback_context.run(self._go_on)

    def _listener_failed(
        self, exchange: Exchange, listener: Callable[..., Any], error: BaseException
    ) -> None:
        """Log a listener that raised, and refuse what it was asked about."""
        core = self._core
        assert core is not None
        if isinstance(exchange, IncomingAuth):
            # Neither the exception's text nor its traceback: either may quote a password.
            listener_log.error(
                "%s auth listener failed: %s at %s (message withheld)",
                core.session.session_id,
                type(error).__name__,
                _where(error),
            )
            core.reject(replies.AUTH_TEMPORARY_FAILURE)
            return
        # One line with the traceback; the client gets no exception text (RFC 5321 451).
        listener_log.error(
            "%s %s listener %s failed",
            core.session.session_id,
            type(exchange).__name__,
            _name_of(listener),
            exc_info=error,
        )
        core.reject(replies.LOCAL_ERROR)

    def _exchange_for(self, event: MailFrom | RcptTo | MessageReceived | AuthAttempt) -> Exchange:
        core = self._core
        context = self._context
        assert core is not None and context is not None
        if isinstance(event, AuthAttempt):
            return IncomingAuth(
                context, event.mechanism, event.username, event.password, event.authorization_id
            )
        if isinstance(event, MessageReceived):
            return IncomingMail(
                context, core.envelope_from or "", tuple(core.recipients), event.data
            )
        if isinstance(event, RcptTo):
            current = (*core.recipients, event.address)
            return IncomingRecipient(context, core.envelope_from or "", event.address, current)
        return IncomingFrom(context, event.address)

    # STARTTLS (RFC 3207)

    def _start_tls(self) -> None:
        """Start the handshake the session asked for; until it ends the session reads nothing."""
        core = self._core
        assert core is not None
        if core.discarded_after_starttls:
            session_log.info(
                "%s dropped %d octet(s) sent after STARTTLS before the handshake",
                core.session.session_id,
                core.discarded_after_starttls,
            )
        # What arrives from now on belongs to the TLS layer (see _handshake), not the session.
        self._tls_early = bytearray()
        self._task = self._loop.create_task(self._handshake())

    async def _handshake(self, implicit: bool = False) -> None:
        """Run a TLS handshake: STARTTLS's, or with ``implicit`` the first thing said."""
        core = self._core
        transport = self._transport
        server = self._server
        assert core is not None and transport is not None and server.tls is not None
        failure = "client closed the connection during the TLS handshake"
        # Bytes that reached us before start_tls() below took the transport (uvloop reads
        # before this task runs) are the client's first TLS flight, or garbage that fails the
        # handshake; never commands. The TLS layer gets them once it is on the transport.
        before, self._tls_early = self._tls_early, bytearray()
        if before:
            self._loop.call_soon(self._hand_to_tls, transport, bytes(before))
        # From here on the transport hands its bytes to the TLS layer, not to us: whatever
        # reaches buffer_updated() now was decrypted after a successful handshake.
        try:
            tls_transport = await self._loop.start_tls(
                transport,
                self,
                server.tls,
                server_side=True,
                ssl_handshake_timeout=server.tls_handshake_timeout,
            )
        except BaseException as error:
            tls_transport = None
            failure = f"TLS handshake failed: {type(error).__name__}: {error}"[:200]
            if isinstance(error, asyncio.CancelledError):
                self._task = None
                self._tls_failed(transport, "server shutting down during the TLS handshake")
                raise
        finally:
            self._task = None
            early, self._tls_early = self._tls_early, None

        # A client that closed cleanly mid-handshake leaves start_tls() returning None.
        if tls_transport is None or tls_transport.is_closing():
            self._tls_failed(transport, failure)
            return

        self._transport = cast(asyncio.Transport, tls_transport)
        self._reading_paused = self._writing_paused = False
        session = core.session
        session.ssl_object = tls_transport.get_extra_info("ssl_object")
        if implicit:
            tls_transport.write(core.greeting())
        else:
            core.tls_established()
        cipher = session.cipher
        session_log.info(
            "%s TLS started: %s %s",
            session.session_id,
            session.tls_version,
            cipher[0] if cipher else "",
        )
        self._last_activity = _clock()
        if early:
            core.feed(bytes(early))
        self._advance()

    def _hand_to_tls(self, transport: asyncio.Transport, data: bytes) -> None:
        """Feed ``data`` to the TLS protocol that start_tls() put on ``transport``.

        Runs before that protocol's connection_made(), which start_tls() schedules after
        this: the TLS layer of asyncio and of uvloop then only keeps the bytes for the
        handshake it is about to start.
        """
        # uvloop's TLS protocol is a buffered protocol in all but its base classes.
        tls_protocol: Any = transport.get_protocol()
        if transport.is_closing():
            return  # start_tls() failed, and the connection with it
        if tls_protocol is self:
            # start_tls() has not taken the transport yet: the order this relies on is gone
            # (a loop that changed). These bytes, and any after them, must never reach the
            # session as if decrypted: end the connection.
            session_log.error("TLS layer not on the transport in time: closing the connection")
            self._tls_failed(transport, "TLS layer not on the transport in time")
            return
        if not hasattr(tls_protocol, "get_buffer"):
            tls_protocol.data_received(data)
            return
        view = memoryview(data)
        while view:
            buffer = tls_protocol.get_buffer(len(view))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            tls_protocol.buffer_updated(size)
            view = view[size:]

    def _tls_failed(self, transport: asyncio.Transport, reason: str) -> None:
        """End a connection whose handshake failed; the server serves on."""
        if self._finished:
            return
        self._close_reason = reason
        if self._core is not None:
            self._core.close(reason=reason)
        transport.abort()
        # The TLS layer owns the transport now and reports no loss to us before the handshake.
        self.connection_lost(None)

    # Time, flow control, closing

    def _check_idle(self) -> None:
        timeout = self._server._timeout_seconds
        now = _clock()
        idle = now - self._last_activity
        if self._task is None and idle >= timeout:
            self._close(replies.TIMEOUT, "idle timeout")
            return

        # However steadily a client trickles, one message's content has a deadline.
        core = self._core
        in_data = core is not None and core.state is DATA and core.data_phases == self._data_phase
        if in_data and self._task is None and now >= self._data_deadline:
            self._close(replies.DATA_TIMEOUT, "DATA deadline")
            return

        # A client waiting for a listener's decision is not idle.
        delay = timeout if self._task is not None else timeout - idle
        if in_data:
            delay = min(delay, max(self._data_deadline - now, 0.01))
        self._timer = self._loop.call_later(delay, self._check_idle)

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()

    def _close(self, reply: replies.Reply | None, reason: str) -> None:
        """Send ``reply`` (if any), then close once the output is flushed."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._close_reason = reason
        if self._core is not None:
            self._core.close(reason=reason)
        if reply is not None:
            transport.write(reply.wire)
        transport.close()
        if self._writing_paused:
            # The client reads nothing: its reply can never be flushed, so do not wait for it.
            transport.abort()
        elif self._core is None or self._core.tls or transport.get_write_buffer_size():
            # A client that stops reading now must not hold the connection open either (nor,
            # with TLS, one that never answers our close_notify).
            self._flush_timer = self._loop.call_later(_FLUSH_SECONDS, transport.abort)
        # Else everything was sent and a plain transport closes at once: no timer needed.

    def shutdown(self, force: bool) -> None:
        """Called by the server on stop: close now if idle (or if ``force``), else later."""
        core = self._core
        if core is None:
            return
        if self._tls_early is not None:
            # In a handshake, or about to start one: no transaction to finish and no reply
            # that could be read. Close here, not in the cancelled task: one that has not
            # run yet never runs its body.
            if self._task is not None:
                self._task.cancel()
            assert self._transport is not None
            self._tls_failed(self._transport, "server shutting down during the TLS handshake")
            return
        if force:
            if self._task is not None:
                self._task.cancel()
            self._close(replies.SHUTTING_DOWN, "server shutting down")
            return
        core.stop_when_idle()
        if self._task is None:
            self._advance()

    def _log_refusal(self, verb: bytes, reply: replies.Reply) -> None:
        # Only the verb and the codes: arguments may hold credentials or personal data.
        assert self._core is not None
        session_log.info(
            "%s refused %s: %d %s",
            self._core.session.session_id,
            verb.decode("ascii") or "(unknown or no verb)",
            reply.code,
            reply.enhanced or "",
        )


TaskStarter = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


def task_starter(loop: asyncio.AbstractEventLoop) -> TaskStarter:
    """Return how listener tasks start on ``loop``: eagerly where Python can (3.12+)."""
    if sys.version_info >= (3, 12):
        # Eager: listeners that never wait (most do not) cost no trip through the loop.
        return functools.partial(asyncio.Task, loop=loop, eager_start=True)
    return loop.create_task


def _name_of(listener: Callable[..., Any]) -> str:
    """Name a listener in a log line: ``module.function``, or its class for a callable."""
    name = getattr(listener, "__qualname__", None) or type(listener).__qualname__
    return f"{getattr(listener, '__module__', None) or '?'}.{name}"


def _where(error: BaseException) -> str:
    """Return ``file:line`` where ``error`` was raised, for a log line without its text."""
    trace = error.__traceback__
    if trace is None:
        return "unknown location"
    while trace.tb_next is not None:
        trace = trace.tb_next
    return f"{trace.tb_frame.f_code.co_filename}:{trace.tb_lineno}"


def is_coroutine_listener(listener: Callable[[Any], Awaitable[Any] | Any]) -> bool:
    """Tell whether a listener runs on the loop (coroutine function) or in a thread."""
    # A callable object with an ``async def __call__`` counts as a coroutine function too.
    call = type(listener).__call__ if not inspect.isroutine(listener) else None
    return inspect.iscoroutinefunction(listener) or inspect.iscoroutinefunction(call)
