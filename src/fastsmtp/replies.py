"""The catalogue of SMTP replies fastsmtp sends; the server and the tests share it.

Every reply other than the greeting and the answers to HELO and EHLO carries an RFC 3463
enhanced status code, which EHLO announces with ENHANCEDSTATUSCODES (RFC 2034).
"""

from __future__ import annotations

__all__ = ["Reply", "custom_reply"]

# RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets with its CRLF.
_MAX_TEXT = 512 - len("250-5.0.0 \r\n")


class Reply:
    """One SMTP reply: a code, an optional enhanced status code and text lines.

    The wire form is built once, at construction, so sending a catalogue reply costs
    nothing but the write.
    """

    __slots__ = ("code", "enhanced", "lines", "wire")

    def __init__(self, code: int, enhanced: str | None, *lines: str) -> None:
        if not 200 <= code <= 599:
            raise ValueError(f"reply code must be between 200 and 599, got {code}")
        self.code = code
        self.enhanced = enhanced
        self.lines = lines or ("",)
        self.wire = self._encode()

    def _encode(self) -> bytes:
        prefix = f"{self.enhanced} " if self.enhanced else ""
        last = len(self.lines) - 1
        parts = []
        for index, line in enumerate(self.lines):
            separator = " " if index == last else "-"
            parts.append(f"{self.code}{separator}{prefix}{line}".rstrip(" ") + "\r\n")
        return "".join(parts).encode("utf-8")

    @property
    def text(self) -> str:
        """The reply's text, its lines joined with newlines."""
        return "\n".join(self.lines)

    @property
    def is_success(self) -> bool:
        """True for 2xx and 3xx replies."""
        return self.code < 400

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reply) and self.wire == other.wire

    def __hash__(self) -> int:
        return hash(self.wire)

    def __repr__(self) -> str:
        return f"Reply({self.wire.decode('utf-8', 'replace').rstrip()!r})"

    def with_text(self, *lines: str) -> Reply:
        """Return the same code and enhanced code with other text."""
        return Reply(self.code, self.enhanced, *lines)


def _generic_enhanced(code: int) -> str:
    # RFC 3463 §3.1: the class digit follows the reply code; X.0.0 means "other or undefined".
    return f"{code // 100}.0.0"


def _looks_enhanced(word: str) -> bool:
    parts = word.split(".")
    return (
        len(parts) == 3
        and parts[0] in ("2", "4", "5")
        and all(part.isdigit() and 0 < len(part) <= 3 for part in parts[1:])
    )


def custom_reply(code: int, message: str, enhanced: str | None = None) -> Reply:
    """Build a reply from a listener's code and text, safe to put on the wire.

    CR and LF split the text into lines (a listener must never be able to inject a second
    reply), each line is cut to the RFC 5321 length, and an enhanced status code is added
    when the text does not start with one: the given ``enhanced``, or the generic X.0.0.

    Raises:
        TypeError: if ``code`` is not an int or ``message`` not a str.
        ValueError: if ``code`` is not a 2xx to 5xx reply code.
    """
    if not isinstance(code, int) or isinstance(code, bool):
        raise TypeError(f"reply code must be an int, got {type(code).__name__}")
    if not isinstance(message, str):
        raise TypeError(f"reply message must be a str, got {type(message).__name__}")
    lines = [
        line[:_MAX_TEXT] for line in message.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    ]
    lines = [line for line in lines if line] or [""]
    first_word = lines[0].split(" ", 1)[0]
    if _looks_enhanced(first_word) and first_word[0] == str(code)[0]:
        # The text already carries its enhanced code; repeat it on continuation lines.
        lines[0] = lines[0][len(first_word) :].lstrip(" ")
        enhanced = first_word
    return Reply(code, enhanced or _generic_enhanced(code), *lines)


# Connection
GREETING = "220 {hostname} ESMTP fastsmtp"  # formatted per server, see SessionConfig
CLOSING = Reply(221, "2.0.0", "Bye")
TIMEOUT = Reply(421, "4.4.2", "Timeout waiting for data from client.")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, closing transmission channel")

