"""Shared fixtures. Tests run against the installed package, not against src/."""

from __future__ import annotations

from types import ModuleType

import pytest

from fastsmtp import _wire


@pytest.fixture(params=["c", "py"])
def wire(request: pytest.FixtureRequest) -> ModuleType:
    """Yield one twin of the wire module; a missing compiled twin is an error, not a skip."""
    if request.param == "c" and _wire.NO_EXTENSIONS:
        pytest.skip("FASTSMTP_NO_EXTENSIONS is set: the compiled twin is not expected")
    return _wire.load(request.param)


# Servers on real sockets: tests/test_server.py and tests/test_listeners.py.

import smtplib
import socket
from collections.abc import Callable

from fastsmtp import SMTPServer, smtp_server

HOSTNAME = "mx.test"  # the hostname every test server gives in its greeting
CLIENT_TIMEOUT = 5.0  # seconds any test client waits for the server before failing


class RawClient:
    """A bare-socket SMTP client: it sends bytes as given and reads replies byte-exact."""

    def __init__(self, port: int, timeout: float = CLIENT_TIMEOUT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buffer = b""
        self.greeting = b""

    def send(self, data: bytes) -> None:
        """Send raw bytes, line endings included."""
        self.sock.sendall(data)

    def _line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; unread: {self._buffer!r}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line + b"\r\n"

    def reply(self) -> bytes:
        """Read one whole reply, all lines of a multi-line one, with their CRLFs."""
        lines = [self._line()]
        while lines[-1][3:4] == b"-":
            lines.append(self._line())
        return b"".join(lines)

    def command(self, line: bytes) -> bytes:
        """Send one command line (CRLF added) and return its reply."""
        self.send(line + b"\r\n")
        return self.reply()

    def read_to_end(self) -> bytes:
        """Read everything until the server closes the connection."""
        data, self._buffer = self._buffer, b""
        while chunk := self.sock.recv(65536):
            data += chunk
        return data

    def close(self) -> None:
        """Close the socket; safe to call twice."""
        self.sock.close()


@pytest.fixture
def make_server(wire: ModuleType) -> Iterator[Callable[..., SMTPServer]]:
    """Build servers on 127.0.0.1, port 0, on the twin under test; stop running ones after."""
    servers: list[SMTPServer] = []

    def build(**options: Any) -> SMTPServer:
        options.setdefault("hostname", HOSTNAME)
        server = smtp_server(port=0, host="127.0.0.1", **options)
        server._wire = wire
        servers.append(server)
        return server

    yield build
    for server in servers:
        if server.is_running:
            server.stop()


@pytest.fixture
def raw_client() -> Iterator[Callable[[SMTPServer], RawClient]]:
    """Connect bare-socket clients to a running server (greeting read); close them after."""
    clients: list[RawClient] = []

    def connect(server: SMTPServer) -> RawClient:
        client = RawClient(server.bound_port)
        clients.append(client)
        client.greeting = client.reply()
        return client

    yield connect
    for client in clients:
        client.close()


@pytest.fixture
def smtp_client() -> Iterator[Callable[[SMTPServer], smtplib.SMTP]]:
    """Connect ``smtplib`` clients to a running server; close them after."""
    clients: list[smtplib.SMTP] = []

    def connect(server: SMTPServer) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", server.bound_port, timeout=CLIENT_TIMEOUT)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


# The fastsmtp command as a subprocess, for tests/test_cli.py and tests/test_corpus.py.

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

# The command's own startup line, not the server's INFO line (which -q silences).
_CLI_STARTUP = re.compile(
    r"^fastsmtp \S+ listening on (?P<address>\S+?):(?P<port>\d+)[,\s]"
    r".*\(hot path: (?P<twin>\w+)\)"
)


class CLIProcess:
    """One ``python -m fastsmtp`` subprocess, its standard error collected line by line.

    ``twin`` "c" or "py" sets or clears ``FASTSMTP_NO_EXTENSIONS`` in its environment and is
    checked against the startup line; None leaves the environment as it is.
    """

    def __init__(
        self,
        args: Sequence[str],
        twin: str | None = None,
        cwd: str | os.PathLike[str] | None = None,
        capture_stdout: bool = False,
    ) -> None:
        env = dict(os.environ)
        if twin == "py":
            env["FASTSMTP_NO_EXTENSIONS"] = "1"
        elif twin == "c":
            env.pop("FASTSMTP_NO_EXTENSIONS", None)
        self.twin = twin
        self.args = list(args)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fastsmtp", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture_stdout else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
        )
        self.lines: list[str] = []
        self.stdout = bytearray()
        self.port = 0
        self._changed = threading.Condition()
        self._stderr_done = False
        self._readers = [threading.Thread(target=self._read_stderr, daemon=True)]
        if capture_stdout:
            self._readers.append(threading.Thread(target=self._read_stdout, daemon=True))
        for reader in self._readers:
            reader.start()

    def __repr__(self) -> str:
        return f"<CLIProcess pid={self.process.pid} {self.args!r}>"

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            with self._changed:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
                self._changed.notify_all()
        with self._changed:
            self._stderr_done = True
            self._changed.notify_all()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        while chunk := self.process.stdout.read1(65536):
            self.stdout += chunk

    def wait_for_line(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """Return the first stderr line matching ``pattern``, waiting for it if need be."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    found = re.search(pattern, line)
                    if found is not None:
                        return found
                remaining = deadline - time.monotonic()
                if self._stderr_done or remaining <= 0:
                    raise AssertionError(
                        f"no stderr line matches {pattern!r}; the command said:\n"
                        + "\n".join(self.lines)
                    )
                self._changed.wait(remaining)

    def started(self) -> CLIProcess:
        """Wait for the startup line, read the port from it and check the twin it names."""
        found = self.wait_for_line(_CLI_STARTUP.pattern)
        self.port = int(found["port"])
        if self.twin is not None:
            assert found["twin"] == self.twin, f"asked for the {self.twin} twin: {found[0]}"
        return self

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the command."""
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the command to exit and for its output to be read; return its status."""
        status = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return status

    def stop(self, timeout: float = 30.0) -> int:
        """Stop the command with SIGTERM (or terminate() where there are no signals)."""
        if self.process.poll() is None:
            self.process.terminate()
        return self.wait(timeout)

    def log_text(self) -> str:
        """Everything the command wrote to stderr so far."""
        with self._changed:
            return "\n".join(self.lines)


class CLILauncher:
    """Start ``CLIProcess`` instances and kill any still running at teardown."""

    def __init__(self) -> None:
        self.processes: list[CLIProcess] = []

    def start(self, *args: str, twin: str | None = None, **options: Any) -> CLIProcess:
        """Start the command with ``args`` and wait until it listens."""
        process = CLIProcess(args, twin, **options)
        self.processes.append(process)
        return process.started()

    def close(self) -> None:
        """Kill what is still running."""
        for process in self.processes:
            if process.process.poll() is None:
                process.process.kill()
                process.wait()


@pytest.fixture(scope="module")
def cli_launcher() -> Iterator[CLILauncher]:
    """Start fastsmtp commands for one test module; kill leftovers at its end."""
    launcher = CLILauncher()
    yield launcher
    launcher.close()


@pytest.fixture(scope="module", params=["c", "py"])
def cli_twin(request: pytest.FixtureRequest) -> str:
    """Name one twin for a command subprocess; module-scoped so a server serves many tests."""
    if request.param == "c" and _wire.NO_EXTENSIONS:
        pytest.skip("FASTSMTP_NO_EXTENSIONS is set: the compiled twin is not expected")
    _wire.load(request.param)  # a missing compiled twin is an error, as for `wire`
    twin: str = request.param
    return twin


# TLS for tests/test_tls.py, tests/test_auth.py and tests/test_cli_tls.py: a throwaway
# certificate authority from trustme, and certificates it issued, as PEM files.

import ssl
from pathlib import Path

import trustme

from fastsmtp import server_tls_context

TLS_SERVER_NAMES = ("localhost", "127.0.0.1", HOSTNAME)


class TLSFiles:
    """A test CA and a server certificate it issued, written out as PEM files."""

    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        self.directory = directory
        self.ca_file = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(self.ca_file)
        self.cert_file, self.key_file = self.issue("server", *TLS_SERVER_NAMES)

    def issue(self, name: str, *identities: str) -> tuple[Path, Path]:
        """Issue a certificate for ``identities``; return its chain file and its key file."""
        cert = self.ca.issue_cert(*identities, common_name=identities[0])
        chain, key = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(key)
        return chain, key

    def client_context(self) -> ssl.SSLContext:
        """Return a client context that trusts the test CA (and checks host names)."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """A test CA with a server certificate for localhost, 127.0.0.1 and mx.test."""
    return TLSFiles(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def server_tls(tls_files: TLSFiles) -> ssl.SSLContext:
    """The server context built by fastsmtp's own helper from the test certificate."""
    return server_tls_context(tls_files.cert_file, tls_files.key_file)


@pytest.fixture
def client_tls(tls_files: TLSFiles) -> ssl.SSLContext:
    """A client context that trusts the test CA."""
    return tls_files.client_context()
