"""Report failed ``accept()`` calls of a server's listening sockets once, not in a flood.

When the process runs out of file descriptors (or the kernel out of buffers), asyncio's
selector loop reports the failed ``accept()`` through the loop's exception handler, stops
accepting for a second and tries again: the server survives and serves again once
descriptors free up. But before gh-151615 was fixed (CPython 3.14 and older), one readable
event reports the failure once per backlog slot: a hundred tracebacks a second, exactly when
the machine is short of resources. And a retry still due when the server stops runs on its
closed socket and reports a ``ValueError`` of its own.

``AcceptErrorReporter`` sits in front of the loop's exception handler while the server
serves. It turns the reports about this server's own sockets into one ERROR line on
``fastsmtp.server`` per ``REPORT_EVERY`` seconds, says when connections are accepted again,
and passes every other report on, untouched, to the handler that was there before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .log import server_log

__all__ = ["REPORT_EVERY", "AcceptErrorReporter"]

# asyncio's message for an accept() that failed with EMFILE, ENFILE, ENOBUFS or ENOMEM.
_OUT_OF_RESOURCES = "socket.accept() out of system resource"

# How long repeats of the same failure stay quiet after a report, in seconds.
REPORT_EVERY = 10.0

# After a failure, asyncio retries the accept after this many seconds (its own constant).
_RETRY_DELAY = 1.0

ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


class AcceptErrorReporter:
    """The loop's exception handler while one server serves; see the module docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop, listening: Callable[[], set[int]]) -> None:
        """``listening`` returns the file descriptors of the server's listening sockets."""
        self._loop = loop
        self._listening = listening
        self._previous: ExceptionHandler | None = None
        self._installed = False
        self.failures = 0  # failed accepts since connections were last accepted
        self._last_failure = -1e9
        self._muted_until = -1e9
        self._unreported = 0

    def install(self) -> None:
        """Put this reporter in front of the loop's current exception handler."""
        self._previous = self._loop.get_exception_handler()
        self._loop.set_exception_handler(self._handle)
        self._installed = True

    def uninstall(self) -> None:
        """Give the loop its previous handler back, once no retry of asyncio's is due.

        A retry scheduled by a recent failure fails on the closed socket: this reporter
        stays in place until it has run, and swallows that failure.
        """
        pending = self._last_failure + _RETRY_DELAY - self._loop.time()
        if pending > 0:
            self._loop.call_later(pending + 0.5, self._restore)
        else:
            self._restore()

    def accepted(self) -> None:
        """Note that a connection was accepted; ends a run of failures with one INFO line."""
        # Connections accepted in the batch that failed are made just after the failure;
        # only an accept at asyncio's retry, a second later, shows that resources are back.
        if self.failures and self._loop.time() - self._last_failure >= _RETRY_DELAY / 2:
            server_log.info("accepting connections again after %d failed accept(s)", self.failures)
            self.failures = 0
            self._unreported = 0
            self._muted_until = -1e9

    def _restore(self) -> None:
        if not self._installed:
            return
        self._installed = False
        # Only if nobody replaced this handler meanwhile; otherwise it passes everything on.
        if self._loop.get_exception_handler() == self._handle:
            self._loop.set_exception_handler(self._previous)

    def _handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if self._installed and self._is_ours(context):
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)

    def _is_ours(self, context: dict[str, Any]) -> bool:
        """Report or swallow ``context`` if it concerns this server's accepts."""
        error = context.get("exception")
        if context.get("message") == _OUT_OF_RESOURCES:
            sock = context.get("socket")
            if sock is None or sock.fileno() not in self._listening():
                return False
            self._failed(error)
            return True
        # asyncio's retry ran on a socket that stop() closed meanwhile.
        return (
            self.failures > 0
            and not self._listening()
            and isinstance(error, ValueError)
            and "_start_serving" in str(context.get("message", ""))
        )

    def _failed(self, error: object) -> None:
        now = self._loop.time()
        self.failures += 1
        self._last_failure = now
        if now < self._muted_until:
            self._unreported += 1
            return
        since = f" ({self._unreported} more since the last report)" if self._unreported else ""
        server_log.error(
            "cannot accept connections: %s; retrying every %gs until resources free up%s",
            error,
            _RETRY_DELAY,
            since,
        )
        self._unreported = 0
        self._muted_until = now + REPORT_EVERY
