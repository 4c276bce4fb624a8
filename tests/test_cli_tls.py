"""The ``fastsmtp`` command with TLS and AUTH, run as a real subprocess on both twins.

One command per twin serves most tests: STARTTLS on its main port, implicit TLS on
``--tls-port``, ``--require-tls``, ``--require-auth`` against a users file printed by
``fastsmtp --hash-password``, and ``-v``. Clients are smtplib (``starttls()``, ``SMTP_SSL``,
``login()``), swaks (``--tls``, ``--tlsc``, ``--auth PLAIN`` and ``LOGIN``) and bare sockets;
certificates come from the trustme CA of conftest. The corpus round trip of
tests/test_corpus.py runs over both kinds of TLS with its own helpers. Flags that cannot work
together, and certificate, key and users files that are missing or wrong, end the command
with a one-line error.
"""

from __future__ import annotations

import base64
import os
import re
import select
import shutil
import smtplib
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import HOSTNAME, RawClient
from test_corpus import (
    _LEADING_DOT,
    CORPUS,
    MESSAGES,
    RECIPIENT,
    SENDER,
    Maildir,
    as_sent,
    check_stored,
)

from fastsmtp import cli, replies
from fastsmtp.passwords import PasswordFile, verify_password

if TYPE_CHECKING:
    from conftest import CLILauncher, CLIProcess, TLSFiles

TIMEOUT = 30.0  # seconds a client waits for one reply; the largest corpus message is 1.1 MB

# The users of the users file, and a password that is nobody's. Each must never be logged.
USER = "alice"
PASSWORD = "correct horse battery staple"
OTHER_USER = "bob@example.org"
OTHER_PASSWORD = "Tr0ub4dor&3 other"
UTF8_USER = "carol"
UTF8_PASSWORD = "p\u00e4ssw\u00f6rt \u00fcber alles"  # smtplib sends ASCII only: bare sockets
WRONG_PASSWORD = "wrong guess 1234"
SECRETS = (PASSWORD, OTHER_PASSWORD, UTF8_PASSWORD, WRONG_PASSWORD)

MODES = ["starttls", "implicit"]  # how a client starts TLS with the command

SWAKS = shutil.which("swaks")
# CI installs swaks (.ci/run), so there a missing swaks is a failure, not a skip.
needs_swaks = pytest.mark.skipif(
    SWAKS is None and not os.environ.get("CI"), reason="swaks is not installed"
)


