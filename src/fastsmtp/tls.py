"""TLS settings for the server: build an ``ssl.SSLContext`` from certificate and key files.

The server takes any ``ssl.SSLContext`` as its ``tls`` option; this helper builds one with
settings fit for a mail server: TLS 1.2 at least, no compression, no client-initiated
renegotiation, and client certificates only when asked for.
"""

from __future__ import annotations

import os
import ssl
from typing import Literal

__all__ = ["CLIENT_CERT_MODES", "ClientCerts", "server_tls_context"]

ClientCerts = Literal["none", "optional", "required"]

#: What ``client_certs`` may say, and the verification mode each one means.
CLIENT_CERT_MODES: dict[str, ssl.VerifyMode] = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}

PathLike = str | os.PathLike[str]


def server_tls_context(
    certfile: PathLike,
    keyfile: PathLike | None = None,
    *,
    client_certs: ClientCerts = "none",
    cafile: PathLike | None = None,
    password: str | None = None,
) -> ssl.SSLContext:
    """Return a server-side ``ssl.SSLContext`` for STARTTLS and implicit TLS.

    Args:
        certfile: PEM file with the server's certificate, followed by its chain.
        keyfile: PEM file with the private key; None when ``certfile`` holds it too.
        client_certs: "none" (the default) asks clients for no certificate; "optional"
            asks and verifies one if given; "required" fails the handshake without one.
            A verified certificate shows in ``context.session.peer_certificate``.
        cafile: PEM file of the authorities that sign client certificates; without it the
            system's default authorities are trusted. Only read when client certificates
            are asked for.
        password: the private key's password, if it is encrypted.

    Raises:
        ValueError: for an unknown ``client_certs`` mode.
        OSError: if a file cannot be read.
        ssl.SSLError: if the certificate or key is invalid or they do not match.
    """
    mode = CLIENT_CERT_MODES.get(client_certs)
    if mode is None:
        raise ValueError(
            f"client_certs must be one of {', '.join(CLIENT_CERT_MODES)}, got {client_certs!r}"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # CRIME-style attacks need compression; renegotiation asked by a client is a cheap DoS.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    context.load_cert_chain(certfile, keyfile, password)
    context.verify_mode = mode
    if mode is not ssl.CERT_NONE:
        if cafile is not None:
            context.load_verify_locations(cafile)
        else:
            context.load_default_certs(ssl.Purpose.CLIENT_AUTH)
    return context
