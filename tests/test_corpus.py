"""Real messages through the ``fastsmtp`` command and into its Maildir, on both twins.

Each corpus message is sent the way a real client sends it: bare LF turned into CRLF, and a
CRLF added when the file has no final newline (RFC 5321 §4.1.1.4 needs one before the
``.``). It goes through a command subprocess once with ``smtplib`` (many messages over one
connection) and once with ``swaks`` (a process per message). What the Maildir holds must be
exactly what was sent, and must parse (``email.policy.default``) like the original file.

The Maildir is read as soon as the client has its 250 and never polled: a message must be
stored before it is acknowledged.
"""

from __future__ import annotations

import email.policy
import functools
import hashlib
import os
import re
import shutil
import smtplib
import subprocess
from collections.abc import Iterator
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import CLILauncher, CLIProcess

CORPUS = Path(__file__).parent / "corpus"
MESSAGES = sorted(path.name for path in CORPUS.glob("*.eml"))
SENDER = "sender@example.com"
RECIPIENT = "rcpt@example.net"
TIMEOUT = 30.0  # seconds a client waits for one reply; the largest message is 1.1 MB

_BARE_LF = re.compile(rb"(?<!\r)\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)
# A row of MANIFEST.md's checksum table: | `name.eml` | defects | `sha256` |
_MANIFEST_ROW = re.compile(r"^\| `(?P<name>[^`]+\.eml)` \|[^|]*\| `(?P<sha256>[0-9a-f]{64})` \|$")

SWAKS = shutil.which("swaks")
# CI installs swaks (.ci/run), so there a missing swaks is a failure, not a skip.
needs_swaks = pytest.mark.skipif(
    SWAKS is None and not os.environ.get("CI"), reason="swaks is not installed"
)


def as_sent(raw: bytes) -> bytes:
    """Return a corpus file as a client sends it: CRLF line endings, ending with CRLF."""
    data = _BARE_LF.sub(b"\r\n", raw)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def with_final_newline(raw: bytes) -> bytes:
    """Return the file with the newline SMTP adds when it has none, line endings kept."""
    return raw if raw.endswith(b"\n") else raw + b"\n"


def lf_only(data: bytes) -> bytes:
    """Normalise line endings to LF, to compare messages whatever their line endings."""
    return data.replace(b"\r\n", b"\n")


def assert_same_bytes(actual: bytes, expected: bytes, what: str) -> None:
    """Compare two messages and, if they differ, show where instead of dumping megabytes."""
    if actual == expected:
        return
    offset = next(
        (i for i, (a, b) in enumerate(zip(actual, expected, strict=False)) if a != b),
        min(len(actual), len(expected)),
    )
    window = slice(max(0, offset - 40), offset + 40)
    raise AssertionError(
        f"{what}: {len(actual)} octets stored, {len(expected)} expected; first difference "
        f"at offset {offset}:\n  stored:   {actual[window]!r}\n  expected: {expected[window]!r}"
    )


@functools.cache
def parsed(data: bytes) -> tuple[tuple[Any, ...], ...]:
    """Summarise a message as ``email.policy.default`` parses it, part by part.

    Each part gives its content type, its headers (name and decoded value) and its decoded
    payload, line endings normalised to LF. Cached: equal bytes parse alike, and a few
    corpus messages take the parser a quarter of a second.
    """
    message = BytesParser(policy=email.policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    summary = []
    for part in message.walk():
        headers = [(name, str(value).replace("\r\n", "\n")) for name, value in part.items()]
        payload = None if part.is_multipart() else part.get_payload(decode=True)
        if isinstance(payload, bytes):
            payload = lf_only(payload)
        summary.append((part.get_content_type(), headers, payload))
    return tuple(summary)


class Maildir:
    """The command's Maildir as a test sees it: which messages arrived since last asked."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.new = path / "new"
        self._seen = set(os.listdir(self.new))

    def take_new(self) -> list[bytes]:
        """Return the contents of the messages that appeared since the last call."""
        names = set(os.listdir(self.new))
        arrived = sorted(names - self._seen)
        self._seen = names
        return [(self.new / name).read_bytes() for name in arrived]


class CorpusServer:
    """One command subprocess for this module and twin, with its Maildir."""

    def __init__(self, process: CLIProcess, maildir: Maildir) -> None:
        self.process = process
        self.maildir = maildir
        self._client: smtplib.SMTP | None = None

    def client(self) -> smtplib.SMTP:
        """Return the shared smtplib connection, opening a new one if the last one broke."""
        if self._client is not None:
            try:
                if self._client.noop()[0] == 250:
                    return self._client
            except OSError:  # smtplib's errors included
                pass
            self._client.close()
        self._client = smtplib.SMTP("127.0.0.1", self.process.port, timeout=TIMEOUT)
        return self._client

    def close(self) -> None:
        """Quit the shared connection."""
        if self._client is not None:
            try:
                self._client.quit()
            except OSError:
                self._client.close()


@pytest.fixture(scope="module")
def corpus_server(
    cli_twin: str, cli_launcher: CLILauncher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CorpusServer]:
    """Run the command on one twin with a fresh Maildir; check it stops cleanly after."""
    path = tmp_path_factory.mktemp(f"maildir-{cli_twin}")
    process = cli_launcher.start(
        "--host", "127.0.0.1", "--port", "0", "--maildir", str(path), twin=cli_twin
    )
    server = CorpusServer(process, Maildir(path))
    yield server
    server.close()
    assert process.stop() == 0, process.log_text()
    assert "Traceback" not in process.log_text()


def check_stored(server: CorpusServer, name: str) -> None:
    """Assert that exactly one message arrived and that it is the corpus file ``name``."""
    stored = server.maildir.take_new()
    assert len(stored) == 1, f"{len(stored)} new messages in the Maildir after one 250"
    raw = (CORPUS / name).read_bytes()

    # The exact bytes sent, and the same as the file once line endings are normalised.
    assert_same_bytes(stored[0], as_sent(raw), name)
    assert_same_bytes(lf_only(stored[0]), lf_only(with_final_newline(raw)), name)

    # Parsed, it has the original's headers and payloads.
    assert parsed(stored[0]) == parsed(with_final_newline(raw))


def test_corpus_copies_match_the_manifest() -> None:
    # The copies are the shared corpus, unchanged: every file listed, with its checksum.
    manifest = (CORPUS / "MANIFEST.md").read_text(encoding="utf-8")
    checksums = {
        found["name"]: found["sha256"]
        for found in map(_MANIFEST_ROW.match, manifest.splitlines())
        if found is not None
    }
    assert len(MESSAGES) == 57
    assert sorted(checksums) == MESSAGES
    for name in MESSAGES:
        digest = hashlib.sha256((CORPUS / name).read_bytes()).hexdigest()
        assert digest == checksums[name], name


def test_corpus_has_what_the_round_trip_needs() -> None:
    # Without these the round trip would prove less than it claims.
    raws = {name: (CORPUS / name).read_bytes() for name in MESSAGES}
    longest = {name: max(map(len, raw.split(b"\n"))) for name, raw in raws.items()}
    assert sum(length > 998 + 2 for length in longest.values()) >= 4
    assert max(longest.values()) > 20_000
    assert any(_LEADING_DOT.search(raw) for raw in raws.values())
    assert any(not raw.endswith(b"\n") for raw in raws.values())
    assert any(_BARE_LF.search(raw) and b"\r\n" in raw for raw in raws.values())
    assert any(max(raw) >= 0x80 for raw in raws.values())
    # Distinct once sent, so a stored message cannot be mistaken for another.
    assert len({as_sent(raw) for raw in raws.values()}) == len(raws)


@pytest.mark.parametrize("name", MESSAGES)
def test_smtplib_round_trip(corpus_server: CorpusServer, name: str) -> None:
    data = as_sent((CORPUS / name).read_bytes())
    client = corpus_server.client()

    # sendmail() dot-stuffs bytes but leaves their line endings alone.
    refused = client.sendmail(SENDER, [RECIPIENT], data)

    assert refused == {}
    check_stored(corpus_server, name)


@needs_swaks
@pytest.mark.parametrize("name", MESSAGES)
def test_swaks_round_trip(corpus_server: CorpusServer, name: str, tmp_path: Path) -> None:
    # With --no-data-fixup swaks sends the file as it is and then CRLF: no dot-stuffing, no
    # end marker, no header rewriting, no token replacement. So the file holds the message
    # stuffed (RFC 5321 §4.5.2) and followed by the final "."; swaks ends that line.
    data = as_sent((CORPUS / name).read_bytes())
    wire_file = tmp_path / "data.txt"
    wire_file.write_bytes(_LEADING_DOT.sub(b"..", data) + b".")

    result = _swaks(corpus_server, "--no-data-fixup", "--data", f"@{wire_file}")

    assert result.returncode == 0, result.stdout
    assert re.search(r"^<-  250 2\.0\.0 ", result.stdout, re.MULTILINE), result.stdout
    check_stored(corpus_server, name)


# LF files with lines that start with "." and nothing swaks's own fixups would change
# (tokens such as %DATE%, a literal backslash-n, a leading "From " line).
SWAKS_STUFFED = [
    "flanker-quoted-printable.eml",
    "mailkit-message.12.eml",
    "flanker-bounce-office365.eml",
]


@needs_swaks
@pytest.mark.parametrize("name", SWAKS_STUFFED)
def test_swaks_own_dot_stuffing(corpus_server: CorpusServer, name: str) -> None:
    raw = (CORPUS / name).read_bytes()
    assert _LEADING_DOT.search(raw) and b"\r\n" not in raw
    assert not re.search(rb"%[A-Z_]+%", raw)
    assert b"\\n" not in raw and not raw.startswith(b"From ")

    # Without --no-data-fixup swaks turns LF into CRLF and stuffs leading dots itself. It
    # then appends CRLF "." to the message, which already ends with CRLF: one empty line
    # more arrives at the end (swaks 20201014.0 does this with any --data).
    result = _swaks(corpus_server, "--data", f"@{CORPUS / name}")

    assert result.returncode == 0, result.stdout
    stored = corpus_server.maildir.take_new()
    assert len(stored) == 1
    assert_same_bytes(stored[0], as_sent(raw) + b"\r\n", name)


def _swaks(server: CorpusServer, *args: str) -> subprocess.CompletedProcess[str]:
    assert SWAKS is not None
    return subprocess.run(
        [
            SWAKS,
            "--server",
            f"127.0.0.1:{server.process.port}",
            "--from",
            SENDER,
            "--to",
            RECIPIENT,
            "--timeout",
            str(int(TIMEOUT)),
            "--suppress-data",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        timeout=TIMEOUT * 2,
        check=False,
    )
