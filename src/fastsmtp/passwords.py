"""Password hashes for AUTH: scrypt with a random salt, and a file of users to check against.

A hash is one line of text, ``scrypt$N$r$p$salt$hash`` with the salt and the hash in base64;
a password file holds one ``user:hash`` line per user. Passwords are never stored, and a
candidate is compared with ``hmac.compare_digest``. ``fastsmtp --hash-password USER`` prints
such a line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from pathlib import Path

from .auth import IncomingAuth

__all__ = ["PasswordFile", "hash_password", "verify_password"]

# RFC 7914 §2 calls N=2^14, r=8, p=1 reasonable for interactive logins; about 16 MiB each.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_BYTES = 16
_HASH_BYTES = 32
_SCHEME = "scrypt"

# Bounds on the parameters a stored hash may ask for, so that one line cannot claim gigabytes.
_MAX_N = 2**20
_MAX_R = 32
_MAX_P = 16


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, size: int) -> bytes:
    # OpenSSL needs 128*r*(N+2) octets for V plus 128*r*p for B; leave some room above that.
    memory = 128 * r * (n + 2) + 128 * r * p + 1024 * 1024
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=memory, dklen=size
    )


def hash_password(
    password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P
) -> str:
    """Return a storable scrypt hash of ``password``, with a fresh random salt.

    Raises:
        TypeError: if ``password`` is not a str.
        ValueError: if the parameters are out of bounds (N a power of two, 2 to 2^20).
    """
    if not isinstance(password, str):
        raise TypeError(f"password must be a str, got {type(password).__name__}")
    _check_parameters(n, r, p)
    salt = os.urandom(_SALT_BYTES)
    digest = _scrypt(password, salt, n, r, p, _HASH_BYTES)
    return "$".join((_SCHEME, str(n), str(r), str(p), _b64(salt), _b64(digest)))


def verify_password(password: str, stored: str) -> bool:
    """Tell whether ``password`` matches the ``stored`` hash.

    Raises:
        ValueError: if ``stored`` is not a hash made by ``hash_password``.
    """
    n, r, p, salt, expected = _parse_hash(stored)
    candidate = _scrypt(password, salt, n, r, p, len(expected))
    return hmac.compare_digest(candidate, expected)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _check_parameters(n: int, r: int, p: int) -> None:
    if not 2 <= n <= _MAX_N or n & (n - 1):
        raise ValueError(f"scrypt N must be a power of two from 2 to {_MAX_N}, got {n}")
    if not 1 <= r <= _MAX_R or not 1 <= p <= _MAX_P:
        raise ValueError(f"scrypt r and p must be 1..{_MAX_R} and 1..{_MAX_P}, got {r}, {p}")


def _parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    # The messages never quote the text: it could be a password pasted in the wrong place.
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME:
        raise ValueError("not a scrypt hash: expected scrypt$N$r$p$salt$hash")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        expected = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        raise ValueError("not a scrypt hash: bad number or base64") from None
    _check_parameters(n, r, p)
    if not salt or len(expected) < 16:
        raise ValueError("not a scrypt hash: salt or hash too short")
    return n, r, p, salt, expected


class PasswordFile:
    """Users and their password hashes, from a file; usable as an ``auth_listener``.

    Each line is ``user:hash`` (``hash`` from ``hash_password``); blank lines and lines
    starting with ``#`` are skipped. As a listener it is a plain function, so the server runs
    it in a worker thread: scrypt is slow on purpose and must not stall the event loop.

    Raises:
        OSError: if the file cannot be read.
        ValueError: for a malformed line; the message gives its number, never its content.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._users = self.parse(self.path.read_text(encoding="utf-8"))
        # Checked for unknown users too, so that timing does not tell who exists.
        self._decoy = hash_password(os.urandom(8).hex())

    def __repr__(self) -> str:
        return f"<PasswordFile {str(self.path)!r} users={len(self._users)}>"

    def __len__(self) -> int:
        return len(self._users)

    @staticmethod
    def parse(text: str) -> dict[str, str]:
        """Return ``{user: hash}`` from the text of a password file.

        Raises:
            ValueError: for a malformed line or a user listed twice.
        """
        users: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, colon, stored = line.rpartition(":")
            if not colon or not user:
                raise ValueError(f"line {number}: expected user:hash")
            try:
                _parse_hash(stored)
            except ValueError as error:
                raise ValueError(f"line {number}: {error}") from None
            if user in users:
                raise ValueError(f"line {number}: user listed twice")
            users[user] = stored
        return users

    def check(self, username: str, password: str) -> bool:
        """Tell whether ``username`` exists and ``password`` is theirs."""
        stored = self._users.get(username)
        matches = verify_password(password, stored if stored is not None else self._decoy)
        return matches and stored is not None

    def __call__(self, event: IncomingAuth) -> None:
        """Accept the credentials if they match, else ``reject()`` them (535 5.7.8).

        Acting as another user (a PLAIN authorization identity) is refused too.
        """
        if not self.check(event.username, event.password) or event.authorization_id:
            event.reject()