# Success
OK = Reply(250, "2.0.0", "Ok")
SENDER_OK = Reply(250, "2.1.0", "Ok")
RECIPIENT_OK = Reply(250, "2.1.5", "Ok")
MESSAGE_ACCEPTED = Reply(250, "2.0.0", "Ok")
START_MAIL_INPUT = Reply(354, None, "End data with <CR><LF>.<CR><LF>")
RESET_OK = Reply(250, "2.0.0", "Ok")
# RFC 5321 §7.3: a server that will not verify addresses answers 252, never 250 or 550.
CANNOT_VRFY = Reply(252, "2.0.0", "Cannot verify the user; a message to it will be tried")
VRFY_SYNTAX = Reply(501, "5.5.4", "Syntax: VRFY <user or address>")
EXPN_DISABLED = Reply(502, "5.5.1", "EXPN command is disabled")

# Listener decisions (SimpleKotlinMail's reject() and drop_connection() default)
TRANSACTION_FAILED = Reply(554, "5.0.0", "Transaction failed")
LOCAL_ERROR = Reply(451, "4.3.0", "Requested action aborted: local error in processing")
LOCAL_ERROR_CLOSING = Reply(421, "4.3.0", "Local error, closing transmission channel")
TOO_MUCH_DATA = Reply(552, "5.3.4", "Too much mail data")

# Sequencing
NEED_HELO = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT = Reply(503, "5.5.1", "Error: need RCPT command")
SENDER_ALREADY_SPECIFIED = Reply(503, "5.5.1", "Sender already specified.")

# Syntax
UNKNOWN_COMMAND = Reply(500, "5.5.2", "Error: command not recognized")
LINE_TOO_LONG = Reply(500, "5.5.6", "Error: line too long")
BAD_CHARACTERS = Reply(500, "5.5.2", "Error: invalid characters in command")
HELO_SYNTAX = Reply(501, "5.5.4", "Syntax: HELO <hostname>")
EHLO_SYNTAX = Reply(501, "5.5.4", "Syntax: EHLO hostname")
MAIL_SYNTAX = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
RCPT_SYNTAX = Reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
NO_ARGUMENTS = Reply(501, "5.5.4", "Syntax error: no parameters allowed")
BAD_SENDER = Reply(553, "5.1.7", "Invalid sender address")
BAD_RECIPIENT = Reply(553, "5.1.3", "Invalid recipient address")
NON_ASCII_ADDRESS = Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
BAD_PARAMETER = Reply(555, "5.5.4", "Unsupported or invalid parameter")
EIGHT_BIT_COMMAND = Reply(500, "5.5.2", "Error: 8-bit characters require SMTPUTF8")

# Limits and hostile input
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
BARE_LINE_ENDINGS = Reply(550, "5.5.2", "Message refused: bare CR or LF in content")
DATA_TIMEOUT = Reply(421, "4.4.2", "Timeout: message content took too long")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Error: too many recipients")
SIZE_EXCEEDED = Reply(552, "5.3.4", "Message size exceeds fixed limit")

HELP = Reply(
    214,
    "2.0.0",
    "fastsmtp: supported commands:",
    "HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY EXPN HELP",
    "End of HELP info",
)

# TLS (RFC 3207, RFC 8314)
READY_TO_START_TLS = Reply(220, "2.0.0", "Ready to start TLS")
TLS_ALREADY_ACTIVE = Reply(503, "5.5.1", "TLS already active")
TLS_REQUIRED = Reply(530, "5.7.0", "Must issue a STARTTLS command first")

# Authentication (RFC 4954 §4, §6)
AUTH_SUCCEEDED = Reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_TEMPORARY_FAILURE = Reply(454, "4.7.0", "Temporary authentication failure")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_NEEDS_TLS = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_CANCELLED = Reply(501, "5.0.0", "Authentication cancelled")
AUTH_BAD_DATA = Reply(501, "5.5.2", "Invalid authentication data: not base64 or malformed")
AUTH_SYNTAX = Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
AUTH_UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Already authenticated")
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "AUTH not permitted during a mail transaction")
TOO_MANY_AUTH_FAILURES = Reply(
    421, "4.7.0", "Too many authentication failures, closing connection"
)
# Challenges: LOGIN asks "Username:" then "Password:" in base64; PLAIN sends an empty one,
# which RFC 4954 §4 writes "334 " with its space (a Reply would trim it).
AUTH_USERNAME_CHALLENGE = Reply(334, None, "VXNlcm5hbWU6")
AUTH_PASSWORD_CHALLENGE = Reply(334, None, "UGFzc3dvcmQ6")
AUTH_EMPTY_CHALLENGE = b"334 \r\n"
