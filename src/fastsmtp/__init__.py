"""fastsmtp: a fast, correct SMTP receiver to embed in Python programs.

>>> from fastsmtp import smtp_server
>>> server = smtp_server(port=8025, host="127.0.0.1")
>>> @server.mail_listener
... async def on_mail(mail):
...     print(mail.envelope_from, mail.recipients, mail.email["Subject"])
"""

from ._version import __version__
from ._wire import IMPLEMENTATION
from .auth import IncomingAuth
from .context import MessageContext, Session
from .endpoints import Endpoint
from .errors import DropConnection, FastSMTPError, RejectError
from .events import IncomingFrom, IncomingMail, IncomingMailExchange, IncomingRecipient
from .replies import Reply
from .server import DEFAULT_MAX_MESSAGE_SIZE, SMTPServer, smtp_server
from .tls import server_tls_context

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "IMPLEMENTATION",
    "DropConnection",
    "Endpoint",
    "FastSMTPError",
    "IncomingAuth",
    "IncomingFrom",
    "IncomingMail",
    "IncomingMailExchange",
    "IncomingRecipient",
    "MessageContext",
    "RejectError",
    "Reply",
    "SMTPServer",
    "Session",
    "__version__",
    "server_tls_context",
    "smtp_server",
]
