"""The ``fastsmtp`` command, run as a real subprocess on 127.0.0.1, and its Maildir sink.

The command picks its port (``--port 0``) and names it on its startup line. Storage
failures are made by putting a file where the Maildir's ``new/`` directory should be,
which fails for every user, root included.
"""

from __future__ import annotations

import asyncio
import email.policy
import importlib.util
import mailbox
import os
import platform
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import fastsmtp
from fastsmtp import IncomingMail, RejectError, cli, maildir, smtp_server
from fastsmtp.context import MessageContext, Session

if TYPE_CHECKING:
    from conftest import CLILauncher, CLIProcess

SENDER = "alice@example.org"
RECIPIENTS = ["bob@example.com", "carol@example.net"]
TIMEOUT = 10.0

needs_signals = pytest.mark.skipif(
    sys.platform == "win32", reason="POSIX signals are not delivered this way on Windows"
)


def make_message(subject: str, body: str, message_id: str | None = None) -> bytes:
    """Build a small CRLF message; without leading dots, so its size on arrival is known."""
    headers = [f"From: <{SENDER}>", f"To: <{RECIPIENTS[0]}>", f"Subject: {subject}"]
    if message_id is not None:
        headers.append(f"Message-ID: {message_id}")
    return ("\r\n".join(headers) + "\r\n\r\n" + body + "\r\n").encode("ascii")


def connect(process: CLIProcess) -> smtplib.SMTP:
    """Open an smtplib connection to the command and greet it."""
    client = smtplib.SMTP("127.0.0.1", process.port, timeout=TIMEOUT)
    client.ehlo("client.test")
    return client


def stored_messages(path: Path) -> list[bytes]:
    """Return the contents of the files in a Maildir's new/, in no particular order."""
    return [(path / "new" / name).read_bytes() for name in sorted(os.listdir(path / "new"))]


def stored_lines(process: CLIProcess) -> list[str]:
    """Return the per-message INFO lines the command logged."""
    return [line for line in process.lines if " stored message " in line]


def run_command(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the command to its end (for options that exit at once) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "fastsmtp", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


# Options that end the command at once


HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
DEFAULT_LOOP = "uvloop" if HAVE_UVLOOP else "asyncio"  # what --loop auto should pick


def test_version_names_the_twin_and_the_default_loop(cli_twin: str) -> None:
    env = {"FASTSMTP_NO_EXTENSIONS": "1" if cli_twin == "py" else ""}

    result = run_command("--version", **env)

    assert result.returncode == 0, result.stderr
    expected = (
        f"fastsmtp {fastsmtp.__version__} (hot path: {cli_twin}, loop: {DEFAULT_LOOP}, "
        f"uvloop available: {'yes' if HAVE_UVLOOP else 'no'})\n"
    )
    assert result.stdout == expected


def test_without_uvloop_the_default_is_asyncio_and_asking_for_it_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # None in sys.modules makes any import of uvloop fail, as when it is not installed.
    monkeypatch.setitem(sys.modules, "uvloop", None)

    assert cli.version_text() == (
        f"fastsmtp {fastsmtp.__version__} (hot path: {fastsmtp.IMPLEMENTATION}, "
        "loop: asyncio, uvloop available: no)"
    )
    with pytest.raises(SystemExit) as exited:
        cli.main(["--port", "0", "--loop", "uvloop"])

    assert exited.value.code == 2
    assert "--loop uvloop: uvloop is not installed" in capsys.readouterr().err


def test_help_names_the_defaults() -> None:
    result = run_command("--help")

    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "./Maildir" in text
    assert "(default: 8025)" in text
    assert "--stdout" in text and "--max-message-size" in text


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "70000"],
        ["--port", "smtp"],
        ["--max-recipients", "0"],
        ["--max-message-size", "ten"],
        ["--connection-timeout", "-1"],
        ["--maildir", "x", "--stdout"],
        ["-v", "-q"],
        ["--preferred-max-message-size", "2K", "--max-message-size", "1K"],
        ["--hostname", "two words"],
        ["--loop", "bogus"],
        ["--loop", "UVLOOP"],
        ["--loop"],
    ],
)
def test_invalid_arguments_exit_with_status_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)

    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_sizes_take_suffixes() -> None:
    parser = cli.build_parser()

    args = parser.parse_args(["--max-message-size", "10M", "--preferred-max-message-size", "512K"])

    assert args.max_message_size == 10 * 1024 * 1024
    assert args.preferred_max_message_size == 512 * 1024


