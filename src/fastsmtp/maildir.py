"""The command line's sinks: where each accepted message goes before the client gets 250.

``MaildirSink`` stores ``mail.data`` in a Maildir with the standard library's ``mailbox``
and makes it durable first: the message file is fsynced by ``mailbox`` itself (before it is
linked into ``new/``) and the ``new/`` directory by this module, as are the parents of the
directories it creates, so an acknowledged message survives a crash of the process or of
the machine. ``scripts/durability_sigkill.py --trace-syscalls`` shows that order. A message
that cannot be stored is answered ``451 4.3.0`` (the client retries later) and the server
keeps running.

Sinks are plain (synchronous) mail listeners: the server runs them in a worker thread.
They log one INFO line per message with the envelope, the size and the Message-ID, and
never any part of the content.
"""

from __future__ import annotations

import errno
import logging
import mailbox
import os
import re
from typing import ClassVar

from .events import IncomingMail

__all__ = ["STORE_FAILED_TEXT", "MaildirSink", "MessageSink", "message_id"]

# The reply text of a message that could not be stored, answered with code 451.
STORE_FAILED_TEXT = "4.3.0 Error: could not store message"

# A full disk or quota gets 452 4.3.1 (RFC 3463: mail system full), still a try-again-later.
STORAGE_FULL_TEXT = "4.3.1 Error: insufficient storage for the message"
_STORAGE_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})

# The header section ends at the first empty line (RFC 5322 §2.1); a field may be folded
# onto continuation lines that start with white space (§2.2.3).
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_MESSAGE_ID = re.compile(rb"^message-id[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
_MAX_ID_LENGTH = 200

# mailbox.Maildir names files from the clock, the pid and a class-wide counter that threads
# share without a lock: two workers may pick the same name, and the loser gets
# ExternalClashError. Trying again draws a new name.
_NAME_CLASH_ATTEMPTS = 5


def message_id(data: bytes) -> str | None:
    """Return the Message-ID of a message for a log line, or None if it has none.

    Only the header section is read. The value is unfolded, cut to 200 characters, and
    anything that is not printable ASCII is escaped, so a log line stays one line.
    """
    if data.startswith((b"\r\n", b"\n")):
        return None
    end = _HEADER_END.search(data)
    headers = data if end is None else data[: end.start()]
    found = _MESSAGE_ID.search(headers)
    if found is None:
        return None
    raw = found.group(1).decode("ascii", "backslashreplace")
    value = " ".join(raw.split())
    value = "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)
    if len(value) > _MAX_ID_LENGTH:
        value = value[:_MAX_ID_LENGTH] + "..."
    return value or None


class MessageSink:
    """A mail listener that keeps every message somewhere and logs one line for it.

    Subclasses implement ``store()``. An ``OSError`` or ``mailbox.Error`` from it is logged
    and answered ``451 4.3.0`` (``452 4.3.1`` when storage is full) so that the client
    tries again later; the server goes on.
    """

    #: The logger of the per-message lines; subclasses name their own.
    log: ClassVar[logging.Logger] = logging.getLogger("fastsmtp.sink")

    def store(self, mail: IncomingMail) -> str:
        """Keep ``mail`` durably and return where it went, for the log line."""
        raise NotImplementedError

    def describe(self) -> str:
        """Say where messages go, for the command's startup line."""
        raise NotImplementedError

    def __call__(self, mail: IncomingMail) -> None:
        """Store one message; reject it with ``451 4.3.0`` if that fails."""
        session_id = mail.context.session.session_id
        try:
            where = self.store(mail)
        except (OSError, mailbox.Error) as error:
            self.log.error(
                "%s could not store message from=<%s> size=%d: %s",
                session_id,
                mail.envelope_from,
                len(mail.data),
                error,
            )
            if isinstance(error, OSError) and error.errno in _STORAGE_FULL:
                mail.reject(STORAGE_FULL_TEXT, code=452)
            mail.reject(STORE_FAILED_TEXT, code=451)
        self.log.info(
            "%s stored message from=<%s> to=%s size=%d message-id=%s in %s",
            session_id,
            mail.envelope_from,
            ",".join(f"<{recipient}>" for recipient in mail.recipients),
            len(mail.data),
            message_id(mail.data) or "(none)",
            where,
        )


class MaildirSink(MessageSink):
    """Store every message in a Maildir, durably, before the client is told 250.

    The directory and its ``tmp``, ``new`` and ``cur`` subdirectories are created when
    missing (mode 0700). Messages land in ``new/`` with their bytes exactly as received,
    line endings included.

    Args:
        path: the Maildir directory.

    Raises:
        OSError: if the Maildir cannot be created.
    """

    log = logging.getLogger("fastsmtp.maildir")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fspath(path))
        # Maildir(create=True) only creates a directory that does not exist at all; an
        # existing but empty one (made with mkdir) would fail on every message instead.
        missing = _missing_directories(self.path)
        for subdirectory in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(self.path, subdirectory), mode=0o700, exist_ok=True)
        # A new directory's own entry is durable only once its parent is synced: without
        # this, a crash soon after the first 250 could take new/ and its messages with it.
        for parent in sorted({os.path.dirname(directory) for directory in missing}):
            try:
                _fsync_directory(parent)
            except PermissionError as error:
                # A parent this process may write but not read cannot be opened to sync.
                self.log.warning("could not sync new directory entries in %s: %s", parent, error)
        self._maildir = mailbox.Maildir(self.path, create=True)
        self._new = os.path.join(self.path, "new")

    def __repr__(self) -> str:
        return f"<MaildirSink {self.path!r}>"

    def describe(self) -> str:
        """Say where messages go: the Maildir's absolute path."""
        return f"Maildir {self.path}"

    def store(self, mail: IncomingMail) -> str:
        """Add the message to ``new/`` and make the addition durable; return its path."""
        data = mail.data
        if os.linesep != "\n":
            # mailbox writes every LF as os.linesep; without this a CRLF would become CR CR LF.
            data = data.replace(b"\r\n", b"\n")

        key = ""
        for attempt in range(_NAME_CLASH_ATTEMPTS):
            try:
                key = self._maildir.add(data)
                break
            except mailbox.ExternalClashError:
                if attempt == _NAME_CLASH_ATTEMPTS - 1:
                    raise
        path = os.path.join(self._new, key)

        # mailbox fsyncs the file before linking it into new/; the link itself is only
        # durable once the directory is synced too.
        try:
            _fsync_directory(self._new)
        except OSError:
            # The client is about to hear 451 and send again: do not keep a second copy.
            try:
                os.remove(path)
            except OSError:
                pass
            raise
        return path


def _missing_directories(path: str) -> list[str]:
    """The directories that making the Maildir at ``path`` will create, ancestors included."""
    missing = [os.path.join(path, sub) for sub in ("tmp", "new", "cur")]
    missing = [directory for directory in missing if not os.path.isdir(directory)]
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def _fsync_directory(path: str) -> None:
    if os.name != "posix":
        # Windows cannot open a directory as a file; NTFS journals the rename itself.
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