def command_line(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the command to its end (options that exit at once, or failed starts)."""
    return subprocess.run(
        [sys.executable, "-m", "fastsmtp", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        check=False,
    )


def password_line(user: str, password: str) -> str:
    """Return the ``user:hash`` line ``fastsmtp --hash-password`` prints for ``password``."""
    result = command_line("--hash-password", user, stdin=password + "\n")
    assert result.returncode == 0, result.stderr
    return result.stdout


def credential_forms(user: str, password: str) -> list[str]:
    """The ways a password crosses the wire: as it is, base64 (LOGIN) and in a PLAIN answer."""
    encode = base64.b64encode
    return [
        password,
        encode(password.encode()).decode(),
        encode(f"\0{user}\0{password}".encode()).decode(),
    ]


def assert_no_secret_logged(process: CLIProcess) -> None:
    """Assert that nothing the command wrote holds a password, in any form a client sent."""
    log = process.log_text()
    for user in (USER, OTHER_USER, UTF8_USER):
        for password in SECRETS:
            for form in credential_forms(user, password):
                assert form not in log, f"the command logged a password: {form!r}"


@pytest.fixture(scope="module")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A users file made as the README says: one ``fastsmtp --hash-password`` line per user."""
    path = tmp_path_factory.mktemp("users") / "users.txt"
    lines = [
        password_line(USER, PASSWORD),
        password_line(OTHER_USER, OTHER_PASSWORD),
        password_line(UTF8_USER, UTF8_PASSWORD),
    ]
    path.write_text("# user:hash, from fastsmtp --hash-password\n" + "".join(lines))
    return path


class TLSCommand:
    """A command serving STARTTLS on ``port`` and implicit TLS on ``implicit_port``.

    ``maildir`` is test_corpus's view of its Maildir, the one attribute test_corpus's
    ``check_stored`` reads. Each test that stores a message takes it from there, so that the
    next one sees only its own.
    """

    def __init__(self, process: CLIProcess, maildir: Maildir) -> None:
        self.process = process
        self.maildir = maildir
        self.port = process.port
        found = process.wait_for_line(r"^fastsmtp \S+ listening on .*:(\d+) \(implicit TLS\)")
        self.implicit_port = int(found[1])


def start_tls_command(
    launcher: CLILauncher,
    twin: str,
    tls_files: TLSFiles,
    maildir: Path,
    *args: str,
) -> TLSCommand:
    """Start the command with STARTTLS, an implicit-TLS port and ``args``, logging at DEBUG."""
    process = launcher.start(
        "--port", "0",
        "--tls-port", "0",
        "--tls-cert", str(tls_files.cert_file),
        "--tls-key", str(tls_files.key_file),
        "--maildir", str(maildir),
        "--hostname", HOSTNAME,
        "-v",
        *args,
        twin=twin,
    )  # fmt: skip
    return TLSCommand(process, Maildir(maildir))


@pytest.fixture(scope="module")
def tls_command(
    cli_twin: str,
    cli_launcher: CLILauncher,
    tls_files: TLSFiles,
    users_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TLSCommand]:
    """The command most tests share, on one twin; it must stop cleanly and have logged no
    password."""
    command = start_tls_command(
        cli_launcher,
        cli_twin,
        tls_files,
        tmp_path_factory.mktemp(f"tls-maildir-{cli_twin}"),
        "--auth-users", str(users_file),
        "--require-tls",
        "--require-auth",
        "--max-auth-failures", "2",
    )  # fmt: skip
    yield command
    process = command.process
    assert process.stop() == 0, process.log_text()
    assert "Traceback" not in process.log_text()
    assert " DEBUG " in process.log_text()
    assert_no_secret_logged(process)


def connect(
    command: TLSCommand, mode: str, context: ssl.SSLContext, timeout: float = TIMEOUT
) -> smtplib.SMTP:
    """Open an smtplib connection in TLS by ``mode`` ("starttls" or "implicit"), greeted."""
    client: smtplib.SMTP
    if mode == "implicit":
        client = smtplib.SMTP_SSL(
            "127.0.0.1", command.implicit_port, timeout=timeout, context=context
        )
    else:
        client = smtplib.SMTP("127.0.0.1", command.port, timeout=timeout)
        client.ehlo("client.test")
        assert client.has_extn("starttls") and not client.has_extn("auth")
        client.starttls(context=context)
    client.ehlo("client.test")
    return client


def make_message(subject: str) -> bytes:
    """A small CRLF message, without leading dots, whose stored bytes are known."""
    return (
        f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: {subject}\r\n\r\nHello.\r\n"
    ).encode()


# smtplib over STARTTLS and implicit TLS


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("mode", MODES)
def test_smtplib_login_and_send(
    tls_command: TLSCommand, client_tls: ssl.SSLContext, mode: str, mechanism: str
) -> None:
    message = make_message(f"smtplib {mode} {mechanism}")

    with connect(tls_command, mode, client_tls) as client:
        # Over TLS: AUTH now offered, STARTTLS no longer.
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        assert not client.has_extn("starttls")
        client.user, client.password = OTHER_USER, OTHER_PASSWORD
        method = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        assert client.auth(mechanism, method) == (235, b"2.7.0 Authentication successful")
        assert client.sendmail(SENDER, [RECIPIENT], message) == {}

    assert tls_command.maildir.take_new() == [message]


@pytest.mark.parametrize("mode", MODES)
def test_login_picks_a_mechanism_and_sends(
    tls_command: TLSCommand, client_tls: ssl.SSLContext, mode: str
) -> None:
    message = make_message(f"login() {mode}")

    with connect(tls_command, mode, client_tls) as client:
        assert client.login(USER, PASSWORD) == (235, b"2.7.0 Authentication successful")
        assert client.sendmail(SENDER, [RECIPIENT], message) == {}

    assert tls_command.maildir.take_new() == [message]


@pytest.mark.parametrize(
    ("user", "password"),
    [(USER, WRONG_PASSWORD), (USER, OTHER_PASSWORD), ("mallory", PASSWORD)],
    ids=["wrong-password", "another-users-password", "unknown-user"],
)
@pytest.mark.parametrize("mode", MODES)
def test_bad_credentials_get_535_and_mail_stays_refused(
    tls_command: TLSCommand, client_tls: ssl.SSLContext, mode: str, user: str, password: str
) -> None:
    with connect(tls_command, mode, client_tls) as client:
        # One mechanism only: login() would try LOGIN after PLAIN, a second failure.
        client.user, client.password = user, password
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            client.auth("PLAIN", client.auth_plain)
        assert (failed.value.smtp_code, failed.value.smtp_error) == (
            535,
            b"5.7.8 Authentication credentials invalid",
        )

        # --require-auth: no MAIL without a successful AUTH.
        assert client.mail(SENDER) == (530, b"5.7.0 Authentication required")

        # One failure is not the limit (--max-auth-failures 2): the right password still works.
        assert client.login(USER, PASSWORD)[0] == 235
        assert client.mail(SENDER)[0] == 250

    assert tls_command.maildir.take_new() == []


def test_max_auth_failures_ends_the_connection(
    tls_command: TLSCommand, client_tls: ssl.SSLContext
) -> None:
    client = RawClient(tls_command.implicit_port, TIMEOUT)
    try:
        client.sock = client_tls.wrap_socket(client.sock, server_hostname="localhost")
        client.greeting = client.reply()
        client.command(b"EHLO client.test")
        wrong = b"AUTH PLAIN " + credential_forms(USER, WRONG_PASSWORD)[2].encode()

        assert client.command(wrong) == replies.AUTH_FAILED.wire
        client.send(wrong + b"\r\n")

        assert client.read_to_end() == (
            replies.AUTH_FAILED.wire + replies.TOO_MANY_AUTH_FAILURES.wire
        )
    finally:
        client.close()


def test_utf8_password_over_the_wire(tls_command: TLSCommand, client_tls: ssl.SSLContext) -> None:
    # RFC 4616: PLAIN carries UTF-8. The hash of the users file was made from the same text.
    client = RawClient(tls_command.implicit_port, TIMEOUT)
    try:
        client.sock = client_tls.wrap_socket(client.sock, server_hostname="localhost")
        client.greeting = client.reply()
        client.command(b"EHLO client.test")
        plain = credential_forms(UTF8_USER, UTF8_PASSWORD)[2].encode()

        assert client.command(b"AUTH PLAIN " + plain) == replies.AUTH_SUCCEEDED.wire
        assert client.command(b"MAIL FROM:<carol@example.org>")[:3] == b"250"
    finally:
        client.close()


# --require-tls and --require-auth on the main port


def test_require_tls_refuses_mail_before_starttls(
    tls_command: TLSCommand, client_tls: ssl.SSLContext
) -> None:
    client = RawClient(tls_command.port, TIMEOUT)
    try:
        client.greeting = client.reply()
        assert client.greeting.startswith(f"220 {HOSTNAME} ".encode())
        ehlo = client.command(b"EHLO client.test")
        assert ehlo.endswith(b"250 STARTTLS\r\n") and b"AUTH" not in ehlo

        # Before TLS the envelope and AUTH are refused; NOOP still works.
        refused = replies.TLS_REQUIRED.wire
        assert client.command(b"MAIL FROM:<alice@example.org>") == refused
        assert client.command(b"RCPT TO:<bob@example.com>") == refused
        assert client.command(b"DATA") == refused
        plain = credential_forms(USER, PASSWORD)[2].encode()
        assert client.command(b"AUTH PLAIN " + plain) == refused
        assert client.command(b"NOOP")[:3] == b"250"

        # After STARTTLS the same connection authenticates and may send.
        assert client.command(b"STARTTLS") == replies.READY_TO_START_TLS.wire
        client.sock = client_tls.wrap_socket(client.sock, server_hostname="localhost")
        assert client.command(b"EHLO client.test").endswith(b"250 AUTH PLAIN LOGIN\r\n")
        assert client.command(b"MAIL FROM:<alice@example.org>") == replies.AUTH_REQUIRED.wire
        assert client.command(b"AUTH PLAIN " + plain) == replies.AUTH_SUCCEEDED.wire
        assert client.command(b"MAIL FROM:<alice@example.org>")[:3] == b"250"
        assert client.command(b"QUIT")[:3] == b"221"
    finally:
        client.close()


def test_smtplib_without_starttls_gets_530(tls_command: TLSCommand) -> None:
    with smtplib.SMTP("127.0.0.1", tls_command.port, timeout=TIMEOUT) as client:
        client.ehlo("client.test")
        assert client.mail(SENDER) == (530, b"5.7.0 Must issue a STARTTLS command first")
        with pytest.raises(smtplib.SMTPNotSupportedError):
            client.login(USER, PASSWORD)  # AUTH is not offered before TLS


# swaks


def run_swaks(*args: str) -> subprocess.CompletedProcess[str]:
    """Run swaks with ``args`` (``--server`` among them); stdout and stderr together."""
    assert SWAKS is not None
    return subprocess.run(
        [
            SWAKS,
            "--from", SENDER,
            "--to", RECIPIENT,
            "--timeout", str(int(TIMEOUT)),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        timeout=TIMEOUT * 2,
        check=False,
    )  # fmt: skip


def swaks_tls(command: TLSCommand, tls_files: TLSFiles, mode: str) -> list[str]:
    """swaks's arguments for ``mode`` ("--tls" or "--tlsc"), checking the certificate."""
    port = command.implicit_port if mode == "--tlsc" else command.port
    return [
        "--server", f"127.0.0.1:{port}",
        mode,
        "--tls-verify",
        "--tls-ca-path", str(tls_files.ca_file),
    ]  # fmt: skip


@needs_swaks
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("mode", ["--tls", "--tlsc"])
def test_swaks_auth(
    tls_command: TLSCommand, tls_files: TLSFiles, mode: str, mechanism: str
) -> None:
    subject = f"swaks {mode} {mechanism}"
    auth = ["--auth", mechanism, "--auth-user", OTHER_USER, "--auth-password"]
    tls = swaks_tls(tls_command, tls_files, mode)

    good = run_swaks(*tls, *auth, OTHER_PASSWORD, "--header", f"Subject: {subject}")
    bad = run_swaks(*tls, *auth, WRONG_PASSWORD)

    assert good.returncode == 0, good.stdout
    assert "TLS started" in good.stdout
    assert "235 2.7.0 Authentication successful" in good.stdout
    [stored] = tls_command.maildir.take_new()
    assert f"Subject: {subject}\r\n".encode() in stored
    assert bad.returncode != 0
    assert "535 5.7.8 Authentication credentials invalid" in bad.stdout
    assert tls_command.maildir.take_new() == []


# The corpus round trip over TLS


class AuthenticatedClients:
    """One authenticated smtplib connection per TLS mode, reopened if a test broke it."""

    def __init__(self, command: TLSCommand, context: ssl.SSLContext) -> None:
        self.command = command
        self.context = context
        self._clients: dict[str, smtplib.SMTP] = {}

    def get(self, mode: str) -> smtplib.SMTP:
        """Return the connection for ``mode``, logged in as USER."""
        client = self._clients.pop(mode, None)
        if client is not None:
            try:
                if client.noop()[0] == 250:
                    self._clients[mode] = client
                    return client
            except OSError:  # smtplib's errors included
                pass
            client.close()
        client = connect(self.command, mode, self.context)
        client.login(USER, PASSWORD)
        self._clients[mode] = client
        return client

    def close(self) -> None:
        """Quit every connection."""
        for client in self._clients.values():
            try:
                client.quit()
            except OSError:
                client.close()


@pytest.fixture(scope="module")
def corpus_clients(tls_command: TLSCommand, tls_files: TLSFiles) -> Iterator[AuthenticatedClients]:
    """Authenticated connections to the shared command, for the whole corpus."""
    clients = AuthenticatedClients(tls_command, tls_files.client_context())
    yield clients
    clients.close()


@pytest.mark.parametrize("name", MESSAGES)
@pytest.mark.parametrize("mode", MODES)
def test_corpus_round_trip_over_tls(
    tls_command: TLSCommand, corpus_clients: AuthenticatedClients, mode: str, name: str
) -> None:
    data = as_sent((CORPUS / name).read_bytes())

    refused = corpus_clients.get(mode).sendmail(SENDER, [RECIPIENT], data)

    assert refused == {}
    check_stored(tls_command, name)


def representative_messages() -> list[str]:
    """Corpus messages that each try something: the largest, the longest line, a leading
    dot, no final newline, 8-bit content."""
    raws = {name: (CORPUS / name).read_bytes() for name in MESSAGES}
    picks = {
        max(raws, key=lambda name: len(raws[name])),
        max(raws, key=lambda name: max(map(len, raws[name].split(b"\n")))),
        next(name for name, raw in raws.items() if _LEADING_DOT.search(raw)),
        next(name for name, raw in raws.items() if not raw.endswith(b"\n")),
        next(name for name, raw in raws.items() if max(raw) >= 0x80),
    }
    return sorted(picks)


@needs_swaks
@pytest.mark.parametrize("name", representative_messages())
@pytest.mark.parametrize("mode", ["--tls", "--tlsc"])
def test_corpus_swaks_over_tls(
    tls_command: TLSCommand, tls_files: TLSFiles, mode: str, name: str, tmp_path: Path
) -> None:
    # As in test_corpus.py: the file goes as it is, dot-stuffed, ended with the final ".".
    data = as_sent((CORPUS / name).read_bytes())
    wire_file = tmp_path / "data.txt"
    wire_file.write_bytes(_LEADING_DOT.sub(b"..", data) + b".")
    tls = swaks_tls(tls_command, tls_files, mode)
    auth = ["--auth", "LOGIN", "--auth-user", USER, "--auth-password", PASSWORD]

    result = run_swaks(
        *tls, *auth, "--suppress-data", "--no-data-fixup", "--data", f"@{wire_file}"
    )

    assert result.returncode == 0, result.stdout
    assert re.search(r"^<~  250 2\.0\.0 ", result.stdout, re.MULTILINE), result.stdout
    check_stored(tls_command, name)


# Client certificates


@pytest.fixture(scope="module")
def client_cert_command(
    cli_twin: str,
    cli_launcher: CLILauncher,
    tls_files: TLSFiles,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TLSCommand]:
    """A command that requires a client certificate signed by the test CA."""
    command = start_tls_command(
        cli_launcher,
        cli_twin,
        tls_files,
        tmp_path_factory.mktemp(f"client-cert-maildir-{cli_twin}"),
        "--client-certs", "required",
        "--client-ca", str(tls_files.ca_file),
    )  # fmt: skip
    yield command
    assert command.process.stop() == 0, command.process.log_text()
    assert "Traceback" not in command.process.log_text()


@pytest.mark.parametrize("mode", MODES)
def test_required_client_certificate(
    client_cert_command: TLSCommand, tls_files: TLSFiles, mode: str
) -> None:
    chain, key = tls_files.issue("cli-client", "client.test")
    with_cert = tls_files.client_context()
    with_cert.load_cert_chain(chain, key)
    message = make_message(f"client certificate over {mode}")

    # Without a certificate the handshake fails (TLS 1.3 tells the client at its first read).
    # ssl.SSLError or smtplib's disconnection: both are OSErrors.
    without = tls_files.client_context()
    with pytest.raises(OSError), connect(client_cert_command, mode, without, 10.0) as client:
        client.noop()

    # With one the same command serves.
    with connect(client_cert_command, mode, with_cert) as client:
        assert client.sendmail(SENDER, [RECIPIENT], message) == {}
    assert client_cert_command.maildir.take_new() == [message]


# --loop with TLS, and no password in the log


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_no_password_in_the_log_on_either_loop(
    cli_twin: str,
    cli_launcher: CLILauncher,
    tls_files: TLSFiles,
    users_file: Path,
    client_tls: ssl.SSLContext,
    tmp_path: Path,
    loop: str,
) -> None:
    if loop == "uvloop" and not cli.uvloop_available():
        pytest.skip("uvloop is not installed")
    command = start_tls_command(
        cli_launcher,
        cli_twin,
        tls_files,
        tmp_path,
        "--auth-users",
        str(users_file),
        "--loop",
        loop,
    )
    process = command.process
    process.wait_for_line(rf"\(hot path: {cli_twin}\), loop: {loop}; Ctrl-C to stop")
    process.wait_for_line(rf" INFO fastsmtp\.server: listening on .*, loop: {loop}\)$")
    messages = [make_message(f"{mode} on {loop}") for mode in MODES]

    # A wrong password by both mechanisms, then a right one; both kinds of TLS.
    for mode, message in zip(MODES, messages, strict=True):
        with connect(command, mode, client_tls) as client:
            client.user, client.password = USER, WRONG_PASSWORD
            for mechanism, method in [("PLAIN", client.auth_plain), ("LOGIN", client.auth_login)]:
                with pytest.raises(smtplib.SMTPAuthenticationError):
                    client.auth(mechanism, method)
            client.user, client.password = OTHER_USER, OTHER_PASSWORD
            assert client.auth("LOGIN", client.auth_login)[0] == 235
            assert client.sendmail(SENDER, [RECIPIENT], message) == {}
    assert process.stop() == 0

    log = process.log_text()
    assert sorted(command.maildir.take_new()) == sorted(messages)
    assert " DEBUG " in log and "refused AUTH: 535 5.7.8" in log
    assert "authenticated with LOGIN" in log
    assert "Traceback" not in log
    assert_no_secret_logged(process)


# --hash-password


def test_hash_password_reads_one_line_of_stdin() -> None:
    # UTF-8 whatever the locale; the line ending, CRLF included, is not part of the password.
    result = command_line("--hash-password", OTHER_USER, stdin=UTF8_PASSWORD + "\r\nrest\n")

    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    users = PasswordFile.parse(line)
    assert list(users) == [OTHER_USER]
    assert verify_password(UTF8_PASSWORD, users[OTHER_USER])
    assert not verify_password(UTF8_PASSWORD + "\r", users[OTHER_USER])
    assert UTF8_PASSWORD not in result.stdout + result.stderr


def test_hash_password_salts_each_line() -> None:
    first, second = password_line(USER, PASSWORD), password_line(USER, PASSWORD)

    assert first != second
    assert all(
        verify_password(PASSWORD, PasswordFile.parse(line)[USER]) for line in (first, second)
    )


@pytest.mark.parametrize(
    ("stdin", "error"),
    [
        ("", "no password on standard input"),
        ("\n", "an empty password is refused"),
    ],
)
def test_hash_password_without_a_password(stdin: str, error: str) -> None:
    result = command_line("--hash-password", USER, stdin=stdin)

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"fastsmtp: {error}\n"


def test_hash_password_never_takes_it_from_the_arguments() -> None:
    result = command_line("--hash-password", USER, PASSWORD, stdin=PASSWORD + "\n")

    assert result.returncode == 2
    assert "unrecognized arguments" in result.stderr
    assert result.stdout == ""


def read_until(fd: int, wanted: bytes, timeout: float = 20.0) -> bytes:
    """Read from ``fd`` until ``wanted`` has arrived; fail after ``timeout`` seconds."""
    data = b""
    deadline = time.monotonic() + timeout
    while wanted not in data:
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(remaining, 0))
        chunk = os.read(fd, 4096) if ready else b""
        if not chunk:
            raise AssertionError(f"{wanted!r} never came; got {data!r}")
        data += chunk
    return data


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
@pytest.mark.parametrize("same", [True, False], ids=["same-twice", "differing"])
def test_hash_password_prompts_twice_on_a_terminal(same: bool) -> None:
    import pty  # POSIX only: imported here so that the module loads on Windows too

    # A new session has no controlling terminal, so getpass falls back to standard input:
    # here the pseudo-terminal, with echo turned off while it reads.
    terminal, child_end = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "fastsmtp", "--hash-password", USER],
        stdin=child_end,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    os.close(child_end)
    try:
        assert process.stderr is not None and process.stdout is not None
        prompts = read_until(process.stderr.fileno(), b"Password for alice: ")
        os.write(terminal, PASSWORD.encode() + b"\n")
        prompts += read_until(process.stderr.fileno(), b"again: ")
        os.write(terminal, (PASSWORD if same else WRONG_PASSWORD).encode() + b"\n")
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        echoed = read_available(terminal)
        os.close(terminal)

    assert PASSWORD.encode() not in echoed + prompts + stderr
    if same:
        assert process.returncode == 0, stderr
        assert verify_password(PASSWORD, PasswordFile.parse(stdout.decode())[USER])
    else:
        assert process.returncode == 1
        assert stdout == b""
        assert stderr.endswith(b"fastsmtp: the two passwords differ\n")


