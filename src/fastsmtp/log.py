"""The loggers of fastsmtp, declared once. Message bodies and credentials never reach them."""

from __future__ import annotations

import logging

__all__ = ["listener_log", "server_log", "session_log"]

# Start, stop, bind and accept problems of the server as a whole.
server_log = logging.getLogger("fastsmtp.server")

# One line per connection opened and closed, per refused command (verb and reply code only).
session_log = logging.getLogger("fastsmtp.session")

# Exceptions raised by user listeners, with their tracebacks.
listener_log = logging.getLogger("fastsmtp.listener")
