"""Running out of file descriptors: the server logs it once, survives, and serves again.

Each case runs in a child process of its own, because it lowers that process's limit of
open files until the server's ``accept()`` fails with EMFILE.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from types import ModuleType

import pytest

_CHILD = textwrap.dedent(
    """
    import logging, resource, smtplib, socket, sys, time
    from fastsmtp import _wire, smtp_server

    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(name)s %(levelname)s %(message)s")
    logging.getLogger("fastsmtp.session").setLevel(logging.WARNING)
    twin, loop = sys.argv[1], sys.argv[2]
    received = []
    server = smtp_server(port=0, host="127.0.0.1", hostname="mx.test", event_loop=loop)
    server._wire = _wire.load(twin)
    server.mail_listener(lambda mail: received.append(mail.data))
    server.start()

    # Connections until this process (client and server sides together) has no descriptor
    # left: the kernel completes the handshakes, the server's accept() fails.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    held = []
    try:
        while len(held) < 200:
            held.append(socket.create_connection(("127.0.0.1", server.bound_port), timeout=5))
    except OSError:
        pass
    time.sleep(2.5)  # several of asyncio's one-second retries fail meanwhile

    for sock in held:
        sock.close()
    time.sleep(1.5)
    with smtplib.SMTP("127.0.0.1", server.bound_port, timeout=5) as client:
        client.sendmail("a@example.org", ["b@example.com"], b"Subject: after\\r\\n\\r\\nok\\r\\n")
    server.stop()
    print("RECEIVED", received)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="needs resource.setrlimit")
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_out_of_descriptors_is_reported_once_and_survived(wire: ModuleType, loop: str) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, wire.__name__.rpartition("_")[2], loop],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0, child.stdout + child.stderr
    lines = child.stdout.splitlines()

    # Served again once descriptors were free, and the message kept exact.
    assert "RECEIVED [b'Subject: after\\r\\n\\r\\nok\\r\\n']" in lines
    assert "Traceback" not in child.stderr

    if loop == "asyncio":
        # One ERROR line for the whole outage (not one per failed accept), one when it ends,
        # and no other report of the loop's on the way.
        failures = [line for line in lines if "cannot accept connections" in line]
        assert len(failures) == 1, child.stdout
        assert failures[0].startswith("fastsmtp.server ERROR")
        assert "Too many open files" in failures[0]
        assert any("accepting connections again after" in line for line in lines), child.stdout
        assert "Exception in callback" not in child.stdout + child.stderr