def test_address_in_use_exits_with_status_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = run_command("--port", str(port), "--maildir", str(tmp_path / "md"))

    assert result.returncode == 1
    assert f"cannot listen on port {port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_unusable_maildir_exits_with_status_1(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")

    result = run_command("--port", "0", "--maildir", str(not_a_directory))

    assert result.returncode == 1
    assert "cannot use" in result.stderr and "as a Maildir" in result.stderr


# Where messages go


def test_default_maildir_is_in_the_working_directory(
    cli_launcher: CLILauncher, tmp_path: Path
) -> None:
    process = cli_launcher.start("--port", "0", cwd=tmp_path)
    message = make_message("default maildir", "hello")

    with connect(process) as client:
        client.sendmail(SENDER, RECIPIENTS, message)

    assert f"storing messages in Maildir {tmp_path / 'Maildir'} " in process.log_text()
    assert stored_messages(tmp_path / "Maildir") == [message]
    assert process.stop() == 0


def test_stdout_writes_each_message_after_a_separator(
    cli_launcher: CLILauncher, tmp_path: Path
) -> None:
    process = cli_launcher.start("--port", "0", "--stdout", cwd=tmp_path, capture_stdout=True)
    first = make_message("one", ".a line that was dot-stuffed on the wire")
    second = make_message("two", "second body")

    with connect(process) as client:
        client.sendmail(SENDER, RECIPIENTS, first)
        client.sendmail("", [RECIPIENTS[1]], second)
    assert process.stop() == 0

    assert bytes(process.stdout) == (
        f"----- fastsmtp message 1: from=<{SENDER}> to=<{RECIPIENTS[0]}>,<{RECIPIENTS[1]}> "
        f"size={len(first)} -----\n".encode()
        + first
        + f"----- fastsmtp message 2: from=<> to=<{RECIPIENTS[1]}> "
        f"size={len(second)} -----\n".encode()
        + second
    )
    assert "storing messages in standard output" in process.log_text()
    assert not (tmp_path / "Maildir").exists()


# Event loops


@needs_signals
@pytest.mark.parametrize("loop", ["asyncio", "uvloop", "auto"])
def test_each_loop_serves_and_stops(
    cli_twin: str, cli_launcher: CLILauncher, tmp_path: Path, loop: str
) -> None:
    if loop == "uvloop" and not HAVE_UVLOOP:
        pytest.skip("uvloop is not installed")
    in_use = DEFAULT_LOOP if loop == "auto" else loop
    process = cli_launcher.start(
        "--port", "0", "--maildir", str(tmp_path), "--loop", loop, twin=cli_twin
    )  # fmt: skip
    message = make_message(f"served on {loop}", "hello")

    # The startup line names the loop, and so does the server, which asks the running loop.
    process.wait_for_line(rf"\(hot path: {cli_twin}\), loop: {in_use}; Ctrl-C to stop$")
    process.wait_for_line(rf" INFO fastsmtp\.server: listening on .*, loop: {in_use}\)$")
    with connect(process) as client:
        client.sendmail(SENDER, RECIPIENTS, message)
    process.signal(signal.SIGINT)

    assert process.wait() == 0
    assert stored_messages(tmp_path) == [message]
    assert "received SIGINT: stopping" in process.log_text()
    assert "Traceback" not in process.log_text()


# Logging