def read_available(fd: int) -> bytes:
    """Read what the terminal side holds now; a closed far end reads as nothing."""
    data = b""
    while select.select([fd], [], [], 0)[0]:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO once the child has closed its end
            break
        if not chunk:
            break
        data += chunk
    return data


# Flags that cannot work together, and files that are missing or wrong


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--tls-key", "key.pem"], "--tls-key needs --tls-cert"),
        (["--tls-port", "0"], "--tls-port needs --tls-cert"),
        (["--require-tls"], "--require-tls needs --tls-cert"),
        (["--client-certs", "required"], "--client-certs required needs --tls-cert"),
        (["--client-certs", "sometimes"], "invalid choice: 'sometimes'"),
        (["--tls-cert", "c.pem", "--client-ca", "ca.pem"], "--client-ca needs --client-certs"),
        (["--tls-cert", "c.pem", "--tls-port", "8025"], "--tls-port must differ from --port"),
        (["--tls-cert", "c.pem", "--tls-port", "99999"], "port must be between 0 and 65535"),
        (["--require-auth"], "--require-auth needs --auth-users"),
        (["--allow-plaintext-auth"], "--allow-plaintext-auth needs --auth-users"),
        (["--max-auth-failures", "3"], "--max-auth-failures needs --auth-users"),
        (["--max-auth-failures", "0"], "must be at least 1"),
        (["--auth-users", "users.txt"], "--auth-users without --tls-cert offers AUTH to nobody"),
        (
            [
                "--tls-cert",
                "c.pem",
                "--require-tls",
                "--auth-users",
                "u",
                "--allow-plaintext-auth",
            ],
            "--allow-plaintext-auth contradicts --require-tls",
        ),
        (["--hash-password", ""], "not a usable user name"),
        (["--hash-password", " alice"], "not a usable user name"),
        (["--hash-password", "#alice"], "not a usable user name"),
        (["--hash-password", "al\nice"], "not a usable user name"),
    ],
)
def test_inconsistent_flags_exit_with_status_2(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)

    assert exited.value.code == 2
    assert error in capsys.readouterr().err


