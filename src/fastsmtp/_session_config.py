"""What a session needs to know of its server: limits, policies and prebuilt replies. Sans-IO.

Built once per server start and shared by every connection, whichever twin of the session
core serves them.
"""

from __future__ import annotations

from .replies import Reply

__all__ = ["BARE_LINE_ENDINGS", "SessionConfig"]

# What to do with a message whose content holds a CR or LF outside a CRLF pair.
BARE_LINE_ENDINGS = ("keep", "reject", "normalize")


class SessionConfig:
    """Everything a session needs from the server, computed once per server start."""

    __slots__ = (
        "allow_plaintext_auth",
        "auth_mechanisms",
        "bare_line_endings",
        "decide_mail_from",
        "decide_rcpt_to",
        "ehlo_replies",
        "ehlo_reply",
        "greeting",
        "helo_reply",
        "hostname",
        "max_auth_failures",
        "max_errors",
        "max_junk_commands",
        "max_line_length",
        "max_message_size",
        "max_recipients",
        "preferred_max_message_size",
        "require_auth",
        "require_tls",
    )

    def __init__(
        self,
        hostname: str,
        max_recipients: int = 1000,
        max_message_size: int = 32 * 1024 * 1024,
        preferred_max_message_size: int | None = None,
        max_line_length: int = 4096,
        decide_mail_from: bool = False,
        decide_rcpt_to: bool = False,
        max_errors: int = 20,
        bare_line_endings: str = "keep",
        require_tls: bool = False,
        auth_mechanisms: tuple[str, ...] = (),
        allow_plaintext_auth: bool = False,
        require_auth: bool = False,
        max_auth_failures: int = 3,
        max_junk_commands: int = 100,
    ) -> None:
        self.hostname = hostname
        self.max_recipients = max_recipients
        self.max_message_size = max_message_size
        self.preferred_max_message_size = preferred_max_message_size
        self.max_line_length = max_line_length
        self.decide_mail_from = decide_mail_from
        self.decide_rcpt_to = decide_rcpt_to
        self.max_errors = max_errors
        self.max_junk_commands = max_junk_commands
        if bare_line_endings not in BARE_LINE_ENDINGS:
            raise ValueError(f"bare_line_endings must be one of {BARE_LINE_ENDINGS}")
        self.bare_line_endings = bare_line_endings
        self.require_tls = require_tls
        self.auth_mechanisms = auth_mechanisms
        self.allow_plaintext_auth = allow_plaintext_auth
        self.require_auth = require_auth
        self.max_auth_failures = max_auth_failures

        self.greeting = Reply(220, None, f"{hostname} ESMTP fastsmtp").wire
        self.helo_reply = Reply(250, None, hostname).wire
        # RFC 1870: SIZE announces the limit a client should respect: the preferred size, or
        # else the enforced one, so that a client never sends what is bound to be refused.
        keywords = [hostname, "8BITMIME", f"SIZE {self.declared_size_limit}"]
        keywords += ["PIPELINING", "SMTPUTF8", "ENHANCEDSTATUSCODES"]
        self.ehlo_reply = Reply(250, None, *keywords).wire
        # Keyed by (STARTTLS offered, AUTH offered): RFC 3207 §4.2 drops STARTTLS once TLS
        # is up, and RFC 4954 §4 lets a server show AUTH only where it may be used.
        auth = "AUTH " + " ".join(auth_mechanisms)
        self.ehlo_replies = {
            (starttls, offer_auth): Reply(
                250,
                None,
                *keywords,
                *(["STARTTLS"] if starttls else []),
                *([auth] if offer_auth and auth_mechanisms else []),
            ).wire
            for starttls in (False, True)
            for offer_auth in (False, True)
        }

    @property
    def declared_size_limit(self) -> int:
        """The largest SIZE= a client may declare at MAIL FROM."""
        if self.preferred_max_message_size:
            return min(self.preferred_max_message_size, self.max_message_size)
        return self.max_message_size
