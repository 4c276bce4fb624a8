"""The asyncio glue of one connection: transport in, session core, listeners, transport out.

Everything SMTP is decided in ``_session``; this module moves bytes, keeps time, calls the
listeners (coroutines on the loop, plain functions in a worker thread) and reports back.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from . import replies
from ._session import MailFrom, MessageReceived, RcptTo, SessionCore, _Close
from ._state import SessionState
from .context import MessageContext, Session
from .errors import DropConnection, RejectError
from .events import IncomingFrom, IncomingMail, IncomingRecipient
from .log import listener_log, session_log

if TYPE_CHECKING:
    from .server import SMTPServer

__all__ = ["Listener", "SMTPProtocol"]

# How long a closing connection may take to flush its last replies before it is aborted.
_FLUSH_SECONDS = 10.0

# A listener and whether it is a coroutine function (run on the loop) or not (in a thread).
Listener = tuple[Callable[[Any], Any], bool]


# Input a connection may pile up while its listener decides, before it stops reading.
_MAX_PENDING_INPUT = 256 * 1024


class SMTPProtocol(asyncio.BufferedProtocol):
    """One client connection.

    A buffered protocol: the loop reads straight into the server's one receive buffer
    (``get_buffer``), and ``buffer_updated`` hands the bytes to the session, which copies
    them once into its own buffer. That saves the loop's per-read allocation.
    """

    def __init__(self, server: SMTPServer) -> None:
        self._server = server
        self._loop = server._loop_now()
        self._transport: asyncio.Transport | None = None
        self._core: SessionCore | None = None
        self._context: MessageContext | None = None
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        server = self._server
        session = Session(
            server._next_session_id(),
            transport.get_extra_info("peername"),
            transport.get_extra_info("sockname"),
        )
        self._opened = time.monotonic()

        # Refuse before any work when over the limit; the others keep being served.
        peer = session.peer
        self._peer_host = peer[0] if peer else None
        if not server._admit(self, self._peer_host):
            reply = replies.SHUTTING_DOWN if server._closing else replies.TOO_MANY_CONNECTIONS
            session_log.info("%s refused %r: %s", session.session_id, session.peer, reply.text)
            transport.write(reply.wire)
            transport.close()
            return

        assert server._config is not None
        core = SessionCore(server._config, server._wire, session)
        if session_log.isEnabledFor(logging.INFO):
            core.on_refuse = self._log_refusal
        self._core = core
        self._context = MessageContext(session, server)
        session_log.info(
            "%s open peer=%r local=%r", session.session_id, session.peer, session.local
        )
        transport.write(core.greeting())
        self._last_activity = self._loop.time()
        self._timer = self._loop.call_later(server._timeout_seconds, self._check_idle)

    def get_buffer(self, sizehint: int) -> memoryview:
        # Safe to share: the loop fills it and calls buffer_updated() before any other read.
        return self._server._receive_buffer

    def buffer_updated(self, nbytes: int) -> None:
        core = self._core
        if core is None:
            return
        self._last_activity = self._loop.time()
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
        self._last_activity = self._loop.time()
        core.feed(data)
        if self._task is None:
            self._advance()
        elif core.buffered() > _MAX_PENDING_INPUT:
            self._pause_reading()

    def eof_received(self) -> bool:
        self._close_reason = "client closed the connection"
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
        core = self._core
        if core is None:
            return
        self._server._forget(self, self._peer_host)
        if exc is not None:
            self._close_reason = f"connection error: {exc}"
        session_log.info(
            "%s closed: %s, %.3fs, %d message(s) accepted",
            core.session.session_id,
            self._close_reason,
            time.monotonic() - self._opened,
            core.session.messages_accepted,
        )

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
        try:
            self._step_session()
        except Exception:  # noqa: BLE001 - logged with its traceback right below
            # A bug of ours must cost one connection, never the server.
            assert self._core is not None
            session_log.exception("%s internal error", self._core.session.session_id)
            self._close(replies.LOCAL_ERROR_CLOSING, "internal error")

    def _step_session(self) -> None:
        core = self._core
        transport = self._transport
        assert core is not None and transport is not None
        while True:
            event = core.step()
            out = core.take_output()
            if out:
                transport.write(out)
            if event is None:
                if core.state is SessionState.DATA and self._data_phase != core.data_phases:
                    self._data_phase = core.data_phases
                    self._data_deadline = self._loop.time() + self._server.data_timeout
                return
            if isinstance(event, _Close):
                self._close(None, core.close_reason)
                return
            listeners = self._server._listeners_for(event)
            if not listeners:
                core.accept()
                continue
            # Input arriving while the listeners decide is only buffered (see buffer_updated).
            self._task = self._loop.create_task(self._decide(event, listeners))
            self._server._listener_tasks.add(self._task)
            self._task.add_done_callback(self._server._listener_tasks.discard)
            return

    async def _decide(
        self, event: MailFrom | RcptTo | MessageReceived, listeners: list[Listener]
    ) -> None:
        core = self._core
        assert core is not None
        exchange = self._exchange_for(event)
        try:
            for listener, is_coroutine in listeners:
                if is_coroutine:
                    await listener(exchange)
                else:
                    result = await self._server._call_in_worker(listener, exchange)
                    if inspect.isawaitable(result):
                        await result
        except DropConnection as drop:
            core.reject(drop.reply, close=True)
        except RejectError as rejection:
            core.reject(rejection.reply)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a listener may raise anything; logged below
            # One line with the traceback; the client gets no exception text (RFC 5321 451).
            listener_log.exception(
                "%s listener %r failed",
                core.session.session_id,
                type(exchange).__name__,
            )
            core.reject(replies.LOCAL_ERROR)
        else:
            text = exchange.response_text if isinstance(exchange, IncomingMail) else None
            core.accept(text)
        finally:
            self._task = None

        if self._transport is None or self._transport.is_closing():
            return
        self._last_activity = self._loop.time()
        self._advance()
        if self._reading_paused and self._task is None and not self._writing_paused:
            self._resume_reading()

    def _exchange_for(
        self, event: MailFrom | RcptTo | MessageReceived
    ) -> IncomingFrom | IncomingRecipient | IncomingMail:
        core = self._core
        context = self._context
        assert core is not None and context is not None
        if isinstance(event, MessageReceived):
            return IncomingMail(
                context, core.envelope_from or "", tuple(core.recipients), event.data
            )
        if isinstance(event, RcptTo):
            current = (*core.recipients, event.address)
            return IncomingRecipient(context, core.envelope_from or "", event.address, current)
        return IncomingFrom(context, event.address)

    # Time, flow control, closing

    def _check_idle(self) -> None:
        timeout = self._server._timeout_seconds
        now = self._loop.time()
        idle = now - self._last_activity
        if self._task is None and idle >= timeout:
            self._close(replies.TIMEOUT, "idle timeout")
            return

        # However steadily a client trickles, one message's content has a deadline.
        core = self._core
        in_data = (
            core is not None
            and core.state is SessionState.DATA
            and core.data_phases == self._data_phase
        )
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
        else:
            # A client that stops reading now must not hold the connection open either.
            self._loop.call_later(_FLUSH_SECONDS, transport.abort)

    def shutdown(self, force: bool) -> None:
        """Called by the server on stop: close now if idle (or if ``force``), else later."""
        core = self._core
        if core is None:
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
            verb.decode("ascii", "replace")[:16] or "(empty)",
            reply.code,
            reply.enhanced or "",
        )


def is_coroutine_listener(listener: Callable[[Any], Awaitable[Any] | Any]) -> bool:
    """Tell whether a listener runs on the loop (coroutine function) or in a thread."""
    # A callable object with an ``async def __call__`` counts as a coroutine function too.
    call = type(listener).__call__ if not inspect.isroutine(listener) else None
    return inspect.iscoroutinefunction(listener) or inspect.iscoroutinefunction(call)