def test_one_info_line_per_message_never_the_content(
    cli_launcher: CLILauncher, tmp_path: Path
) -> None:
    # At DEBUG, the most talkative level, no line may hold the subject or the body.
    process = cli_launcher.start("--port", "0", "--maildir", str(tmp_path), "-v")
    with_id = make_message("SUBJECT-MARKER", "BODY-MARKER one", "<one.1@client.test>")
    without_id = make_message("SUBJECT-MARKER", "BODY-MARKER two")

    with connect(process) as client:
        client.sendmail(SENDER, RECIPIENTS, with_id)
        client.sendmail(SENDER, RECIPIENTS[:1], without_id)
    assert process.stop() == 0

    lines = stored_lines(process)
    assert len(lines) == 2, process.log_text()
    assert " INFO fastsmtp.maildir: " in lines[0]
    assert (
        f"from=<{SENDER}> to=<{RECIPIENTS[0]}>,<{RECIPIENTS[1]}> size={len(with_id)} "
        f"message-id=<one.1@client.test> in {tmp_path}{os.sep}new{os.sep}"
    ) in lines[0]
    assert (
        f"from=<{SENDER}> to=<{RECIPIENTS[0]}> size={len(without_id)} message-id=(none) "
    ) in lines[1]
    assert " DEBUG " in process.log_text()
    assert "MARKER" not in process.log_text()


def test_quiet_logs_no_info(cli_launcher: CLILauncher, tmp_path: Path) -> None:
    process = cli_launcher.start("--port", "0", "--maildir", str(tmp_path), "-q")

    with connect(process) as client:
        client.sendmail(SENDER, RECIPIENTS, make_message("quiet", "hello"))
    assert process.stop() == 0

    assert len(stored_messages(tmp_path)) == 1
    assert stored_lines(process) == []
    assert " INFO " not in process.log_text()


# Server options given as flags


def test_flags_reach_the_server(cli_launcher: CLILauncher, tmp_path: Path) -> None:
    process = cli_launcher.start(
        "--port", "0",
        "--maildir", str(tmp_path),
        "--hostname", "mx.cli.test",
        "--max-recipients", "2",
        "--max-connections", "2",
        "--preferred-max-message-size", "1K",
        "--max-message-size", "2K",
    )  # fmt: skip

    with connect(process) as client:
        # EHLO names the host and advertises the preferred size.
        assert client.ehlo_resp is not None
        assert client.ehlo_resp.startswith(b"mx.cli.test\n")
        assert client.esmtp_features["size"] == "1024"

        # A third recipient is one too many.
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt("a@example.com")[0] == 250
        assert client.rcpt("b@example.com")[0] == 250
        assert client.rcpt("c@example.com")[:2] == (452, b"4.5.3 Error: too many recipients")

        # Past max-message-size (not declared with SIZE=), the content is refused.
        code, text = client.data(make_message("big", "x" * 3000))
        assert (code, text[:5]) == (552, b"5.3.4")

        # A third connection is refused while two are open.
        with (
            connect(process),
            socket.create_connection(("127.0.0.1", process.port), TIMEOUT) as third,
        ):
            assert third.recv(1024).startswith(b"421 4.7.0 ")

    assert stored_messages(tmp_path) == []
    assert process.stop() == 0


def test_connection_timeout_flag(cli_launcher: CLILauncher, tmp_path: Path) -> None:
    process = cli_launcher.start(
        "--port", "0", "--maildir", str(tmp_path), "--connection-timeout", "0.3"
    )

    with socket.create_connection(("127.0.0.1", process.port), TIMEOUT) as idle:
        assert idle.recv(1024).startswith(b"220 ")
        started = time.monotonic()
        assert idle.recv(1024).startswith(b"421 4.4.2 ")
        assert time.monotonic() - started < TIMEOUT / 2

    assert process.stop() == 0


# Storage failures


def test_storage_failure_answers_451_and_the_server_goes_on(
    cli_launcher: CLILauncher, tmp_path: Path
) -> None:
    process = cli_launcher.start("--port", "0", "--maildir", str(tmp_path))
    first, lost, third = (make_message(f"message {n}", f"body {n}") for n in (1, 2, 3))

    with connect(process) as client:
        client.sendmail(SENDER, RECIPIENTS, first)

        # A file where new/ should be: mailbox writes tmp/ and then cannot link into new/.
        (tmp_path / "new").rename(tmp_path / "new.saved")
        (tmp_path / "new").write_bytes(b"")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(SENDER, RECIPIENTS, lost)
        assert (refused.value.smtp_code, refused.value.smtp_error) == (
            451,
            b"4.3.0 Error: could not store message",
        )
        assert os.listdir(tmp_path / "tmp") == []
        process.wait_for_line(r" ERROR fastsmtp\.maildir: \S+ could not store message ")

        # Writable again: the same connection goes on and the next message is kept.
        (tmp_path / "new").unlink()
        (tmp_path / "new.saved").rename(tmp_path / "new")
        client.sendmail(SENDER, RECIPIENTS, third)

    assert sorted(stored_messages(tmp_path)) == sorted([first, third])
    assert process.process.poll() is None
    assert process.stop() == 0
    assert "Traceback" not in process.log_text()


@pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() == 0,
    reason="file permissions do not stop root (and work otherwise on Windows)",
)
def test_read_only_maildir_answers_451(cli_launcher: CLILauncher, tmp_path: Path) -> None:
    process = cli_launcher.start("--port", "0", "--maildir", str(tmp_path))

    with connect(process) as client:
        (tmp_path / "tmp").chmod(0o500)
        try:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail(SENDER, RECIPIENTS, make_message("read-only", "body"))
        finally:
            (tmp_path / "tmp").chmod(0o700)
        assert refused.value.smtp_code == 451
        client.sendmail(SENDER, RECIPIENTS, make_message("writable", "body"))

    assert len(stored_messages(tmp_path)) == 1
    assert process.stop() == 0


# Stopping


@needs_signals
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_gracefully(
    cli_launcher: CLILauncher, tmp_path: Path, signum: signal.Signals
) -> None:
    process = cli_launcher.start("--port", "0", "--maildir", str(tmp_path))
    before = make_message("before the signal", "stored")
    during = make_message("during the stop", "stored too")
    idle = connect(process)
    busy = connect(process)
    idle.sendmail(SENDER, RECIPIENTS, before)
    assert busy.mail(SENDER)[0] == 250
    assert busy.rcpt(RECIPIENTS[0])[0] == 250

    process.signal(signum)
    process.wait_for_line(f"received {signum.name}: stopping")

    # No new connections; the idle one is closed; the transaction in flight finishes.
    assert_refused(process.port)
    assert idle.getreply()[0] == 421
    assert busy.data(during)[0] == 250
    busy.close()

    assert process.wait() == 0
    assert sorted(stored_messages(tmp_path)) == sorted([before, during])
    assert " INFO fastsmtp.server: stopped" in process.log_text()
    assert "Traceback" not in process.log_text()