def assert_fails_in_one_line(result: subprocess.CompletedProcess[str], error: str) -> None:
    """Assert that the command exited with status 1 and said only ``error``, in one line."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert f" ERROR fastsmtp.cli: {error}" in line, line
    assert PASSWORD not in line


@pytest.fixture
def failing_start(tls_files: TLSFiles, tmp_path: Path) -> Callable[..., None]:
    """Run the command with TLS flags and ``args`` and expect it to fail with ``error``."""

    def check(error: str, *args: str, cert: Path | None = None, key: Path | None = None) -> None:
        cert_file = cert if cert is not None else tls_files.cert_file
        key_file = key if key is not None else tls_files.key_file
        result = command_line(
            "--port", "0", "--maildir", str(tmp_path / "md"),
            "--tls-cert", str(cert_file), "--tls-key", str(key_file), *args,
        )  # fmt: skip
        assert_fails_in_one_line(result, error)
        assert not (tmp_path / "md").exists()

    return check


def test_missing_certificate_or_key(failing_start: Callable[..., None], tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"

    failing_start(f"cannot read --tls-cert {missing}: No such file or directory", cert=missing)
    failing_start(f"cannot read --tls-key {missing}: No such file or directory", key=missing)
    failing_start(f"cannot read --tls-key {tmp_path}: Is a directory", key=tmp_path)


def test_wrong_certificate_or_key(
    failing_start: Callable[..., None], tls_files: TLSFiles, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not PEM at all\n")
    _, other_key = tls_files.issue("cli-other", "other.test")

    failing_start(f"--tls-cert {junk} holds no PEM certificate", cert=junk)
    failing_start(f"--tls-key {junk} holds no usable PEM private key", key=junk)
    failing_start(
        f"the key in --tls-key {other_key} is not the key of --tls-cert {tls_files.cert_file}",
        key=other_key,
    )
    failing_start(
        f"--client-ca {junk} holds no PEM certificate",
        "--client-certs", "optional", "--client-ca", str(junk),
    )  # fmt: skip


def test_certificate_file_without_its_key(tls_files: TLSFiles, tmp_path: Path) -> None:
    alone = command_line(
        "--port", "0", "--maildir", str(tmp_path), "--tls-cert", str(tls_files.cert_file)
    )

    assert_fails_in_one_line(
        alone,
        f"--tls-cert {tls_files.cert_file} holds no usable PEM private key; "
        "name the key's own file with --tls-key",
    )


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (None, "cannot read --auth-users {path}: No such file or directory"),
        ("", "--auth-users {path} lists no user"),
        ("# only a comment\n\n", "--auth-users {path} lists no user"),
        (f"{USER}:{PASSWORD}\n", "--auth-users {path}: line 1: not a scrypt hash"),
        (f"# users\n{PASSWORD}\n", "--auth-users {path}: line 2: expected user:hash"),
        (b"alice:\xff\n", "--auth-users {path} is not UTF-8 text"),
    ],
    ids=["missing", "empty", "comments-only", "plaintext-password", "no-colon", "not-utf8"],
)
def test_unusable_users_file(
    failing_start: Callable[..., None], tmp_path: Path, content: str | bytes | None, error: str
) -> None:
    path = tmp_path / "users.txt"
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, bytes):
        path.write_bytes(content)

    failing_start(error.format(path=path), "--auth-users", str(path))