def assert_refused(port: int) -> None:
    """Wait until connections to ``port`` are refused: the listening socket is closed."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), TIMEOUT).close()
        except ConnectionRefusedError:
            return
        time.sleep(0.02)
    raise AssertionError(f"port {port} still accepts connections")


@needs_signals
def test_second_signal_exits_at_once(cli_launcher: CLILauncher, tmp_path: Path) -> None:
    process = cli_launcher.start("--port", "0", "--maildir", str(tmp_path))
    busy = connect(process)
    assert busy.mail(SENDER)[0] == 250

    process.signal(signal.SIGTERM)
    process.wait_for_line("received SIGTERM: stopping")
    started = time.monotonic()
    process.signal(signal.SIGTERM)

    assert process.wait() == 128 + signal.SIGTERM
    assert time.monotonic() - started < 15  # the grace period is 30 s
    assert "received SIGTERM again: exiting without waiting" in process.log_text()
    busy.close()


def test_concurrent_stop_async_returns_once_stopped() -> None:
    # The command stops on a signal with stop_async() while serve_forever() calls it too.
    async def scenario() -> bool:
        server = smtp_server(port=0, host="127.0.0.1", hostname="mx.test")
        server.mail_listener(lambda mail: None)
        async with server:
            first = asyncio.get_running_loop().create_task(server.stop_async())
            await asyncio.sleep(0)
            await server.stop_async()
            running_after_second = server.is_running
            await first
        return running_after_second

    assert asyncio.run(scenario()) is False


# The sink in-process


def incoming(data: bytes, recipients: tuple[str, ...] = ("bob@example.com",)) -> IncomingMail:
    """Build the event a mail listener receives, without a server."""
    session = Session("t1", ("127.0.0.1", 40000), ("127.0.0.1", 25))
    return IncomingMail(MessageContext(session, None), SENDER, recipients, data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"Message-ID: <a@b>\r\n\r\nbody\r\n", "<a@b>"),
        (b"Subject: x\r\nmessage-id:<a@b>\r\n\r\n", "<a@b>"),
        (b"Message-Id:\r\n <folded@b>\r\n\r\n", "<folded@b>"),
        (b"Message-ID: <a\xff@b>\n\n", "<a\\xff@b>"),
        (b"Message-ID: <a\x1b[31m@b>\n\n", "<a\\x1b[31m@b>"),
        (b"Subject: x\r\n\r\nMessage-ID: <in-the-body@b>\r\n", None),
        (b"\r\nMessage-ID: <no-headers@b>\r\n", None),
        (b"X-Message-ID: <other@b>\r\n\r\n", None),
        (b"Message-ID:   \r\n\r\n", None),
        (b"", None),
        (b"Message-ID: <" + b"x" * 300 + b">\r\n\r\n", "<" + "x" * 199 + "..."),
    ],
)
def test_message_id_for_the_log(data: bytes, expected: str | None) -> None:
    assert maildir.message_id(data) == expected


def test_maildir_sink_stores_exact_bytes_and_syncs_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    sink = maildir.MaildirSink(tmp_path / "md")
    data = b"Subject: exact\r\n\r\nbare\nLF and\rCR kept\r\n"

    sink(incoming(data))

    [name] = os.listdir(tmp_path / "md" / "new")
    assert (tmp_path / "md" / "new" / name).read_bytes() == data
    if os.name == "posix":
        assert os.stat(tmp_path / "md" / "new").st_ino in synced
    assert os.stat(tmp_path / "md" / "new" / name).st_ino in synced


def test_maildir_sink_completes_an_empty_existing_directory(tmp_path: Path) -> None:
    sink = maildir.MaildirSink(tmp_path)

    sink(incoming(b"Subject: x\r\n\r\n"))

    assert sorted(os.listdir(tmp_path)) == ["cur", "new", "tmp"]
    assert len(os.listdir(tmp_path / "new")) == 1


def test_maildir_sink_retries_a_name_clash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = maildir.MaildirSink(tmp_path)
    real_add = mailbox.Maildir.add
    calls: list[int] = []

    def clash_once(self: mailbox.Maildir, message: bytes) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise mailbox.ExternalClashError("name clash")
        return real_add(self, message)

    monkeypatch.setattr(mailbox.Maildir, "add", clash_once)

    sink(incoming(b"Subject: x\r\n\r\n"))

    assert len(calls) == 2
    assert len(os.listdir(tmp_path / "new")) == 1


def test_maildir_sink_unsynced_directory_is_a_failure_without_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = maildir.MaildirSink(tmp_path)

    def failing_sync(path: str) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(maildir, "_fsync_directory", failing_sync)

    with pytest.raises(RejectError) as rejected:
        sink(incoming(b"Subject: x\r\n\r\n"))

    assert rejected.value.reply.code == 451
    assert rejected.value.reply.enhanced == "4.3.0"
    assert os.listdir(tmp_path / "new") == []


def test_stored_message_parses(tmp_path: Path) -> None:
    # What the sink keeps is a message a Maildir reader can open.
    sink = maildir.MaildirSink(tmp_path)
    sink(incoming(make_message("parse me", "text", "<p@client.test>")))

    box = mailbox.Maildir(tmp_path, create=False)
    [message] = list(box)
    parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
    assert parsed["Subject"] == "parse me"
    assert parsed["Message-ID"] == "<p@client.test>"
    assert re.fullmatch(r"text\r?\n", parsed.get_content())


# Memory tuning of the command's own process


def test_mmap_threshold_is_set_on_glibc_unless_the_environment_chooses() -> None:
    # In a child process: the setting is process-wide.
    code = "from fastsmtp._memory import use_mmap_for_large_blocks as f; print(f())"
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

    def run(extra: dict[str, str]) -> str:
        child = subprocess.run(
            [sys.executable, "-c", code],
            env={**env, **extra},
            capture_output=True,
            text=True,
            check=True,
        )
        return child.stdout.strip()

    assert run({}) == str(glibc)
    assert run({"MALLOC_MMAP_THRESHOLD_": "131072"}) == "False"
